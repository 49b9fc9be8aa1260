"""The store contract: :class:`Store`, :class:`RecordStore` and
:class:`StoreSnapshot` (re-exported by :mod:`periodic_fast.store`).

A store keeps what must survive a restart (protocol.md 4.16): every job with
its state, the known func names and the config values.  Waiters, grab slots,
locks and per-connection state are never persisted.

Contract (every implementation, present and future):

* **Load once.**  :meth:`Store.load` is called once, at start-up, before any
  write.  The scheduler resets running/locked jobs to pending itself (and
  writes that back with :meth:`Store.set_state`).  So a store need not keep
  the running and locked states: the durable stores (SQLite, PostgreSQL)
  store them as pending, which spares a write per dispatched job (a change
  to running or locked writes nothing); the memory store keeps them.
* **Writes are enqueued, not awaited.**  Every mutating method is called on the
  event loop, must be cheap and must not block on I/O.  A durable store appends
  the change to an in-memory batch (coalescing by key is allowed: the last
  write of a key wins) that a writer thread commits in groups.  Writes must be
  applied in call order per key.
* **Durability barrier.**  :meth:`Store.on_durable` registers a callback for
  "everything written so far is committed"; the server holds every reply of
  a loop turn until the barrier registered after that turn fires, so no
  confirmation a peer sees is ever ahead of the disk.  (Only output that
  confirms nothing stored leaves at once: JOB_ASSIGN pushes and the output
  of GRAB_JOB at the head of a connection's output; server/protocol.py.)
  Callbacks fire in registration order, exactly once each, with ``None`` on
  success or the exception when the commit covering them failed (the server
  then turns the held SUCCESS replies into NO_WORKER, the protocol's generic
  refusal).  A failed batch is *not* forgotten: the store keeps it and
  retries it with the next commit, so memory and disk converge once the disk
  recovers; a failed fsync is never treated as done.  :meth:`Store.flush` is
  the blocking form (shutdown, tests) and raises the commit error.
* **Deferred or immediate.**  ``Store.deferred`` is True for a store whose
  writes become durable later (SQLite, PostgreSQL): the server holds output
  behind :meth:`Store.on_durable`.  The memory store is immediate
  (``deferred = False``): callbacks run at once and ``flush`` is a no-op.
* **Missing keys are not errors.**  ``set_state``/``delete_job`` of an unknown
  job, ``delete_func`` of an unknown func do nothing.
* After :meth:`Store.close` no other method is called; ``close`` is idempotent.
* **Extras.**  Besides jobs, funcs and config, a store keeps *extras*: opaque
  byte values keyed by ``(kind, func, name)``, written and deleted with the
  same ordering and durability rules as jobs (same batch, same barrier).
  The scheduler keeps its job features there: retry policies (``"policy"``,
  name ``b""``; func ``b""`` is the server default), attempt counts and last
  failures (``"attempt"``), the dead set (``"dead"``) and cron schedules
  (``"cron"``).  ``kind`` is a short ASCII word (at most 16 characters); the
  store does not interpret values.  :meth:`Store.load` returns them all in
  :attr:`StoreSnapshot.extras`.

Monitoring: :meth:`Store.metrics` gives the figures of the HTTP ``/metrics``
and ``/readyz`` pages: ``commits``, ``rows`` (net rows written),
``commit_seconds_sum``, ``last_commit_seconds``, ``errors`` (failed commit
attempts), ``pending`` (writes not yet committed) and ``healthy`` (1.0 when
the last commit attempt succeeded, else 0.0); :attr:`Store.closed` is True
after :meth:`Store.close`.

Shared records (optional): a store whose ``keeps_records`` is True
(the memory store) also implements :class:`RecordStore`: ``save_job`` then
takes the scheduler's own record (a :class:`~periodic_fast.rec.JobRec`, which
has the :class:`~periodic_fast.job.Job` fields) and ``name_table(func)`` hands
the scheduler the store's per-func index, so one slot serves both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from ..job import Job, JobState

if TYPE_CHECKING:
    from ..rec import NameTable

__all__ = ["RecordStore", "Store", "StoreSnapshot"]


class StoreSnapshot(NamedTuple):
    """Everything a store holds, as returned by :meth:`Store.load`."""

    #: every stored job with its stored state (order unspecified)
    jobs: Iterable[tuple[Job, JobState]]
    #: known func names (order unspecified)
    funcs: Iterable[bytes]
    #: persisted config values (only keys that were set)
    config: Mapping[str, int]
    #: optional, the same one-pass stream as ``jobs`` in chunks of plain rows
    #: ``(func, name, workload, sched_at, count, timeout, state)`` (the state
    #: an int): the scheduler's start-up reads these when given (no ``Job``
    #: per row); consume either ``jobs`` or ``rows``, not both
    rows: Iterable[Iterable[tuple[Any, ...]]] | None = None
    #: extras by kind: ``kind -> [(func, name, value), ...]`` (None: none)
    extras: Mapping[str, list[tuple[bytes, bytes, bytes]]] | None = None
    #: optional, the same one-pass stream grouped by func: ``(func, count,
    #: chunks)`` per func, ``chunks`` an iterable of row lists ``(name,
    #: workload, sched_at, count, timeout, state)`` (no func column: one
    #: object less per row), ``count`` about how many rows follow, a sizing
    #: hint (0: unknown; the scheduler sizes the func's table once with it;
    #: SQLite's counts rows of dropped generations too).  Preferred over
    #: ``rows`` and ``jobs`` when given; consume one of the three, and each
    #: group's chunks before the next group
    groups: Iterable[tuple[bytes, int, Iterable[Iterable[tuple[Any, ...]]]]] | None = (
        None
    )


@runtime_checkable
class Store(Protocol):
    """Persistence driver used by the scheduler (like Go's ``StoreDriver``).

    Jobs are keyed by ``(func, name)``.  See the module docstring for the
    calling contract (enqueued writes, durability barrier).
    """

    #: True when writes become durable later (the server must hold replies
    #: behind :meth:`on_durable`); False for an immediate store (memory).
    deferred: bool

    #: True when ``save_job`` keeps the scheduler's records and the store
    #: implements :class:`RecordStore` (see the module docstring).
    keeps_records: bool

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        ...

    def metrics(self) -> dict[str, float]:
        """Monitoring figures (keys listed in the module docstring)."""
        ...

    def load(self) -> StoreSnapshot:
        """Return everything stored; called once at start-up."""
        ...

    def save_job(self, job: Job, state: JobState) -> None:
        """Insert or replace the job ``(job.func, job.name)`` with ``state``."""
        ...

    def set_state(self, func: bytes, name: bytes, state: JobState) -> None:
        """Change the state of a stored job (no-op if it does not exist)."""
        ...

    def delete_job(self, func: bytes, name: bytes) -> None:
        """Delete one job (no-op if it does not exist)."""
        ...

    def delete_func_jobs(self, func: bytes) -> None:
        """Delete every job of ``func``, whatever its state."""
        ...

    def save_func(self, func: bytes) -> None:
        """Remember ``func`` as known (idempotent)."""
        ...

    def delete_func(self, func: bytes) -> None:
        """Forget ``func`` (its jobs are deleted separately)."""
        ...

    def save_config(self, key: str, value: int) -> None:
        """Persist one config value (a u32)."""
        ...

    def save_extra(self, kind: str, func: bytes, name: bytes, value: bytes) -> None:
        """Insert or replace the extra ``(kind, func, name)`` (module doc)."""
        ...

    def delete_extra(self, kind: str, func: bytes, name: bytes) -> None:
        """Delete one extra (no-op if it does not exist)."""
        ...

    def delete_func_extras(self, kind: str, func: bytes) -> None:
        """Delete every extra of ``kind`` whose func is ``func``."""
        ...

    def flush(self) -> None:
        """Block until every write enqueued so far is durable; raise the
        commit error if it is not."""
        ...

    def on_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        """Call ``callback(error)`` once every write enqueued so far is durable
        (``error`` is None) or its commit failed (``error`` is the exception).

        Callbacks fire in registration order.  A threaded store may call it
        from its writer thread; the caller marshals it back to its loop
        (``loop.call_soon_threadsafe``).  It may also be called synchronously,
        before ``on_durable`` returns, when nothing is pending or in flight.
        """
        ...

    def close(self) -> None:
        """Flush and release resources.  Idempotent."""
        ...


@runtime_checkable
class RecordStore(Store, Protocol):
    """A store that keeps the scheduler's own records (``keeps_records``)."""

    def name_table(self, func: bytes) -> NameTable:
        """The store's table of ``func``'s records (created empty if missing);
        the scheduler adds and pops its records there itself."""
        ...
