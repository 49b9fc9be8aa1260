"""Issue 17 item 5: a restart fits in the memory of the running server.

The durable stores stream their jobs into the scheduler, so the records being
built are the only per-job memory: no list of every stored job stands beside
them.  Measured with tracemalloc (allocations, not RSS: exact and independent
of the machine), as the peak during ``Scheduler(store)`` over what stays.
"""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest
from pg_fixture import fresh_prefix, shared_cluster

from periodic_fast.job import Job, JobState
from periodic_fast.scheduler import Scheduler
from periodic_fast.store import Store
from periodic_fast.store.sqlite import SqliteStore

JOBS = 100_000


def _sqlite(tmp_path: Path) -> Callable[[], Store]:
    return lambda: SqliteStore(tmp_path / "jobs.db")


def _postgres(tmp_path: Path) -> Callable[[], Store]:
    from periodic_fast.store.postgres import PostgresStore, parse_postgres_uri

    connect, _ = parse_postgres_uri(shared_cluster().uri)
    prefix = fresh_prefix()
    return lambda: PostgresStore(connect, prefix=prefix)


@pytest.fixture(params=[_sqlite, _postgres], ids=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Store]:
    """Opens the same filled store again and again."""
    opener: Callable[[], Store] = request.param(tmp_path)
    store = opener()
    try:
        for i in range(JOBS):
            state = JobState.RUNNING if i % 100 == 0 else JobState.PENDING
            job = Job(b"f%d" % (i % 4), b"job-%08d" % i, b"w", 2**33 + i)
            store.save_job(job, state)
    finally:
        store.close()
    return opener


def test_load_is_a_stream(opener: Callable[[], Store]) -> None:
    store = opener()
    try:
        jobs = store.load().jobs
        assert not isinstance(jobs, (list, tuple))
        assert sum(1 for _ in jobs) == JOBS
    finally:
        store.close()


def test_an_abandoned_stream_frees_the_store(opener: Callable[[], Store]) -> None:
    """A start-up that fails half-way must not leave the writer locked out."""
    store = opener()
    try:
        jobs = iter(store.load().jobs)
        next(jobs)
        del jobs  # closed: the store's connection is free again
        store.save_job(Job(b"g", b"after", b"", 2**33), JobState.PENDING)
        store.flush()
    finally:
        store.close()


def test_restart_peak_stays_near_the_steady_state(
    opener: Callable[[], Store],
) -> None:
    store = opener()
    try:
        tracemalloc.start()
        try:
            sched = Scheduler(store, time.time())
            steady, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(sched.jobs()) == JOBS
        # with a list of every job beside the records the ratio was 2.1
        assert peak < 1.3 * steady, (peak, steady)
        store.flush()  # the running jobs were written back as pending
    finally:
        store.close()
    check = opener()
    try:
        assert {state for _, state in check.load().jobs} == {JobState.PENDING}
    finally:
        check.close()
