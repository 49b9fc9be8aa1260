"""Our Client vs aio-periodic 1.0.0 on the same server, in the same run.

Starts one server subprocess (``python -m periodic_fast -d``, uvloop, on
127.0.0.1) and measures, for each client:

* submits/s: N ``submit_job`` calls, ``--concurrency`` at a time (aio and
  ours), plus our pipelined ``submit_many``;
* run_job round trips/s: ``run_job`` with an echo worker of the same library,
  ``--concurrency`` in flight.

Usage::

    python bench/bench_clients.py [--n 20000] [--runs 2000] [--concurrency 100]
        [--repeats 3] [--loop uvloop|asyncio]

Each figure is the median of ``--repeats`` rounds; both clients run on the
same event loop kind in the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from typing import Any

from periodic_fast.client import Client
from periodic_fast.codec import IMPLEMENTATION
from periodic_fast.job import Job
from periodic_fast.testing import ServerProcess
from periodic_fast.worker import Worker, WorkerJob


async def _bounded(n: int, conc: int, make: Callable[[int], Awaitable[Any]]) -> float:
    """Closed loop: ``conc`` coroutines, each awaiting its calls one by one
    (no semaphore or task per call, so the clients' own cost dominates)."""

    async def lane(start: int) -> None:
        for i in range(start, n, conc):
            await make(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(lane(k) for k in range(conc)))
    return n / (time.perf_counter() - t0)


async def bench(address: str, n: int, runs: int, conc: int) -> dict[str, float]:
    from aio_periodic import Client as AioClient
    from aio_periodic import Transport
    from aio_periodic import Worker as AioWorker

    out: dict[str, float] = {}
    # --- submits -----------------------------------------------------------------
    aio = AioClient()
    await aio.connect(Transport(address))
    out["aio submit_job"] = await _bounded(
        n, conc, lambda i: aio.submit_job("bench_aio", f"a{i}", b"w")
    )
    async with Client(address) as c:
        out["ours submit_job"] = await _bounded(
            n, conc, lambda i: c.submit_job("bench_ours", f"o{i}", b"w")
        )
        t0 = time.perf_counter()
        ok = await c.submit_many(Job(b"bench_many", b"m%d" % i, b"w") for i in range(n))
        out["ours submit_many"] = ok / (time.perf_counter() - t0)
        for f in ("bench_aio", "bench_ours", "bench_many"):
            await c.drop_func(f)
    # --- run_job round trips -------------------------------------------------------
    aw = AioWorker()
    await aw.connect(Transport(address))

    async def aio_echo(job: Any) -> bytes:
        return bytes(job.workload)

    await aw.add_func("rt_aio", aio_echo)
    aw_task = asyncio.create_task(aw.work(conc))
    await asyncio.sleep(min(conc, 10) + 1)  # aio offers one grab slot per second
    out["aio run_job"] = await _bounded(
        runs, conc, lambda i: aio.run_job("rt_aio", f"r{i}", b"x", timeout=30)
    )
    aw_task.cancel()
    aw.close()
    await asyncio.gather(aw_task, return_exceptions=True)
    aio.close()

    ow = Worker(address)

    @ow.func("rt_ours")
    async def echo(job: WorkerJob) -> bytes:
        return job.workload

    await ow.start(conc)
    async with Client(address) as c:
        out["ours run_job"] = await _bounded(
            runs, conc, lambda i: c.run_job("rt_ours", f"r{i}", b"x", timeout=30)
        )
    await ow.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="submits per client")
    ap.add_argument("--runs", type=int, default=2000, help="run_job calls")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    rounds: list[dict[str, float]] = []
    with ServerProcess(["--log", "warning"]) as proc:
        for _ in range(args.repeats):
            coro = bench(proc.address, args.n, args.runs, args.concurrency)
            if args.loop == "uvloop":
                import uvloop

                rounds.append(uvloop.run(coro))
            else:
                rounds.append(asyncio.run(coro))
    res = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(
        f"commit {commit}, Python {platform.python_version()}, codec {IMPLEMENTATION}, "
        f"n={args.n} runs={args.runs} concurrency={args.concurrency} "
        f"client loop {args.loop}, median of {args.repeats}"
    )
    print("| measure | ops/s |")
    print("|---|---:|")
    for k, v in res.items():
        print(f"| {k} | {v:,.0f} |")
    print(
        "\nsubmit_job ours/aio: "
        f"{res['ours submit_job'] / res['aio submit_job']:.1f}x; "
        f"submit_many/aio: {res['ours submit_many'] / res['aio submit_job']:.1f}x; "
        f"run_job ours/aio: {res['ours run_job'] / res['aio run_job']:.1f}x"
    )


if __name__ == "__main__":
    main()
