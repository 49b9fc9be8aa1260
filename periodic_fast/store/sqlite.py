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
config values keep their last write.

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
state INTEGER, PRIMARY KEY(func, name)) WITHOUT ROWID``,
``funcs(func BLOB PRIMARY KEY) WITHOUT ROWID``,
``configs(name TEXT PRIMARY KEY, value INTEGER) WITHOUT ROWID``.  No time
index: the scheduler's wheel is rebuilt from one full scan at start-up.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..job import Job, JobState
from . import StoreSnapshot
from ._batch import DELETE, Batch, Callback

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
LAYOUT_VERSION = 1

_JOB_COLUMNS = ("func", "name", "workload", "sched_at", "count", "timeout", "state")
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS jobs (func BLOB NOT NULL, name BLOB NOT NULL,"
    " workload BLOB NOT NULL, sched_at INTEGER NOT NULL, count INTEGER NOT NULL,"
    " timeout INTEGER NOT NULL, state INTEGER NOT NULL,"
    " PRIMARY KEY (func, name)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS funcs (func BLOB NOT NULL PRIMARY KEY) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS configs (name TEXT NOT NULL PRIMARY KEY,"
    " value INTEGER NOT NULL) WITHOUT ROWID",
)
_SQL_DROP = "DELETE FROM jobs WHERE func = ?"
_SQL_DELETE = "DELETE FROM jobs WHERE func = ? AND name = ?"
_SQL_SAVE = (
    "INSERT OR REPLACE INTO jobs (func, name, workload, sched_at, count, timeout,"
    " state) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SQL_STATE = "UPDATE jobs SET state = ? WHERE func = ? AND name = ?"
_SQL_FUNC_ADD = "INSERT OR IGNORE INTO funcs (func) VALUES (?)"
_SQL_FUNC_DEL = "DELETE FROM funcs WHERE func = ?"
_SQL_CONFIG = "INSERT OR REPLACE INTO configs (name, value) VALUES (?, ?)"


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


class SqliteStore:
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

    #: writes become durable later: the server holds replies for on_durable
    deferred = True

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
        self.durability = durability
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.close_timeout = close_timeout
        self._cache_kib = cache_mib * 1024

        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._pending = Batch()
        # the batch being committed, or whose callbacks are being fired
        self._inflight: Batch | None = None
        self._retained: Batch | None = None  # failed, to retry (no callbacks)
        self._idle = True  # the writer waits for a kick
        self._closed = False
        self._stopping = False
        self._loaded = False
        # metrics
        self._commits = 0
        self._rows = 0
        self._errors = 0
        self._commit_seconds = 0.0
        self._last_commit_seconds = 0.0
        self._healthy = True
        self._failures = 0  # consecutive failed attempts

        self._db_lock = threading.Lock()  # the writer and load() share _db
        self._db: sqlite3.Connection | None = self._open()
        self._thread = threading.Thread(
            target=self._writer, name="periodic-sqlite-writer", daemon=True
        )
        self._thread.start()

    # connection and schema -----------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        where = f"SQLite store {self.path!r}"
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
                    f"{where}: locked: in use by another server (one server per file)"
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
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # the writer ------------------------------------------------------------------
    def _writer(self) -> None:
        """Commit batches until close() (the writer thread)."""
        cond = self._cond
        while True:
            with cond:
                while True:
                    batch = self._pending
                    retained = self._retained
                    if batch.writes or retained is not None:
                        self._pending = Batch()
                        if retained is not None:
                            self._retained = None
                            retained.merge_newer(batch)
                            batch = retained
                        commit = True
                        break
                    if batch.callbacks:  # barriers behind a finished commit
                        self._pending = Batch()
                        commit = False
                        break
                    if self._stopping:
                        return
                    self._idle = True
                    cond.wait()
                self._inflight = batch
            error = self._commit(batch) if commit else None
            with cond:
                callbacks, batch.callbacks = batch.callbacks, []
                if error is not None:
                    self._retained = batch
            self._fire(callbacks, error)
            with cond:
                # only now: an on_durable() during _fire must queue behind it
                self._inflight = None
                if error is not None and not self._stopping:
                    delay = min(
                        self.retry_max, self.retry_min * 2 ** (self._failures - 1)
                    )
                    cond.wait(delay)  # close() cuts it short
                if error is not None and self._stopping:
                    return

    def _commit(self, batch: Batch) -> BaseException | None:
        """Write ``batch`` in one transaction; the error, or None."""
        dels: list[tuple[bytes, bytes]] = []
        saves: list[tuple[Any, ...]] = []
        states: list[tuple[int, bytes, bytes]] = []
        for key, op in batch.jobs.items():
            if op is DELETE:
                dels.append(key)
            elif type(op) is int:
                states.append((op, key[0], key[1]))
            else:
                saves.append(op[0] + (op[1],))
        started = time.perf_counter()
        try:
            with self._db_lock:
                db = self._db
                if db is None:  # lost after an earlier failure: reopen
                    db = self._db = self._open()
                try:
                    db.execute("BEGIN")
                    if batch.dropped:
                        db.executemany(_SQL_DROP, [(f,) for f in batch.dropped])
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
                    db.execute("COMMIT")
                except BaseException:
                    self._rollback(db)
                    raise
        except Exception as exc:  # every failure is reported and retried
            self._errors += 1
            self._failures += 1
            self._healthy = False
            if self._failures == 1 or self._failures % 100 == 0:
                log.error(
                    "SQLite commit of %d writes to %s failed (try %d), will retry: %s",
                    batch.writes,
                    self.path,
                    self._failures,
                    exc,
                )
            return exc
        elapsed = time.perf_counter() - started
        if self._failures:
            log.warning(
                "SQLite commits to %s work again after %d failures",
                self.path,
                self._failures,
            )
        self._failures = 0
        self._healthy = True
        self._commits += 1
        self._rows += len(batch.jobs) + len(batch.dropped)
        self._rows += len(batch.funcs) + len(batch.config)
        self._commit_seconds += elapsed
        self._last_commit_seconds = elapsed
        return None

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

    def _fire(self, callbacks: list[Callback], error: BaseException | None) -> None:
        for cb in callbacks:
            try:
                cb(error)
            except Exception:  # a broken callback must not stop the writer
                log.exception("on_durable callback failed")

    # Store API (event-loop thread) --------------------------------------------
    def load(self) -> StoreSnapshot:
        """Read every job, func and config value: one pass over each table
        (per func, so the func bytes are shared by its jobs); the cyclic GC is
        paused meanwhile (it would rescan the growing list again and again)."""
        self._check_open()
        with _gc_paused(), self._db_lock:
            db = self._db
            if db is None:
                db = self._db = self._open()
            jobs = _read_jobs(db)
            funcs = [r[0] for r in db.execute("SELECT func FROM funcs")]
            config = dict(db.execute("SELECT name, value FROM configs").fetchall())
        return StoreSnapshot(jobs, funcs, config)

    def save_job(self, job: Job, state: JobState) -> None:
        """Insert or replace a job (enqueued)."""
        with self._lock:
            self._pending.save_job(job, state)
            if self._idle:
                self._idle = False
                self._cond.notify()

    def set_state(self, func: bytes, name: bytes, state: JobState) -> None:
        """Change a stored job's state (enqueued; no-op for a missing job)."""
        with self._lock:
            self._pending.set_state(func, name, state)
            if self._idle:
                self._idle = False
                self._cond.notify()

    def delete_job(self, func: bytes, name: bytes) -> None:
        """Delete a job (enqueued)."""
        with self._lock:
            self._pending.delete_job(func, name)
            if self._idle:
                self._idle = False
                self._cond.notify()

    def delete_func_jobs(self, func: bytes) -> None:
        """Delete every job of ``func`` (enqueued; applied before the later
        writes of the same batch)."""
        with self._lock:
            self._pending.delete_func_jobs(func)
            if self._idle:
                self._idle = False
                self._cond.notify()

    def save_func(self, func: bytes) -> None:
        """Remember a func (enqueued)."""
        with self._lock:
            self._pending.save_func(func)
            if self._idle:
                self._idle = False
                self._cond.notify()

    def delete_func(self, func: bytes) -> None:
        """Forget a func (enqueued)."""
        with self._lock:
            self._pending.delete_func(func)
            if self._idle:
                self._idle = False
                self._cond.notify()

    def save_config(self, key: str, value: int) -> None:
        """Persist a config value (enqueued)."""
        with self._lock:
            self._pending.save_config(key, value)
            if self._idle:
                self._idle = False
                self._cond.notify()

    def on_durable(self, callback: Callback) -> None:
        """Call ``callback(error)`` after the commit of everything written so
        far (from the writer thread), or at once when nothing is outstanding.
        Callbacks fire in registration order."""
        with self._lock:
            batch = self._pending
            now = (
                not batch.writes
                and not batch.callbacks
                and self._inflight is None
                and self._retained is None
            )
            if not now:
                batch.callbacks.append(callback)
                if self._idle:
                    self._idle = False
                    self._cond.notify()
        if now:
            callback(None)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything written so far is committed; raise the
        commit error (or :class:`TimeoutError` after ``timeout`` seconds)."""
        self._check_open()
        self._flush(timeout)

    def _flush(self, timeout: float | None) -> None:
        done = threading.Event()
        box: list[BaseException | None] = []

        def cb(error: BaseException | None) -> None:
            box.append(error)
            done.set()

        self.on_durable(cb)
        if not done.wait(timeout):
            raise TimeoutError(
                f"SQLite store {self.path}: no commit within {timeout} s"
            )
        if box[0] is not None:
            raise box[0]

    def metrics(self) -> dict[str, float]:
        """Counters for monitoring: ``commits``, ``rows`` (net rows written),
        ``commit_seconds_sum``, ``last_commit_seconds``, ``errors`` (failed
        commit attempts), ``pending`` (writes not yet committed) and
        ``healthy`` (1 when the last commit attempt succeeded)."""
        with self._lock:
            pending = self._pending.writes
            if self._inflight is not None:
                pending += self._inflight.writes
            if self._retained is not None:
                pending += self._retained.writes
        return {
            "commits": float(self._commits),
            "rows": float(self._rows),
            "commit_seconds_sum": self._commit_seconds,
            "last_commit_seconds": self._last_commit_seconds,
            "errors": float(self._errors),
            "pending": float(pending),
            "healthy": 1.0 if self._healthy else 0.0,
        }

    def close(self) -> None:
        """Commit what is pending (waiting at most ``close_timeout``), stop
        the writer and close the file.  Raises the commit error when the last
        commit failed (those writes are lost with the process).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            self._flush(self.close_timeout)
        except Exception as exc:
            error = exc
            log.error(
                "SQLite store %s closed with uncommitted writes: %s", self.path, exc
            )
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(self.close_timeout)
        with self._db_lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"SQLite store {self.path} is closed")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Keep the cyclic GC off while millions of tuples are built."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


# every distinct func, one index probe each (a skip-scan over the primary key)
_SQL_JOB_FUNCS = (
    "WITH RECURSIVE f(func) AS (SELECT min(func) FROM jobs UNION ALL"
    " SELECT (SELECT min(func) FROM jobs WHERE func > f.func) FROM f"
    " WHERE f.func IS NOT NULL) SELECT func FROM f WHERE func IS NOT NULL"
)
_SQL_JOBS_OF = (
    "SELECT name, workload, sched_at, count, timeout, state FROM jobs WHERE func = ?"
)


def _read_jobs(db: sqlite3.Connection) -> list[tuple[Job, JobState]]:
    """Every stored job with its state."""
    new = tuple.__new__
    states = (JobState.PENDING, JobState.RUNNING, JobState.LOCKED)
    out: list[tuple[Job, JobState]] = []
    append = out.append
    for (func,) in db.execute(_SQL_JOB_FUNCS).fetchall():
        cur = db.execute(_SQL_JOBS_OF, (func,))
        while rows := cur.fetchmany(8192):
            for n, w, t, c, o, s in rows:
                # an unknown state (a damaged row) loads as pending
                append(
                    (
                        new(Job, (func, n, w, t, c, o)),
                        states[s] if 0 <= s < 3 else states[0],
                    )
                )
    return out
