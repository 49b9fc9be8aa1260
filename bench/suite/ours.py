"""The workloads on a Periodic server (ours, or any given by ``--against``).

Two load generators, both in separate processes on loopback:

* "raw": pre-encoded frames of our codec through bench/e2e.py's connection
  classes (W1, W2, and the submits of W3/W4): the server's own capacity;
* "lib": our :class:`~periodic_fast.client.Client` (``submit_many``) and
  :class:`~periodic_fast.worker.Worker` with an ``async`` handler (W1, W5):
  what an application using our library gets, comparable with arq and rq,
  which are measured through their libraries too.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from argparse import Namespace
from collections.abc import Callable, Iterator
from typing import Any

from bench import e2e
from periodic_fast.codec import encode_job, encode_request_into
from periodic_fast.constants import Command
from periodic_fast.job import Job
from periodic_fast.testing import ServerProcess

from . import harness, jobs
from .common import (
    NOT_AVAILABLE,
    OK,
    Context,
    Result,
    median,
    rss_bytes,
    settled_rss,
    status,
    wait_until,
)

SYSTEM = "periodic_fast"
SYSTEM_LIB = "periodic_fast (Client/Worker)"


# -- servers ------------------------------------------------------------------


@contextlib.contextmanager
def server(ctx: Context, store: str | None = None) -> Iterator[tuple[str, int | None]]:
    """(address, pid or None) of the server to measure: ``--against`` as
    given, else a fresh ``python -m periodic_fast -d`` subprocess."""
    if ctx.address:
        yield ctx.address, None
        return
    proc = ServerProcess(["-p", store or ctx.store, "--log", "warning"])
    proc.start()
    try:
        assert proc.pid is not None
        yield proc.address, proc.pid
    finally:
        proc.stop()


def e2e_args(ctx: Context, **over: Any) -> Namespace:
    """bench/e2e.py's knobs (its defaults) with ``over`` applied."""
    args = e2e.parse_args(["--duration", "300"])
    for k, v in over.items():
        setattr(args, k, v)
    return args


def control(address: str, command: int, payload: bytes = b"") -> tuple[int, bytes]:
    """One request on a fresh connection (bench/e2e.py's helper)."""
    return e2e.control(address, command, payload)


def func_jobs(address: str, func: bytes) -> int:
    """The ``jobs`` column of ``func`` in STATUS (0 when the func is unknown)."""
    cmd, payload = control(address, int(Command.STATUS))
    if cmd != int(Command.DATA):
        raise RuntimeError(f"STATUS answered {cmd}")
    for line in payload.decode().splitlines():
        cols = line.split(",")
        if cols[0] == func.decode() and len(cols) >= 3:
            return int(cols[2])
    return 0


def drop(address: str, func: bytes) -> None:
    """DROP_FUNC (clean up after a workload; not timed)."""
    control(address, int(Command.DROP_FUNC), bytes((len(func),)) + func)


# -- raw submitter: pre-encoded frames, pipelined -----------------------------


def raw_submit(
    address: str, func: bytes, sched_at: int, pipeline: int = 8192, batch: int = 512
) -> harness.SubmitFn:
    """A submitter for job names ``j%09d`` over a ``range`` part, every job
    due at ``sched_at``; frames are encoded before ``go``."""

    def fn(part: range, ready: Any, go: Any) -> tuple[float, float, int]:
        chunks: list[tuple[bytes, int]] = []
        buf = bytearray()
        n = 0
        for i in part:
            job = Job(func, b"j%09d" % i, b"", sched_at)
            encode_request_into(
                buf, i % 0x0FFFFFFF + 1, int(Command.SUBMIT_JOB), encode_job(job)
            )
            n += 1
            if n == batch:
                chunks.append((bytes(buf), n))
                buf.clear()
                n = 0
        if n:
            chunks.append((bytes(buf), n))
        total = len(part)

        async def main() -> tuple[float, float, int]:
            conn = await e2e.open_conn(address, lambda: e2e.SubmitConn(pipeline))
            conn.total = total
            ready.release()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            t0 = time.time()
            await conn.send_all(chunks, 600.0)
            conn.transport.close()
            if conn.faults:
                raise RuntimeError(f"submit faults: {conn.faults[:3]}")
            return t0, conn.last_ack, conn.acked

        loop = e2e.new_loop("uvloop")
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    return fn


def ranges(n: int, parts: int) -> list[range]:
    """``range(n)`` dealt into ``parts`` strided ranges."""
    return [range(i, n, parts) for i in range(max(1, parts))]


# -- library submitter and worker ---------------------------------------------


def lib_submit(address: str, func: bytes, sched_at: int | None) -> harness.SubmitFn:
    """``Client.submit_many`` of a part (list of names); ``sched_at`` None:
    the jobs are due at the time of ``go`` + 1 s rounded up (W5)."""

    def fn(names: list[str], ready: Any, go: Any) -> tuple[float, float, int]:
        from periodic_fast.client import Client

        async def main() -> tuple[float, float, int]:
            client = Client(address)
            await client.connect()
            ready.release()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            t0 = time.time()
            at = sched_at if sched_at is not None else int(t0) + 1
            items = [Job(func, n.encode(), b"", at) for n in names]
            ok = await client.submit_many(items, window=4096, timeout=120.0)
            t1 = time.time()
            await client.close()
            return t0, t1, ok

        loop = e2e.new_loop("uvloop")
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    return fn


def lib_worker(
    address: str, func: bytes, size: int, periodic: bool
) -> harness.WorkerFn:
    """A :class:`Worker` process with ``size`` grab slots.  The handler counts
    (W1) or records and answers ``SchedLater(1, 1)`` (W5)."""

    def fn(idx: int, shared: harness.Shared, path: str, ready: Any, stop: Any) -> None:
        from periodic_fast.worker import SchedLater, Worker, WorkerJob

        jobs.install(shared.counts, shared.last, idx, path)

        async def main() -> None:
            w = Worker(address)
            if periodic:

                async def tick(job: WorkerJob) -> SchedLater:
                    now = time.time()
                    jobs.record(jobs.tick_line(job.name, job.job.sched_at, now))
                    jobs.mark()
                    return SchedLater(1, 1)

                w.func(func)(tick)
            else:

                async def noop(job: WorkerJob) -> None:
                    jobs.mark()

                w.func(func)(noop)
            task = asyncio.ensure_future(w.work(size=size, signals=()))
            await w.wait_connected(30)
            await asyncio.sleep(0.3)  # CAN_DO and GRAB_JOB reached the server
            ready.release()
            while not stop.is_set():
                await asyncio.sleep(0.01)
            await asyncio.wait_for(w.shutdown(timeout=5), 10)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)

        loop = e2e.new_loop("uvloop")
        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    return fn


# -- workloads ----------------------------------------------------------------


def w1(ctx: Context) -> dict[str, Result]:
    """Immediate throughput: raw load generator (bench/e2e.py's life-cycle
    scenario) and the library pair."""
    out: dict[str, Result] = {}
    with server(ctx) as (address, _pid):
        args = e2e_args(ctx)
        n = ctx.size.w1_jobs
        e2e.run_once(args, address, "lifecycle", "w1-warm", min(n, 20_000))
        runs = []
        for i in range(ctx.size.w1_runs):
            r = e2e.run_once(args, address, "lifecycle", f"w1-{i}", n)
            if r["faults"] or r.get("timed_out") or r["done"] < n:
                raise RuntimeError(f"W1 run incomplete: {e2e.fmt(r)}")
            runs.append(r)
            ctx.log(f"W1 {SYSTEM} run {i}: {e2e.fmt(r)}")
        out[SYSTEM] = {
            "status": OK,
            "jobs": n,
            "runs": len(runs),
            "submit_per_s": median([r["submits_per_s"] for r in runs]),
            "complete_per_s": median([r["lifecycles_per_s"] for r in runs]),
            "complete_per_s_all": [r["lifecycles_per_s"] for r in runs],
            "config": (
                f"{args.submitters} submitter procs (pipeline {args.pipeline}), "
                f"{args.workers} worker conns x {args.slots} slots in "
                f"{args.worker_procs} proc; median of {len(runs)} runs"
            ),
        }
        out[SYSTEM_LIB] = w1_lib(ctx, address)
    return out


def w1_lib(ctx: Context, address: str) -> Result:
    """W1 through Client.submit_many and Worker(size=32) processes."""
    n = ctx.size.w1_lib_jobs
    func = b"w1-lib"
    size = 32
    names = [f"j{i:09d}" for i in range(n)]
    r = harness.run(
        worker=lib_worker(address, func, size, periodic=False),
        nworkers=ctx.workers,
        submit=lib_submit(address, func, 0),
        parts=harness.split(names, ctx.submitters),
        record_prefix=ctx.path("w1-lib"),
        expect=n,
        timeout=300,
    )
    with contextlib.suppress(Exception):
        drop(address, func)
    if r.faults or r.timed_out:
        raise RuntimeError(f"W1 lib: faults {r.faults} timed_out {r.timed_out}")
    ctx.log(f"W1 {SYSTEM_LIB}: {r.completion_rate:,.0f} jobs/s")
    return {
        "status": OK,
        "jobs": n,
        "runs": 1,
        "submit_per_s": r.submit_rate,
        "complete_per_s": r.completion_rate,
        "config": (
            f"{ctx.submitters} submitter procs (submit_many window 4096), "
            f"{ctx.workers} Worker procs x size {size}"
        ),
    }


def w2(ctx: Context) -> dict[str, Result]:
    """Delayed-dispatch accuracy (bench/e2e.py's lateness scenario)."""
    s = ctx.size
    with server(ctx) as (address, _pid):
        args = e2e_args(ctx, late_jobs=s.w2_jobs, late_spread=s.w2_spread)
        runs = []
        for i in range(s.w2_runs):
            r = e2e.run_once(args, address, "lateness", f"w2-{i}", s.w2_jobs)
            if r["faults"] or r.get("timed_out") or r["done"] < s.w2_jobs:
                raise RuntimeError(f"W2 run incomplete: {e2e.fmt(r)}")
            runs.append(r)
            ctx.log(f"W2 {SYSTEM} run {i}: {e2e.fmt(r)}")
    lat = [r["lateness_ms"] for r in runs]
    return {
        SYSTEM: {
            "status": OK,
            "jobs": s.w2_jobs,
            "spread_s": s.w2_spread,
            "runs": len(runs),
            "lateness_ms_p50": median([x["p50"] for x in lat]),
            "lateness_ms_p99": median([x["p99"] for x in lat]),
            "lateness_ms_max": median([x["max"] for x in lat]),
            "early": sum(r["early"] for r in runs),
            "config": (
                f"due times on {s.w2_spread} whole seconds >= {args.late_lead} s "
                f"ahead; {args.workers} worker conns x {args.slots} slots; "
                f"lateness at JOB_ASSIGN receipt; median of {len(runs)} runs"
            ),
        }
    }


def submit_scheduled(
    ctx: Context, address: str, func: bytes, n: int, ahead: float = 3600.0
) -> harness.Run:
    """Submit ``n`` jobs due ``ahead`` seconds from now (raw submitters)."""
    at = int(time.time() + ahead)
    r = harness.run(
        worker=None,
        nworkers=0,
        submit=raw_submit(address, func, at),
        parts=ranges(n, ctx.submitters),
        record_prefix=ctx.path("submit"),
        timeout=900,
    )
    if r.faults or r.submitted != n:
        raise RuntimeError(f"submitted {r.submitted}/{n}: {r.faults}")
    return r


def w3(ctx: Context) -> dict[str, Result]:
    """Scheduled memory: a fresh server per N, RSS before and after N jobs
    due in an hour."""
    rows: list[Result] = []
    for n in ctx.size.w3_jobs:
        func = b"w3"
        with server(ctx) as (address, pid):
            before = settled_rss(pid) if pid else None
            r = submit_scheduled(ctx, address, func, n)
            stored = func_jobs(address, func)
            if stored != n:
                raise RuntimeError(f"W3: STATUS shows {stored} jobs, submitted {n}")
            after = settled_rss(pid) if pid else None
            if ctx.address:
                drop(address, func)
        row: Result = {"jobs": n, "submit_per_s": r.submit_rate, "stored": stored}
        if before is not None and after is not None:
            row.update(
                rss_before=before,
                rss_after=after,
                bytes_per_job=(after - before) / n,
            )
        rows.append(row)
        ctx.log(f"W3 {SYSTEM} {n:,} jobs: {row}")
    first = rows[0]
    res: Result = {
        "status": OK,
        **first,
        "by_size": rows,
        "config": (
            f"{ctx.submitters} raw submitters; "
            + (
                "server given by --against"
                if ctx.address
                else f"fresh server, store {ctx.store}"
            )
        ),
    }
    if ctx.address:
        res["note"] = "server given by --against: RSS not measured"
    return {SYSTEM: res}


def w4(ctx: Context) -> dict[str, Result]:
    """Restart with N stored jobs: time until the server answers STATUS with
    all of them (SQLite store, ``-p file://``)."""
    if ctx.address:
        return {SYSTEM: status(NOT_AVAILABLE, "needs a server the suite starts")}
    rows: list[Result] = []
    for n in ctx.size.w4_jobs:
        db = ctx.path(f"w4-{n}.db")
        # the restart reads every stored job before it listens (about 20 s
        # for 10M): the default start timeout is meant for empty servers
        proc = ServerProcess(
            ["-p", f"file://{db}", "--log", "warning"], start_timeout=600
        )
        try:
            proc.start()
        except (RuntimeError, TimeoutError) as exc:
            lines = [x for x in str(exc).splitlines() if x.strip()]
            reason = lines[-1] if lines else str(exc)
            return {
                SYSTEM: status(
                    NOT_AVAILABLE,
                    f"the server does not start with -p file://: {reason[:200]}",
                )
            }
        func = b"w4"
        try:
            r = submit_scheduled(ctx, proc.address, func, n)
            t = time.monotonic()
            proc.stop(timeout=300)
            stop_s = time.monotonic() - t
            t = time.monotonic()
            proc.start()
            listen_s = time.monotonic() - t
            address = proc.address
            ok = wait_until(
                lambda: _count_or_zero(address, func) >= n,  # noqa: B023
                600,
                step=0.02,
            )
            ready_s = time.monotonic() - t
            stored = func_jobs(proc.address, func)
            assert proc.pid is not None
            rss = rss_bytes(proc.pid)
        finally:
            proc.stop(timeout=60)
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(db + suffix)
        if not ok:
            raise RuntimeError(f"W4: {stored}/{n} jobs back after restart")
        row = {
            "jobs": n,
            "submit_per_s": r.submit_rate,
            "stop_s": stop_s,
            "listening_s": listen_s,
            "restart_s": ready_s,
            "stored_after": stored,
            "rss_after": rss,
        }
        rows.append(row)
        ctx.log(f"W4 {SYSTEM} {n:,} jobs: {row}")
    return {
        SYSTEM: {
            "status": OK,
            **rows[0],
            "by_size": rows,
            "config": "SQLite store (-p file://); SIGTERM, start, poll STATUS",
        }
    }


def _count_or_zero(address: str, func: bytes) -> int:
    try:
        return func_jobs(address, func)
    except (OSError, RuntimeError):
        return 0


def w5(ctx: Context) -> dict[str, Result]:
    """Periodic jobs: M jobs that answer SchedLater(1) on every run."""
    s = ctx.size
    m = s.w5_jobs
    func = b"w5"
    with server(ctx) as (address, _pid):
        r = harness.run(
            worker=lib_worker(address, func, 64, periodic=True),
            nworkers=ctx.workers,
            submit=lib_submit(address, func, None),
            parts=harness.split([f"p{i:07d}" for i in range(m)], ctx.submitters),
            record_prefix=ctx.path("w5-ours"),
            duration=s.w5_seconds,
            timeout=120,
        )
        with contextlib.suppress(Exception):
            drop(address, func)
    if r.faults:
        raise RuntimeError(f"W5: {r.faults}")
    return {SYSTEM_LIB: periodic_result(ctx, r, m, "Worker procs x size 64")}


def periodic_result(ctx: Context, r: harness.Run, m: int, workers: str) -> Result:
    """W5 figures of one run, counted over whole periods after the warm-up."""
    s = ctx.size
    # a whole number of periods, starting mid-second: Periodic's due times are
    # whole seconds, so its runs come in bursts right after each second
    t_from = math.floor(r.t_go + s.w5_warmup) + 0.5
    periods = max(1, math.floor(r.t_go + s.w5_seconds - 0.25 - t_from))
    t_to = t_from + periods
    st = harness.periodic_stats(r.records, t_from, t_to)
    return {
        "status": OK,
        "jobs": m,
        "target_per_s": float(m),
        "window_s": t_to - t_from,
        **st,
        "config": f"{ctx.workers} {workers}; period 1 s",
    }


WORKLOADS: dict[str, Callable[[Context], dict[str, Result]]] = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
}
