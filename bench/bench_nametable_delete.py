"""NameTable deletion (and slot-order refill) time per order, both twins.

    .venv/bin/python bench/bench_nametable_delete.py [--sizes 100000,200000]
        [--before path/to/old/_rec_c.cpython-311-x86_64-linux-gnu.so]

For each size it builds a table of ``b"job-%d"`` records, then times popping
them all in slot (iteration) order, reverse slot order and random order, and
adding them into a fresh table in the full table's slot order ("copy").
``--before`` also loads an older build of the compiled twin (a copy of its
.so, e.g. one built at commit 90d9764, whose slot-order pops were quadratic)
and prints the before/after ratio; ``--before-max`` skips its sizes above
that (its 400k slot-order case runs for minutes).  Times are the best of
``--repeat`` runs, in seconds.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import random
import sys
import time
from pathlib import Path
from types import ModuleType

# this checkout's package, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ORDERS = ("slot", "reverse", "random", "copy")


def _load_so(path: str) -> ModuleType:
    """The compiled twin from ``path`` (module name _rec_c, another file)."""
    spec = importlib.util.spec_from_file_location("periodic_fast._rec_c", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _time(twin: ModuleType, n: int, order: str) -> float:
    table = twin.NameTable()
    for i in range(n):
        table.add(twin.JobRec(i, b"f", b"job-%d" % i))
    recs = table.values()  # slot order
    if order == "reverse":
        recs.reverse()
    elif order == "random":
        random.Random(1).shuffle(recs)
    if order == "copy":
        add = twin.NameTable().add
        t0 = time.perf_counter()
        for r in recs:
            add(r)
        return time.perf_counter() - t0
    pop = table.pop
    names = [r.name for r in recs]
    t0 = time.perf_counter()
    for name in names:
        pop(name)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100000,200000,400000")
    parser.add_argument("--before", help="an older _rec_c .so to compare with")
    parser.add_argument("--before-max", type=int, default=200_000)
    parser.add_argument("--orders", default=",".join(ORDERS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    twins: dict[str, ModuleType] = {
        "py": importlib.import_module("periodic_fast._rec_py")
    }
    try:
        twins["c"] = importlib.import_module("periodic_fast._rec_c")
    except ImportError:
        print("compiled twin not built: pure twin only")
    if args.before:
        twins["c-before"] = _load_so(args.before)
    for key, twin in twins.items():
        print(f"{key}: {twin.__file__}")
    print(f"{'n':>8} {'order':>8} " + " ".join(f"{k:>10}" for k in twins), end="")
    print("  before/after" if args.before and "c" in twins else "")
    for n in map(int, args.sizes.split(",")):
        for order in args.orders.split(","):
            row: dict[str, float] = {}
            for key, twin in twins.items():
                if key == "c-before" and n > args.before_max:
                    continue
                row[key] = min(_time(twin, n, order) for _ in range(args.repeat))
            cells = " ".join(
                f"{row[k]:10.3f}" if k in row else f"{'-':>10}" for k in twins
            )
            ratio = ""
            if "c-before" in row and "c" in row:
                ratio = f"  {row['c-before'] / row['c']:12.1f}x"
            print(f"{n:>8} {order:>8} {cells}{ratio}", flush=True)


if __name__ == "__main__":
    main()
