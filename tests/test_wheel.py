"""Unit tests of the timer wheel, run on both twins through ``wheel_impl``."""

from __future__ import annotations

from types import ModuleType

import pytest

BASE = 1_700_000_000  # an epoch second that is a multiple of 64
YEAR = 365 * 86400
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1


def test_empty(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel()
    assert len(w) == 0
    assert w.next_due() is None
    assert w.advance(BASE) == []
    assert 1 not in w
    assert w.when(1) is None
    assert w.time == BASE


def test_constants(wheel_impl: ModuleType) -> None:
    assert wheel_impl.MAX_JOB_ID == 2**32 - 1
    assert (wheel_impl.MIN_TIME, wheel_impl.MAX_TIME) == (I64_MIN, I64_MAX)
    assert (wheel_impl.LEVELS, wheel_impl.SLOTS) == (11, 64)
    assert wheel_impl.DEFAULT_CASCADE_CHUNK >= 1024


def test_add_advance_order(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    w.add(3, BASE + 30)
    w.add(1, BASE + 10)
    w.add(2, BASE + 20)
    assert len(w) == 3 and 2 in w and w.when(2) == BASE + 20
    assert w.next_due() == BASE + 10
    assert w.advance(BASE + 9) == []
    assert w.advance(BASE + 20) == [1, 2]
    assert w.advance(BASE + 100) == [3]
    assert len(w) == 0 and 3 not in w


def test_docstring_example(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(1000)
    w.add(7, 1010)
    w.add(8, 5000)
    assert w.advance(6000) == [7, 8]
    assert w.time == 6000


def test_same_second_fifo(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    ids = [9, 4, 7, 1, 100, 0, 55]
    for i in ids:
        w.add(i, BASE + 5000)  # upper level: FIFO must survive cascading
    w.add(200, BASE + 4999)
    assert w.advance(BASE + 5000) == [200, *ids]


def test_fifo_across_levels(wheel_impl: ModuleType) -> None:
    # an early add waits in an upper level, a later one for the same second
    # lands lower after time moved: the early one must still come first
    w = wheel_impl.TimerWheel(BASE)
    target = BASE + 3 * 86400 + 17
    w.add(1, target)
    for step in (86400, 2 * 86400, 3 * 86400, 3 * 86400 + 10):
        assert w.advance(BASE + step) == []
        w.add(10 + step % 97, target)
    assert w.advance(target) == [1] + [10 + s % 97 for s in (86400, 172800, 259200)] + [
        10 + (3 * 86400 + 10) % 97
    ]


def test_reschedule_moves(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    w.add(1, BASE + 10)
    w.add(2, BASE + 10)
    w.add(1, BASE + 10)  # re-add: goes to the back of its second
    assert w.advance(BASE + 10) == [2, 1]
    w.add(5, BASE + 50)
    w.add(5, BASE + 3 * YEAR)
    assert len(w) == 1 and w.when(5) == BASE + 3 * YEAR
    assert w.next_due() == BASE + 3 * YEAR
    assert w.advance(BASE + 100) == []
    w.add(5, BASE + 101)
    assert w.advance(BASE + 101) == [5]


def test_cancel(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    assert w.cancel(1) is False
    w.add(1, BASE + 5)
    w.add(2, BASE + 5)
    assert w.cancel(1) is True
    assert w.cancel(1) is False
    assert 1 not in w and len(w) == 1
    assert w.advance(BASE + 5) == [2]
    assert w.cancel(2) is False


def test_readd_after_expiry(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    w.add(1, BASE + 1)
    assert w.advance(BASE + 1) == [1]
    w.add(1, BASE + 2)
    assert 1 in w
    assert w.advance(BASE + 2) == [1]


def test_past_times_due_next(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    w.add(1, BASE + 10)
    assert w.advance(BASE + 20) == [1]
    w.add(2, BASE - 1000)  # late: due at the wheel's time, FIFO among late
    w.add(3, BASE + 20)
    w.add(4, I64_MIN)
    assert w.when(2) == BASE + 20 and w.when(4) == BASE + 20
    assert w.next_due() == BASE + 20
    assert w.advance(BASE + 20) == [2, 3, 4]


def test_late_add_behind_leftovers(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    for i in range(5):
        w.add(i, BASE + 3)
    assert w.advance(BASE + 10, limit=2) == [0, 1]
    w.add(9, BASE)  # late: due at T = BASE + 10, after the leftovers
    assert w.advance(BASE + 10) == [2, 3, 4, 9]


def test_backwards_now(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    for i in range(4):
        w.add(i, BASE + 10 + i)
    w.add(10, BASE + 100)
    assert w.advance(BASE + 20, limit=1) == [0]
    assert w.time == BASE + 20
    # now goes back: only leftovers due at or before it come out
    assert w.advance(BASE + 11) == [1]
    assert w.advance(BASE + 5) == []
    assert w.time == BASE + 20  # never moves back
    w.add(20, BASE + 15)  # late relative to T: due at T
    assert w.advance(BASE + 15) == [2, 3]  # leftovers <= 15, not 20 (due 20)
    assert w.advance(BASE + 19) == []
    assert w.advance(BASE + 20) == [20]
    assert w.advance(BASE + 99) == []
    assert w.advance(BASE + 100) == [10]


@pytest.mark.parametrize(
    "when",
    [BASE + 1000 * YEAR, 2**62, I64_MAX, I64_MAX - 1, 32503680000],
    ids=["1000y", "2**62", "max", "max-1", "year3000"],
)
def test_far_future(wheel_impl: ModuleType, when: int) -> None:
    w = wheel_impl.TimerWheel(BASE)
    w.add(1, when)
    w.add(2, BASE + 1)
    assert w.next_due() == BASE + 1
    assert w.advance(BASE + 1) == [2]
    assert w.next_due() == when
    assert w.advance(when - 1) == []
    assert w.advance(when) == [1]
    assert w.next_due() is None


def test_far_past_and_min(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel()  # starts at MIN_TIME: nothing is late
    assert w.time == I64_MIN
    w.add(1, I64_MIN)
    w.add(2, -(2**62))
    w.add(3, 0)
    w.add(4, I64_MAX)
    assert w.next_due() == I64_MIN
    assert w.advance(I64_MIN) == [1]
    assert w.advance(-1) == [2]
    assert w.advance(0) == [3]
    assert w.advance(I64_MAX) == [4]
    assert w.time == I64_MAX
    w.add(5, 0)  # late at the very end of time
    assert w.advance(I64_MAX) == [5]


@pytest.mark.parametrize("jump", [0, 1, 63, 64, 65, 4095, 4096, 86400, YEAR, 50 * YEAR])
def test_time_jumps(wheel_impl: ModuleType, jump: int) -> None:
    w = wheel_impl.TimerWheel(BASE)
    offsets = [0, 1, 2, 63, 64, 65, 4095, 4096, 86400, YEAR, 40 * YEAR]
    for i, off in enumerate(offsets):
        w.add(i, BASE + off)
    got: list[int] = []
    prev = now = BASE - 1
    for _ in range(300):
        now += jump
        part = w.advance(now)
        assert part == [i for i, off in enumerate(offsets) if prev < BASE + off <= now]
        got += part
        prev = max(prev, now)
    got += w.advance(BASE + 40 * YEAR)
    assert got == list(range(len(offsets)))
    assert len(w) == 0


def test_limits(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    for i in range(50):
        w.add(i, BASE + 1000 + i // 10)
    assert w.advance(BASE + 2000, limit=0) == []
    got = []
    while True:
        part = w.advance(BASE + 2000, limit=7)
        assert len(part) <= 7
        if not part:
            break
        got += part
    assert got == list(range(50))
    with pytest.raises(ValueError):
        w.advance(BASE, limit=-1)


def test_limit_and_cascade_chunk(wheel_impl: ModuleType) -> None:
    # a tiny cascade budget: calls may return fewer than limit (even none)
    # while next_due() <= now says more is due; the order stays exact
    w = wheel_impl.TimerWheel(BASE, cascade_chunk=3)
    expected = []
    for i in range(40):
        w.add(i, BASE + 100_000 + (i * 7919) % 5)
    expected = sorted(range(40), key=lambda i: ((i * 7919) % 5, i))
    got: list[int] = []
    calls = 0
    while True:
        part = w.advance(BASE + 200_000, limit=4)
        calls += 1
        assert len(part) <= 4
        got += part
        nd = w.next_due()
        if nd is None or nd > BASE + 200_000:
            break
    assert got == expected
    assert calls > 10
    # without a limit there is no budget: everything at once
    w2 = wheel_impl.TimerWheel(BASE, cascade_chunk=1)
    for i in range(40):
        w2.add(i, BASE + 100_000 + (i * 7919) % 5)
    assert w2.advance(BASE + 200_000) == expected


def test_next_due_exact(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    seen = []
    for off in (86400 * 3 + 17, 3600 + 5, 70):
        w.add(off, BASE + off)
        seen.append(off)
        assert w.next_due() == BASE + min(seen)
    assert w.next_due() == BASE + 70
    w.cancel(70)
    # the earliest of an upper-level slot was cancelled: never later than
    # the true earliest, and exact again once that slot was cascaded
    nd = w.next_due()
    assert nd is not None and nd <= BASE + 3605
    while nd is not None and nd < BASE + 3605:
        assert w.advance(nd) == []
        nd = w.next_due()
    assert nd == BASE + 3605


def test_large_burst_one_second(wheel_impl: ModuleType) -> None:
    n = 200_000
    w = wheel_impl.TimerWheel(BASE)
    for i in range(n):
        w.add(i, BASE + 100_000)
    w.add(n, BASE + 99_999)
    assert len(w) == n + 1
    assert w.next_due() == BASE + 99_999
    got: list[int] = []
    calls = 0
    while len(w):
        part = w.advance(BASE + 100_000, limit=50_000)
        assert len(part) <= 50_000
        got += part
        calls += 1
        if not part:  # stopped by the cascade budget: more is due
            nd = w.next_due()
            assert nd is not None and nd <= BASE + 100_000
    assert got == [n, *range(n)]
    assert calls >= 5


def test_sparse_and_extreme_ids(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    ids = [2**32 - 1, 0, 2**31, 2**31 - 1, 123_456_789, 7, 3_000_000_000]
    for k, i in enumerate(ids):
        w.add(i, BASE + 10 + k % 2)
    assert all(i in w for i in ids) and len(w) == len(ids)
    assert w.cancel(2**31) is True and 2**31 not in w
    w.add(2**31, BASE + 12)
    assert w.advance(BASE + 100) == [i for i in ids[0::2] if i != 2**31] + ids[1::2] + [
        2**31
    ]


def test_many_sparse_ids(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    ids = [(i * 2654435761) % 2**32 for i in range(1, 3000)]
    for k, i in enumerate(ids):
        w.add(i, BASE + k % 50)
    for i in ids[::3]:
        assert w.cancel(i)
    left = [i for i in ids if i not in set(ids[::3])]
    assert len(w) == len(left)
    assert all(i in w for i in left)
    got = w.advance(BASE + 50)
    order = {i: k for k, i in enumerate(ids)}
    assert got == sorted(left, key=lambda i: (order[i] % 50, order[i]))


def test_dense_growth_then_sparse_below_cap(wheel_impl: ModuleType) -> None:
    # an id first stored as sparse stays findable after the direct array
    # grows over it
    w = wheel_impl.TimerWheel(BASE)
    w.add(500_000, BASE + 5)
    for i in range(300_000):
        w.add(i, BASE + 1)
    w.add(600_000, BASE + 6)
    assert 500_000 in w and w.when(500_000) == BASE + 5
    w.add(500_000, BASE + 7)
    assert w.advance(BASE + 5)[-1] == 299_999
    assert w.advance(BASE + 7) == [600_000, 500_000]


def test_len_contains(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    for i in range(10):
        w.add(i, BASE + i)
    assert len(w) == 10
    assert 3 in w and 10 not in w
    assert -1 not in w and 2**32 not in w and "3" not in w and 3.0 not in w
    w.advance(BASE + 4)
    assert len(w) == 5 and 4 not in w and 5 in w
    w.clear()
    assert len(w) == 0 and 5 not in w and w.next_due() is None
    w.add(5, BASE + 5)
    assert w.advance(BASE + 5) == [5]


@pytest.mark.parametrize("bad", [-1, 2**32, 2**40])
def test_bad_ids(wheel_impl: ModuleType, bad: int) -> None:
    w = wheel_impl.TimerWheel(BASE)
    with pytest.raises(OverflowError):
        w.add(bad, BASE)
    with pytest.raises(OverflowError):
        w.cancel(bad)
    with pytest.raises(OverflowError):
        w.when(bad)
    assert len(w) == 0


@pytest.mark.parametrize("bad", [2**63, -(2**63) - 1, 2**70])
def test_bad_times(wheel_impl: ModuleType, bad: int) -> None:
    w = wheel_impl.TimerWheel(BASE)
    with pytest.raises(OverflowError):
        w.add(1, bad)
    with pytest.raises(OverflowError):
        w.advance(bad)
    with pytest.raises(OverflowError):
        wheel_impl.TimerWheel(bad)
    assert len(w) == 0


def test_type_errors(wheel_impl: ModuleType) -> None:
    w = wheel_impl.TimerWheel(BASE)
    for call in (
        lambda: w.add(1.0, BASE),
        lambda: w.add(1, float(BASE)),
        lambda: w.add("1", BASE),
        lambda: w.advance(float(BASE)),
        lambda: w.advance(BASE, limit=1.5),
        lambda: w.cancel(None),
        lambda: wheel_impl.TimerWheel(1.5),
    ):
        with pytest.raises(TypeError):
            call()
    with pytest.raises(ValueError):
        wheel_impl.TimerWheel(cascade_chunk=0)
    w.add(True, BASE + 1)  # bool is an int
    assert w.advance(BASE + 1) == [1]


# -- garbage (lazy deletion) and bounded work ----------------------------------
# The C twin cancels and reschedules lazily and compacts slot arrays; these
# drive those paths hard and check results against a plain model.


def _model_order(model: dict[int, tuple[int, int]], now: int) -> list[int]:
    return [k for _, k in sorted((v, k) for k, v in model.items() if v[0] <= now)]


def test_reschedule_churn_matches_model(wheel_impl: ModuleType) -> None:
    import random

    rng = random.Random(11)
    w = wheel_impl.TimerWheel(BASE)
    model: dict[int, tuple[int, int]] = {}
    seq = 0
    now = BASE
    n = 3000
    for step in range(40):
        # heavy churn: many reschedules, some cancels, mostly in few slots
        for _ in range(2000):
            job = rng.randrange(n)
            if rng.random() < 0.15:
                assert w.cancel(job) is (job in model)
                model.pop(job, None)
            else:
                when = now + rng.choice(
                    [0, 1, 5, 70, 4000, 90_000, rng.randrange(300_000)]
                )
                w.add(job, when)
                model[job] = (max(when, now), seq)
                seq += 1
        assert len(w) == len(model)
        now += rng.choice([1, 60, 3600, 50_000])
        limit = rng.choice([None, 1, 7, 500])
        got = w.advance(now, limit)
        expected = _model_order(model, now)
        assert got == (expected if limit is None else expected[:limit])
        for k in got:
            del model[k]
        if step % 7 == 0:
            nd = w.next_due()
            assert (nd is None) == (not model)
            if model:
                assert nd is not None and nd <= min(v[0] for v in model.values())
    got = []
    while model and len(got) < len(model) + 1:
        part = w.advance(now + 400_000, 1000)
        if not part and w.next_due() is None:
            break
        got += part
    assert got == _model_order(model, now + 400_000)


def test_cancel_most_of_a_cascading_slot(wheel_impl: ModuleType) -> None:
    # one upper-level slot, cascaded in small chunks while most of its
    # entries are cancelled and others rescheduled into its range
    w = wheel_impl.TimerWheel(BASE, cascade_chunk=50)
    start = (BASE // 4096 + 2) * 4096
    n = 5000
    for i in range(n):
        w.add(i, start + (i * 37) % 4096)
    first = w.advance(start + 2000, 10)
    assert first == []  # the cascade budget is spent first
    for i in range(0, n, 3):
        assert w.cancel(i)
    for i in range(1, n, 3):
        w.add(i, start + 3000)  # back into the range being cascaded
    survivors = sorted(range(2, n, 3), key=lambda i: ((i * 37) % 4096, i))
    expected = (
        [i for i in survivors if (i * 37) % 4096 <= 3000]
        + list(range(1, n, 3))
        + [i for i in survivors if (i * 37) % 4096 > 3000]
    )
    now = start + 4096
    got: list[int] = []
    for _ in range(100_000):
        part = w.advance(now, 64)
        assert len(part) <= 64
        got += part
        nd = w.next_due()
        if nd is None or nd > now:
            break
    assert got == expected
    assert len(w) == 0


def test_many_stale_cells_bounded_calls(wheel_impl: ModuleType) -> None:
    # 200k entries in one slot, the first half cancelled: a limited call may
    # stop early on its work bound, but the caller loop gets the exact rest
    w = wheel_impl.TimerWheel(BASE, cascade_chunk=1)
    start = (BASE // 4096 + 2) * 4096
    n = 200_000
    for i in range(n):
        w.add(i, start + 100)
    for i in range(n // 2):
        w.cancel(i)
    now = start + 200
    got: list[int] = []
    calls = 0
    while True:
        part = w.advance(now, 100_000)
        calls += 1
        got += part
        nd = w.next_due()
        if nd is None or nd > now:
            break
    assert got == list(range(n // 2, n))
    assert calls >= 2  # at most one cascade move per call: several calls


def test_churn_memory_bounded() -> None:
    # C twin: garbage stays bounded; heavy rescheduling (2 moves per entry)
    # costs at most a few bytes per live entry on top of the fresh wheel
    import random
    import tracemalloc

    from periodic_fast._compat import NO_EXTENSIONS

    if NO_EXTENSIONS:
        pytest.skip("C extensions disabled")
    from periodic_fast import _wheel_c

    rng = random.Random(5)
    n = 100_000
    span = 30 * 86400
    tracemalloc.start()
    try:
        w = _wheel_c.TimerWheel(BASE)
        for i in range(n):
            w.add(i, BASE + rng.randrange(span))
        before = tracemalloc.get_traced_memory()[0] / n
        for _ in range(2 * n):
            w.add(rng.randrange(n), BASE + rng.randrange(span))
        after = tracemalloc.get_traced_memory()[0] / len(w)
    finally:
        tracemalloc.stop()
    assert len(w) == n
    assert after <= before + 8, (before, after)
