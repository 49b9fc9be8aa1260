"""Issue 17 item 5: a restart fits in the memory of the running server.

The store streams its jobs into the scheduler, so the records being built are
the only per-job memory: no list of every stored job stands beside them.
Measured with tracemalloc (allocations, not RSS: exact and independent of
the machine), as peak during ``Scheduler(store)`` over what stays after it.
"""

from __future__ import annotations

import time
import tracemalloc
from pathlib import Path

from periodic_fast.job import Job, JobState
from periodic_fast.scheduler import Scheduler
from periodic_fast.store.sqlite import SqliteStore

JOBS = 100_000


def _filled_store(path: Path) -> None:
    store = SqliteStore(path)
    try:
        for i in range(JOBS):
            state = JobState.RUNNING if i % 100 == 0 else JobState.PENDING
            job = Job(b"f%d" % (i % 4), b"job-%08d" % i, b"w", 2**33 + i)
            store.save_job(job, state)
    finally:
        store.close()


def test_sqlite_load_is_a_stream(tmp_path: Path) -> None:
    _filled_store(tmp_path / "jobs.db")
    store = SqliteStore(tmp_path / "jobs.db")
    try:
        jobs = store.load().jobs
        assert not isinstance(jobs, (list, tuple))
        assert sum(1 for _ in jobs) == JOBS
    finally:
        store.close()


def test_sqlite_restart_peak_stays_near_the_steady_state(tmp_path: Path) -> None:
    _filled_store(tmp_path / "jobs.db")
    store = SqliteStore(tmp_path / "jobs.db")
    try:
        tracemalloc.start()
        try:
            sched = Scheduler(store, time.time())
            steady, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(sched.jobs()) == JOBS
        # a list of every job beside the records doubled it (ratio 2.1)
        assert peak < 1.3 * steady, (peak, steady)
        store.flush()  # the running jobs were written back as pending
    finally:
        store.close()
    check = SqliteStore(tmp_path / "jobs.db")
    try:
        assert {state for _, state in check.load().jobs} == {JobState.PENDING}
    finally:
        check.close()
