"""The loop-side half shared by the durable stores (SQLite, PostgreSQL).

Both stores take :class:`~periodic_fast.store.Store` calls on the server's
event loop, record them in a :class:`~periodic_fast.store._batch.Batch` under
a lock, and leave the I/O to a writer (a thread, or a loop on a thread) that
commits one batch after the other (group commit).  Everything but the commit
itself and the wake-up of the writer is the same for both and lives here:

* the enqueueing write methods (jobs, funcs, config and extras),
  :meth:`BatchWriter.on_durable`, :meth:`BatchWriter.flush` and
  :meth:`BatchWriter.close` bookkeeping;
* the hand-over between loop and writer: :meth:`BatchWriter._take` picks the
  next batch (a failed one is merged in front of the new writes),
  :meth:`BatchWriter._settle` fires the batch's barriers and keeps a failed
  batch for the retry;
* the metrics (``commits``, ``rows``, ...) and the failure logging.

A subclass supplies :meth:`~BatchWriter._kick` (wake the idle writer),
:meth:`~BatchWriter._stop` (end the writer and release the connection) and
its commit/load code, and calls :meth:`~BatchWriter._committed` /
:meth:`~BatchWriter._failed` around each commit attempt.
"""

from __future__ import annotations

import logging
import threading

from ..job import Job, JobState
from ._batch import Batch, Callback

__all__ = ["BatchWriter"]


class BatchWriter:
    """Batching, barriers, retry bookkeeping and metrics of a durable store.

    :param kind: the database, for messages (``"SQLite"``).
    :param where: what it is (a path), for messages; may be empty.
    :param log: the logger of the concrete store.
    :param retry_min: first delay (s) before a failed batch is retried; it
        doubles up to ``retry_max``.
    :param close_timeout: how long :meth:`close` waits for the last commit.
    """

    #: writes become durable later: the server holds replies for on_durable
    deferred = True

    #: each write gets a fresh Job (encoded or copied at once)
    keeps_records = False

    def __init__(
        self,
        kind: str,
        where: str,
        log: logging.Logger,
        *,
        retry_min: float,
        retry_max: float,
        close_timeout: float,
    ) -> None:
        self.retry_min = retry_min
        self.retry_max = retry_max
        self.close_timeout = close_timeout
        self._kind = kind
        self._where = f" to {where}" if where else ""
        self._name = f"{kind} store {where}" if where else f"{kind} store"
        self._log = log
        self._lock = threading.Lock()
        self._pending = Batch()
        # the batch being committed, or whose barriers are being fired: an
        # on_durable() meanwhile must queue behind it, never fire at once
        self._inflight: Batch | None = None
        self._retained: Batch | None = None  # failed, to retry (no callbacks)
        self._idle = True  # the writer waits for a kick
        self._closed = False
        self._stopping = False
        # metrics
        self._commits = 0
        self._rows = 0
        self._errors = 0
        self._commit_seconds = 0.0
        self._last_commit_seconds = 0.0
        self._healthy = True
        self._failures = 0  # consecutive failed attempts

    # subclass hooks ----------------------------------------------------------------
    def _kick(self) -> None:
        """Wake the idle writer (called with the lock held, ``_idle`` set)."""
        raise NotImplementedError

    def _stop(self) -> None:
        """End the writer and release the connection (from :meth:`close`)."""
        raise NotImplementedError

    # writer side ---------------------------------------------------------------------
    def _take(self) -> tuple[Batch | None, bool]:
        """The next batch for the writer, with the lock held: ``(batch, True)``
        to commit, ``(batch, False)`` for barriers behind a finished commit
        (fire them with :meth:`_settle` and no error), ``(None, False)`` when
        there is nothing to do.  The batch becomes the in-flight one."""
        batch = self._pending
        retained = self._retained
        if batch.writes or retained is not None:
            self._pending = Batch()
            if retained is not None:
                self._retained = None
                retained.merge_newer(batch)
                batch = retained
            self._inflight = batch
            return batch, True
        if batch.callbacks:
            self._pending = Batch()
            self._inflight = batch
            return batch, False
        return None, False

    def _settle(self, batch: Batch, error: BaseException | None) -> None:
        """After a commit attempt of ``batch`` (the in-flight one): keep it for
        the retry when it failed, fire its barriers, then let new barriers
        fire at once again.  Called without the lock."""
        with self._lock:
            callbacks, batch.callbacks = batch.callbacks, []
            if error is not None:
                self._retained = batch
        self._fire(callbacks, error)
        with self._lock:
            # only now: an on_durable() during _fire must queue behind it,
            # or its callback could run before this batch's (out of order)
            self._inflight = None

    def _retry_delay(self) -> float:
        """Seconds to wait before retrying after the latest failure."""
        return min(self.retry_max, self.retry_min * 2.0 ** (self._failures - 1))

    def _committed(self, batch: Batch, elapsed: float) -> None:
        """Account a successful commit of ``batch`` that took ``elapsed`` s."""
        if self._failures:
            self._log.warning(
                "%s commits%s work again after %d failures",
                self._kind,
                self._where,
                self._failures,
            )
        self._failures = 0
        self._healthy = True
        self._commits += 1
        self._rows += len(batch.jobs) + len(batch.dropped)
        self._rows += len(batch.funcs) + len(batch.config)
        self._rows += len(batch.extras) + len(batch.extras_dropped)
        self._commit_seconds += elapsed
        self._last_commit_seconds = elapsed

    def _failed(self, batch: Batch, exc: BaseException) -> BaseException:
        """Account a failed commit attempt of ``batch``; returns ``exc``."""
        self._errors += 1
        self._failures += 1
        self._healthy = False
        if self._failures == 1 or self._failures % 100 == 0:
            self._log.error(
                "%s commit of %d writes%s failed (try %d), will retry: %r",
                self._kind,
                batch.writes,
                self._where,
                self._failures,
                exc,
            )
        return exc

    def _fire(self, callbacks: list[Callback], error: BaseException | None) -> None:
        for cb in callbacks:
            try:
                cb(error)
            except Exception:  # a broken callback must not stop the writer
                self._log.exception("on_durable callback failed")

    # Store API (event-loop thread) --------------------------------------------
    def save_job(self, job: Job, state: JobState) -> None:
        """Insert or replace a job (enqueued)."""
        with self._lock:
            self._pending.save_job(job, state)
            if self._idle:
                self._kick()

    def set_state(self, func: bytes, name: bytes, state: JobState) -> None:
        """Change a stored job's state (enqueued; no-op for a missing job)."""
        with self._lock:
            self._pending.set_state(func, name, state)
            if self._idle:
                self._kick()

    def delete_job(self, func: bytes, name: bytes) -> None:
        """Delete a job (enqueued)."""
        with self._lock:
            self._pending.delete_job(func, name)
            if self._idle:
                self._kick()

    def delete_func_jobs(self, func: bytes) -> None:
        """Delete every job of ``func`` (enqueued; applied before the later
        writes of the same batch)."""
        with self._lock:
            self._pending.delete_func_jobs(func)
            if self._idle:
                self._kick()

    def save_func(self, func: bytes) -> None:
        """Remember a func (enqueued)."""
        with self._lock:
            self._pending.save_func(func)
            if self._idle:
                self._kick()

    def delete_func(self, func: bytes) -> None:
        """Forget a func (enqueued)."""
        with self._lock:
            self._pending.delete_func(func)
            if self._idle:
                self._kick()

    def save_config(self, key: str, value: int) -> None:
        """Persist a config value (enqueued)."""
        with self._lock:
            self._pending.save_config(key, value)
            if self._idle:
                self._kick()

    def save_extra(self, kind: str, func: bytes, name: bytes, value: bytes) -> None:
        """Insert or replace the extra ``(kind, func, name)`` (enqueued)."""
        with self._lock:
            self._pending.save_extra(kind, func, name, value)
            if self._idle:
                self._kick()

    def delete_extra(self, kind: str, func: bytes, name: bytes) -> None:
        """Delete one extra (enqueued)."""
        with self._lock:
            self._pending.delete_extra(kind, func, name)
            if self._idle:
                self._kick()

    def delete_func_extras(self, kind: str, func: bytes) -> None:
        """Delete every extra of ``kind`` of ``func`` (enqueued; applied
        before the later extra writes of the same batch)."""
        with self._lock:
            self._pending.delete_func_extras(kind, func)
            if self._idle:
                self._kick()

    def on_durable(self, callback: Callback) -> None:
        """Call ``callback(error)`` after the commit of everything written so
        far (from the writer), or at once when nothing is outstanding.
        Callbacks fire in registration order."""
        with self._lock:
            batch = self._pending
            now = (
                not batch.writes
                and not batch.callbacks
                and self._inflight is None
                and self._retained is None
            )
            if not now:
                batch.callbacks.append(callback)
                if self._idle:
                    self._kick()
        if now:
            callback(None)

    def flush(self, timeout: float | None = None) -> None:
        """Block until everything written so far is committed; raise the
        commit error (or :class:`TimeoutError` after ``timeout`` seconds)."""
        self._check_open()
        self._flush(timeout)

    def _flush(self, timeout: float | None) -> None:
        done = threading.Event()
        box: list[BaseException | None] = []

        def cb(error: BaseException | None) -> None:
            box.append(error)
            done.set()

        self.on_durable(cb)
        if not done.wait(timeout):
            raise TimeoutError(f"{self._name}: no commit within {timeout} s")
        if box[0] is not None:
            raise box[0]

    def metrics(self) -> dict[str, float]:
        """Counters for monitoring: ``commits``, ``rows`` (net rows written),
        ``commit_seconds_sum``, ``last_commit_seconds``, ``errors`` (failed
        commit attempts), ``pending`` (writes not yet committed) and
        ``healthy`` (1 when the last commit attempt succeeded)."""
        with self._lock:
            pending = self._pending.writes
            if self._inflight is not None:
                pending += self._inflight.writes
            if self._retained is not None:
                pending += self._retained.writes
        return {
            "commits": float(self._commits),
            "rows": float(self._rows),
            "commit_seconds_sum": self._commit_seconds,
            "last_commit_seconds": self._last_commit_seconds,
            "errors": float(self._errors),
            "pending": float(pending),
            "healthy": 1.0 if self._healthy else 0.0,
        }

    def close(self) -> None:
        """Commit what is pending (waiting at most ``close_timeout``), stop
        the writer and release the connection.  Raises the commit error when
        the last commit failed (those writes are lost with the process).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        error: BaseException | None = None
        try:
            self._flush(self.close_timeout)
        except Exception as exc:
            error = exc
            self._log.error("%s closed with uncommitted writes: %r", self._name, exc)
        self._stop()
        if error is not None:
            raise error

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self._name} is closed")
