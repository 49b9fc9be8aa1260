"""A cluster DUMP is one snapshot (issue 18): the node that gets it reads
the jobs table once, in a repeatable-read transaction (committed state of
every partition), instead of gathering every node's in-memory jobs.

Two ``periodicd --cluster`` nodes: the DUMP through one node lists every
job submitted through either, with its fields, in the DUMP format; right
after a kill -9 of the other node (its partitions not moved yet, its row
still live) the DUMP still lists every acknowledged job at once, where the
gathered one lost the dead node's jobs or waited for it and gave up.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest
from test_cluster_nodes import (
    LEASE,
    Node,
    _owners,
    _wait_balanced,
    pg,  # noqa: F401  # the fixture
)

from periodic_fast.client import Client
from periodic_fast.codec import decode_job_list
from periodic_fast.job import Job

pytestmark = pytest.mark.timeout(120)


async def test_dump_is_one_read_of_the_table(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"n{i}", tmp_path / f"n{i}.log") for i in range(2)]
    clients: list[Client] = []
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1"])
        await asyncio.sleep(LEASE / 2)  # routes published
        clients = [Client(n.address, timeout=2 * LEASE + 10) for n in nodes]
        for c in clients:
            await c.connect()
        base = int(time.time()) + 3600
        jobs = [
            Job(b"f", f"j{i}".encode(), f"w{i}".encode(), base + i, 0, 5 + i % 7)
            for i in range(120)
        ]
        acked = await asyncio.gather(
            *(clients[i % 2].submit_job(b"", b"", job=j) for i, j in enumerate(jobs))
        )
        assert all(acked)
        owners = {
            r[0]
            for r in await db.fetch(
                f"SELECT p.owner FROM {prefix}jobs j JOIN {prefix}cluster_parts p"
                " ON p.part = j.part"
            )
        }
        assert owners == {"n0", "n1"}

        # every job, once, with its fields; the same bytes as the table
        raw = await clients[0].dump_raw()
        dumped = list(decode_job_list(raw))
        assert sorted(dumped) == sorted(jobs)
        assert len(dumped) == len(jobs)

        # kill -9 of n1: its partitions have not moved, its row is live; the
        # snapshot still has its committed jobs, at once
        nodes[1].signal(signal.SIGKILL)
        nodes[1].wait()
        assert (await _owners(db, prefix))["n1"] > 0  # its leases still run
        start = time.monotonic()
        dumped = await clients[0].dump()
        took = time.monotonic() - start
        assert sorted(dumped) == sorted(jobs)
        assert took < LEASE, took  # no waiting for the dead node
    finally:
        for c in clients:
            await c.close()
        for n in nodes:
            n.stop()
        await db.close()
