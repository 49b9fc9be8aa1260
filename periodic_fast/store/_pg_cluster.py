"""The PostgreSQL store in cluster mode (docs/cluster.md): the ``part``
column, per-partition loads, fenced commits and the heartbeat connection.

:class:`PgCluster` is the cluster half of a
:class:`~periodic_fast.store.postgres.PostgresStore` opened with a
:class:`~periodic_fast.store.cluster.Coordinator`; every method runs on the
store's writer loop (its thread), so the coordinator's state is only ever
touched by that thread.

* **Schema.**  Every store (single-node too) has a nullable ``part INTEGER``
  column on its jobs table (added to older tables at open: an instant
  ``ALTER``, no rewrite).  A single-node server leaves it NULL: it never
  needs it, and computing it would cost every commit.  A cluster node
  writes it with every saved row (:func:`~periodic_fast.store.cluster.partition_of`
  of the key), creates the index on it, and at open fills the rows a
  single-node server left NULL (the two never run at once on one prefix:
  the advisory lock is exclusive for one, shared for the other).
* **Fenced commits.**  A batch commits inside :meth:`Coordinator.fenced
  <periodic_fast.store.cluster.Coordinator.fenced>` over the partitions its
  job keys touch (a func drop: every owned partition, and it deletes only
  their rows).  When a partition was lost the whole transaction rolls back
  with :class:`~periodic_fast.store.cluster.FencedOut`: the store fails the
  batch's barriers, drops the lost partitions' job writes from the batch
  (:meth:`PgCluster.drop_stale`; their new owner has the truth) and retries
  the rest, and reports the partitions through ``on_fenced``.
* **Side connections.**  The heartbeat (:meth:`PgCluster.tick`,
  :meth:`~PgCluster.release`, :meth:`~PgCluster.leave`) and the partition
  loads (:meth:`PgCluster.part_chunks`) each have their own connection, so
  neither waits behind a commit and a long load never delays a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Iterable
from typing import Any

import asyncpg

from ..codec import encode_job_list
from ._batch import Batch
from ._pg_owner import PrefixOwner
from .cluster import Coordinator, Tick, batch_partitions, partition_of

__all__ = ["PgCluster"]

_BACKFILL_ROWS = 20_000  # NULL parts filled per statement at open
_LOAD_CHUNK = 8192  # rows per cursor fetch of a partition load


class PgCluster:
    """The cluster-mode side of one PostgreSQL store (see the module doc).

    :param coord: this node's coordinator.
    :param jobs: the jobs table's name (prefix included).
    :param connect: ``asyncpg.connect`` keywords for the side connections.
    :param owner: the store's prefix claim (taken shared here).
    """

    def __init__(
        self,
        coord: Coordinator,
        jobs: str,
        connect: dict[str, Any],
        owner: PrefixOwner,
    ) -> None:
        self.coord = coord
        self._jobs = jobs
        self._configs = f"{coord.prefix}configs"  # the store's config table
        self._extras = f"{coord.prefix}extras"  # the store's extras table
        self._connect = connect
        self._owner = owner
        self._conns: dict[str, asyncpg.Connection] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.sql_drop = (
            f"DELETE FROM {jobs} WHERE func = ANY($1::bytea[])"
            " AND part = ANY($2::int4[])"
        )
        # a func's job extras (DROP_FUNC): this node's partitions only
        self.sql_extras_drop = (
            f"DELETE FROM {self._extras} e USING unnest($1::text[], $2::bytea[])"
            " AS x(kind, func) WHERE e.kind = x.kind AND e.func = x.func"
            " AND e.part = ANY($3::int4[])"
        )

    # schema ------------------------------------------------------------------------
    async def open(self, conn: asyncpg.Connection) -> None:
        """At the store's open, on its writer connection: the shared prefix
        lock, the part index, the cluster tables, NULL parts filled, and the
        node's first heartbeat row."""
        await self._owner.claim_shared(conn)
        jobs = self._jobs
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", jobs)
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {jobs}_part ON {jobs} (part)"
            )
            await conn.execute(
                f"CREATE INDEX IF NOT EXISTS {self._extras}_part"
                f" ON {self._extras} (part)"
            )
        await self.coord.setup(conn)
        await self._backfill(conn)
        await self.coord.join(conn)

    async def _backfill(self, conn: asyncpg.Connection) -> None:
        """Fill the ``part`` of rows written by a single-node server."""
        count = self.coord.partitions
        jobs = self._jobs
        while rows := await conn.fetch(
            f"SELECT func, name FROM {jobs} WHERE part IS NULL LIMIT {_BACKFILL_ROWS}"
        ):
            funcs = [r[0] for r in rows]
            names = [r[1] for r in rows]
            parts = [
                partition_of(f, n, count) for f, n in zip(funcs, names, strict=True)
            ]
            await conn.execute(
                f"UPDATE {jobs} j SET part = x.part"
                " FROM unnest($1::bytea[], $2::bytea[], $3::int4[])"
                " AS x(func, name, part)"
                " WHERE j.func = x.func AND j.name = x.name",
                funcs,
                names,
                parts,
            )
        extras = self._extras
        # a job's extras (name not empty); func-wide ones keep part NULL
        while rows := await conn.fetch(
            f"SELECT kind, func, name FROM {extras} WHERE part IS NULL"
            f" AND name <> ''::bytea LIMIT {_BACKFILL_ROWS}"
        ):
            cols = list(zip(*rows, strict=True))
            parts = [
                partition_of(f, n, count) for f, n in zip(cols[1], cols[2], strict=True)
            ]
            await conn.execute(
                f"UPDATE {extras} e SET part = x.part"
                " FROM unnest($1::text[], $2::bytea[], $3::bytea[], $4::int4[])"
                " AS x(kind, func, name, part)"
                " WHERE e.kind = x.kind AND e.func = x.func AND e.name = x.name",
                *cols,
                parts,
            )

    # fenced commits ------------------------------------------------------------------
    async def execute(
        self,
        conn: asyncpg.Connection,
        batch: Batch,
        chunks: list[tuple[list[Any], ...]],
        extras: list[tuple[list[Any], ...]],
        sql: tuple[str, str],
    ) -> None:
        """Commit ``batch`` (its statement ``chunks`` and ``extras``
        arguments) in one transaction fenced by its partitions (its job
        keys' and its job extras'); ``sql`` is the store's (commit with
        parts, extras with parts) statements.  Raises
        :class:`~periodic_fast.store.cluster.FencedOut` (nothing committed)
        when a partition was lost."""
        coord = self.coord
        count = coord.partitions
        sql_commit, sql_extras = sql
        parts = batch_partitions(batch, count, coord.owned)
        owned = sorted(coord.owned)
        async with coord.fenced(conn, parts):
            if batch.dropped:
                await conn.execute(self.sql_drop, list(batch.dropped), owned)
            if batch.extras_dropped:
                kinds, funcs = zip(*batch.extras_dropped, strict=True)
                await conn.execute(self.sql_extras_drop, kinds, funcs, owned)
            for args in chunks:  # args[2], args[3]: the saved rows' keys
                saved = [
                    partition_of(f, n, count)
                    for f, n in zip(args[2], args[3], strict=True)
                ]
                await conn.execute(sql_commit, *args, saved)
            for args in extras:  # args[4], args[5]: the saved extras' keys
                saved_x = [
                    partition_of(f, n, count) if n else None
                    for f, n in zip(args[4], args[5], strict=True)
                ]
                await conn.execute(sql_extras, *args, saved_x)

    def drop_stale(self, batch: Batch, parts: Iterable[int]) -> int:
        """Forget ``batch``'s job writes and job extras in the lost ``parts``
        (their new owner holds those jobs now); returns how many."""
        lost = set(parts)
        count = self.coord.partitions
        stale = [k for k in batch.jobs if partition_of(k[0], k[1], count) in lost]
        for key in stale:
            del batch.jobs[key]
        extras = batch.extras
        stale_x = [
            k for k in extras if k[2] and partition_of(k[1], k[2], count) in lost
        ]
        for xkey in stale_x:
            del extras[xkey]
        return len(stale) + len(stale_x)

    # side connections ----------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _side(self, name: str) -> AsyncGenerator[asyncpg.Connection, None]:
        """The side connection ``name``, one user at a time; dropped after a
        failure or a cancel (its state is unknown), reopened on next use."""
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        async with lock:
            conn = self._conns.get(name)
            if conn is None or conn.is_closed():
                conn = await asyncpg.connect(**self._connect)
                self._conns[name] = conn
            try:
                yield conn
            except BaseException:
                self._conns.pop(name, None)
                conn.terminate()
                raise

    async def tick(self) -> tuple[Tick, dict[int, float]]:
        """One heartbeat; with it, the monotonic time until which each owned
        partition may be dispatched (a copy, for the server's thread)."""
        async with self._side("heartbeat") as conn:
            tick = await self.coord.tick(conn)
            # config values are cluster-wide rows: every node applies a
            # change one of them stored within a heartbeat (ClusterNode)
            rows = await conn.fetch(f"SELECT name, value FROM {self._configs}")
            tick.configs = {r[0]: int(r[1]) for r in rows}
            # so are retry policies (func-wide extras, name empty)
            rows = await conn.fetch(
                f"SELECT func, value FROM {self._extras} WHERE kind = 'policy'"
                " AND name = ''::bytea"
            )
            tick.policies = {r[0]: r[1] for r in rows}
        return tick, self.coord.safe_until()

    async def release(self, parts: list[int]) -> None:
        """Hand ``parts`` over (their writes are committed)."""
        async with self._side("heartbeat") as conn:
            await self.coord.release(conn, parts)

    async def leave(self) -> None:
        """Release everything and leave the cluster (shutdown)."""
        async with self._side("heartbeat") as conn:
            await self.coord.leave(conn)

    async def part_extras(
        self, parts: Iterable[int]
    ) -> list[tuple[str, bytes, bytes, bytes]]:
        """The job extras ``(kind, func, name, value)`` of ``parts`` (on
        the load connection).  Read before their jobs: only this node
        writes them once it owns the partitions, and it writes nothing of
        them before they are loaded."""
        async with self._side("load") as conn:
            rows = await conn.fetch(
                f"SELECT kind, func, name, value FROM {self._extras}"
                " WHERE part = ANY($1::int4[])",
                sorted(set(parts)),
            )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def part_chunks(
        self, parts: Iterable[int]
    ) -> AsyncGenerator[list[tuple[Any, ...]], None]:
        """The rows ``(func, name, workload, sched_at, count, timeout,
        state)`` of ``parts``, in chunks, from one repeatable-read snapshot
        (on the load connection)."""
        wanted = sorted(set(parts))
        async with (
            self._side("load") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await conn.cursor(
                "SELECT func, name, workload, sched_at, count, timeout, state"
                f" FROM {self._jobs} WHERE part = ANY($1::int4[])",
                wanted,
            )
            while rows := await cursor.fetch(_LOAD_CHUNK):
                yield [tuple(r) for r in rows]

    async def dump(self) -> bytes:
        """Every job of the cluster as a DUMP job list, from one
        repeatable-read snapshot of the jobs table (committed state, every
        partition, whichever node holds it), on its own side connection."""
        # encoded a fetch at a time: this loop also runs the heartbeat and
        # the commits, so no turn may encode a million jobs at once
        count = 0
        bodies: list[bytes] = []
        async with (
            self._side("dump") as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            cursor = await conn.cursor(
                "SELECT func, name, workload, sched_at, count, timeout"
                f" FROM {self._jobs}"
            )
            while rows := await cursor.fetch(_LOAD_CHUNK):
                count += len(rows)
                # a job list is its u64 count, then the jobs one after another
                # records unpack as (func, name, workload, sched_at, count,
                # timeout), as a Job does: no Job built per row
                bodies.append(encode_job_list(rows)[8:])  # type: ignore[arg-type]
        return count.to_bytes(8, "big") + b"".join(bodies)

    async def close(self) -> None:
        """Close the side connections."""
        conns, self._conns = self._conns, {}
        for conn in conns.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 5)
            if not conn.is_closed():
                conn.terminate()
