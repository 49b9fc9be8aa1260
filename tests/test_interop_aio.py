"""The real aio-periodic 1.0.0 Client and Worker against our server.

Every test runs over TCP and over a unix socket, on the stock asyncio loop and
on uvloop (each on a fresh loop, see :func:`run_on`).  The server is the in-process
one from :func:`periodic_fast.testing.running_server`, except for the restart
test, which needs a process it can kill (:class:`~periodic_fast.testing.ServerProcess`).

Timing facts of aio-periodic 1.0.0 that shape these tests (see protocol.md 6.3):

* ``Worker.connect()`` registers its funcs and then sleeps 1 s;
* ``Worker.work(size)`` sends one GRAB_JOB per second at start-up (so slot
  ``k`` appears after ``k - 1`` s) and re-sends an idle slot's GRAB_JOB every
  ~6 s; after a job it re-grabs at once;
* a lost connection is retried every 1 s.

So nothing here sleeps for a fixed time to "let things happen": waits are
polling loops with a deadline (:func:`wait_until`).

Clean shutdown: aio's ``close()`` cancels its reader task, whose ``finally``
schedules a reconnect loop.  :func:`close_aio` disables that reconnect first,
then awaits the cancelled tasks, so no task or socket outlives a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aio_periodic import Client, Transport, Worker
from aio_periodic.job import Job as AioJob
from aio_periodic.rsp import DoneResponse, FailResponse, SchedLaterResponse

from periodic_fast.server.app import new_event_loop
from periodic_fast.testing import ServerProcess, running_server

pytestmark = [pytest.mark.interop, pytest.mark.timeout(60)]

TRANSPORTS = ["tcp", "unix"]
HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop")
    ),
]


# -- helpers -------------------------------------------------------------------


async def wait_until(
    pred: Callable[[], bool | Awaitable[bool]],
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> None:
    """Poll ``pred`` until it is true; fail the test after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        res = pred()
        if not isinstance(res, bool):
            res = await res
        if res:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def close_aio(c: Any) -> None:
    """Close an aio Client/Worker without letting it reconnect, and reap its
    tasks (reader loop, health check, worker pool)."""
    c.start_connect = lambda: None  # the reader's `finally` would reconnect
    pool = getattr(c, "_pool", None)
    if pool is not None:  # jobs still queued or running in the worker's pool
        await _reap(list(pool._waiting.values()) + list(pool._active.values()))
    procs: list[asyncio.Future[Any]] = list(getattr(c, "_processes", []))
    writer = getattr(c, "_writer", None)
    if getattr(c, "_initialized", False):
        c.close()
    await _reap(procs)
    if writer is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


async def _reap(tasks: list[asyncio.Future[Any]]) -> None:
    """Cancel and await ``tasks``, bounded (aio's job task re-grabs in its
    ``finally``, which may wait for a connection: cancel again)."""
    for _ in range(5):
        pending = [t for t in tasks if not t.done()]
        if not pending:
            break
        for t in pending:
            t.cancel()
        await asyncio.wait(pending, timeout=2)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()  # retrieved: no "never retrieved" log at GC


@contextlib.asynccontextmanager
async def aio_client(address: str) -> AsyncIterator[Client]:
    c = Client()
    try:
        await asyncio.wait_for(c.connect(Transport(address)), 10)
        yield c
    finally:
        await close_aio(c)


@contextlib.asynccontextmanager
async def aio_worker(
    address: str,
    funcs: dict[str, Callable[[AioJob], Awaitable[Any]]],
    *,
    size: int = 1,
    broadcast: bool = False,
    locker: Callable[[AioJob], tuple[str, int]] | None = None,
) -> AsyncIterator[Worker]:
    """A connected aio Worker running ``work(size)`` in a task."""
    w = Worker()
    for name, task in funcs.items():
        w.func(name, broadcast=broadcast, locker=locker)(task)
    work: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(w.connect(Transport(address)), 10)
        work = asyncio.create_task(w.work(size))
        yield w
    finally:
        if work is not None:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        await close_aio(w)


async def stat_of(client: Client, func: str) -> dict[str, Any] | None:
    st: dict[str, dict[str, Any]] = await client.status()
    return st.get(func)


async def no_jobs_left(client: Client, func: str) -> bool:
    s = await stat_of(client, func)
    return s is not None and s["job_count"] == 0 and s["processing"] == 0


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=TRANSPORTS)
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run_on(kind: str, main: Callable[[], Awaitable[None]], timeout: float = 50) -> None:
    """Run ``main()`` on a fresh loop of ``kind``, bounded by ``timeout``
    (pytest-timeout cannot interrupt callbacks running inside a loop)."""
    loop = new_event_loop(kind)  # type: ignore[arg-type]
    try:
        loop.run_until_complete(asyncio.wait_for(main(), timeout))
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()


def with_server(
    kind: str, transport: str, check: Callable[[str], Awaitable[None]]
) -> None:
    """``check(address)`` against an in-process server on ``transport``."""

    async def main() -> None:
        async with running_server(
            tcp=transport == "tcp", unix=transport == "unix"
        ) as srv:
            (addr,) = srv.addresses
            assert addr.startswith(f"{transport}://")
            await check(addr)

    run_on(kind, main)


# -- tests -----------------------------------------------------------------------


async def check_submit_then_done(address: str) -> None:
    seen: list[tuple[str, bytes]] = []

    async def echo(job: AioJob) -> DoneResponse:
        seen.append((job.name, job.workload))
        return DoneResponse(b"ok")

    async with aio_client(address) as client, aio_worker(address, {"echo": echo}):
        assert await client.ping() is True
        assert await client.submit_job("echo", "a1", b"hi") is True
        await wait_until(lambda: len(seen) >= 1, 10, "the job to run")
        await wait_until(lambda: no_jobs_left(client, "echo"), 5, "WORK_DONE")
        assert seen == [("a1", b"hi")]


async def check_sched_later_repeats_with_count(address: str) -> None:
    runs: list[tuple[int, float]] = []

    async def repeat(job: AioJob) -> Any:
        runs.append((job.payload.count, time.time()))
        if len(runs) < 3:
            return SchedLaterResponse(1, 1)  # again in 1 s, count + 1
        return DoneResponse()

    async with (
        aio_client(address) as client,
        aio_worker(address, {"repeat": repeat}),
    ):
        assert await client.submit_job("repeat", "r1", b"w") is True
        await wait_until(lambda: len(runs) >= 3, 15, "three runs")
        await wait_until(lambda: no_jobs_left(client, "repeat"), 5, "WORK_DONE")
        assert [c for c, _ in runs] == [0, 1, 2]
        # delay 1 s: the next run is not before the next wall-clock second
        for (_, t0), (_, t1) in zip(runs, runs[1:], strict=False):
            assert int(t1) >= int(t0) + 1, runs
            assert t1 - t0 < 4, runs


async def check_fail_then_retry(address: str) -> None:
    runs: list[tuple[int, float]] = []

    async def flaky(job: AioJob) -> Any:
        runs.append((job.payload.count, time.time()))
        if len(runs) == 1:
            return FailResponse()
        return DoneResponse()

    async with (
        aio_client(address) as client,
        aio_worker(address, {"flaky": flaky}),
    ):
        assert await client.submit_job("flaky", "f1", b"") is True
        await wait_until(lambda: len(runs) >= 2, 15, "the retry")
        await wait_until(lambda: no_jobs_left(client, "flaky"), 5, "WORK_DONE")
        assert len(runs) == 2
        (c0, t0), (c1, t1) = runs
        assert c0 == c1 == 0  # WORK_FAIL keeps the count
        # retried "1 s later" (sched_at = now + 1, whole seconds)
        assert int(t1) >= int(t0) + 1, runs
        assert t1 - t0 < 4, runs


async def check_run_job_returns_worker_data(address: str) -> None:
    async def upper(job: AioJob) -> bytes:
        return b"result:" + job.workload.upper()

    async with (
        aio_client(address) as client,
        aio_worker(address, {"upper": upper}),
    ):
        res = await client.run_job("upper", "u1", b"abc", timeout=10)
        assert res == b"result:ABC"
        res = await client.run_job("upper", "u2", b"", timeout=10)
        assert res == b"result:"
        assert await no_jobs_left(client, "upper")


async def check_run_job_without_worker_raises(address: str) -> None:
    async with aio_client(address) as client:
        with pytest.raises(Exception, match="no worker"):
            await client.run_job("nobody", "n1", b"x", timeout=5)
        st = await stat_of(client, "nobody")  # nothing was stored
        assert st is None or st["job_count"] == 0, st


async def check_remove_job(address: str) -> None:
    ran: list[str] = []

    async def task(job: AioJob) -> bytes:
        ran.append(job.name)
        return b""

    async with aio_client(address) as client, aio_worker(address, {"rm": task}):
        at = int(time.time()) + 2
        # "a-gone" sorts before "z-sentinel": had it survived, it would run first
        assert await client.submit_job("rm", "a-gone", b"", sched_at=at) is True
        assert await client.submit_job("rm", "z-sentinel", b"", sched_at=at) is True
        st = await stat_of(client, "rm")
        assert st is not None and st["job_count"] == 2
        assert await client.remove_job("rm", "a-gone") is True
        assert await client.remove_job("rm", "never-existed") is True
        st = await stat_of(client, "rm")
        assert st is not None and st["job_count"] == 1
        await wait_until(lambda: "z-sentinel" in ran, 10, "the sentinel job")
        await wait_until(lambda: no_jobs_left(client, "rm"), 5, "WORK_DONE")
        assert ran == ["z-sentinel"]


async def check_drop_func(address: str) -> None:
    async def task(job: AioJob) -> bytes:
        return b""

    async with aio_client(address) as client:
        far = int(time.time()) + 3600
        assert await client.submit_job("dropme", "j1", b"", sched_at=far) is True
        assert await client.submit_job("dropme", "j2", b"") is True
        st = await stat_of(client, "dropme")
        assert st is not None
        assert (st["worker_count"], st["job_count"]) == (0, 2)
        assert await client.drop_func("dropme") is True
        assert await stat_of(client, "dropme") is None

        # a func with a registered worker is not dropped
        async with aio_worker(address, {"kept": task}):
            assert await client.submit_job("kept", "k1", b"", sched_at=far) is True
            assert await client.drop_func("kept") is True
            st = await stat_of(client, "kept")
            assert st is not None
            assert (st["worker_count"], st["job_count"]) == (1, 1)


async def check_status_as_aio_parses_it(address: str) -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(job: AioJob) -> bytes:
        started.set()
        await asyncio.wait_for(release.wait(), 20)
        return b""

    async with aio_client(address) as client, aio_worker(address, {"busy": slow}):
        now = int(time.time())
        t1, t2 = now + 1000, now + 2000
        assert await client.submit_job("busy", "later-2", b"", sched_at=t2) is True
        assert await client.submit_job("busy", "later-1", b"", sched_at=t1) is True
        assert await client.submit_job("idle", "i1", b"", sched_at=t1) is True
        assert await client.submit_job("busy", "now", b"") is True
        await asyncio.wait_for(started.wait(), 10)

        st = await client.status()
        assert set(st) >= {"busy", "idle"}
        assert st["busy"] == {
            "func_name": "busy",
            "worker_count": 1,
            "job_count": 3,
            "processing": 1,
            "locked": 0,
            "sched_at": t1,
        }
        assert st["idle"] == {
            "func_name": "idle",
            "worker_count": 0,
            "job_count": 1,
            "processing": 0,
            "locked": 0,
            "sched_at": t1,
        }
        release.set()

        async def running_done() -> bool:
            s = await stat_of(client, "busy")
            return s is not None and s["processing"] == 0 and s["job_count"] == 2

        await wait_until(running_done, 5, "the running job to finish")


async def check_lock_limits_concurrency(address: str) -> None:
    active = 0
    max_active = 0
    done: list[tuple[int, str]] = []

    def make(wid: int) -> Callable[[AioJob], Awaitable[bytes]]:
        async def locked(job: AioJob) -> bytes:
            nonlocal active, max_active
            active += 1
            max_active = max(max_active, active)
            try:
                await asyncio.sleep(0.3)
            finally:
                active -= 1
            done.append((wid, job.name))
            return b""

        return locked

    def locker(job: AioJob) -> tuple[str, int]:
        return ("L", 1)

    async with (
        aio_client(address) as client,
        aio_worker(address, {"locked": make(1)}, size=2, locker=locker),
        aio_worker(address, {"locked": make(2)}, size=2, locker=locker),
    ):
        names = [f"j{i}" for i in range(4)]
        for n in names:
            assert await client.submit_job("locked", n, b"") is True
        await wait_until(lambda: len(done) >= 4, 30, "four locked jobs")
        await wait_until(lambda: no_jobs_left(client, "locked"), 5, "WORK_DONE")
        assert sorted(n for _, n in done) == names
        assert max_active == 1, done


async def check_broadcast_reaches_every_worker(address: str) -> None:
    got: list[tuple[int, str]] = []

    def make(wid: int) -> Callable[[AioJob], Awaitable[bytes]]:
        async def bc(job: AioJob) -> bytes:
            got.append((wid, job.name))
            return b""

        return bc

    async with (
        aio_client(address) as client,
        aio_worker(address, {"bc": make(1)}, broadcast=True),
        aio_worker(address, {"bc": make(2)}, broadcast=True),
    ):
        st = await stat_of(client, "bc")
        assert st is not None and st["worker_count"] == 2
        # due in 2 s: by then both workers hold their grab slot
        at = int(time.time()) + 2
        assert await client.submit_job("bc", "b1", b"", sched_at=at) is True
        await wait_until(lambda: len(got) >= 2, 10, "both workers to run it")
        await wait_until(lambda: no_jobs_left(client, "bc"), 5, "WORK_DONE")
        assert sorted(got) == [(1, "b1"), (2, "b1")]


# -- restart ---------------------------------------------------------------------


@pytest.fixture
def server_process(transport: str) -> Any:
    tmpdir = tempfile.mkdtemp(prefix="pf-rs-")
    address = f"unix://{tmpdir}/p.sock" if transport == "unix" else None
    proc = ServerProcess(["-p", ":memory:"], address=address)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)


async def check_worker_survives_server_restart(proc: ServerProcess, how: str) -> None:
    address = proc.address
    ran: list[str] = []

    async def task(job: AioJob) -> bytes:
        ran.append(job.name)
        return b""

    loop = asyncio.get_running_loop()
    async with aio_worker(address, {"survive": task}) as worker:
        async with aio_client(address) as client:
            assert await client.submit_job("survive", "before", b"") is True
            await wait_until(lambda: ran == ["before"], 10, "the first job")

        # stop or crash the server, then start a fresh one (memory store: empty)
        # on the same address.
        if how == "kill":
            # SIGKILL and reap *while blocking the loop*: the worker only sees
            # the reset once the dead process's listener is gone too.  If it
            # reacts at once, its immediate reconnect can land in the dying
            # listener's backlog and be reset, and aio 1.0.0 then runs two
            # reconnect loops that keep closing each other's connection
            # (connect() raised inside on_connected leaves its reader task
            # alive, whose `finally` starts a second loop) - a client bug that
            # the reference server would trigger the same way.
            proc.kill()
        else:
            # SIGTERM: the server closes the listener first, then the
            # connections; the worker reconnects every 1 s until it is back
            await loop.run_in_executor(None, proc.stop)
        await loop.run_in_executor(None, proc.start)

        async with aio_client(address) as client:
            assert await client.submit_job("survive", "after", b"") is True

            async def registered_again() -> bool:
                s = await stat_of(client, "survive")
                return s is not None and s["worker_count"] == 1

            # reconnect every 1 s, re-register, then re-grab within ~6 s
            await wait_until(registered_again, 10, "the worker to re-register")
            await wait_until(lambda: "after" in ran, 20, "the job after restart")
            await wait_until(lambda: no_jobs_left(client, "survive"), 5, "WORK_DONE")
        assert ran == ["before", "after"]
        assert worker.connected


# -- the tests: every check on both loops and both transports ----------------


def test_submit_then_done(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_submit_then_done)


def test_sched_later_repeats_with_count(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_sched_later_repeats_with_count)


def test_fail_then_retry(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_fail_then_retry)


def test_run_job_returns_worker_data(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_run_job_returns_worker_data)


def test_run_job_without_worker_raises(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_run_job_without_worker_raises)


def test_remove_job(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_remove_job)


def test_drop_func(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_drop_func)


def test_status_as_aio_parses_it(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_status_as_aio_parses_it)


def test_lock_limits_concurrency(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_lock_limits_concurrency)


def test_broadcast_reaches_every_worker(loop_kind: str, transport: str) -> None:
    with_server(loop_kind, transport, check_broadcast_reaches_every_worker)


DURABLE_CHECKS = [
    check_submit_then_done,
    check_sched_later_repeats_with_count,
    check_fail_then_retry,
    check_run_job_returns_worker_data,
    check_remove_job,
    check_lock_limits_concurrency,
]


@pytest.mark.parametrize("check", DURABLE_CHECKS, ids=lambda c: c.__name__[6:])
def test_on_the_sqlite_store(
    loop_kind: str, check: Callable[[str], Awaitable[None]]
) -> None:
    """The same scenarios on the default durable store, where replies wait
    for commits and JOB_ASSIGN / GRAB_JOB output overtakes them: aio's
    Client and Worker must not mind the order."""

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="pf-aio-") as tmp:
            store = f"file://{tmp}/jobs.db"
            async with running_server(unix=False, store=store) as srv:
                (addr,) = srv.addresses
                await check(addr)

    run_on(loop_kind, main)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_worker_survives_server_restart(
    loop_kind: str, server_process: ServerProcess, how: str
) -> None:
    run_on(loop_kind, lambda: check_worker_survives_server_restart(server_process, how))
