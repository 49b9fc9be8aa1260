"""Scheduler micro-benchmarks without sockets (pytest-benchmark API).

* ``test_lifecycle``: SUBMIT_JOB -> JOB_ASSIGN push -> JOB_ASSIGNED ->
  WORK_DONE -> GRAB_JOB, one worker connection with 8 grab slots and one
  client, ``N`` lifecycles per call (``lifecycles/s = N / mean``).
* ``test_submit_due`` / ``test_submit_future``: SUBMIT_JOB of fresh names, due
  now (ready queue, no worker) or in the future (timer wheel).

Which codec and wheel twins run follows ``PERIODIC_FAST_NO_EXTENSIONS``; the
ids say which.  Run ``pytest bench/bench_scheduler.py --benchmark-only`` or
``python bench/bench_scheduler.py`` for a plain ops/s print-out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from periodic_fast import codec, wheel
from periodic_fast.codec import encode_handle, encode_job
from periodic_fast.job import Job
from periodic_fast.scheduler import Scheduler
from periodic_fast.store.memory import MemoryStore

N = 1000  # operations per measured call
IMPL = f"codec-{codec.IMPLEMENTATION}-wheel-{wheel.IMPLEMENTATION}"
T0 = 1_700_000_000.0

SUBMIT, GRAB, DONE, ASSIGNED = 13, 1, 3, 33


def _sink(_: bytes) -> None:
    pass


def _noop() -> None:
    pass


def _lifecycle_runner() -> Callable[[], None]:
    s = Scheduler(MemoryStore(), T0)
    s.connect(1, 1, None, _sink, _noop, T0)  # client
    s.connect(2, 2, None, _sink, _noop, T0)  # worker
    handle = s.handle
    handle(2, 0, 7, b"\x04echo", T0)  # CAN_DO echo
    slots = 8
    for m in range(1, slots + 1):
        handle(2, m, GRAB, b"", T0)
    names = [b"job-%d" % i for i in range(slots)]
    submits = [encode_job(Job(b"echo", n, b"payload")) for n in names]
    dones = [encode_handle(b"echo", n) + b"result" for n in names]
    clock = [T0]

    def run() -> None:
        now = clock[0]
        for i in range(N):
            k = i & 7
            msgid = slots - k  # slots are used most-recent-first
            handle(1, 100 + i, SUBMIT, submits[k], now)  # -> JOB_ASSIGN msgid
            handle(2, msgid, ASSIGNED, b"", now)
            handle(2, 200 + i, DONE, dones[k], now)
            handle(2, msgid, GRAB, b"", now)
        now += 0.01
        clock[0] = now
        s.tick(now)  # the server ticks at least once a second

    return run


def _submit_runner(delay: int, rounds: int = 400) -> Callable[[], None]:
    """Fresh names each call (payloads encoded up front, outside the timing);
    after ``rounds`` calls the scheduler starts over empty."""
    at = int(T0) + delay if delay else 0
    payloads = [
        encode_job(Job(b"echo", b"n%d" % i, b"payload", at)) for i in range(N * rounds)
    ]
    state: list[Any] = [None, 0]

    def run() -> None:
        s, base = state
        if s is None or base >= len(payloads):
            s = Scheduler(MemoryStore(), T0)
            s.connect(1, 1, None, _sink, _noop, T0)
            base = 0
        handle = s.handle
        for i in range(base, base + N):
            handle(1, i, SUBMIT, payloads[i], T0)
        state[0] = s
        state[1] = base + N

    return run


@pytest.mark.parametrize("impl", [IMPL])
def test_lifecycle(benchmark: object, impl: str) -> None:
    run = _lifecycle_runner()
    benchmark(run)  # type: ignore[operator]


@pytest.mark.parametrize("impl", [IMPL])
def test_submit_due(benchmark: object, impl: str) -> None:
    benchmark(_submit_runner(0))  # type: ignore[operator]


@pytest.mark.parametrize("impl", [IMPL])
def test_submit_future(benchmark: object, impl: str) -> None:
    benchmark(_submit_runner(3600))  # type: ignore[operator]


def _rate(run: Callable[[], None], seconds: float = 1.0) -> float:
    run()  # warm-up
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    return calls * N / (time.perf_counter() - start)


if __name__ == "__main__":
    print(IMPL)
    print(f"lifecycles/s     {_rate(_lifecycle_runner()):>12,.0f}")
    print(f"submits/s (due)  {_rate(_submit_runner(0)):>12,.0f}")
    print(f"submits/s (wheel){_rate(_submit_runner(3600)):>12,.0f}")
