"""Named counting locks (protocol.md 4.11): ACQUIRE, RELEASE and hand-over.

A :class:`LockTable` holds every lock with its holders and its FIFO queue,
keyed by job handle, plus the reverse index (handle -> locks it holds or
awaits) that job ends consult.  It does not own jobs: the scheduler hands it
a ``lookup`` (handle -> running record), ``park`` (a refused running job
becomes locked) and ``unpark`` (a locked job promoted to holder becomes
pending again).  Time is passed in (sans-I/O).

Cluster mode (docs/cluster.md "Locks"): a lock's count is global, decided
by the server against PostgreSQL.  The server sets :attr:`LockTable.remote`
(a :class:`LockRemote`); then an ACQUIRE this table cannot answer from its
own holders returns None (the handler asks the remote, which answers later
through :meth:`LockTable.decided`), a released slot goes to the remote
instead of the local queue, and a queued job is handed the lock by
:meth:`LockTable.grant` once the remote took a slot for it.  Without a
remote nothing of this runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .sched_model import LOCKED, RUNNING
from .sched_stats import LockInfo

if TYPE_CHECKING:
    from .rec import JobRec

__all__ = ["Lock", "LockRemote", "LockTable"]


class LockRemote(Protocol):
    """Where a cluster node's lock decisions are made (server side)."""

    def ask(
        self,
        lock: bytes,
        count: int,
        key: bytes,
        widen: bool,
        reply: Callable[[bool], None],
    ) -> None:
        """Take a slot of ``lock`` for the running job ``key``; later call
        :meth:`LockTable.decided` and ``reply`` with its answer."""

    def released(self, lock: bytes, key: bytes) -> None:
        """The job ``key`` gave its slot of ``lock`` back."""


class Lock:
    """A named counting lock; the values of both dicts are entry times."""

    __slots__ = ("holders", "max", "name", "queue")

    def __init__(self, name: bytes, max_holders: int) -> None:
        self.name = name
        self.max = max_holders
        self.holders: dict[bytes, float] = {}
        self.queue: dict[bytes, float] = {}  # FIFO


class LockTable:
    """Every named lock and, per job handle, the locks it holds or awaits.

    ``locks`` and ``held`` are only ever mutated in place, so a caller may
    keep them bound (a hot path tests ``held`` before calling in).
    """

    __slots__ = ("_lookup", "_park", "_unpark", "held", "locks", "remote")

    def __init__(
        self,
        lookup: Callable[[bytes], JobRec | None],
        park: Callable[[JobRec], None],
        unpark: Callable[[JobRec], None],
    ) -> None:
        self._lookup = lookup
        self._park = park
        self._unpark = unpark
        self.locks: dict[bytes, Lock] = {}
        self.held: dict[bytes, set[bytes]] = {}  # handle -> locks held/awaited
        #: cluster mode: where the global count is decided (None: here)
        self.remote: LockRemote | None = None

    def acquire(
        self, lock: bytes, count: int, key: bytes, now: float, widen: bool = True
    ) -> bool | None:
        """ACQUIRE: True when granted; a refused running job is parked
        (locked) in the lock's queue until it is handed the lock.  None (only
        with a :attr:`remote`): not decided here, ask the remote.  With a
        remote, a job not running here is refused unless it holds the lock
        here (it may be running on another node: docs/cluster.md "Locks").

        A handle already queued on ``lock`` is refused whatever its state
        (docs/protocol.md 6.5), so a parked job cannot slip in by asking
        again.  ``widen`` False (a non-admin identity with auth on): the
        count cannot raise the max holders of an existing lock; the first
        acquirer's count holds while the lock exists.
        """
        rec = self._lookup(key)
        lk = self.locks.get(lock)
        if lk is not None and key in lk.queue:
            if rec is not None and rec.state == RUNNING:
                self._park(rec)  # dispatched again: parked again
            return False
        if rec is None or rec.state != RUNNING:
            if self.remote is not None:
                # cluster mode: a job not running here may run on another
                # node (this one lost its partition while the worker's
                # ACQUIRE was on its way): refused unless it holds a slot
                return lk is not None and key in lk.holders
            return True  # not running: granted, nothing recorded
        if self.remote is not None:
            if lk is not None and key in lk.holders:
                return True  # handed the lock while parked, or asked again
            return None  # the global count decides (the handler asks)
        if lk is None:
            lk = self.locks[lock] = Lock(lock, count)
            lk.holders[key] = now
            self.held.setdefault(key, set()).add(lock)
            return True
        if widen and count > lk.max:
            lk.max = count  # max holders only grows (protocol.md 4.11)
        if key in lk.holders:
            return True
        if len(lk.holders) < lk.max:
            lk.holders[key] = now
            self.held.setdefault(key, set()).add(lock)
            return True
        lk.queue[key] = now
        self.held.setdefault(key, set()).add(lock)
        # refused: park the job until the lock is handed over
        self._park(rec)
        return False

    def release(self, lock: bytes, key: bytes, now: float) -> None:
        """RELEASE (also on a job's behalf): leave the holders or the queue;
        a freed place goes to the queue's head."""
        lk = self.locks.get(lock)
        if lk is None:
            return
        if key in lk.holders:
            del lk.holders[key]
            self._unlink(key, lock)
            if self.remote is not None:  # the slot is global: given back there
                self.remote.released(lock, key)
            else:
                self._handover(lk, now)
        elif key in lk.queue:
            del lk.queue[key]
            self._unlink(key, lock)
        if not lk.holders and not lk.queue:
            del self.locks[lock]

    def release_all(self, key: bytes, now: float) -> None:
        """The job ``key`` ended or was re-queued: release all its locks."""
        for lock in list(self.held.get(key, ())):
            self.release(lock, key, now)

    def purge(self, cutoff: float) -> None:
        """Drop holder and queue entries older than ``cutoff`` (the
        lock-timeout safety net); nobody is promoted."""
        for name, lk in list(self.locks.items()):
            for entries in (lk.holders, lk.queue):
                for key in [k for k, since in entries.items() if since < cutoff]:
                    del entries[key]
                    self._unlink(key, name)
                    if entries is lk.holders and self.remote is not None:
                        self.remote.released(name, key)
            if not lk.holders and not lk.queue:
                del self.locks[name]

    # -- cluster mode: decisions made by the remote ------------------------------------

    def decided(
        self, lock: bytes, count: int, key: bytes, granted: bool, now: float
    ) -> bool:
        """The remote's answer to an ACQUIRE it was asked; returns the
        answer for the worker.  Granted: the job holds the lock here too (a
        job no longer running meanwhile gives the slot back and is refused,
        as :meth:`acquire` refuses a job not running in cluster mode: its
        partition may have moved on).  Refused: a running job is queued and
        parked as when refused here."""
        rec = self._lookup(key)
        running = rec is not None and rec.state == RUNNING
        lk = self.locks.get(lock)
        if granted:
            if not running:
                holds = lk is not None and key in lk.holders
                if self.remote is not None and not holds:
                    self.remote.released(lock, key)
                return holds
            if lk is None:
                lk = self.locks[lock] = Lock(lock, count)
            if key not in lk.holders:
                lk.queue.pop(key, None)
                lk.holders[key] = now
                self.held.setdefault(key, set()).add(lock)
            return True
        if not running or rec is None:
            return False  # ended, re-queued or unloaded meanwhile: not parked
        if lk is None:
            lk = self.locks[lock] = Lock(lock, count)
        if key in lk.holders:
            return True
        lk.queue[key] = now
        self.held.setdefault(key, set()).add(lock)
        self._park(rec)
        return False

    def grant(self, lock: bytes, key: bytes, now: float) -> bool:
        """The remote took a slot for the queued job ``key``: it holds the
        lock and, parked, becomes pending (dispatched again, its ACQUIRE is
        then granted at once).  False when it is no longer queued or no
        longer parked (it leaves the queue; the caller gives the slot back)."""
        lk = self.locks.get(lock)
        if lk is None or key not in lk.queue:
            return False
        del lk.queue[key]
        rec = self._lookup(key)
        if rec is None or rec.state != LOCKED:
            self._unlink(key, lock)
            if not lk.holders and not lk.queue:
                del self.locks[lock]
            return False
        lk.holders[key] = now
        self._unpark(rec)
        return True

    def waiting(self) -> list[tuple[bytes, int, list[bytes]]]:
        """Every lock with queued jobs: ``(name, max, queue in FIFO order)``."""
        locks = self.locks.values()
        return [(lk.name, lk.max, list(lk.queue)) for lk in locks if lk.queue]

    def max_holders(self) -> int:
        """The largest ``max`` of any lock (0 with no locks)."""
        return max((lk.max for lk in self.locks.values()), default=0)

    def infos(self, shift: float = 0.0) -> list[LockInfo]:
        """Every lock with its holders and its queue, by name; ``shift`` is
        added to each entry time (the scheduler keeps monotonic times and
        shows wall-clock ones)."""

        def entries(d: dict[bytes, float]) -> tuple[tuple[bytes, bytes, float], ...]:
            out = []
            for key, since in d.items():
                n = key[0]
                out.append((key[1 : 1 + n], key[2 + n :], since + shift))
            return tuple(out)

        return [
            LockInfo(lk.name, lk.max, entries(lk.holders), entries(lk.queue))
            for _, lk in sorted(self.locks.items())
        ]

    def _unlink(self, key: bytes, lock: bytes) -> None:
        locks = self.held.get(key)
        if locks is not None:
            locks.discard(lock)
            if not locks:
                del self.held[key]

    def _handover(self, lk: Lock, now: float) -> None:
        """Promote queued handles while there is room; a promoted locked job
        becomes pending (its ACQUIRE will then succeed at once)."""
        queue = lk.queue
        while queue and len(lk.holders) < lk.max:
            key = next(iter(queue))
            del queue[key]
            rec = self._lookup(key)
            if rec is not None and rec.state == LOCKED:
                lk.holders[key] = now
                self._unpark(rec)
            else:
                # gone or not parked: released on its behalf
                self._unlink(key, lk.name)
