"""CI smoke of the soak (bench/soak.py): 10 seconds of the mixed hostile
traffic against a server subprocess; every attack ran, normal jobs were
done, and the bounds held (RSS, PING p99).  The recorded 30-minute run is
in docs/security.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def test_soak_ten_seconds() -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    # the p99 bound is loose here: CI machines are shared and 10 samples are
    # few; the recorded long run holds the 50 ms bound
    proc = subprocess.run(
        [sys.executable, "bench/soak.py", "--seconds", "10", "--p99-bound", "1000"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert out.rstrip().endswith("PASS"), out
    rounds = dict(
        item.rsplit(" ", 1)
        for item in out.split("rounds: ", 1)[1].splitlines()[0].split(", ")
    )
    assert all(int(n) > 0 for n in rounds.values()), rounds
