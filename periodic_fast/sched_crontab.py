"""The scheduler's table of cron schedules (docs/cron.md).

A schedule belongs to one job, ``(func, name)``: :class:`CronEntry` holds
its expression, time zone, missed-run policy and the workload and timeout
the job is created with.  :class:`CronTab` is the table (a dict keyed by
``(func, name)``, so ``if self._crons:`` costs the hot paths one truth
test) and keeps it in the store's extras of kind ``"cron"``, in the same
batches as the jobs.  Fire times come from :mod:`periodic_fast.cron`; no
clock is read here.
"""

from __future__ import annotations

import json
from typing import Final, Literal, NamedTuple

from .cron import CronError, next_fire
from .store import Store

__all__ = ["KIND", "MAX_SCHEDULES", "MISSED", "CronEntry", "CronInfo", "CronTab"]


def _dumps(obj: object) -> bytes:
    """Compact JSON bytes.  The stdlib's, not orjson: on Python 3.10 orjson
    imports uuid -> platform -> subprocess, and the scheduler layer imports
    nothing of I/O (test_scheduler_stays_sans_io); these values are small
    and written once per failure or schedule."""
    return json.dumps(obj, separators=(",", ":")).encode()


#: the store's extras kind of the schedules
KIND: Final = "cron"
#: schedules the server keeps at most (each GET /api/cron computes fire times)
MAX_SCHEDULES: Final = 10_000
#: the missed-run policies
MISSED: Final = ("once", "skip")

Missed = Literal["once", "skip"]


class CronEntry(NamedTuple):
    """One schedule: the job ``(func, name)`` runs at every fire of ``cron``
    read in time zone ``tz``."""

    func: bytes
    name: bytes
    cron: str  #: the normalized five-field expression
    tz: str  #: IANA time zone name
    missed: str  #: "once" or "skip" (docs/cron.md, missed runs)
    args: bytes  #: the workload the job is created with
    timeout: int  #: the job's timeout (0: the server's)

    def encode(self) -> bytes:
        """The store value (the key holds func and name)."""
        return _dumps(
            {
                "cron": self.cron,
                "tz": self.tz,
                "missed": self.missed,
                # latin-1: any bytes, back with .encode("latin-1")
                "args": self.args.decode("latin-1"),
                "timeout": self.timeout,
            }
        )

    @classmethod
    def decode(cls, func: bytes, name: bytes, value: bytes) -> CronEntry | None:
        """The entry stored as ``value``, or None when it cannot be read."""
        try:
            obj = json.loads(value)
            entry = cls(
                func,
                name,
                str(obj["cron"]),
                str(obj["tz"]),
                str(obj["missed"]),
                str(obj.get("args", "")).encode("latin-1"),
                int(obj.get("timeout", 0)),
            )
            next_fire(entry.cron, entry.tz, 0)  # still valid (tz database)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None
        return entry if entry.missed in MISSED else None

    def next_after(self, t: float) -> int:
        """The first fire strictly after ``t`` (epoch seconds)."""
        return next_fire(self.cron, self.tz, t)

    def catch_up(self, sched_at: int, now: float) -> int | None:
        """After downtime or a forward clock jump: the job's new due time,
        or None to leave it as it is.

        A job more than one period late (its next fire after ``sched_at``
        has passed too) keeps its past due time with "once" (it runs once,
        now, then follows the schedule) and moves to the next fire after
        ``now`` with "skip"."""
        if self.missed != "skip" or sched_at >= now:
            return None
        try:
            if self.next_after(sched_at) > now:
                return None  # late by less than a period: the current run
            return self.next_after(now)
        except CronError:  # pragma: no cover - out of datetime's range
            return None


class CronInfo(NamedTuple):
    """A schedule as the API shows it."""

    func: bytes
    name: bytes
    cron: str
    tz: str
    missed: str
    next_run: int  #: the job's due time (its next fire while it runs)
    state: str  #: the job's state: "pending", "running", "locked"


class CronTab(dict[tuple[bytes, bytes], CronEntry]):
    """The schedules by ``(func, name)``, written through to the store."""

    def __init__(self, store: Store) -> None:
        super().__init__()
        self._store = store

    def put(self, entry: CronEntry) -> None:
        """Add or replace a schedule (and store it)."""
        self[(entry.func, entry.name)] = entry
        self._store.save_extra(KIND, entry.func, entry.name, entry.encode())

    def forget(self, func: bytes, name: bytes) -> bool:
        """Drop the schedule of ``(func, name)``; True if there was one."""
        if self.pop((func, name), None) is None:
            return False
        self._store.delete_extra(KIND, func, name)
        return True

    def drop_func(self, func: bytes) -> None:
        """Drop every schedule of ``func`` (DROP_FUNC)."""
        keys = [k for k in self if k[0] == func]
        for key in keys:
            del self[key]
        if keys:
            self._store.delete_func_extras(KIND, func)
