"""The SQLite store (``-p file://PATH``, and the server's default): stdlib
``sqlite3`` in WAL mode, written by one writer thread with group commit.

The :class:`~periodic_fast.store.Store` calls arrive on the server's event
loop and must not block, so they only record the change in an in-memory batch
under a lock.  The writer thread commits batches one after the other: it
starts a commit as soon as there is work, and everything that arrives while a
commit is in flight goes into the next one, so the commit rate follows the
load without a timer.

Batching and coalescing follow :mod:`periodic_fast.store._batch` (shared with
the PostgreSQL store): per job key only the net effect is kept,
``delete_func_jobs`` is applied before the batch's later job writes, funcs and
config values keep their last write.  The loop-side API, the barriers, the
retry bookkeeping and the metrics are shared with it too
(:class:`~periodic_fast.store._writer.BatchWriter`); this module keeps the
writer thread and the SQLite commit and load code.

Each batch is one transaction.  ``on_durable`` callbacks belong to the batch
that is open when they are registered and fire, in registration order, after
that batch's commit, with ``None`` or the exception.  A failed batch (disk
full, I/O error, failed fsync) is rolled back, kept, and merged in front of the
next one; the writer retries with a bounded exponential backoff until it
commits.  Every statement sets a final state, so replaying a batch is
harmless.

Durability: ``"strict"`` runs ``synchronous=FULL`` (a commit is on disk before
it is reported, so nothing acknowledged is lost even on power loss),
``"relaxed"`` ``synchronous=NORMAL`` (WAL fsynced only at checkpoints: a power
loss may lose the last commits, a crash of the process loses nothing).

The file is opened with ``locking_mode=EXCLUSIVE``: one server per file; a
second process gets a clear error instead of sharing it.

Layout (persistence-and-scale.md 4.1): ``jobs(func BLOB, name BLOB,
workload BLOB, sched_at INTEGER, count INTEGER, timeout INTEGER,
state INTEGER, gen INTEGER, PRIMARY KEY(func, name)) WITHOUT ROWID``,
``funcs(func BLOB PRIMARY KEY) WITHOUT ROWID``,
``configs(name TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID``,
``func_gens(func BLOB PRIMARY KEY, gen INTEGER) WITHOUT ROWID``,
``extras(kind TEXT, func BLOB, name BLOB, value BLOB, PRIMARY KEY(kind,
func, name)) WITHOUT ROWID`` (the scheduler's job-feature data: retry
policies, attempts, the dead set, cron schedules; written in the same
batches as the jobs).  No time index: the scheduler's wheel is rebuilt from
one full scan at start-up.

Dropping a func's jobs is O(1) in the commit that acknowledges it: the drop
bumps the func's generation in ``func_gens`` (one row), every job row carries
the generation it was written in, and :meth:`SqliteStore.load` reads only the
rows of each func's current generation.  The rows of earlier generations are
deleted afterwards, ``PURGE_SLICE`` rows per transaction between the group
commits, so a drop of a million jobs never holds other peers' commits up for
the seconds such a DELETE takes.  A crash before the drop commits keeps
every job, one after it keeps none of them (the leftover rows are invisible
and purged after the restart): all or nothing, as a client sees it.
Older layouts are upgraded in place when opened (``PRAGMA user_version``:
layout 1 had no generations, layout 2 no ``extras`` table); a file of a newer
layout than this release knows is refused.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..job import Job, JobState
from ._batch import DELETE, Batch
from ._contract import StoreSnapshot
from ._writer import BatchWriter

__all__ = [
    "SqliteStore",
    "SqliteStoreError",
    "default_path",
    "parse_file_uri",
]

log = logging.getLogger("periodic_fast.store")

#: ``PRAGMA application_id`` of our files ("PfSt"): tells them from others
APPLICATION_ID = 0x50665374
#: ``PRAGMA user_version``: the layout version
LAYOUT_VERSION = 3
#: rows of dropped generations deleted per purge transaction
PURGE_SLICE = 2000

_JOB_COLUMNS_V1 = ("func", "name", "workload", "sched_at", "count", "timeout", "state")
_JOB_COLUMNS = (*_JOB_COLUMNS_V1, "gen")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (func BLOB NOT NULL, name BLOB NOT NULL,"
    " workload BLOB NOT NULL, sched_at INTEGER NOT NULL, count INTEGER NOT NULL,"
    " timeout INTEGER NOT NULL, state INTEGER NOT NULL,"
    " gen INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (func, name)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS funcs (func BLOB NOT NULL PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS configs (name TEXT NOT NULL PRIMARY KEY,"
    " value INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS func_gens (func BLOB NOT NULL PRIMARY KEY,"
    " gen INTEGER NOT NULL) WITHOUT ROWID",
    # layout 3; added to older files at open
    "CREATE TABLE IF NOT EXISTS extras (kind TEXT NOT NULL, func BLOB NOT NULL,"
    " name BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (kind, func, name))"
    " WITHOUT ROWID",
)
_SQL_UPGRADE_V1 = "ALTER TABLE jobs ADD COLUMN gen INTEGER NOT NULL DEFAULT 0"
_SQL_DROP = "INSERT OR REPLACE INTO func_gens (func, gen) VALUES (?, ?)"
_SQL_PURGE = (
    "DELETE FROM jobs WHERE func = ?1 AND name IN"
    " (SELECT name FROM jobs WHERE func = ?1 AND gen < ?2 LIMIT ?3)"
)
_SQL_DELETE = "DELETE FROM jobs WHERE func = ? AND name = ?"
_SQL_SAVE = (
    "INSERT OR REPLACE INTO jobs (func, name, workload, sched_at, count, timeout,"
    " state, gen) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQL_STATE = "UPDATE jobs SET state = ? WHERE func = ? AND name = ?"
_SQL_FUNC_ADD = "INSERT OR IGNORE INTO funcs (func) VALUES (?)"
_SQL_FUNC_DEL = "DELETE FROM funcs WHERE func = ?"
_SQL_CONFIG = "INSERT OR REPLACE INTO configs (name, value) VALUES (?, ?)"
_SQL_EXTRA_DROP = "DELETE FROM extras WHERE kind = ? AND func = ?"
_SQL_EXTRA_DEL = "DELETE FROM extras WHERE kind = ? AND func = ? AND name = ?"
_SQL_EXTRA_SAVE = (
    "INSERT OR REPLACE INTO extras (kind, func, name, value) VALUES (?, ?, ?, ?)"
)


class SqliteStoreError(OSError):
    """The SQLite file could not be opened or used (missing directory, not a
    database, another layout, in use by another process).  An ``OSError``, so
    the server reports it like any other start-up I/O error."""


def default_path() -> Path:
    """Where ``periodicd`` keeps its jobs when no store is named:
    ``$XDG_DATA_HOME/periodic_fast/periodic.db``, with ``~/.local/share`` when
    ``XDG_DATA_HOME`` is unset or not absolute (XDG base directory rules).
    The directory is not created here (see :func:`prepare_default_path`)."""
    base = os.environ.get("XDG_DATA_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".local/share"
    return root / "periodic_fast" / "periodic.db"


def prepare_default_path() -> Path:
    """:func:`default_path`, with its directory created (mode 0700) when
    missing."""
    path = default_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _create_private(path: str) -> None:
    """Create the database file readable by its owner only, before SQLite
    opens it: every workload is inside, and SQLite gives the WAL and shared
    memory files the database file's mode.  An existing file keeps its mode
    (the operator chose it); one that others can read gets a warning."""
    if path == ":memory:" or path.startswith("file:"):
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return
        if mode & 0o077:
            log.warning(
                "SQLite store %s is readable by other users (mode %o):"
                " chmod 600 it and its -wal/-shm files",
                path,
                mode & 0o777,
            )
        return
    except OSError:
        return  # sqlite3.connect reports the real problem with its own message
    os.close(fd)


def parse_file_uri(uri: str) -> str:
    """The file path of a SQLite store URI.

    ``file://data.db`` is relative to the working directory and
    ``file:///var/lib/x.db`` absolute (as the reference reads them);
    ``cache+file://`` is taken as ``file://`` (our store needs no cache).
    A bare path with a ``/`` in it (``./jobs.db``, ``/var/lib/x.db``) is
    accepted too.  Raises :class:`ValueError` for anything else.
    """
    for prefix in ("file://", "cache+file://"):
        if uri.startswith(prefix):
            path = uri[len(prefix) :]
            break
    else:
        if "://" in uri or "/" not in uri:
            raise ValueError(f"not a SQLite store URI: {uri!r}")
        path = uri
    if not path or path.endswith("/"):
        raise ValueError(f"store {uri!r}: no file name")
    if "\x00" in path:
        raise ValueError(f"store {uri!r}: NUL in the file name")
    return path


class SqliteStore(BatchWriter):
    """:class:`~periodic_fast.store.Store` in a SQLite file (see the module doc).

    :param path: the database file (created when missing; its directory must
        exist).
    :param durability: ``"strict"`` (``synchronous=FULL``, the default) or
        ``"relaxed"`` (``synchronous=NORMAL``).
    :param retry_min: first delay (s) before a failed batch is retried; it
        doubles up to ``retry_max``.
    :param close_timeout: how long :meth:`close` waits for the last commit.
    :param cache_mib: SQLite page cache size.

    Raises :class:`SqliteStoreError` when the file cannot be opened, is not a
    database, holds another layout (e.g. the reference server's) or is in use
    by another process, and :class:`ValueError` for a bad ``durability``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        durability: str = "strict",
        retry_min: float = 0.01,
        retry_max: float = 1.0,
        close_timeout: float = 30.0,
        cache_mib: int = 256,
    ) -> None:
        if durability not in ("strict", "relaxed"):
            raise ValueError(
                f"durability {durability!r}: expected 'strict' or 'relaxed'"
            )
        self.path = os.fspath(path)
        super().__init__(
            "SQLite",
            self.path,
            log,
            retry_min=retry_min,
            retry_max=retry_max,
            close_timeout=close_timeout,
        )
        self.durability = durability
        self._cache_kib = cache_mib * 1024
        self._cond = threading.Condition(self._lock)

        self._db_lock = threading.Lock()  # the writer and load() share _db
        self._db: sqlite3.Connection | None = self._open()
        self._thread = threading.Thread(
            target=self._writer, name="periodic-sqlite-writer", daemon=True
        )
        self._thread.start()

    # connection and schema -----------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        where = f"SQLite store {self.path!r}"
        _create_private(self.path)
        try:
            db = sqlite3.connect(
                self.path,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # load() on the caller, commits on the writer
                cached_statements=32,
            )
        except sqlite3.Error as exc:
            parent = os.path.dirname(os.path.abspath(self.path))
            hint = "" if os.path.isdir(parent) else f" (no directory {parent!r})"
            raise SqliteStoreError(f"{where}: cannot open: {exc}{hint}") from exc
        try:
            self._setup(db)
        except sqlite3.OperationalError as exc:
            db.close()
            if "locked" in str(exc):
                raise SqliteStoreError(
                    f"{where}: locked: in use by another server (one server per file;"
                    " use --cluster with PostgreSQL to run several servers)"
                ) from exc
            raise SqliteStoreError(f"{where}: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            db.close()
            raise SqliteStoreError(f"{where}: {exc}") from exc
        except BaseException:
            db.close()
            raise
        return db

    def _setup(self, db: sqlite3.Connection) -> None:
        sync = "FULL" if self.durability == "strict" else "NORMAL"
        db.execute("PRAGMA busy_timeout = 1000")
        db.execute("PRAGMA locking_mode = EXCLUSIVE")
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise sqlite3.OperationalError(f"cannot use WAL (journal mode {mode})")
        db.execute(f"PRAGMA synchronous = {sync}")
        db.execute(f"PRAGMA cache_size = -{self._cache_kib}")
        db.execute("PRAGMA temp_store = MEMORY")
        # a burst (a big LOAD) grows the WAL; give the space back after it
        db.execute("PRAGMA journal_size_limit = 67108864")
        # take the exclusive lock now: a second server fails here, not later
        db.execute("BEGIN IMMEDIATE")
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            tables = {
                r[0]
                for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if app_id not in (0, APPLICATION_ID):
                raise sqlite3.DatabaseError(
                    f"not a periodic_fast store (application_id {app_id:#x})"
                )
            if "jobs" in tables:
                cols = tuple(r[1] for r in db.execute("PRAGMA table_info(jobs)"))
                if cols == _JOB_COLUMNS_V1:
                    db.execute(_SQL_UPGRADE_V1)  # layout 1: every row is gen 0
                    cols = _JOB_COLUMNS
                if cols != _JOB_COLUMNS:
                    raise sqlite3.DatabaseError(
                        f"table jobs has another layout (columns {list(cols)}); "
                        "is it the reference server's? Use another file"
                    )
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > LAYOUT_VERSION:
                raise sqlite3.DatabaseError(
                    f"layout version {version} is newer than this release's"
                    f" ({LAYOUT_VERSION})"
                )
            for sql in _SCHEMA:
                db.execute(sql)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {LAYOUT_VERSION}")
            gens = dict(db.execute("SELECT func, gen FROM func_gens").fetchall())
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        # func -> current generation (absent: 0); funcs that may still have
        # rows of earlier generations to purge
        self._gens: dict[bytes, int] = gens
        self._purging: set[bytes] = set(gens)

    # the writer ------------------------------------------------------------------
    def _writer(self) -> None:
        """Commit batches until close() (the writer thread)."""
        cond = self._cond
        while True:
            with cond:
                while True:
                    batch, commit = self._take()
                    if batch is not None or self._stopping:
                        break
                    if self._purging:
                        break  # idle: purge a slice of dropped rows
                    self._idle = True
                    cond.wait()
            if batch is None:
                if self._stopping:
                    return
                self._purge_slice()
                continue
            error = self._commit(batch) if commit else None
            if error is None and self._purging:
                # one slice between two commits: a long purge never starves
                # under a steady stream of batches, nor holds one up for long
                self._purge_slice()
            self._settle(batch, error)
            if error is not None:
                with cond:
                    if not self._stopping:
                        cond.wait(self._retry_delay())  # close() cuts it short
                    if self._stopping:
                        return

    def _kick(self) -> None:
        self._idle = False
        self._cond.notify()

    def _stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(self.close_timeout)
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _commit(self, batch: Batch) -> BaseException | None:
        """Write ``batch`` in one transaction; the error, or None."""
        dels: list[tuple[bytes, bytes]] = []
        saves: list[tuple[Any, ...]] = []
        states: list[tuple[int, bytes, bytes]] = []
        gens = self._gens
        # a drop starts a new generation; the batch's job writes come after it
        bumped = {f: gens.get(f, 0) + 1 for f in batch.dropped}
        current = {**gens, **bumped} if bumped else gens
        for key, op in batch.jobs.items():
            if op is DELETE:
                dels.append(key)
            elif type(op) is int:
                states.append((op, key[0], key[1]))
            else:
                saves.append(op[0] + (op[1], current.get(key[0], 0)))
        started = time.perf_counter()
        try:
            with self._db_lock:
                db = self._db
                if db is None:  # lost after an earlier failure: reopen
                    db = self._db = self._open()
                try:
                    db.execute("BEGIN")
                    if bumped:
                        db.executemany(_SQL_DROP, list(bumped.items()))
                    if dels:
                        db.executemany(_SQL_DELETE, dels)
                    if saves:
                        db.executemany(_SQL_SAVE, saves)
                    if states:
                        db.executemany(_SQL_STATE, states)
                    if batch.funcs:
                        items = batch.funcs.items()
                        db.executemany(_SQL_FUNC_ADD, [(f,) for f, k in items if k])
                        db.executemany(_SQL_FUNC_DEL, [(f,) for f, k in items if not k])
                    if batch.config:
                        db.executemany(_SQL_CONFIG, list(batch.config.items()))
                    if batch.extras or batch.extras_dropped:
                        _write_extras(db, batch)
                    db.execute("COMMIT")
                except BaseException:
                    self._rollback(db)
                    raise
        except Exception as exc:  # every failure is reported and retried
            return self._failed(batch, exc)
        if bumped:
            gens.update(bumped)
            self._purging.update(bumped)
        self._committed(batch, time.perf_counter() - started)
        return None

    def _purge_slice(self) -> None:
        """Delete up to ``PURGE_SLICE`` rows of a dropped generation in one
        transaction of its own (the writer thread, between commits)."""
        func = next(iter(self._purging))
        try:
            with self._db_lock:
                db = self._db
                if db is None:
                    return  # reopened by the next commit; purged after that
                try:
                    db.execute("BEGIN")
                    cur = db.execute(
                        _SQL_PURGE, (func, self._gens.get(func, 0), PURGE_SLICE)
                    )
                    db.execute("COMMIT")
                except BaseException:
                    self._rollback(db)
                    raise
        except Exception as exc:
            # the rows stay invisible; the next open purges them
            log.error(
                "SQLite store %s: purge of dropped jobs failed: %s", self.path, exc
            )
            self._purging.clear()
            return
        if cur.rowcount < PURGE_SLICE:
            self._purging.discard(func)

    def _rollback(self, db: sqlite3.Connection) -> None:
        """Undo a failed transaction; drop the connection if that fails too
        (the next attempt reopens the file)."""
        try:
            if db.in_transaction:
                db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("SQLite rollback on %s failed, reopening: %s", self.path, exc)
            try:
                db.close()
            finally:
                self._db = None

    # Store API (event-loop thread) --------------------------------------------
    def load(self) -> StoreSnapshot:
        """Read every func and config value, and stream the jobs.

        ``jobs`` is a one-pass iterator that reads the jobs table in chunks
        (per func, so the func bytes are shared by its jobs) while the caller
        consumes it: a restart holds one chunk of rows at a time, not a list
        of every job beside the records built from it.  The writer waits for
        the database until the iterator is exhausted or closed; writes
        enqueued meanwhile (the scheduler resetting running jobs) are
        committed after it."""
        self._check_open()
        with self._db_lock:
            db = self._db
            if db is None:
                db = self._db = self._open()
            funcs = [r[0] for r in db.execute("SELECT func FROM funcs")]
            config = dict(db.execute("SELECT name, value FROM configs").fetchall())
            extras: dict[str, list[tuple[bytes, bytes, bytes]]] = {}
            for kind, func, name, value in db.execute(_SQL_EXTRAS_ALL):
                extras.setdefault(kind, []).append((func, name, value))
        groups = self._stream_groups()
        rows = _rows_of(groups)
        return StoreSnapshot(_jobs_of(rows), funcs, config, rows, extras, groups)

    def backup(self, target: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the store to the SQLite file ``target``
        (SQLite's online backup API, on the store's own connection: the file
        is locked exclusively, no other connection could read it).

        Blocking: call it from a worker thread, not the event loop.  Commits
        wait while the pages are copied (between two commits, so the copy
        holds every committed change and nothing half-written)."""
        self._check_open()
        with self._db_lock:
            db = self._db
            if db is None:
                db = self._db = self._open()
            dest = sqlite3.connect(os.fspath(target))
            try:
                db.backup(dest)
            finally:
                dest.close()

    def _stream_groups(self) -> Iterator[tuple[bytes, int, Iterator[list[Any]]]]:
        with self._db_lock:
            db = self._db
            if db is None:
                raise SqliteStoreError(f"SQLite store {self.path!r} is closed")
            yield from _read_groups(db, dict(self._gens))


# rows per fetch while the jobs stream in: 1,024 rows of Python objects stay
# in the CPU caches until the scheduler consumes them (8,192: 15% slower)
_LOAD_CHUNK = 1024
_SQL_EXTRAS_ALL = "SELECT kind, func, name, value FROM extras"


def _write_extras(db: sqlite3.Connection, batch: Batch) -> None:
    """The batch's extras, in its transaction: the ``(kind, func)`` drops
    first (the batch's extra writes all came after them), then the keys."""
    if batch.extras_dropped:
        db.executemany(_SQL_EXTRA_DROP, list(batch.extras_dropped))
    dels = [key for key, value in batch.extras.items() if value is None]
    if dels:
        db.executemany(_SQL_EXTRA_DEL, dels)
    saves = [(*key, value) for key, value in batch.extras.items() if value is not None]
    if saves:
        db.executemany(_SQL_EXTRA_SAVE, saves)


# every distinct func, one index probe each (a skip-scan over the primary key)
_SQL_JOB_FUNCS = (
    "WITH RECURSIVE f(func) AS (SELECT min(func) FROM jobs UNION ALL"
    " SELECT (SELECT min(func) FROM jobs WHERE func > f.func) FROM f"
    " WHERE f.func IS NOT NULL) SELECT func FROM f WHERE func IS NOT NULL"
)
_SQL_JOBS_OF = (
    "SELECT name, workload, sched_at, count, timeout, state FROM jobs"
    " WHERE func = ? AND gen = ?"
)
# every generation's rows: an upper bound (rows of a drop not purged yet are
# counted), 2.5x cheaper than testing each row's generation
_SQL_COUNT_OF = "SELECT count(*) FROM jobs WHERE func = ?"


def _read_groups(
    db: sqlite3.Connection, gens: dict[bytes, int]
) -> Iterator[tuple[bytes, int, Iterator[list[Any]]]]:
    """Every stored job of its func's current generation, grouped by func
    (``StoreSnapshot.groups``): the func, about how many rows follow (a
    count(*) of the func's rows of any generation: the pages the rows are
    then read from, hot in the page cache after it; 3% of the read) and its
    rows in chunks, read as they are consumed.  The func is not a column: a
    bytes object per row less."""
    for (func,) in db.execute(_SQL_JOB_FUNCS).fetchall():
        gen = gens.get(func, 0)
        (n,) = db.execute(_SQL_COUNT_OF, (func,)).fetchone()
        if n:
            yield func, n, _chunks(db.execute(_SQL_JOBS_OF, (func, gen)))


def _chunks(cur: sqlite3.Cursor) -> Iterator[list[Any]]:
    while rows := cur.fetchmany(_LOAD_CHUNK):
        yield rows


def _rows_of(
    groups: Iterator[tuple[bytes, int, Iterator[list[Any]]]],
) -> Iterator[list[Any]]:
    """``StoreSnapshot.rows`` (the func first in each row) from the groups."""
    for func, _, chunks in groups:
        for rows in chunks:
            yield [(func, *row) for row in rows]


def _jobs_of(chunks: Iterator[list[Any]]) -> Iterator[tuple[Job, JobState]]:
    """``StoreSnapshot.jobs`` from the row chunks: a ``Job`` and its state."""
    new = tuple.__new__
    states = (JobState.PENDING, JobState.RUNNING, JobState.LOCKED)
    for rows in chunks:
        for f, n, w, t, c, o, s in rows:
            # an unknown state (a damaged row) loads as pending
            yield new(Job, (f, n, w, t, c, o)), states[s] if 0 <= s < 3 else states[0]
