"""Named counting locks (protocol.md 4.11): ACQUIRE, RELEASE and hand-over.

A :class:`LockTable` holds every lock with its holders and its FIFO queue,
keyed by job handle, plus the reverse index (handle -> locks it holds or
awaits) that job ends consult.  It does not own jobs: the scheduler hands it
a ``lookup`` (handle -> running record), ``park`` (a refused running job
becomes locked) and ``unpark`` (a locked job promoted to holder becomes
pending again).  Time is passed in (sans-I/O).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .sched_model import LOCKED, RUNNING
from .sched_stats import LockInfo

if TYPE_CHECKING:
    from .rec import JobRec

__all__ = ["Lock", "LockTable"]


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

    __slots__ = ("_lookup", "_park", "_unpark", "held", "locks")

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

    def acquire(
        self, lock: bytes, count: int, key: bytes, now: float, widen: bool = True
    ) -> bool:
        """ACQUIRE: True when granted; a refused running job is parked
        (locked) in the lock's queue until it is handed the lock.

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
            return True  # not running: granted, nothing recorded
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
            if not lk.holders and not lk.queue:
                del self.locks[name]

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
