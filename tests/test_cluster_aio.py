"""The real aio-periodic client and workers across a 3-node cluster (issue 18).

aio-periodic's ``ClientCluster`` routes each job by a ketama ring of the
node addresses, which has nothing to do with our partitions: forwarding
makes that work.  Its ``WorkerCluster`` connects a worker to every node
(its ``work()`` runs the nodes' loops one after the other, so the first
never returns: each node's worker loop is started here as its own task).

Scenario: jobs that finish (WORK_DONE), fail once (WORK_FAIL, retried),
ask to run again later (SCHED_LATER), are removed before they are due
(REMOVE_JOB) and run synchronously (RUN_JOB), submitted through the
ketama-routed client while one node is killed (kill -9).  Every job whose
submission was acknowledged runs to the end; removed jobs never run.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_cluster_nodes import (
    LEASE,
    Node,
    _owners,
    _wait_for,
    pg,  # noqa: F401  # the fixture
)

aio = pytest.importorskip("aio_periodic")
pytest.importorskip("uhashring")

from aio_periodic import ClientCluster, Transport, WorkerCluster  # noqa: E402
from aio_periodic.job import Job as AioJob  # noqa: E402
from aio_periodic.rsp import (  # noqa: E402
    DoneResponse,
    FailResponse,
    SchedLaterResponse,
)

pytestmark = [pytest.mark.interop]


async def _ack(coro: Any, seconds: float) -> bool:
    """An aio request's answer; False when it failed or timed out (its node
    was the killed one)."""
    try:
        return bool(await asyncio.wait_for(coro, seconds))
    except Exception:
        return False


async def test_aio_client_and_workers_across_a_kill(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"n{i}", tmp_path / f"n{i}.log") for i in range(3)]
    runs: Counter[tuple[str, str]] = Counter()
    finished: set[tuple[str, str]] = set()
    tasks: list[asyncio.Task[Any]] = []
    workers: Any = None
    client: Any = None
    try:
        for n in nodes:
            n.wait_listening()

        async def ready() -> bool:
            owners = await _owners(db, prefix)
            rows = await db.fetch(f"SELECT address FROM {prefix}cluster_nodes")
            return (
                sorted(owners) == ["n0", "n1", "n2"]
                and sum(owners.values()) == 256
                and len(rows) == 3
                and all(r[0] for r in rows)
            )

        await _wait_for(ready, 10 * LEASE, "three nodes, addresses published")
        await asyncio.sleep(LEASE / 2)  # every node read the routes
        addresses = [n.address for n in nodes]

        async def done(job: AioJob) -> Any:
            runs["done", job.name] += 1
            finished.add(("done", job.name))
            return DoneResponse(b"ok")

        async def flaky(job: AioJob) -> Any:
            runs["flaky", job.name] += 1
            if runs["flaky", job.name] == 1:
                return FailResponse()
            finished.add(("flaky", job.name))
            return DoneResponse()

        async def later(job: AioJob) -> Any:
            runs["later", job.name] += 1
            if job.payload.count == 0:
                return SchedLaterResponse(1, 1)
            finished.add(("later", job.name))
            return DoneResponse()

        async def removed(job: AioJob) -> Any:
            runs["removed", job.name] += 1
            return DoneResponse()

        async def sync(job: AioJob) -> Any:
            return DoneResponse(b"sync " + job.name.encode())

        workers = WorkerCluster(addresses)
        for name, task in [
            ("done", done),
            ("flaky", flaky),
            ("later", later),
            ("removed", removed),
            ("sync", sync),
        ]:
            workers.func(name)(task)
        await workers.connect({a: Transport(a) for a in addresses})
        tasks = [asyncio.create_task(w.work(4)) for w in workers.clients]
        client = ClientCluster(addresses)
        await client.connect({a: Transport(a) for a in addresses})
        await asyncio.sleep(0.5)  # the workers' CAN_DO reached every node

        acked: set[tuple[str, str]] = set()

        async def submit(func: str, names: list[str], delay: int) -> None:
            at = int(time.time()) + delay
            answers = await asyncio.gather(
                *(_ack(client.submit_job(func, n, b"w", at), 10) for n in names)
            )
            acked.update((func, n) for n, a in zip(names, answers, strict=True) if a)

        # before the kill: every request answered, whichever node it reached
        await submit("done", [f"d{i}" for i in range(60)], 2)
        await submit("flaky", [f"f{i}" for i in range(20)], 2)
        await submit("later", [f"l{i}" for i in range(20)], 2)
        future = [f"r{i}" for i in range(30)]
        await submit("removed", future, 3600)
        assert len(acked) == 130, len(acked)
        results = await asyncio.gather(
            *(client.run_job("sync", f"s{i}", b"", timeout=10) for i in range(9))
        )
        assert results == [f"sync s{i}".encode() for i in range(9)]
        gone = await asyncio.gather(
            *(_ack(client.remove_job("removed", n), 10) for n in future)
        )
        assert all(gone)

        # kill -9 of n2, jobs still being submitted through every node
        more = asyncio.ensure_future(submit("done", [f"k{i}" for i in range(60)], 1))
        await asyncio.sleep(0.02)
        nodes[2].signal(signal.SIGKILL)
        nodes[2].wait()
        await more
        await submit("later", [f"m{i}" for i in range(20)], 1)
        # requests the ring sent to n2 are lost with it; the others are not
        lost = {
            (f, n)
            for f, n in [("done", f"k{i}") for i in range(60)]
            + [("later", f"m{i}") for i in range(20)]
            if (f, n) not in acked
        }
        ring = {n for _, n in lost}
        assert all(client.get(n) is client.clients[2] for n in ring), ring

        expected = {k for k in acked if k[0] != "removed"}

        async def all_finished() -> bool:
            return expected <= finished

        await _wait_for(all_finished, 40 + 2 * LEASE, "every acknowledged job")
        assert not [k for k in runs if k[0] == "removed"]
        assert all(runs["flaky", n] >= 2 for f, n in expected if f == "flaky")

        async def empty() -> bool:
            return await db.fetchval(f"SELECT count(*) FROM {prefix}jobs") == 0

        await _wait_for(empty, 15, "the jobs table to empty")
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t
        for c in [workers, client]:
            if c is not None:
                for one in c.clients:
                    one.start_connect = lambda: None  # no reconnect loop
                    with contextlib.suppress(Exception):
                        one.close()
        for n in nodes:
            n.stop()
        await db.close()
