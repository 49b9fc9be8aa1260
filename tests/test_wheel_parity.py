"""Hypothesis tests: each twin against a plain reference model, and the twin
under test against the spec twin (``_wheel_py``) call by call.

Reference model: ``id -> (due, seq)`` with ``due = max(when, T)`` (``T`` the
wheel's time) and ``seq`` the add counter; ``advance(now, limit)`` returns the
ids with ``due <= now`` sorted by ``(due, seq)``, at most ``limit``.  With a
small ``cascade_chunk`` a limited call may stop early: then it returns a
prefix and ``next_due() <= now`` must say so.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from periodic_fast import _wheel_py

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1
BASE = 1_700_000_000
YEAR = 365 * 86400

ids = st.one_of(
    st.integers(0, 20),  # heavy reuse
    st.sampled_from([2**31 - 1, 2**31, 2**32 - 1, 123_456_789]),
)
offsets = st.one_of(
    st.integers(-3, 3),
    st.sampled_from([0, 1, 63, 64, 65, 4095, 4096, 86400, YEAR, 40 * YEAR]),
    st.integers(-100, 100_000),
    st.integers(-(10**12), 10**12),
)
extreme = st.sampled_from([I64_MIN, I64_MAX, 2**62, -(2**62), 32503680000])
jumps = st.one_of(
    st.sampled_from([0, 0, 1, 1, 2, 63, 64, 4096, 86400, YEAR, 30 * YEAR]),
    st.integers(0, 100_000),
    st.integers(-10, -1),  # a backwards clock
)
limits = st.one_of(st.none(), st.integers(0, 6))


def _clamp(t: int) -> int:
    return max(I64_MIN, min(I64_MAX, t))


def machine_for(impl: ModuleType) -> type[RuleBasedStateMachine]:
    class WheelMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.model: dict[int, tuple[int, int]] = {}
            self.seq = 0
            self.now = BASE
            self.T = BASE
            self.dirty = False  # a present entry was cancelled or moved
            self.small_chunk = False
            self.wheel: Any = None

        @initialize(chunk=st.sampled_from([None, None, 1, 2, 5]))
        def start(self, chunk: int | None) -> None:
            if chunk is None:
                self.wheel = impl.TimerWheel(BASE)
            else:
                self.small_chunk = True
                self.wheel = impl.TimerWheel(BASE, cascade_chunk=chunk)

        def _add(self, job_id: int, when: int) -> None:
            if job_id in self.model:
                self.dirty = True
            self.wheel.add(job_id, when)
            self.model[job_id] = (max(when, self.T), self.seq)
            self.seq += 1

        @rule(job_id=ids, off=offsets)
        def add(self, job_id: int, off: int) -> None:
            self._add(job_id, _clamp(self.now + off))

        @rule(job_id=ids, when=extreme)
        def add_extreme(self, job_id: int, when: int) -> None:
            self._add(job_id, when)

        @rule(first=ids, n=st.integers(1, 40), off=offsets)
        def burst(self, first: int, n: int, off: int) -> None:
            when = _clamp(self.now + off)
            for k in range(n):
                self._add((first + k) % 64, when)

        @rule(job_id=ids)
        def cancel(self, job_id: int) -> None:
            present = job_id in self.model
            assert self.wheel.cancel(job_id) is present
            if present:
                del self.model[job_id]
                self.dirty = True

        @rule(jump=jumps, limit=limits)
        def advance(self, jump: int, limit: int | None) -> None:
            self.now = _clamp(self.now + jump)
            self.T = max(self.T, self.now)
            due = sorted((v, k) for k, v in self.model.items() if v[0] <= self.now)
            expected = [k for _, k in due]
            if limit is not None:
                expected = expected[:limit]
            got = self.wheel.advance(self.now, limit)
            if self.small_chunk and limit is not None and got != expected:
                assert got == expected[: len(got)]
                nd = self.wheel.next_due()
                assert nd is not None and nd <= self.now
            else:
                assert got == expected
            for k in got:
                del self.model[k]
            assert self.wheel.time == self.T

        @rule()
        def drain_to_now(self) -> None:
            # the caller protocol: loop while next_due() <= now
            expected = [
                k
                for _, k in sorted(
                    (v, k) for k, v in self.model.items() if v[0] <= self.now
                )
            ]
            got: list[int] = []
            for _ in range(10_000):
                got += self.wheel.advance(self.now, 3)
                nd = self.wheel.next_due()
                if nd is None or nd > self.now:
                    break
            assert got == expected
            for k in got:
                del self.model[k]

        @invariant()
        def consistent(self) -> None:
            if self.wheel is None:
                return
            assert len(self.wheel) == len(self.model)
            nd = self.wheel.next_due()
            if not self.model:
                assert nd is None
                self.dirty = False
                return
            true_min = min(v[0] for v in self.model.values())
            assert nd is not None and nd <= true_min
            if not self.dirty:
                assert nd == true_min
            for k in list(self.model)[:5]:
                assert k in self.wheel
                assert self.wheel.when(k) == self.model[k][0]

    return WheelMachine


def test_against_model(wheel_impl: ModuleType) -> None:
    run_state_machine_as_test(
        machine_for(wheel_impl),
        settings=settings(
            max_examples=400,
            stateful_step_count=80,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


# -- differential: the twin under test against the spec twin ----------------

op = st.one_of(
    st.tuples(st.just("add"), st.integers(0, 300), offsets),
    st.tuples(st.just("add"), st.integers(0, 2**32 - 1), offsets),
    st.tuples(st.just("cancel"), st.integers(0, 300), st.just(0)),
    st.tuples(st.just("advance"), jumps, limits),
)
scripts = st.tuples(
    st.sampled_from([None, 1, 3, 100]),
    st.lists(op, max_size=200),
)


def _run(impl: ModuleType, chunk: int | None, script: list[tuple[Any, ...]]) -> list:
    w = (
        impl.TimerWheel(BASE)
        if chunk is None
        else impl.TimerWheel(BASE, cascade_chunk=chunk)
    )
    now = BASE
    log: list[Any] = []
    for name, a, b in script:
        if name == "add":
            w.add(a, _clamp(now + b))
            log.append(w.when(a))
        elif name == "cancel":
            log.append(w.cancel(a))
        else:
            now = _clamp(now + a)
            log.append(w.advance(now, b))
        log.append((len(w), w.next_due(), w.time))
    return log


@settings(max_examples=300, deadline=None)
@given(case=scripts)
def test_twins_agree(wheel_impl: ModuleType, case: tuple[Any, list[Any]]) -> None:
    chunk, script = case
    assert _run(wheel_impl, chunk, script) == _run(_wheel_py, chunk, script)
