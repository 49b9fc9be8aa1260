"""Retry policies: the pure computation (periodic_fast.retry) and the sans-I/O
scheduler applying them with a fake clock (backoff timing, jitter, cap,
max_attempts -> dead set, what counts as a failure, what resets the count)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from test_scheduler import T0, FakeConn, Harness, assigns, cmds

from periodic_fast.constants import Command as C
from periodic_fast.job import Job, JobState
from periodic_fast.retry import (
    DEFAULT_POLICY,
    REFERENCE_POLICY,
    RetryPolicy,
    parse_policy_string,
)
from periodic_fast.scheduler import Scheduler
from periodic_fast.store.memory import MemoryStore

# -- the pure policy --------------------------------------------------------------


def test_base_delay_grows_by_factor_up_to_cap() -> None:
    p = RetryPolicy(max_attempts=0, backoff=2, factor=3, cap=100, jitter=0)
    assert [p.base_delay(n) for n in range(1, 7)] == [2, 6, 18, 54, 100, 100]


def test_base_delay_never_overflows() -> None:
    p = RetryPolicy(backoff=1, factor=1000, cap=3600, jitter=0)
    assert p.base_delay(10_000) == 3600
    assert RetryPolicy(backoff=5, factor=1, cap=3600).base_delay(10**9) == 5
    assert RetryPolicy(backoff=50, cap=10).base_delay(1) == 10  # cap below backoff


@pytest.mark.parametrize("u", [0.0, 0.25, 0.5, 0.999999])
def test_jitter_only_adds_and_stays_in_bounds(u: float) -> None:
    p = RetryPolicy(backoff=10, factor=2, cap=1000, jitter=0.3)
    for n in range(1, 12):
        base = p.base_delay(n)
        d = p.delay(n, lambda: u)
        assert base <= d < base * 1.3 + 1e-9
        assert math.isclose(d, base * (1 + 0.3 * u))


def test_a_bad_random_source_adds_nothing() -> None:
    p = RetryPolicy(backoff=10, jitter=1.0)
    assert p.delay(1, lambda: 5.0) == 10
    assert p.delay(1, lambda: -1.0) == 10


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 1.5}, "max_attempts must be an integer"),
        ({"max_attempts": True}, "max_attempts must be an integer"),
        ({"backoff": -0.5}, "backoff"),
        ({"factor": 0.5}, "factor"),
        ({"cap": -1}, "cap"),
        ({"cap": float("inf")}, "cap"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": float("nan")}, "jitter"),
        ({"backoff": "1"}, "backoff must be a number"),
    ],
)
def test_bad_values_are_refused_with_their_name(
    fields: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**fields)


def test_from_dict_keeps_missing_fields_and_refuses_unknown_ones() -> None:
    base = RetryPolicy(max_attempts=3, backoff=7)
    p = RetryPolicy.from_dict({"factor": 4}, base)
    assert (p.max_attempts, p.backoff, p.factor) == (3, 7.0, 4.0)
    with pytest.raises(ValueError, match="unknown policy field"):
        RetryPolicy.from_dict({"tries": 4})
    assert RetryPolicy.from_dict(p.to_dict()) == p


def test_policy_strings() -> None:
    assert parse_policy_string("reference") == REFERENCE_POLICY
    assert parse_policy_string("default") == DEFAULT_POLICY
    p = parse_policy_string("max_attempts=5, backoff=2,max-attempts=6")
    assert (p.max_attempts, p.backoff, p.factor) == (6, 2.0, DEFAULT_POLICY.factor)
    for bad in ("x", "backoff=abc", "nope=1", "jitter=2"):
        with pytest.raises(ValueError):
            parse_policy_string(bad)


def test_reference_preset_is_one_second_for_ever() -> None:
    p = REFERENCE_POLICY
    assert [p.delay(n, lambda: 0.9) for n in (1, 2, 50)] == [1.0, 1.0, 1.0]
    assert not p.exhausted(10**6)


def test_default_policy() -> None:
    p = DEFAULT_POLICY
    assert p.max_attempts == 25
    assert p.base_delay(1) == 1.0  # the reference's first retry
    assert p.exhausted(25) and not p.exhausted(24)
    total = sum(p.base_delay(n) for n in range(1, 25))
    assert 2 * 86400 < total < 3 * 86400  # the spread docs/retries.md states


# -- the scheduler ----------------------------------------------------------------


class RHarness(Harness):
    """The test_scheduler harness with retry settings and a fixed random."""

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        store: MemoryStore | None = None,
        u: float = 0.0,
        **kw: Any,
    ) -> None:
        super().__init__(store=store)
        self.u = u
        self.s = Scheduler(
            self.store,
            self.now,
            on_shutdown=self._shutdown,
            retry_policy=policy,
            retry_random=lambda: self.u,
            **kw,
        )

    def fail(self, w: FakeConn, name: bytes = b"a", func: bytes = b"f") -> None:
        assert cmds(w.req(C.WORK_FAIL, func, name)) == [C.SUCCESS]

    def run_once(self, w: FakeConn, msgid: int, name: bytes = b"a") -> None:
        """Wait (second by second, at most a day) for the job's assignment."""
        frames = w.grab(msgid)
        for _ in range(86400):
            got = assigns(frames + w.take())
            if got:
                assert got[0][1].name == name
                w.assigned(msgid)
                return
            self.advance(1)
            frames = []
        pytest.fail("never assigned")  # pragma: no cover

    def sched_at(self, name: bytes = b"a") -> int:
        got = self.s.job(b"f", name)
        assert got is not None
        return got[0].sched_at


def test_backoff_timing_with_a_fake_clock() -> None:
    h = RHarness(RetryPolicy(max_attempts=0, backoff=10, factor=2, cap=35, jitter=0))
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    delays = []
    for i in range(5):
        failed = int(h.now)
        h.fail(w)
        delays.append(h.sched_at() - failed)
        h.run_once(w, 10 + i)
    assert delays == [10, 20, 35, 35, 35]


def test_jitter_delays_the_retry_by_whole_seconds_only_forward() -> None:
    policy = RetryPolicy(max_attempts=0, backoff=100, factor=1, cap=100, jitter=0.5)
    for u, expected in ((0.0, 100), (0.5, 125), (0.99, 149)):
        h = RHarness(policy, u=u)
        w = h.worker(b"f", slots=[1])
        h.submit(b"f", b"a")
        w.assigned(1)
        h.fail(w)
        assert h.sched_at() - int(T0) == expected


def test_first_retry_of_the_default_is_the_next_second() -> None:
    h = RHarness(u=0.999)  # the most jitter the default can add
    w = h.worker(b"f", slots=[1])
    h.now += 0.7  # a failure inside a second: due at the next whole second
    h.submit(b"f", b"a")
    w.assigned(1)
    h.fail(w)
    assert h.sched_at() == int(T0) + 1


def test_max_attempts_moves_the_job_to_the_dead_set() -> None:
    h = RHarness(RetryPolicy(max_attempts=3, backoff=1, factor=1, cap=1, jitter=0))
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", b"payload", count=4, timeout=30)
    w.assigned(1)
    h.fail(w)
    h.run_once(w, 2)
    h.fail(w)
    assert h.s.job_failure(b"f", b"a") == {
        "attempts": 2,
        "last_failed_at": h.now,
        "last_worker": f"conn {w.id}",
        "reason": "fail",
        "dead": False,
    }
    h.run_once(w, 3)
    h.fail(w)
    assert h.s.job(b"f", b"a") is None  # left the live set
    assert h.dump() == []
    jobs, nxt, total = h.s.dead_jobs()
    assert (nxt, total) == (None, 1)
    [d] = jobs
    assert d.job == Job(b"f", b"a", b"payload", d.job.sched_at, 4, 30)
    assert (d.failure.attempts, d.failure.reason) == (3, "fail")
    c = h.s.counters()
    assert (c["retried"], c["dead"], c["fail"], c["dead_jobs"]) == (2, 1, 3, 1)
    assert h.status()[b"f"].jobs == 0
    # durable: the dead job is a store extra; the attempts extra is gone
    extras = h.store.load().extras or {}
    assert [(f, n) for f, n, _ in extras["dead"]] == [(b"f", b"a")]
    assert not extras.get("attempt")


def test_timeouts_count_as_failures() -> None:
    h = RHarness(RetryPolicy(max_attempts=2, backoff=1, factor=1, cap=1, jitter=0))
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", timeout=5)
    w.assigned(1)
    h.advance(7)
    info = h.s.job_failure(b"f", b"a")
    assert info is not None
    assert (info["attempts"], info["reason"]) == (1, "timeout")
    assert h.s.func_details(h.now)[0].failed == 1  # the func's failure counter
    h.run_once(w, 2)
    h.advance(7)
    assert h.s.job(b"f", b"a") is None
    [d], _, _ = h.s.dead_jobs(b"f")
    assert (d.failure.attempts, d.failure.reason) == (2, "timeout")
    assert h.s.counters()["timeout"] == 2


def test_a_lost_worker_counts_as_a_failure() -> None:
    h = RHarness(RetryPolicy(max_attempts=0, backoff=5, factor=1, cap=5, jitter=0))
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    h.disconnect(w)
    info = h.s.job_failure(b"f", b"a")
    assert info is not None
    assert (info["attempts"], info["reason"]) == (1, "lost")
    assert h.sched_at() == int(T0) + 5
    assert h.s.func_details(h.now)[0].failed == 0  # lost: not a WORK_FAIL


def test_done_and_a_new_submit_reset_the_count() -> None:
    h = RHarness(RetryPolicy(max_attempts=0, backoff=1, factor=1, cap=1, jitter=0))
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    h.fail(w)
    assert h.s.job_failure(b"f", b"a") is not None
    h.submit(b"f", b"a")  # pending again, by a new submission
    assert h.s.job_failure(b"f", b"a") is None
    h.run_once(w, 2)
    h.fail(w)
    h.run_once(w, 3)
    assert cmds(w.done(b"f", b"a")) == [C.SUCCESS]
    assert h.s.job_failure(b"f", b"a") is None
    assert not (h.store.load().extras or {}).get("attempt")


def test_run_job_waiter_gets_failed_and_nothing_is_counted() -> None:
    h = RHarness()
    w = h.worker(b"f", slots=[1])
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    w.assigned(1)
    h.fail(w)
    [p] = c.take()
    assert (p.command, p.payload) == (C.DATA, b"failed")
    assert h.s.job_failure(b"f", b"a") is None
    assert h.s.dead_jobs()[2] == 0


def test_per_func_policy_wins_over_the_default() -> None:
    h = RHarness(RetryPolicy(max_attempts=0, backoff=1, factor=1, cap=1, jitter=0))
    own = RetryPolicy(max_attempts=1, backoff=9, jitter=0)
    assert h.s.set_retry_policy(b"g", own, h.now)
    w = h.worker(b"f", b"g", slots=[1, 2])
    h.submit(b"f", b"a")
    h.submit(b"g", b"b")
    w.assigned(1)
    w.assigned(2)
    h.fail(w, b"a", b"f")
    h.fail(w, b"b", b"g")
    assert h.s.job(b"f", b"a") is not None
    assert h.s.job(b"g", b"b") is None  # one attempt: dead at once
    assert h.s.retry_policies() == (h.s.retry_policy(b"f"), {b"g": own})
    assert not h.s.set_retry_policy(b"f", None, h.now)  # no policy of its own
    assert h.s.set_retry_policy(b"g", None, h.now)
    assert h.s.retry_policy(b"g") == h.s.retry_policy(b"f")
    with pytest.raises(ValueError):
        h.s.set_retry_policy(b"a,b", own, h.now)


def test_the_reference_preset_never_buries() -> None:
    h = RHarness(REFERENCE_POLICY)
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    for i in range(40):
        failed = int(h.now)
        h.fail(w)
        assert h.sched_at() == failed + 1
        h.run_once(w, 10 + i)
    info = h.s.job_failure(b"f", b"a")
    assert info is not None and info["attempts"] == 40


def test_policies_and_failures_survive_a_restart() -> None:
    store = MemoryStore()
    h = RHarness(RetryPolicy(max_attempts=5, jitter=0), store=store)
    h.s.set_retry_policy(b"f", RetryPolicy(max_attempts=9, backoff=3), h.now)
    h.s.set_retry_policy(None, RetryPolicy(max_attempts=7), h.now)
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    h.fail(w)
    h2 = RHarness(RetryPolicy(max_attempts=5), store=store)
    default, funcs = h2.s.retry_policies()
    assert default.max_attempts == 7  # the stored default wins
    assert funcs[b"f"].max_attempts == 9
    info = h2.s.job_failure(b"f", b"a")
    assert info is not None and info["attempts"] == 1
    # reset: back to the operator's default
    h2.s.set_retry_policy(None, None, h2.now)
    assert h2.s.retry_policies()[0].max_attempts == 5


def test_no_extra_work_while_nothing_failed() -> None:
    h = RHarness()
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    w.done(b"f", b"a")
    assert h.s._attempts == {}  # the hot paths test this dict only
    assert h.store.load().extras in (None, {})
    assert h.now == T0
    assert h.s.job(b"f", b"a") is None or h.s.job(b"f", b"a")[1] == JobState.PENDING
