"""The cluster coordination core (periodic_fast.store.cluster) against a real
PostgreSQL: partitions split fairly, leases expire and move with an epoch
bump, a stale node's fenced writes are refused, a leaving node hands over at
once.  Each coordinator has its own connection, as each node would.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from pg_fixture import fresh_prefix, require_postgres, shared_cluster

from periodic_fast.job import Job, JobState
from periodic_fast.store._batch import Batch
from periodic_fast.store.cluster import (
    Coordinator,
    FencedOut,
    batch_partitions,
    fair_shares,
    partition_of,
)

P = 12
LEASE = 1.0
MARGIN = 0.3


# -- pure rules --------------------------------------------------------------------


def test_partition_of_is_stable_and_spreads() -> None:
    assert partition_of(b"f", b"a", 256) == partition_of(b"f", b"a", 256)
    assert partition_of(b"ab", b"c", 1 << 30) != partition_of(b"a", b"bc", 1 << 30)
    counts = Counter(partition_of(b"f", b"job-%d" % i, 16) for i in range(16_000))
    assert set(counts) == set(range(16))
    assert min(counts.values()) > 800 and max(counts.values()) < 1200
    # pinned: clients may route by it, so it must never change
    assert (
        partition_of(b"email", b"user-42", 256) == 41
    )  # crc32(00000005 email user-42)


def test_fair_shares() -> None:
    assert fair_shares([], 10) == {}
    assert fair_shares(["b", "a", "c"], 10) == {"a": 4, "b": 3, "c": 3}
    assert fair_shares(["a", "a"], 3) == {"a": 3}
    for n in range(1, 20):
        shares = fair_shares([f"n{i}" for i in range(n)], 256)
        assert sum(shares.values()) == 256
        assert max(shares.values()) - min(shares.values()) <= 1


def test_batch_partitions() -> None:
    batch = Batch()
    batch.save_job(Job(b"f", b"a"), JobState.PENDING)
    batch.delete_job(b"g", b"b")
    batch.save_func(b"h")
    assert batch_partitions(batch, 64) == {
        partition_of(b"f", b"a", 64),
        partition_of(b"g", b"b", 64),
    }
    batch.delete_func_jobs(b"f")
    assert batch_partitions(batch, 64) == set(range(64))


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="margin"):
        Coordinator("a", lease_time=1.0, margin=1.0)
    with pytest.raises(ValueError, match="prefix"):
        Coordinator("a", prefix="x; DROP")
    with pytest.raises(ValueError, match="partitions"):
        Coordinator("a", partitions=0)


# -- against PostgreSQL ------------------------------------------------------------

Factory = Callable[..., Awaitable[tuple[Coordinator, Any]]]


@pytest.fixture
async def nodes() -> AsyncIterator[Factory]:
    """Make coordinators on one fresh prefix, each on its own connection."""
    require_postgres()
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    connect, _ = parse_postgres_uri(shared_cluster().uri)
    prefix = fresh_prefix()
    conns: list[asyncpg.Connection] = []

    async def make(name: str, **kwargs: Any) -> tuple[Coordinator, Any]:
        conn = await asyncpg.connect(**connect)
        conns.append(conn)
        kwargs.setdefault("partitions", P)
        kwargs.setdefault("lease_time", LEASE)
        kwargs.setdefault("margin", MARGIN)
        coord = Coordinator(name, prefix=prefix, **kwargs)
        await coord.setup(conn)
        await coord.join(conn)
        return coord, conn

    yield make
    for conn in conns:
        await conn.close()


async def settle(members: list[tuple[Coordinator, Any]], rounds: int = 6) -> None:
    """Tick every node a few rounds, releasing excess as a server would."""
    for _ in range(rounds):
        for coord, conn in members:
            tick = await coord.tick(conn)
            if tick.excess:
                await coord.release(conn, tick.excess)


async def test_three_nodes_split_the_partitions_fairly(nodes: Factory) -> None:
    members = [await nodes(name) for name in ("a", "b", "c")]
    await settle(members)
    owned = [set(c.owned) for c, _ in members]
    assert [len(o) for o in owned] == [4, 4, 4]
    assert set().union(*owned) == set(range(P))
    assert sum(len(o) for o in owned) == P  # disjoint
    coord, conn = members[0]
    view = await coord.ownership(conn)
    for c, _ in members:
        for part, epoch in c.owned.items():
            assert view[part] == (c.node, epoch)
        assert c.dispatchable() == sorted(c.owned)


async def test_the_partition_count_is_fixed_at_creation(nodes: Factory) -> None:
    first, _ = await nodes("a")
    later, _ = await nodes("b", partitions=99)
    assert first.partitions == later.partitions == P


async def test_a_joining_node_takes_its_share(nodes: Factory) -> None:
    a = await nodes("a")
    await settle([a], 1)
    assert len(a[0].owned) == P
    b = await nodes("b")
    tick = await a[0].tick(a[1])
    assert tick.nodes == ["a", "b"] and len(tick.excess) == P // 2
    assert not (await b[0].tick(b[1])).acquired  # not released yet
    await a[0].release(a[1], tick.excess)  # after a's writes are committed
    got = await b[0].tick(b[1])
    assert sorted(got.acquired) == tick.excess
    assert len(a[0].owned) == len(b[0].owned) == P // 2


async def test_a_silent_node_loses_its_partitions_after_the_lease(
    nodes: Factory,
) -> None:
    a, b = await nodes("a"), await nodes("b")
    await settle([a, b])
    before = dict(a[0].owned)
    assert len(before) == P // 2
    # a stops heartbeating (paused, cut off): by its own clock it stops
    # dispatching before the lease can expire in the database (its last
    # renewal was sent at ``expiry - LEASE``)
    expiry = max(a[0]._safe_until.values()) + MARGIN
    while a[0].dispatchable():
        await asyncio.sleep(0.02)
    assert time.monotonic() < expiry
    taken: dict[int, int] = {}
    while len(taken) < len(before):  # b's ticks take them once expired
        taken.update((await b[0].tick(b[1])).acquired)
        await asyncio.sleep(0.05)
    assert time.monotonic() >= expiry  # never before the lease ran out
    assert sorted(taken) == sorted(before)
    assert all(taken[p] == before[p] + 1 for p in before)  # epochs bumped
    assert len(b[0].owned) == P
    # a wakes up: its renewals find the epochs changed
    tick = await a[0].tick(a[1])
    assert sorted(tick.lost) == sorted(before) and not a[0].owned
    assert not tick.acquired  # nothing free: b holds all, fair share later


async def test_a_stale_nodes_fenced_write_is_refused(nodes: Factory) -> None:
    a, b = await nodes("a", lease_time=0.5, margin=0.2), await nodes("b")
    await settle([a, b])
    conn_a, conn_b = a[1], b[1]
    await conn_a.execute("CREATE TEMP TABLE w (part INT, who TEXT)")
    await conn_b.execute("CREATE TEMP TABLE w (part INT, who TEXT)")
    part = min(a[0].owned)
    async with a[0].fenced(conn_a, [part]):  # the owner writes
        await conn_a.execute("INSERT INTO w VALUES ($1, 'a')", part)
    await asyncio.sleep(0.6)  # a's leases expire; b takes them over
    while part not in b[0].owned:
        await b[0].tick(conn_b)
        await asyncio.sleep(0.05)
    with pytest.raises(FencedOut) as info:
        async with a[0].fenced(conn_a, [part]):
            await conn_a.execute("INSERT INTO w VALUES ($1, 'stale')", part)
    assert info.value.parts == [part] and part not in a[0].owned
    rows = await conn_a.fetch("SELECT who FROM w")
    assert [r[0] for r in rows] == ["a"]  # the stale write rolled back
    async with b[0].fenced(conn_b, [part]):  # the new owner writes
        await conn_b.execute("INSERT INTO w VALUES ($1, 'b')", part)


async def test_a_fenced_batch_commit_on_the_jobs_table(nodes: Factory) -> None:
    """The store's own commit statement inside a fenced transaction: the
    owner's batch lands, the same batch from a node that lost one of its
    partitions lands nowhere."""
    from periodic_fast.store.postgres import (
        PostgresStore,
        _statement_args,
        parse_postgres_uri,
    )

    a, b = await nodes("a", lease_time=0.5, margin=0.2), await nodes("b")
    await settle([a, b])
    connect, _ = parse_postgres_uri(shared_cluster().uri)
    store = PostgresStore(connect, prefix=a[0].prefix)  # creates the tables
    sql, jobs = store._sql_commit, f"{a[0].prefix}jobs"
    store.close()

    def batch_in(parts: set[int], tag: bytes) -> Batch:
        batch, i = Batch(), 0
        while batch_partitions(batch, P) != parts:
            name = b"%s-%d" % (tag, i)
            if partition_of(b"f", name, P) in parts:
                batch.save_job(Job(b"f", name), JobState.PENDING)
            i += 1
        return batch

    mine = set(sorted(a[0].owned)[:2])
    good = batch_in(mine, b"ok")
    async with a[0].fenced(a[1], batch_partitions(good, P)):
        for args in _statement_args(good):
            await a[1].execute(sql, *args)
    assert await a[1].fetchval(f"SELECT count(*) FROM {jobs}") == len(good.jobs)
    await asyncio.sleep(0.6)
    lost = min(mine)
    while lost not in b[0].owned:  # b takes one of them over
        await b[0].tick(b[1])
    stale = batch_in(mine, b"stale")
    with pytest.raises(FencedOut) as info:
        async with a[0].fenced(a[1], batch_partitions(stale, P)):
            for args in _statement_args(stale):
                await a[1].execute(sql, *args)
    assert lost in info.value.parts
    assert await a[1].fetchval(f"SELECT count(*) FROM {jobs}") == len(good.jobs)


async def test_a_takeover_waits_for_a_fenced_write_in_flight(nodes: Factory) -> None:
    """The fenced check locks the partition rows: a takeover cannot commit
    between the check and the commit of the write."""
    a, b = await nodes("a", lease_time=0.5, margin=0.2), await nodes("b")
    await settle([a, b])
    part = min(a[0].owned)
    order: list[str] = []
    async with a[0].fenced(a[1], [part]):
        await asyncio.sleep(0.7)  # a's lease expires meanwhile
        grab = asyncio.ensure_future(b[0].tick(b[1]))
        await asyncio.sleep(0.3)
        order.append("a commits")
    got = await grab
    order.append("b ticked")
    assert order == ["a commits", "b ticked"]
    assert part not in got.acquired  # skipped while locked; taken next tick
    while part not in b[0].owned:
        await b[0].tick(b[1])
    with pytest.raises(FencedOut):
        async with a[0].fenced(a[1], [part]):
            pass


async def test_leaving_hands_over_at_once(nodes: Factory) -> None:
    long = {"lease_time": 30.0, "margin": 5.0}
    a, b, c = [await nodes(n, **long) for n in "abc"]
    await settle([a, b, c])
    gone = dict(a[0].owned)
    await a[0].leave(a[1])
    assert not a[0].owned and not a[0].dispatchable()
    started = time.monotonic()
    await settle([b, c], 2)
    assert time.monotonic() - started < 20  # long before a's leases ran out
    assert len(b[0].owned) == len(c[0].owned) == P // 2
    for part, epoch in gone.items():
        owner = b if part in b[0].owned else c
        assert owner[0].owned[part] == epoch + 1
