"""PostgreSQL store figures on their own: acknowledged submits/s, full life
cycles/s and start-up time with many stored jobs.

The stores side by side (memory, SQLite, PostgreSQL) are measured by
``bench/bench_store.py``; this script is for PostgreSQL alone, e.g. start-up
with 10M jobs (filled with one SQL statement, far faster than through the
store).

A throwaway cluster (:class:`periodic_fast.testing_pg.PostgresCluster`, fsync
on, default settings otherwise) on a unix socket in a temporary directory:

* ``e2e``: ``bench/e2e.py --scenarios submit,lifecycle --store postgres://...``
  for each ``--durability`` (strict = ``synchronous_commit=on``, relaxed =
  ``off``); the figures are e2e.py's medians (every SUCCESS counted is a
  committed write: the server holds replies until the commit).
* ``startup``: ``--startup-jobs`` jobs (sched_at spread over the next 30
  days) written into the tables with one ``INSERT ... SELECT
  generate_series``, then ``periodicd -p postgres://...`` started
  ``--runs`` times; time from spawn to the first PONG (load, wheel rebuild,
  bind), median.

The helpers (:func:`cluster`, :func:`fill_jobs`, :func:`startup_seconds`,
:func:`e2e`) are importable for a combined store benchmark.

Example::

    .venv/bin/python bench/bench_store_pg.py --jobs 100000 --runs 3 \\
        --startup-jobs 1000000 --json pg.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

from periodic_fast.testing import ServerProcess, wait_listening
from periodic_fast.testing_pg import PostgresCluster

HERE = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def cluster(fsync: bool = True) -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL cluster (durable: fsync on by default)."""
    with PostgresCluster(fsync=fsync) as pg:
        yield pg


def store_uri(pg: PostgresCluster, prefix: str = "") -> str:
    """The ``-p`` URI for ``pg`` with a table prefix."""
    return pg.uri + (f"&prefix={prefix}" if prefix else "")


def fill_jobs(
    pg: PostgresCluster, prefix: str, n: int, now: int | None = None
) -> float:
    """Create the tables (by opening the store once) and write ``n`` pending
    jobs in 100 funcs, ``sched_at`` spread over 30 days; return seconds."""
    from periodic_fast.store import open_store

    started = time.perf_counter()
    open_store(store_uri(pg, prefix)).close()
    base = int(now if now is not None else time.time()) + 60
    pg.psql(
        f"INSERT INTO {prefix}jobs"
        " (func, name, workload, sched_at, count, timeout, state)"
        " SELECT convert_to('func-' || (i % 100), 'UTF8'),"
        " convert_to('job-' || i, 'UTF8'), convert_to(repeat('w', 32), 'UTF8'),"
        f" {base} + (i % 2592000), 0, 0, 0 FROM generate_series(1, {n}) AS i"
    )
    pg.psql(f"VACUUM ANALYZE {prefix}jobs")
    return time.perf_counter() - started


def startup_seconds(uri: str, runs: int) -> list[float]:
    """Start ``periodicd -p uri`` ``runs`` times; seconds to the first PONG."""
    from periodic_fast.client import Client

    async def ping(address: str) -> None:
        async with Client(address, timeout=60, reconnect=False) as c:
            assert await c.ping()

    out = []
    for _ in range(runs):
        proc = ServerProcess(["-p", uri, "--log", "warning"], start_timeout=300)
        started = time.perf_counter()
        proc.start()  # returns once it listens (after load and rebuild)
        try:
            assert wait_listening(proc.address, timeout=1)
            asyncio.run(ping(proc.address))
            out.append(time.perf_counter() - started)
        finally:
            proc.stop(timeout=60)
    return out


def e2e(uri: str, jobs: int, runs: int, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run bench/e2e.py (submit, lifecycle) against a server on ``uri``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "e2e.json")
        subprocess.run(
            [
                sys.executable,
                os.path.join(HERE, "e2e.py"),
                "--store",
                uri,
                "--scenarios",
                "submit,lifecycle",
                "--jobs",
                str(jobs),
                "--runs",
                str(runs),
                "--json",
                out,
                *extra,
            ],
            check=True,
            timeout=3600,
        )
        with open(out) as f:
            report: dict[str, Any] = json.load(f)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=100_000, help="jobs per e2e run")
    p.add_argument("--runs", type=int, default=3, help="measured runs (median)")
    p.add_argument("--durability", default="strict,relaxed")
    p.add_argument("--startup-jobs", default="1000000", help="comma list; 0: skip")
    p.add_argument("--skip-e2e", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    report: dict[str, Any] = {"load_before": os.getloadavg()}
    with cluster() as pg:
        version = pg.psql("SHOW server_version").strip()
        report["postgresql"] = version
        print(f"# PostgreSQL {version}, fsync on, socket {pg.sockdir}")
        if not args.skip_e2e:
            for durability in [d for d in args.durability.split(",") if d]:
                prefix = f"e2e_{durability}_"
                uri = store_uri(pg, prefix)
                extra = ["--server-args", f"--durability {durability}"]
                rep = e2e(uri, args.jobs, args.runs, extra)
                row = {
                    "submits_per_s": rep["submit"]["submits_per_s"],
                    "lifecycles_per_s": rep["lifecycle"]["lifecycles_per_s"],
                    "machine": rep["machine"],
                }
                report[f"e2e_{durability}"] = row
                print(
                    f"== postgres {durability}: submits/s"
                    f" {row['submits_per_s']['median']:,.0f}, lifecycles/s"
                    f" {row['lifecycles_per_s']['median']:,.0f}"
                )
        for n in [int(x) for x in args.startup_jobs.split(",") if int(x)]:
            prefix = f"start{n}_"
            fill = fill_jobs(pg, prefix, n)
            times = startup_seconds(store_uri(pg, prefix), args.runs)
            report[f"startup_{n}"] = {
                "fill_s": fill,
                "runs_s": times,
                "median_s": statistics.median(times),
            }
            print(
                f"== postgres start-up with {n:,} jobs: median"
                f" {statistics.median(times):.2f} s (runs {times}; fill {fill:.1f} s)"
            )
    report["load_after"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
