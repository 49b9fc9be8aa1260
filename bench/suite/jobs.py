"""Job handlers of the library-driven systems (ours, arq, rq, pygearman).

Each worker process calls :func:`install` first; the handlers then count
their runs in shared memory (one cell per worker process, so no lock: a
process runs its handlers one after another, and rq's forked work horse
writes its parent's cell while the parent waits for it) and append one line
per run to the process's record file (``O_APPEND``, one ``write`` per line)
when the workload needs per-run times.

Handlers do no work of their own: the suite measures the scheduler, not the
job.
"""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any


class _State:
    __slots__ = ("counts", "fd", "idx", "last")

    def __init__(self, counts: Any, last: Any, idx: int, fd: int) -> None:
        self.counts = counts
        self.last = last
        self.idx = idx
        self.fd = fd


STATE: _State | None = None


def install(counts: Any, last: Any, idx: int, record_path: str) -> None:
    """Point this process's handlers at cell ``idx`` and its record file."""
    global STATE
    fd = os.open(record_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    STATE = _State(counts, last, idx, fd)


def mark() -> None:
    """Count one finished run (and its time)."""
    st = STATE
    assert st is not None, "jobs.install() was not called in this process"
    st.counts[st.idx] += 1
    st.last[st.idx] = time.time()


def record(line: str) -> None:
    """Append one line to this process's record file."""
    st = STATE
    assert st is not None, "jobs.install() was not called in this process"
    os.write(st.fd, line.encode())


def late_line(target: float) -> str:
    """Record line of a delayed run: lateness in seconds."""
    return f"{time.time() - target:.6f}\n"


def tick_line(name: str, target: float, now: float) -> str:
    """Record line of a periodic run: name, start time, due time."""
    return f"{name} {now:.6f} {target:.6f}\n"


# -- arq (coroutines taking ctx) ----------------------------------------------


async def arq_noop(ctx: dict[str, Any], i: int) -> None:
    """W1: nothing."""
    mark()


async def arq_late(ctx: dict[str, Any], target: float) -> None:
    """W2: record the lateness against ``target``."""
    record(late_line(target))
    mark()


async def arq_tick(ctx: dict[str, Any], name: str, target: float) -> None:
    """W5: record, then enqueue the next run one second from now (arq's way
    to run a job again later: ``_defer_by``)."""
    now = time.time()
    record(tick_line(name, target, now))
    mark()
    await ctx["redis"].enqueue_job("tick", name, now + 1.0, _defer_by=1.0)


# -- rq (plain functions, found by import path in the work horse) -------------


def rq_noop(i: int) -> None:
    """W1: nothing."""
    mark()


def rq_late(target: float) -> None:
    """W2: record the lateness against ``target``."""
    record(late_line(target))
    mark()


def rq_tick(name: str, target: float) -> None:
    """W5: record, then ``enqueue_in`` one second on the job's own queue."""
    from rq import Queue, get_current_job

    now = time.time()
    record(tick_line(name, target, now))
    mark()
    job = get_current_job()
    assert job is not None
    Queue(job.origin, connection=job.connection).enqueue_in(
        timedelta(seconds=1), rq_tick, name, now + 1.0
    )
