"""The job browser, scheduler side (sched_browse, sched_index): every filter,
pagination over a changing set, the sliced index build and its consistency
after submit, delete, drop and restart, and the actions."""

from __future__ import annotations

import random

import pytest

from periodic_fast import sched_browse
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.sched_browse import EXAMINE, JobPage
from periodic_fast.sched_index import INDEX_IDLE
from periodic_fast.scheduler import Scheduler
from periodic_fast.store.memory import MemoryStore
from tests.test_scheduler import T0, Harness, assigns

F = b"f"


def _submit(
    s: Scheduler, name: bytes, at: float, now: float = T0, w: bytes = b""
) -> None:
    assert s.submit(Job(F, name, w, int(at), 0, 0), now)


def _page(s: Scheduler, state: str = "all", **kw: object) -> JobPage:
    page = s.list_jobs(F, state, **kw)  # type: ignore[arg-type]
    assert page is not None
    return page


def _all_names(
    s: Scheduler,
    state: str = "all",
    limit: int = 7,
    after: bytes | None = None,
    **kw: object,
) -> list[bytes]:
    """Every name a paged listing gives, following the cursors."""
    out: list[bytes] = []
    for _ in range(10_000):
        page = _page(s, state, after=after, limit=limit, **kw)
        out += [r.name for r in page.rows]
        if page.next is None:
            return out
        after = page.next
    raise AssertionError("the cursor never ended")


def _table_names(s: Scheduler, func: bytes = F) -> list[bytes]:
    fs = s._funcs.get(func)
    return sorted(r.name for r in fs.jobs) if fs is not None else []


def _build(s: Scheduler, func: bytes = F) -> int:
    """Tick until the index of ``func`` is built; the ticks it took."""
    ticks = 0
    while s._browser.building:
        s.tick(T0)
        ticks += 1
        assert ticks < 100_000
    return ticks


@pytest.fixture
def h() -> Harness:
    return Harness()


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Index builds in slices of a few ids (big-func behaviour, small data)."""
    monkeypatch.setattr(sched_browse, "SYNC_BUILD", 5)
    monkeypatch.setattr(sched_browse, "BUILD_SLICE", 7)


# -- filters -------------------------------------------------------------------


def test_pending_all_prefix_due_range_and_limit(h: Harness) -> None:
    s = h.s
    for i in range(40):
        _submit(s, b"a-%02d" % i, T0 + 100 + i)
    for i in range(10):
        _submit(s, b"b-%02d" % i, T0 + 1000 + i, w=b"x" * i)
    page = _page(s, "pending", limit=5)
    assert [r.name for r in page.rows] == [b"a-%02d" % i for i in range(5)]
    assert page.next == b"a-04"
    row = page.rows[0]
    assert (row.func, row.state, row.sched_at, row.count, row.args_size) == (
        F,
        "pending",
        int(T0) + 100,
        0,
        0,
    )
    assert _all_names(s) == sorted(b"a-%02d" % i for i in range(40)) + sorted(
        b"b-%02d" % i for i in range(10)
    )
    assert _all_names(s, prefix=b"b-") == [b"b-%02d" % i for i in range(10)]
    assert _all_names(s, prefix=b"a-1") == [b"a-%02d" % i for i in range(10, 20)]
    assert _all_names(s, prefix=b"zz") == []
    due = _all_names(s, due_from=int(T0) + 110, due_to=int(T0) + 114)
    assert due == [b"a-%02d" % i for i in range(10, 15)]
    assert _all_names(s, due_from=int(T0) + 1005) == [
        b"b-%02d" % i for i in range(5, 10)
    ]
    assert _all_names(s, due_to=int(T0) + 101) == [b"a-00", b"a-01"]
    # a cursor before the prefix starts at the prefix
    assert _page(s, prefix=b"b-", after=b"a-05", limit=2).rows[0].name == b"b-00"
    # the last page knows it is the last
    page = _page(s, after=b"b-05", limit=4)
    assert [r.name for r in page.rows] == [b"b-06", b"b-07", b"b-08", b"b-09"]
    assert page.next is None
    assert [r.args_size for r in _page(s, prefix=b"b-", limit=3).rows] == [0, 1, 2]


def test_bad_state_and_limit_and_unknown_func(h: Harness) -> None:
    with pytest.raises(ValueError, match="state"):
        h.s.list_jobs(F, "zombie")
    with pytest.raises(ValueError, match="limit"):
        h.s.list_jobs(F, "all", limit=0)
    with pytest.raises(ValueError, match="limit"):
        h.s.list_jobs(F, "all", limit=501)
    assert h.s.list_jobs(b"nope", "all") == JobPage([], None)


def test_running_and_locked_states(h: Harness) -> None:
    w = h.worker(F, slots=[1, 2, 3])
    for name in (b"r1", b"r2", b"r3"):
        h.submit(F, name)
    h.submit(F, b"later", sched_at=int(h.now) + 500)
    for m in (1, 2, 3):
        w.assigned(m)
    # r1 holds lock L, r2 waits for it: locked
    assert w.req(C.ACQUIRE, b"L", 1, F, b"r1")[0].payload == b"\x01"
    assert w.req(C.ACQUIRE, b"L", 1, F, b"r2")[0].payload == b"\x00"
    s = h.s
    assert _all_names(s, "running", limit=1) == [b"r1", b"r3"]
    assert _all_names(s, "locked") == [b"r2"]
    assert _all_names(s, "pending") == [b"later"]
    assert _all_names(s, "all", limit=2) == [b"later", b"r1", b"r2", b"r3"]
    states = {r.name: r.state for r in _page(s).rows}
    assert states == {
        b"later": "pending",
        b"r1": "running",
        b"r2": "locked",
        b"r3": "running",
    }
    assert _all_names(s, "running", prefix=b"r3") == [b"r3"]
    assert _all_names(s, "running", after=b"r1") == [b"r3"]
    assert _all_names(s, "running", due_to=int(h.now) - 1) == []
    # the job ends: no longer running
    w.done(F, b"r3")
    assert _all_names(s, "running") == [b"r1"]


def test_the_examine_budget_gives_short_pages_with_a_cursor(h: Harness) -> None:
    n = EXAMINE + 50
    for i in range(n):
        _submit(h.s, b"j%06d" % i, T0 + 10)
    _submit(h.s, b"z-match", T0 + 99)
    assert h.s.list_jobs(F, "all") is None  # over SYNC_BUILD: sliced
    assert _build(h.s) >= 1
    page = _page(h.s, due_from=int(T0) + 99)
    assert page.rows == [] and page.next == b"j%06d" % (EXAMINE - 1)
    page = _page(h.s, due_from=int(T0) + 99, after=page.next)
    assert [r.name for r in page.rows] == [b"z-match"] and page.next is None


# -- pagination over a changing set ---------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pages_never_skip_a_job_that_existed_throughout(
    h: Harness, seed: int, small_slices: None
) -> None:
    rnd = random.Random(seed)
    s = h.s
    names = [b"n%04d" % rnd.randrange(10_000) for _ in range(300)]
    for name in names:
        _submit(s, name, T0 + 50)
    stable = set(names)
    assert s.list_jobs(F, "all") is None  # a sliced build (small_slices)
    _build(s)
    seen: list[bytes] = []
    after = None
    while True:
        page = _page(s, after=after, limit=9)
        seen += [r.name for r in page.rows]
        # between pages: jobs come and go, before and after the cursor
        for _ in range(6):
            name = b"n%04d" % rnd.randrange(10_000)
            if rnd.random() < 0.5:
                _submit(s, name, T0 + 50)
                if name not in names:
                    pass  # new: may or may not show, never required
            elif s.remove(F, name, T0):
                stable.discard(name)
        if page.next is None:
            break
        after = page.next
    assert len(seen) == len(set(seen)), "a job was listed twice"
    assert seen == sorted(seen)
    assert stable <= set(seen), sorted(stable - set(seen))[:5]
    assert _all_names(s) == _table_names(s)


# -- the index: sliced build, consistency ------------------------------------------


def test_sliced_build_with_changes_meanwhile(h: Harness, small_slices: None) -> None:
    s = h.s
    other = b"other"
    for i in range(200):
        _submit(s, b"k%03d" % i, T0 + 50)
        assert s.submit(Job(other, b"k%03d" % i, b"", int(T0) + 50, 0, 0), T0)
    calls: list[int] = []
    assert s.list_jobs(F, "all") is None
    assert s.when_indexed(F, lambda: calls.append(1))
    assert s.next_wakeup() == T0  # the build wants a tick at once
    rnd = random.Random(7)
    ticks = 0
    while s._browser.building:
        # changes while it builds: new jobs, deleted ones (some re-added)
        for _ in range(3):
            name = b"k%03d" % rnd.randrange(260)
            if rnd.random() < 0.5:
                _submit(s, name, T0 + 50)
            else:
                s.remove(F, name, T0)
        s.tick(T0)
        ticks += 1
    assert ticks > 5 and calls == [1]
    assert s.when_indexed(F, lambda: calls.append(2)) is False
    assert _all_names(s) == _table_names(s)
    ix = s._funcs[F].index
    assert ix is not None and list(ix.names) == _table_names(s)
    # the other func was never browsed: no index, nothing paid
    assert s._funcs[other].index is None


def test_index_follows_submit_delete_done_and_drop(h: Harness) -> None:
    s = h.s
    for i in range(20):
        _submit(s, b"d%02d" % i, T0 + 5)
    assert _all_names(s) == _table_names(s)
    assert s._funcs[F].index is not None
    _submit(s, b"new", T0 + 5)
    s.remove(F, b"d03", T0)
    w = h.worker(F, slots=[1])
    h.advance(6)
    [(_, job)] = assigns(w.take())
    w.assigned(1)
    w.done(F, job.name)
    assert job.name not in _all_names(s)
    assert _all_names(s) == _table_names(s)
    h.disconnect(w)
    assert s.drop_func(F, h.now) == "dropped"
    assert s.list_jobs(F, "all") == JobPage([], None)
    _submit(s, b"again", h.now + 5, now=h.now)
    assert _all_names(s) == [b"again"]
    while s.reaping:
        s.tick(h.now)
    assert _all_names(s) == [b"again"]


def test_drop_during_a_build_answers_the_waiters(
    h: Harness, small_slices: None
) -> None:
    s = h.s
    for i in range(50):
        _submit(s, b"x%02d" % i, T0 + 5)
    assert s.list_jobs(F, "all") is None
    calls: list[int] = []
    s.when_indexed(F, lambda: calls.append(1))
    assert s.drop_func(F, T0) == "dropped"
    s.tick(T0)
    assert calls == [1] and not s._browser.building
    assert s.list_jobs(F, "all") == JobPage([], None)


def test_restart_rebuilds_from_the_store() -> None:
    store = MemoryStore()
    h1 = Harness(store=store)
    for i in range(30):
        _submit(h1.s, b"r%02d" % i, T0 + 60)
    assert len(_all_names(h1.s)) == 30
    h1.s.remove(F, b"r07", T0)
    h2 = Harness(store=store)  # a restart on the same store
    assert h2.s._funcs[F].index is None
    assert _all_names(h2.s) == _table_names(h2.s)
    assert len(_all_names(h2.s)) == 29 and b"r07" not in _all_names(h2.s)


def test_an_idle_index_is_dropped(h: Harness) -> None:
    _submit(h.s, b"a", T0 + 5000)
    _page(h.s)
    assert h.s._funcs[F].index is not None
    h.advance(INDEX_IDLE / 2)
    _page(h.s, mono=h.now)  # used again: kept
    h.advance(INDEX_IDLE / 2 + 150)
    assert h.s._funcs[F].index is not None
    h.advance(INDEX_IDLE + 150)
    assert h.s._funcs[F].index is None
    _submit(h.s, b"b", h.now + 5000, now=h.now)  # no index: nothing to keep
    assert _all_names(h.s) == [b"a", b"b"]


# -- details and actions -------------------------------------------------------------


def test_detail(h: Harness) -> None:
    _submit(h.s, b"j", T0 + 30, w=b"payload")
    d = h.s.job_detail(F, b"j")
    assert d is not None
    assert d.workload == b"payload" and d.row.args_size == 7
    assert (d.last_failed_at, d.last_worker, d.cron, d.row.attempts) == (
        None,
        None,
        None,
        0,
    )
    assert h.s.job_detail(F, b"nope") is None
    assert h.s.job_detail(b"nofunc", b"j") is None


def test_detail_shows_the_failures_and_the_schedule(h: Harness) -> None:
    """Details read the retry feature's failures and the cron schedule."""
    _submit(h.s, b"j", T0)
    w = h.worker(F, slots=[1])
    assert assigns(w.take())
    w.req(C.WORK_FAIL, F, b"j")
    d = h.s.job_detail(F, b"j")
    assert d is not None
    assert (d.row.attempts, d.last_failed_at) == (1, h.now)
    assert d.last_worker is not None and d.cron is None
    assert _page(h.s).rows[0].attempts == 1
    h.s.add_cron(F, b"c", "*/5 * * * *", "UTC", "once", b"", 0, h.now)
    c = h.s.job_detail(F, b"c")
    assert c is not None
    assert c.cron == {"cron": "*/5 * * * *", "tz": "UTC", "missed": "once"}


def test_run_now_dispatches_at_once_and_reschedule_moves(h: Harness) -> None:
    w = h.worker(F, slots=[1])
    h.submit(F, b"later", sched_at=int(h.now) + 3600, count=2)
    assert assigns(w.take()) == []
    assert h.s.reschedule(F, b"later", None, h.now) == "ok"
    [(_, job)] = assigns(w.take())
    assert job.name == b"later" and job.sched_at == int(h.now) and job.count == 2
    assert h.s.reschedule(F, b"later", int(h.now) + 10, h.now) == "running"
    assert h.s.reschedule(F, b"nope", None, h.now) == "unknown"
    assert h.s.reschedule(b"nofunc", b"x", None, h.now) == "unknown"
    # reschedule a pending job: it moves, and fires at its new time only
    h.submit(F, b"move", sched_at=int(h.now) + 5)
    assert h.s.reschedule(F, b"move", int(h.now) + 20, h.now) == "ok"
    assert h.store.load().jobs  # persisted
    stored = {j.name: j for j, _ in h.store.load().jobs}
    assert stored[b"move"].sched_at == int(h.now) + 20
    w.assigned(1)
    w.done(F, b"later")
    w.grab(2)
    h.advance(10)
    assert assigns(w.take()) == []
    h.advance(11)
    [(_, job)] = assigns(w.take())
    assert job.name == b"move"
    # a time in the past means now
    h.submit(F, b"past", sched_at=int(h.now) + 100)
    assert h.s.reschedule(F, b"past", 5, h.now) == "ok"
    assert h.s.job_detail(F, b"past").row.sched_at == int(h.now)  # type: ignore[union-attr]


def test_reschedule_of_a_locked_job_makes_it_pending(h: Harness) -> None:
    w = h.worker(F, slots=[1, 2])
    h.submit(F, b"a")
    h.submit(F, b"b")
    w.assigned(1)
    w.assigned(2)
    w.req(C.ACQUIRE, b"L", 1, F, b"a")
    w.req(C.ACQUIRE, b"L", 1, F, b"b")
    assert h.status()[F].locked == 1
    assert h.s.reschedule(F, b"b", int(h.now) + 50, h.now) == "ok"
    assert h.status()[F].locked == 0
    assert _all_names(h.s, "pending") == [b"b"]
    assert _all_names(h.s, "locked") == []
