"""Cluster mode: a job's extras travel with its partition (docs/cluster.md).

A job's extras (store extras with a name: retry attempts, dead jobs, cron
schedules; :mod:`periodic_fast.sched_retry`, :mod:`periodic_fast.sched_cron`)
belong to the partition of their ``(func, name)``, like the job.  A cluster
node's store loads none at start (only the func-wide ones: retry policies);
the node adds a partition's extras when it acquires it and forgets them when
the partition leaves, writing nothing in either case:

* :func:`add_extras`: before the partition's job rows (the server reads the
  extras first), its live jobs' failure counts and its dead jobs go in, so a
  job dispatched while the rest still loads fails on with its count (not
  from 0); its cron schedules are returned, for :func:`add_crons`;
* :func:`add_crons`: once every job row is in, the schedules are put back as
  at start-up (a missed run caught up, a schedule without its job
  re-submitted at its next fire), and failure counts of jobs that are gone
  are deleted;
* :func:`drop_extras`: the partitions left (lost, handed over, shutdown):
  their failure counts, dead jobs and schedules leave memory; the rows stay
  for the new owner.

Retry policies are func-wide (a stored extra with an empty name), not
partitioned: :class:`PolicySync` applies the ones another node stored, read
by each heartbeat.

Sans-I/O like the rest of the scheduler (times are handed in).  Layer L3.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from .cron import CronError
from .job import Job
from .retry import RetryPolicy
from .sched_crontab import KIND as CRON
from .sched_crontab import CronEntry
from .sched_limits import FuncRefused
from .sched_retry import DeadJob, Failure
from .sched_wire import handle_key, show

if TYPE_CHECKING:
    from .scheduler import Scheduler

__all__ = ["ExtraRow", "PolicySync", "add_crons", "add_extras", "drop_extras"]

#: a stored extra: ``(kind, func, name, value)``
ExtraRow = tuple[str, bytes, bytes, bytes]
#: which partition a job is in
PartOf = Callable[[bytes, bytes], int]

_ATTEMPT = "attempt"
_DEAD = "dead"


def add_extras(
    sched: Scheduler,
    held: set[int],
    part: PartOf,
    rows: Iterable[ExtraRow],
    now: float,
) -> list[ExtraRow]:
    """Add the failure counts and dead jobs of ``rows`` whose partition is
    ``held``; returns the rows :func:`add_crons` finishes once the jobs are
    in (the schedules, and the failure counts to check against their jobs).
    A count already in memory is kept (it is newer)."""
    s = sched
    s._now = now
    attempts = s._attempts
    dead = s._dead
    later: list[ExtraRow] = []
    buried = False
    for kind, func, name, value in rows:
        if not name or part(func, name) not in held:
            continue
        if kind == _ATTEMPT:
            per = attempts.setdefault(func, {})
            if name not in per:
                per[name] = Failure.decode(value)
                later.append((kind, func, name, b""))
        elif kind == _DEAD:
            key = (func, name)
            if key not in dead:
                dead[key] = DeadJob.decode(func, name, value)
                buried = True
        elif kind == CRON:
            later.append((kind, func, name, value))
    if buried:
        s._dead_sorted = None
        s._evict()  # the bound holds per node
    return later


def add_crons(
    sched: Scheduler,
    held: set[int],
    part: PartOf,
    rows: Iterable[ExtraRow],
    now: float,
) -> int:
    """Every job row of the partitions is in: put their schedules back
    (``rows`` from :func:`add_extras`) as the start-up does, and delete the
    failure counts just added whose job is gone.  Returns how many
    schedules were added."""
    s = sched
    s._now = now
    crons = s._crons
    store = s._store
    funcs = s._funcs
    attempts = s._attempts
    added = 0
    for kind, func, name, value in rows:
        if part(func, name) not in held:
            continue  # lost again meanwhile
        if kind == _ATTEMPT:  # a count whose job is gone is stale
            per = attempts.get(func)
            fs = funcs.get(func)
            if per and name in per and (fs is None or name not in fs.jobs):
                del per[name]
                if not per:
                    del attempts[func]
                store.delete_extra(_ATTEMPT, func, name)
            continue
        entry = CronEntry.decode(func, name, value)
        if entry is None:  # unreadable (or its zone is gone): dropped
            store.delete_extra(CRON, func, name)
            s._stats.event(now, "cron", f"{show(func)}:{show(name)}: bad schedule")
            continue
        if (func, name) in crons:
            continue  # set here since (newer)
        crons[(func, name)] = entry  # no write: it is stored already
        added += 1
        rec = s._lookup(handle_key(func, name))
        if rec is not None:
            s._cron_catch_up(entry, rec)
            continue
        try:  # the schedule outlived its job: back at the next fire
            s._submit(
                Job(func, name, entry.args, entry.next_after(now), 0, entry.timeout)
            )
        except (FuncRefused, CronError):
            crons.forget(func, name)
    return added


def drop_extras(sched: Scheduler, gone: set[int], part: PartOf) -> None:
    """The partitions ``gone`` left this node: their jobs' failure counts,
    dead jobs and schedules leave memory (nothing is written)."""
    s = sched
    for func, per in list(s._attempts.items()):
        for n in [n for n in per if part(func, n) in gone]:
            del per[n]
        if not per:
            del s._attempts[func]
    dead = s._dead
    keys = [k for k in dead if part(*k) in gone]
    for key in keys:
        del dead[key]
    if keys:
        s._dead_sorted = None
    crons = s._crons
    for key in [k for k in crons if part(*k) in gone]:
        del crons[key]  # dict.__delitem__: CronTab.forget would write


class PolicySync:
    """Retry policies set on another node (func-wide extras, shared by the
    cluster): each heartbeat hands :meth:`adopt` the stored ones and the
    changes since the previous read are applied, not written again (a late
    write could undo a newer change; as the config values)."""

    def __init__(self, sched: Scheduler) -> None:
        self._s = sched
        self._seen: dict[bytes, bytes] | None = None

    def adopt(self, stored: dict[bytes, bytes]) -> list[bytes]:
        """Apply what changed in ``stored`` (func -> policy JSON, ``b""``
        the default); returns the funcs whose policy changed."""
        s = self._s
        seen, self._seen = self._seen, stored
        changed: list[bytes] = []
        for func, raw in stored.items():
            if seen is not None and seen.get(func) == raw:
                continue
            try:
                policy = RetryPolicy.from_dict(json.loads(raw))
            except (ValueError, TypeError):  # unreadable: left as it is
                continue
            if func:
                s._policies[func] = policy
            else:
                s._default_policy = policy
            changed.append(func)
        for func in () if seen is None else seen.keys() - stored.keys():
            if func:  # reset elsewhere: the default again
                s._policies.pop(func, None)
            else:
                s._default_policy = s._operator_policy
            changed.append(func)
        return changed
