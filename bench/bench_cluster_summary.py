"""What the cluster view costs a node's heartbeat (issue 18): building the
node's summary (``ClusterView.summary``: one pass over its jobs, like a
STATUS) and summing STATUS over the nodes (``ClusterView.status``).

    PYTHONPATH=. python bench/bench_cluster_summary.py [jobs] [funcs]

Prints the medians of 7 runs (ms) and the summary's size.  Run it with
``PERIODIC_FAST_NO_EXTENSIONS=1`` for the pure-Python twins.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field

from periodic_fast.job import Job
from periodic_fast.scheduler import Scheduler
from periodic_fast.server.cluster_view import ClusterView
from periodic_fast.store.memory import MemoryStore

T0 = 1_700_000_000.0


@dataclass
class _Parts:
    held: set[int] = field(default_factory=lambda: set(range(85)))
    count: int = 256


@dataclass
class _Node:
    node: str = "a"
    address: str | None = "tcp://a:5000"
    lease_time: float = 5.0
    parts: _Parts = field(default_factory=_Parts)
    alive: dict[str, float] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)
    members: dict[str, str | None] = field(default_factory=dict)


def _median_ms(fn: object) -> float:
    times = []
    for _ in range(7):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main() -> None:
    jobs = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    funcs = int(sys.argv[2]) if len(sys.argv) > 2 else 20
    sched = Scheduler(MemoryStore(), T0)
    for i in range(jobs):
        job = Job(b"f%d" % (i % funcs), b"j%d" % i, b"", int(T0) + 1000 + i)
        sched.submit(job, T0)
    node = _Node()
    view = ClusterView(node, sched, lambda: T0)
    raw = view.summary(T0)
    # two other nodes with the same figures
    node.alive = {"a": T0 + 5, "b": T0 + 5, "c": T0 + 5}
    node.summaries = {"b": raw, "c": raw}
    summary = _median_ms(lambda: view.summary(T0))
    status = _median_ms(lambda: view.status(T0))
    print(
        f"{jobs} jobs in {funcs} funcs: summary {summary:.2f} ms ({len(raw)} bytes),"
        f" cluster STATUS over 3 nodes {status:.2f} ms (medians of 7)"
    )


if __name__ == "__main__":
    main()
