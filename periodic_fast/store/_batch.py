"""The write batch shared by the durable stores (SQLite, PostgreSQL).

A :class:`Batch` holds the net effect of a run of store writes, the
coalescing rules of both stores live here:

* per job key ``(func, name)`` only the net effect is kept: a save followed by
  ``set_state`` is a save with the new state, anything followed by a delete is
  a delete, a delete followed by ``set_state`` stays a delete (the row is gone);
* ``delete_func_jobs(f)`` forgets the batch's earlier changes to jobs of ``f``
  and is applied before the batch's job changes (which all came after it);
* funcs and config values: the last write wins;
* extras (``(kind, func, name)`` keys) follow the job rules: the last save or
  delete of a key wins, and ``delete_func_extras(kind, f)`` forgets the
  batch's earlier extras of ``(kind, f)`` and is applied before its later
  extra writes;
* running and locked are stored as pending.  Start-up turns every running
  and locked job back to pending (protocol.md 4.16), so on disk the three are
  the same; the dispatch of a job (pending -> running) and a lock wait then
  write nothing, which spares a statement per job and often a whole commit.
  A change *to* pending is still written: a row of an older file may hold
  another state.

A commit applies, in this order: ``dropped`` (delete every job of those
funcs), then ``jobs`` (its keys are unique, so their order does not matter),
``funcs`` and ``config``, then ``extras_dropped`` (delete every extra of
those ``(kind, func)``) and ``extras`` (unique keys).
:meth:`Batch.merge_newer` folds a later batch into a failed earlier one so
the retry commits both with the same effect.
Not thread-safe: the stores call it under their lock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..job import Job, JobState

__all__ = ["DELETE", "Batch", "Callback"]

#: an ``on_durable`` callback
Callback = Callable[[BaseException | None], None]

#: job op markers in :attr:`Batch.jobs`: a ``(job, state)`` tuple is a save,
#: an ``int`` a state change, ``DELETE`` a delete
DELETE = None

_PENDING = int(JobState.PENDING)


class Batch:
    """Net effect of a run of writes, plus the barriers registered after them."""

    __slots__ = (
        "callbacks",
        "config",
        "dropped",
        "extras",
        "extras_dropped",
        "funcs",
        "jobs",
        "writes",
    )

    def __init__(self) -> None:
        #: (func, name) -> (job, state) save | int state | None delete
        self.jobs: dict[tuple[bytes, bytes], Any] = {}
        #: funcs whose jobs are all deleted before ``jobs`` is applied
        self.dropped: set[bytes] = set()
        #: func -> True (save) / False (delete)
        self.funcs: dict[bytes, bool] = {}
        self.config: dict[str, int] = {}
        #: (kind, func, name) -> value (save) | None (delete)
        self.extras: dict[tuple[str, bytes, bytes], bytes | None] = {}
        #: (kind, func) whose extras are all deleted before ``extras`` is applied
        self.extras_dropped: set[tuple[str, bytes]] = set()
        self.callbacks: list[Callback] = []
        #: store calls folded into this batch (for metrics)
        self.writes = 0

    def empty(self) -> bool:
        """True when no write was folded in (barriers may still be attached)."""
        return not self.writes

    def save_job(self, job: Job, state: int) -> None:
        """Insert or replace ``(job.func, job.name)``, as pending whatever
        ``state`` says (see the module doc)."""
        self.jobs[(job.func, job.name)] = (job, _PENDING)
        self.writes += 1

    def set_state(self, func: bytes, name: bytes, state: int) -> None:
        """Change a job's state (a no-op in the database for a missing job).

        Only a change to pending is recorded: running and locked are stored
        as pending (see the module doc), so such a change writes nothing,
        and an empty batch needs no commit."""
        if state == _PENDING:
            self._set_state((func, name), _PENDING)
            self.writes += 1

    def _set_state(self, key: tuple[bytes, bytes], state: int) -> None:
        jobs = self.jobs
        old = jobs.get(key, 0)
        if type(old) is tuple:
            jobs[key] = (old[0], state)
        elif old is not DELETE:  # after a delete the row is gone: no-op
            jobs[key] = state

    def delete_job(self, func: bytes, name: bytes) -> None:
        """Delete one job."""
        self.jobs[(func, name)] = DELETE
        self.writes += 1

    def delete_func_jobs(self, func: bytes) -> None:
        """Delete every job of ``func`` (before this batch's job writes)."""
        self._forget_jobs_of({func})
        self.dropped.add(func)
        self.writes += 1

    def _forget_jobs_of(self, funcs: set[bytes]) -> None:
        jobs = self.jobs
        for key in [k for k in jobs if k[0] in funcs]:
            del jobs[key]

    def merge_newer(self, newer: Batch) -> None:
        """Apply ``newer`` (written after this batch) on top of this one."""
        if newer.dropped:
            # newer's func drops came before all of newer's job writes
            self._forget_jobs_of(newer.dropped)
            self.dropped |= newer.dropped
        for key, op in newer.jobs.items():
            if type(op) is int:
                self._set_state(key, op)
            else:
                self.jobs[key] = op
        self.funcs.update(newer.funcs)
        self.config.update(newer.config)
        if newer.extras_dropped:
            # like the func drops: before all of newer's extra writes
            self._forget_extras_of(newer.extras_dropped)
            self.extras_dropped |= newer.extras_dropped
        if newer.extras:
            self.extras.update(newer.extras)
        self.writes += newer.writes
        self.callbacks.extend(newer.callbacks)

    def save_func(self, func: bytes) -> None:
        """Remember ``func``."""
        self.funcs[func] = True
        self.writes += 1

    def delete_func(self, func: bytes) -> None:
        """Forget ``func``."""
        self.funcs[func] = False
        self.writes += 1

    def save_config(self, key: str, value: int) -> None:
        """Set one config value."""
        self.config[key] = int(value)
        self.writes += 1

    def save_extra(self, kind: str, func: bytes, name: bytes, value: bytes) -> None:
        """Insert or replace the extra ``(kind, func, name)``."""
        self.extras[(kind, func, name)] = value
        self.writes += 1

    def delete_extra(self, kind: str, func: bytes, name: bytes) -> None:
        """Delete one extra."""
        self.extras[(kind, func, name)] = None
        self.writes += 1

    def delete_func_extras(self, kind: str, func: bytes) -> None:
        """Delete every extra of ``kind`` of ``func`` (before this batch's
        extra writes)."""
        self._forget_extras_of({(kind, func)})
        self.extras_dropped.add((kind, func))
        self.writes += 1

    def _forget_extras_of(self, groups: set[tuple[str, bytes]]) -> None:
        extras = self.extras
        for key in [k for k in extras if (k[0], k[1]) in groups]:
            del extras[key]
