"""A/B of two versions of ``periodic_fast/scheduler.py`` on this machine.

Runs the runners of ``bench/bench_scheduler.py`` (lifecycle, submit due,
submit into the wheel) against two scheduler source files, interleaved round
by round, and reports CPU time (``time.process_time``) per operation: best
and median of the rounds and their ratio.  CPU time rather than wall time
keeps other processes on a shared machine mostly out of the figures.

    git show REV:periodic_fast/scheduler.py > /tmp/old.py
    .venv/bin/python bench/ab_scheduler.py /tmp/old.py periodic_fast/scheduler.py 15
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scheduler as b  # noqa: E402


def _load(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"periodic_fast.{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def main(old: str, new: str, rounds: int) -> None:
    kinds: dict[str, Callable[[], Callable[[], None]]] = {
        "lifecycle": b._lifecycle_runner,
        "submit_due": lambda: b._submit_runner(0),
        "submit_wheel": lambda: b._submit_runner(3600),
    }
    runners: dict[str, dict[str, Callable[[], None]]] = {}
    for label, path in (("old", old), ("new", new)):
        b.Scheduler = _load(path, f"_ab_{label}").Scheduler  # type: ignore[misc]
        runners[label] = {k: make() for k, make in kinds.items()}
    per_op: dict[str, dict[str, list[float]]] = {
        label: {k: [] for k in kinds} for label in runners
    }
    for _ in range(rounds):
        for label, table in runners.items():
            for kind, run in table.items():
                run()
                start = time.process_time()
                for _ in range(20):
                    run()
                per_op[label][kind].append((time.process_time() - start) / (20 * b.N))
    for kind in kinds:
        o, n = per_op["old"][kind], per_op["new"][kind]
        print(
            f"{kind:13s} best {1 / min(o):>10,.0f}/s -> {1 / min(n):>10,.0f}/s "
            f"({min(o) / min(n):.3f})   median {1 / statistics.median(o):>10,.0f}/s"
            f" -> {1 / statistics.median(n):>10,.0f}/s "
            f"({statistics.median(o) / statistics.median(n):.3f})"
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 10)
