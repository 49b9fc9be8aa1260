"""The scheduler's statistics and read models (HTTP status page, /metrics).

:class:`SchedulerStats` holds the global counters, the lateness and run-time
histograms, the recent-events log and the counter samples behind the rates;
the scheduler bumps them with plain int and float increments on its hot
paths.  The named tuples are the snapshots that
:class:`~periodic_fast.scheduler.Scheduler` hands out to readers (funcs,
connections, locks).  Nothing here knows the scheduler's internals.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

if TYPE_CHECKING:
    from .job import FuncStat

__all__ = [
    "LATENESS_BUCKETS",
    "RUNTIME_BUCKETS",
    "ConnInfo",
    "Event",
    "FuncDetail",
    "Histogram",
    "LockInfo",
    "SchedulerStats",
    "StatusView",
]

#: Bucket upper bounds (seconds) of the lateness and run-time histograms.
LATENESS_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip
RUNTIME_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
)  # fmt: skip
_EVENTS_KEPT: Final = 200
_RATE_WINDOW: Final = 60.0  # per-minute rates look back this far


class StatusView(Protocol):
    """Where STATUS and the HTTP func views take their figures when they are
    not the scheduler's own: a cluster node answers the cluster's totals
    (``Scheduler.status_view``; docs/cluster.md "The cluster view")."""

    def status(self, now: float) -> list[FuncStat]:
        """Every func's STATUS line, sorted by func."""

    def func_stat(self, func: bytes, now: float) -> FuncStat | None:
        """One func's STATUS line, or None when no node knows it."""


class Histogram:
    """Fixed-bucket histogram: ``counts[i]`` observations ``<= bounds[i]``
    (not cumulative), the last slot for everything above."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with +inf."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Event(NamedTuple):
    """One line of the recent-events log."""

    time: float
    kind: str  #: connect, disconnect, fail, timeout, lost, remove, drop, config
    message: str


class FuncDetail(NamedTuple):
    """A func's counts and counters (:meth:`Scheduler.func_details`)."""

    func: bytes
    workers: int  #: connections that registered it
    jobs: int  #: stored jobs, any state (the queue depth)
    due: int  #: pending jobs whose time has come, waiting for a grab slot
    running: int
    locked: int
    next_due: int | None  #: earliest sched_at of a pending job
    oldest_due: int | None  #: sched_at of the oldest due job
    submitted: int  #: counters since start (or since the func was created)
    done: int
    failed: int
    sched_later: int


class ConnInfo(NamedTuple):
    """A registered connection (:meth:`Scheduler.connections`)."""

    id: int
    worker: bool
    identity: bytes | None  #: the registered identity name, if any
    funcs: tuple[bytes, ...]  #: funcs it registered (workers)
    slots: int  #: free grab slots
    running: int  #: confirmed assignments
    unconfirmed: int  #: assignments awaiting JOB_ASSIGNED
    last_seen: float


class LockInfo(NamedTuple):
    """A named lock (:meth:`Scheduler.locks`); entries are (func, name, since)."""

    name: bytes
    max: int
    holders: tuple[tuple[bytes, bytes, float], ...]
    waiting: tuple[tuple[bytes, bytes, float], ...]


class SchedulerStats:
    """Counters, histograms and recent events of one scheduler.

    Per-func counters (submit, done, fail, sched_later) live on the func
    records and are summed on read; the counters of dropped funcs are kept
    here so the totals never go down.  Everything is a plain int or float
    increment on the hot paths.
    """

    __slots__ = (
        "connects",
        "disconnects",
        "events",
        "lateness",
        "lost",
        "removed",
        "retired",
        "runtime",
        "samples",
        "started",
        "timeouts",
    )

    def __init__(self, now: float) -> None:
        self.started = now
        #: dispatch time - sched_at, at each job's first assignment
        self.lateness = Histogram(LATENESS_BUCKETS)
        #: assignment -> WORK_DONE / WORK_FAIL / SCHED_LATER of the same worker
        self.runtime = Histogram(RUNTIME_BUCKETS)
        self.timeouts = 0  #: per-assignment timeouts (treated as fail)
        self.lost = 0  #: running jobs re-queued because their worker went away
        self.removed = 0  #: jobs removed by REMOVE_JOB or HTTP
        self.connects = 0
        self.disconnects = 0
        #: submit, done, fail, sched_later of dropped funcs
        self.retired = [0, 0, 0, 0]
        self.events: deque[Event] = deque(maxlen=_EVENTS_KEPT)
        #: (time, submit, done, fail, sched_later) every 10 s, for the rates
        self.samples: deque[tuple[float, int, int, int, int]] = deque(maxlen=8)

    def event(self, now: float, kind: str, message: str) -> None:
        """Append to the recent-events log (bounded)."""
        self.events.append(Event(now, kind, message))

    def counters(self, totals: tuple[int, int, int, int]) -> dict[str, int]:
        """Monotonic totals since start; ``totals`` are submit, done, fail and
        sched_later summed over every func (dropped ones included)."""
        s, d, f, la = totals
        return {
            "submit": s,
            "done": d,
            "fail": f,
            "sched_later": la,
            "timeout": self.timeouts,
            "lost": self.lost,
            "removed": self.removed,
            "connects": self.connects,
            "disconnects": self.disconnects,
        }

    def rates(self, totals: tuple[int, int, int, int], now: float) -> dict[str, float]:
        """submit, done, fail and sched_later per minute over about the last
        minute, from the current ``totals`` and the 10 s counter samples."""
        base: tuple[float, int, int, int, int] = (self.started, 0, 0, 0, 0)
        for sample in self.samples:  # oldest first
            if sample[0] > now - _RATE_WINDOW:
                break
            base = sample
        scale = 60.0 / max(now - base[0], _RATE_WINDOW)
        keys = ("submit", "done", "fail", "sched_later")
        return {
            k: (c - b) * scale for k, c, b in zip(keys, totals, base[1:], strict=True)
        }
