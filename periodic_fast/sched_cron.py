"""Cron schedules in the scheduler: a job that comes back (docs/cron.md).

A schedule turns one stored job into a recurring one, server-side, so any
worker runs it unchanged: creating the schedule submits the job due at the
next fire; when a worker reports WORK_DONE the job is not deleted but goes
back to pending, due at the next fire after now (workload and timeout kept,
count reset to 0).  WORK_FAIL, SCHED_LATER and a SUBMIT of the same name
act on the job as they do on any job; the schedule stays.  A job that
leaves the live set any other way (REMOVE_JOB, DROP_FUNC, the HTTP delete,
a failure that ends it) takes its schedule with it (``SchedulerCore._delete``
and ``_retire`` call :meth:`CronTab.forget`/``drop_func``).

Missed runs: at start-up, and in :meth:`Scheduler.tick` when the wall clock
jumped forward against the monotonic one, each scheduled pending job more
than one period late is caught up by its policy (:meth:`CronEntry.catch_up`).

:class:`CronCore` sits between :class:`~periodic_fast.sched_core.SchedulerCore`
and the command handlers; the table itself is
:class:`~periodic_fast.sched_crontab.CronTab` (``self._crons``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from .cron import CronError, CronRefused, check, next_fire
from .job import Job
from .rec import JobRec
from .sched_core import SchedulerCore
from .sched_crontab import MAX_SCHEDULES, MISSED, CronEntry, CronInfo
from .sched_limits import FuncRefused
from .sched_model import LOCKED, PENDING, RUNNING
from .sched_wire import handle_key, show

__all__ = ["CRON_JUMP", "CronCore", "CronRefused"]

#: a forward step of the wall clock (against the monotonic one) of more
#: than this many seconds between two ticks is treated like downtime
CRON_JUMP: Final = 60.0

_STATES: Final[dict[int, str]] = {
    PENDING: "pending",
    RUNNING: "running",
    LOCKED: "locked",
}


class CronCore(SchedulerCore):
    """The scheduler's cron operations, on top of the job state machine."""

    _cron_skew = 0.0  # wall minus monotonic at the last tick

    if TYPE_CHECKING:  # Scheduler's, with its checks and limits

        def submit(self, job: Job, now: float, mono: float | None = None) -> bool: ...

    # -- start-up and clock jumps ---------------------------------------------

    def _cron_start(
        self, extras: Mapping[str, list[tuple[bytes, bytes, bytes]]] | None
    ) -> None:
        """Start-up, after the jobs are indexed: load the schedules, catch up
        missed runs, and re-create a scheduled job the store lacks."""
        self._cron_skew = self._now - self._mono
        rows = extras.get("cron") if extras else None
        crons = self._crons
        for func, name, value in rows or ():
            entry = CronEntry.decode(func, name, value)
            if entry is None:  # unreadable (or its zone is gone): dropped
                self._store.delete_extra("cron", func, name)
                self._stats.event(
                    self._now,
                    "cron",
                    f"{show(func)}:{show(name)}: bad schedule dropped",
                )
                continue
            crons[(func, name)] = entry
            rec = self._lookup(handle_key(func, name))
            if rec is not None:
                self._cron_catch_up(entry, rec)
                continue
            try:  # the schedule outlived its job: it comes back at the next fire
                self._submit(
                    Job(
                        func,
                        name,
                        entry.args,
                        entry.next_after(self._now),
                        0,
                        entry.timeout,
                    )
                )
            except (FuncRefused, CronError):
                crons.forget(func, name)

    def _cron_tick(self) -> None:
        """Every tick while schedules exist: a forward jump of the wall clock
        (a suspend, an NTP step) catches up missed runs like a restart."""
        skew = self._now - self._mono
        jumped = skew - self._cron_skew > CRON_JUMP
        self._cron_skew = skew
        if jumped:
            for entry in list(self._crons.values()):
                rec = self._lookup(handle_key(entry.func, entry.name))
                if rec is not None:
                    self._cron_catch_up(entry, rec)

    def _cron_catch_up(self, entry: CronEntry, rec: JobRec) -> None:
        if rec.state == PENDING:
            when = entry.catch_up(rec.sched_at, self._now)
            if when is not None:
                self._cron_repend(rec, when)

    # -- the job's end --------------------------------------------------------

    def _cron_done(self, rec: JobRec) -> bool:
        """WORK_DONE of ``rec``: a scheduled job goes back to pending at its
        next fire (True); False for any other job (deleted as usual)."""
        entry = self._crons.get((rec.func, rec.name))
        if entry is None:
            return False
        try:
            when = entry.next_after(self._now)
        except CronError:  # pragma: no cover - beyond year 9949
            return False
        self._cron_repend(rec, when)
        return True

    def _cron_repend(self, rec: JobRec, when: int) -> None:
        """``rec`` (any live state) -> pending, due at ``when``, count 0."""
        fs = self._funcs[rec.func]
        state = rec.state
        if state == RUNNING:
            fs.n_running -= 1
        elif state == LOCKED:
            fs.n_locked -= 1
        rec.state = PENDING
        rec.repend()  # new epoch: assignments of the old run are stale
        rec.sched_at = when
        rec.count = 0
        self._save_job(rec if self._keeps_recs else rec.job, PENDING)
        self._place(rec, int(self._now))

    # -- the HTTP API ---------------------------------------------------------

    def add_cron(
        self,
        func: bytes,
        name: bytes,
        cron: str,
        tz: str,
        missed: str,
        args: bytes,
        timeout: int,
        now: float,
        mono: float | None = None,
    ) -> int:
        """Create or replace the schedule of job ``(func, name)`` and submit
        the job due at the next fire (a running job is left to finish, then
        follows the schedule); the next fire time.

        Raises ValueError (a :class:`~periodic_fast.cron.CronError` for the
        expression or zone) for bad input and :class:`CronRefused` beyond
        :data:`~periodic_fast.sched_crontab.MAX_SCHEDULES` or the job and
        func limits.  Job and schedule are written in the same loop turn,
        so one commit covers both."""
        expr = check(cron, tz)
        if missed not in MISSED:
            raise ValueError(f"missed must be 'once' or 'skip', not {missed!r}")
        key = (func, name)
        if key not in self._crons and len(self._crons) >= MAX_SCHEDULES:
            raise CronRefused(f"{MAX_SCHEDULES} cron schedules exist (the maximum)")
        when = next_fire(expr, tz, now)
        # the job first: submit() checks its fields and the limits
        if not self.submit(Job(func, name, args, when, 0, timeout), now, mono):
            raise CronRefused(
                f"func {show(func)!r} holds the maximum number of jobs,"
                " or the server knows the maximum number of funcs"
            )
        self._crons.put(CronEntry(func, name, expr, tz, missed, args, timeout))
        self._stats.event(
            now, "cron", f"{show(func)}:{show(name)} scheduled: {expr} {tz}"
        )
        return when

    def remove_cron(
        self, func: bytes, name: bytes, now: float, mono: float | None = None
    ) -> bool:
        """Remove the schedule of ``(func, name)`` and its job (as REMOVE_JOB
        does); False when there is no such schedule."""
        self._now = now
        self._mono = now if mono is None else mono
        if (func, name) not in self._crons:
            return False
        self._remove(handle_key(func, name))  # forgets the schedule too
        self._crons.forget(func, name)  # (had the job gone on its own)
        return True

    def cron_schedules(self, func: bytes | None, now: float) -> list[CronInfo]:
        """Every schedule (of ``func`` only, unless None), by func and name.
        ``next_run`` is the job's due time, or its next fire while it runs."""
        out: list[CronInfo] = []
        for key in sorted(self._crons):
            if func is not None and key[0] != func:
                continue
            entry = self._crons[key]
            rec = self._lookup(handle_key(*key))
            if rec is None:  # pragma: no cover - a schedule keeps its job
                continue
            when = rec.sched_at
            if rec.state != PENDING:
                try:
                    when = entry.next_after(now)
                except CronError:  # pragma: no cover - beyond year 9949
                    pass
            out.append(
                CronInfo(
                    *key, entry.cron, entry.tz, entry.missed, when, _STATES[rec.state]
                )
            )
        return out

    def job_cron(self, func: bytes, name: bytes) -> dict[str, str] | None:
        """The schedule of one job for its details (the job browser), or None."""
        entry = self._crons.get((func, name)) if self._crons else None
        if entry is None:
            return None
        return {"cron": entry.cron, "tz": entry.tz, "missed": entry.missed}

    @property
    def cron_count(self) -> int:
        """How many cron schedules exist."""
        return len(self._crons)
