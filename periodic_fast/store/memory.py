"""The ``:memory:`` store: in-process tables, nothing survives the process.

It still honours the whole :class:`~periodic_fast.store.Store` contract, so a
second scheduler built on the same instance sees what the first one wrote
(that is how the tests simulate a restart).  Every write is "durable" at once.

It keeps no per-job object of its own for the scheduler's jobs
(``keeps_records``): the scheduler hands it its
:class:`~periodic_fast.rec.JobRec` records and uses the store's per-func
:class:`~periodic_fast.rec.NameTable` (:meth:`MemoryStore.name_table`) as its
own name index, so a stored job costs nothing here but a state entry while it
runs or is locked.  That is safe because the scheduler writes every change
of a record's job fields through :meth:`MemoryStore.save_job` at once, never
reuses a record for another job, and is the only writer while it runs (a
scheduler built later on the same store replaces the records at start-up).
A plain :class:`~periodic_fast.job.Job` (tests, tools) is copied into a
record of the store's own.
"""

from __future__ import annotations

from collections.abc import Callable

from ..job import Job, JobState
from ..rec import JobRec, NameTable
from ._contract import StoreSnapshot

__all__ = ["MemoryStore"]


class MemoryStore:
    """Dict-backed :class:`~periodic_fast.store.Store`."""

    __slots__ = ("_closed", "_config", "_extras", "_funcs", "_jobs", "_states")

    #: writes are "durable" at once: the server need not hold replies
    deferred = False

    #: :meth:`save_job` takes the scheduler's own records (kept, not copied)
    #: and :meth:`name_table` shares the index with the scheduler
    keeps_records = True

    def __init__(self) -> None:
        # func -> records by name: two levels so DROP_FUNC is one pop and the
        # hot calls need no tuple key.  Only the job fields of a record are
        # read here (its scheduling fields belong to the scheduler).
        self._jobs: dict[bytes, NameTable] = {}
        # func -> name -> state, for jobs that are not pending only (running
        # and locked ones are few; most stored jobs wait for their time)
        self._states: dict[bytes, dict[bytes, JobState]] = {}
        self._funcs: dict[bytes, None] = {}
        self._config: dict[str, int] = {}
        # kind -> (func, name) -> value (policies, attempts, dead set, cron)
        self._extras: dict[str, dict[tuple[bytes, bytes], bytes]] = {}
        self._closed = False

    def load(self) -> StoreSnapshot:
        """Return a copy of everything stored."""
        jobs: list[tuple[Job, JobState]] = []
        pending = JobState.PENDING
        for func, per in self._jobs.items():
            states = self._states.get(func)
            if states:
                jobs += [(r.job, states.get(r.name, pending)) for r in per]
            else:
                jobs += [(r.job, pending) for r in per]
        extras = {
            kind: [(f, n, v) for (f, n), v in per.items()]
            for kind, per in self._extras.items()
            if per
        }
        return StoreSnapshot(jobs, list(self._funcs), dict(self._config), extras=extras)

    def name_table(self, func: bytes) -> NameTable:
        """The table of ``func``'s stored records (created empty if missing).

        A scheduler uses it as its func's name index: it adds and pops its
        records there itself, and the store's calls then find them done."""
        per = self._jobs.get(func)
        if per is None:
            per = self._jobs[func] = NameTable()
        return per

    def save_job(self, job: Job | JobRec, state: JobState) -> None:
        """Insert or replace a job: a :class:`~periodic_fast.job.Job`, or a
        scheduler's :class:`~periodic_fast.rec.JobRec` (kept as it is)."""
        if isinstance(job, JobRec):
            rec = job
        else:
            # the store's own record (its id and scheduling fields unused)
            rec = JobRec(0, *job)
        func = rec.func
        per = self._jobs.get(func)
        if per is None:
            per = self._jobs[func] = NameTable()
        per.add(rec)
        self._put_state(func, rec.name, state)

    def _put_state(self, func: bytes, name: bytes, state: JobState) -> None:
        states = self._states.get(func)
        if state == JobState.PENDING:
            if states:
                states.pop(name, None)
        elif states is None:
            self._states[func] = {name: state}
        else:
            states[name] = state

    def set_state(self, func: bytes, name: bytes, state: JobState) -> None:
        """Change a stored job's state."""
        per = self._jobs.get(func)
        if per is not None and name in per:
            self._put_state(func, name, state)

    def delete_job(self, func: bytes, name: bytes) -> None:
        """Delete one job."""
        per = self._jobs.get(func)
        if per is not None:
            # an emptied per-func table stays: the next save would recreate it
            per.pop(name)
            states = self._states.get(func)
            if states:
                states.pop(name, None)

    def delete_func_jobs(self, func: bytes) -> None:
        """Delete every job of a func."""
        self._jobs.pop(func, None)
        self._states.pop(func, None)

    def save_func(self, func: bytes) -> None:
        """Remember a func."""
        self._funcs[func] = None

    def delete_func(self, func: bytes) -> None:
        """Forget a func."""
        self._funcs.pop(func, None)

    def save_config(self, key: str, value: int) -> None:
        """Keep a config value."""
        self._config[key] = value

    def save_extra(self, kind: str, func: bytes, name: bytes, value: bytes) -> None:
        """Keep one extra."""
        per = self._extras.get(kind)
        if per is None:
            per = self._extras[kind] = {}
        per[(func, name)] = value

    def delete_extra(self, kind: str, func: bytes, name: bytes) -> None:
        """Forget one extra."""
        per = self._extras.get(kind)
        if per is not None:
            per.pop((func, name), None)

    def delete_func_extras(self, kind: str, func: bytes) -> None:
        """Forget every extra of ``kind`` of ``func``."""
        per = self._extras.get(kind)
        if per:
            for key in [k for k in per if k[0] == func]:
                del per[key]

    def flush(self) -> None:
        """Nothing to wait for."""

    def on_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        """Everything is durable already: run ``callback(None)`` now."""
        callback(None)

    def metrics(self) -> dict[str, float]:
        """Monitoring figures in the durable stores' shape: nothing is ever
        pending or failing here; ``rows`` is the number of stored jobs."""
        return {
            "commits": 0.0,
            "rows": float(sum(len(per) for per in self._jobs.values())),
            "commit_seconds_sum": 0.0,
            "last_commit_seconds": 0.0,
            "errors": 0.0,
            "pending": 0.0,
            "healthy": 1.0,
        }

    def close(self) -> None:
        """Mark closed (the data stays readable for a following ``load``)."""
        self._closed = True

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed
