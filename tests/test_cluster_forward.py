"""Forwarding with real processes (issue 18): any node answers any client.

Three ``periodicd --cluster`` nodes on one throwaway PostgreSQL; every
request goes to **one** node, which holds only about a third of the
partitions, so the others' requests must be forwarded to their owners and
the owners' replies relayed: SUBMIT_JOB, RUN_JOB (result and stream),
REMOVE_JOB, LOAD (split by partition), DUMP (gathered) and DROP_FUNC
(every node).  Then a
node is killed (kill -9) while the client keeps submitting through another:
every submission is eventually acknowledged (forwarding waits for the new
owner) and every acknowledged job runs.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

from test_cluster_nodes import (
    LEASE,
    SLOTS,
    Node,
    Recorder,
    _wait_balanced,
    _wait_for,
    pg,  # noqa: F401  # the fixture
)

from periodic_fast.client import Client
from periodic_fast.cluster import WorkerCluster
from periodic_fast.job import Job
from periodic_fast.worker import WorkerJob

N_JOBS = 150


async def test_one_node_answers_for_every_partition(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"n{i}", tmp_path / f"n{i}.log") for i in range(3)]
    rec = Recorder()
    workers: WorkerCluster | None = None
    client: Client | None = None
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1", "n2"])

        async def published() -> bool:
            rows = await db.fetch(f"SELECT address FROM {prefix}cluster_nodes")
            return len(rows) == 3 and all(r[0] for r in rows)

        await _wait_for(published, 5 * LEASE, "the nodes' addresses")
        # routes are read by the heartbeat: one more tick everywhere
        await asyncio.sleep(LEASE / 2)
        addresses = [n.address for n in nodes]
        assert {
            r[0] for r in await db.fetch(f"SELECT address FROM {prefix}cluster_nodes")
        } == set(addresses)

        async def stream(job: WorkerJob) -> bytes:
            await job.data(b"chunk")
            return b"ran " + job.name.encode()

        workers = WorkerCluster(addresses, reconnect_delay=0.2)
        await workers.add_func("f", rec.handler)
        await workers.add_func("r", stream)
        await workers.start(SLOTS)
        client = Client(nodes[0].address, timeout=2 * LEASE + 10)
        await client.connect()

        # 1. SUBMIT through n0 only: every job acknowledged, spread over owners
        due = int(time.time()) + 3
        names = [f"a{i}" for i in range(N_JOBS)]
        acked = await asyncio.gather(
            *(client.submit_job(b"f", n, b"w", due) for n in names)
        )
        assert all(acked), acked.count(False)
        rec.acked.update(names)
        by_owner = {
            r[0]: r[1]
            for r in await db.fetch(
                f"SELECT p.owner, count(*) FROM {prefix}jobs j"
                f" JOIN {prefix}cluster_parts p ON p.part = j.part GROUP BY p.owner"
            )
        }
        assert sorted(by_owner) == ["n0", "n1", "n2"], by_owner
        assert sum(by_owner.values()) == N_JOBS

        # 2. REMOVE through n0 of jobs owned elsewhere: gone from the table
        far = [f"z{i}" for i in range(30)]
        assert all(
            await asyncio.gather(
                *(client.submit_job(b"f", n, b"w", due + 3600) for n in far)
            )
        )
        assert all(await asyncio.gather(*(client.remove_job(b"f", n) for n in far)))
        left = await db.fetchval(
            f"SELECT count(*) FROM {prefix}jobs WHERE name = ANY($1::bytea[])",
            [n.encode() for n in far],
        )
        assert left == 0

        # 3. RUN_JOB through n0: results relayed from every owner; a stream too
        results = await asyncio.gather(
            *(client.run_job(b"r", f"run{i}", timeout=10) for i in range(12))
        )
        assert results == [f"ran run{i}".encode() for i in range(12)]
        chunks: list[bytes] = []
        got = await client.run_job(
            b"r", "streamed", timeout=10, stream=lambda c: chunks.append(c)
        )
        assert got == b"ran streamed"

        # 4. LOAD through n0: split by partition, every piece at its owner
        loaded = [Job(b"g", f"l{i}".encode(), b"x", due + 3600) for i in range(60)]
        assert await client.load(loaded)
        rows = await db.fetch(
            f"SELECT p.owner FROM {prefix}jobs j JOIN {prefix}cluster_parts p"
            " ON p.part = j.part WHERE j.func = 'g'::bytea"
        )
        assert len(rows) == 60
        assert len(Counter(r[0] for r in rows)) == 3

        # 4b. DUMP through n0: every node's partitions, joined
        dumped = await client.dump()
        assert {j.name for j in dumped if j.func == b"g"} == {j.name for j in loaded}

        # 5. DROP_FUNC through n0: every node drops its partitions' jobs
        assert await client.drop_func(b"g")
        gone = await db.fetchval(
            f"SELECT count(*) FROM {prefix}jobs WHERE func = 'g'::bytea"
        )
        assert gone == 0

        async def all_ran() -> bool:
            return all(rec.runs[name] for name in rec.acked)

        await _wait_for(all_ran, 30, "every acknowledged job to run")

        # 6. kill -9 of n2 while submitting through n1: forwarding waits for
        # the new owner of n2's partitions; nothing acknowledged is lost
        await client.close()
        client = Client(nodes[1].address, timeout=2 * LEASE + 10)
        await client.connect()
        batch = [f"k{i}" for i in range(N_JOBS)]
        due = int(time.time()) + 2
        pending = [
            asyncio.ensure_future(client.submit_job(b"f", n, b"w", due)) for n in batch
        ]
        await asyncio.sleep(0.05)
        nodes[2].signal(signal.SIGKILL)
        nodes[2].wait()
        later = [f"m{i}" for i in range(50)]
        pending += [
            asyncio.ensure_future(client.submit_job(b"f", n, b"w", due)) for n in later
        ]
        answers = await asyncio.gather(*pending, return_exceptions=True)
        ok = [n for n, a in zip(batch + later, answers, strict=True) if a is True]
        rec.acked.update(ok)
        assert len(ok) == len(batch + later), [a for a in answers if a is not True][:5]
        await _wait_for(all_ran, 30 + LEASE, "every acknowledged job to run")
        assert set(rec.runs) >= rec.acked
    finally:
        if client is not None:
            await client.close()
        if workers is not None:
            await workers.close()
        for n in nodes:
            n.stop()
        await db.close()


def test_partition_not_found_without_forwarder_is_refused() -> None:
    """Sans-I/O: without a forwarder the interim refusal still applies, and
    a request from a peer link is never forwarded again."""
    from periodic_fast.codec import encode_job, encode_response
    from periodic_fast.constants import ClientType, Command
    from periodic_fast.sched_parts import Partitions
    from periodic_fast.scheduler import Scheduler
    from periodic_fast.server.forward import PEER_NAME, is_peer
    from periodic_fast.store.memory import MemoryStore

    sched = Scheduler(MemoryStore(), 0.0)
    parts = Partitions(sched, 4)
    parts.install()
    out: list[bytes] = []
    sched.connect(1, ClientType.CLIENT, None, out.append, lambda: None, 0.0)
    sched.connect(
        2, ClientType.AUTH_CLIENT, (PEER_NAME, b"-"), out.append, lambda: None, 0.0
    )
    payload = encode_job(Job(b"f", b"j", b"", 0))
    sched.handle(1, 7, int(Command.SUBMIT_JOB), payload, 0.0)
    assert out[-1] == encode_response(7, Command.NO_WORKER)
    seen: list[tuple[int, int]] = []
    parts.forward = lambda conn, msgid, cmd, pl, part: seen.append((conn.id, msgid))
    parts.peer = is_peer
    sched.handle(1, 8, int(Command.SUBMIT_JOB), payload, 0.0)
    assert seen == [(1, 8)]
    sched.handle(2, 9, int(Command.SUBMIT_JOB), payload, 0.0)  # from a peer
    assert seen == [(1, 8)]
    assert out[-1] == encode_response(9, Command.NO_WORKER)
