"""Locks with a global count in cluster mode (docs/cluster.md "Locks").

A lock's holders across the cluster are rows of ``{prefix}cluster_locks``:
``(name, func, job, part, node, epoch, cnt, since)``, one per job holding a
slot, with the partition of the job and the owner and epoch under which the
slot was taken.  A row counts only while its node still owns that partition
at that epoch under a live lease (``cluster_parts``): a node killed, frozen
or cut off loses its slots when its leases expire, and a partition that
moved takes its jobs' slots with it (their jobs run again on the new owner
and ask again).  Rows that no longer count are deleted by the next
acquisition of the same lock, so no sweep is needed.

* **Acquire** (:meth:`PgLocks.acquire`): one transaction, fenced on the
  job's partition (:meth:`Coordinator.fenced
  <periodic_fast.store.cluster.Coordinator.fenced>`: this node must own it
  at its epoch), serialised per lock name by ``pg_advisory_xact_lock``; the
  rows that no longer count are deleted, then a valid row of the same job
  means already granted, otherwise a row is inserted while fewer than the
  lock's max rows exist and this node's lease on the partition is live (the
  fence checks the epoch only: a row taken under an expired lease would
  count for nobody else).  The max is the largest ``cnt`` of the current
  rows, raised to the requested count when ``widen`` (the protocol's rule:
  the max only grows while the lock exists); with no rows the requested
  count sets it.
* **Release** (:meth:`PgLocks.release`): deletes this node's row of the job
  and, when there was one, ``NOTIFY``s the lock name (hex) on the channel
  ``{prefix}cluster_locks`` in the same transaction.
* **Listen** (:meth:`PgLocks.listen`): a dedicated connection ``LISTEN``s on
  that channel and hands each lock name to a callback (on the writer loop's
  thread); each call probes it and re-opens it when it dropped or went
  silent (the caller calls it every retry round).

Every coroutine runs on the store's writer loop (its thread), like
:class:`~periodic_fast.store._pg_cluster.PgCluster`'s; the lock statements
have their own side connection, so they never wait behind a commit or a
heartbeat.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import asyncpg

from ._pg_cluster import PgCluster
from .cluster import partition_of

__all__ = ["PgLocks", "lock_key"]

_PROBE_TIMEOUT = 2.0  # s: the listening connection's liveness probe


def lock_key(prefix: str, name: bytes) -> int:
    """The advisory lock key (signed 64 bits) of lock ``name`` in ``prefix``."""
    digest = hashlib.blake2b(
        prefix.encode() + b"\0" + name, digest_size=8, person=b"periodic-lock"
    ).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgLocks:
    """The PostgreSQL side of the cluster's locks (see the module doc).

    :param pgc: the store's cluster half (coordinator, side connections).
    """

    def __init__(self, pgc: PgCluster) -> None:
        self._pgc = pgc
        coord = pgc.coord
        self._prefix = coord.prefix
        self.table = f"{coord.prefix}cluster_locks"
        #: the NOTIFY channel (an identifier: the prefix is letters, digits, _)
        self.channel = f"{coord.prefix}cluster_locks"
        self._parts_t = f"{coord.prefix}cluster_parts"
        self._listener: asyncpg.Connection | None = None
        self._ready = False

    async def setup(self) -> None:
        """Create the table when missing (idempotent)."""
        if self._ready:
            return
        t = self.table
        async with self._pgc._side("locks") as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", t)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {t} (name BYTEA NOT NULL,"
                " func BYTEA NOT NULL, job BYTEA NOT NULL, part INTEGER NOT NULL,"
                " node TEXT NOT NULL, epoch BIGINT NOT NULL, cnt INTEGER NOT NULL,"
                " since TIMESTAMPTZ NOT NULL DEFAULT now(),"
                " PRIMARY KEY (name, func, job))"
            )
        self._ready = True

    async def acquire(
        self, lock: bytes, count: int, func: bytes, name: bytes, widen: bool
    ) -> bool:
        """Take a slot of ``lock`` for job ``(func, name)`` (see the module
        doc): True when granted (or already held).  Raises
        :class:`~periodic_fast.store.cluster.FencedOut` when this node no
        longer owns the job's partition."""
        await self.setup()
        pgc = self._pgc
        coord = pgc.coord
        part = partition_of(func, name, coord.partitions)
        t = self.table
        async with pgc._side("locks") as conn, coord.fenced(conn, [part]):
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1::int8)", lock_key(self._prefix, lock)
            )
            # rows whose node lost the partition (or the epoch) no longer count
            await conn.execute(
                f"DELETE FROM {t} l WHERE l.name = $1 AND NOT EXISTS ("
                f"SELECT 1 FROM {self._parts_t} p WHERE p.part = l.part"
                " AND p.owner = l.node AND p.epoch = l.epoch"
                " AND p.lease_until > now())",
                lock,
            )
            rows = await conn.fetch(
                f"SELECT func, job, cnt FROM {t} WHERE name = $1", lock
            )
            if any(r[0] == func and r[1] == name for r in rows):
                return True  # a valid row of this job: this node's, this epoch
            limit = max((r[2] for r in rows), default=count)
            if widen and count > limit:
                limit = count
            if len(rows) >= limit:
                return False
            # the fence checks the epoch only; a row taken under a lease that
            # already expired (a statement that reached PostgreSQL late)
            # would not count for the others: not taken (retried later)
            if not await conn.fetchval(
                f"SELECT lease_until > now() FROM {self._parts_t} WHERE part = $1",
                part,
            ):
                return False
            await conn.execute(
                f"INSERT INTO {t} (name, func, job, part, node, epoch, cnt)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7)",
                lock,
                func,
                name,
                part,
                coord.node,
                coord.owned[part],
                limit,
            )
            return True

    async def release(self, lock: bytes, func: bytes, name: bytes) -> bool:
        """Give back this node's slot of ``lock`` for ``(func, name)`` and
        notify the other nodes; True when there was one."""
        await self.setup()
        async with self._pgc._side("locks") as conn, conn.transaction():
            gone = await conn.fetchval(
                f"DELETE FROM {self.table} WHERE name = $1 AND func = $2"
                " AND job = $3 AND node = $4 RETURNING 1",
                lock,
                func,
                name,
                self._pgc.coord.node,
            )
            if gone is not None:
                await conn.execute("SELECT pg_notify($1, $2)", self.channel, lock.hex())
        return gone is not None

    async def listen(self, on_notify: Callable[[bytes], None]) -> None:
        """Make sure a connection ``LISTEN``s on the channel (an open one is
        probed: a link gone silent is replaced); each notification's lock
        name goes to ``on_notify`` (writer thread)."""
        conn = self._listener
        if conn is not None and not conn.is_closed():
            try:  # a connection gone silent would never deliver: checked
                await asyncio.wait_for(conn.fetchval("SELECT 1"), _PROBE_TIMEOUT)
                return
            except Exception:
                conn.terminate()
        self._listener = None

        def heard(_c: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                name = bytes.fromhex(payload)
            except ValueError:  # not ours
                return
            on_notify(name)

        conn = await asyncpg.connect(**self._pgc._connect)
        try:
            await conn.add_listener(self.channel, heard)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn

    async def holders(self, lock: bytes) -> list[tuple[bytes, bytes, str]]:
        """The rows of ``lock`` as stored ``(func, job, node)`` (tests, tools;
        stale rows included until the next acquisition deletes them)."""
        await self.setup()
        async with self._pgc._side("locks") as conn:
            rows = await conn.fetch(
                f"SELECT func, job, node FROM {self.table} WHERE name = $1"
                " ORDER BY since",
                lock,
            )
        return [(r[0], r[1], r[2]) for r in rows]

    async def close(self) -> None:
        """Close the listening connection."""
        conn, self._listener = self._listener, None
        if conn is not None:
            conn.terminate()
