"""The job browser end to end: a page from the middle of a big func over HTTP.

    .venv/bin/python bench/bench_browse_http.py [--jobs 1000000] [--repeat 15]
        [--store :memory:]

Starts a real ``periodicd`` (a subprocess on a loopback port), LOADs
``--jobs`` future jobs ``job-0000000``... of one func, then, through
:class:`~periodic_fast.admin.AdminClient` (one HTTP/1.1 connection per
request, as the CLI and the dashboard make them):

* first: the first ``GET /api/jobs`` of the func, which waits while the
  server builds the func's name index a slice per loop turn;
* page: ``GET /api/jobs?func=big&cursor=<after job-<half>>&limit=50``, wall
  time per request (connection, request, JSON answer), median and max of
  ``--repeat`` runs, with a PING on the binary port before and after to show
  the server kept serving.

Wall times on a shared machine: give the load average with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time
from pathlib import Path

# this checkout's package, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from periodic_fast.admin import AdminClient  # noqa: E402
from periodic_fast.client import Client  # noqa: E402
from periodic_fast.job import Job  # noqa: E402
from periodic_fast.testing import ServerProcess  # noqa: E402

FUNC = "big"


def _cursor_after(name: str) -> str:
    """The browser's cursor that resumes after ``name`` (http_jobs)."""
    return base64.urlsafe_b64encode(name.encode()).decode("ascii").rstrip("=")


async def run(jobs: int, repeat: int) -> None:
    far = int(time.time()) + 86_400
    with ServerProcess(["-p", ARGS.store]) as proc:
        client = Client(proc.address, timeout=600)
        await client.connect()
        t = time.perf_counter()
        batch = [
            Job(FUNC.encode(), f"job-{i:07d}".encode(), b"", far + i % 3600, 0, 0)
            for i in range(jobs)
        ]
        await client.load(batch, chunk=50_000)
        print(f"loaded {jobs:,} jobs in {time.perf_counter() - t:.1f} s")
        del batch
        admin = AdminClient(proc.address, timeout=120)
        t = time.perf_counter()
        first = await admin.list_jobs(FUNC, limit=50)
        print(
            f"first listing (index build): {time.perf_counter() - t:.2f} s, "
            f"{len(first['jobs'])} jobs"
        )
        cursor = _cursor_after(f"job-{jobs // 2:07d}")
        times: list[float] = []
        for _ in range(repeat):
            t = time.perf_counter()
            page = await admin.list_jobs(FUNC, cursor=cursor, limit=50)
            times.append(time.perf_counter() - t)
            assert page["jobs"][0]["name"] == f"job-{jobs // 2 + 1:07d}", page
            assert len(page["jobs"]) == 50
        t = time.perf_counter()
        assert await client.ping()
        ping = time.perf_counter() - t
        await client.close()
    ms = [x * 1000 for x in times]
    print(
        f"page of 50 from the middle over HTTP: median {statistics.median(ms):.2f} ms, "
        f"max {max(ms):.2f} ms ({repeat} runs); PING after: {ping * 1000:.2f} ms; "
        f"load {os.getloadavg()[0]:.2f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--store", default=":memory:")
    global ARGS
    ARGS = ap.parse_args()
    asyncio.run(run(ARGS.jobs, ARGS.repeat))


ARGS: argparse.Namespace

if __name__ == "__main__":
    main()
