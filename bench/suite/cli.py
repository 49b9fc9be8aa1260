"""``python -m bench``: the whole suite with one command.

::

    .venv/bin/python -m bench                       # default size, all peers
    .venv/bin/python -m bench --full                # 10M scheduled jobs too
    .venv/bin/python -m bench --only W1,W3 --peers arq
    .venv/bin/python -m bench --against tcp://127.0.0.1:5000 --peers none

Writes ``results.json``, ``results.md`` and PNG plots into ``--out``
(default ``bench/results/<UTC timestamp>/``).  A step that fails is recorded
as "error" with its reason and the suite goes on; the exit status is 1 when
any step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

from . import micro, ours, peers, report
from .common import ERROR, SIZES, Context, Result, status, uptime_load
from .procs import version_of, which

WORKLOADS = ("W1", "W2", "W3", "W4", "W5")
ALL = ("micro", *WORKLOADS)
PEERS = ("arq", "rq", "gearman")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _csv(value: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    if value.strip().lower() in ("", "none"):
        return ()
    items = tuple(x.strip() for x in value.split(",") if x.strip())
    low = {a.lower(): a for a in allowed}
    out = []
    for x in items:
        if x.lower() not in low:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {x!r} (choose from {', '.join(allowed)})"
            )
        out.append(low[x.lower()])
    return tuple(out)


def _against(value: str) -> str:
    if not value:
        return ""
    if not re.fullmatch(
        r"tcp://[^\s:/]+:\d{1,5}|tcp://\[[0-9a-fA-F:]+\]:\d{1,5}", value
    ):
        raise argparse.ArgumentTypeError(f"expected tcp://HOST:PORT, got {value!r}")
    return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="periodic_fast benchmark suite: micro-benchmarks, workloads "
        "W1-W5 on our server and on arq, rq and gearmand, one results folder.",
    )
    p.add_argument(
        "--size",
        choices=list(SIZES),
        default="default",
        help="how much each workload does (tiny: CI smoke)",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="same as --size full (10 million scheduled jobs)",
    )
    p.add_argument(
        "--against",
        type=_against,
        default="",
        metavar="tcp://HOST:PORT",
        help="measure this Periodic server instead of starting ours",
    )
    p.add_argument(
        "--store",
        default=":memory:",
        help="store URI (-p) of the servers the suite starts",
    )
    p.add_argument(
        "--only",
        default=",".join(ALL),
        metavar="W1,W3,...",
        type=lambda v: _csv(v, ALL, "workload"),
        help=f"steps to run, from {','.join(ALL)}",
    )
    p.add_argument(
        "--peers",
        default=",".join(PEERS),
        metavar="arq,rq,gearman",
        type=lambda v: _csv(v, PEERS, "peer"),
        help="peers to compare against ('none': ours only)",
    )
    p.add_argument(
        "--arq-max-jobs",
        type=int,
        default=10,
        help="arq Worker max_jobs (its default: 10)",
    )
    p.add_argument("--out", default="", help="results folder")
    a = p.parse_args(argv)
    if a.full:
        a.size = "full"
    if a.arq_max_jobs < 1:
        p.error("--arq-max-jobs must be >= 1")
    return a


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for pkg in (
        "periodic-fast",
        "uvloop",
        "arq",
        "rq",
        "redis",
        "pygearman",
        "rich",
        "matplotlib",
    ):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    for name, argv in (
        ("redis-server", ["redis-server", "--version"]),
        ("gearmand", ["gearmand", "--version"]),
    ):
        path = which(argv[0])
        out[name] = version_of([path, *argv[1:]]) if path else "not installed"
    return out


def _machine() -> dict[str, Any]:
    from bench import e2e

    facts = e2e.machine_facts(e2e.implementations())
    with contextlib.suppress(OSError):
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "periodic_fast"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=False,
        ).stdout.split("\n")
        # uncommitted server code measured along (other work in progress)
        facts["uncommitted"] = ", ".join(x[3:] for x in dirty if x.strip()) or "none"
    with contextlib.suppress(OSError):
        with open("/proc/meminfo") as f:
            facts["mem_total_gb"] = round(int(f.readline().split()[1]) / 1e6, 1)
    return facts


Step = tuple[str, str, Callable[[], dict[str, Result]]]


def plan(a: argparse.Namespace, ctx: Context) -> list[Step]:
    """(workload, label, thunk) in run order; peers after ours per workload."""
    steps: list[Step] = []
    if "micro" in a.only:
        steps.append(
            ("micro", "micro-benchmarks (codec, wheel)", lambda: micro.run(ctx))
        )
    for w in WORKLOADS:
        if w not in a.only:
            continue
        steps.append(
            (w, f"{w} periodic_fast", functools.partial(ours.WORKLOADS[w], ctx))
        )
        for peer in a.peers:
            why = peers.missing(peer)
            if why is not None:
                thunk = functools.partial(peers.not_installed, peer, why)
            else:
                thunk = functools.partial(peers.WORKLOADS[w], ctx, peer)
            steps.append((w, f"{w} {peer}", thunk))
    return steps


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite; 0 when every step succeeded."""
    a = parse_args(argv)
    size = SIZES[a.size]
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = a.out or os.path.join(ROOT, "bench", "results", stamp)
    os.makedirs(out_dir, exist_ok=True)
    console = Console(stderr=True)
    tmp = tempfile.mkdtemp(prefix="pf-bench-")
    log_path = os.path.join(out_dir, "suite.log")
    log_file = open(log_path, "a")

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        log_file.write(line + "\n")
        log_file.flush()
        console.print(line, highlight=False)

    ctx = Context(
        size=size,
        tmpdir=tmp,
        address=a.against,
        store=a.store,
        peers=a.peers,
        log=log,
        arq_max_jobs=a.arq_max_jobs,
    )
    t_start = time.time()
    res: dict[str, Any] = {
        "meta": {
            "command": "python -m bench "
            + shlex.join(sys.argv[1:] if argv is None else argv),
            "size": a.size,
            "sizes": size.__dict__,
            "started": stamp,
            "load_before": uptime_load(),
            "against": a.against or None,
            "store": a.store,
            "peers": list(a.peers),
            "machine": _machine(),
            "versions": _versions(),
        },
        "workloads": {},
    }
    failed = 0
    steps = plan(a, ctx)
    try:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            bar = progress.add_task("suite", total=len(steps))
            for w, label, thunk in steps:
                progress.update(bar, description=label)
                t = time.time()
                try:
                    got = thunk()
                except Exception as exc:
                    failed += 1
                    log(f"{label}: ERROR {type(exc).__name__}: {exc}")
                    log_file.write(traceback.format_exc())
                    name = label.split(" ", 1)[1] if w != "micro" else "micro"
                    got = {name: status(ERROR, f"{type(exc).__name__}: {exc}"[:300])}
                log(f"{label}: {time.time() - t:.1f} s")
                if w == "micro":
                    res["micro"] = got
                else:
                    res["workloads"].setdefault(w, {}).update(got)
                res["meta"]["duration_s"] = time.time() - t_start
                res["meta"]["load_after"] = uptime_load()
                with open(os.path.join(out_dir, "results.json"), "w") as f:
                    json.dump(res, f, indent=2, default=str)
                progress.advance(bar)
        report.write(res, out_dir)
    finally:
        log_file.close()
        shutil.rmtree(tmp, ignore_errors=True)
    for g in res.get("goals", []):
        console.print(f"{g['goal']}: {g['value']} [{g['verdict']}] {g['note']}")
    console.print(f"results: {out_dir} ({time.time() - t_start:.0f} s)")
    return 1 if failed else 0
