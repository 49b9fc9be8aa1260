"""Our Client vs aio-periodic 1.0.0 on the same server, in the same run.

Starts one server subprocess (``python -m periodic_fast -d``, uvloop, on
127.0.0.1) and measures, for each client:

* submits/s: ``submit_job`` calls, ``--concurrency`` at a time (aio and
  ours), plus our pipelined ``submit_many``;
* run_job round trips/s: ``run_job`` with an echo worker of the same library
  (in the same process), ``--concurrency`` in flight.

The load is a closed loop: ``--concurrency`` coroutines, each awaiting its
calls one after another (no semaphore or task per call in the harness).

To keep a busy machine from favouring one side, each round alternates the two
clients in ``--slices`` short slices (aio, ours, aio, ours, ...) and adds up
each side's time; a round's rate is calls / that side's total time.  Besides
wall-clock rates it reports CPU time per call (``time.process_time`` of this
process: client plus, for run_job, its worker; and the server process's CPU
from ``/proc``), which co-tenant load disturbs much less than wall time.

``--baseline COMMIT`` adds a third side: the ``Client`` class of
``periodic_fast/client.py`` as it was at COMMIT (loaded from ``git show``
into this process, against today's codec and worker), in the same slices.

Usage::

    python bench/bench_clients.py [--n 20000] [--runs 2000] [--concurrency 100]
        [--repeats 3] [--slices 10] [--loop uvloop|asyncio] [--baseline COMMIT]

Each figure is the median of ``--repeats`` rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

from periodic_fast.client import Client
from periodic_fast.codec import IMPLEMENTATION
from periodic_fast.job import Job
from periodic_fast.testing import ServerProcess
from periodic_fast.worker import Worker, WorkerJob

Make = Callable[[int], Awaitable[Any]]


def _baseline_module(commit: str) -> ModuleType:
    """``periodic_fast/client.py`` at ``commit``, imported as a module of the
    package (so its relative imports get today's codec)."""
    src = subprocess.run(
        ["git", "show", f"{commit}:periodic_fast/client.py"],
        capture_output=True,
        check=True,
    ).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="pf-bench-"), "client_base.py")
    with open(path, "wb") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("periodic_fast._client_base", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "periodic_fast"
    spec.loader.exec_module(mod)
    return mod


def _server_cpu(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Accumulates calls, wall time and CPU (ours and the server's)."""

    def __init__(self) -> None:
        self.calls = 0
        self.wall = 0.0
        self.cpu = 0.0
        self.server_cpu = 0.0

    def result(self) -> tuple[float, float, float]:
        """(calls/s, client CPU us/call, server CPU us/call)."""
        return (
            self.calls / self.wall,
            1e6 * self.cpu / self.calls,
            1e6 * self.server_cpu / self.calls,
        )


async def _closed_loop(
    meter: Meter, pid: int, start: int, n: int, conc: int, make: Make
) -> None:
    """``conc`` coroutines each awaiting ``make(i)`` for its share of
    ``start .. start + n``; adds the slice's figures to ``meter``."""

    async def lane(first: int) -> None:
        for i in range(first, start + n, conc):
            await make(i)

    s0 = _server_cpu(pid)
    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(lane(start + k) for k in range(min(conc, n))))
    meter.wall += time.perf_counter() - t0
    meter.cpu += time.process_time() - c0
    meter.server_cpu += _server_cpu(pid) - s0
    meter.calls += n


async def _alternate(
    pid: int, n: int, conc: int, slices: int, sides: dict[str, Make]
) -> dict[str, tuple[float, float, float]]:
    meters = {k: Meter() for k in sides}
    per = n // slices
    for s in range(slices):
        for key, make in sides.items():
            await _closed_loop(meters[key], pid, s * per, per, conc, make)
    return {k: m.result() for k, m in meters.items()}


async def bench(
    address: str,
    pid: int,
    n: int,
    runs: int,
    conc: int,
    slices: int,
    base: ModuleType | None = None,
) -> dict[str, tuple[float, float, float]]:
    from aio_periodic import Client as AioClient
    from aio_periodic import Transport
    from aio_periodic import Worker as AioWorker

    out: dict[str, tuple[float, float, float]] = {}
    aio = AioClient()
    await aio.connect(Transport(address))
    ours = Client(address)
    await ours.connect()
    # --- submits -----------------------------------------------------------------
    old: Any = None
    if base is not None:
        old = base.Client(address)
        await old.connect()
    sides: dict[str, Make] = {
        "aio submit_job": lambda i: aio.submit_job("bench_aio", f"a{i}", b"w"),
        "ours submit_job": lambda i: ours.submit_job("bench_ours", f"o{i}", b"w"),
    }
    if old is not None:
        sides["base submit_job"] = lambda i: old.submit_job("bench_base", f"b{i}", b"w")
    out.update(await _alternate(pid, n, conc, slices, sides))
    m = Meter()
    s0, c0, t0 = _server_cpu(pid), time.process_time(), time.perf_counter()
    m.calls = await ours.submit_many(
        Job(b"bench_many", b"m%d" % i, b"w") for i in range(n)
    )
    m.wall = time.perf_counter() - t0
    m.cpu = time.process_time() - c0
    m.server_cpu = _server_cpu(pid) - s0
    out["ours submit_many"] = m.result()
    for f in ("bench_aio", "bench_ours", "bench_many", "bench_base"):
        await ours.drop_func(f)
    # --- run_job round trips: both workers up, calls alternate -----------------------
    aw = AioWorker()
    await aw.connect(Transport(address))

    async def aio_echo(job: Any) -> bytes:
        return bytes(job.workload)

    await aw.add_func("rt_aio", aio_echo)
    aw_task = asyncio.create_task(aw.work(conc))
    ow = Worker(address)

    @ow.func("rt_ours")
    async def echo(job: WorkerJob) -> bytes:
        return job.workload

    await ow.start(conc)
    await asyncio.sleep(min(conc, 10) + 1)  # aio offers one grab slot per second
    sides = {
        "aio run_job": lambda i: aio.run_job("rt_aio", f"r{i}", b"x", timeout=30),
        "ours run_job": lambda i: ours.run_job("rt_ours", f"r{i}", b"x", timeout=30),
    }
    if old is not None:
        sides["base run_job"] = lambda i: old.run_job(
            "rt_ours", f"q{i}", b"x", timeout=30
        )
    out.update(await _alternate(pid, runs, conc, slices, sides))
    aw_task.cancel()
    aw.close()
    await asyncio.gather(aw_task, return_exceptions=True)
    aio.close()
    await ow.close()
    await ours.close()
    if old is not None:
        await old.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="submits per client")
    ap.add_argument("--runs", type=int, default=2000, help="run_job calls")
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3, help="rounds; medians")
    ap.add_argument("--slices", type=int, default=10, help="alternations per round")
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument("--baseline", metavar="COMMIT", help="also our Client at COMMIT")
    args = ap.parse_args()
    base = _baseline_module(args.baseline) if args.baseline else None
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    load_before = os.getloadavg()[0]
    rounds: list[dict[str, tuple[float, float, float]]] = []
    with ServerProcess(["--log", "warning"]) as proc:
        assert proc.pid is not None
        for _ in range(args.repeats):
            coro = bench(
                proc.address,
                proc.pid,
                args.n,
                args.runs,
                args.concurrency,
                args.slices,
                base,
            )
            if args.loop == "uvloop":
                import uvloop

                rounds.append(uvloop.run(coro))
            else:
                rounds.append(asyncio.run(coro))
    load_after = os.getloadavg()[0]
    res = {
        k: tuple(statistics.median(r[k][j] for r in rounds) for j in range(3))
        for k in rounds[0]
    }
    print(
        f"commit {commit}, Python {platform.python_version()}, codec {IMPLEMENTATION}, "
        f"n={args.n} runs={args.runs} concurrency={args.concurrency} "
        f"slices={args.slices} client loop {args.loop}, median of {args.repeats}; "
        f"load average {load_before:.1f} before, {load_after:.1f} after"
    )
    print("| measure | calls/s | client CPU us/call | server CPU us/call |")
    print("|---|---:|---:|---:|")
    for k, (rate, cpu, scpu) in res.items():
        print(f"| {k} | {rate:,.0f} | {cpu:.1f} | {scpu:.1f} |")
    per_round = [
        (
            r["ours submit_job"][0] / r["aio submit_job"][0],
            r["ours run_job"][0] / r["aio run_job"][0],
        )
        for r in rounds
    ]
    print(
        "\nours/aio, calls/s: submit_job "
        f"{res['ours submit_job'][0] / res['aio submit_job'][0]:.1f}x "
        f"(per round {', '.join(f'{a:.1f}' for a, _ in per_round)}), "
        f"submit_many {res['ours submit_many'][0] / res['aio submit_job'][0]:.1f}x, "
        f"run_job {res['ours run_job'][0] / res['aio run_job'][0]:.1f}x "
        f"(per round {', '.join(f'{b:.1f}' for _, b in per_round)})"
    )
    print(
        "aio/ours, client CPU per call: submit_job "
        f"{res['aio submit_job'][1] / res['ours submit_job'][1]:.1f}x, "
        f"run_job {res['aio run_job'][1] / res['ours run_job'][1]:.1f}x"
    )
    if base is not None:
        print(
            f"ours/base ({args.baseline}), calls/s: submit_job "
            f"{res['ours submit_job'][0] / res['base submit_job'][0]:.2f}x, "
            f"run_job {res['ours run_job'][0] / res['base run_job'][0]:.2f}x; "
            "client CPU base/ours: submit_job "
            f"{res['base submit_job'][1] / res['ours submit_job'][1]:.2f}x, "
            f"run_job {res['base run_job'][1] / res['ours run_job'][1]:.2f}x"
        )


if __name__ == "__main__":
    main()
