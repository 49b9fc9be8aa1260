"""A/B of two versions of ``periodic_fast/scheduler.py`` on this machine.

Runs the runners of ``bench/bench_scheduler.py`` (lifecycle, submit due,
submit into the wheel) against two scheduler versions, interleaved round
by round, and reports CPU time (``time.process_time``) per operation: best
and median of the rounds and their ratio.  CPU time rather than wall time
keeps other processes on a shared machine mostly out of the figures.

A version is a scheduler source file (a single-module scheduler only; it
then runs with this checkout's record twin, memory store and ``sched_*``
modules):

    git show REV:periodic_fast/scheduler.py > /tmp/old.py
    .venv/bin/python bench/ab_scheduler.py /tmp/old.py periodic_fast/scheduler.py 15

or a source tree (a checkout or ``git worktree`` with its extensions built),
whose scheduler with its ``sched_*`` modules, record twin (``_rec_c`` if
built, unless ``PERIODIC_FAST_NO_EXTENSIONS``; else ``_rec_py``) and memory
store are loaded together; needed when those changed with the scheduler:

    .venv/bin/python bench/ab_scheduler.py /work/main . 7
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_scheduler as b  # noqa: E402

import periodic_fast  # noqa: E402
from periodic_fast._compat import NO_EXTENSIONS  # noqa: E402
from periodic_fast.store.memory import MemoryStore  # noqa: E402


def _load(path: str, name: str, package: str = "periodic_fast") -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"{package}.{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _sched_modules() -> list[str]:
    return [k for k in sys.modules if k.startswith("periodic_fast.sched_")]


def _load_tree(root: Path, label: str) -> tuple[Any, Any]:
    """Scheduler and MemoryStore classes of the source tree ``root``, bound
    to that tree's record twin (loaded as ``periodic_fast.rec`` while the
    two modules import it)."""
    pkg = root / "periodic_fast"
    built = sorted(pkg.glob("_rec_c.*.so"))
    if built and not NO_EXTENSIONS:
        # an extension module is found by its file; its init symbol fixes
        # the last part of the name, so the two trees' twins differ in the
        # package part only
        loader = importlib.machinery.ExtensionFileLoader(
            f"_ab_{label}._rec_c", str(built[0])
        )
        spec = importlib.util.spec_from_loader(loader.name, loader)
        assert spec is not None
        twin = importlib.util.module_from_spec(spec)
        loader.exec_module(twin)
    else:
        twin = _load(str(pkg / "_rec_py.py"), f"_ab_{label}_rec_py")
    real = sys.modules.get("periodic_fast.rec")
    sys.modules["periodic_fast.rec"] = twin
    # a split scheduler imports its sched_* siblings: take them from this
    # tree as well (searched first), bound to this tree's twin
    saved = {k: sys.modules.pop(k) for k in _sched_modules()}
    path = periodic_fast.__path__
    periodic_fast.__path__ = [str(pkg), *path]
    try:
        sched = _load(str(pkg / "scheduler.py"), f"_ab_{label}")
        memory = _load(
            str(pkg / "store" / "memory.py"),
            f"_ab_{label}_memory",
            "periodic_fast.store",
        )
    finally:
        periodic_fast.__path__ = path
        for k in _sched_modules():
            del sys.modules[k]  # the loaded scheduler keeps its own
        sys.modules.update(saved)
        if real is not None:
            sys.modules["periodic_fast.rec"] = real
    print(f"{label}: {root} ({Path(twin.__file__ or '?').name})")
    return sched.Scheduler, memory.MemoryStore


def main(old: str, new: str, rounds: int) -> None:
    kinds: dict[str, Callable[[], Callable[[], None]]] = {
        "lifecycle": b._lifecycle_runner,
        "submit_due": lambda: b._submit_runner(0),
        "submit_wheel": lambda: b._submit_runner(3600),
    }
    runners: dict[str, dict[str, Callable[[], None]]] = {}
    for label, path in (("old", old), ("new", new)):
        if Path(path).is_dir():
            sched, store = _load_tree(Path(path).resolve(), label)
        else:
            sched, store = _load(path, f"_ab_{label}").Scheduler, MemoryStore
        b.Scheduler = sched  # type: ignore[misc]
        b.MemoryStore = store  # type: ignore[misc]
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
