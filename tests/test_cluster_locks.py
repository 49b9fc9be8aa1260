"""Locks with a global count in cluster mode (issue 18, docs/cluster.md "Locks").

* The store part against a real PostgreSQL (two nodes' stores in one
  process): a slot is taken only below the lock's count, fenced on the job's
  partition; a job's own row means already granted; the max only grows while
  the lock has holders; a release notifies listeners; a node whose leases
  expired stops holding its slots.
* The scheduler's seam, sans-I/O: an ACQUIRE the table cannot answer goes to
  the remote; its answers park or grant; a released slot goes back to the
  remote, not to the local queue.
* Real processes: three ``periodicd --cluster`` nodes, workers recording
  enter/exit times inside the lock: never more than the count at once across
  the nodes (counts 1 and 2), every job completes; ``kill -9`` of the node
  whose job holds the lock frees the slot within about a lease.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_fixture import fresh_prefix, require_postgres, shared_cluster
from test_cluster_nodes import LEASE, Node, _wait_balanced, _wait_for

from periodic_fast.client import Client
from periodic_fast.cluster import WorkerCluster
from periodic_fast.sched_locks import LockTable
from periodic_fast.sched_model import LOCKED, PENDING, RUNNING
from periodic_fast.store.cluster import Coordinator, FencedOut, partition_of
from periodic_fast.worker import WorkerJob

P = 8


# -- the store part ------------------------------------------------------------------


@pytest.fixture
def pgs() -> tuple[dict[str, Any], str]:
    require_postgres()
    from periodic_fast.store.postgres import parse_postgres_uri

    connect, _ = parse_postgres_uri(shared_cluster().uri)
    return connect, fresh_prefix()


def _store(connect: dict[str, Any], prefix: str, name: str) -> Any:
    from periodic_fast.store.postgres import PostgresStore

    coord = Coordinator(name, prefix=prefix, partitions=P, lease_time=1.0, margin=0.3)
    return PostgresStore(connect, prefix=prefix, cluster=coord, lock_wait=0.3)


def _run(store: Any, coro: Any) -> Any:
    async def go() -> Any:
        return await store.cluster_run(coro)

    return asyncio.run(go())


def _tick(store: Any) -> Any:
    async def go() -> Any:
        return await store.cluster_tick()

    return asyncio.run(go())[0]


def _name_in(parts: set[int], tag: str) -> Iterator[bytes]:
    i = 0
    while True:
        name = f"{tag}{i}".encode()
        i += 1
        if partition_of(b"f", name, P) in parts:
            yield name


def test_global_count_fencing_widen_and_expiry(pgs: tuple[dict[str, Any], str]) -> None:
    connect, prefix = pgs
    a = _store(connect, prefix, "a")
    b = _store(connect, prefix, "b")
    try:
        _tick(a)  # a takes everything, then shares with b
        _tick(b)
        tick = _tick(a)
        asyncio.run(a.cluster_release(tick.excess))
        _tick(b)
        pa = set(a.coordinator.owned)
        pb = set(b.coordinator.owned)
        assert pa and pb and not pa & pb
        la, lb = a.cluster_locks(), b.cluster_locks()
        ja = _name_in(pa, "a")
        jb = _name_in(pb, "b")
        a1, a2, b1 = next(ja), next(ja), next(jb)

        # count 1: one holder across both nodes; the holder asks again: granted
        assert _run(a, la.acquire(b"L", 1, b"f", a1, True)) is True
        assert _run(b, lb.acquire(b"L", 1, b"f", b1, True)) is False
        assert _run(a, la.acquire(b"L", 1, b"f", a2, True)) is False
        assert _run(a, la.acquire(b"L", 1, b"f", a1, True)) is True
        # a job of a partition this node does not own: fenced out
        with pytest.raises(FencedOut):
            _run(a, la.acquire(b"L", 1, b"f", b1, True))
        # the max only grows while the lock has holders; not without widen
        assert _run(b, lb.acquire(b"L", 2, b"f", b1, False)) is False
        assert _run(b, lb.acquire(b"L", 2, b"f", b1, True)) is True
        assert _run(a, la.acquire(b"L", 1, b"f", a2, True)) is False  # 2 held
        # a release notifies listeners (b hears a's release) and frees a slot
        heard: list[bytes] = []
        got = asyncio.Event()

        async def listen_and_release() -> None:
            loop = asyncio.get_running_loop()

            def on(lock: bytes) -> None:  # b's writer thread
                heard.append(lock)
                loop.call_soon_threadsafe(got.set)

            await b.cluster_run(lb.listen(on))
            assert await a.cluster_run(la.release(b"L", b"f", a1)) is True
            assert await a.cluster_run(la.release(b"L", b"f", a1)) is False
            await asyncio.wait_for(got.wait(), 5)

        asyncio.run(listen_and_release())
        assert heard == [b"L"]
        assert _run(a, la.acquire(b"L", 1, b"f", a2, True)) is True  # max 2 kept
        assert {r[1] for r in _run(a, la.holders(b"L"))} == {a2, b1}

        # b stops renewing (as if killed): its slot stops counting once its
        # leases expire; a takes b's partitions and then the slot
        assert _run(a, la.acquire(b"L", 1, b"f", a1, True)) is False
        time.sleep(1.2)
        _tick(a)
        assert pb <= set(a.coordinator.owned)
        assert _run(a, la.acquire(b"L", 1, b"f", a1, True)) is True
        holders = _run(a, la.holders(b"L"))
        assert {(r[1], r[2]) for r in holders} == {(a1, "a"), (a2, "a")}
        # b's job, now a's partition, asks again on a: the count (2) is full
        assert _run(a, la.acquire(b"L", 1, b"f", b1, True)) is False
    finally:
        a.close()
        b.close()


# -- the scheduler's seam (sans-I/O) -------------------------------------------------


class _Rec:
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.state = RUNNING


class _Remote:
    """A LockRemote recording what it is told."""

    def __init__(self) -> None:
        self.asked: list[tuple[bytes, bytes]] = []
        self.gone: list[tuple[bytes, bytes]] = []

    def ask(self, lock: bytes, count: int, key: bytes, widen: bool, reply: Any) -> None:
        self.asked.append((lock, key))

    def released(self, lock: bytes, key: bytes) -> None:
        self.gone.append((lock, key))


def test_lock_table_defers_to_the_remote() -> None:
    recs = {k: _Rec(k) for k in (b"\x01fa", b"\x01fb")}
    parked: list[bytes] = []
    unparked: list[bytes] = []

    def park(r: Any) -> None:
        r.state = LOCKED
        parked.append(r.key)

    def unpark(r: Any) -> None:
        r.state = PENDING
        unparked.append(r.key)

    table = LockTable(recs.get, park, unpark)  # type: ignore[arg-type]
    remote = _Remote()
    table.remote = remote
    ka, kb = b"\x01fa", b"\x01fb"
    assert table.acquire(b"L", 1, ka, 0.0) is None  # asked elsewhere
    assert table.decided(b"L", 1, ka, True, 0.0) is True
    assert table.acquire(b"L", 1, ka, 0.0) is True  # holds it: no round trip
    assert table.acquire(b"L", 1, kb, 0.0) is None
    assert table.decided(b"L", 1, kb, False, 0.0) is False
    assert parked == [kb] and recs[kb].state == LOCKED
    assert table.acquire(b"L", 1, kb, 0.0) is False  # queued: refused here
    table.release(b"L", ka, 1.0)  # the slot goes back to the remote...
    assert remote.gone == [(b"L", ka)]
    assert unparked == []  # ... not to the local queue
    assert table.waiting() == [(b"L", 1, [kb])]
    assert table.grant(b"L", kb, 2.0) is True  # the remote took a slot for it
    assert unparked == [kb] and table.waiting() == []
    recs[kb].state = RUNNING  # dispatched again: holds the lock
    assert table.acquire(b"L", 1, kb, 3.0) is True
    # a job that ended (or whose partition left) while the remote decided
    # gives the slot back and is refused: it may run on another node now
    del recs[ka]
    assert table.decided(b"M", 1, ka, True, 4.0) is False
    assert remote.gone[-1] == (b"M", ka)
    # a job not running here (a stale worker's ACQUIRE): refused, not asked
    assert table.acquire(b"M", 1, ka, 5.0) is False
    assert (b"M", ka) not in remote.asked


# -- real processes ------------------------------------------------------------------


@pytest.fixture
def pg() -> tuple[str, str]:
    require_postgres()
    cluster = shared_cluster()
    prefix = fresh_prefix()
    sep = "&" if "?" in cluster.uri else "?"
    return f"{cluster.uri}{sep}prefix={prefix}", prefix


class Intervals:
    """Enter/exit times of the jobs inside each lock, and the completions."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.spans: dict[bytes, list[tuple[float, float, str]]] = {}
        self.done: set[str] = set()
        self.block: set[str] = set()  # jobs that hold the lock until killed
        self.entered: dict[str, str] = {}  # job -> node address, when inside

    async def handler(self, job: WorkerJob) -> bytes | None:
        lock, count = job.workload.split(b":")
        if not await job.acquire(lock, int(count)):
            return None  # parked: dispatched again when handed the lock
        enter = time.monotonic()
        self.entered[job.name] = job.worker.address
        if job.name in self.block:
            self.block.discard(job.name)  # its run after the failover ends
            await asyncio.sleep(3600)  # until its node is killed
        await asyncio.sleep(self.hold)
        self.spans.setdefault(lock, []).append((enter, time.monotonic(), job.name))
        self.done.add(job.name)
        return b"ok"


def max_overlap(spans: list[tuple[float, float, str]]) -> int:
    """The most intervals open at one moment (an exit before an enter at
    the same instant)."""
    events = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    most = cur = 0
    for _, d in events:
        cur += d
        most = max(most, cur)
    return most


def _spread_names(db_parts: dict[int, str], tag: str, n: int) -> list[str]:
    """``n`` job names per node, each node's on its own partitions."""
    per: dict[str, list[str]] = {}
    i = 0
    while any(len(per.get(o, [])) < n for o in set(db_parts.values())) and i < 10**5:
        name = f"{tag}{i}"
        i += 1
        owner = db_parts.get(partition_of(b"lk", name.encode(), 256))
        if owner is not None and len(per.setdefault(owner, [])) < n:
            per[owner].append(name)
    return [name for names in per.values() for name in names]


async def _start(uri: str, prefix: str, tmp: Path) -> tuple[list[Node], Any]:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"n{i}", tmp / f"n{i}.log") for i in range(3)]
    for n in nodes:
        n.wait_listening()

    await _wait_balanced(db, prefix, ["n0", "n1", "n2"])
    return nodes, db


async def _parts(db: Any, prefix: str) -> dict[int, str]:
    rows = await db.fetch(
        f"SELECT part, owner FROM {prefix}cluster_parts WHERE lease_until > now()"
    )
    return {r[0]: r[1] for r in rows}


async def test_global_count_across_three_nodes(
    pg: tuple[str, str], tmp_path: Path
) -> None:
    uri, prefix = pg
    nodes, db = await _start(uri, prefix, tmp_path)
    rec = Intervals(hold=0.15)
    workers: WorkerCluster | None = None
    client = Client(nodes[0].address, timeout=10)
    try:
        workers = WorkerCluster([n.address for n in nodes], reconnect_delay=0.2)
        await workers.add_func("lk", rec.handler)
        await workers.start(4)
        await client.connect()
        owners = await _parts(db, prefix)
        one = _spread_names(owners, "one", 4)  # lock count 1
        two = _spread_names(owners, "two", 4)  # lock count 2
        now = int(time.time())
        for name in one:
            assert await client.submit_job(b"lk", name, b"L1:1", now)
        for name in two:
            assert await client.submit_job(b"lk", name, b"L2:2", now)

        async def all_done() -> bool:
            return rec.done >= set(one) | set(two)

        took = await _wait_for(all_done, 60, "every job to complete")
        assert len(rec.spans[b"L1"]) == len(one)
        assert len(rec.spans[b"L2"]) == len(two)
        # nodes really were involved: every node's jobs ran
        assert {rec.entered[n] for n in one} == {n.address for n in nodes}
        assert max_overlap(rec.spans[b"L1"]) == 1
        assert max_overlap(rec.spans[b"L2"]) <= 2
        spans = sorted(rec.spans[b"L1"])
        gaps = sorted(b[0] - a[1] for a, b in zip(spans, spans[1:], strict=False))
        print(
            f"\nL1 hand-over gaps (exit -> next enter): median"
            f" {1000 * gaps[len(gaps) // 2]:.1f} ms, max {1000 * gaps[-1]:.1f} ms"
        )
        print(
            f"{len(one) + len(two)} lock jobs on 3 nodes done in {took:.2f} s;"
            f" overlap L1 {max_overlap(rec.spans[b'L1'])},"
            f" L2 {max_overlap(rec.spans[b'L2'])}"
        )
    finally:
        await client.close()
        if workers is not None:
            await workers.close()
        for n in nodes:
            n.stop()
        await db.close()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
async def test_holder_node_going_away_frees_its_slot(
    pg: tuple[str, str], tmp_path: Path, sig: signal.Signals
) -> None:
    """kill -9: the slot stops counting when the node's leases expire (about
    a lease); SIGTERM: the leaving node gives it back (and notifies) at once."""
    uri, prefix = pg
    nodes, db = await _start(uri, prefix, tmp_path)
    rec = Intervals(hold=0.05)
    workers: WorkerCluster | None = None
    client = Client(nodes[1].address, timeout=10)
    try:
        owners = await _parts(db, prefix)
        # the blocker on n0; the others on n1 and n2
        blocker = next(
            n
            for n in _spread_names(owners, "blk", 1)
            if owners[partition_of(b"lk", n.encode(), 256)] == "n0"
        )
        rest = [
            n
            for n in _spread_names(owners, "w", 3)
            if owners[partition_of(b"lk", n.encode(), 256)] != "n0"
        ]
        rec.block.add(blocker)
        workers = WorkerCluster([n.address for n in nodes], reconnect_delay=0.2)
        await workers.add_func("lk", rec.handler)
        await workers.start(4)
        await client.connect()
        assert await client.submit_job(b"lk", blocker, b"K:1", int(time.time()))

        async def blocked() -> bool:
            return blocker in rec.entered

        await _wait_for(blocked, 20, "the blocker to hold the lock")
        for name in rest:
            assert await client.submit_job(b"lk", name, b"K:1", int(time.time()))
        await asyncio.sleep(2 * LEASE)
        assert not set(rest) & rec.done  # the lock is held on n0
        # STATUS (any node: the cluster's sum) counts the parked jobs as locked
        stat = (await client.status())["lk"]
        assert stat.locked == len(rest), stat
        row = await db.fetch(f"SELECT node FROM {prefix}cluster_locks WHERE name = 'K'")
        assert [r[0] for r in row] == ["n0"]
        killed = time.monotonic()
        nodes[0].signal(sig)
        nodes[0].wait()

        async def others_done() -> bool:
            return rec.done >= set(rest)

        await _wait_for(others_done, 6 * LEASE + 20, "the others to get the lock")
        first = min(s for s, _, name in rec.spans[b"K"] if name in rest)
        freed = first - killed
        bound = 3 * LEASE + 3 if sig == signal.SIGKILL else LEASE
        assert freed < bound, f"slot freed {freed:.2f} s after {sig.name}"
        # every recorded stay (the blocker's run after the failover too)
        assert max_overlap(rec.spans[b"K"]) == 1
        print(f"\n{sig.name} of the holder's node: next holder {freed:.2f} s later")
    finally:
        await client.close()
        if workers is not None:
            await workers.close()
        for n in nodes:
            n.stop()
        await db.close()
