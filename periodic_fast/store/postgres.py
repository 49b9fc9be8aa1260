"""The PostgreSQL store (``-p postgres://...``): asyncpg on a writer thread.

The :class:`~periodic_fast.store.Store` calls arrive on the server's event
loop and must not block, so they only record the change in an in-memory batch
(under a lock; a few hundred nanoseconds).  A writer thread runs its own event
loop with one asyncpg connection and commits batches one after the other:
everything that arrived while a commit was in flight goes into the next one
(group commit), so the commit rate adapts to the load without a timer.

Coalescing (only the net effect per job key is written) follows the rules of
:mod:`periodic_fast.store._batch`, shared with the SQLite store, as are the
loop-side API, barriers, retry bookkeeping and metrics
(:class:`~periodic_fast.store._writer.BatchWriter`).  Each batch
is one transaction.  Without a ``delete_func_jobs`` it is a single
statement (data-modifying CTEs over ``unnest`` arrays: one round trip, one
commit; a batch with extras uses a variant with two more CTEs); the keys of
its parts are disjoint, so their order inside the statement does not matter.
A ``delete_func_extras`` goes first, in a statement of its own, as a func
drop does.

Durability: ``on_durable`` callbacks belong to the batch that is open when they
are registered and fire, in order, after that batch's commit, with ``None`` or
the exception.  A failed batch is kept and merged in front of the next one, and
the writer retries with a bounded exponential backoff (``retry_min`` ..
``retry_max``) until it commits, reconnecting when the connection was lost.
Every statement only sets final states, so replaying a batch whose COMMIT
outcome is unknown is harmless.  ``durability="strict"`` runs with
``synchronous_commit=on`` (a commit is on disk before it is reported),
``"relaxed"`` with ``synchronous_commit=off`` (a crash of the PostgreSQL server
may lose the last fraction of a second; a crash of periodicd loses nothing
acknowledged).

Layout (``prefix`` is prepended to every table name so several deployments can
share a database): ``jobs(func BYTEA, name BYTEA, workload BYTEA,
sched_at BIGINT, count INTEGER, timeout INTEGER, state SMALLINT,
PRIMARY KEY (func, name))``, ``funcs(func BYTEA PRIMARY KEY)``,
``configs(name TEXT PRIMARY KEY, value BIGINT)``, ``extras(kind TEXT,
func BYTEA, name BYTEA, value BYTEA, PRIMARY KEY (kind, func, name))`` (the
scheduler's job-feature data: retry policies, attempts, the dead set, cron
schedules; created at open on older deployments), and ``store_owner`` (one
row: the claim's epoch).  Times are 64-bit; there is no time index (the
scheduler's wheel is rebuilt from a full read at start).

One server per database, schema and prefix: the store holds a session-level
advisory lock on its prefix for its life and refuses to open when another
server holds it; after a reconnect it takes the lock again, and stops
committing for good when another server had the prefix meanwhile
(:mod:`periodic_fast.store._pg_owner`).

Cluster mode (``cluster=`` a :class:`~periodic_fast.store.cluster.Coordinator`,
docs/cluster.md): several stores share one prefix, the lock is taken shared,
``jobs`` gets its ``part`` column filled and indexed, :meth:`PostgresStore.load`
returns no jobs (the server loads partitions as it acquires them:
:meth:`PostgresStore.load_partitions`), and every commit is fenced by the
epochs of the partitions it touches (:mod:`periodic_fast.store._pg_cluster`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

import asyncpg

from ..job import Job, JobState
from ._batch import DELETE as _DELETE
from ._batch import Batch as _Batch
from ._contract import StoreSnapshot
from ._pg_cluster import PgCluster
from ._pg_locks import PgLocks
from ._pg_owner import (
    OwnershipLostError,
    PostgresStoreError,
    PrefixInUseError,
    PrefixOwner,
)
from ._pg_uri import check_prefix, describe, parse_postgres_uri
from ._writer import BatchWriter
from .cluster import Coordinator, FencedOut, Tick

__all__ = [
    "OwnershipLostError",
    "PostgresStore",
    "PostgresStoreError",
    "PrefixInUseError",
    "parse_postgres_uri",
]

log = logging.getLogger("periodic_fast.store.postgres")

_T = TypeVar("_T")
#: ``StoreSnapshot.extras``: kind -> [(func, name, value), ...]
_Extras = dict[str, list[tuple[bytes, bytes, bytes]]]
_WRITER_PLANNER = {
    "enable_seqscan": "off",
    "enable_hashjoin": "off",
    "enable_mergejoin": "off",
}
_LOAD_CHUNK = 8192  # rows per cursor fetch while the jobs stream in
# a commit statement carries at most this many job rows / bytes; a bigger
# batch is split over several statements in one transaction
_CHUNK_ROWS = 200_000
_CHUNK_BYTES = 64 << 20


class PostgresStore(BatchWriter):
    """:class:`~periodic_fast.store.Store` on PostgreSQL (see the module doc).

    :param connect: ``asyncpg.connect`` keyword arguments (``dsn=`` or
        ``host=``/``database=``/...), e.g. from :func:`parse_postgres_uri`.
    :param prefix: prepended to the table names.
    :param durability: ``"strict"`` (``synchronous_commit=on``) or
        ``"relaxed"`` (``off``).
    :param connect_timeout: seconds for one connection attempt.
    :param command_timeout: seconds one statement may take before it counts
        as failed (the batch is then retried).
    :param retry_min: first delay (s) before a failed batch is retried; it
        doubles up to ``retry_max``.
    :param close_timeout: how long :meth:`close` waits for the last commit.
    :param lock_wait: how long (s) opening waits for a prefix held by another
        session (a predecessor whose backend is still exiting) before it
        refuses.
    :param cluster: run as a cluster node with this coordinator (its prefix
        must be the store's): see the module doc.

    Opening connects, creates the tables when missing and checks their layout
    (raises :class:`ValueError` for a table of another layout, e.g. the
    reference server's, and the connection error when the server cannot be
    reached), then claims the prefix: :class:`PrefixInUseError` when another
    server holds it (one server per database and prefix, see
    :mod:`periodic_fast.store._pg_owner`; a store fenced off later fails its
    commits with :class:`OwnershipLostError`).
    """

    def __init__(
        self,
        connect: dict[str, Any],
        *,
        prefix: str = "",
        durability: str = "strict",
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
        retry_min: float = 0.01,
        retry_max: float = 1.0,
        close_timeout: float = 30.0,
        lock_wait: float = 3.0,
        cluster: Coordinator | None = None,
    ) -> None:
        if durability not in ("strict", "relaxed"):
            raise ValueError(f"durability {durability!r}: expected strict or relaxed")
        self.prefix = check_prefix(prefix)
        super().__init__(
            "PostgreSQL",
            "",
            log,
            retry_min=retry_min,
            retry_max=retry_max,
            close_timeout=close_timeout,
        )
        self.durability = durability
        kwargs = dict(connect)
        settings = dict(kwargs.pop("server_settings", None) or {})
        settings.setdefault("application_name", "periodic_fast")
        settings["synchronous_commit"] = "on" if durability == "strict" else "off"
        # Every write finds its rows by primary key.  A churning queue table
        # has few live rows in many pages, and after an ANALYZE the planner
        # then prefers a seq scan + hash join per commit (measured: 128 state
        # changes on a table of 100 live rows in 3,400 pages), which grows
        # with the bloat.  Index nested loops only; load() turns seq scans on.
        settings.update(_WRITER_PLANNER)
        if cluster is not None:
            # a node frozen (or silently cut off) inside a fenced commit or a
            # heartbeat keeps its partition rows locked, and the others'
            # takeovers (SKIP LOCKED) pass those partitions by for as long:
            # PostgreSQL ends such a session after one lease (the node's
            # dispatch deadline has passed by then; nothing was committed)
            settings.setdefault(
                "idle_in_transaction_session_timeout",
                str(max(1, round(cluster.lease_time * 1000))),
            )
        kwargs["server_settings"] = settings
        kwargs.setdefault("timeout", connect_timeout)
        kwargs.setdefault("command_timeout", command_timeout)
        self._connect_kwargs = kwargs
        self._t_jobs = f"{self.prefix}jobs"
        self._t_funcs = f"{self.prefix}funcs"
        self._t_configs = f"{self.prefix}configs"
        self._t_extras = f"{self.prefix}extras"
        where = f"PostgreSQL store {describe(kwargs)}"
        self._owner = PrefixOwner(
            self.prefix, f"{self.prefix}store_owner", where, lock_wait
        )
        self._sql_commit = self._commit_sql()
        #: called from the writer thread with the partitions a fenced-out
        #: commit found lost (cluster mode; the server unloads them)
        self.on_fenced: Callable[[list[int]], None] | None = None
        self._cluster: PgCluster | None = None
        self._pg_locks: PgLocks | None = None  # cluster_locks(), made when used
        if cluster is not None:
            if cluster.prefix != self.prefix:
                raise ValueError("the coordinator's prefix must be the store's")
            self._cluster = PgCluster(cluster, self._t_jobs, kwargs, self._owner)
            self._sql_commit_part = self._commit_sql(part=True)
        extras = self._t_extras
        # cluster mode: the saved extras' partitions as an 8th array
        self._sql_extras_part = f"WITH{_extras_ctes(extras, 1, part=True)}"
        # the single statement with the batch's extras too ($17..$23)
        self._sql_commit_x = (
            self._sql_commit.removesuffix(" SELECT 1") + "," + _extras_ctes(extras, 17)
        )
        self._sql_extras = f"WITH{_extras_ctes(extras, 1)}"
        self._sql_extras_drop = (
            f"DELETE FROM {extras} e USING unnest($1::text[], $2::bytea[])"
            " AS x(kind, func) WHERE e.kind = x.kind AND e.func = x.func"
        )

        self._conn: asyncpg.Connection | None = None
        self._wloop = _new_loop()
        self._wake: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name="periodic-pg-writer", daemon=True
        )
        self._thread.start()
        try:
            self._call(self._open())
        except BaseException as exc:
            with contextlib.suppress(Exception):
                self._call(self._drop_connection(), timeout=10)
            self._shutdown_thread()
            if isinstance(exc, ValueError | PostgresStoreError) or not isinstance(
                exc, Exception
            ):
                raise
            raise PostgresStoreError(
                f"cannot open the {where}: {type(exc).__name__}: {exc}"
            ) from exc
        self._call(self._start_writer())

    # writer thread plumbing ------------------------------------------------------
    def _thread_main(self) -> None:
        loop = self._wloop
        asyncio.set_event_loop(loop)
        self._wake = asyncio.Event()
        self._conn_lock = asyncio.Lock()  # the writer and load() share one connection
        try:
            loop.run_forever()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Coroutine[Any, Any, _T], timeout: float | None = None) -> _T:
        """Run ``coro`` on the writer loop and wait for its result."""
        fut: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._wloop)
        return fut.result(timeout)

    def _kick(self) -> None:
        self._idle = False
        self._wloop.call_soon_threadsafe(self._wake_writer)

    def _wake_writer(self) -> None:
        assert self._wake is not None
        self._wake.set()

    def _shutdown_thread(self) -> None:
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._wloop.call_soon_threadsafe(self._wloop.stop)
            self._thread.join(10)

    def _stop(self) -> None:
        self._stopping = True
        with contextlib.suppress(Exception):
            self._call(self._stop_writer(), timeout=15)
        self._shutdown_thread()

    async def _start_writer(self) -> None:
        self._writer_task = asyncio.ensure_future(self._writer())

    async def _stop_writer(self) -> None:
        task = self._writer_task
        if not task.done():
            task.cancel()  # idle, in a backoff sleep or in a failing commit
            with contextlib.suppress(BaseException):
                await task
        if self._pg_locks is not None:
            await self._pg_locks.close()
        if self._cluster is not None:
            await self._cluster.close()
        await self._drop_connection()

    # connection and schema -----------------------------------------------------
    async def _connection(self) -> asyncpg.Connection:
        conn = self._conn
        if conn is None or conn.is_closed():
            owner = self._owner
            if owner.fenced is not None:  # never take the lock again
                raise owner.fenced
            conn = await asyncpg.connect(**self._connect_kwargs)
            if self._cluster is not None and owner.pid is not None:
                try:  # a cluster node's reconnect: the shared lock again
                    await owner.claim_shared(conn)
                except BaseException:
                    conn.terminate()
                    raise
            elif owner.epoch is not None:  # a reconnect: claim the prefix again
                try:
                    await owner.claim(conn)
                except BaseException:
                    conn.terminate()  # and the lock with it
                    raise
            self._conn = conn
        return conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            if not conn.is_closed():
                conn.terminate()

    async def _open(self) -> None:
        conn = await self._connection()
        jobs, funcs, configs = self._t_jobs, self._t_funcs, self._t_configs
        async with conn.transaction():
            # two servers creating the tables at once would race in the catalog
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", jobs)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {jobs} ("
                " func BYTEA NOT NULL, name BYTEA NOT NULL,"
                " workload BYTEA NOT NULL DEFAULT '',"
                " sched_at BIGINT NOT NULL DEFAULT 0,"
                " count INTEGER NOT NULL DEFAULT 0,"
                " timeout INTEGER NOT NULL DEFAULT 0,"
                " state SMALLINT NOT NULL DEFAULT 0,"
                " PRIMARY KEY (func, name))"
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {funcs} (func BYTEA PRIMARY KEY)"
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {configs}"
                " (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._t_extras} (kind TEXT NOT NULL,"
                " func BYTEA NOT NULL, name BYTEA NOT NULL, value BYTEA NOT NULL,"
                " PRIMARY KEY (kind, func, name))"
            )
            await conn.execute(self._owner.schema_sql())
            # cluster mode's partition of each row (NULL from a single node)
            await conn.execute(
                f"ALTER TABLE {jobs} ADD COLUMN IF NOT EXISTS part INTEGER"
            )
            # a job's extras too (NULL for func-wide ones: retry policies)
            await conn.execute(
                f"ALTER TABLE {self._t_extras} ADD COLUMN IF NOT EXISTS part INTEGER"
            )
        expected = {
            jobs: {
                "func": "bytea",
                "name": "bytea",
                "workload": "bytea",
                "sched_at": "bigint",
                "count": "integer",
                "timeout": "integer",
                "state": "smallint",
            },
            funcs: {"func": "bytea"},
            configs: {"name": "text", "value": "bigint"},
            self._t_extras: {
                "kind": "text",
                "func": "bytea",
                "name": "bytea",
                "value": "bytea",
            },
            self._owner.table: {"one": "boolean", "epoch": "bigint"},
        }
        rows = await conn.fetch(
            "SELECT table_name::text, column_name::text, data_type::text"
            " FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ANY($1::text[])",
            [t.lower() for t in expected],
        )
        found: dict[str, dict[str, str]] = {}
        for table, column, dtype in rows:
            found.setdefault(table, {})[column] = dtype
        for table, columns in expected.items():
            have = found.get(table.lower(), {})
            missing = {c: t for c, t in columns.items() if have.get(c) != t}
            if missing:
                raise ValueError(
                    f"table {table} exists with another layout (columns {sorted(have)},"
                    f" need {columns}); is it the reference server's? "
                    "Choose another database or a table prefix (prefix=...)"
                )
        if self._cluster is not None:
            await self._cluster.open(conn)
        else:
            await self._owner.claim(conn)

    def _commit_sql(self, part: bool = False) -> str:
        """The commit statement; with ``part`` (cluster mode) the saved rows'
        partitions come as a 17th array."""
        jobs, funcs, configs = self._t_jobs, self._t_funcs, self._t_configs
        cols, vals = (", part", ", $17::int4[]") if part else ("", "")
        # one statement, one implicit transaction; the CTEs touch disjoint keys
        return (
            "WITH"
            f" d AS (DELETE FROM {jobs} j"
            " USING unnest($1::bytea[], $2::bytea[]) AS x(func, name)"
            " WHERE j.func = x.func AND j.name = x.name),"
            f" u AS (INSERT INTO {jobs}"
            f" (func, name, workload, sched_at, count, timeout, state{cols})"
            " SELECT * FROM unnest($3::bytea[], $4::bytea[], $5::bytea[],"
            f" $6::int8[], $7::int4[], $8::int4[], $9::int2[]{vals})"
            " ON CONFLICT (func, name) DO UPDATE SET workload = EXCLUDED.workload,"
            " sched_at = EXCLUDED.sched_at, count = EXCLUDED.count,"
            " timeout = EXCLUDED.timeout, state = EXCLUDED.state),"
            f" s AS (UPDATE {jobs} j SET state = x.state"
            " FROM unnest($10::bytea[], $11::bytea[], $12::int2[])"
            " AS x(func, name, state)"
            " WHERE j.func = x.func AND j.name = x.name),"
            f" fa AS (INSERT INTO {funcs} (func) SELECT unnest($13::bytea[])"
            " ON CONFLICT DO NOTHING),"
            f" fd AS (DELETE FROM {funcs} WHERE func = ANY($14::bytea[])),"
            f" c AS (INSERT INTO {configs} (name, value)"
            " SELECT * FROM unnest($15::text[], $16::int8[])"
            " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value)"
            " SELECT 1"
        )

    # the writer ------------------------------------------------------------------
    async def _writer(self) -> None:
        """Commit batches until close() (runs on the writer loop)."""
        wake = self._wake
        assert wake is not None
        while True:
            with self._lock:
                batch, commit = self._take()
                if batch is None:
                    self._idle = True
            if batch is None:
                if self._stopping:
                    return
                await wake.wait()
                wake.clear()
                continue
            error: BaseException | None = None
            if commit:
                async with self._conn_lock:
                    error = await self._commit(batch)
            self._settle(batch, error)
            if error is not None:
                if self._stopping:
                    return
                await asyncio.sleep(self._retry_delay())

    async def _commit(self, batch: _Batch) -> BaseException | None:
        chunks = _statement_args(batch)
        extras = _extras_args(batch) if batch.extras else []
        started = time.perf_counter()
        while True:
            reused = self._conn is not None and not self._conn.is_closed()
            try:
                await self._execute(batch, chunks, extras)
                break
            except FencedOut as exc:  # lost partitions: their writes go
                self._fenced_out(batch, exc)
                return self._failed(batch, exc)
            except Exception as exc:  # every failure is reported and retried
                live = self._conn
                lost = live is None or live.is_closed() or not _is_data_error(exc)
                if lost:
                    await self._drop_connection()
                if lost and reused and not isinstance(exc, asyncio.TimeoutError):
                    # a connection that went stale while idle (server restart,
                    # idle timeout, network): try once more on a fresh one
                    # before refusing anything; a replay is harmless
                    log.info("PostgreSQL connection lost (%r); reconnecting", exc)
                    continue
                return self._failed(batch, exc)
        self._committed(batch, time.perf_counter() - started)
        return None

    async def _execute(
        self,
        batch: _Batch,
        chunks: list[tuple[list[Any], ...]],
        extras: list[tuple[list[Any], ...]],
    ) -> None:
        conn = await self._connection()
        if self._cluster is not None:
            sql = (self._sql_commit_part, self._sql_extras_part)
            await self._cluster.execute(conn, batch, chunks, extras, sql)
            return
        dropped, extras_dropped = batch.dropped, batch.extras_dropped
        if dropped or extras_dropped or len(chunks) > 1 or len(extras) > 1:
            async with conn.transaction():
                if dropped:
                    await conn.execute(
                        f"DELETE FROM {self._t_jobs} WHERE func = ANY($1::bytea[])",
                        list(dropped),
                    )
                if extras_dropped:
                    kinds, funcs = zip(*extras_dropped, strict=True)
                    await conn.execute(self._sql_extras_drop, kinds, funcs)
                for args in chunks:
                    await conn.execute(self._sql_commit, *args)
                for args in extras:
                    await conn.execute(self._sql_extras, *args)
        elif extras:  # one statement with the extras
            await conn.execute(self._sql_commit_x, *chunks[0], *extras[0])
        else:  # the usual case: one statement, its own transaction
            await conn.execute(self._sql_commit, *chunks[0])

    def _fenced_out(self, batch: _Batch, exc: FencedOut) -> None:
        """A commit refused by fencing: the lost partitions' writes leave the
        batch (it is retried without them), the server hears of the loss."""
        assert self._cluster is not None
        dropped = self._cluster.drop_stale(batch, exc.parts)
        log.warning(
            "cluster node %s lost partitions %s: %d write(s) for them dropped"
            " (their new owner holds the jobs)",
            self._cluster.coord.node,
            exc.parts,
            dropped,
        )
        hook = self.on_fenced
        if hook is not None:
            try:
                hook(list(exc.parts))
            except Exception:  # a broken hook must not stop the writer
                log.exception("on_fenced hook failed")

    # cluster mode (the server's loop) -----------------------------------------------
    @property
    def coordinator(self) -> Coordinator | None:
        """The coordinator in cluster mode, else None.  Its state belongs to
        the writer thread: read it through the methods below."""
        return None if self._cluster is None else self._cluster.coord

    def _pgc(self) -> PgCluster:
        if self._cluster is None:
            raise RuntimeError("not a cluster store (open it with cluster=)")
        self._check_open()
        return self._cluster

    async def _on_writer(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Await ``coro`` run on the writer loop, from another loop."""
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(coro, self._wloop)
        )

    async def cluster_tick(self) -> tuple[Tick, dict[int, float]]:
        """One heartbeat (:meth:`Coordinator.tick
        <periodic_fast.store.cluster.Coordinator.tick>`) and each owned
        partition's dispatch deadline on the monotonic clock."""
        return await self._on_writer(self._pgc().tick())

    async def cluster_release(self, parts: list[int]) -> None:
        """Hand ``parts`` over; only once their writes are committed."""
        await self._on_writer(self._pgc().release(parts))

    async def cluster_leave(self) -> None:
        """Release every partition and leave the cluster (after a flush)."""
        await self._on_writer(self._pgc().leave())

    def cluster_locks(self) -> PgLocks:
        """The cluster's global locks (:mod:`._pg_locks`); their coroutines
        run on the writer loop through :meth:`cluster_run`."""
        if self._pg_locks is None:
            self._pg_locks = PgLocks(self._pgc())
        return self._pg_locks

    def cluster_run(self, coro: Coroutine[Any, Any, _T]) -> asyncio.Future[_T]:
        """Start ``coro`` on the writer loop now (so calls keep their order)
        and return a future of the calling loop for its result."""
        return asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._wloop))

    async def cluster_dump(self) -> bytes:
        """Every job of the cluster (all partitions) as a DUMP job list,
        read in one repeatable-read snapshot (committed state)."""
        return await self._on_writer(self._pgc().dump())

    async def partition_extras(
        self, parts: list[int]
    ) -> list[tuple[str, bytes, bytes, bytes]]:
        """The job extras ``(kind, func, name, value)`` of ``parts`` (retry
        attempts, dead jobs, cron schedules), read on the writer loop."""
        return await self._on_writer(self._pgc().part_extras(parts))

    async def partition_chunks(
        self, parts: list[int]
    ) -> AsyncIterator[list[tuple[Any, ...]]]:
        """The rows of ``parts`` (the tuples of :attr:`StoreSnapshot.rows
        <periodic_fast.store.StoreSnapshot.rows>`) in chunks, fetched on the
        writer loop as the caller (on its own loop) consumes them."""
        chunks = self._pgc().part_chunks(parts)
        try:
            while (chunk := await self._on_writer(_next_chunk(chunks))) is not None:
                yield chunk
        finally:
            await self._on_writer(chunks.aclose())

    def load_partitions(self, parts: list[int]) -> Iterator[list[tuple[Any, ...]]]:
        """The blocking form of :meth:`partition_chunks` (tests, tools):
        the rows of ``parts`` in chunks, streamed like :meth:`load`'s."""
        chunks = self._pgc().part_chunks(parts)
        try:
            while (chunk := self._call(_next_chunk(chunks))) is not None:
                yield chunk
        finally:
            self._call(chunks.aclose())

    # Store API (event-loop thread) --------------------------------------------
    def load(self) -> StoreSnapshot:
        """Read every func and config value, and stream the jobs.

        ``jobs`` is a one-pass iterator over a server-side cursor, fetched in
        chunks of ``_LOAD_CHUNK`` rows as the caller consumes it (one chunk
        in memory at a time, not a list of every job beside the records
        built from it).  The writer waits for the connection until the
        iterator is exhausted or closed.

        Cluster mode: no jobs and only the func-wide extras (retry
        policies): a job's extras come with its partition, as the node
        acquires it (:meth:`partition_extras`, docs/cluster.md)."""
        self._check_open()
        funcs, config, extras = self._call(self._load_meta())
        if self._cluster is not None:
            extras = {
                kind: [e for e in rows if not e[1]] for kind, rows in extras.items()
            }
            return StoreSnapshot([], funcs, config, extras=extras)
        return StoreSnapshot(self._stream_jobs(), funcs, config, extras=extras)

    async def _load_meta(self) -> tuple[list[bytes], dict[str, int], _Extras]:
        async with self._conn_lock:
            conn = await self._connection()
            funcs = [
                r[0] for r in await conn.fetch(f"SELECT func FROM {self._t_funcs}")
            ]
            rows = await conn.fetch(f"SELECT name, value FROM {self._t_configs}")
            extras: _Extras = {}
            for kind, func, name, value in await conn.fetch(
                f"SELECT kind, func, name, value FROM {self._t_extras}"
            ):
                extras.setdefault(kind, []).append((func, name, value))
            return funcs, {r[0]: r[1] for r in rows}, extras

    def _stream_jobs(self) -> Iterator[tuple[Job, JobState]]:
        chunks = self._job_chunks()
        try:
            while (chunk := self._call(_next_chunk(chunks))) is not None:
                yield from chunk
        finally:
            self._call(chunks.aclose())

    async def _job_chunks(
        self,
    ) -> AsyncGenerator[list[tuple[Job, JobState]], None]:
        states = (JobState.PENDING, JobState.RUNNING, JobState.LOCKED)
        async with self._conn_lock:
            conn = await self._connection()
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                await conn.execute("SET LOCAL enable_seqscan = on")  # a full read
                cursor = await conn.cursor(
                    "SELECT func, name, workload, sched_at, count, timeout, state"
                    f" FROM {self._t_jobs}"
                )
                while rows := await cursor.fetch(_LOAD_CHUNK):
                    yield [
                        (
                            Job(f, n, w, t, c, o),
                            states[s] if 0 <= s < 3 else JobState(s),
                        )
                        for f, n, w, t, c, o, s in rows
                    ]


async def _next_chunk(
    chunks: AsyncGenerator[list[tuple[Job, JobState]], None],
) -> list[tuple[Job, JobState]] | None:
    """The next chunk, or None at the end (a plain coroutine for _call)."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


def _statement_args(batch: _Batch) -> list[tuple[list[Any], ...]]:
    """The commit statement's 16 array arguments for ``batch``: one tuple,
    or several when the batch is too big for one statement (a parameter is
    limited to 1 GB); funcs and config go with the first."""
    chunks: list[tuple[list[Any], ...]] = []
    args: tuple[list[Any], ...] = tuple([] for _ in range(16))
    (del_f, del_n, up_f, up_n, up_w, up_t, up_c, up_o, up_s, st_f, st_n, st_s,
     fadd, fdel, cfg_k, cfg_v) = args  # fmt: skip
    for func, keep in batch.funcs.items():
        (fadd if keep else fdel).append(func)
    cfg_k.extend(batch.config)
    cfg_v.extend(batch.config.values())
    rows = size = 0
    for (func, name), op in batch.jobs.items():
        if rows >= _CHUNK_ROWS or size >= _CHUNK_BYTES:
            chunks.append(args)
            args = tuple([] for _ in range(16))
            (del_f, del_n, up_f, up_n, up_w, up_t, up_c, up_o, up_s, st_f, st_n,
             st_s) = args[:12]  # fmt: skip
            rows = size = 0
        rows += 1
        size += len(func) + len(name)
        if op is _DELETE:
            del_f.append(func)
            del_n.append(name)
        elif type(op) is int:
            st_f.append(func)
            st_n.append(name)
            st_s.append(op)
        else:
            job, state = op
            up_f.append(func)
            up_n.append(name)
            up_w.append(job.workload)
            up_t.append(job.sched_at)
            up_c.append(job.count)
            up_o.append(job.timeout)
            up_s.append(state)
            size += len(job.workload)
    chunks.append(args)
    return chunks


def _extras_ctes(table: str, first: int, part: bool = False) -> str:
    """The extras' delete and upsert CTEs, numbering their 7 array
    parameters from ``$first`` (kind, func, name to delete; kind, func,
    name, value to save: see :func:`_extras_args`); with ``part`` (cluster
    mode) an 8th array holds the saved extras' partitions."""
    p = [f"${first + i}" for i in range(8)]
    cols, vals, upd = (
        (", part", f", {p[7]}::int4[]", ", part = EXCLUDED.part")
        if part
        else ("", "", "")
    )
    return (
        f" ed AS (DELETE FROM {table} e"
        f" USING unnest({p[0]}::text[], {p[1]}::bytea[], {p[2]}::bytea[])"
        " AS x(kind, func, name)"
        " WHERE e.kind = x.kind AND e.func = x.func AND e.name = x.name),"
        f" eu AS (INSERT INTO {table} (kind, func, name, value{cols})"
        f" SELECT * FROM unnest({p[3]}::text[], {p[4]}::bytea[], {p[5]}::bytea[],"
        f" {p[6]}::bytea[]{vals})"
        f" ON CONFLICT (kind, func, name) DO UPDATE SET value = EXCLUDED.value{upd})"
        " SELECT 1"
    )


def _extras_args(batch: _Batch) -> list[tuple[list[Any], ...]]:
    """The 7 array arguments of the extras' CTEs for ``batch``'s extras, in
    chunks within the statement limits (a value may be tens of MiB)."""
    chunks: list[tuple[list[Any], ...]] = []
    args: tuple[list[Any], ...] = ()
    rows = size = _CHUNK_ROWS  # start a chunk at the first row
    for (kind, func, name), value in batch.extras.items():
        if rows >= _CHUNK_ROWS or size >= _CHUNK_BYTES:
            args = tuple([] for _ in range(7))
            chunks.append(args)
            rows = size = 0
        rows += 1
        size += len(func) + len(name)
        if value is None:
            target = args[:3]
        else:
            target = args[3:6]
            args[6].append(value)
            size += len(value)
        for column, item in zip(target, (kind, func, name), strict=True):
            column.append(item)
    return chunks


def _is_data_error(exc: BaseException) -> bool:
    """True for an error the server reported on a live connection (a dropped
    table, a constraint): the connection can be reused."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(
        exc,
        (asyncpg.PostgresConnectionError, asyncpg.exceptions.AdminShutdownError),
    )


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop
