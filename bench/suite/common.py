"""Shared pieces of the suite: sizes, results, counters, RSS, percentiles."""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# -- result records -----------------------------------------------------------

OK = "ok"
NOT_SUPPORTED = "not supported"
NOT_INSTALLED = "not installed"
NOT_AVAILABLE = "not available"
ERROR = "error"

APT_PEERS = "apt-get install -y redis-server gearman-job-server gearman-tools"

Result = dict[str, Any]


def status(state: str, reason: str, **extra: Any) -> Result:
    """A result that carries no measurement, with the reason."""
    return {"status": state, "reason": reason, **extra}


# -- sizes --------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    """How much each workload does at one ``--size``.

    The ``*_peer`` fields scale a peer's share down where it is one or two
    orders of magnitude slower (the figures are rates, so N only has to be
    large enough for a steady state); every result records its own N.
    """

    name: str
    # W1 immediate throughput
    w1_jobs: int  # our server, raw-codec load generator
    w1_runs: int  # measured runs (after one warm-up), median reported
    w1_lib_jobs: int  # our Client.submit_many + Worker
    w1_arq: int
    w1_rq: int
    w1_gearman: int  # pygearman client + worker
    w1_gearman_c: int  # gearman(1) client and workers
    # W2 delayed-dispatch accuracy
    w2_jobs: int
    w2_spread: int  # whole seconds the due times are spread over
    w2_runs: int
    w2_rq: int
    # W3 scheduled memory (list: one measurement per entry)
    w3_jobs: tuple[int, ...]
    w3_arq: int
    w3_rq: int
    # W4 restart
    w4_jobs: tuple[int, ...]
    # W5 periodic jobs
    w5_jobs: int
    w5_arq: int
    w5_rq: int
    w5_seconds: float  # whole run; the first w5_warmup seconds are not counted
    w5_warmup: float
    # micro-benchmarks
    codec_repeats: int
    wheel_entries: int


SIZES: dict[str, Size] = {
    "tiny": Size(
        "tiny", 4_000, 1, 2_000, 500, 40, 500, 500,
        200, 2, 1, 40,
        (20_000,), 2_000, 300,
        (10_000,),
        100, 50, 5, 5.0, 2.0,
        1, 20_000,
    ),
    "small": Size(
        "small", 50_000, 2, 20_000, 5_000, 300, 5_000, 5_000,
        1_000, 3, 2, 150,
        (200_000,), 20_000, 2_000,
        (100_000,),
        1_000, 200, 20, 10.0, 3.0,
        3, 100_000,
    ),
    "default": Size(
        "default", 200_000, 3, 100_000, 20_000, 1_500, 20_000, 20_000,
        5_000, 5, 3, 500,
        (1_000_000,), 100_000, 20_000,
        (1_000_000,),
        5_000, 1_000, 50, 20.0, 5.0,
        5, 200_000,
    ),
    "full": Size(
        "full", 1_000_000, 3, 200_000, 50_000, 3_000, 50_000, 50_000,
        20_000, 10, 3, 1_000,
        (1_000_000, 10_000_000), 1_000_000, 100_000,
        (1_000_000, 10_000_000),
        10_000, 2_000, 100, 30.0, 5.0,
        9, 1_000_000,
    ),
}  # fmt: skip


# -- small helpers ------------------------------------------------------------


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid`` (``VmRSS`` of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settled_rss(pid: int, seconds: float = 1.0) -> int:
    """RSS after it stopped moving (bounded wait: at most ``seconds`` * 5)."""
    last = rss_bytes(pid)
    deadline = time.monotonic() + 5 * seconds
    while time.monotonic() < deadline:
        time.sleep(seconds / 4)
        cur = rss_bytes(pid)
        if abs(cur - last) < 256 * 1024:
            return cur
        last = cur
    return last


def percentiles(xs: Sequence[float]) -> dict[str, float]:
    """p50 / p99 / max / min / n of ``xs`` (need not be sorted); {} when empty."""
    if not xs:
        return {}
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"p50": q(0.50), "p99": q(0.99), "max": s[-1], "min": s[0], "n": len(s)}


def median(xs: Sequence[float]) -> float:
    """Median (nan for an empty sequence)."""
    if not xs:
        return math.nan
    s = sorted(xs)
    m = len(s) // 2
    return s[m] if len(s) % 2 else (s[m - 1] + s[m]) / 2


def wait_until(pred: Callable[[], bool], timeout: float, step: float = 0.005) -> bool:
    """Poll ``pred`` until true or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(step)
    return True


def uptime_load() -> str:
    """The three load averages of /proc/loadavg."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


@dataclass
class Context:
    """What every workload function gets."""

    size: Size
    tmpdir: str
    address: str  # our server given by --against ("" = start our own)
    store: str  # store URI of our started servers
    peers: tuple[str, ...]
    log: Callable[[str], None]
    arq_max_jobs: int = 10
    workers: int = 2  # worker processes of the library-driven systems
    submitters: int = 2  # submitter processes
    notes: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        """A file name in the run's temporary directory."""
        return os.path.join(self.tmpdir, name)
