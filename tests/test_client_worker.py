"""Our Client and Worker against our in-process server, mixed pairs with
aio-periodic 1.0.0, and cluster routing compared with aio-periodic's ring."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from periodic_fast.client import (
    Client,
    NotConnected,
    NoWorkerError,
    RequestTimeout,
    parse_address,
)
from periodic_fast.cluster import ClientCluster, KetamaRing
from periodic_fast.job import Job
from periodic_fast.sync import SyncClient
from periodic_fast.testing import running_server
from periodic_fast.worker import Done, Fail, SchedLater, Worker, WorkerJob

pytestmark = pytest.mark.timeout(60)


async def eventually(
    pred: Callable[[], Awaitable[bool]], timeout: float = 10.0, step: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


@pytest.fixture
async def server() -> AsyncIterator[Any]:
    async with running_server() as srv:
        yield srv


@pytest.fixture(params=["tcp", "unix"])
async def client(request: pytest.FixtureRequest, server: Any) -> AsyncIterator[Client]:
    addr = server.addresses[0 if request.param == "tcp" else 1]
    async with Client(addr) as c:
        yield c


@pytest.fixture
async def worker(server: Any) -> AsyncIterator[Worker]:
    w = Worker(server.addresses[0])
    yield w
    await w.close()


# -- addresses ----------------------------------------------------------------


def test_parse_address(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_address("tcp://127.0.0.1:5000") == ("tcp", "127.0.0.1", 5000)
    assert parse_address("localhost:5000") == ("tcp", "localhost", 5000)
    assert parse_address("tcp://[::1]:7") == ("tcp", "::1", 7)
    assert parse_address("unix:///tmp/x.sock") == ("unix", "/tmp/x.sock", 0)
    assert parse_address("/tmp/x.sock") == ("unix", "/tmp/x.sock", 0)
    for bad in ("tcp://host", "http://x:1", "tcp://h:99999"):
        with pytest.raises(ValueError):
            parse_address(bad)
    monkeypatch.setenv("PERIODIC_PORT", "tcp://127.0.0.1:1234")
    assert Client().address == "tcp://127.0.0.1:1234"
    monkeypatch.setenv("PERIODIC_PORT", "")
    assert Client().address == "unix:///tmp/periodic.sock"
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", name="x")


# -- client methods ---------------------------------------------------------------


async def test_client_methods(client: Client) -> None:
    assert await client.ping()
    assert await client.submit_job("f", "a", b"w", timeout=5)
    assert await client.submit_job(b"f", b"b", "text", sched_at=int(time.time()) + 100)
    st = await client.status()
    assert st["f"].jobs == 2 and st["f"].workers == 0
    jobs = sorted(await client.dump())
    assert [j.name for j in jobs] == [b"a", b"b"]
    assert jobs[0].workload == b"w" and jobs[0].timeout == 5
    raw = await client.dump_raw()
    assert await client.remove_job("f", "a")
    assert len(await client.dump()) == 1
    assert await client.load(raw)
    assert len(await client.dump()) == 2
    assert await client.load([Job(b"g", b"x")])
    assert "g" in await client.status()
    assert await client.config_get("timeout") == 600
    assert await client.config_set("timeout", 700)
    assert await client.config_get("timeout") == 700
    assert await client.config_get("no-such-key") == 0
    assert await client.drop_func("f")
    assert "f" not in await client.status()
    with pytest.raises(NoWorkerError):
        await client.run_job("f", "x")
    with pytest.raises(NoWorkerError):
        async for _ in client.recv_job_data("f", "x"):
            pass


async def test_submit_many_and_concurrent_submits(client: Client) -> None:
    n = await client.submit_many(
        [Job(b"bulk", str(i).encode()) for i in range(5000)]
        + [("bulk", f"t{i}", b"w") for i in range(100)],
        window=1000,
    )
    assert n == 5100
    res = await asyncio.gather(*(client.submit_job("c", str(i)) for i in range(500)))
    assert all(res)
    st = await client.status()
    assert st["bulk"].jobs == 5100 and st["c"].jobs == 500


async def test_not_connected_and_timeout() -> None:
    c = Client("tcp://127.0.0.1:1", reconnect=False)
    with pytest.raises(NotConnected):
        await c.ping()
    await c.close()
    # a server that accepts but never answers
    writers: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)

    srv = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    async with Client(f"tcp://127.0.0.1:{port}", timeout=0.3) as c:
        with pytest.raises(RequestTimeout):
            await c.ping()
        assert not c._waiters and not c._deadlines
        # one timer serves requests with different timeouts, in any order: each
        # fails at its own deadline (give or take the loop's timer slack)
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        async def timed(coro: Awaitable[Any]) -> float:
            with pytest.raises(RequestTimeout, match="within"):
                await coro
            return loop.time() - t0

        late, early, mid = await asyncio.gather(
            timed(c.ping(timeout=0.9)),
            timed(c.ping(timeout=0.2)),
            timed(c.submit_job("f", "n")),  # the client's default, 0.3
        )
        assert 0.19 <= early < 0.6 and 0.29 <= mid < 0.7 and 0.89 <= late < 1.5
        assert not c._waiters and not c._deadlines
        # a cancelled request leaves nothing behind
        task = asyncio.create_task(c.submit_job("f", "n"))
        await asyncio.sleep(0.05)
        assert len(c._waiters) == 1 and len(c._deadlines) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not c._waiters and not c._deadlines
    for w in writers:
        w.close()
        await w.wait_closed()
    srv.close()
    await srv.wait_closed()


async def test_shutdown_stops_the_server() -> None:
    from periodic_fast.testing import ServerProcess

    with ServerProcess(["--loop", "asyncio"]) as proc:
        async with Client(proc.address) as c:
            await c.shutdown()
        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, proc.wait, 10.0) == 0


async def test_client_reconnects(server: Any) -> None:
    async with Client(server.addresses[0], reconnect_delay=0.05) as c:
        assert await c.ping()
        assert c._proto is not None and c._proto.transport is not None
        c._proto.transport.abort()  # simulate a dropped connection
        await asyncio.sleep(0)
        await c.wait_connected(5)
        assert await c.ping()


# -- worker -----------------------------------------------------------------------


async def test_worker_outcomes(server: Any, worker: Worker) -> None:
    ran: list[str] = []

    @worker.func("echo")
    async def echo(job: WorkerJob) -> bytes:
        return job.workload

    @worker.func("json")
    async def as_json(job: WorkerJob) -> Any:
        return {"n": job.workload_json["n"] + 1}

    @worker.func("plain")
    def plain(job: WorkerJob) -> str:  # runs in the thread pool
        time.sleep(0.01)
        return "plain:" + job.name

    @worker.func("boom")
    async def boom(job: WorkerJob) -> None:
        raise RuntimeError("boom")

    @worker.func("explicit")
    async def explicit(job: WorkerJob) -> bytes:
        await job.done(b"first")
        return b"ignored"

    @worker.func("again")
    async def again(job: WorkerJob) -> SchedLater | Done:
        ran.append(job.name)
        if job.count < 2:
            return SchedLater(0, 1)
        return Done(b"")

    @worker.func("nope")
    async def nope(job: WorkerJob) -> Fail:
        return Fail()

    await worker.start(4)
    async with Client(server.addresses[0]) as c:
        assert await c.run_job("echo", "a", b"hi") == b"hi"
        assert await c.run_job("json", "b", b'{"n": 1}') == b'{"n": 2}'
        assert await c.run_job("plain", "c") == b"plain:c"
        assert await c.run_job("boom", "d") == b"failed"
        assert await c.run_job("nope", "e") == b"failed"
        assert await c.run_job("explicit", "f") == b"first"
        res = await asyncio.gather(
            *(c.run_job("echo", str(i), b"x") for i in range(200))
        )
        assert res == [b"x"] * 200
        assert await c.submit_job("again", "r")

        async def three() -> bool:
            return ran.count("r") >= 3

        await eventually(three)
        assert sorted(worker.funcs) == sorted(
            ["echo", "json", "plain", "boom", "explicit", "again", "nope"]
        )


async def test_streaming(server: Any, worker: Worker) -> None:
    release = asyncio.Event()

    async def stream(job: WorkerJob) -> bytes:
        for i in range(3):
            await job.data(f"chunk{i}")
        await release.wait()
        return b"end"

    assert await worker.add_func("stream", stream)
    await worker.start(2)
    async with Client(server.addresses[0]) as c:
        chunks: list[bytes] = []
        release.set()
        assert await c.run_job("stream", "a", stream=chunks.append) == b"end"
        assert chunks == [b"chunk0", b"chunk1", b"chunk2"]
        release.clear()
        got: list[bytes] = []

        async def listen() -> None:
            async for chunk in c.recv_job_data("stream", "b", timeout=10):
                got.append(chunk)

        task = asyncio.create_task(listen())
        await asyncio.sleep(0.1)  # let RECV_DATA register first
        assert await c.submit_job("stream", "b")

        async def have3() -> bool:
            return len(got) == 3

        await eventually(have3)
        release.set()
        await asyncio.wait_for(task, 10)


async def test_concurrency_limit(server: Any, worker: Worker) -> None:
    running = 0
    peak = 0

    @worker.func("slow")
    async def slow(job: WorkerJob) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.1)
        running -= 1

    await worker.start(3)
    async with Client(server.addresses[0]) as c:
        await asyncio.gather(*(c.run_job("slow", str(i)) for i in range(12)))
    assert peak == 3


async def test_locks(server: Any, worker: Worker) -> None:
    inside = 0
    peak = 0
    done: list[str] = []

    @worker.func("locked")
    async def locked(job: WorkerJob) -> None:
        async def task() -> None:
            nonlocal inside, peak
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.1)
            inside -= 1
            done.append(job.name)

        await job.with_lock("L", 1, task)

    await worker.start(3)
    async with Client(server.addresses[0]) as c:
        for i in range(3):
            assert await c.submit_job("locked", str(i))

        async def all_done() -> bool:
            return len(done) == 3

        await eventually(all_done, timeout=30)
    assert peak == 1


async def test_broadcast(server: Any) -> None:
    got: list[int] = []
    workers = [Worker(server.addresses[0]) for _ in range(2)]
    for i, w in enumerate(workers):

        async def handler(job: WorkerJob, i: int = i) -> None:
            got.append(i)

        await w.broadcast("bc", handler)
        await w.start(1)
    try:
        async with Client(server.addresses[0]) as c:

            async def two_workers() -> bool:
                return (await c.status())["bc"].workers == 2

            await eventually(two_workers)
            assert await c.submit_job("bc", "x")

            async def both() -> bool:
                return sorted(got) == [0, 1]

            await eventually(both)
    finally:
        for w in workers:
            await w.close()


async def test_graceful_drain(server: Any) -> None:
    w = Worker(server.addresses[0])
    started = asyncio.Event()
    finish = asyncio.Event()

    @w.func("drain")
    async def handler(job: WorkerJob) -> bytes:
        started.set()
        await finish.wait()
        return b"finished"

    await w.start(2)
    async with Client(server.addresses[0]) as c:
        run = asyncio.create_task(c.run_job("drain", "a", timeout=20))
        await asyncio.wait_for(started.wait(), 10)
        stop = asyncio.create_task(w.shutdown(timeout=10))

        async def unregistered() -> bool:
            return (await c.status())["drain"].workers == 0

        await eventually(unregistered)
        assert not stop.done()
        finish.set()
        assert await run == b"finished"
        await asyncio.wait_for(stop, 10)
        with pytest.raises(NoWorkerError):
            await c.run_job("drain", "b")


async def test_work_drains_on_a_signal(server: Any) -> None:
    """``work()`` turns a signal into the graceful drain: the running job
    finishes, then ``work()`` returns (SIGUSR1 here; SIGTERM/SIGINT by
    default, which would stop pytest if the handler were missing)."""
    w = Worker(server.addresses[0])
    started = asyncio.Event()
    finish = asyncio.Event()

    @w.func("sig")
    async def handler(job: WorkerJob) -> bytes:
        started.set()
        await finish.wait()
        return b"finished"

    serving = asyncio.create_task(w.work(1, signals=("SIGUSR1",)))
    try:
        async with Client(server.addresses[0]) as c:

            async def registered() -> bool:
                st = await c.status()
                return "sig" in st and st["sig"].workers == 1

            await eventually(registered)
            run = asyncio.create_task(c.run_job("sig", "a", timeout=20))
            await asyncio.wait_for(started.wait(), 10)
            os.kill(os.getpid(), signal.SIGUSR1)

            async def unregistered() -> bool:
                return (await c.status())["sig"].workers == 0

            await eventually(unregistered)
            assert not serving.done()  # draining: the job still runs
            finish.set()
            assert await run == b"finished"
            await asyncio.wait_for(serving, 10)
    finally:
        finish.set()
        await w.close()
        await asyncio.gather(serving, return_exceptions=True)


async def test_drain_hands_jobs_to_another_worker(server: Any) -> None:
    """A job assigned to a draining worker is refused (JOB_UNASSIGNED) and
    reaches a live worker quickly."""
    a = Worker(server.addresses[0])
    b = Worker(server.addresses[0])

    async def ok(job: WorkerJob) -> bytes:
        return b"b"

    await a.add_func("x", ok)
    await a.start(1)
    a._draining = True  # refuse, but stay registered (the race being tested)
    await b.add_func("x", ok)
    await b.start(1)
    try:
        async with Client(server.addresses[0]) as c:
            t0 = time.monotonic()
            for i in range(4):
                assert await c.run_job("x", str(i)) == b"b"
            assert time.monotonic() - t0 < 5
    finally:
        await a.close()
        await b.close()


async def test_worker_reconnects(server: Any) -> None:
    w = Worker(server.addresses[0], reconnect_delay=0.05)

    @w.func("rc")
    async def rc(job: WorkerJob) -> bytes:
        return b"ok"

    await w.start(2)
    try:
        async with Client(server.addresses[0]) as c:
            assert await c.run_job("rc", "1") == b"ok"
            assert w._proto is not None and w._proto.transport is not None
            w._proto.transport.abort()
            await asyncio.sleep(0)
            await w.wait_connected(5)

            async def registered() -> bool:
                return (await c.status())["rc"].workers == 1

            await eventually(registered)
            assert await c.run_job("rc", "2") == b"ok"
    finally:
        await w.close()


async def test_worker_survives_server_restart() -> None:
    from periodic_fast.testing import ServerProcess

    with ServerProcess(["--loop", "asyncio"]) as proc:
        w = Worker(proc.address, reconnect_delay=0.1)

        @w.func("rs")
        async def rs(job: WorkerJob) -> bytes:
            return b"ok"

        await w.start(1)
        try:
            async with Client(proc.address, reconnect_delay=0.1) as c:
                assert await c.run_job("rs", "1") == b"ok"
                await asyncio.get_running_loop().run_in_executor(None, proc.restart)
                await w.wait_connected(10)
                await c.wait_connected(10)

                async def back() -> bool:
                    try:
                        return (await c.status())["rs"].workers == 1
                    except Exception:
                        return False

                await eventually(back)
                assert await c.run_job("rs", "2") == b"ok"
        finally:
            await w.close()


# -- sync wrapper ------------------------------------------------------------------


async def test_sync_client(server: Any) -> None:
    def work() -> None:
        with SyncClient(server.addresses[0]) as c:
            assert c.ping()
            assert c.submit_job("s", "1")
            assert c.submit_many([("s", str(i)) for i in range(10)]) == 10
            assert c.status()["s"].jobs == 10
            assert len(c.dump()) == 10
            assert c.remove_job("s", "1")
            assert c.config_get("timeout") == 600

    await asyncio.get_running_loop().run_in_executor(None, work)


# -- cluster ----------------------------------------------------------------------

# Routing computed with uhashring 2.5 (the ring aio-periodic's ClientCluster
# uses) for these three nodes; KetamaRing must agree without uhashring.
NODES = ["tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001", "unix:///tmp/x.sock"]
GOLDEN = {
    "job-0": 0, "job-1": 2, "job-2": 1, "job-3": 2, "job-4": 0, "job-5": 2,
    "job-6": 0, "job-7": 0, "job-8": 0, "job-9": 1, "job-10": 0, "job-11": 0,
}  # fmt: skip


def test_ketama_matches_golden() -> None:
    ring = KetamaRing(NODES)
    assert {k: NODES.index(ring.get_node(k)) for k in GOLDEN} == GOLDEN
    assert ring.get_node(b"job-1") == ring.get_node("job-1")


def test_ketama_matches_uhashring() -> None:
    uhashring = pytest.importorskip("uhashring")
    hr = uhashring.HashRing(
        nodes={n: {"hostname": n, "instance": n} for n in NODES}, hash_fn="ketama"
    )
    ring = KetamaRing(NODES)
    for i in range(3000):
        assert hr[f"name-{i}"] == ring.get_node(f"name-{i}")


async def test_cluster_routes_like_aio_periodic() -> None:
    pytest.importorskip("uhashring")
    from aio_periodic import ClientCluster as AioCluster
    from aio_periodic import Transport

    async with running_server(unix=False) as s1, running_server(unix=False) as s2:
        addrs = [s1.addresses[0], s2.addresses[0]]
        names = [f"n{i}" for i in range(40)]
        async with ClientCluster(addrs) as ours:
            for n in names:
                assert await ours.submit_job("ours", n)
            st = await ours.status()
            assert st["ours"].jobs == 40
        aio = AioCluster(addrs)
        await aio.connect({a: Transport(a) for a in addrs})
        try:
            for n in names:
                assert await aio.submit_job("aio", n)
        finally:
            aio.close()
        for srv in (s1, s2):
            async with Client(srv.addresses[0]) as c:
                jobs = await c.dump()
            mine = sorted(j.name for j in jobs if j.func == b"ours")
            theirs = sorted(j.name for j in jobs if j.func == b"aio")
            assert mine == theirs
            assert 0 < len(mine) < 40


# -- mixed pairs with aio-periodic 1.0.0 ----------------------------------------


@pytest.mark.interop
async def test_our_client_with_aio_worker(server: Any) -> None:
    from aio_periodic import Transport
    from aio_periodic import Worker as AioWorker

    w = AioWorker()
    await w.connect(Transport(server.addresses[0]))

    async def echo(job: Any) -> bytes:
        return bytes(job.workload) + b"!"

    await w.add_func("aecho", echo)
    task = asyncio.create_task(w.work(2))
    try:
        async with Client(server.addresses[0]) as c:

            async def ready() -> bool:
                st = await c.status()
                return "aecho" in st and st["aecho"].workers == 1

            await eventually(ready)
            assert await c.run_job("aecho", "1", b"hi", timeout=10) == b"hi!"
            assert await c.submit_job("aecho", "2", b"x")
    finally:
        task.cancel()
        w.close()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.interop
async def test_aio_client_with_our_worker(server: Any, worker: Worker) -> None:
    from aio_periodic import Client as AioClient
    from aio_periodic import Transport

    @worker.func("oecho")
    async def echo(job: WorkerJob) -> bytes:
        await job.data(b"part")
        return job.workload + b"?"

    await worker.start(2)
    c = AioClient()
    await c.connect(Transport(server.addresses[0]))
    try:
        assert await c.ping()
        assert await c.run_job("oecho", "1", b"hi") == b"hi?"
        assert await c.submit_job("oecho", "2", b"x")
        st = await c.status()
        assert st["oecho"]["worker_count"] == 1
    finally:
        c.close()


def test_load_parts_cut_by_count_and_bytes() -> None:
    from periodic_fast.client import _load_parts

    small = [Job(b"f", b"n%d" % i) for i in range(25)]
    assert [len(p) for p in _load_parts(small, 10, 10**9)] == [10, 10, 5]
    big = [Job(b"f", b"n%d" % i, b"x" * 1000) for i in range(10)]
    parts = _load_parts(big, 100, 3000)  # ~1070 B each: two per frame
    assert [len(p) for p in parts] == [2] * 5
    assert [j for p in parts for j in p] == big
    huge = [Job(b"f", b"a", b"x" * 5000), Job(b"f", b"b")]
    assert [len(p) for p in _load_parts(huge, 100, 3000)] == [1, 1]
    assert _load_parts([], 10, 100) == [[]]  # an empty LOAD still goes out
    with pytest.raises(ValueError):
        _load_parts(small, 0, 100)
