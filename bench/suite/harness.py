"""Submitters and workers in separate processes, timed by the coordinator.

:func:`run` forks ``nworkers`` worker processes and one submitter process per
part of the job list.  Every process signals ``ready`` when connected; the
coordinator then releases all submitters at once (``go``), collects each
submitter's (first send, last acknowledgement, accepted) and either waits
until the workers counted ``expect`` runs or lets them run for ``duration``
seconds.  Every wait is bounded; processes that do not stop are killed.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .common import wait_until

CTX = mp.get_context("fork")


@dataclass
class Shared:
    """Per-worker-process run counters and last-run times (shared memory)."""

    counts: Any
    last: Any

    @classmethod
    def new(cls, n: int) -> Shared:
        return cls(CTX.RawArray("q", n), CTX.RawArray("d", n))

    def done(self) -> int:
        return int(sum(self.counts))

    def t_last(self) -> float:
        return max(self.last) if len(self.last) else 0.0


@dataclass
class Run:
    """What one :func:`run` measured."""

    t_go: float
    t0: float  # first submit write
    t1: float  # last submit acknowledged
    submitted: int
    done: int
    t_done: float  # last counted run
    timed_out: bool
    records: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)

    @property
    def submit_rate(self) -> float:
        return self.submitted / (self.t1 - self.t0) if self.t1 > self.t0 else 0.0

    @property
    def completion_rate(self) -> float:
        return self.done / (self.t_done - self.t0) if self.t_done > self.t0 else 0.0


# worker target: (idx, shared, record_path, ready, stop) -> None
WorkerFn = Callable[[int, Shared, str, Any, Any], None]
# submitter target: (part, ready, go) -> (t0, t1, accepted)
SubmitFn = Callable[[Any, Any, Any], tuple[float, float, int]]


def _submitter(fn: SubmitFn, part: Any, ready: Any, go: Any, results: Any) -> None:
    try:
        t0, t1, n = fn(part, ready, go)
        results.put((t0, t1, n, ""))
    except BaseException as exc:  # reported to the coordinator
        results.put((0.0, 0.0, 0, f"{type(exc).__name__}: {exc}"))
        raise


def _stop_procs(procs: Sequence[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
            p.join(5)


def run(
    *,
    worker: WorkerFn | None,
    nworkers: int,
    submit: SubmitFn,
    parts: Sequence[Any],
    record_prefix: str,
    expect: int | None = None,
    duration: float | None = None,
    timeout: float = 300.0,
    stop_signal: int | None = None,
    on_go: Callable[[], None] | None = None,
) -> Run:
    """Run one measurement; see the module docstring.

    :param expect: wait until the workers counted this many runs.
    :param duration: or let them run this long after ``go``.
    :param stop_signal: also send this signal to each worker process at the
        end (rq workers stop on SIGTERM, not on a flag).
    """
    shared = Shared.new(max(1, nworkers))
    ready = CTX.Semaphore(0)
    go = CTX.Event()
    stop = CTX.Event()
    results = CTX.Queue()
    paths = [f"{record_prefix}-{i}.txt" for i in range(nworkers)]
    workers = [
        CTX.Process(target=worker, args=(i, shared, paths[i], ready, stop))
        for i in range(nworkers)
        if worker is not None
    ]
    subs = [
        CTX.Process(target=_submitter, args=(submit, part, ready, go, results))
        for part in parts
    ]
    faults: list[str] = []
    sub_results: list[tuple[float, float, int, str]] = []
    timed_out = False
    t_go = 0.0
    try:
        for p in workers + subs:
            p.start()
        for _ in workers + subs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a load generator process did not get ready")
        t_go = time.time()
        go.set()
        if on_go is not None:
            on_go()
        deadline = time.monotonic() + timeout
        for _ in subs:
            sub_results.append(
                results.get(timeout=max(1.0, deadline - time.monotonic()))
            )
        faults += [r[3] for r in sub_results if r[3]]
        if expect is not None and workers:
            timed_out = not wait_until(
                lambda: shared.done() >= expect, deadline - time.monotonic()
            )
        if duration is not None:
            time.sleep(max(0.0, t_go + duration - time.time()))
    finally:
        stop.set()
        go.set()
        if stop_signal is not None:
            for p in workers:
                if p.pid is not None and p.is_alive():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(p.pid, stop_signal)
        _stop_procs(subs, 30)
        _stop_procs(workers, 20)
    records: list[str] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            with open(path) as f:
                records += f.read().splitlines()
            os.unlink(path)
    oks = [r for r in sub_results if not r[3]] or [(t_go, t_go, 0, "")]
    return Run(
        t_go=t_go,
        t0=min(r[0] for r in oks),
        t1=max(r[1] for r in oks),
        submitted=sum(r[2] for r in oks),
        done=shared.done(),
        t_done=shared.t_last(),
        timed_out=timed_out,
        records=records,
        faults=faults,
    )


def split(items: Sequence[Any], n: int) -> list[list[Any]]:
    """``items`` dealt round-robin into ``n`` lists."""
    return [list(items[i::n]) for i in range(max(1, n))]


def lateness_ms(records: list[str]) -> list[float]:
    """Lateness records (seconds, one per line) in milliseconds."""
    return [float(x) * 1000.0 for x in records if x]


def periodic_stats(
    records: list[str], t_from: float, t_to: float, period: float = 1.0
) -> dict[str, float]:
    """Runs/s, lateness and period drift of periodic-run records.

    Lines are ``name start due``.  Counted: runs starting in
    ``[t_from, t_to)``.  Drift: per job, the mean period between its counted
    runs minus ``period`` (ms), summarised as median and max over jobs.
    """
    per_job: dict[str, list[float]] = {}
    late: list[float] = []
    n = 0
    for line in records:
        parts = line.split()
        if len(parts) != 3:
            continue
        start, due = float(parts[1]), float(parts[2])
        if not t_from <= start < t_to:
            continue
        n += 1
        late.append((start - due) * 1000.0)
        per_job.setdefault(parts[0], []).append(start)
    drifts = []
    for starts in per_job.values():
        if len(starts) >= 2:
            starts.sort()
            mean = (starts[-1] - starts[0]) / (len(starts) - 1)
            drifts.append((mean - period) * 1000.0)
    drifts.sort()
    out: dict[str, float] = {
        "runs": n,
        "runs_per_s": n / (t_to - t_from) if t_to > t_from else 0.0,
        "jobs_seen": len(per_job),
    }
    if drifts:
        out["drift_ms_p50"] = drifts[len(drifts) // 2]
        out["drift_ms_max"] = max(drifts, key=abs)
    if late:
        late.sort()
        out["lateness_ms_p50"] = late[len(late) // 2]
        out["lateness_ms_p99"] = late[min(len(late) - 1, int(0.99 * len(late)))]
    return out
