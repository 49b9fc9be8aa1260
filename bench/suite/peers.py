"""The same workloads on arq and rq (Redis) and on gearmand.

Each peer is used the way its documentation shows, with the fastest settings
it documents and nothing turned down:

* arq: ``Worker(poll_delay=0)`` (the shortest poll delay; the default is
  0.5 s), ``max_jobs`` from ``--arq-max-jobs``, ``enqueue_job`` from an
  ``ArqRedis`` pool, 100 enqueues in flight per submitter; no logging set up
  (the ``arq`` command would log every job);
* rq: the default forking ``Worker`` with its scheduler (``with_scheduler``,
  needed for ``enqueue_at``/``enqueue_in``), ``logging_level="WARNING"``;
  ``enqueue_many`` in pipelines of 500 for immediate jobs, ``enqueue_at`` /
  ``enqueue_in`` for delayed ones;
* gearmand with pygearman: background jobs via ``submit_multiple_jobs``
  (1,000 per call, not waiting for completion) and ``GearmanWorker``;
* gearmand with its own C tools: ``gearman -n -b`` (one background job per
  input line) and ``gearman -w`` workers without a command (they echo).

A workload a peer cannot express is "not supported" (gearmand has no delayed
jobs in either client); a missing binary or package is "not installed".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from . import harness, jobs
from .common import (
    APT_PEERS,
    NOT_AVAILABLE,
    NOT_INSTALLED,
    NOT_SUPPORTED,
    OK,
    Context,
    Result,
    percentiles,
    rss_bytes,
    settled_rss,
    status,
    wait_until,
)
from .procs import Gearmand, RedisServer, which

QUEUE = "bench"
NO_DELAY = (
    "no delayed jobs: neither pygearman nor gearman(1) can submit a job for later"
)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def missing(peer: str) -> str | None:
    """Why ``peer`` cannot run here (None: it can)."""
    need = {"arq": ["redis-server"], "rq": ["redis-server"]}.get(
        peer, ["gearmand", "gearman"]
    )
    gone = [b for b in need if which(b) is None]
    if gone:
        return f"{', '.join(gone)} not found; install with: {APT_PEERS}"
    module = {"arq": "arq", "rq": "rq", "gearman": "gearman"}[peer]
    try:
        __import__(module)
    except ImportError as exc:
        pkg = {"gearman": "pygearman"}.get(module, module)
        return f"Python package {pkg} missing ({exc}); pip install {pkg}"
    return None


def redis() -> RedisServer:
    """A fresh redis-server (caller closes it)."""
    path = which("redis-server")
    assert path is not None
    return RedisServer(path).start()


# -- arq ----------------------------------------------------------------------


def arq_worker(port: int, max_jobs: int) -> harness.WorkerFn:
    """An arq ``Worker`` process (poll_delay=0) running the three handlers."""

    def fn(idx: int, shared: harness.Shared, path: str, ready: Any, stop: Any) -> None:
        from arq.connections import RedisSettings
        from arq.worker import Worker, func

        jobs.install(shared.counts, shared.last, idx, path)

        async def on_startup(ctx: dict[str, Any]) -> None:
            ready.release()

        async def main() -> None:
            w = Worker(
                functions=[
                    func(jobs.arq_noop, name="noop"),
                    func(jobs.arq_late, name="late"),
                    func(jobs.arq_tick, name="tick"),
                ],
                redis_settings=RedisSettings(host="127.0.0.1", port=port),
                poll_delay=0,
                max_jobs=max_jobs,
                handle_signals=False,
                on_startup=on_startup,
            )
            task = asyncio.ensure_future(w.main())
            while not stop.is_set() and not task.done():
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, 5)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(w.close(), 5)

        asyncio.run(main())

    return fn


def arq_submit(
    port: int, make: Callable[[Any, float], tuple[str, tuple[Any, ...], dict[str, Any]]]
) -> harness.SubmitFn:
    """``enqueue_job`` of each item, 100 in flight; ``make(item, t0)`` gives
    (function name, args, enqueue keyword arguments)."""

    def fn(part: list[Any], ready: Any, go: Any) -> tuple[float, float, int]:
        from arq import create_pool
        from arq.connections import RedisSettings

        async def main() -> tuple[float, float, int]:
            pool = await create_pool(RedisSettings(host="127.0.0.1", port=port))
            ready.release()
            await asyncio.get_running_loop().run_in_executor(None, go.wait)
            t0 = time.time()
            ok = 0
            for chunk in _chunks(part, 100):
                calls = []
                for item in chunk:
                    name, args, kw = make(item, t0)
                    calls.append(pool.enqueue_job(name, *args, **kw))
                ok += sum(j is not None for j in await asyncio.gather(*calls))
            t1 = time.time()
            await pool.aclose()
            return t0, t1, ok

        return asyncio.run(main())

    return fn


# -- rq -----------------------------------------------------------------------


def rq_worker(port: int) -> harness.WorkerFn:
    """rq's default (forking) ``Worker`` with the scheduler on; stops on SIGTERM."""

    def fn(idx: int, shared: harness.Shared, path: str, ready: Any, stop: Any) -> None:
        from redis import Redis
        from rq import Queue, Worker

        jobs.install(shared.counts, shared.last, idx, path)
        conn = Redis(host="127.0.0.1", port=port)
        w = Worker(
            [Queue(QUEUE, connection=conn)],
            connection=conn,
            name=f"bench-{idx}-{os.getpid()}",
        )
        ready.release()
        w.work(with_scheduler=True, logging_level="WARNING")

    return fn


def rq_submit(port: int, mode: str) -> harness.SubmitFn:
    """rq enqueues: ``now`` (enqueue_many, pipelines of 500), ``at``
    (enqueue_at item), ``hour`` (enqueue_in 1 h), ``tick`` (W5 first runs)."""

    def fn(part: list[Any], ready: Any, go: Any) -> tuple[float, float, int]:
        from redis import Redis
        from rq import Queue

        conn = Redis(host="127.0.0.1", port=port)
        q = Queue(QUEUE, connection=conn)
        conn.ping()
        ready.release()
        go.wait()
        t0 = time.time()
        ok = 0
        if mode == "now":
            for chunk in _chunks(part, 500):
                datas = [Queue.prepare_data(jobs.rq_noop, (i,)) for i in chunk]
                ok += len(q.enqueue_many(datas))
        elif mode == "at":
            for target in part:
                q.enqueue_at(_utc(target), jobs.rq_late, target)
                ok += 1
        elif mode == "hour":
            for i in part:
                q.enqueue_in(timedelta(hours=1), jobs.rq_noop, i)
                ok += 1
        elif mode == "tick":
            at = int(t0) + 1
            for name in part:
                q.enqueue_at(_utc(at), jobs.rq_tick, name, float(at))
                ok += 1
        else:
            raise ValueError(mode)
        return t0, time.time(), ok

    return fn


# -- gearman ------------------------------------------------------------------


def gm_worker(port: int) -> harness.WorkerFn:
    """A pygearman ``GearmanWorker`` process for ``noop``."""

    def fn(idx: int, shared: harness.Shared, path: str, ready: Any, stop: Any) -> None:
        import gearman  # type: ignore[import-untyped]

        jobs.install(shared.counts, shared.last, idx, path)

        class Worker(gearman.GearmanWorker):  # type: ignore[misc]
            def after_poll(self, any_activity: bool) -> bool:
                return not stop.is_set()

        def noop(worker: Any, job: Any) -> bytes:
            jobs.mark()
            return b""

        w = Worker([f"127.0.0.1:{port}"])
        w.register_task(b"noop", noop)  # pygearman matches on the bytes name
        ready.release()
        w.work(poll_timeout=0.1)

    return fn


def gm_submit(port: int) -> harness.SubmitFn:
    """pygearman background submits, 1,000 per ``submit_multiple_jobs``."""

    def fn(part: list[int], ready: Any, go: Any) -> tuple[float, float, int]:
        import gearman

        client = gearman.GearmanClient([f"127.0.0.1:{port}"])
        ready.release()
        go.wait()
        t0 = time.time()
        ok = 0
        for chunk in _chunks(part, 1000):
            reqs = client.submit_multiple_jobs(
                [{"task": "noop", "data": str(i)} for i in chunk],
                background=True,
                wait_until_complete=False,
            )
            ok += sum(r.state == gearman.JOB_CREATED for r in reqs)
        return t0, time.time(), ok

    return fn


# -- workloads ----------------------------------------------------------------


def _w1_result(r: harness.Run, n: int, config: str) -> Result:
    if r.faults:
        raise RuntimeError(f"faults: {r.faults}")
    res: Result = {
        "status": OK,
        "jobs": n,
        "runs": 1,
        "submitted": r.submitted,
        "done": r.done,
        "submit_per_s": r.submit_rate,
        "complete_per_s": r.completion_rate,
        "config": config,
    }
    if r.timed_out:
        res["note"] = f"timed out: {r.done}/{n} done; rate over what finished"
    return res


def w1(ctx: Context, peer: str) -> dict[str, Result]:
    """Immediate throughput on ``peer``."""
    k, subs = ctx.workers, ctx.submitters
    if peer == "arq":
        n = ctx.size.w1_arq
        with contextlib.closing(redis()) as rs:
            r = harness.run(
                worker=arq_worker(rs.port, ctx.arq_max_jobs),
                nworkers=k,
                submit=arq_submit(rs.port, lambda i, t0: ("noop", (i,), {})),
                parts=harness.split(list(range(n)), subs),
                record_prefix=ctx.path("w1-arq"),
                expect=n,
                timeout=600,
            )
        cfg = f"{subs} submitters, {k} workers x max_jobs {ctx.arq_max_jobs}"
        return {"arq": _w1_result(r, n, cfg + ", poll_delay 0")}
    if peer == "rq":
        n = ctx.size.w1_rq
        with contextlib.closing(redis()) as rs:
            r = harness.run(
                worker=rq_worker(rs.port),
                nworkers=k,
                submit=rq_submit(rs.port, "now"),
                parts=harness.split(list(range(n)), subs),
                record_prefix=ctx.path("w1-rq"),
                expect=n,
                timeout=600,
                stop_signal=signal.SIGTERM,
            )
        cfg = f"{subs} submitters (enqueue_many), {k} forking workers"
        return {"rq": _w1_result(r, n, cfg)}
    out: dict[str, Result] = {}
    n = ctx.size.w1_gearman
    path = which("gearmand")
    assert path is not None
    with contextlib.closing(Gearmand(path).start()) as gd:
        r = harness.run(
            worker=gm_worker(gd.port),
            nworkers=k,
            submit=gm_submit(gd.port),
            parts=harness.split(list(range(n)), subs),
            record_prefix=ctx.path("w1-gm"),
            expect=n,
            timeout=600,
        )
    cfg = f"{subs} submitters (background), {k} GearmanWorker procs"
    out["gearman (pygearman)"] = _w1_result(r, n, cfg)
    ctx.log(f"W1 gearman (pygearman): {r.completion_rate:,.0f} jobs/s")
    out["gearman (C tools)"] = w1_gearman_c(ctx)
    return out


def w1_gearman_c(ctx: Context) -> Result:
    """``gearman -w`` workers and ``gearman -n -b`` clients; completion seen
    through gearmand's ``status`` (total 0 after every client exited)."""
    n = ctx.size.w1_gearman_c
    k, subs = ctx.workers, ctx.submitters
    tool = which("gearman")
    path = which("gearmand")
    assert tool is not None and path is not None
    files = []
    for i, part in enumerate(harness.split(list(range(n)), subs)):
        fname = ctx.path(f"gm-c-{i}.txt")
        with open(fname, "w") as f:
            f.write("".join(f"{x}\n" for x in part))
        files.append(fname)
    workers: list[subprocess.Popen[bytes]] = []
    clients: list[subprocess.Popen[bytes]] = []
    gd = Gearmand(path).start()
    try:
        base = [tool, "-h", "127.0.0.1", "-p", str(gd.port), "-f", "noop"]
        for _ in range(k):
            workers.append(
                subprocess.Popen(
                    [*base, "-w"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        if not wait_until(lambda: gd.queued("noop")[2] >= k, 30, step=0.02):
            raise RuntimeError("gearman -w workers did not register")
        t0 = time.time()
        for fname in files:
            with open(fname, "rb") as fin:
                clients.append(
                    subprocess.Popen(
                        [*base, "-n", "-b"],
                        stdin=fin,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        codes = [c.wait(600) for c in clients]
        t1 = time.time()
        if any(codes):
            raise RuntimeError(f"gearman client exit codes {codes}")
        done = wait_until(lambda: gd.queued("noop")[0] == 0, 600, step=0.005)
        t_done = time.time()
        if not done:
            raise RuntimeError("gearmand still holds jobs after 600 s")
    finally:
        for p in clients + workers:
            if p.poll() is None:
                p.terminate()
        for p in clients + workers:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        gd.close()
        for fname in files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(fname)
    return {
        "status": OK,
        "jobs": n,
        "runs": 1,
        "submit_per_s": n / (t1 - t0),
        "complete_per_s": n / (t_done - t0),
        "config": f"{subs} `gearman -n -b` clients, {k} `gearman -w` echo workers",
    }


def w2(ctx: Context, peer: str) -> dict[str, Result]:
    """Delayed-dispatch accuracy: the due times of our W2 (whole seconds,
    >= 2 s ahead, spread over ``w2_spread`` seconds)."""
    if peer == "gearman":
        return _gearman_unsupported()
    s = ctx.size
    n = s.w2_jobs if peer == "arq" else s.w2_rq
    # >= 2 s ahead once submitted: process start-up and enqueueing come first
    base = int(time.time()) + 6 + n // 2000
    targets = [float(base + i % s.w2_spread) for i in range(n)]
    with contextlib.closing(redis()) as rs:
        if peer == "arq":
            wfn = arq_worker(rs.port, ctx.arq_max_jobs)
            sfn = arq_submit(
                rs.port, lambda t, t0: ("late", (t,), {"_defer_until": _utc(t)})
            )
        else:
            wfn = rq_worker(rs.port)
            sfn = rq_submit(rs.port, "at")
        r = harness.run(
            worker=wfn,
            nworkers=ctx.workers,
            submit=sfn,
            parts=harness.split(targets, ctx.submitters),
            record_prefix=ctx.path(f"w2-{peer}"),
            expect=n,
            timeout=120 + s.w2_spread,
            stop_signal=signal.SIGTERM if peer == "rq" else None,
        )
    if r.faults:
        raise RuntimeError(f"faults: {r.faults}")
    if r.t1 > base:
        raise RuntimeError("submitting took longer than the lead time")
    lat = percentiles(harness.lateness_ms(r.records))
    res: Result = {
        "status": OK,
        "jobs": n,
        "spread_s": s.w2_spread,
        "runs": 1,
        "lateness_ms_p50": lat.get("p50"),
        "lateness_ms_p99": lat.get("p99"),
        "lateness_ms_max": lat.get("max"),
        "early": sum(1 for x in harness.lateness_ms(r.records) if x < 0),
        "config": "lateness at handler start",
    }
    if r.timed_out or len(r.records) < n:
        res["note"] = f"only {len(r.records)}/{n} ran in time"
    return {peer: res}


def _gearman_unsupported() -> dict[str, Result]:
    return {
        "gearman (pygearman)": status(NOT_SUPPORTED, NO_DELAY),
        "gearman (C tools)": status(NOT_SUPPORTED, NO_DELAY),
    }


def fill_scheduled(ctx: Context, rs: RedisServer, peer: str, n: int) -> harness.Run:
    """Enqueue ``n`` jobs due in an hour on ``peer`` (no workers)."""
    if peer == "arq":
        sfn = arq_submit(rs.port, lambda i, t0: ("noop", (i,), {"_defer_by": 3600}))
    else:
        sfn = rq_submit(rs.port, "hour")
    r = harness.run(
        worker=None,
        nworkers=0,
        submit=sfn,
        parts=harness.split(list(range(n)), ctx.submitters),
        record_prefix=ctx.path("fill"),
        timeout=1800,
    )
    if r.faults or r.submitted != n:
        raise RuntimeError(f"enqueued {r.submitted}/{n}: {r.faults}")
    return r


def _stored(rs: RedisServer, peer: str) -> int:
    from redis import Redis

    conn = Redis(host="127.0.0.1", port=rs.port)
    try:
        if peer == "arq":
            return int(cast(Any, conn.zcard("arq:queue")))
        from rq import Queue
        from rq.registry import ScheduledJobRegistry

        reg = ScheduledJobRegistry(queue=Queue(QUEUE, connection=conn))  # type: ignore[no-untyped-call]
        return int(reg.count)
    finally:
        conn.close()


def _used_memory(rs: RedisServer) -> int:
    from redis import Redis

    conn = Redis(host="127.0.0.1", port=rs.port)
    try:
        return int(cast(Any, conn.info("memory"))["used_memory"])
    finally:
        conn.close()


def w3(ctx: Context, peer: str) -> dict[str, Result]:
    """Scheduled memory: redis-server RSS (and used_memory) per job due in
    an hour."""
    if peer == "gearman":
        return _gearman_unsupported()
    n = ctx.size.w3_arq if peer == "arq" else ctx.size.w3_rq
    with contextlib.closing(redis()) as rs:
        rss0, used0 = settled_rss(rs.pid), _used_memory(rs)
        r = fill_scheduled(ctx, rs, peer, n)
        stored = _stored(rs, peer)
        rss1, used1 = settled_rss(rs.pid), _used_memory(rs)
    if stored != n:
        raise RuntimeError(f"{peer}: {stored} jobs stored, {n} enqueued")
    return {
        peer: {
            "status": OK,
            "jobs": n,
            "submit_per_s": r.submit_rate,
            "stored": stored,
            "rss_before": rss0,
            "rss_after": rss1,
            "bytes_per_job": (rss1 - rss0) / n,
            "used_memory_per_job": (used1 - used0) / n,
            "config": "redis-server RSS; " + (
                "enqueue_job(_defer_by=3600)" if peer == "arq"
                else "enqueue_in(1 h)"
            ),
        }
    }  # fmt: skip


def w4(ctx: Context, peer: str) -> dict[str, Result]:
    """Restart: redis-server reloading an RDB snapshot of arq's scheduled
    jobs (rq keeps its jobs in the same Redis, so only arq's are measured)."""
    if peer == "gearman":
        return {
            name: status(
                NOT_AVAILABLE,
                "not measured: the suite runs gearmand without a persistent queue",
            )
            for name in ("gearman (pygearman)", "gearman (C tools)")
        }
    if peer == "rq":
        return {"rq": status(NOT_AVAILABLE, "same Redis restart as arq (see arq)")}
    n = ctx.size.w3_arq
    with contextlib.closing(redis()) as rs:
        fill_scheduled(ctx, rs, "arq", n)
        from redis import Redis

        conn = Redis(host="127.0.0.1", port=rs.port)
        t = time.monotonic()
        conn.save()
        save_s = time.monotonic() - t
        conn.close()
        rs.stop()
        t = time.monotonic()
        rs.start(timeout=600)
        listen_s = time.monotonic() - t
        ok = wait_until(lambda: _stored_or_zero(rs) >= n, 600, step=0.01)
        ready_s = time.monotonic() - t
        stored = _stored_or_zero(rs)
        rss = rss_bytes(rs.pid)
    if not ok:
        raise RuntimeError(f"arq: {stored}/{n} jobs back after the restart")
    return {
        "arq": {
            "status": OK,
            "jobs": n,
            "save_s": save_s,
            "listening_s": listen_s,
            "restart_s": ready_s,
            "stored_after": stored,
            "rss_after": rss,
            "config": "redis-server SAVE, SIGTERM, start, poll ZCARD arq:queue",
        }
    }


def _stored_or_zero(rs: RedisServer) -> int:
    try:
        return _stored(rs, "arq")
    except Exception:  # redis.BusyLoadingError while the dump loads
        return 0


def w5(ctx: Context, peer: str) -> dict[str, Result]:
    """Periodic jobs: each run enqueues itself again one second later."""
    if peer == "gearman":
        return _gearman_unsupported()
    from .ours import periodic_result

    s = ctx.size
    m = s.w5_arq if peer == "arq" else s.w5_rq
    names = [f"p{i:07d}" for i in range(m)]
    with contextlib.closing(redis()) as rs:
        if peer == "arq":
            wfn = arq_worker(rs.port, ctx.arq_max_jobs)
            sfn = arq_submit(
                rs.port,
                lambda name, t0: (
                    "tick",
                    (name, float(int(t0) + 1)),
                    {"_defer_until": _utc(int(t0) + 1)},
                ),
            )
            how = f"arq workers x max_jobs {ctx.arq_max_jobs}; enqueue_job(_defer_by=1)"
        else:
            wfn = rq_worker(rs.port)
            sfn = rq_submit(rs.port, "tick")
            how = "forking rq workers; enqueue_in(1 s)"
        r = harness.run(
            worker=wfn,
            nworkers=ctx.workers,
            submit=sfn,
            parts=harness.split(names, ctx.submitters),
            record_prefix=ctx.path(f"w5-{peer}"),
            duration=s.w5_seconds,
            timeout=120,
            stop_signal=signal.SIGTERM if peer == "rq" else None,
        )
    if r.faults:
        raise RuntimeError(f"faults: {r.faults}")
    return {peer: periodic_result(ctx, r, m, how)}


WORKLOADS: dict[str, Callable[[Context, str], dict[str, Result]]] = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5": w5,
}


def not_installed(peer: str, reason: str) -> dict[str, Result]:
    """Every system of ``peer`` as "not installed"."""
    names = (
        ["gearman (pygearman)", "gearman (C tools)"] if peer == "gearman" else [peer]
    )
    return {n: status(NOT_INSTALLED, reason) for n in names}
