"""The scheduler side of cluster mode (periodic_fast.sched_parts), sans-I/O:
loading a partition's rows at run time, refusing requests for partitions not
held, and unloading a partition at once: nothing of it is dispatched again,
a running job's later WORK_DONE writes nothing, its records are freed by the
reaper."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from test_scheduler import Harness, cmds

from periodic_fast.constants import Command as C
from periodic_fast.job import Job, JobState
from periodic_fast.sched_parts import Partitions
from periodic_fast.store import StoreSnapshot
from periodic_fast.store.cluster import partition_of

P = 4


class WriteLog:
    """A store that records every write (a cluster node's store holds no
    jobs at start: they come per partition)."""

    deferred = False
    keeps_records = False
    closed = False

    def __init__(self) -> None:
        self.writes: list[tuple[Any, ...]] = []

    def metrics(self) -> dict[str, float]:
        return {}

    def load(self) -> StoreSnapshot:
        return StoreSnapshot([], [], {})

    def save_job(self, job: Job, state: JobState) -> None:
        self.writes.append(("save", job.func, job.name))

    def set_state(self, func: bytes, name: bytes, state: JobState) -> None:
        self.writes.append(("state", func, name, int(state)))

    def delete_job(self, func: bytes, name: bytes) -> None:
        self.writes.append(("delete", func, name))

    def __getattr__(self, attr: str) -> Callable[..., None]:
        if attr.startswith(("save_", "delete_")):
            return lambda *a: self.writes.append((attr, *a))
        raise AttributeError(attr)

    def on_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        callback(None)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _names(part: int, n: int) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        name = b"j%d" % i
        i += 1
        if partition_of(b"f", name, P) == part:
            out.append(name)
    return out


def _harness() -> tuple[Harness, Partitions, WriteLog]:
    store = WriteLog()
    h = Harness(store=store)  # type: ignore[arg-type]
    parts = Partitions(h.s, P)
    parts.install()
    return h, parts, store


def test_part_matches_the_store_rule() -> None:
    h, parts, _ = _harness()
    for i in range(200):
        name = b"x%d" % i
        assert parts.part(b"func", name) == partition_of(b"func", name, P)


def test_requests_for_partitions_not_held_are_refused() -> None:
    h, parts, store = _harness()
    c = h.client()
    name = _names(0, 1)[0]
    assert cmds(c.req(C.SUBMIT_JOB, Job(b"f", name))) == [C.NO_WORKER]
    assert cmds(c.req(C.REMOVE_JOB, b"f", name)) == [C.NO_WORKER]
    assert cmds(c.req(C.DROP_FUNC, b"f")) == [C.NO_WORKER]
    assert not store.writes
    assert not h.s.submit(Job(b"f", name), h.now)  # the HTTP API too
    parts.begin([0])
    assert cmds(c.req(C.SUBMIT_JOB, Job(b"f", name))) == [C.NO_WORKER]  # loading
    parts.finish([0])
    assert cmds(c.req(C.SUBMIT_JOB, Job(b"f", name))) == [C.SUCCESS]
    assert ("save", b"f", name) in store.writes


def test_load_dispatch_unload() -> None:
    h, parts, store = _harness()
    zero, one, two = _names(0, 3), _names(1, 3), _names(2, 1)
    t = int(h.now)
    rows = [(b"f", n, b"w", t, 0, 0, 0) for n in zero + one + two]
    parts.begin([0, 1])
    added = parts.load_rows(rows, h.now)
    assert added == 6  # the row of partition 2 (not held) is skipped
    parts.finish([0, 1])
    assert h.s.status(h.now)[0].jobs == 6
    w = h.worker(b"f")
    got = [p for p in w.grab(1) if p.command == C.JOB_ASSIGN]
    assert len(got) == 1
    w.assigned(1)
    running = got[0]
    # the running job's partition leaves (its lease was lost)
    gone = parts.part(b"f", _job_name(running))
    writes_before = len(store.writes)
    n = parts.unload([gone], h.now)
    assert n == 3 and gone not in parts.held and gone not in parts.ready
    stat = h.s.status(h.now)[0]
    assert stat.jobs == 6 - 3 and stat.processing == 0
    # its later report finds nothing and writes nothing
    assert cmds(w.done(b"f", _job_name(running))) == [C.SUCCESS]
    assert len(store.writes) == writes_before
    # nothing of it is dispatched again; the other partition's jobs are
    kept = {*zero, *one} - set(zero if gone == 0 else one)
    seen: set[bytes] = set()
    for msgid in range(2, 8):
        for p in w.grab(msgid):
            if p.command == C.JOB_ASSIGN:
                seen.add(_job_name(p))
                w.assigned(msgid)
                w.done(b"f", _job_name(p))
    assert seen == kept
    # the unloaded records are freed by the reaper, a slice per tick
    assert h.s.reaping == 3
    h.advance(1)
    assert h.s.reaping == 0
    # loaded again later (the partition came back): its rows are in again
    parts.begin([gone])
    again = [r for r in rows if partition_of(r[0], r[1], P) == gone]
    assert parts.load_rows(again, h.now) == 3


def _job_name(p: Any) -> bytes:
    from periodic_fast.codec import decode_job

    return decode_job(p.payload).name
