"""Cluster coordination core: partitions owned under leases, fenced by epochs.

The building block of cluster mode (docs/cluster.md): the PostgreSQL store
drives it in cluster mode (:mod:`periodic_fast.store._pg_cluster`), the
server's heartbeat task applies its ticks (``server/cluster_node``).

Several nodes on one PostgreSQL database and prefix split the job space
into a fixed number of partitions (:func:`partition_of`, a hash of
``(func, name)``); each partition is owned by at most one live node under a
lease, and every change of owner bumps the partition's epoch.  PostgreSQL is
the only coordinator; its tables (``prefix`` prepended):

* ``cluster(one, partitions, created, secret)``: one row, the partition
  count, fixed when the cluster is first created, and the cluster's secret
  (random, set once: the nodes' HTTP requests to each other carry it);
* ``cluster_nodes(node, started, alive_until, address, summary,
  incarnation)``: the members; a node is live while ``alive_until``
  (database time) is in the future; ``address`` is where it listens,
  ``summary`` (JSONB) its figures as of its last tick
  (``server/cluster_view``); ``incarnation`` names the process that holds
  the id (:meth:`~Coordinator.join` refuses a second live one);
* ``cluster_parts(part, owner, epoch, lease_until)``: who owns what.

A :class:`Coordinator` is one node's view, driven by the caller on its own
asyncpg connection (the store's writer loop, or a test):

* :meth:`~Coordinator.tick` (every ``lease_time / 3``) is one transaction:
  it renews the node row and the leases it still holds (those whose epoch is
  unchanged; the others are reported lost), counts the live nodes, and takes
  free or expired partitions up to the node's fair share
  (:func:`fair_shares`), bumping their epochs.  Partitions beyond the share
  are reported as ``excess``: the caller stops dispatching them, commits
  their writes, then hands them over with :meth:`~Coordinator.release`.
* a lease is safe to act on until ``sent + lease_time - margin`` by this
  node's own monotonic clock, where ``sent`` is when the renewing statement
  was sent: the database set ``lease_until = now() + lease_time`` with a
  ``now()`` no earlier than ``sent``, and no other node can take the
  partition before ``lease_until``.  :meth:`~Coordinator.dispatchable` and
  :meth:`~Coordinator.may_dispatch` answer by that clock, so a node that is
  paused or cut off stops dispatching before anyone else can start.
* :meth:`~Coordinator.fenced` wraps a write transaction: it locks the rows of
  the partitions the write touches (``FOR SHARE``, so no takeover commits in
  between) and raises :class:`FencedOut` unless this node still owns each at
  the epoch it acquired.  A stale node's writes are refused, whatever its
  clock says (the fencing token is the epoch, as Temporal's range id).
* :meth:`~Coordinator.leave` releases every partition and deletes the node
  row, so the others take over at their next tick instead of after the lease.

Assumption (docs/cluster.md, failure modes): the database's clock does not
step forward by more than ``margin`` during a lease (it may be slewed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from ._batch import Batch
from ._pg_owner import PostgresStoreError

__all__ = [
    "DEFAULT_PARTITIONS",
    "Coordinator",
    "FencedOut",
    "NodeIdInUseError",
    "Tick",
    "batch_partitions",
    "fair_shares",
    "partition_of",
]

#: partitions of a new cluster: a few per node for tens of nodes, and a
#: partition is still cheap to load when it moves
DEFAULT_PARTITIONS = 256
_PREFIX_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")


class NodeIdInUseError(PostgresStoreError):
    """Another live process holds this node id (raised by
    :meth:`Coordinator.join` at the store's open, and by a tick of a node
    whose id was taken over after its row expired)."""


class FencedOut(RuntimeError):
    """A write for partitions this node no longer owns at its epoch (another
    node took them over, or they were released).  ``parts`` lists them."""

    def __init__(self, node: str, parts: Sequence[int]) -> None:
        self.parts = list(parts)
        super().__init__(
            f"node {node!r} no longer owns partitions {self.parts} at its epochs: "
            "write refused"
        )


def partition_of(func: bytes, name: bytes, partitions: int) -> int:
    """The partition of job ``(func, name)``: CRC-32 over the length of
    ``func`` (4 bytes, big-endian), ``func`` and ``name``, modulo
    ``partitions``.  Stable across processes and versions (clients may route
    by it); the length keeps ``(b"ab", b"c")`` apart from ``(b"a", b"bc")``."""
    crc = zlib.crc32(len(func).to_bytes(4, "big") + func)
    return zlib.crc32(name, crc) % partitions


def batch_partitions(
    batch: Batch, partitions: int, owned: Iterable[int] | None = None
) -> set[int]:
    """The partitions a store batch touches, which its fenced commit checks:
    those of its job keys and of its job extras (a named extra: retry
    attempts, dead jobs, cron schedules), plus, when it drops a func's jobs
    or job extras, ``owned`` (the node's partitions, whose rows the drop
    deletes; None: every partition).  Funcs, config values and func-wide
    extras (empty name: retry policies) are cluster-wide, not partitioned."""
    parts = {partition_of(func, name, partitions) for func, name in batch.jobs}
    for _, func, name in batch.extras:
        if name:
            parts.add(partition_of(func, name, partitions))
    if batch.dropped or batch.extras_dropped:
        parts.update(range(partitions) if owned is None else owned)
    return parts


def fair_shares(nodes: Iterable[str], partitions: int) -> dict[str, int]:
    """Each node's share: ``partitions // n``, one more for the first
    ``partitions % n`` nodes in sorted order (every node computes the same)."""
    ordered = sorted(set(nodes))
    if not ordered:
        return {}
    base, extra = divmod(partitions, len(ordered))
    return {node: base + (i < extra) for i, node in enumerate(ordered)}


@dataclass
class Tick:
    """What one :meth:`Coordinator.tick` changed."""

    #: partitions taken (part -> new epoch): load their jobs, then dispatch
    acquired: dict[int, int] = field(default_factory=dict)
    #: partitions found taken over or released meanwhile: drop them at once
    lost: list[int] = field(default_factory=list)
    #: owned beyond the fair share: stop, commit, then :meth:`release`
    excess: list[int] = field(default_factory=list)
    #: the live nodes, sorted
    nodes: list[str] = field(default_factory=list)
    #: live node -> the listen address it published (None: not yet)
    addresses: dict[str, str | None] = field(default_factory=dict)
    #: part -> the address of its live owner, for partitions owned by
    #: another live node that published one (forwarding routes)
    routes: dict[int, str] = field(default_factory=dict)
    #: live node -> its ``alive_until`` (Unix time, the database's clock)
    alive: dict[str, float] = field(default_factory=dict)
    #: live node -> the summary (JSON text) its last heartbeat wrote, for
    #: the cluster view (``server/cluster_view``); absent: none written yet
    summaries: dict[str, str] = field(default_factory=dict)
    #: the stored config values (the store's ``configs`` table), read after
    #: the tick so every node applies a CONFIG_SET within a heartbeat; None
    #: when not read (a coordinator without a store)
    configs: dict[str, int] | None = None
    #: func -> its retry policy (JSON; ``b""``: the default), as stored in
    #: the extras (func-wide, shared): every node adopts changes (None: not read)
    policies: dict[bytes, bytes] | None = None


class Coordinator:
    """One node's membership and partition leases (see the module doc).

    :param node: this node's id, unique in the cluster (e.g. host:port).
    :param prefix: the table prefix (as the store's).
    :param lease_time: seconds a lease (and the node row) lasts unrenewed.
    :param margin: how much earlier (s) this node stops trusting a lease than
        it expires in the database; must be below ``lease_time``.
    :param partitions: the count for a new cluster (an existing one keeps
        its own, see :attr:`partitions` after :meth:`setup`).
    :param mono: the monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        node: str,
        *,
        prefix: str = "",
        lease_time: float = 5.0,
        margin: float = 1.0,
        partitions: int = DEFAULT_PARTITIONS,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        if prefix and not _PREFIX_RE.fullmatch(prefix):
            raise ValueError(f"table prefix {prefix!r}: letters, digits and _")
        if not 0 <= margin < lease_time:
            raise ValueError(f"margin {margin} must be in [0, lease_time={lease_time})")
        if partitions < 1:
            raise ValueError(f"partitions {partitions} must be at least 1")
        self.node = node
        self.prefix = prefix
        self.lease_time = lease_time
        self.margin = margin
        self.partitions = partitions
        self._mono = mono
        self._t = (
            f"{prefix}cluster",
            f"{prefix}cluster_nodes",
            f"{prefix}cluster_parts",
        )
        #: part -> epoch of every partition this node owns
        self.owned: dict[int, int] = {}
        #: the listen address this node publishes in its row (the server
        #: sets it once it listens; other nodes forward requests to it)
        self.address: str | None = None
        #: this node's summary (JSON text), written by every :meth:`tick`
        #: (the server sets it before each tick; None keeps the stored one)
        self.summary: str | None = None
        #: the cluster's secret (read by :meth:`setup`): a node's HTTP
        #: request to another carries it (``server/cluster_admin``)
        self.secret: str | None = None
        self._safe_until: dict[int, float] = {}  # part -> monotonic deadline
        #: this process's claim on the node id (host, pid, random): a second
        #: live process with the same id is refused at join
        self.incarnation = (
            f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        )

    # schema and membership --------------------------------------------------------
    async def setup(self, conn: asyncpg.Connection) -> int:
        """Create the tables and the partitions when missing; return the
        cluster's partition count (fixed at creation) and adopt it, and read
        the cluster's secret into :attr:`secret` (made once, when missing)."""
        meta, nodes, parts = self._t
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", meta)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {meta} ("
                " one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),"
                " partitions INTEGER NOT NULL,"
                " created TIMESTAMPTZ NOT NULL DEFAULT now())"
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {nodes} (node TEXT PRIMARY KEY,"
                " started TIMESTAMPTZ NOT NULL DEFAULT now(),"
                " alive_until TIMESTAMPTZ NOT NULL)"
            )
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {parts} (part INTEGER PRIMARY KEY,"
                " owner TEXT, epoch BIGINT NOT NULL DEFAULT 0,"
                " lease_until TIMESTAMPTZ NOT NULL DEFAULT '-infinity')"
            )
            # forwarding (issue 18): where a node listens; instant on older tables
            await conn.execute(
                f"ALTER TABLE {nodes} ADD COLUMN IF NOT EXISTS address TEXT"
            )
            # the cluster view (issue 18): each node's figures as of its tick
            await conn.execute(
                f"ALTER TABLE {nodes} ADD COLUMN IF NOT EXISTS summary JSONB"
            )
            # duplicate node ids (issue 18): which process holds the id
            await conn.execute(
                f"ALTER TABLE {nodes} ADD COLUMN IF NOT EXISTS incarnation TEXT"
            )
            await conn.execute(
                f"INSERT INTO {meta} (partitions) VALUES ($1) ON CONFLICT DO NOTHING",
                self.partitions,
            )
            # the peers' secret (issue 18): made once, kept across restarts
            await conn.execute(
                f"ALTER TABLE {meta} ADD COLUMN IF NOT EXISTS secret TEXT"
            )
            await conn.execute(
                f"UPDATE {meta} SET secret = $1 WHERE secret IS NULL",
                secrets.token_urlsafe(32),
            )
            count: int = await conn.fetchval(f"SELECT partitions FROM {meta}")
            self.secret = await conn.fetchval(f"SELECT secret FROM {meta}")
            await conn.execute(
                f"INSERT INTO {parts} (part) SELECT generate_series(0, $1 - 1)"
                " ON CONFLICT DO NOTHING",
                count,
            )
        self.partitions = count
        return count

    async def join(self, conn: asyncpg.Connection) -> None:
        """Register this node as live (its first heartbeat).

        The id's row may still be live, held by another incarnation: a
        process with the same ``--node-id`` that is running (it keeps
        renewing the row), or one that was killed (its row expires within
        a lease).  Join waits and watches the row: renewed meanwhile, it is
        a live duplicate and :class:`NodeIdInUseError` is raised (within
        about a third of a lease); expired, this process takes the id over.

        :raises NodeIdInUseError: a live node has this id.
        """
        nodes = self._t[1]
        seen: float | None = None  # the other incarnation's alive_until
        poll = min(0.2, self.lease_time / 10)
        while True:
            async with conn.transaction():
                # two processes joining with one id at once: one at a time
                await conn.execute(
                    "SELECT pg_advisory_xact_lock(hashtext($1))", f"{nodes}/{self.node}"
                )
                row = await conn.fetchrow(
                    "SELECT incarnation, extract(epoch FROM alive_until),"
                    f" alive_until > now() FROM {nodes} WHERE node = $1",
                    self.node,
                )
                if row is None or not row[2] or row[0] == self.incarnation:
                    await conn.execute(
                        f"INSERT INTO {nodes} (node, alive_until, address, incarnation)"
                        " VALUES ($1, now() + make_interval(secs => $2), $3, $4)"
                        " ON CONFLICT (node) DO UPDATE SET"
                        " alive_until = EXCLUDED.alive_until, started = now(),"
                        " address = EXCLUDED.address,"
                        " incarnation = EXCLUDED.incarnation",
                        self.node,
                        self.lease_time,
                        self.address,
                        self.incarnation,
                    )
                    return
            until = float(row[1])
            if seen is not None and until > seen:
                raise NodeIdInUseError(
                    f"node id {self.node!r} is in use by a live node (process"
                    f" {row[0] or 'unknown'}): give each node its own --node-id"
                    " (a restarted node may reuse its id once the old process"
                    " is gone)"
                )
            seen = until
            await asyncio.sleep(poll)

    # the heartbeat ----------------------------------------------------------------
    async def tick(self, conn: asyncpg.Connection) -> Tick:
        """Renew, count the live nodes, take free partitions up to the fair
        share (one transaction); see :class:`Tick`."""
        _, nodes_t, parts_t = self._t
        lease = self.lease_time
        sent = self._mono()  # before the transaction, so before its now()
        out = Tick()
        async with conn.transaction():
            mine = await conn.fetchval(
                f"INSERT INTO {nodes_t} (node, alive_until, address, summary,"
                " incarnation)"
                " VALUES ($1, now() + make_interval(secs => $2), $3, $4::jsonb, $5)"
                " ON CONFLICT (node) DO UPDATE SET alive_until = EXCLUDED.alive_until,"
                f" address = COALESCE(EXCLUDED.address, {nodes_t}.address),"
                f" summary = COALESCE(EXCLUDED.summary, {nodes_t}.summary)"
                # another process took the id over after this one's row
                # expired (it was frozen or cut off): renew nothing
                f" WHERE {nodes_t}.incarnation IS NOT DISTINCT FROM"
                " EXCLUDED.incarnation RETURNING true",
                self.node,
                lease,
                self.address,
                self.summary,
                self.incarnation,
            )
            if not mine:
                raise NodeIdInUseError(
                    f"node id {self.node!r} was taken over by another process"
                    " while this one's row had expired: this node renews"
                    " nothing and stops dispatching (give each node its own"
                    " --node-id)"
                )
            held = sorted(self.owned)
            await self._lock(conn, held)
            renewed = await conn.fetch(
                f"UPDATE {parts_t} p"
                " SET lease_until = now() + make_interval(secs => $4)"
                " FROM unnest($2::int4[], $3::int8[]) AS x(part, epoch)"
                " WHERE p.part = x.part AND p.epoch = x.epoch AND p.owner = $1"
                " RETURNING p.part",
                self.node,
                held,
                [self.owned[p] for p in held],
                lease,
            )
            kept = {r[0] for r in renewed}
            out.lost = [p for p in held if p not in kept]
            live = await conn.fetch(
                "SELECT node, address, extract(epoch FROM alive_until),"
                f" summary::text FROM {nodes_t} WHERE alive_until > now() ORDER BY node"
            )
            out.nodes = [r[0] for r in live]
            out.addresses = {r[0]: r[1] for r in live}
            out.alive = {r[0]: float(r[2]) for r in live}
            out.summaries = {r[0]: r[3] for r in live if r[3] is not None}
            share = fair_shares(out.nodes, self.partitions).get(self.node, 0)
            want = share - len(kept)
            if want > 0:
                rows = await conn.fetch(
                    f"UPDATE {parts_t} SET owner = $1, epoch = epoch + 1,"
                    " lease_until = now() + make_interval(secs => $3)"
                    f" WHERE part IN (SELECT part FROM {parts_t}"
                    "  WHERE owner IS NULL OR lease_until < now()"
                    "  ORDER BY part LIMIT $2 FOR UPDATE SKIP LOCKED)"
                    " RETURNING part, epoch",
                    self.node,
                    want,
                    lease,
                )
                out.acquired = {r[0]: r[1] for r in rows}
            elif want < 0:
                out.excess = sorted(kept)[share:]
            # where the other nodes' partitions are (forwarding), read after
            # this tick's takeovers: a route is at most one tick old
            out.routes = {
                r[0]: r[1]
                for r in await conn.fetch(
                    f"SELECT p.part, n.address FROM {parts_t} p"
                    f" JOIN {nodes_t} n ON n.node = p.owner"
                    " WHERE p.lease_until > now() AND n.alive_until > now()"
                    " AND p.owner <> $1 AND n.address IS NOT NULL",
                    self.node,
                )
            }
        for part in out.lost:
            self._forget(part)
        safe = sent + lease - self.margin
        for part in kept:
            self._safe_until[part] = safe
        for part, epoch in out.acquired.items():
            self.owned[part] = epoch
            self._safe_until[part] = safe
        return out

    async def release(self, conn: asyncpg.Connection, parts: Iterable[int]) -> None:
        """Hand ``parts`` over at once (after their writes are committed):
        this node stops owning them before the database says so."""
        mine = [p for p in parts if p in self.owned]
        epochs = [self.owned[p] for p in mine]
        for part in mine:
            self._forget(part)
        async with conn.transaction():
            await self._lock(conn, mine)
            await conn.execute(
                f"UPDATE {self._t[2]} p SET owner = NULL, lease_until = '-infinity'"
                " FROM unnest($2::int4[], $3::int8[]) AS x(part, epoch)"
                " WHERE p.part = x.part AND p.epoch = x.epoch AND p.owner = $1",
                self.node,
                mine,
                epochs,
            )

    async def _lock(self, conn: asyncpg.Connection, parts: list[int]) -> None:
        """Lock the rows of ``parts`` in part order before updating them.
        An UPDATE locks rows in its plan's order, and the fenced commits on
        the writer's connection lock theirs ``FOR SHARE`` in part order: two
        orders would let PostgreSQL find a deadlock between a node's
        heartbeat and its own commit, and fail one (found by
        bench/bench_cluster.py; tests/test_cluster_faults.py)."""
        if parts:
            await conn.execute(
                f"SELECT 1 FROM {self._t[2]} WHERE part = ANY($1::int4[])"
                " ORDER BY part FOR NO KEY UPDATE",
                parts,
            )

    async def leave(self, conn: asyncpg.Connection) -> None:
        """Release every partition and leave the cluster (SIGTERM)."""
        await self.release(conn, list(self.owned))
        await conn.execute(f"DELETE FROM {self._t[1]} WHERE node = $1", self.node)

    # dispatch and writes ----------------------------------------------------------
    def may_dispatch(self, part: int) -> bool:
        """True while this node's lease on ``part`` is safe by its own clock."""
        return self._safe_until.get(part, float("-inf")) > self._mono()

    def safe_until(self) -> dict[int, float]:
        """A copy of part -> the monotonic time until which this node may
        dispatch it (for a caller on another thread than the ticks)."""
        return dict(self._safe_until)

    def dispatchable(self) -> list[int]:
        """The partitions this node may dispatch now, sorted."""
        now = self._mono()
        return sorted(p for p, until in self._safe_until.items() if until > now)

    @contextlib.asynccontextmanager
    async def fenced(
        self, conn: asyncpg.Connection, parts: Iterable[int]
    ) -> AsyncIterator[None]:
        """A transaction whose writes commit only while this node owns every
        partition in ``parts`` at its epoch; raises :class:`FencedOut`
        (nothing committed) otherwise, and forgets the stale partitions."""
        wanted = sorted(set(parts))
        async with conn.transaction():
            rows = await conn.fetch(  # in part order, as _lock (no deadlock)
                f"SELECT part, owner, epoch FROM {self._t[2]}"
                " WHERE part = ANY($1::int4[]) ORDER BY part FOR SHARE",
                wanted,
            )
            found = {r[0]: (r[1], r[2]) for r in rows}
            stale = [
                p
                for p in wanted
                if p not in self.owned or found.get(p) != (self.node, self.owned[p])
            ]
            if stale:
                for part in stale:
                    self._forget(part)
                raise FencedOut(self.node, stale)
            yield

    def _forget(self, part: int) -> None:
        self.owned.pop(part, None)
        self._safe_until.pop(part, None)

    # for STATUS and tests ---------------------------------------------------------
    async def ownership(
        self, conn: asyncpg.Connection
    ) -> Mapping[int, tuple[str | None, int]]:
        """The database's view: part -> (owner or None when free/expired, epoch)."""
        rows = await conn.fetch(
            f"SELECT part, CASE WHEN lease_until > now() THEN owner END, epoch"
            f" FROM {self._t[2]} ORDER BY part"
        )
        return {r[0]: (r[1], r[2]) for r in rows}
