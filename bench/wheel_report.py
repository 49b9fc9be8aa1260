"""Timer wheel report: both twins against heapq and SortedList baselines.

Run from the repository root (after building the extension)::

    PYTHONHASHSEED=0 PYTHONPATH=. .venv/bin/python bench/wheel_report.py

Prints Markdown tables (throughput medians, ratios, memory per entry, worst
single limited advance).  Workload: ids 0..n-1, due times uniform over 30 days
from ``BASE``.  Baselines are what a scheduler would write without a wheel:
``heapq`` of ``(when, seq, id)`` with lazy deletion through a dict, and a
``SortedList`` of the same tuples with a dict for removal.  The pure-Python
twin and SortedList run at the small size only.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import importlib.util
import os
import platform
import random
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from sortedcontainers import SortedList

from periodic_fast import _wheel_py

try:
    from periodic_fast import _wheel_c
except ImportError:  # pragma: no cover
    _wheel_c = None  # type: ignore[assignment]

BASE = 1_700_000_000
SPAN = 30 * 86400
STEP = 3600  # advance in 1-hour steps
LIMIT = 100_000


# -- baselines with the wheel's API ------------------------------------------


class HeapWheel:
    """heapq of (when, seq, id) plus id -> seq; cancel/reschedule are lazy."""

    def __init__(self, now: int | None = None) -> None:
        self.heap: list[tuple[int, int, int]] = []
        self.live: dict[int, int] = {}
        self.seq = 0

    def add(self, job_id: int, when: int) -> None:
        self.seq += 1
        self.live[job_id] = self.seq
        heapq.heappush(self.heap, (when, self.seq, job_id))

    def cancel(self, job_id: int) -> bool:
        return self.live.pop(job_id, None) is not None

    def advance(self, now: int, limit: int | None = None) -> list[int]:
        heap, live, out = self.heap, self.live, []
        n = limit if limit is not None else 1 << 62
        while heap and heap[0][0] <= now and len(out) < n:
            _, seq, job_id = heapq.heappop(heap)
            if live.get(job_id) == seq:
                del live[job_id]
                out.append(job_id)
        return out

    def next_due(self) -> int | None:
        heap, live = self.heap, self.live
        while heap and live.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def __len__(self) -> int:
        return len(self.live)


class SortedWheel:
    """SortedList of (when, seq, id) plus id -> key; eager removal."""

    def __init__(self, now: int | None = None) -> None:
        self.sl: SortedList = SortedList()
        self.key: dict[int, tuple[int, int, int]] = {}
        self.seq = 0

    def add(self, job_id: int, when: int) -> None:
        old = self.key.get(job_id)
        if old is not None:
            self.sl.remove(old)
        self.seq += 1
        k = (when, self.seq, job_id)
        self.key[job_id] = k
        self.sl.add(k)

    def cancel(self, job_id: int) -> bool:
        k = self.key.pop(job_id, None)
        if k is None:
            return False
        self.sl.remove(k)
        return True

    def advance(self, now: int, limit: int | None = None) -> list[int]:
        end = self.sl.bisect_left((now + 1,))
        if limit is not None:
            end = min(end, limit)
        items = self.sl[:end]
        del self.sl[:end]
        for k in items:
            del self.key[k[2]]
        return [k[2] for k in items]

    def next_due(self) -> int | None:
        return self.sl[0][0] if self.sl else None

    def __len__(self) -> int:
        return len(self.key)


# -- measurements --------------------------------------------------------------


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def drain(w: Any, until: int) -> tuple[int, float]:
    """Advance in 1-hour steps up to ``until`` (limited calls, caller
    protocol); returns (ids returned, worst single call in seconds)."""
    got = 0
    worst = 0.0
    now = BASE
    ids: list[int] | None = None
    while now < until:
        now = min(now + STEP, until)
        while True:
            ids = None  # the caller's cost of freeing a result stays untimed
            t0 = time.perf_counter()
            ids = w.advance(now, LIMIT)
            d = time.perf_counter() - t0
            worst = max(worst, d)
            got += len(ids)
            nd = w.next_due()
            if nd is None or nd > now:
                break
    return got, worst


def run_once(factory: Callable[..., Any], n: int, seed: int, days: int) -> dict:
    rng = random.Random(seed)
    times = [BASE + rng.randrange(SPAN) for _ in range(n)]
    k = n // 5
    victims = rng.sample(range(n), k)
    moves = [BASE + rng.randrange(SPAN) for _ in range(k)]
    res: dict[str, float] = {}
    gc.collect()
    gc.disable()
    try:
        w = factory(BASE)
        add = w.add
        t0 = time.perf_counter()
        for i, t in enumerate(times):
            add(i, t)
        res["add"] = n / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i, t in zip(victims, moves, strict=True):
            add(i, t)
        res["reschedule"] = k / (time.perf_counter() - t0)
        cancel = w.cancel
        t0 = time.perf_counter()
        for i in victims:
            cancel(i)
        res["cancel"] = k / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        got, worst = drain(w, BASE + days * 86400)
        res["expire"] = got / (time.perf_counter() - t0)
        res["worst_ms"] = worst * 1e3
        del w
    finally:
        gc.enable()
    return res


def mixed(factory: Callable[..., Any], n: int, seed: int, rounds: int) -> float:
    """Pre-filled with n entries; each round: 1000 ops (40% add of a fresh
    or reused id, 30% reschedule, 30% cancel) then advance by 60 s (limited,
    caller protocol).  Returns ops/s (advance calls included)."""
    rng = random.Random(seed)
    w = factory(BASE)
    for i in range(n):
        w.add(i, BASE + rng.randrange(SPAN))
    script = []
    for _ in range(rounds):
        ops = []
        for _ in range(1000):
            r = rng.random()
            ops.append(
                (
                    0 if r < 0.4 else 1 if r < 0.7 else 2,
                    rng.randrange(n + n // 10),
                    rng.randrange(SPAN // 10),
                )
            )
        script.append(ops)
    gc.collect()
    gc.disable()
    now = BASE
    add, cancel, advance, next_due = w.add, w.cancel, w.advance, w.next_due
    t0 = time.perf_counter()
    count = 0
    for ops in script:
        for kind, job_id, off in ops:
            if kind == 2:
                cancel(job_id)
            else:
                add(job_id, now + 1 + off)
        now += 60
        while True:
            advance(now, 10_000)
            count += 1
            nd = next_due()
            if nd is None or nd > now:
                break
        count += len(ops)
    dt = time.perf_counter() - t0
    gc.enable()
    return count / dt


def cascade_worst(n: int, factory: Callable[..., Any]) -> tuple[float, float]:
    """n entries all in one level-3 slot (72 h block): the first advance into
    it must cascade all of them.  Worst single advance(now, 100_000) and the
    total drain rate."""
    rng = random.Random(7)
    start = (BASE // 64**3 + 1) * 64**3
    w = factory(BASE)
    for i in range(n):
        w.add(i, start + rng.randrange(64**3))
    worst = 0.0
    got = 0
    now = start + 64**3
    t_all = time.perf_counter()
    while len(w):
        t0 = time.perf_counter()
        ids = w.advance(now, LIMIT)
        worst = max(worst, time.perf_counter() - t0)
        got += len(ids)
        del ids  # freed outside the timed call
    rate = got / (time.perf_counter() - t_all)
    return worst * 1e3, rate


def memory(factory: Callable[..., Any], n: int, trace: bool) -> tuple[float, float]:
    """Bytes per entry: RSS difference and (optionally) tracemalloc."""
    rng = random.Random(3)
    times = [BASE + rng.randrange(SPAN) for _ in range(n)]
    gc.collect()
    r0 = rss()
    if trace:
        tracemalloc.start()
    w = factory(BASE)
    for i, t in enumerate(times):
        w.add(i, t)
    traced = float("nan")
    if trace:
        traced = tracemalloc.get_traced_memory()[0] / n
        tracemalloc.stop()
    gc.collect()
    per = (rss() - r0) / n
    del w
    return per, traced


def churn_memory(n: int, rounds: int) -> tuple[float, float]:
    """Bytes per live entry (tracemalloc) of the C twin after heavy
    rescheduling: n entries, then ``rounds`` x n random reschedules within
    the 30 days.  Returns (after the adds, after the churn)."""
    assert _wheel_c is not None
    rng = random.Random(5)
    tracemalloc.start()
    w = _wheel_c.TimerWheel(BASE)
    for i in range(n):
        w.add(i, BASE + rng.randrange(SPAN))
    before = tracemalloc.get_traced_memory()[0] / n
    for _ in range(rounds * n):
        w.add(rng.randrange(n), BASE + rng.randrange(SPAN))
    after = tracemalloc.get_traced_memory()[0] / len(w)
    tracemalloc.stop()
    del w
    return before, after


def load_extra(spec: str) -> tuple[str, Callable[..., Any]]:
    """``NAME=PATH``: a compiled wheel module file (e.g. an older build of
    ``_wheel_c`` under another module name) run as one more implementation."""
    name, path = spec.split("=", 1)
    mod_name = os.path.basename(path).split(".", 1)[0]
    ms = importlib.util.spec_from_file_location(mod_name, path)
    assert ms is not None and ms.loader is not None
    mod = importlib.util.module_from_spec(ms)
    ms.loader.exec_module(mod)
    return name, mod.TimerWheel


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--small", type=int, default=1_000_000)
    ap.add_argument("--big", type=int, default=10_000_000)
    ap.add_argument("--days", type=int, default=30, help="expiry window")
    ap.add_argument(
        "--extra",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="also run a compiled wheel module file (e.g. the previous build)",
    )
    ap.add_argument(
        "--impls", default="", help="comma-separated subset of the impl names"
    )
    ap.add_argument(
        "--churn", type=int, default=0, help="n for the rescheduling memory test"
    )
    a = ap.parse_args()

    impls: dict[str, Callable[..., Any]] = {}
    if _wheel_c is not None:
        impls["wheel c"] = _wheel_c.TimerWheel
    for spec in a.extra:
        name, factory = load_extra(spec)
        impls[name] = factory
    impls["wheel py"] = _wheel_py.TimerWheel
    impls["heapq"] = HeapWheel
    impls["SortedList"] = SortedWheel
    if a.impls:
        keep = a.impls.split(",")
        impls = {k: v for k, v in impls.items() if k in keep}
    compiled = [k for k in impls if k.startswith("wheel c")]

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"commit {commit}; Python {platform.python_version()}; "
        f"{platform.machine()} {os.cpu_count()} CPUs; {platform.processor()}"
    )
    print()
    cols = ["add", "reschedule", "cancel", "expire", "worst_ms"]
    for n, names, reps, days in (
        (a.small, list(impls), a.repeats, a.days),
        (a.big, [*compiled, "heapq"], 1, 3),
    ):
        names = [x for x in names if x in impls]
        if not n:
            continue
        print(
            f"### {n:,} entries over 30 days ({reps} run(s), median; expiry "
            f"over the first {days} days in 1-h steps, limit {LIMIT:,})\n"
        )
        print(
            "| impl | add M/s | reschedule M/s | cancel M/s | expire M/s "
            "| worst advance ms |"
        )
        print("|---|---|---|---|---|---|")
        rows = {}
        for name in names:
            runs = [run_once(impls[name], n, s, days) for s in range(reps)]
            rows[name] = {c: med([r[c] for r in runs]) for c in cols}
            r = rows[name]
            print(
                f"| {name} | "
                + " | ".join(
                    f"{r[c] / 1e6:.2f}" if c != "worst_ms" else f"{r[c]:.2f}"
                    for c in cols
                )
                + " |",
                flush=True,
            )
        for cname in compiled:
            if cname in rows and "heapq" in rows:
                c, h = rows[cname], rows["heapq"]
                print(
                    f"| {cname} / heapq | "
                    + " | ".join(f"{c[x] / h[x]:.1f}x" for x in cols[:4])
                    + " | |"
                )
        print()
        mixed_rates = {}
        for name in names:
            rounds = 200 if n <= a.small else 100
            mixed_rates[name] = med(
                [mixed(impls[name], n, s, rounds) for s in range(reps)]
            )
        print("| mixed workload (ops/s) | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        print(
            "| M ops/s | "
            + " | ".join(f"{mixed_rates[x] / 1e6:.2f}" for x in names)
            + " |"
        )
        for cname in compiled:
            if cname in mixed_rates and "heapq" in mixed_rates:
                print(
                    f"\nmixed: {cname} / heapq = "
                    f"{mixed_rates[cname] / mixed_rates['heapq']:.1f}x"
                )
        print(flush=True)

    if compiled and a.big:
        print(f"### Large cascade: {a.big:,} entries in one level-3 slot\n")
        for name in compiled:
            worst, rate = cascade_worst(a.big, impls[name])
            print(
                f"{name}: worst single advance(now, limit={LIMIT:,}): "
                f"{worst:.2f} ms; drain {rate / 1e6:.2f} M ids/s\n",
                flush=True,
            )

    if a.churn and _wheel_c is not None:
        before, after = churn_memory(a.churn, 3)
        print(f"### Memory under rescheduling: wheel c, {a.churn:,} entries\n")
        print(
            f"tracemalloc B/entry after the adds {before:.1f}, after "
            f"{3 * a.churn:,} random reschedules {after:.1f}\n",
            flush=True,
        )

    print("### Memory per entry\n")
    print("| impl | n | RSS B/entry | tracemalloc B/entry |")
    print("|---|---|---|---|")
    plan = [
        *[(x, a.big, True) for x in compiled],
        ("heapq", a.big, False),
        ("wheel py", a.small, True),
        ("SortedList", a.small, False),
    ]
    for name, n, trace in plan:
        if name not in impls or not n:
            continue
        # a fresh interpreter per measurement: RSS never shrinks after frees
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--memory-child",
                name,
                str(n),
                str(trace),
                *a.extra,
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        per, traced = float(out[0]), float(out[1])
        print(f"| {name} | {n:,} | {per:.1f} | {traced:.1f} |", flush=True)


def memory_child(name: str, n: int, trace: bool, extra: list[str]) -> None:
    impls: dict[str, Callable[..., Any]] = {
        "wheel py": _wheel_py.TimerWheel,
        "heapq": HeapWheel,
        "SortedList": SortedWheel,
    }
    if _wheel_c is not None:
        impls["wheel c"] = _wheel_c.TimerWheel
    for spec in extra:
        if spec.split("=", 1)[0] == name:
            impls[name] = load_extra(spec)[1]
    per, traced = memory(impls[name], n, trace)
    print(per, traced)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--memory-child"]:
        memory_child(sys.argv[2], int(sys.argv[3]), sys.argv[4] == "True", sys.argv[5:])
    else:
        sys.exit(main())
