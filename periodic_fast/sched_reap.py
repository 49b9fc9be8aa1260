"""Freeing the records of a dropped func in bounded slices (issue 17).

DROP_FUNC detaches a func at once: it leaves the func registry, the store
gets its one ``delete_func_jobs`` op, and nothing can reach its jobs by name
any more (a handle is looked up through the registry).  What is left is
work proportional to the func's size: every record still holds an id slot
and maybe a timer-wheel entry.  :class:`Reaper` frees those ``slice`` records
per call; the scheduler calls it once per :meth:`tick
<periodic_fast.scheduler.Scheduler.tick>` and asks for an immediate wake-up
while it has work, so the server answers other peers between slices.

Until a detached record is reaped it may still fire from the wheel (or the
wall-clock-behind heap): while :attr:`Reaper.left` is not 0 the scheduler
checks that a fired record is the one its func's table holds under its name
(a func of the same name may exist again) and never dispatches another.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .sched_model import DEAD, IN_WHEEL, NOWHERE

if TYPE_CHECKING:
    from .rec import JobRec

__all__ = ["REAP_SLICE", "Reaper"]

#: records freed per call: a few ms (compiled records come in hash order, a
#: cache miss each, ~1-2 us; the pure twin's in insertion order, ~0.5 us)
REAP_SLICE: Final = 2048


class Reaper:
    """Records of dropped funcs, freed a slice at a time.

    :param jobs: the scheduler's id -> record list (freed slots become None).
    :param free: the scheduler's free-id list (a freed id is appended).
    :param cancel: the job wheel's ``cancel`` (ids still in the wheel).
    :param slice_size: records freed per :meth:`reap` call.
    """

    __slots__ = ("_cancel", "_free", "_jobs", "_queue", "left", "slice")

    def __init__(
        self,
        jobs: list[JobRec | None],
        free: list[int],
        cancel: Callable[[int], object],
        slice_size: int = REAP_SLICE,
    ) -> None:
        if slice_size < 1:
            raise ValueError("slice_size must be >= 1")
        self._jobs = jobs
        self._free = free
        self._cancel = cancel
        self.slice = slice_size
        # per detached func: its records and how many were freed
        self._queue: deque[tuple[list[JobRec | None], list[int]]] = deque()
        self.left = 0  # records still to free, every func together

    def detach(self, recs: list[JobRec | None]) -> None:
        """Take over ``recs`` (the list is emptied as they are freed)."""
        if recs:
            self._queue.append((recs, [0]))
            self.left += len(recs)

    def reap(self) -> int:
        """Free up to ``slice`` records; return how many were freed."""
        budget = self.slice
        done = 0
        jobs = self._jobs
        free = self._free
        cancel = self._cancel
        queue = self._queue
        while queue and done < budget:
            recs, pos = queue[0]
            i = pos[0]
            end = min(len(recs), i + budget - done)
            while i < end:
                rec = recs[i]
                recs[i] = None  # the list's reference: the record goes now
                i += 1
                if rec is None or rec.state == DEAD:
                    continue
                if rec.where == IN_WHEEL:
                    cancel(rec.id)  # absent (the behind heap): a no-op
                rec.where = NOWHERE
                rec.state = DEAD
                rec.epoch = -1  # every assignment of it is stale
                jid = rec.id  # a live detached record still owns its id
                jobs[jid] = None
                free.append(jid)
            done += i - pos[0]
            pos[0] = i
            if i >= len(recs):
                queue.popleft()
        self.left -= done
        return done
