"""Issue 17 item 2: a big DROP_FUNC runs in bounded slices (sans-I/O).

The func is gone at once (STATUS, DUMP, the store); its records are freed a
slice per tick; a func of the same name can be used meanwhile, and no record
of the dropped func is ever dispatched, not even one whose wheel entry fires
before it is reaped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.store.memory import MemoryStore
from periodic_fast.store.sqlite import SqliteStore
from tests.test_scheduler import T0, Harness, assigns, cmds

N = 1000
SLICE = 100


@pytest.fixture(params=["memory", "sqlite"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "memory":
        return Harness()
    store = SqliteStore(tmp_path / "s.db")
    request.addfinalizer(store.close)
    return Harness(store=store)  # type: ignore[arg-type]


def test_drop_runs_in_slices(h: Harness) -> None:
    s = h.s
    s._reaper.slice = SLICE  # white box: a small slice
    c = h.client()
    for i in range(N):  # half due now, half in the wheel
        at = 0 if i % 2 else int(T0) + 5
        assert cmds(c.req(C.SUBMIT_JOB, Job(b"f", b"%04d" % i, b"old", at))) == [
            C.SUCCESS
        ]
    assert h.status()[b"f"].jobs == N
    assert cmds(c.req(C.DROP_FUNC, b"f")) == [C.SUCCESS]
    # gone at once, everywhere but in the reaper
    assert b"f" not in h.status()
    assert h.dump() == []
    assert s.reaping == N
    assert s.next_wakeup() == pytest.approx(h.now)  # the server ticks at once
    s.tick(h.now)
    assert s.reaping == N - SLICE
    # the same func name again while the old records are being freed
    assert cmds(c.req(C.SUBMIT_JOB, Job(b"f", b"0001", b"new"))) == [C.SUCCESS]
    assert cmds(c.req(C.SUBMIT_JOB, Job(b"f", b"late", b"new", int(T0) + 5))) == [
        C.SUCCESS
    ]
    w = h.worker(b"f")
    got = assigns(w.grab(1) + w.grab(2) + w.grab(3))
    assert [(j.name, j.workload) for _, j in got] == [(b"0001", b"new")]
    w.assigned(got[0][0])
    h.advance(6)  # the old wheel entries fire before their records are freed
    got += assigns(w.take())
    assert s.reaping > 0
    while s.reaping:
        s.tick(h.now)
        got += assigns(w.take())
    assert sorted((j.name, j.workload) for _, j in got) == [
        (b"0001", b"new"),
        (b"late", b"new"),
    ]
    assert h.status()[b"f"].jobs == 2
    assert sorted(j.name for j in h.dump()) == [b"0001", b"late"]
    # every id of the old records is free again, none is live twice
    live = [r for r in s._jobs if r is not None]
    assert len(live) == 2
    assert len(s._free) == len(s._jobs) - 2


def test_drop_twice_and_resubmit_same_names(h: Harness) -> None:
    s = h.s
    s._reaper.slice = SLICE
    c = h.client()
    for rnd in range(3):  # drop, refill and drop again while still reaping
        for i in range(N // 2):
            job = Job(b"f", b"%04d" % i, b"r%d" % rnd, int(T0) + 3)
            c.req(C.SUBMIT_JOB, job)
        assert cmds(c.req(C.DROP_FUNC, b"f")) == [C.SUCCESS]
        s.tick(h.now)
    c.req(C.SUBMIT_JOB, Job(b"f", b"keep", b"last", int(T0) + 3))
    w = h.worker(b"f", slots=range(1, 10))
    h.advance(4)
    got = assigns(w.take())
    for msgid, _ in got:
        w.assigned(msgid)
    while s.reaping:
        s.tick(h.now)
    got += assigns(w.take())
    assert [(j.name, j.workload) for _, j in got] == [(b"keep", b"last")]


def test_drop_with_a_running_job_and_locks(h: Harness) -> None:
    s = h.s
    s._reaper.slice = SLICE
    c = h.client()
    for i in range(N):
        c.req(C.SUBMIT_JOB, Job(b"f", b"%04d" % i, b""))
    w = h.worker(b"f", slots=[1])
    [(_, job)] = assigns(w.frames)
    w.assigned(1)
    assert w.req(C.ACQUIRE, b"lk", 1, job.func, job.name)[0].command == C.ACQUIRED
    w.req(C.CANT_DO, b"f")  # no worker serves f now: it can be dropped
    assert cmds(c.req(C.DROP_FUNC, b"f")) == [C.SUCCESS]
    assert s.locks() == []  # released at once, as before
    # the worker's late answer about the dropped job changes nothing
    w.done(job.func, job.name)
    assert b"f" not in h.status()
    while s.reaping:
        s.tick(h.now)
    assert [r for r in s._jobs if r is not None] == []


def test_store_of_memory_shares_no_detached_table() -> None:
    store = MemoryStore()
    h = Harness(store=store)
    h.s._reaper.slice = SLICE
    c = h.client()
    for i in range(N):
        c.req(C.SUBMIT_JOB, Job(b"f", b"%04d" % i, b""))
    c.req(C.DROP_FUNC, b"f")
    c.req(C.SUBMIT_JOB, Job(b"f", b"x", b""))
    assert [j.name for j, _ in store.load().jobs] == [b"x"]
