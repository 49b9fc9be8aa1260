"""Start-up (sched_load) and STATUS's earliest pending time (issue 17).

* A restart builds the same scheduler whether the store gives its jobs
  grouped per func with counts (SQLite's ``StoreSnapshot.groups``), grouped
  without counts, as plain rows or as ``(Job, state)`` pairs.
* STATUS reads each func's earliest pending ``sched_at`` from the table's
  lazily-invalidated heap (``NameTable.earliest``): exact after any mix of
  operations, and its work (heap entries looked at) does not grow with the
  number of jobs.
"""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.sched_model import PENDING
from periodic_fast.scheduler import Scheduler
from periodic_fast.store import StoreSnapshot
from periodic_fast.store.memory import MemoryStore
from periodic_fast.store.sqlite import SqliteStore
from tests.test_scheduler import T0, Harness, assigns, cmds

# -- start-up equivalence ---------------------------------------------------------


def _fill(path: Path) -> None:
    """Jobs of 3 funcs (one with 3,000): future and due ones, rows stored as
    running and locked, a func with no jobs, written directly (the store
    itself keeps running jobs as pending)."""
    SqliteStore(path).close()
    rnd = random.Random(3)
    db = sqlite3.connect(path)
    rows = []
    for f, n in ((b"big", 3000), (b"a", 40), (b"zz", 7)):
        for i in range(n):
            when = T0 + rnd.randrange(-500, 5000)
            state = rnd.choice((0, 0, 0, 1, 2))
            rows.append((f, b"j%05d" % i, b"w%d" % i, when, i % 4, i % 3, state))
    rnd.shuffle(rows)
    db.executemany("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, 0)", rows)
    db.execute("INSERT INTO funcs VALUES (?)", (b"empty",))
    db.commit()
    db.close()


class _Variant(SqliteStore):
    """The SQLite store with its snapshot cut down to one of the forms."""

    form = "groups"

    def load(self) -> StoreSnapshot:
        snap = super().load()
        if self.form == "uncounted":
            groups = snap.groups
            assert groups is not None
            return snap._replace(groups=((f, 0, c) for f, _, c in groups))
        if self.form == "rows":
            return snap._replace(groups=None)
        if self.form == "jobs":
            return snap._replace(groups=None, rows=None)
        return snap


def _state(s: Scheduler) -> Any:
    funcs = {}
    for name, fs in sorted(s._funcs.items()):
        recs = sorted(
            (r.name, r.id, r.where, r.state, r.job, s._wheel.when(r.id))
            for r in fs.jobs
        )
        ready = [r.name for r in fs.ready if r.where == 2]
        funcs[name] = (recs, ready, fs.n_ready, fs.jobs.earliest())
    return funcs, s.status(T0 + 1)


def test_restart_is_the_same_with_or_without_counts(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _fill(path)
    got = {}
    for form in ("groups", "uncounted", "rows", "jobs"):
        _Variant.form = form
        store = _Variant(path)
        try:
            got[form] = _state(Scheduler(store, T0 + 1))
        finally:
            store.close()
    funcs, status = got["groups"]
    assert set(funcs) == {b"a", b"big", b"empty", b"zz"}
    assert sum(len(f[0]) for f in funcs.values()) == 3047
    assert all(r[3] == PENDING for f in funcs.values() for r in f[0])
    assert funcs[b"big"][2] > 0  # some due, in their ready queue
    assert got["uncounted"] == got["rows"] == got["jobs"] == got["groups"]


def test_sqlite_groups_carry_each_funcs_row_count(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    _fill(path)
    store = SqliteStore(path)
    try:
        groups = store.load().groups
        assert groups is not None
        seen = {f: (n, sum(len(rows) for rows in chunks)) for f, n, chunks in groups}
    finally:
        store.close()
    assert seen == {b"a": (40, 40), b"big": (3000, 3000), b"zz": (7, 7)}


# -- STATUS: the earliest pending time ----------------------------------------------


def _check(h: Harness) -> None:
    """STATUS's sched_at against a scan of every record."""
    for func, st in h.status().items():
        fs = h.s._funcs[func]
        want = min((r.sched_at for r in fs.jobs if r.state == PENDING), default=None)
        assert st.sched_at == (int(h.now) if want is None else want), func


@pytest.mark.parametrize("wait", [0, 3])
def test_status_earliest_stays_exact_under_random_operations(wait: int) -> None:
    """With assign-wait 3, some assignments are never confirmed: their jobs
    come back to pending (``_repend_now``) with their old ``sched_at``."""
    rnd = random.Random(11 + wait)
    h = Harness(config={"assign-wait": wait})
    workers = [h.worker(b"f"), h.worker(b"g")]
    running: list[tuple[Any, Job]] = []
    for _ in range(1500):
        op = rnd.random()
        func = rnd.choice((b"f", b"g"))
        name = b"n%d" % rnd.randrange(60)
        if op < 0.35:
            at = int(h.now) + rnd.randrange(-5, 30)
            h.submit(func, name, sched_at=at, count=rnd.randrange(3))
        elif op < 0.5:
            w = rnd.choice(workers)
            for msgid, job in assigns(w.grab(rnd.randrange(1, 99))):
                if wait and rnd.random() < 0.5:
                    continue  # never confirmed: pending again after 3 s
                if wait:
                    w.assigned(msgid)
                running.append((w, job))
        elif op < 0.7 and running:
            w, job = running.pop(rnd.randrange(len(running)))
            kind = rnd.random()
            if kind < 0.4:
                w.req(C.WORK_DONE, job.func, job.name, b"")
            elif kind < 0.7:
                w.req(C.WORK_FAIL, job.func, job.name)
            else:
                w.req(C.SCHED_LATER, job.func, job.name, rnd.randrange(1, 20), 1)
        elif op < 0.8:
            h.client().req(C.REMOVE_JOB, func, name)
        elif op < 0.85:
            h.s._browser.reschedule(func, name, int(h.now) + rnd.randrange(-3, 40))
        elif op < 0.88 and running:
            w, _ = running[0]  # a worker goes: its jobs back to pending
            h.disconnect(w)
            running = [(x, j) for x, j in running if x is not w]
            workers[workers.index(w)] = h.worker(b"f", b"g")
        else:
            h.advance(rnd.randrange(1, 4))
        _check(h)


def _big(n: int) -> Harness:
    h = Harness(store=MemoryStore(), config={"assign-wait": 0})
    for f in (b"f", b"g"):
        for i in range(n):
            h.s._submit(Job(f, b"j%06d" % i, b"", int(T0) + 10 + i))
    return h


def test_status_work_does_not_grow_with_the_job_count() -> None:
    """Heap entries looked at by STATUS: the same for 300 and 30,000 jobs a
    func, in the steady state and after jobs were dispatched."""
    looked = []
    for n in (300, 30_000):
        h = _big(n)
        tables = [fs.jobs for fs in h.s._funcs.values()]
        before = sum(t.visits for t in tables)
        for _ in range(5):
            assert h.status()[b"f"].sched_at == int(T0) + 10
        steady = sum(t.visits for t in tables) - before
        w = h.worker(b"f", slots=range(1, 21))
        h.advance(30)  # 20 of f's jobs fall due and are dispatched
        assert len(w.frames) == 20
        before = sum(t.visits for t in tables)
        st = h.status()
        assert st[b"f"].sched_at == int(T0) + 30 and st[b"g"].sched_at == int(T0) + 10
        looked.append((steady, sum(t.visits for t in tables) - before))
    # 5 STATUS x 2 funcs, one entry each; then f's 20 dead entries + 2 live
    assert looked == [(10, 22), (10, 22)]


def test_status_after_a_restart_on_the_memory_store() -> None:
    """The memory store shares its tables with the scheduler: a restart
    clears and refills them, and their heaps with them."""
    h = Harness()
    h.submit(b"f", b"late", sched_at=int(T0) + 50)
    h.submit(b"f", b"soon", sched_at=int(T0) + 20)
    w = h.worker(b"f", slots=[1])
    h.advance(25)
    assert cmds(w.frames) == [C.JOB_ASSIGN]  # soon is running
    h2 = Harness(now=h.now, store=h.store)
    assert h2.status()[b"f"].sched_at == int(T0) + 20  # pending again
    _check(h2)


def test_the_load_progress_bar_sees_every_job(tmp_path: Path) -> None:
    """periodicd's start-up progress bar wraps ``jobs``: the scheduler must
    read that stream then, not the store's groups."""
    from periodic_fast.server.app import _watched_load

    path = tmp_path / "s.db"
    _fill(path)
    seen = []

    def progress(jobs: Any) -> Any:
        for item in jobs:
            seen.append(item)
            yield item

    store = SqliteStore(path)
    try:
        with _watched_load(store, progress):
            s = Scheduler(store, T0 + 1)
    finally:
        store.close()
    assert len(seen) == 3047 == sum(len(fs.jobs) for fs in s._funcs.values())
