"""The codec and timer-wheel micro-benchmarks, both twins, as suite results.

Runs the existing reports (bench/codec_report.py, bench/wheel_report.py) in
subprocesses at the size's scale and parses their Markdown tables, so the
figures stay those of the documented commands.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from .common import OK, Context, Result

BENCH = Path(__file__).resolve().parent.parent
ROOT = BENCH.parent


def parse_tables(text: str) -> list[list[dict[str, str]]]:
    """Every Markdown table in ``text`` as a list of {header: cell} rows."""
    tables: list[list[dict[str, str]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\|[-:| ]+\|$", lines[i + 1].strip())
        ):
            head = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = [c.strip() for c in lines[i].strip().strip("|").split("|")]
                rows.append(dict(zip(head, cells, strict=False)))
                i += 1
            tables.append(rows)
        else:
            i += 1
    return tables


def _run(argv: list[str], timeout: float) -> str:
    env = dict(os.environ, PYTHONHASHSEED="0")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )
    env.pop("PERIODIC_FAST_NO_EXTENSIONS", None)  # the reports load both twins
    out = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env=env,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{argv[0]} exited {out.returncode}: {out.stderr[-500:]}")
    return out.stdout


def ratio(cell: str) -> float | None:
    """``"28.3x"`` -> 28.3."""
    m = re.match(r"^([0-9.]+)x$", cell.strip())
    return float(m.group(1)) if m else None


def run(ctx: Context) -> dict[str, Result]:
    """Both reports; results keyed "codec" and "wheel"."""
    out: dict[str, Result] = {}
    reps = str(ctx.size.codec_repeats)
    argv = [str(BENCH / "codec_report.py"), "--repeats", reps]
    text = _run(argv, 900)
    tables = parse_tables(text)
    out["codec"] = {
        "status": OK,
        "command": "python bench/codec_report.py --repeats " + reps,
        "rows": tables[0] if tables else [],
        "markdown": text.strip(),
    }
    ctx.log(f"micro codec: {len(out['codec']['rows'])} scenarios")
    n = str(ctx.size.wheel_entries)
    argv = [
        str(BENCH / "wheel_report.py"),
        "--small",
        n,
        "--big",
        "0",
        "--repeats",
        "1",
        "--impls",
        "wheel c,wheel py,heapq",
    ]
    text = _run(argv, 1200)
    tables = parse_tables(text)
    wheel: dict[str, Any] = {
        "status": OK,
        "command": "python bench/wheel_report.py " + " ".join(argv[1:]),
        "entries": int(n),
        "throughput": tables[0] if tables else [],
        "mixed": tables[1] if len(tables) > 1 else [],
        "memory": tables[2] if len(tables) > 2 else [],
        "markdown": text.strip(),
    }
    out["wheel"] = wheel
    ctx.log(f"micro wheel: {len(wheel['throughput'])} rows at {int(n):,} entries")
    return out
