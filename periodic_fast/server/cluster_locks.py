"""Locks with a global count on a cluster node (docs/cluster.md "Locks").

:class:`ClusterLocks` is the scheduler's :class:`~periodic_fast.sched_locks.LockRemote`
on a cluster node: the scheduler stays sans-I/O and answers from its own
table what it can (a job not running, a job already holding the lock, a job
queued on it); every other ACQUIRE comes here and is decided against
PostgreSQL (:class:`~periodic_fast.store._pg_locks.PgLocks`, on the store's
writer thread), then answered through :meth:`LockTable.decided
<periodic_fast.sched_locks.LockTable.decided>`: granted, or refused and the
job parked LOCKED in the lock's local FIFO queue, as on a single server.

* **Release.**  A slot given back here (RELEASE, the job's end, an unloaded
  partition, the lock-timeout purge) deletes this node's row and notifies
  every node; a release that failed (PostgreSQL away) is retried each round.
* **Waiting jobs.**  A notification about a lock (``LISTEN``), a release
  made here, and a round every ``lease / 3`` (the fallback against lost
  notifications and against slots freed by a node that died: its rows stop
  counting when its leases expire) retry each lock's queue head first, in
  FIFO order, while slots are granted; a job handed a slot becomes pending
  and is dispatched again (its ACQUIRE then succeeds at once).
* **No lost wake-up.**  A refused job is queued only after its refusal
  came back; a slot freed meanwhile would notify an empty queue, so each
  refusal is followed by one more attempt of that lock's queue.

Order: every statement is started on the writer loop as it is asked for,
and the lock statements share one connection used one at a time, so a
job's release and its next acquisition reach PostgreSQL in that order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..store.cluster import FencedOut

if TYPE_CHECKING:
    from ..sched_locks import LockTable
    from ..scheduler import Scheduler
    from ..store._pg_locks import PgLocks
    from ..store.postgres import PostgresStore

__all__ = ["ClusterLocks"]

log = logging.getLogger("periodic_fast.server.cluster")


def split_key(key: bytes) -> tuple[bytes, bytes]:
    """A job handle key (``len func name``, as sched_model) -> func, name."""
    n = key[0]
    return key[1 : 1 + n], key[2 + n :]


class ClusterLocks:
    """The global lock count of one node (see the module doc).

    :param name: the server's name, for log lines.
    :param scheduler: the node's scheduler.
    :param store: the cluster store.
    :param period: seconds between retry rounds (the heartbeat's).
    :param clock: the wall clock handed to the scheduler.
    :param mono: the monotonic clock (the scheduler's lock entry times).
    :param wake: called after the scheduler changed outside a request.
    """

    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        store: PostgresStore,
        *,
        period: float,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        wake: Callable[[], None] = lambda: None,
    ) -> None:
        self.name = name
        # the scheduler's lock table (its seam for decisions made elsewhere)
        self._table: LockTable = scheduler._lock_table
        self._sched = scheduler
        self._clock = clock
        self._store = store
        self._pg_locks: PgLocks | None = None  # the store's, from start()
        self._period = period
        self._mono = mono
        self._wake = wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retrying: set[bytes] = set()  # locks whose queue is being tried
        self._again: set[bytes] = set()  # ... and must be tried once more
        self._unreleased: set[tuple[bytes, bytes]] = set()  # (lock, key)
        self._closed = False
        self._listen_failures = 0
        self._pg_failures = 0  # acquisitions failed in a row
        #: acquisitions asked, refused, slots handed to queued jobs (tests)
        self.asked = 0
        self.refused = 0
        self.handed = 0

    def start(self) -> None:
        """Take over the scheduler's lock decisions; start the rounds."""
        self._loop = asyncio.get_running_loop()
        self._pg_locks = self._store.cluster_locks()
        self._table.remote = self
        self._task = self._loop.create_task(self._run())

    # -- LockRemote -------------------------------------------------------------------

    def ask(
        self,
        lock: bytes,
        count: int,
        key: bytes,
        widen: bool,
        reply: Callable[[bool], None],
    ) -> None:
        """An ACQUIRE for the running job ``key``: decided in PostgreSQL."""
        self.asked += 1
        func, name = split_key(key)
        fut = self._run_pg(self._pg.acquire(lock, count, func, name, widen))
        self._spawn(self._asked(fut, lock, count, key, reply))

    async def _asked(
        self,
        fut: asyncio.Future[bool],
        lock: bytes,
        count: int,
        key: bytes,
        reply: Callable[[bool], None],
    ) -> None:
        granted = await self._outcome(fut, lock)
        ok = self._table.decided(lock, count, key, granted, self._now())
        reply(ok)
        if not ok:
            self.refused += 1
            self._retry(lock)  # a slot freed before the job was queued
        self._wake()

    def released(self, lock: bytes, key: bytes) -> None:
        """A slot given back here: delete the row, notify, try the queue."""
        if self._closed:
            return
        func, name = split_key(key)
        fut = self._run_pg(self._pg.release(lock, func, name))
        self._spawn(self._released(fut, lock, key))

    async def _released(
        self, fut: asyncio.Future[bool], lock: bytes, key: bytes
    ) -> None:
        try:
            await fut
        except Exception as exc:  # retried each round: the row would hold a slot
            self._unreleased.add((lock, key))
            log.warning("%s: lock release failed (retried): %r", self.name, exc)
            return
        self._retry(lock)

    # -- waiting jobs -----------------------------------------------------------------

    def _heard(self, lock: bytes) -> None:
        """A NOTIFY (the store's writer thread)."""
        loop = self._loop
        if loop is not None and not self._closed:
            with contextlib.suppress(RuntimeError):  # loop closed: stopping
                loop.call_soon_threadsafe(self._retry, lock)

    def _retry(self, lock: bytes) -> None:
        """Try ``lock``'s queue (one attempt in flight per lock)."""
        if self._closed:
            return
        lk = self._table.locks.get(lock)
        if lk is None or not lk.queue:
            return
        if lock in self._retrying:
            self._again.add(lock)
            return
        self._retrying.add(lock)
        self._spawn(self._retry_run(lock))

    async def _retry_run(self, lock: bytes) -> None:
        try:
            while True:
                self._again.discard(lock)
                await self._grant_heads(lock)
                if lock not in self._again:
                    return
        finally:
            self._retrying.discard(lock)

    async def _grant_heads(self, lock: bytes) -> None:
        """Hand slots to ``lock``'s queued jobs, head first, while granted."""
        table = self._table
        while not self._closed:
            lk = table.locks.get(lock)
            if lk is None or not lk.queue:
                return
            key = next(iter(lk.queue))
            func, name = split_key(key)
            fut = self._run_pg(self._pg.acquire(lock, lk.max, func, name, False))
            if not await self._outcome(fut, lock):
                return
            if table.grant(lock, key, self._now()):
                self.handed += 1
                self._wake()  # pending again: dispatched
            else:  # no longer waiting here: give the slot back
                self.released(lock, key)

    async def _outcome(self, fut: asyncio.Future[bool], lock: bytes) -> bool:
        """An acquisition's answer; refused when PostgreSQL failed (the job
        waits and is retried) or the partition was lost (it is unloaded)."""
        try:
            granted: bool = await fut
        except FencedOut:
            return False
        except Exception as exc:
            self._pg_failures += 1
            n = self._pg_failures
            if n == 1 or n % 50 == 0:  # PostgreSQL away: not once per job
                log.warning(
                    "%s: lock %r: acquisition failed (%d in a row; retried): %r",
                    self.name,
                    lock,
                    n,
                    exc,
                )
            return False
        self._pg_failures = 0
        return granted

    async def _run(self) -> None:
        """Every ``period``: listen, retry failed releases, retry queues."""
        while not self._closed:
            try:
                await self._run_pg(self._pg.listen(self._heard))
                if self._listen_failures:
                    log.info("%s: listening for lock releases again", self.name)
                self._listen_failures = 0
            except Exception as exc:  # retried next round; rounds still run
                self._listen_failures += 1
                n = self._listen_failures
                if n == 1 or n % 50 == 0:
                    log.warning(
                        "%s: cannot listen for lock releases (%d in a row): %r",
                        self.name,
                        n,
                        exc,
                    )
            for lock, key in list(self._unreleased):
                self._unreleased.discard((lock, key))
                self.released(lock, key)
            for lock, _max, _queue in self._table.waiting():
                self._retry(lock)
            await asyncio.sleep(self._period)

    # -- plumbing ---------------------------------------------------------------------

    @property
    def _pg(self) -> PgLocks:
        pg = self._pg_locks
        if pg is None:
            raise RuntimeError("ClusterLocks.start() not called")
        return pg

    def _now(self) -> float:
        """Bring the scheduler's time up to now (a dispatch outside a request
        stamps its assignment with it) and return the monotonic time."""
        mono = self._mono()
        self._sched.tick(self._clock(), mono)
        return mono

    def _run_pg(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Future[Any]:
        return self._store.cluster_run(coro)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, timeout: float = 2.0) -> None:
        """Stop the rounds; wait (a little) for the statements in flight."""
        self._closed = True
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        pending = list(self._tasks)
        if pending:
            await asyncio.wait(pending, timeout=timeout)
            for t in pending:
                t.cancel()
