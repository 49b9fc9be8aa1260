"""The PostgreSQL store in cluster mode (issue 18) against a real PostgreSQL:
the ``part`` column (written, back-filled for a single-node server's rows),
per-partition loads, fenced commits (a lost partition's writes fail their
barrier, leave the batch, and are reported), and the prefix lock (a cluster
node and a single-node server refuse each other)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pg_fixture import fresh_prefix, require_postgres, shared_cluster

from periodic_fast.job import Job, JobState
from periodic_fast.store.cluster import Coordinator, FencedOut, partition_of

P = 8


@pytest.fixture
def pg() -> tuple[dict[str, Any], str]:
    require_postgres()
    from periodic_fast.store.postgres import parse_postgres_uri

    connect, _ = parse_postgres_uri(shared_cluster().uri)
    return connect, fresh_prefix()


def _node(connect: dict[str, Any], prefix: str, name: str, **kw: Any) -> Any:
    from periodic_fast.store.postgres import PostgresStore

    kw.setdefault("lease_time", 1.0)
    kw.setdefault("margin", 0.3)
    coord = Coordinator(name, prefix=prefix, partitions=P, **kw)
    return PostgresStore(connect, prefix=prefix, cluster=coord, lock_wait=0.3)


def _tick(store: Any) -> Any:
    async def go() -> Any:
        return await store.cluster_tick()

    return asyncio.run(go())


def _rows(store: Any, parts: list[int]) -> list[tuple[Any, ...]]:
    return [row for chunk in store.load_partitions(parts) for row in chunk]


def _names_in(part: int, n: int, tag: str = "j") -> Iterator[bytes]:
    i = 0
    found = 0
    while found < n:
        name = f"{tag}{i}".encode()
        i += 1
        if partition_of(b"f", name, P) == part:
            found += 1
            yield name


def test_part_column_load_partitions_and_backfill(
    pg: tuple[dict[str, Any], str],
) -> None:
    from periodic_fast.store.postgres import PostgresStore

    connect, prefix = pg
    single = PostgresStore(connect, prefix=prefix)  # a single-node server's rows
    for i in range(50):
        single.save_job(Job(b"f", b"old%d" % i), JobState.PENDING)
    single.close()
    node = _node(connect, prefix, "a")
    try:
        assert list(node.load().jobs) == []  # jobs come per partition
        tick, safe = _tick(node)
        assert sorted(tick.acquired) == sorted(safe) == list(range(P))
        node.save_job(Job(b"f", b"new"), JobState.PENDING)
        node.flush()
        want = partition_of(b"f", b"new", P)
        got = _rows(node, [want])
        assert all(partition_of(r[0], r[1], P) == want for r in got)
        assert b"new" in {r[1] for r in got}
        # every row (the back-filled ones too) is found through its partition
        every = _rows(node, list(range(P)))
        assert len(every) == 51
        other = [p for p in range(P) if p != want]
        assert b"new" not in {r[1] for r in _rows(node, other)}
    finally:
        node.close()


def test_a_fenced_out_commit_fails_its_barrier_and_keeps_the_rest(
    pg: tuple[dict[str, Any], str],
) -> None:
    connect, prefix = pg
    a = _node(connect, prefix, "a")
    b = None
    try:
        _tick(a)  # a holds everything
        lost, kept = 0, 1
        lost_names = list(_names_in(lost, 3))
        kept_names = list(_names_in(kept, 3))
        # another node takes partition ``lost`` over behind a's back
        b = _node(connect, prefix, "b")

        async def steal() -> None:
            import asyncpg

            conn = await asyncpg.connect(**connect)
            try:
                await conn.execute(
                    f"UPDATE {prefix}cluster_parts SET owner = 'b', epoch = epoch + 1,"
                    " lease_until = now() + interval '1 hour' WHERE part = $1",
                    lost,
                )
            finally:
                await conn.close()

        asyncio.run(steal())
        reported: list[list[int]] = []
        a.on_fenced = reported.append
        for name in lost_names + kept_names:
            a.save_job(Job(b"f", name), JobState.PENDING)
        fired = threading.Event()
        errors: list[BaseException | None] = []

        def barrier(error: BaseException | None) -> None:
            errors.append(error)
            fired.set()

        a.on_durable(barrier)
        assert fired.wait(10)
        assert isinstance(errors[0], FencedOut) and errors[0].parts == [lost]
        assert reported == [[lost]]
        a.flush(10)  # the retry commits the kept partition's writes
        names = {r[1] for r in _rows(a, [lost, kept])}
        assert names == set(kept_names)  # none of the lost partition's
        assert a.metrics()["healthy"] == 1.0
    finally:
        a.close()
        if b is not None:
            b.close()


def test_single_node_and_cluster_refuse_each_other(
    pg: tuple[dict[str, Any], str],
) -> None:
    from periodic_fast.store.postgres import PostgresStore, PrefixInUseError

    connect, prefix = pg
    node = _node(connect, prefix, "a")
    try:
        with pytest.raises(PrefixInUseError, match="--cluster"):
            PostgresStore(connect, prefix=prefix, lock_wait=0.3)
        second = _node(connect, prefix, "b")  # another node is fine
        second.close()
    finally:
        node.close()
    single = PostgresStore(connect, prefix=prefix)
    try:
        with pytest.raises(PrefixInUseError, match="single-node server"):
            _node(connect, prefix, "c")
    finally:
        single.close()
