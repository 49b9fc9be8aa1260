"""The job browser, scheduler side: list a func's jobs, show one, act on one.

:class:`JobBrowser` serves the job-browser API (docs/jobs.md) from the
scheduler's records.  It reads no clock and does no I/O; the scheduler
delegates to it and calls :meth:`JobBrowser.step` from ``tick`` while a build
runs and :meth:`JobBrowser.expire` from its slow sweep.

Listings are by name, so a cursor is the last name a page covered and a job
that existed throughout is never skipped, whatever was added or deleted
between pages.  Where the jobs come from depends on the state asked for:

* ``pending`` and ``all``: the func's :class:`~periodic_fast.sched_index.
  NameIndex`, built on the first such listing (at once for a func of up to
  :data:`SYNC_BUILD` jobs, else a slice of ids per tick; the caller waits
  with :meth:`JobBrowser.when_indexed`).  At most :data:`EXAMINE` index
  entries are looked at per page, so a filter that matches little returns a
  short page with a cursor rather than walking the whole func;
* ``running``: the connections' assignments (work bounded by the open
  assignments, whatever the func's size);
* ``locked``: the lock table's entries (bounded by them).

The dead set (state ``dead``) belongs to the retry feature and is not read
here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from .sched_index import NameIndex
from .sched_model import LOCKED, PENDING, RUNNING

if TYPE_CHECKING:
    from .rec import JobRec
    from .sched_core import SchedulerCore
    from .sched_model import Func

__all__ = [
    "BUILD_SLICE",
    "DEFAULT_LIMIT",
    "EXAMINE",
    "MAX_LIMIT",
    "STATES",
    "SYNC_BUILD",
    "JobBrowser",
    "JobDetail",
    "JobPage",
    "JobRow",
]

#: the states a listing may ask for
STATES: Final = ("pending", "running", "locked", "dead", "all")
DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 500
#: index entries looked at per listing at most (a few ms)
EXAMINE: Final = 10_000
#: a func with at most this many jobs is indexed at once (a few ms)
SYNC_BUILD: Final = 8192
#: ids scanned per tick while an index builds (a few ms)
BUILD_SLICE: Final = 4096

_STATE_NAMES: Final[dict[int, str]] = {
    PENDING: "pending",
    RUNNING: "running",
    LOCKED: "locked",
}

ActionResult = Literal["ok", "unknown", "running"]


class JobRow(NamedTuple):
    """One job of a listing (the API's S object)."""

    func: bytes
    name: bytes
    state: str
    sched_at: int
    count: int  # type: ignore[assignment]  # shadows tuple.count
    timeout: int
    attempts: int
    args_size: int


class JobPage(NamedTuple):
    """A page of a listing; ``next`` is the name to resume after (None: the
    end).  A page may be short (even empty) and still have a ``next``: the
    examined budget ran out first."""

    rows: list[JobRow]
    next: bytes | None


class JobDetail(NamedTuple):
    """One job in full: its row, its workload, the retry feature's record
    of its last failure and the cron feature's schedule (when present)."""

    row: JobRow
    workload: bytes
    last_failed_at: float | None
    last_worker: str | None
    cron: Any


def _failure(raw: Mapping[str, Any] | None) -> tuple[int, float | None, str | None]:
    """(attempts, last failure time, last worker) from the retry feature's
    ``job_failure`` answer (sched_retry), or None: never failed."""
    if raw is None:
        return 0, None, None
    failed_at = raw.get("last_failed_at")
    worker = raw.get("last_worker")
    return (
        int(raw.get("attempts") or 0),
        None if failed_at is None else float(failed_at),
        None if worker is None else str(worker),
    )


class JobBrowser:
    """Listings, details and actions over one scheduler's records.

    :param core: the scheduler (its records, funcs, connections and locks
        are read in place; writes go through its own state machine).
    """

    __slots__ = ("_builds", "_core", "_indexed", "_waiting")

    def __init__(self, core: SchedulerCore) -> None:
        self._core = core
        # funcs whose index builds, oldest first (one is sliced at a time)
        self._builds: dict[bytes, tuple[Func, NameIndex]] = {}
        # callbacks waiting for a func's build
        self._waiting: dict[bytes, list[Callable[[], None]]] = {}
        # every func with an index (dropped again when idle)
        self._indexed: dict[bytes, Func] = {}

    # -- the index ---------------------------------------------------------------

    @property
    def building(self) -> bool:
        """True while an index builds (the scheduler wants a tick at once)."""
        return bool(self._builds)

    def _index(self, fs: Func, mono: float) -> NameIndex | None:
        """The complete index of ``fs``, or None while it builds (started
        here on first use)."""
        ix = fs.index
        if ix is None:
            if len(fs.jobs) <= SYNC_BUILD:
                ix = NameIndex([rec.name for rec in fs.jobs], True, mono)
            else:
                ix = NameIndex([], False, mono)
                self._builds[fs.name] = (fs, ix)
            fs.index = ix
            self._indexed[fs.name] = fs
        ix.used = mono
        return ix if ix.complete else None

    def when_indexed(self, func: bytes, callback: Callable[[], None]) -> bool:
        """Call ``callback()`` (from a later tick) once the index of ``func``
        is complete or the func went away; False (nothing kept) when no build
        of it is running."""
        if func not in self._builds:
            return False
        self._waiting.setdefault(func, []).append(callback)
        return True

    def step(self) -> None:
        """One slice of the oldest build: :data:`BUILD_SLICE` ids scanned."""
        if not self._builds:
            return
        func, (fs, ix) = next(iter(self._builds.items()))
        core = self._core
        if core._funcs.get(func) is not fs:  # dropped or forgotten meanwhile
            fs.index = None
            self._done(func)
            return
        recs = core._jobs
        start = ix.scan_at
        end = min(start + BUILD_SLICE, len(recs))
        name = fs.name
        get = fs.jobs.get
        # a record is the func's only if its table holds it under its name
        # (a dropped func's records wait for the reaper with the same func)
        ix.names.update(
            [
                r.name
                for r in recs[start:end]
                if r is not None and r.func == name and get(r.name) is r
            ]
        )
        ix.scan_at = end
        if end >= len(recs):
            ix.finish()
            self._done(func)

    def _done(self, func: bytes) -> None:
        del self._builds[func]
        for callback in self._waiting.pop(func, ()):
            callback()

    def expire(self, mono: float, idle: float) -> None:
        """Drop the indexes not listed for ``idle`` seconds (the hot paths
        stop paying for them) and those of forgotten funcs."""
        funcs = self._core._funcs
        for func, fs in list(self._indexed.items()):
            ix = fs.index
            if funcs.get(func) is not fs or ix is None:
                del self._indexed[func]
            elif ix.complete and mono - ix.used > idle:
                fs.index = None
                del self._indexed[func]

    # -- reads -------------------------------------------------------------------

    def _row(self, rec: JobRec) -> JobRow:
        failure = getattr(self._core, "job_failure", None)
        attempts = 0
        if failure is not None:
            attempts = _failure(failure(rec.func, rec.name))[0]
        return JobRow(
            rec.func,
            rec.name,
            _STATE_NAMES.get(rec.state, "pending"),
            rec.sched_at,
            rec.count,
            rec.timeout,
            attempts,
            len(rec.workload),
        )

    def list_jobs(
        self,
        func: bytes,
        state: str,
        *,
        prefix: bytes = b"",
        due_from: int | None = None,
        due_to: int | None = None,
        after: bytes | None = None,
        limit: int = DEFAULT_LIMIT,
        mono: float = 0.0,
    ) -> JobPage | None:
        """A page of ``func``'s jobs in ``state`` (pending, running, locked
        or all), by name, after the name ``after``; names starting with
        ``prefix``, due in ``due_from..due_to`` (inclusive; None: open).

        None: the func's index is still building (wait with
        :meth:`when_indexed`, then ask again).  An unknown func gives an
        empty page.  Raises ValueError for a bad state or limit."""
        if state not in STATES or state == "dead":
            raise ValueError("state must be one of pending, running, locked, all")
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_LIMIT}")
        fs = self._core._funcs.get(func)
        if fs is None:
            return JobPage([], None)
        if state == "running":
            return self._page(self._running(fs), prefix, due_from, due_to, after, limit)
        if state == "locked":
            return self._page(self._locked(fs), prefix, due_from, due_to, after, limit)
        ix = self._index(fs, mono)
        if ix is None:
            return None
        if after is not None and after >= prefix:
            names = ix.names.irange(after, None, (False, True))
        else:
            names = ix.names.irange(prefix or None, None, (True, True))
        only = PENDING if state == "pending" else None
        get = fs.jobs.get
        rows: list[JobRow] = []
        examined = 0
        last: bytes | None = None
        for name in names:
            if prefix and not name.startswith(prefix):
                return JobPage(rows, None)
            if examined >= EXAMINE:
                return JobPage(rows, last)  # resume after the last examined
            examined += 1
            last = name
            rec = get(name)
            if rec is None or (only is not None and rec.state != only):
                continue
            at = rec.sched_at
            if (due_from is not None and at < due_from) or (
                due_to is not None and at > due_to
            ):
                continue
            if len(rows) == limit:  # one more exists: the page is full
                return JobPage(rows, rows[-1].name)
            rows.append(self._row(rec))
        return JobPage(rows, None)

    def _running(self, fs: Func) -> Iterator[JobRec]:
        """The func's running jobs, from the open assignments."""
        if not fs.n_running:
            return
        name = fs.name
        seen: set[int] = set()
        for conn in self._core._conns.values():
            for a in (*conn.unconfirmed.values(), *conn.running.values()):
                rec = a.rec
                if (
                    rec.func == name
                    and a.epoch == rec.epoch
                    and rec.state == RUNNING
                    and rec.id not in seen
                ):
                    seen.add(rec.id)
                    yield rec

    def _locked(self, fs: Func) -> Iterator[JobRec]:
        """The func's locked jobs, from the lock table's handles."""
        if not fs.n_locked:
            return
        name = fs.name
        n = len(name)
        get = fs.jobs.get
        for key in list(self._core._hlocks):
            if key[0] == n and key[1 : 1 + n] == name:
                rec = get(key[2 + n :])
                if rec is not None and rec.state == LOCKED:
                    yield rec

    def _page(
        self,
        recs: Iterable[JobRec],
        prefix: bytes,
        due_from: int | None,
        due_to: int | None,
        after: bytes | None,
        limit: int,
    ) -> JobPage:
        """A page out of a small candidate set (running, locked)."""
        picked = sorted(
            (
                rec
                for rec in recs
                if rec.name.startswith(prefix)
                and (after is None or rec.name > after)
                and (due_from is None or rec.sched_at >= due_from)
                and (due_to is None or rec.sched_at <= due_to)
            ),
            key=lambda rec: rec.name,
        )
        rows = [self._row(rec) for rec in picked[:limit]]
        return JobPage(rows, rows[-1].name if len(picked) > limit else None)

    def detail(self, func: bytes, name: bytes) -> JobDetail | None:
        """The job ``(func, name)`` in full, or None."""
        core = self._core
        fs = core._funcs.get(func)
        rec = None if fs is None else fs.jobs.get(name)
        if rec is None:
            return None
        failure = getattr(core, "job_failure", None)
        _, failed_at, worker = _failure(
            None if failure is None else failure(func, name)
        )
        cron_of = getattr(core, "job_cron", None)
        return JobDetail(
            self._row(rec),
            rec.workload,
            failed_at,
            worker,
            None if cron_of is None else cron_of(func, name),
        )

    # -- actions -----------------------------------------------------------------

    def reschedule(
        self, func: bytes, name: bytes, sched_at: int | None
    ) -> ActionResult:
        """A pending (or locked) job becomes due at ``sched_at`` (None or a
        time passed: now, and dispatched at once when a worker is free).
        ``"running"``: a running job is left alone (as SUBMIT_JOB leaves it)."""
        core = self._core
        fs = core._funcs.get(func)
        rec = None if fs is None else fs.jobs.get(name)
        if fs is None or rec is None:
            return "unknown"
        if rec.state == RUNNING:
            return "running"
        t = int(core._now)
        if sched_at is None or sched_at < t:
            sched_at = t
        if rec.state == LOCKED:  # as a SUBMIT_JOB of it does
            rec.state = PENDING
            fs.n_locked -= 1
        rec.sched_at = sched_at
        rec.repend()  # new epoch: a wall-clock-behind entry of it goes stale
        core._save_job(rec if core._keeps_recs else rec.job, PENDING)
        core._place(rec, t)
        return "ok"
