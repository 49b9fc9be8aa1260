"""pytest-benchmark micro-benchmarks of the timer wheel, ids [c]/[py].

    .venv/bin/python -m pytest bench/bench_wheel.py --benchmark-only

The implementation fixture lives here (not in a shared bench/conftest.py) so
it cannot collide with the codec benchmarks' fixtures.
"""

from __future__ import annotations

import importlib
import random
from types import ModuleType
from typing import Any

import pytest

from periodic_fast._compat import NO_EXTENSIONS

BASE = 1_700_000_000
N = 10_000


@pytest.fixture(params=["c", "py"], scope="module")
def wheel_twin(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "c" and NO_EXTENSIONS:
        pytest.skip("C extensions disabled")
    return importlib.import_module(f"periodic_fast._wheel_{request.param}")


@pytest.fixture(scope="module")
def times() -> list[int]:
    rng = random.Random(0)
    return [BASE + rng.randrange(30 * 86400) for _ in range(N)]


def test_add(benchmark: Any, wheel_twin: ModuleType, times: list[int]) -> None:
    def run() -> None:
        w = wheel_twin.TimerWheel(BASE)
        add = w.add
        for i, t in enumerate(times):
            add(i, t)

    benchmark(run)


def test_reschedule(benchmark: Any, wheel_twin: ModuleType, times: list[int]) -> None:
    w = wheel_twin.TimerWheel(BASE)
    for i, t in enumerate(times):
        w.add(i, t)
    moved = times[::-1]

    def run() -> None:
        add = w.add
        for i, t in enumerate(moved):
            add(i, t)

    benchmark(run)


def test_add_cancel(benchmark: Any, wheel_twin: ModuleType, times: list[int]) -> None:
    def run() -> None:
        w = wheel_twin.TimerWheel(BASE)
        add, cancel = w.add, w.cancel
        for i, t in enumerate(times):
            add(i, t)
        for i in range(N):
            cancel(i)

    benchmark(run)


def test_add_expire(benchmark: Any, wheel_twin: ModuleType, times: list[int]) -> None:
    def run() -> None:
        w = wheel_twin.TimerWheel(BASE)
        add = w.add
        for i, t in enumerate(times):
            add(i, t)
        now = BASE
        while len(w):
            now += 3600
            w.advance(now)

    benchmark(run)


def test_burst_one_second(benchmark: Any, wheel_twin: ModuleType) -> None:
    def run() -> None:
        w = wheel_twin.TimerWheel(BASE)
        add = w.add
        for i in range(N):
            add(i, BASE + 5000)
        while len(w):
            w.advance(BASE + 5000, 1000)

    benchmark(run)


def test_next_due(benchmark: Any, wheel_twin: ModuleType, times: list[int]) -> None:
    w = wheel_twin.TimerWheel(BASE)
    for i, t in enumerate(times):
        w.add(i, t)

    def run() -> None:
        nd = w.next_due
        for _ in range(100):
            nd()

    benchmark(run)
