"""The ``:memory:`` store: plain dicts, nothing survives the process.

It still honours the whole :class:`~periodic_fast.store.Store` contract, so a
second scheduler built on the same instance sees what the first one wrote
(that is how the tests simulate a restart).  Every write is "durable" at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..job import Job, JobState
from . import StoreSnapshot

__all__ = ["MemoryStore"]


class MemoryStore:
    """Dict-backed :class:`~periodic_fast.store.Store`."""

    __slots__ = ("_closed", "_config", "_funcs", "_jobs")

    #: writes are "durable" at once: the server need not hold replies
    deferred = False

    def __init__(self) -> None:
        # func -> name -> [job, state]: two levels so DROP_FUNC is one pop and
        # the hot calls need no tuple key; a list so set_state allocates nothing
        self._jobs: dict[bytes, dict[bytes, list[Any]]] = {}
        self._funcs: dict[bytes, None] = {}
        self._config: dict[str, int] = {}
        self._closed = False

    def load(self) -> StoreSnapshot:
        """Return a copy of everything stored."""
        jobs = [(e[0], e[1]) for per in self._jobs.values() for e in per.values()]
        return StoreSnapshot(jobs, list(self._funcs), dict(self._config))

    def save_job(self, job: Job, state: JobState) -> None:
        """Insert or replace a job."""
        per = self._jobs.get(job.func)
        if per is None:
            per = self._jobs[job.func] = {}
        entry = per.get(job.name)
        if entry is None:
            per[job.name] = [job, state]
        else:
            entry[0] = job
            entry[1] = state

    def set_state(self, func: bytes, name: bytes, state: JobState) -> None:
        """Change a stored job's state."""
        per = self._jobs.get(func)
        if per is not None:
            entry = per.get(name)
            if entry is not None:
                entry[1] = state

    def delete_job(self, func: bytes, name: bytes) -> None:
        """Delete one job."""
        per = self._jobs.get(func)
        if per is not None:
            # an emptied per-func dict stays: the next save would recreate it
            per.pop(name, None)

    def delete_func_jobs(self, func: bytes) -> None:
        """Delete every job of a func."""
        self._jobs.pop(func, None)

    def save_func(self, func: bytes) -> None:
        """Remember a func."""
        self._funcs[func] = None

    def delete_func(self, func: bytes) -> None:
        """Forget a func."""
        self._funcs.pop(func, None)

    def save_config(self, key: str, value: int) -> None:
        """Keep a config value."""
        self._config[key] = value

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
