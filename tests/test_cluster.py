"""WorkerCluster (with ClientCluster) against two of our in-process servers,
and an aio-periodic 1.0.0 ClientCluster feeding our WorkerCluster."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from periodic_fast.client import Client, NotConnected
from periodic_fast.cluster import ClientCluster, WorkerCluster
from periodic_fast.testing import running_server
from periodic_fast.worker import WorkerJob

pytestmark = pytest.mark.timeout(60)


async def eventually(
    pred: Callable[[], Awaitable[bool]], timeout: float = 10.0, step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


async def workers_of(address: str, func: str) -> int:
    async with Client(address) as c:
        st = await c.status()
    return st[func].workers if func in st else 0


async def test_worker_cluster_serves_every_server() -> None:
    async with running_server(unix=False) as s1, running_server(unix=False) as s2:
        addrs = [s1.addresses[0], s2.addresses[0]]
        cluster = WorkerCluster(addrs)
        seen: dict[str, list[str]] = {a: [] for a in addrs}

        @cluster.func("echo")
        async def echo(job: WorkerJob) -> bytes:
            # the job object belongs to the worker of the server it came from
            seen[job.worker.address].append(job.name)
            return job.workload + b"!"

        got: list[bytes] = []

        @cluster.broadcast("hello")
        def hello(job: WorkerJob) -> None:  # plain function: thread pool
            got.append(job.workload)

        await cluster.start(4)
        try:
            assert cluster.funcs == ["echo", "hello"]
            for a in addrs:
                assert await workers_of(a, "echo") == 1
                assert await workers_of(a, "hello") == 1
            names = [f"job-{i}" for i in range(30)]
            async with ClientCluster(addrs) as cc:
                results = await asyncio.gather(
                    *(cc.run_job("echo", n, n.encode()) for n in names)
                )
                assert results == [n.encode() + b"!" for n in names]
                # each server ran exactly the names the ring gave it
                for a in addrs:
                    owned = sorted(n for n in names if cc.ring.get_node(n) == a)
                    assert sorted(seen[a]) == owned and 0 < len(owned) < 30
                # background jobs too
                for i in range(10):
                    assert await cc.submit_job("echo", f"bg-{i}")

                async def drained() -> bool:
                    st = await cc.status()
                    return st["echo"].jobs == 0

                await eventually(drained)
                assert sum(len(v) for v in seen.values()) == 40
                # a broadcast job reaches the cluster's worker on its server
                assert await cc.submit_job("hello", "h", b"hi")

                async def heard() -> bool:
                    return got == [b"hi"]

                await eventually(heard)
                # unregistering applies to every server
                assert await cluster.remove_func("hello")
                assert cluster.funcs == ["echo"]
                for a in addrs:
                    assert await workers_of(a, "hello") == 0
        finally:
            await cluster.shutdown(timeout=5)
        for a in addrs:
            assert await workers_of(a, "echo") == 0


async def test_add_func_after_start_and_graceful_drain() -> None:
    async with running_server(unix=False) as s1, running_server(unix=False) as s2:
        addrs = [s1.addresses[0], s2.addresses[0]]
        cluster = WorkerCluster(addrs)
        started = asyncio.Event()
        finish = asyncio.Event()

        async def slow(job: WorkerJob) -> bytes:
            started.set()
            await finish.wait()
            return b"finished"

        await cluster.start(2)
        assert await cluster.add_func("slow", slow)
        for a in addrs:
            assert await workers_of(a, "slow") == 1
        async with Client(addrs[1]) as c:
            run = asyncio.create_task(c.run_job("slow", "x", timeout=20))
            await asyncio.wait_for(started.wait(), 10)
            assert cluster.running == 1
            stop = asyncio.create_task(cluster.shutdown(timeout=10))
            for a in addrs:  # CANT_DO on every server, the running job goes on

                async def gone(a: str = a) -> bool:
                    return await workers_of(a, "slow") == 0

                await eventually(gone)
            assert not stop.done()
            finish.set()
            assert await asyncio.wait_for(run, 10) == b"finished"
            await asyncio.wait_for(stop, 10)


async def test_server_down_at_start_is_retried() -> None:
    tmp = tempfile.mkdtemp(prefix="pf-wc-")
    late_addr = f"unix://{tmp}/late.sock"
    try:
        async with running_server(unix=False) as s1:
            cluster = WorkerCluster([s1.addresses[0], late_addr], reconnect_delay=0.05)

            @cluster.func("f")
            async def f(job: WorkerJob) -> bytes:
                return b"ok:" + job.name_bytes

            await cluster.start(1)  # the second server is not there yet
            try:
                assert await workers_of(s1.addresses[0], "f") == 1
                from periodic_fast.server.app import Server

                late = Server([late_addr])
                await late.start()
                try:

                    async def registered() -> bool:
                        return await workers_of(late_addr, "f") == 1

                    await eventually(registered)
                    async with Client(late_addr) as c:  # its slot was offered too
                        assert await c.run_job("f", "n") == b"ok:n"
                finally:
                    await late.stop()
            finally:
                await cluster.close()
    finally:
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))
        os.rmdir(tmp)


async def test_no_server_reachable() -> None:
    tmp = tempfile.mkdtemp(prefix="pf-wc-")
    try:
        cluster = WorkerCluster(
            [f"unix://{tmp}/a.sock", f"unix://{tmp}/b.sock"], reconnect_delay=0.05
        )
        with pytest.raises(NotConnected, match="no server reachable"):
            await cluster.start(1)
        await asyncio.sleep(0.2)  # no background retry survives
        assert all(
            w._reconnect_task is None or w._reconnect_task.done()
            for w in cluster.workers.values()
        )
    finally:
        os.rmdir(tmp)
    with pytest.raises(ValueError):
        WorkerCluster([])
    with pytest.raises(ValueError):
        WorkerCluster(["tcp://127.0.0.1:1", "tcp://127.0.0.1:1"])


async def test_work_stops_on_shutdown() -> None:
    async with running_server(unix=False) as s1, running_server(unix=False) as s2:
        cluster = WorkerCluster([s1.addresses[0], s2.addresses[0]])

        @cluster.func("w")
        async def w(job: WorkerJob) -> None:
            return None

        task = asyncio.create_task(cluster.work(2, signals=()))

        async def both() -> bool:
            return all([await workers_of(a, "w") == 1 for a in cluster.addresses])

        await eventually(both)
        assert not task.done()
        await cluster.shutdown(timeout=5)
        await asyncio.wait_for(task, 10)


@pytest.mark.interop
async def test_aio_client_cluster_with_our_worker_cluster() -> None:
    pytest.importorskip("uhashring")
    from aio_periodic import ClientCluster as AioCluster
    from aio_periodic import Transport

    async with running_server(unix=False) as s1, running_server(unix=False) as s2:
        addrs = [s1.addresses[0], s2.addresses[0]]
        cluster = WorkerCluster(addrs)
        done: list[str] = []

        @cluster.func("mixed")
        async def mixed(job: WorkerJob) -> bytes:
            done.append(job.name)
            return b"r-" + job.name_bytes

        await cluster.start(2)
        aio: Any = AioCluster(addrs)
        await aio.connect({a: Transport(a) for a in addrs})
        try:
            for i in range(12):
                assert await aio.submit_job("mixed", f"m{i}")

            async def all_done() -> bool:
                return len(done) == 12

            await eventually(all_done)
            assert sorted(done) == sorted(f"m{i}" for i in range(12))
        finally:
            aio.close()
            await cluster.close()
