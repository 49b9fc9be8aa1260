"""What a job's extras cost a cluster node (docs/cluster.md, "A job's extras
per partition"): the extras read when partitions are acquired, adding them
to the scheduler, forgetting them on unload, and the back-fill of a single
server's extras at the first node's open.

A throwaway PostgreSQL (fsync off) gets ``--jobs`` jobs of one func from a
single-node store, with extras for some of them: ``--attempts`` failure
counts, ``--dead`` dead entries and ``--crons`` schedules.  Then a cluster
store opens (back-fill timed once), acquires every partition, and each
repetition times:

* ``read all``: ``partition_extras`` of all 256 partitions (one node);
* ``read third``: of 86 partitions (a third: one of three nodes);
* ``add extras``: ``add_extras`` of every row into a scheduler on a memory
  store (before the jobs, as a node does);
* ``add crons``: ``add_crons`` once the jobs are in (the schedules' jobs
  exist; every failure count is checked against its job);
* ``drop third``: ``drop_extras`` of 86 partitions from that scheduler.

    PYTHONPATH=. python bench/bench_cluster_extras.py [--jobs N] [--repeat R]

Prints the median and range of each, in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from periodic_fast.job import Job, JobState  # noqa: E402
from periodic_fast.sched_crontab import CronEntry  # noqa: E402
from periodic_fast.sched_part_extras import (  # noqa: E402
    add_crons,
    add_extras,
    drop_extras,
)
from periodic_fast.sched_parts import Partitions  # noqa: E402
from periodic_fast.sched_retry import DeadJob, Failure  # noqa: E402
from periodic_fast.scheduler import Scheduler  # noqa: E402
from periodic_fast.store.cluster import Coordinator  # noqa: E402
from periodic_fast.store.memory import MemoryStore  # noqa: E402
from periodic_fast.store.postgres import (  # noqa: E402
    PostgresStore,
    parse_postgres_uri,
)
from periodic_fast.testing_pg import PostgresCluster  # noqa: E402

PARTS = 256


def _fill(connect: dict[str, Any], args: argparse.Namespace, now: float) -> None:
    store = PostgresStore(connect, prefix="b_")
    fail = Failure(3, now, "conn 1", "fail").encode()
    for i in range(args.jobs):
        store.save_job(Job(b"f", b"j%d" % i, b"w", int(now) + 3600), JobState.PENDING)
    for i in range(args.attempts):
        store.save_extra("attempt", b"f", b"j%d" % i, fail)
    for i in range(args.dead):
        name = b"d%d" % i
        store.save_extra(
            "dead", b"f", name, DeadJob(Job(b"f", name), Failure.decode(fail)).encode()
        )
    for i in range(args.crons):
        name = b"j%d" % (args.jobs - 1 - i)
        entry = CronEntry(b"f", name, "0 * * * *", "UTC", "once", b"", 0)
        store.save_extra("cron", b"f", name, entry.encode())
    store.flush(120)
    store.close()


def _ms(samples: list[float]) -> str:
    return (
        f"median {statistics.median(samples) * 1000:8.1f} ms"
        f"  (min {min(samples) * 1000:.1f}, max {max(samples) * 1000:.1f})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=100_000)
    ap.add_argument("--attempts", type=int, default=20_000)
    ap.add_argument("--dead", type=int, default=20_000)
    ap.add_argument("--crons", type=int, default=1_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    now = time.time()
    with PostgresCluster(fsync=False) as pg:
        connect, _ = parse_postgres_uri(pg.uri)
        _fill(connect, args, now)
        started = time.perf_counter()
        coord = Coordinator("bench", prefix="b_", partitions=PARTS)
        node = PostgresStore(connect, prefix="b_", cluster=coord)
        opened = time.perf_counter() - started
        try:
            asyncio.run(_run(node, args, now, opened))
        finally:
            node.close()


async def _run(
    node: PostgresStore, args: argparse.Namespace, now: float, opened: float
) -> None:
    await node.cluster_tick()
    third = list(range(0, PARTS, 3))
    everything = list(range(PARTS))
    times: dict[str, list[float]] = {
        "read all": [],
        "read third": [],
        "add extras": [],
        "add crons": [],
        "drop third": [],
    }
    rows: list[Any] = []
    jobs = [
        row
        for chunk in node.load_partitions(everything)
        for row in chunk  # the job rows, for the scheduler (untimed)
    ]
    for _ in range(args.repeat):
        t = time.perf_counter()
        rows = await node.partition_extras(everything)
        times["read all"].append(time.perf_counter() - t)
        t = time.perf_counter()
        await node.partition_extras(third)
        times["read third"].append(time.perf_counter() - t)
        sched = Scheduler(MemoryStore(), now)
        parts = Partitions(sched, PARTS)
        parts.begin(everything)
        t = time.perf_counter()
        crons = add_extras(sched, parts.held, parts.part, rows, now)
        times["add extras"].append(time.perf_counter() - t)
        parts.load_rows(jobs, now)
        t = time.perf_counter()
        add_crons(sched, parts.held, parts.part, crons, now)
        times["add crons"].append(time.perf_counter() - t)
        t = time.perf_counter()
        drop_extras(sched, set(third), parts.part)
        times["drop third"].append(time.perf_counter() - t)
    print(
        f"{args.jobs} jobs, {args.attempts} attempts, {args.dead} dead,"
        f" {args.crons} crons ({len(rows)} extras rows read); {PARTS} partitions"
    )
    print(f"{'open (back-fill)':>16}: {opened * 1000:8.1f} ms (once)")
    for what, samples in times.items():
        print(f"{what:>16}: {_ms(samples)}")


if __name__ == "__main__":
    main()
