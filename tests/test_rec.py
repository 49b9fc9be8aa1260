"""The per-job record twins (periodic_fast.rec): same API, same results; the
compiled one is live unless the env var forbids it."""

from __future__ import annotations

import functools
import os
import random
import subprocess
import sys
from typing import Any

import pytest

from periodic_fast import _rec_py
from periodic_fast import rec as rec_mod
from periodic_fast.job import Job

TWINS: list[Any] = [_rec_py]
try:
    from periodic_fast import _rec_c  # type: ignore[attr-defined]

    TWINS.append(_rec_c)
except ImportError:  # pragma: no cover - pure build
    pass


@pytest.fixture(params=TWINS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def twin(request: pytest.FixtureRequest) -> Any:
    return request.param


def test_fields_and_defaults(twin: Any) -> None:
    job = Job(b"f", b"n", b"w", 123, -4, 5)
    rec = twin.JobRec(7, *job)
    assert (rec.id, rec.job) == (7, job)
    assert type(rec.job) is Job and rec.job is not rec.job  # built on demand
    assert (rec.func, rec.name, rec.workload) == (b"f", b"n", b"w")
    assert (rec.sched_at, rec.count, rec.timeout) == (123, -4, 5)
    assert (rec.state, rec.where, rec.epoch, rec.run, rec.confirmed) == (
        0,
        0,
        0,
        0,
        False,
    )
    rec.state = -1
    rec.where = 2
    rec.run += 3
    rec.run -= 1
    rec.epoch = -1
    rec.confirmed = True
    rec.sched_at = (1 << 63) - 1
    rec.count = -(1 << 31)
    rec.timeout = (1 << 31) - 1
    rec.workload = b"x"
    assert (rec.state, rec.where, rec.run, rec.epoch, rec.confirmed) == (
        -1,
        2,
        2,
        -1,
        True,
    )
    assert rec.job == Job(b"f", b"n", b"x", (1 << 63) - 1, -(1 << 31), (1 << 31) - 1)
    assert not hasattr(rec, "__dict__")
    with pytest.raises(AttributeError):
        rec.fs = None  # nothing but bytes and numbers: a record is in no cycle


def test_defaults_share_the_empty_workload(twin: Any) -> None:
    rec = twin.JobRec(0, b"f", b"n")
    assert rec.job == Job(b"f", b"n")
    assert rec.workload is twin.JobRec(1, b"g", b"m").workload  # one b""


def test_key_is_the_handle(twin: Any) -> None:
    rec = twin.JobRec(0, b"func", b"name")
    assert rec.key == b"\x04func\x04name"
    long = b"x" * 255
    rec = twin.JobRec(0, long, long)
    assert rec.key == b"\xff" + long + b"\xff" + long


def test_repend_new_epoch_wraps(twin: Any) -> None:
    rec = twin.JobRec(0, b"f", b"n")
    rec.run = 2
    rec.confirmed = True
    rec.repend()
    assert (rec.epoch, rec.run, rec.confirmed) == (1, 0, False)
    rec.epoch = twin.EPOCH_MASK
    rec.repend()
    assert rec.epoch == 0


def test_name_table_like_a_dict(twin: Any) -> None:
    """Random inserts, replacements, pops and lookups against a dict (grows
    and shrinks the compiled table through many sizes)."""
    rnd = random.Random(8)
    table = twin.NameTable()
    ref: dict[bytes, Any] = {}
    for k in range(60_000):
        # a few thousand names, some sharing a prefix, one empty
        name = b"n" * rnd.randrange(3) + str(rnd.randrange(3000)).encode()
        if k % 997 == 0:
            name = b""
        op = rnd.random()
        if op < 0.45:
            rec = twin.JobRec(k, b"f", name)
            assert table.add(rec) is ref.get(name)
            ref[name] = rec
        elif op < 0.75 or k > 50_000:  # the tail drains the table
            assert table.pop(name) is ref.pop(name, None)
        else:
            assert table.get(name) is ref.get(name)
            assert (name in table) == (name in ref)
            assert (bytearray(name) in table) is False  # only bytes keys
        assert len(table) == len(ref)
        if k % 5000 == 0:
            assert {id(r) for r in table} == {id(r) for r in ref.values()}
            assert sorted(r.name for r in table.values()) == sorted(ref)
    assert {id(r) for r in table} == {id(r) for r in ref.values()}


def test_name_table_same_record_twice_and_clear(twin: Any) -> None:
    table = twin.NameTable()
    rec = twin.JobRec(0, b"f", b"n")
    assert table.add(rec) is None
    assert table.add(rec) is rec  # replacing itself: still one entry
    assert len(table) == 1 and table.get(bytes(bytearray(b"n"))) is rec
    assert table.pop(b"missing") is None
    recs = [twin.JobRec(i, b"f", b"%d" % i) for i in range(100)]
    for r in recs:
        table.add(r)
    for r in table.values():  # values() is a copy: popping meanwhile is safe
        table.pop(r.name)
    assert len(table) == 0 and list(table) == []
    for r in recs:
        table.add(r)
    table.clear()
    assert len(table) == 0 and table.get(b"1") is None
    table.add(rec)
    assert list(table) == [rec]


def test_name_table_min_sched_at(twin: Any) -> None:
    table = twin.NameTable()
    assert table.min_sched_at(0) is None
    rnd = random.Random(5)
    recs = []
    for i in range(500):
        rec = twin.JobRec(i, b"f", b"%d" % i, b"", rnd.randrange(-(1 << 62), 1 << 62))
        rec.state = rnd.randrange(3)
        table.add(rec)
        recs.append(rec)
    for state in (0, 1, 2, 3):
        want = [r.sched_at for r in recs if r.state == state]
        assert table.min_sched_at(state) == (min(want) if want else None)


def test_name_table_growth_while_iterating_raises(twin: Any) -> None:
    table = twin.NameTable()
    table.add(twin.JobRec(0, b"f", b"a"))
    table.add(twin.JobRec(1, b"f", b"b"))
    it = iter(table)
    next(it)
    for i in range(100):  # grows the table (the compiled one reallocates)
        table.add(twin.JobRec(i, b"f", b"%d" % i))
    with pytest.raises(RuntimeError):
        next(it)


def test_name_table_shrink_or_clear_while_iterating_raises(twin: Any) -> None:
    table = twin.NameTable()
    recs = [twin.JobRec(i, b"f", b"%d" % i) for i in range(100)]
    for r in recs:
        table.add(r)
    it = iter(table)
    next(it)
    for r in recs[:95]:  # shrinks the table (the compiled one reallocates)
        table.pop(r.name)
    with pytest.raises(RuntimeError):
        next(it)
    it = iter(table)
    next(it)
    table.clear()
    with pytest.raises(RuntimeError):
        next(it)


# Issue 17: deleting the compiled table's records in slot order used to be
# quadratic (a shrink packed the names left, all of one hash range, into one
# probe run).  The bound checked is the probe work of the table's state
# (longest run of occupied slots, total distance from home), not a time;
# bench/bench_nametable_delete.py has the times.
N_ORDERED = 200_000
MAX_RUN = 1000  # a random 200k table at <= 75% load: about 200


@functools.lru_cache(maxsize=1)
def _colliding_names() -> list[bytes]:
    """N_ORDERED names whose hashes share their top 4 bits: a multiply-shift
    index of the hash alone homes them all in the first 16th of any table."""
    out: list[bytes] = []
    fmt = b"c%d".__mod__
    start = 0
    while len(out) < N_ORDERED:
        chunk = map(fmt, range(start, start + (1 << 20)))
        out += [n for n in chunk if hash(n) >> 60 == 0]
        start += 1 << 20
    return out[:N_ORDERED]


def _names(order: str) -> list[bytes]:
    if order == "colliding":
        return _colliding_names()
    return [b"job-%d" % i for i in range(N_ORDERED)]


def _assert_cheap_probes(table: Any) -> None:
    longest, displacement = table._probe_stats()
    assert longest <= MAX_RUN, (len(table), longest)
    assert displacement <= 3 * len(table) + 64, (len(table), displacement)


@pytest.mark.parametrize("order", ["slot", "reverse", "random", "colliding"])
def test_name_table_deletes_in_any_order(twin: Any, order: str) -> None:
    """Every record popped in slot (iteration) order, reverse slot order,
    random order, or slot order of names with colliding hash bits: every
    lookup right after each batch, and cheap probes at every table state."""
    table = twin.NameTable()
    for i, name in enumerate(_names(order)):
        table.add(twin.JobRec(i, b"f", name))
    _assert_cheap_probes(table)
    recs = table.values()  # slot order
    if order == "reverse":
        recs.reverse()
    elif order == "random":
        random.Random(17).shuffle(recs)
    get, pop = table.get, table.pop
    i = 0
    while i < len(recs):
        # an eighth of the rest per batch: at most one resize in between
        # (a shrink leaves half the slots used, the next needs 3/4 gone)
        j = i + max(1, (len(recs) - i) // 8)
        batch = recs[i:j]
        assert all([pop(r.name) is r for r in batch])
        assert not any([r.name in table for r in batch])
        i = j
        assert len(table) == len(recs) - i
        assert all([get(r.name) is r for r in recs[i:]])
        _assert_cheap_probes(table)
    assert list(table) == [] and table.pop(recs[0].name) is None


@pytest.mark.parametrize("refill", ["copy", "clear"])
def test_name_table_fills_in_slot_order(twin: Any, refill: str) -> None:
    """Adding the records in a table's slot order (into another table, or
    into the same one after clear()) keeps the probes cheap as it grows."""
    src = twin.NameTable()
    for i, name in enumerate(_names("colliding")):
        src.add(twin.JobRec(i, b"f", name))
    recs = src.values()
    if refill == "clear":
        src.clear()
        assert len(src) == 0 and src.get(recs[0].name) is None
        table = src
    else:
        table = twin.NameTable()
    add = table.add
    i = 0
    while i < len(recs):
        # a quarter of the size per batch: at most one growth in between
        j = i + max(1, len(table) // 4)
        assert all([add(r) is None for r in recs[i:j]])
        i = j
        assert len(table) == min(i, len(recs))
        _assert_cheap_probes(table)
    assert all([table.get(r.name) is r for r in recs])


def test_memory_store_keeps_the_records(twin: Any) -> None:
    """The store indexes the record it is given (no copy); a plain Job is
    copied into a record of its own."""
    from periodic_fast.job import JobState
    from periodic_fast.store.memory import MemoryStore

    store = MemoryStore()
    rec = rec_mod.JobRec(3, b"f", b"n", b"w", 10)
    store.save_job(rec, JobState.PENDING)
    assert store._jobs[b"f"].get(b"n") is rec
    store.save_job(Job(b"f", b"m", b"", 5), JobState.RUNNING)
    got = sorted(store.load().jobs)
    assert got == [
        (Job(b"f", b"m", b"", 5), JobState.RUNNING),
        (Job(b"f", b"n", b"w", 10), JobState.PENDING),
    ]


CODE = "import periodic_fast.rec as r; print(r.IMPLEMENTATION, r.JobRec.__module__)"


def _run(env_value: str | None) -> list[str]:
    env = dict(os.environ)
    env.pop("PERIODIC_FAST_NO_EXTENSIONS", None)
    if env_value is not None:
        env["PERIODIC_FAST_NO_EXTENSIONS"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", CODE],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.split()


def test_env_var_forces_python() -> None:
    assert _run("1") == ["python", "periodic_fast._rec_py"]


@pytest.mark.c_extension
def test_cython_by_default(request: pytest.FixtureRequest) -> None:
    if os.environ.get("PERIODIC_FAST_NO_EXTENSIONS") or request.config.getoption(
        "--no-c-extensions"
    ):
        pytest.skip("C extensions disabled")
    assert _run(None) == ["cython", "periodic_fast._rec_c"]


def test_scheduler_uses_the_switch() -> None:
    from periodic_fast import rec, scheduler

    assert scheduler._JobRec is rec.JobRec
    assert scheduler._NameTable is rec.NameTable


def test_compiled_record_is_small_and_untracked() -> None:
    if len(TWINS) < 2:
        pytest.skip("C extensions not built")
    import gc

    rec = TWINS[1].JobRec(0, b"f", b"n")
    assert not gc.is_tracked(rec)
    # 71 bytes of fields: an 80-byte pymalloc block
    assert sys.getsizeof(rec) <= 72
    assert not gc.is_tracked(TWINS[1].NameTable())


def test_compiled_fields_are_range_checked() -> None:
    if len(TWINS) < 2:
        pytest.skip("C extensions not built")
    c = TWINS[1]
    with pytest.raises(OverflowError):
        c.JobRec(0, b"f", b"n", b"", 1 << 63)
    with pytest.raises(OverflowError):
        c.JobRec(0, b"f", b"n", b"", 0, 1 << 31)
    with pytest.raises(TypeError):
        c.JobRec(0, b"f", None)
    rec = c.JobRec(0, b"f", b"n")
    with pytest.raises(AttributeError):
        rec.name = b"m"  # the table key never changes
    with pytest.raises(TypeError):
        c.NameTable().add(object())


def test_name_table_reserve(twin: Any) -> None:
    table = twin.NameTable()
    with pytest.raises(ValueError, match="negative"):
        table.reserve(-1)
    table.add(twin.JobRec(0, b"f", b"first"))
    table.reserve(5000)  # with a record in it: kept
    recs = [twin.JobRec(i, b"f", b"%d" % i, b"", i) for i in range(1, 5001)]
    for rec in recs:
        assert table.add(rec) is None
    table.reserve(10)  # smaller than the table: nothing lost
    assert len(table) == 5001 and table.get(b"first") is not None
    assert all(table.get(r.name) is r for r in recs)
    if twin is not _rec_py:  # sized once: probe runs stay short
        assert table._probe_stats()[0] < 200


def test_name_table_earliest_follows_notes(twin: Any) -> None:
    """earliest() is the smallest sched_at of the pending records whatever
    the mix of adds, pops, state and time changes (each re-pend or new time
    noted, as the scheduler does)."""
    table = twin.NameTable()
    assert table.earliest() is None
    rnd = random.Random(7)
    live: dict[bytes, Any] = {}
    for step in range(6000):
        op = rnd.random()
        name = b"%d" % rnd.randrange(400)
        rec = live.get(name)
        if op < 0.35 or rec is None:
            rec = twin.JobRec(step, b"f", name, b"", rnd.randrange(-50, 1000))
            table.add(rec)
            live[name] = rec
        elif op < 0.5:
            table.pop(name)
            del live[name]
        elif op < 0.7:
            rec.state = 1  # dispatched: no call needed
        elif op < 0.85:
            rec.state = 0  # pending again, at a new time: noted
            rec.sched_at = rnd.randrange(-50, 1000)
            table.note(rec)
        else:
            rec.state = 0  # pending again at its old time
            table.note(rec)
        want = [r.sched_at for r in live.values() if r.state == 0]
        assert table.earliest() == (min(want) if want else None)
        assert table.earliest() == table.min_sched_at(0)
    table.clear()
    assert table.earliest() is None


def test_name_table_earliest_work_is_bounded(twin: Any) -> None:
    """Dead entries are dropped once, and the heap stays within twice the
    records (plus 64) however many times records are re-pended."""
    for n in (100, 20_000):
        table = twin.NameTable()
        recs = [twin.JobRec(i, b"f", b"%d" % i, b"", 10 * i) for i in range(n)]
        for rec in recs:
            table.add(rec)
        assert table.earliest() == 0
        before = table.visits
        for _ in range(10):
            assert table.earliest() == 0
        assert table.visits - before == 10  # one look each, any size
        for rec in recs[:50]:  # the 50 earliest dispatched
            rec.state = 1
        before = table.visits
        assert table.earliest() == 500
        assert table.visits - before == 51  # 50 dead entries + the live one
    table = twin.NameTable()
    rec = twin.JobRec(0, b"f", b"x", b"", 5)
    table.add(rec)
    for t in range(10_000):  # re-pended at a later time each round
        rec.sched_at = t
        table.note(rec)
    assert table.earliest() == 9999
    assert table.visits < 200  # rebuilt on the way: no pile of dead entries


def test_name_table_fill(twin: Any) -> None:
    """The start-up loop: records, ids, wheel or due, stale states, and the
    first of two rows of one name kept."""
    table = twin.NameTable()
    table.reserve(4)
    recs: list[Any] = [None]  # id 0 taken: ids go on from jid
    wheel: list[tuple[int, int]] = []
    due: list[int] = []
    stale: list[bytes] = []
    rows = [
        (b"a", b"wa", 50, 1, 2, 0),
        (b"b", b"", 10, 0, 0, 1),  # stored running
        (b"a", b"again", 99, 0, 0, 2),  # a duplicate: dropped
        (b"c", b"", 20, -3, 7, 0),
    ]
    args = (1, recs, 20, lambda i, w: wheel.append((i, w)), due, stale)
    assert table.fill(rows, b"f", *args) == 4
    assert [r.name for r in recs[1:]] == [b"a", b"b", b"c"]
    a = table.get(b"a")
    assert a is recs[1] and a.job == Job(b"f", b"a", b"wa", 50, 1, 2)
    assert (a.id, a.where, recs[2].where) == (1, 1, 0)
    assert wheel == [(1, 50)] and due == [2, 3] and stale == [b"b"]
    assert table.earliest() == 10
    with pytest.raises(ValueError, match="5 fields"):
        table.fill([(b"x", b"", 1, 0, 0)], b"f", *args)


def test_name_table_earliest_after_mass_deletion(twin: Any) -> None:
    """Records popped without any push: the next read rebuilds the heap from
    the few records left instead of popping every dead entry."""
    table = twin.NameTable()
    for i in range(20_000):
        table.add(twin.JobRec(i, b"f", b"%d" % i, b"", i))
    for i in range(19_990):  # the earliest ones: their entries on top
        table.pop(b"%d" % i)
    before = table.visits
    assert table.earliest() == 19_990
    assert table.visits - before == 1
