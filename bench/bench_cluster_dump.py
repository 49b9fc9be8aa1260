"""A cluster DUMP (issue 18): one repeatable-read read of the jobs table on
the node that got it.  ``--nodes`` ``periodicd --cluster`` nodes on a
throwaway PostgreSQL (fsync off), ``--jobs`` jobs LOADed through the first
node (split by partition to their owners); then ``--runs`` DUMPs through
the first node: wall time of each, and the PING round trips on that node
while it runs (one PING every 10 ms on another connection: how long the
node's loop is held).  Afterwards the partitions must still be balanced
(the heartbeat, on the same store thread as the read, kept its leases).

Example (the figures in docs/benchmarks.md)::

    PYTHONPATH=. .venv/bin/python bench/bench_cluster_dump.py --jobs 200000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import Cluster, load_jobs, sql  # noqa: E402

from periodic_fast.client import Client  # noqa: E402
from periodic_fast.testing_pg import PostgresCluster  # noqa: E402


async def dump_once(address: str, expect: int) -> dict[str, float]:
    pings: list[float] = []
    stop = asyncio.Event()

    async def pinger() -> None:
        async with Client(address, timeout=60) as p:
            while not stop.is_set():
                t = time.perf_counter()
                await p.ping()
                pings.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(0.01)

    task = asyncio.ensure_future(pinger())
    await asyncio.sleep(0.2)
    async with Client(address, timeout=600, max_frame=2**32 - 1) as c:
        t = time.perf_counter()
        raw = await c.dump_raw(timeout=600)
        took = time.perf_counter() - t
    stop.set()
    await task
    assert int.from_bytes(raw[:8], "big") == expect
    return {
        "dump_ms": round(took * 1000, 1),
        "mb": round(len(raw) / 2**20, 1),
        "ping_p50_ms": round(statistics.median(pings), 2),
        "ping_max_ms": round(max(pings), 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=200_000)
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--lease", type=float, default=2.0)
    args = p.parse_args()
    report: dict[str, Any] = {"load_before": os.getloadavg(), "args": vars(args)}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-dump-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    with PostgresCluster(fsync=False) as pg:
        cl = Cluster(pg, args.nodes, args.lease, tmp, "d")
        try:
            asyncio.run(load_jobs(cl.nodes[0].address, args.jobs))
            runs = [
                asyncio.run(dump_once(cl.nodes[0].address, args.jobs))
                for _ in range(args.runs)
            ]
            report["runs"] = runs
            report["median"] = {
                k: round(statistics.median(r[k] for r in runs), 2) for k in runs[0]
            }
            owners = sql(
                cl.uri,
                f"SELECT owner, count(*) FROM {cl.prefix}cluster_parts"
                " WHERE lease_until > now() GROUP BY owner",
            )
            report["owners_after"] = {r[0]: r[1] for r in owners}
            cl.wait_balanced([x.id for x in cl.nodes], 1.0)  # nothing lost
        finally:
            cl.stop()
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
