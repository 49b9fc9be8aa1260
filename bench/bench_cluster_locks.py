"""The cost of a global lock slot in cluster mode (issue 18, docs/cluster.md
"Locks"): one cluster store on a throwaway PostgreSQL (fsync off), the
round trip of ``PgLocks.acquire`` (fenced, advisory-locked, one insert) and
of ``PgLocks.release`` (delete + NOTIFY) as the server sees them (started
on the writer loop, awaited on the caller's loop); a refused acquisition
(the count full) too.  Medians and p99 over ``--n`` operations per run.

    PYTHONPATH=. .venv/bin/python bench/bench_cluster_locks.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from typing import Any

from periodic_fast.store.cluster import Coordinator
from periodic_fast.store.postgres import PostgresStore, parse_postgres_uri
from periodic_fast.testing_pg import PostgresCluster


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def one_run(store: PostgresStore, n: int, tag: str) -> dict[str, Any]:
    locks = store.cluster_locks()
    acq: list[float] = []
    rel: list[float] = []
    ref: list[float] = []
    holder = f"{tag}-holder".encode()
    assert await store.cluster_run(locks.acquire(b"busy", 1, b"f", holder, True))
    for i in range(n):
        name = f"{tag}{i}".encode()
        t = time.perf_counter()
        assert await store.cluster_run(locks.acquire(b"L", 1, b"f", name, True))
        t1 = time.perf_counter()
        assert await store.cluster_run(locks.release(b"L", b"f", name))
        t2 = time.perf_counter()
        ok = await store.cluster_run(locks.acquire(b"busy", 1, b"f", name, True))
        t3 = time.perf_counter()
        assert not ok
        acq.append(t1 - t)
        rel.append(t2 - t1)
        ref.append(t3 - t2)
    await store.cluster_run(locks.release(b"busy", b"f", holder))

    def ms(xs: list[float]) -> dict[str, float]:
        return {
            "median_ms": round(1000 * statistics.median(xs), 3),
            "p99_ms": round(1000 * _q(xs, 0.99), 3),
        }

    return {"acquire": ms(acq), "release": ms(rel), "refused": ms(ref)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    report: dict[str, Any] = {"load_before": os.getloadavg(), "runs": []}
    with PostgresCluster(fsync=False) as pg:
        connect, _ = parse_postgres_uri(pg.uri)
        coord = Coordinator("bench", prefix="bl_", partitions=1, lease_time=30.0)
        store = PostgresStore(connect, prefix="bl_", cluster=coord)
        try:

            async def go() -> None:
                await store.cluster_tick()  # owns the one partition
                await one_run(store, 200, "warm")
                for r in range(args.runs):
                    report["runs"].append(await one_run(store, args.n, f"r{r}"))

            asyncio.run(go())
        finally:
            store.close()
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
