"""The dashboard's per-func minutes (sched_series) with a fake clock: bucket
roll-over, gaps, the one-hour window, bounded memory; the scheduler's hooks
(WORK_DONE, WORK_FAIL, timeouts, lateness, dropped funcs) and
``GET /api/series`` through :class:`AdminClient`.  Run on both twins
(``PERIODIC_FAST_NO_EXTENSIONS=1`` for the pure ones)."""

from __future__ import annotations

import asyncio
import time

import pytest
from test_scheduler import Harness, assigns

from periodic_fast.admin import AdminClient, AdminError
from periodic_fast.constants import Command as C
from periodic_fast.sched_series import SERIES_MINUTES, SeriesBook
from periodic_fast.testing import running_server

M0 = 1_700_000_040.0  # the start of a minute (divisible by 60)
assert M0 % 60 == 0


def _one(book: SeriesBook, now: float, func: bytes = b"f") -> dict[str, list]:
    snap = book.snapshot(now, func=func)
    assert len(snap.funcs) == 1
    p = snap.funcs[0]
    return {"done": p.done, "failed": p.failed, "avg": p.late_avg, "max": p.late_max}


def test_counts_land_in_their_minute_and_roll_over() -> None:
    book = SeriesBook()
    book.done(b"f", M0 + 1)
    book.done(b"f", M0 + 59.9)
    book.failed(b"f", M0 + 30)
    book.done(b"f", M0 + 60)  # the next minute
    snap = book.snapshot(M0 + 61)
    assert snap.minute == M0 + 60
    p = _one(book, M0 + 61)
    assert len(p["done"]) == SERIES_MINUTES
    assert p["done"][-2:] == [2, 1]
    assert p["failed"][-2:] == [1, 0]
    assert sum(p["done"]) == 3 and sum(p["failed"]) == 1
    # the same read a minute later: everything moved one slot left
    later = _one(book, M0 + 125)
    assert later["done"][-3:] == [2, 1, 0]
    assert book.snapshot(M0 + 125).minute == M0 + 120


def test_lateness_average_and_max_per_minute() -> None:
    book = SeriesBook()
    book.late(b"f", 1.0, M0 + 5)
    book.late(b"f", 3.0, M0 + 6)
    book.late(b"f", -2.0, M0 + 7)  # a wall clock that stepped back: 0
    book.late(b"f", 0.5, M0 + 70)
    p = _one(book, M0 + 70)
    assert p["avg"][-2:] == [pytest.approx(4.0 / 3, abs=1e-3), 0.5]
    assert p["max"][-2:] == [3.0, 0.5]
    # a minute with no assignment has no lateness (None), not 0
    assert p["avg"][-3] is None and p["max"][-3] is None
    assert p["done"][-2:] == [0, 0]


def test_gaps_read_as_empty_minutes() -> None:
    book = SeriesBook()
    book.done(b"f", M0)
    book.done(b"f", M0 + 10 * 60 + 1)  # ten idle minutes in between
    book.done(b"f", M0 + 10 * 60 + 2)
    p = _one(book, M0 + 10 * 60 + 3)
    assert p["done"][-11:] == [1] + [0] * 9 + [2]
    # a slot reused after a full lap does not show its old minute
    book.done(b"f", M0 + 70 * 60)  # 70 minutes on: slot of minute 10 reused
    p = _one(book, M0 + 70 * 60)
    assert sum(p["done"]) == 1  # minutes 0 and 10 are out of the window
    assert p["done"][-1] == 1


def test_one_hour_window() -> None:
    book = SeriesBook()
    for i in range(90):  # one done per minute for 90 minutes
        book.done(b"f", M0 + i * 60 + 1)
    p = _one(book, M0 + 89 * 60 + 2)
    assert p["done"] == [1] * SERIES_MINUTES
    # an hour after the last event the func is gone from the answer
    assert book.snapshot(M0 + (89 + SERIES_MINUTES) * 60 + 1).funcs == []
    # and from memory at the next roll-over
    book.done(b"g", M0 + (89 + SERIES_MINUTES) * 60 + 1)
    book.done(b"g", M0 + (90 + SERIES_MINUTES) * 60 + 1)
    assert len(book) == 1


def test_memory_is_bounded_by_max_funcs_and_forget() -> None:
    book = SeriesBook(max_funcs=3)
    for i in range(10):
        book.done(b"f%d" % i, M0 + i)
    assert len(book) == 3
    assert book.untracked == 7
    # rolled into rings: still 3, the next minute too
    book.done(b"f9", M0 + 61)
    assert len(book) == 3 and book.untracked == 8
    book.forget(b"f0")
    assert len(book) == 2
    book.done(b"f9", M0 + 62)
    assert len(book) == 3
    assert {p.func for p in book.snapshot(M0 + 62).funcs} == {b"f1", b"f2", b"f9"}
    book.forget(b"f9")  # a func only in the running minute
    assert len(book) == 2
    book.done(b"new", M0 + 63)
    assert len(book) == 3


def test_snapshot_order_limit_and_func_filter() -> None:
    book = SeriesBook()
    for _ in range(3):
        book.done(b"busy", M0)
    book.failed(b"mid", M0)
    book.failed(b"mid", M0)
    book.done(b"quiet", M0)
    snap = book.snapshot(M0 + 1, limit=2)
    assert [p.func for p in snap.funcs] == [b"busy", b"mid"]
    assert snap.tracked == 3
    assert [p.func for p in book.snapshot(M0 + 1, func=b"quiet").funcs] == [b"quiet"]
    assert book.snapshot(M0 + 1, func=b"nope").funcs == []
    # a read changes nothing: a clock behind the running minute reads it
    assert book.snapshot(M0 - 500).minute == M0


def test_wall_clock_step_back_keeps_the_running_minute() -> None:
    book = SeriesBook()
    book.done(b"f", M0 + 120)
    book.done(b"f", M0 + 30)  # stepped back two minutes: counted now
    p = _one(book, M0 + 120)
    assert p["done"][-1] == 2 and sum(p["done"]) == 2


# -- the scheduler feeds it ---------------------------------------------------------


def test_scheduler_hooks_done_fail_timeout_lateness() -> None:
    h = Harness(now=M0)
    h.submit(b"f", b"a", sched_at=int(M0) + 1)  # 5 s late when assigned
    h.submit(b"f", b"b", sched_at=int(M0) + 5)  # 1 s late
    h.submit(b"f", b"c", sched_at=int(M0) + 6, timeout=3)  # on time
    h.advance(6)  # no worker yet
    w = h.worker(b"f", slots=[1, 2, 3])
    got = {job.name: m for m, job in assigns(w.take())}
    assert set(got) == {b"a", b"b", b"c"}
    for m in got.values():
        w.assigned(m)
    w.done(b"f", b"a")
    w.req(C.WORK_FAIL, b"f", b"b")
    h.advance(5)  # c times out: failed
    snap = h.s.series(h.now)
    (p,) = snap.funcs
    assert p.func == b"f"
    assert p.done[-1] == 1
    assert p.failed[-1] == 2
    assert p.late_max[-1] == 5.0
    assert p.late_avg[-1] == pytest.approx(2.0)


def test_dropping_a_func_forgets_its_series() -> None:
    h = Harness(now=M0)
    h.submit(b"gone", b"a")
    w = h.worker(b"gone", slots=[1])
    [(m, _)] = assigns(w.take())
    w.done(b"gone", b"a")
    assert [p.func for p in h.s.series(h.now).funcs] == [b"gone"]
    h.disconnect(w)
    h.client().req(C.DROP_FUNC, b"gone")
    assert h.s.series(h.now).funcs == []


def test_api_series_over_http() -> None:
    async def main() -> None:
        async with running_server(unix=False) as srv:
            sched = srv.scheduler
            now = time.time()
            sched._series.done(b"email", now)  # noqa: SLF001 - a fed book
            sched._series.late(b"email", 2.5, now)  # noqa: SLF001
            sched._series.failed("ünï".encode(), now)  # noqa: SLF001
            admin = AdminClient(srv.addresses[0])
            ans = await admin.series()
            assert ans["minute"] == int(now // 60) * 60
            assert set(ans["funcs"]) == {"email", "ünï"}
            email = ans["funcs"]["email"]
            assert len(email["done"]) == 60
            assert email["done"][-1] == 1 and email["late_max"][-1] == 2.5
            assert email["late_avg"][0] is None
            one = await admin.series("ünï")
            assert list(one["funcs"]) == ["ünï"]
            assert one["funcs"]["ünï"]["failed"][-1] == 1
            assert (await admin.series(limit=1))["tracked"] == 2
            assert len((await admin.series(limit=1))["funcs"]) == 1
            with pytest.raises(AdminError) as err:
                await admin.series(limit=100_000)
            assert err.value.status == 400

    asyncio.run(main())
