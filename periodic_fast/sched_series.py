"""Per-func activity over the last hour, one bucket per minute (the dashboard).

:class:`SeriesBook` counts, per func and per wall-clock minute, the jobs
done (WORK_DONE), failed (WORK_FAIL and run timeouts) and the lateness of
each job's first assignment (average and maximum).  The scheduler calls
:meth:`SeriesBook.done`, :meth:`SeriesBook.failed` and
:meth:`SeriesBook.late` on its paths with the wall time of the frame: each
is a comparison, a dict lookup and an increment, the minute's roll-over
aside.  Nothing here reads a clock.

Memory is bounded: the running minute is one small list per active func;
finished minutes go to a ring of :data:`SERIES_MINUTES` slots per func
(compact ``array``\\ s, ~2.4 kB a func).  A slot is labelled with its minute,
so a gap (minutes without activity, or the whole book idle) needs no
clearing: a slot whose label is not the minute asked for reads as empty.  A
func's rings go when the func is forgotten (:meth:`SeriesBook.forget`) or
after an hour without activity, and at most ``max_funcs`` funcs are tracked
at once (events of further funcs are counted in ``untracked`` only).

``/metrics`` stays the long-term store; this is the dashboard's last hour.
"""

from __future__ import annotations

from array import array
from typing import Final, NamedTuple

__all__ = [
    "MAX_SERIES_FUNCS",
    "SERIES_MINUTES",
    "FuncPoints",
    "SeriesBook",
    "SeriesSnapshot",
]

#: Minutes kept per func (one bucket each): the last hour.
SERIES_MINUTES: Final = 60
#: Funcs tracked at once; events of others are only counted.
MAX_SERIES_FUNCS: Final = 1000

_N: Final = SERIES_MINUTES
# the running minute's accumulator, per func: done, failed, lateness sum,
# lateness samples, lateness max
_DONE, _FAILED, _LSUM, _LN, _LMAX = range(5)


class FuncPoints(NamedTuple):
    """One func's last hour, oldest minute first (:data:`SERIES_MINUTES`
    values each; lateness is None for a minute without an assignment)."""

    func: bytes
    done: list[int]
    failed: list[int]
    late_avg: list[float | None]
    late_max: list[float | None]


class SeriesSnapshot(NamedTuple):
    """What :meth:`SeriesBook.snapshot` returns."""

    minute: int  #: Unix time of the start of the newest minute
    funcs: list[FuncPoints]  #: busiest first (done + failed over the hour)
    tracked: int  #: funcs with activity in the book (before ``limit``)


class _Ring:
    """A func's finished minutes: slot ``m % 60`` holds minute ``m``."""

    __slots__ = ("done", "failed", "late_avg", "late_max", "minutes", "newest")

    def __init__(self) -> None:
        self.minutes = array("q", [-1]) * _N  # the minute each slot holds
        self.done = array("q", [0]) * _N
        self.failed = array("q", [0]) * _N
        self.late_avg = array("d", [0.0]) * _N
        self.late_max = array("d", [-1.0]) * _N  # -1: no lateness sample
        self.newest = -1  # the newest minute written


class SeriesBook:
    """Per-func one-minute buckets of the last hour.

    :param max_funcs: funcs tracked at once (0: none, the book is off).
    """

    __slots__ = (
        "_cur",
        "_fresh",
        "_minute",
        "_next",
        "_rings",
        "max_funcs",
        "untracked",
    )

    def __init__(self, max_funcs: int = MAX_SERIES_FUNCS) -> None:
        self.max_funcs = max_funcs
        #: events dropped because ``max_funcs`` funcs were tracked already
        self.untracked = 0
        self._minute = -1  # the running minute (Unix time // 60)
        self._next = float("-inf")  # wall time at which it ends
        self._cur: dict[bytes, list[float]] = {}  # func -> accumulator
        self._fresh = 0  # funcs in _cur without a ring yet
        self._rings: dict[bytes, _Ring] = {}

    # -- the scheduler's hooks (hot paths: keep them short) ---------------------

    def done(self, func: bytes, now: float) -> None:
        """A job of ``func`` ended with WORK_DONE at wall time ``now``."""
        if now >= self._next:
            self._roll(now)
        acc = self._cur.get(func)
        if acc is None:
            acc = self._open(func)
            if acc is None:
                return
        acc[_DONE] += 1

    def failed(self, func: bytes, now: float) -> None:
        """A run of a ``func`` job failed (WORK_FAIL, or it timed out)."""
        if now >= self._next:
            self._roll(now)
        acc = self._cur.get(func)
        if acc is None:
            acc = self._open(func)
            if acc is None:
                return
        acc[_FAILED] += 1

    def late(self, func: bytes, seconds: float, now: float) -> None:
        """A ``func`` job was first assigned ``seconds`` after its sched_at."""
        if now >= self._next:
            self._roll(now)
        acc = self._cur.get(func)
        if acc is None:
            acc = self._open(func)
            if acc is None:
                return
        if seconds < 0.0:  # the wall clock stepped back meanwhile
            seconds = 0.0
        acc[_LSUM] += seconds
        acc[_LN] += 1
        if seconds > acc[_LMAX]:
            acc[_LMAX] = seconds

    def forget(self, func: bytes) -> None:
        """``func`` is gone (dropped or forgotten): its buckets go with it."""
        if self._cur.pop(func, None) is not None and func not in self._rings:
            self._fresh -= 1
        self._rings.pop(func, None)

    # -- bookkeeping -------------------------------------------------------------

    def _open(self, func: bytes) -> list[float] | None:
        """The running minute's accumulator of a func not seen in it yet."""
        if func not in self._rings:
            if len(self._rings) + self._fresh >= self.max_funcs:
                self.untracked += 1
                return None
            self._fresh += 1
        acc: list[float] = [0, 0, 0.0, 0, -1.0]
        self._cur[func] = acc
        return acc

    def _roll(self, now: float) -> None:
        """A new minute began: file the running one, drop funcs idle for an
        hour.  A wall clock that stepped back keeps the running minute."""
        minute = int(now // 60)
        old = self._minute
        if minute <= old:  # pragma: no cover - _next guards this
            return
        rings = self._rings
        if old >= 0:
            slot = old % _N
            for func, acc in self._cur.items():
                ring = rings.get(func)
                if ring is None:
                    ring = rings[func] = _Ring()
                ring.minutes[slot] = old
                ring.done[slot] = int(acc[_DONE])
                ring.failed[slot] = int(acc[_FAILED])
                n = acc[_LN]
                ring.late_avg[slot] = acc[_LSUM] / n if n else 0.0
                ring.late_max[slot] = acc[_LMAX]
                ring.newest = old
        self._cur = {}
        self._fresh = 0
        horizon = minute - _N  # a ring whose newest minute is this old is empty
        stale = [f for f, r in rings.items() if r.newest <= horizon]
        for func in stale:
            del rings[func]
        self._minute = minute
        self._next = (minute + 1) * 60.0

    # -- reading -------------------------------------------------------------------

    def snapshot(
        self, now: float, *, limit: int = 50, func: bytes | None = None
    ) -> SeriesSnapshot:
        """The last hour up to the minute of ``now`` (oldest first): the
        ``limit`` busiest funcs, or only ``func``.  Reads, changes nothing."""
        newest = max(int(now // 60), self._minute)
        first = newest - _N + 1
        names = set(self._rings) | set(self._cur)
        if func is not None:
            names &= {func}
        out = [p for p in (self._points(f, first) for f in names) if p is not None]
        out.sort(key=lambda p: (-(sum(p.done) + sum(p.failed)), p.func))
        return SeriesSnapshot(newest * 60, out[: max(0, limit)], len(out))

    def _points(self, func: bytes, first: int) -> FuncPoints | None:
        done = [0] * _N
        failed = [0] * _N
        late_avg: list[float | None] = [None] * _N
        late_max: list[float | None] = [None] * _N
        seen = False
        ring = self._rings.get(func)
        if ring is not None and ring.newest >= first:
            for slot, m in enumerate(ring.minutes):
                i = m - first
                if 0 <= i < _N:
                    seen = True
                    done[i] = ring.done[slot]
                    failed[i] = ring.failed[slot]
                    if ring.late_max[slot] >= 0.0:
                        late_avg[i] = round(ring.late_avg[slot], 3)
                        late_max[i] = round(ring.late_max[slot], 3)
        acc = self._cur.get(func)
        i = self._minute - first
        if acc is not None and 0 <= i < _N:
            seen = True
            done[i] = int(acc[_DONE])
            failed[i] = int(acc[_FAILED])
            n = acc[_LN]
            if n:
                late_avg[i] = round(acc[_LSUM] / n, 3)
                late_max[i] = round(acc[_LMAX], 3)
        if not seen:
            return None
        return FuncPoints(func, done, failed, late_avg, late_max)

    def __len__(self) -> int:
        """Funcs tracked now (with a ring or activity this minute)."""
        return len(self._rings) + self._fresh
