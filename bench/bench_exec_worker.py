"""Exec worker throughput: jobs/s of ``periodic run -f F --exec true``.

    PYTHONPATH=. python bench/bench_exec_worker.py [--root CHECKOUT]
        [--jobs N] [--thread T] [--servers S] [--rounds R]

One ``periodicd`` per server (``-p :memory:``, this checkout's), one exec
worker process from ``--root`` (default: this checkout; give /work/main to
compare before/after) with every server's address, ``--thread T``.  Per round
N jobs are submitted (split evenly over the servers) and timed until every
server reports none left; prints each round's jobs/s and the median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time

from periodic_fast import Client
from periodic_fast.testing import ServerProcess


async def _round(addresses: list[str], func: str, jobs: int, tag: str) -> float:
    clients = [Client(a) for a in addresses]
    for c in clients:
        await c.connect()
    try:
        t0 = time.perf_counter()
        await asyncio.gather(
            *(
                clients[i % len(clients)].submit_job(func, f"{tag}-{i}")
                for i in range(jobs)
            )
        )
        while True:
            left = 0
            for c in clients:
                st = (await c.status()).get(func)
                left += st.jobs if st is not None else 0
            if left == 0:
                return jobs / (time.perf_counter() - t0)
            await asyncio.sleep(0.01)
    finally:
        for c in clients:
            await c.close()


async def _registered(addresses: list[str], func: str) -> None:
    for a in addresses:
        async with Client(a) as c:
            for _ in range(300):
                st = (await c.status()).get(func)
                if st is not None and st.workers:
                    break
                await asyncio.sleep(0.05)
            else:
                raise SystemExit(f"no worker registered on {a}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.getcwd(), help="checkout of the worker")
    ap.add_argument("--jobs", type=int, default=400)
    ap.add_argument("--thread", type=int, default=4)
    ap.add_argument("--servers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    servers = [ServerProcess() for _ in range(args.servers)]
    for s in servers:
        s.start()
    addresses = [s.address for s in servers]
    env = dict(os.environ, PYTHONPATH=os.path.abspath(args.root))
    env.pop("PERIODIC_PORT", None)
    hosts = [x for a in addresses for x in ("-H", a)]
    worker = subprocess.Popen(
        [sys.executable, "-m", "periodic_fast", *hosts, "run", "-f", "bx"]
        + ["--exec", "true", "--thread", str(args.thread)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        asyncio.run(_registered(addresses, "bx"))
        rates = [
            asyncio.run(_round(addresses, "bx", args.jobs, f"r{r}"))
            for r in range(args.rounds)
        ]
    finally:
        worker.terminate()
        worker.wait(30)
        for s in servers:
            s.stop()
    print(
        f"root={args.root} servers={args.servers} thread={args.thread} "
        f"jobs={args.jobs} load={os.getloadavg()[0]:.2f}"
    )
    print("jobs/s per round: " + " ".join(f"{r:.0f}" for r in rates))
    print(f"median jobs/s: {statistics.median(rates):.0f}")


if __name__ == "__main__":
    main()
