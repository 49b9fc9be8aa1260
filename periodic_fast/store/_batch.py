"""The write batch shared by the durable stores (SQLite, PostgreSQL).

A :class:`Batch` holds the net effect of a run of store writes, the
coalescing rules of both stores live here:

* per job key ``(func, name)`` only the net effect is kept: a save followed by
  ``set_state`` is a save with the new state, anything followed by a delete is
  a delete, a delete followed by ``set_state`` stays a delete (the row is gone);
* ``delete_func_jobs(f)`` forgets the batch's earlier changes to jobs of ``f``
  and is applied before the batch's job changes (which all came after it);
* funcs and config values: the last write wins;
* running and locked are stored as pending.  Start-up turns every running
  and locked job back to pending (protocol.md 4.16), so on disk the three are
  the same; the dispatch of a job (pending -> running) and a lock wait then
  write nothing, which spares a statement per job and often a whole commit.
  A change *to* pending is still written: a row of an older file may hold
  another state.

A commit applies, in this order: ``dropped`` (delete every job of those
funcs), then ``jobs`` (its keys are unique, so their order does not matter),
``funcs`` and ``config``.  :meth:`Batch.merge_newer` folds a later batch into
a failed earlier one so the retry commits both with the same effect.
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

    __slots__ = ("callbacks", "config", "dropped", "funcs", "jobs", "writes")

    def __init__(self) -> None:
        #: (func, name) -> (job, state) save | int state | None delete
        self.jobs: dict[tuple[bytes, bytes], Any] = {}
        #: funcs whose jobs are all deleted before ``jobs`` is applied
        self.dropped: set[bytes] = set()
        #: func -> True (save) / False (delete)
        self.funcs: dict[bytes, bool] = {}
        self.config: dict[str, int] = {}
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
