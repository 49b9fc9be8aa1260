"""A cluster node (``periodicd --cluster``, docs/cluster.md): the heartbeat.

:func:`open_cluster_store` opens the PostgreSQL store as a cluster member
(its coordinator joins at open).  :class:`ClusterNode` drives it from the
server's loop:

* every ``lease_time / 3`` one heartbeat (``store.cluster_tick()``: renew,
  count the live nodes, take free partitions up to the fair share), then:
  partitions **lost** (taken over meanwhile) leave the scheduler at once;
  **excess** ones (a node joined) leave the scheduler, their writes are
  committed (a durability barrier), then they are released so the newcomer
  takes them at its next tick; **acquired** ones are loaded from the store
  chunk by chunk (one chunk per loop turn) into the scheduler, and requests
  for their jobs are accepted once the last chunk is in;
* **stop by the clock**: each held partition may be dispatched until the
  deadline the last successful renewal gave it (sent + lease - margin on
  this node's monotonic clock); a timer unloads it then if no renewal came
  (PostgreSQL unreachable, the loop or the process paused), before any other
  node can take it over; and because a loop resuming from a stall (SIGSTOP,
  a paused VM) runs pending input and earlier timers before that one, the
  server reads its monotonic clock through :meth:`ClusterNode.guard`, which
  unloads late partitions first (found by tests/test_cluster_faults.py);
* a commit refused by fencing (``store.on_fenced``) unloads the partitions
  it names at once;
* **forwarding** (:mod:`.forward`): :meth:`ClusterNode.publish` (once the
  server listens) writes this node's address into its row and starts the
  :class:`~.forward.Forwarder`; every heartbeat refreshes the routes (part
  -> owner address) and the live members' addresses it reads;
* **the cluster view** (:mod:`.cluster_view`): each heartbeat first writes
  this node's summary into its row and reads the live nodes' back (STATUS,
  the status page and ``/metrics`` show every node); the HTTP API's writes
  of jobs held elsewhere are forwarded (:meth:`ClusterNode.http_writes`);
* **config**: each heartbeat also reads the shared config table and applies
  the values another node changed since the previous read (not saved
  again), so a CONFIG_SET is in force everywhere within a heartbeat;
* :meth:`ClusterNode.leave` (SIGTERM, shutdown): stop dispatching
  everything, commit, release every partition and delete the node's row, so
  the others take over at their next tick instead of after a lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .._address import parse_address
from ..sched_part_extras import ExtraRow, PolicySync, add_crons, add_extras
from ..sched_parts import Partitions
from ..store.cluster import DEFAULT_PARTITIONS, Coordinator
from .cluster_admin import ClusterAdmin
from .cluster_http import ClusterWrites
from .cluster_locks import ClusterLocks
from .cluster_view import ClusterView
from .forward import Forwarder, link_keys

if TYPE_CHECKING:
    from ..scheduler import Scheduler
    from ..store.postgres import PostgresStore
    from .secure import SecureConfig

__all__ = ["ClusterNode", "ClusterOptions", "open_cluster_store"]

log = logging.getLogger("periodic_fast.server.cluster")

#: a partition load's extras added per loop turn (decoding one costs 5-15 us)
_EXTRAS_SLICE = 2048

#: what ``--cluster`` without a PostgreSQL store is told
NEEDS_POSTGRES = (
    "--cluster needs a PostgreSQL store shared by every node "
    "(-p 'postgres://host/db?prefix=name_'); see docs/cluster.md"
)


@dataclass(frozen=True)
class ClusterOptions:
    """``periodicd --cluster`` settings.

    :param node: this node's id, unique in the cluster (default: the host
        name and the first listen address).
    :param lease_time: seconds a partition lease lasts unrenewed: a killed
        node's partitions move after about this long.
    :param margin: how much earlier (s) a node stops dispatching than its
        lease expires in the database (clock-rate and scheduling slack).
    :param partitions: the partition count of a new cluster (an existing
        cluster keeps its own).
    """

    node: str | None = None
    lease_time: float = 5.0
    margin: float = 1.0
    partitions: int = DEFAULT_PARTITIONS

    def __post_init__(self) -> None:
        if not self.lease_time > 0:
            raise ValueError(f"lease time {self.lease_time} must be > 0")
        if not 0 <= self.margin < self.lease_time:
            raise ValueError(f"lease margin {self.margin} must be in [0, lease time)")
        if self.partitions < 1:
            raise ValueError(f"partitions {self.partitions} must be >= 1")


def default_node_id(first_address: str) -> str:
    """The default node id: ``hostname/first listen address``."""
    return f"{socket.gethostname()}/{first_address}"


def open_cluster_store(
    uri: str, durability: str, options: ClusterOptions, node: str
) -> PostgresStore:
    """Open ``uri`` (a ``postgres://`` store) as cluster node ``node``;
    :class:`ValueError` naming ``--cluster``'s need for any other store."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme.removeprefix("cache+") not in ("postgres", "postgresql"):
        raise ValueError(f"{NEEDS_POSTGRES}; got {uri!r}")
    from ..store.postgres import (  # noqa: PLC0415  # asyncpg: only when used
        PostgresStore,
        parse_postgres_uri,
    )

    connect, prefix = parse_postgres_uri(uri.removeprefix("cache+"))
    coord = Coordinator(
        node,
        prefix=prefix,
        lease_time=options.lease_time,
        margin=options.margin,
        partitions=options.partitions,
    )
    return PostgresStore(connect, prefix=prefix, durability=durability, cluster=coord)


class ClusterNode:
    """The heartbeat of one node (see the module doc).

    :param name: the server's name, for log lines.
    :param scheduler: the node's scheduler, built on ``store``.
    :param store: the cluster store (:func:`open_cluster_store`).
    :param clock: the wall clock handed to the scheduler.
    :param mono: the monotonic clock (the dispatch deadlines' too).
    :param wake: called after the scheduler changed outside a request (the
        server re-arms its timer).
    """

    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        store: PostgresStore,
        *,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        coord = store.coordinator
        if coord is None:
            raise ValueError("not a cluster store")
        self.name = name
        self.node = coord.node
        self.lease_time = coord.lease_time
        self.parts = Partitions(scheduler, coord.partitions)
        self.parts.install()
        self._sched = scheduler
        self._store = store
        self._clock = clock
        self._mono = mono
        self._wake = wake
        self._safe: dict[int, float] = {}  # part -> dispatch deadline (mono)
        self._expiry: asyncio.TimerHandle | None = None
        self._deadline = float("inf")  # the earliest held partition's
        self._task: asyncio.Task[None] | None = None
        self._loading: asyncio.Task[None] | None = None  # one load at a time
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._failures = 0
        self._coord = coord
        self._configs: dict[str, int] | None = None  # as last read (applied)
        self._policies = PolicySync(scheduler)  # retry policies, likewise
        #: part -> the owner's address (other nodes' partitions), and the
        #: live nodes' addresses, as the last heartbeat read them
        self.routes: dict[int, str] = {}
        self.members: dict[str, str | None] = {}
        #: the cluster view (STATUS, pages, metrics over every live node):
        #: live node -> alive until (Unix time) and -> its summary (JSON),
        #: as the last heartbeat read them
        self.alive: dict[str, float] = {}
        self.summaries: dict[str, str] = {}
        self.view = ClusterView(self, scheduler, clock)
        self.view.install()
        self.forwarder: Forwarder | None = None
        #: the global lock count (issue 18: a lock's count is cluster-wide)
        self.locks = ClusterLocks(
            name,
            scheduler,
            store,
            period=self.lease_time / 3,
            clock=clock,
            mono=mono,
            wake=wake,
        )
        #: heartbeats run, partitions loaded / unloaded (for tests, metrics)
        self.ticks = 0
        self.loaded = 0
        self.unloaded = 0

    def start(self) -> None:
        """Start the heartbeat task (on the running loop)."""
        loop = asyncio.get_running_loop()
        self._loop = loop

        def fenced(parts: list[int]) -> None:  # the store's writer thread
            with contextlib.suppress(RuntimeError):  # loop closed: stopping
                loop.call_soon_threadsafe(self._unload, parts, "fenced out")

        self._store.on_fenced = fenced
        self._task = loop.create_task(self._run())
        self.locks.start()

    def publish(
        self, address: str, max_frame: int, secure: SecureConfig | None = None
    ) -> None:
        """The server listens on ``address``: publish it (the next
        heartbeat writes it) and start forwarding requests for partitions
        held elsewhere.  A wildcard host (``0.0.0.0``, ``::``) is published
        as this machine's name: the other nodes must be able to reach it.
        ``secure``: the node's RSA/AES transport, which its forwarding links
        speak too (:func:`~periodic_fast.server.forward.link_keys`)."""
        addr = parse_address(address)
        if addr.scheme == "tcp" and addr.host in ("0.0.0.0", "::"):  # noqa: S104
            address = f"tcp://{socket.getfqdn()}:{addr.port}"
        # one str, set once; the writer thread reads it at its next tick
        self._coord.address = address
        fwd = Forwarder(
            self.parts,
            name=self.name,
            route=self._route,
            members=lambda: [a for a in self.members.values() if a],
            patience=2 * self.lease_time + 1.0,
            max_frame=max_frame,
            mono=self._mono,
            keys=None if secure is None else link_keys(secure),
            snapshot=self._store.cluster_dump,  # DUMP: one read of the table
        )
        fwd.install()
        self.forwarder = fwd

    def http_writes(self) -> ClusterWrites:
        """The HTTP API's hook for jobs held on other nodes (forwarded)."""
        return ClusterWrites(self.parts, lambda: self.forwarder, self.view)

    def http_admin(self) -> ClusterAdmin:
        """The HTTP API's hook for the dead set, cron and the job browser
        across the cluster (:mod:`.cluster_admin`)."""
        return ClusterAdmin(
            self.parts,
            self._route,
            lambda: self.members,
            self.node,
            patience=2 * self.lease_time + 1.0,
            secret=self._coord.secret,  # HTTP requests between the nodes
        )

    @property
    def address(self) -> str | None:
        """The address this node publishes (None before it listens)."""
        return self._coord.address

    def _route(self, part: int) -> str | None:
        """Where requests for ``part`` go: this node while it owns it (it is
        loading), else its owner as the last heartbeat read it."""
        if part in self._safe:
            return self._coord.address
        return self.routes.get(part)

    # -- the heartbeat ----------------------------------------------------------------

    async def _run(self) -> None:
        period = self.lease_time / 3
        while not self._stopping:
            sent = self._mono()
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # PostgreSQL away: retried; clock stops us
                self._failures += 1
                if self._failures == 1 or self._failures % 50 == 0:
                    log.warning(
                        "%s: cluster heartbeat failed (%d in a row): %r",
                        self.name,
                        self._failures,
                        exc,
                    )
            await asyncio.sleep(max(0.0, sent + period - self._mono()))

    async def _beat(self) -> None:
        try:  # this node's figures for the others' cluster view
            self._coord.summary = self.view.summary(self._clock())
        except Exception:  # never a reason to miss a renewal
            log.exception("%s: cluster summary failed", self.name)
        tick, safe = await asyncio.wait_for(self._store.cluster_tick(), self.lease_time)
        if self._stopping:
            return
        if self._failures:
            log.info("%s: cluster heartbeat works again", self.name)
            self._failures = 0
        self.ticks += 1
        self._safe = safe
        self.routes = tick.routes
        self.members = tick.addresses
        self.alive = tick.alive
        self.summaries = tick.summaries
        if tick.configs is not None:
            self._adopt_configs(tick.configs)
        if tick.policies is not None:
            for func in self._policies.adopt(tick.policies):
                log.info("%s: retry policy of %r from the cluster", self.name, func)
        self._arm_expiry()
        parts = self.parts
        # lost, or forgotten by a fenced commit: out at once
        gone = [p for p in parts.held if p not in safe]
        if gone:
            self._unload(gone, "lost")
        if tick.excess:
            await self._hand_over(tick.excess)
        excess = set(tick.excess)
        todo = sorted(p for p in safe if p not in parts.held and p not in excess)
        loading = self._loading
        if todo and (loading is None or loading.done()):
            # its own task: a long load must not delay the next renewal
            self._loading = asyncio.get_running_loop().create_task(self._load(todo))

    def _adopt_configs(self, stored: dict[str, int]) -> None:
        """Apply the config values another node changed since the last
        heartbeat (its CONFIG_SET is stored in the shared table).  Only a
        stored value that changed is applied: one set here and not
        committed yet is not undone by the older stored value."""
        seen, self._configs = self._configs, stored
        changed = False
        for key, value in stored.items():
            if seen is not None and seen.get(key) == value:
                continue
            if self._sched.adopt_config(key, value):
                changed = True
                log.info("%s: config %s = %d (from the cluster)", self.name, key, value)
        if changed:
            self._wake()  # the server's timer re-armed with the new values

    def _arm_expiry(self) -> None:
        """A timer at the earliest dispatch deadline of a held partition."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        held = [self._safe[p] for p in self.parts.held if p in self._safe]
        self._deadline = min(held, default=float("inf"))
        if held and self._loop is not None:
            delay = max(0.0, self._deadline - self._mono())
            self._expiry = self._loop.call_later(delay, self._expire)

    def guard(self, clock: Callable[[], float]) -> Callable[[], float]:
        """``clock`` (the server's monotonic clock), unloading the held
        partitions whose dispatch deadline passed before it returns.  The
        server reads it before handling input and before its timer's tick,
        so nothing is dispatched past a deadline even when the loop runs
        those before the expiry timer (after a stall, all are due at once).
        One comparison per read."""

        def guarded() -> float:
            now = clock()
            if now >= self._deadline:
                self._expire()
            return now

        return guarded

    def _expire(self) -> None:
        """No renewal came in time: stop dispatching what ran out."""
        self._expiry = None
        self._deadline = float("inf")  # re-armed below (no re-entry meanwhile)
        now = self._mono()
        late = [p for p in self.parts.held if self._safe.get(p, 0.0) <= now]
        if late:
            self._unload(late, "lease not renewed in time")
        self._arm_expiry()

    def _unload(self, parts: list[int], why: str) -> None:
        held = [p for p in parts if p in self.parts.held]
        if not held:
            return
        n = self.parts.unload(held, self._mono())
        self.unloaded += len(held)
        log.info(
            "%s: %d partition(s) dropped (%s), %d job(s) unloaded",
            self.name,
            len(held),
            why,
            n,
        )
        self._wake()

    async def _load(self, parts: list[int]) -> None:
        parts_set = self.parts
        n = 0
        try:
            # the jobs' extras first: a job dispatched while the rest loads
            # fails on with its count (sched_part_extras)
            extras = await self._store.partition_extras(parts)
            if self._stopping:
                return
            parts_set.begin(parts)
            self._arm_expiry()  # held now: covered even if no heartbeat follows
            crons: list[ExtraRow] = []
            for i in range(0, len(extras), _EXTRAS_SLICE):  # a slice per turn
                crons += add_extras(
                    self._sched,
                    parts_set.held,
                    parts_set.part,
                    extras[i : i + _EXTRAS_SLICE],
                    self._clock(),
                )
                await asyncio.sleep(0)
            async for chunk in self._store.partition_chunks(parts):
                if self._stopping:
                    return
                if self._mono() >= self._deadline:  # a stall mid-load
                    self._expire()  # the late ones' rows are skipped
                n += parts_set.load_rows(chunk, self._clock())
                self._wake()
        except Exception as exc:  # retried by the next heartbeat
            log.warning("%s: loading partitions failed: %r", self.name, exc)
            self._unload(parts, "load failed")
            return
        for i in range(0, len(crons), _EXTRAS_SLICE):  # schedules, after the jobs
            if i:
                await asyncio.sleep(0)
            add_crons(
                self._sched,
                parts_set.held,
                parts_set.part,
                crons[i : i + _EXTRAS_SLICE],
                self._clock(),
            )
        parts_set.finish(parts)
        self.loaded += len(parts)
        log.info(
            "%s: %d partition(s) acquired, %d job(s) loaded", self.name, len(parts), n
        )
        self._wake()

    async def _hand_over(self, parts: list[int]) -> None:
        """Excess partitions: out of the scheduler, committed, released."""
        self._unload(parts, "handed over")
        if await self._durable():
            await self._store.cluster_release(parts)

    async def _durable(self) -> bool:
        """Wait until everything written so far is committed (True) or its
        commit failed (False)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[BaseException | None] = loop.create_future()

        def fired(error: BaseException | None) -> None:  # any thread
            def settle() -> None:
                if not done.done():
                    done.set_result(error)

            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle)

        self._store.on_durable(fired)
        return await done is None

    # -- shutdown ---------------------------------------------------------------------

    async def leave(self, timeout: float = 10.0) -> None:
        """Hand every partition over (SIGTERM): stop dispatching, commit,
        release, leave.  Errors are logged (the leases then expire)."""
        if self._stopping:
            return
        self._stopping = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        self._unload(sorted(self.parts.held), "shutting down")
        if self.forwarder is not None:
            await self.forwarder.close()
        loading = self._loading
        if loading is not None and not loading.done():
            loading.cancel()
            with contextlib.suppress(BaseException):
                await loading

        async def hand_over() -> None:
            await self._durable()
            await self._store.cluster_leave()

        await self.locks.close()  # after the unload above gave its slots back
        try:
            await asyncio.wait_for(hand_over(), timeout)
            log.info("%s: left the cluster (partitions released)", self.name)
        except Exception as exc:
            log.warning(
                "%s: could not hand the partitions over (%r): the others take"
                " them when the leases expire",
                self.name,
                exc,
            )
