"""Cron schedules in the sans-I/O scheduler (docs/cron.md): the job comes
back after WORK_DONE, leaves with its schedule, survives a restart (memory
and SQLite stores) and catches up missed runs by its policy, also when the
wall clock jumps forward."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from periodic_fast import cron
from periodic_fast.constants import Command as C
from periodic_fast.job import Job, JobState
from periodic_fast.sched_cron import CRON_JUMP, CronRefused
from periodic_fast.sched_crontab import CronEntry
from periodic_fast.store import Store
from periodic_fast.store.memory import MemoryStore
from periodic_fast.store.sqlite import SqliteStore
from tests.test_scheduler import Harness, assigns, cmds

UTC = ZoneInfo("UTC")
# 2026-01-05 10:00:30 UTC, a Monday: 30 s into a minute
T0 = datetime(2026, 1, 5, 10, 0, 30, tzinfo=UTC).timestamp()
F, N = b"report", b"daily"
# the tests move the clock by minutes at a time and do not confirm
# assignments: no keepalive, accepted on send
CONFIG = {"keepalive": 0, "assign-wait": 0}


def minute(t: float) -> int:
    """The start of the minute after ``t``."""
    return (int(t) // 60 + 1) * 60


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Stores:
    """Opens the same store again, as a restart would."""

    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.path = tmp / "cron.db"
        self.memory = MemoryStore()
        self.opened: list[Store] = []

    def open(self) -> Store:
        if self.kind == "memory":
            return self.memory
        for s in self.opened:
            s.flush()
            s.close()
        store = SqliteStore(self.path, retry_min=0.005, retry_max=0.05)
        self.opened.append(store)
        return store


@pytest.fixture
def stores(store_kind: str, tmp_path: Path) -> Iterator[Stores]:
    st = Stores(store_kind, tmp_path)
    yield st
    for s in st.opened:
        s.close()


def harness(store: Store | None = None, now: float = T0) -> Harness:
    return Harness(now=now, store=store, config=CONFIG)  # type: ignore[arg-type]


def add(h: Harness, expr: str = "*/5 * * * *", **kw: object) -> int:
    args = {"tz": "UTC", "missed": "once", "args": b"w", "timeout": 0}
    args.update(kw)
    return h.s.add_cron(F, N, expr, now=h.now, **args)  # type: ignore[arg-type]


def job(h: Harness) -> tuple[Job, JobState]:
    got = h.s.job(F, N)
    assert got is not None
    return got


# -- creation and the run cycle -------------------------------------------------


def test_add_submits_the_job_at_the_next_fire() -> None:
    h = harness()
    nxt = add(h)
    assert nxt == cron.next_fire("*/5 * * * *", "UTC", T0) == T0 - 30 + 300
    j, state = job(h)
    assert (j.sched_at, j.workload, j.count, state) == (nxt, b"w", 0, JobState.PENDING)
    [info] = h.s.cron_schedules(None, h.now)
    assert (info.func, info.name, info.cron, info.tz, info.missed) == (
        F,
        N,
        "*/5 * * * *",
        "UTC",
        "once",
    )
    assert info.next_run == nxt and info.state == "pending"
    assert h.s.cron_schedules(b"other", h.now) == []


def test_done_reschedules_at_the_next_fire_after_now() -> None:
    h = harness()
    first = add(h, timeout=30)
    w = h.worker(F, slots=[1])
    h.advance(first - h.now)
    [(_, got)] = assigns(w.take())
    assert got.sched_at == first and got.timeout == 30
    h.advance(20)  # the run takes 20 s (timeout 30)
    assert cmds(w.done(F, N)) == [C.SUCCESS]
    j, state = job(h)
    assert state == JobState.PENDING
    assert j.sched_at == first + 300 == cron.next_fire("*/5 * * * *", "UTC", h.now)
    assert j.workload == b"w" and j.timeout == 30
    assert h.status()[F].jobs == 1
    # and it runs again there, on the same worker's next grab
    w.grab(2)
    h.advance(first + 300 - h.now)
    [(_, again)] = assigns(w.take())
    assert again.sched_at == first + 300
    assert cmds(w.done(F, N)) == [C.SUCCESS]
    assert job(h)[0].sched_at == first + 600


def test_done_resets_count_and_keeps_a_replaced_workload() -> None:
    h = harness()
    first = add(h)
    # a SUBMIT of the same name replaces the job, the schedule stays
    h.submit(F, N, b"new", sched_at=int(h.now) + 10, count=3)
    assert job(h)[0].sched_at == int(h.now) + 10
    w = h.worker(F, slots=[1])
    h.advance(10)
    [(_, got)] = assigns(w.take())
    assert got.workload == b"new" and got.count == 3
    assert cmds(w.done(F, N)) == [C.SUCCESS]
    j, _ = job(h)
    assert (j.sched_at, j.workload, j.count) == (first, b"new", 0)
    assert len(h.s.cron_schedules(None, h.now)) == 1


def test_sched_later_and_fail_keep_the_schedule() -> None:
    h = harness()
    first = add(h)
    w = h.worker(F, slots=[1])
    h.advance(first - h.now)
    assert assigns(w.take())
    assert cmds(w.req(C.SCHED_LATER, F, N, 7, 1)) == [C.SUCCESS]
    j, _ = job(h)
    assert j.sched_at == first + 7 and j.count == 1  # honoured as today
    w.grab(2)
    h.advance(7)
    assert assigns(w.take())
    assert cmds(w.req(C.WORK_FAIL, F, N)) == [C.SUCCESS]
    assert h.s.job(F, N) is not None  # whatever the fail path does, it stays
    assert h.s.cron_count == 1


def test_running_job_shows_its_next_fire() -> None:
    h = harness()
    first = add(h)
    h.worker(F, slots=[1])
    h.advance(first - h.now + 1)
    [info] = h.s.cron_schedules(None, h.now)
    assert info.state == "running" and info.next_run == first + 300


def test_re_adding_replaces_the_schedule_and_the_job() -> None:
    h = harness()
    add(h)
    nxt = add(h, "0 12 * * *", tz="Europe/Paris", missed="skip", args=b"x")
    assert nxt == datetime(2026, 1, 5, 11, 0, tzinfo=UTC).timestamp()
    [info] = h.s.cron_schedules(F, h.now)
    assert (info.cron, info.tz, info.missed, info.next_run) == (
        "0 12 * * *",
        "Europe/Paris",
        "skip",
        nxt,
    )
    assert job(h)[0].workload == b"x"


def test_bad_input_is_refused_and_nothing_changes() -> None:
    h = harness()
    for expr, kw in [
        ("61 * * * *", {}),
        ("* * * *", {}),
        ("@reboot", {}),
        ("* * * * *", {"tz": "Mars/Base"}),
        ("* * * * *", {"missed": "twice"}),
    ]:
        with pytest.raises(ValueError):
            add(h, expr, **kw)
    with pytest.raises(ValueError):  # submit()'s own checks
        h.s.add_cron(b"a,b", N, "* * * * *", "UTC", "once", b"", 0, h.now)
    with pytest.raises(ValueError):
        h.s.add_cron(F, b"", "* * * * *", "UTC", "once", b"", 0, h.now)
    assert h.s.cron_count == 0 and h.s.jobs() == []


def test_limits_refuse_a_schedule() -> None:
    h = harness()
    h.s._max_jobs = 1
    h.submit(F, b"other", sched_at=int(T0) + 999)
    with pytest.raises(CronRefused):
        add(h)
    assert h.s.cron_count == 0


def test_max_schedules(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("periodic_fast.sched_cron.MAX_SCHEDULES", 2)
    h = harness()
    for n in (b"a", b"b"):
        h.s.add_cron(F, n, "* * * * *", "UTC", "once", b"", 0, h.now)
    h.s.add_cron(F, b"a", "*/2 * * * *", "UTC", "once", b"", 0, h.now)  # replace
    with pytest.raises(CronRefused, match="2 cron schedules"):
        h.s.add_cron(F, b"c", "* * * * *", "UTC", "once", b"", 0, h.now)


# -- leaving the live set -------------------------------------------------------


def test_remove_job_drops_the_schedule(stores: Stores) -> None:
    h = harness(stores.open(), T0)
    add(h)
    assert cmds(h.client().req(C.REMOVE_JOB, F, N)) == [C.SUCCESS]
    assert h.s.cron_count == 0 and h.s.job(F, N) is None
    h2 = harness(stores.open(), T0 + 1)  # and not back after a restart
    assert h2.s.cron_count == 0 and h2.s.job(F, N) is None


def test_remove_while_running_then_done_does_not_resurrect() -> None:
    h = harness()
    first = add(h)
    w = h.worker(F, slots=[1])
    h.advance(first - h.now)
    assert assigns(w.take())
    assert h.s.remove(F, N, h.now)
    assert cmds(w.done(F, N)) == [C.SUCCESS]
    assert h.s.job(F, N) is None and h.s.cron_count == 0


def test_drop_func_drops_its_schedules_only(stores: Stores) -> None:
    h = harness(stores.open(), T0)
    add(h)
    h.s.add_cron(F, b"two", "@hourly", "UTC", "once", b"", 0, h.now)
    h.s.add_cron(b"keep", N, "@daily", "UTC", "once", b"", 0, h.now)
    assert cmds(h.client().req(C.DROP_FUNC, F)) == [C.SUCCESS]
    assert [(i.func, i.name) for i in h.s.cron_schedules(None, h.now)] == [(b"keep", N)]
    h2 = harness(stores.open(), T0 + 1)
    assert [(i.func, i.name) for i in h2.s.cron_schedules(None, h2.now)] == [
        (b"keep", N)
    ]


def test_remove_cron_removes_schedule_and_job() -> None:
    h = harness()
    add(h)
    assert h.s.remove_cron(F, N, h.now)
    assert h.s.job(F, N) is None and h.s.cron_count == 0
    assert not h.s.remove_cron(F, N, h.now)
    h.submit(F, N)  # a plain job is no schedule
    assert not h.s.remove_cron(F, N, h.now)
    assert h.s.job(F, N) is not None


def test_plain_done_still_deletes_while_schedules_exist() -> None:
    h = harness()
    add(h)
    h.submit(F, b"plain")
    w = h.worker(F, slots=[1])
    [(_, got)] = assigns(w.take())
    assert got.name == b"plain"
    assert cmds(w.done(F, b"plain")) == [C.SUCCESS]
    assert h.s.job(F, b"plain") is None and h.s.cron_count == 1


# -- restarts and missed runs ---------------------------------------------------


def test_schedule_survives_a_restart(stores: Stores) -> None:
    h = harness(stores.open(), T0)
    first = add(h, "30 2 * * *", tz="Europe/Paris", missed="skip", args=b"a\xff")
    h2 = harness(stores.open(), T0 + 60)
    [info] = h2.s.cron_schedules(None, h2.now)
    assert (info.cron, info.tz, info.missed, info.next_run) == (
        "30 2 * * *",
        "Europe/Paris",
        "skip",
        first,
    )
    w = h2.worker(F, slots=[1])
    h2.advance(first - h2.now)
    [(_, got)] = assigns(w.take())
    assert got.workload == b"a\xff"
    assert cmds(w.done(F, N)) == [C.SUCCESS]
    assert job(h2)[0].sched_at == first + 86400


@pytest.mark.parametrize("policy", ["once", "skip"])
def test_missed_runs_after_downtime(stores: Stores, policy: str) -> None:
    h = harness(stores.open(), T0)
    first = add(h, "*/5 * * * *", missed=policy)
    # down for an hour: a dozen fires missed
    back = T0 + 3600
    h2 = harness(stores.open(), back)
    j, _ = job(h2)
    w = h2.worker(F, slots=[1])
    got = assigns(w.take())
    if policy == "once":
        assert j.sched_at == first  # due: it runs once, now
        assert [a[1].name for a in got] == [N]
        assert cmds(w.done(F, N)) == [C.SUCCESS]
        assert job(h2)[0].sched_at == cron.next_fire("*/5 * * * *", "UTC", back)
    else:
        assert got == []  # skipped to the next fire after now
        assert j.sched_at == cron.next_fire("*/5 * * * *", "UTC", back)
    # either way it then follows the schedule, once per fire
    w.grab(2)
    nxt = job(h2)[0].sched_at
    h2.advance(nxt - h2.now)
    assert len(assigns(w.take())) == 1


@pytest.mark.parametrize("policy", ["once", "skip"])
def test_late_by_less_than_a_period_runs_now(stores: Stores, policy: str) -> None:
    h = harness(stores.open(), T0)
    first = add(h, "@hourly", missed=policy)
    h2 = harness(stores.open(), first + 600)  # back 10 min after the fire
    assert job(h2)[0].sched_at == first
    w = h2.worker(F, slots=[1])
    assert len(assigns(w.take())) == 1


def test_missing_job_is_recreated_from_its_schedule(tmp_path: Path) -> None:
    store = MemoryStore()
    entry = CronEntry(F, N, "0 * * * *", "UTC", "once", b"args", 5)
    store.save_extra("cron", F, N, entry.encode())
    store.save_extra("cron", F, b"bad", b"{not json")
    h = harness(store, T0)
    j, _ = job(h)
    assert (j.sched_at, j.workload, j.timeout) == (minute(T0) + 3540, b"args", 5)
    assert h.s.cron_count == 1
    assert store.load().extras == {"cron": [(F, N, entry.encode())]}


class JumpHarness(Harness):
    """Separate wall and monotonic clocks, as the server hands them in."""

    mono = 1000.0

    def advance(self, dt: float, jump: float = 0.0) -> None:
        end = self.now + dt
        while self.now + 1 <= end:
            self.now += 1
            self.mono += 1
            self.s.tick(self.now, self.mono)
        self.now += jump  # the wall clock steps; the monotonic one does not
        self.s.tick(self.now, self.mono)


@pytest.mark.parametrize("policy", ["once", "skip"])
def test_forward_clock_jump_applies_the_policy(policy: str) -> None:
    h = JumpHarness(now=T0, config=CONFIG)
    h.s.tick(h.now, h.mono)
    first = h.s.add_cron(F, N, "*/5 * * * *", "UTC", policy, b"", 0, h.now, h.mono)
    w = h.worker(F, slots=[1])
    h.advance(2, jump=7200)  # two hours forward in one step
    got = assigns(w.take())
    if policy == "once":
        assert len(got) == 1 and got[0][1].sched_at == first
    else:
        assert got == []
        assert job(h)[0].sched_at == cron.next_fire("*/5 * * * *", "UTC", h.now)


def test_small_steps_are_no_jump() -> None:
    h = JumpHarness(now=T0, config=CONFIG)
    h.s.tick(h.now, h.mono)
    h.s.add_cron(F, N, "* * * * *", "UTC", "skip", b"", 0, h.now, h.mono)
    before = job(h)[0].sched_at
    h.advance(1, jump=CRON_JUMP - 5)  # within the tolerance: due, not skipped
    assert job(h)[0].sched_at == before


# -- DST through the scheduler ----------------------------------------------------


def test_dst_spring_forward_runs_once_at_the_first_minute_that_exists() -> None:
    paris = ZoneInfo("Europe/Paris")
    start = datetime(2026, 3, 28, 12, 0, tzinfo=paris).timestamp()
    h = harness(None, start)
    h.s.add_cron(F, N, "30 2 * * *", "Europe/Paris", "once", b"", 0, h.now)
    fires = []
    w = h.worker(F, slots=[1])
    for _ in range(3):
        j, _ = job(h)
        h.advance(j.sched_at - h.now)
        [(_, got)] = assigns(w.take())
        fires.append(datetime.fromtimestamp(got.sched_at, paris).isoformat())
        w.done(F, N)
        w.grab(9)
    assert fires == [
        "2026-03-29T03:00:00+02:00",
        "2026-03-30T02:30:00+02:00",
        "2026-03-31T02:30:00+02:00",
    ]


def test_a_run_out_of_attempts_goes_dead_and_the_schedule_goes_on() -> None:
    """max_attempts reached: the run is copied to the dead set, the job stays
    scheduled at its next fire with its attempts forgotten."""
    from periodic_fast.retry import RetryPolicy

    h = harness()
    h.s.set_retry_policy(F, RetryPolicy(max_attempts=1), h.now)
    first = add(h)
    w = h.worker(F, slots=[1])
    h.advance(first - h.now)
    assert assigns(w.take())
    assert cmds(w.req(C.WORK_FAIL, F, N)) == [C.SUCCESS]
    dead, _, total = h.s.dead_jobs(F, b"", None, 10)
    assert [d.job.name for d in dead] == [N] and total == 1
    j, state = job(h)
    assert state == JobState.PENDING and j.sched_at == first + 300
    assert h.s.job_failure(F, N) is not None  # the dead copy's failures
    assert h.s.cron_count == 1
    # the next fire runs it again, from attempt 1
    w.grab(2)
    h.advance(300)
    assert assigns(w.take())
    assert cmds(w.done(F, N)) == [C.SUCCESS]
    assert job(h)[0].sched_at == first + 600
