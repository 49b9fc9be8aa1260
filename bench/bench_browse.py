"""The job browser on a big func: index build, a page from the middle, and
what an index costs SUBMIT_JOB (docs/jobs.md, docs/benchmarks.md).

    .venv/bin/python bench/bench_browse.py [--jobs 1000000] [--repeat 15]
        [--ab 200000] [--ab-rounds 7]

Sans-I/O, on a :class:`~periodic_fast.scheduler.Scheduler` over the memory
store (the twin the environment selects): ``--jobs`` future jobs
``job-0000000``... in one func are submitted, then

* build: the first listing starts the func's name index; ticks run until it
  is complete (wall time, and the tick count: each tick is one slice);
* page: 50 jobs after the name ``job-<half>`` (the cursor of a page from the
  middle), state ``all`` and ``pending`` (one HTTP request's work without the
  HTTP layer), median and max of ``--repeat`` runs;
* A/B: ``--ab`` new jobs submitted into a func without an index and into one
  with an index (built first), rounds interleaved, CPU time per submit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

# this checkout's package, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from periodic_fast.job import Job  # noqa: E402
from periodic_fast.rec import IMPLEMENTATION  # noqa: E402
from periodic_fast.scheduler import Scheduler  # noqa: E402
from periodic_fast.store.memory import MemoryStore  # noqa: E402

T0 = 1_700_000_000.0
FUNC = b"big"


def _fill(s: Scheduler, func: bytes, n: int, start: int = 0) -> None:
    submit = s.submit
    at = int(T0) + 86_400
    for i in range(start, start + n):
        submit(Job(func, b"job-%07d" % i, b"", at, 0, 0), T0)


def _build(s: Scheduler, func: bytes) -> tuple[float, int]:
    t = time.perf_counter()
    assert s.list_jobs(func, "all", mono=T0) is None or not s._browser.building
    ticks = 0
    while s._browser.building:
        s.tick(T0)
        ticks += 1
    return time.perf_counter() - t, ticks


def bench_page(n: int, repeat: int) -> None:
    s = Scheduler(MemoryStore(), T0)
    t = time.perf_counter()
    _fill(s, FUNC, n)
    print(f"{n} jobs submitted in {time.perf_counter() - t:.1f} s")
    took, ticks = _build(s, FUNC)
    print(f"index build: {took * 1000:.0f} ms over {ticks} ticks "
          f"({took / max(ticks, 1) * 1000:.2f} ms per tick)")  # fmt: skip
    after = b"job-%07d" % (n // 2)
    for state in ("all", "pending"):
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            page = s.list_jobs(FUNC, state, after=after, limit=50, mono=T0)
            times.append(time.perf_counter() - t)
            assert page is not None and len(page.rows) == 50
            assert page.rows[0].name == b"job-%07d" % (n // 2 + 1)
        print(f"page of 50 after {after.decode()} (state={state}): "
              f"median {statistics.median(times) * 1000:.3f} ms, "
              f"max {max(times) * 1000:.3f} ms over {repeat} runs")  # fmt: skip


def bench_ab(n: int, rounds: int) -> None:
    plain: list[float] = []
    indexed: list[float] = []
    for _ in range(rounds):
        for label, out in (("plain", plain), ("indexed", indexed)):
            s = Scheduler(MemoryStore(), T0)
            _fill(s, FUNC, n)  # the func's existing jobs
            if label == "indexed":
                _build(s, FUNC)
            t = time.process_time()
            _fill(s, FUNC, n, start=n)  # new jobs: the hook's path
            out.append((time.process_time() - t) / n)
    p, i = statistics.median(plain), statistics.median(indexed)
    print(f"submit of a new job into a func of {n}..{2 * n} jobs, median of "
          f"{rounds} rounds (CPU): no index {p * 1e6:.2f} us, "
          f"index {i * 1e6:.2f} us (x{i / p:.2f})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--ab", type=int, default=200_000)
    ap.add_argument("--ab-rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"record twin: {IMPLEMENTATION}")
    bench_page(args.jobs, args.repeat)
    if args.ab:
        bench_ab(args.ab, args.ab_rounds)


if __name__ == "__main__":
    main()
