"""One process-wide job budget shared by the workers of a WorkerCluster (L4).

A :class:`~periodic_fast.worker.Worker` offers ``size`` grab slots to its
one server, so ``size`` bounds what it runs at once.  A worker connected to
several servers (``WorkerCluster(..., shared_slots=True)``, the worker CLI
tools with several addresses) must bound the *process*: ``--thread N`` is
the machine's capacity, whatever node a job comes from.

Every server still gets ``size`` slots (so each node can hand a job at once
when the process is idle), but the jobs running over all of them are
counted against one :class:`SlotBudget`:

* a JOB_ASSIGN while the budget is full is refused with JOB_UNASSIGNED (the
  server puts the job back to pending at once, for another worker process)
  and its slot is *parked*: no new GRAB_JOB is sent for it;
* a slot that would be offered again while the budget is full (a job just
  ended elsewhere, a reconnect) is parked too;
* when a job ends, its slot leaves the budget and every parked slot is
  offered again; an assignment that still finds the budget full is refused
  and parked again.

So at most ``size`` jobs run at once, a job is never held by a busy process
(its server-side timeout never runs while it waits here), and an idle
process takes jobs from every node.  The refusals cost one round trip each
and only happen while the process is full.  With one server the plain
:class:`Worker` is used (its slots are the budget): no cost on that path.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from .codec import Packet
from .constants import Command
from .worker import Worker, _Slot

__all__ = ["SharedSlotWorker", "SlotBudget", "stderr_line"]


def stderr_line(message: str) -> None:
    """Print one log line on stderr (the worker tools' log)."""
    print(message, file=sys.stderr, flush=True)


class SlotBudget:
    """How many jobs the workers sharing it may run at once, and which of
    their slots wait for room (see the module doc)."""

    __slots__ = ("holders", "parked", "size")

    def __init__(self, size: int = 1) -> None:
        #: jobs at once over every worker (set by ``WorkerCluster.start``)
        self.size = size
        #: the slots whose job counts against the budget
        self.holders: set[_Slot] = set()
        #: slots not offered while the budget was full, in arrival order
        self.parked: dict[_Slot, SharedSlotWorker] = {}

    @property
    def full(self) -> bool:
        """No room for one more job."""
        return len(self.holders) >= self.size

    def release(self, slot: _Slot) -> None:
        """``slot``'s job ended: room for one more, offer the parked slots."""
        self.holders.discard(slot)
        parked, self.parked = self.parked, {}
        for s, worker in parked.items():
            if not s.busy:
                worker._grab(s)


class SharedSlotWorker(Worker):
    """A :class:`Worker` whose running jobs count against a
    :class:`SlotBudget` shared with the other workers of its cluster.

    :param address: its server.
    :param budget: the shared budget.
    :param announce: called with a line when the connection to the server is
        made, lost, or retried in the background (None: silent).
    :param kwargs: passed to :class:`Worker`.
    """

    def __init__(
        self,
        address: str,
        *,
        budget: SlotBudget,
        announce: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(address, **kwargs)
        self._budget = budget
        self._announce = announce
        self._lost = False  # a loss was announced: no "not reachable" line

    def _grab(self, slot: _Slot) -> None:
        budget = self._budget
        if slot in budget.holders and not slot.busy:
            budget.release(slot)  # its job ended: room for the parked
        if budget.full:
            budget.parked[slot] = self
            return
        budget.parked.pop(slot, None)
        super()._grab(slot)

    def _assign(self, slot: _Slot, pkt: Packet) -> None:
        budget = self._budget
        proto = self._proto
        if budget.full and not slot.busy and not self._draining and proto is not None:
            # full with another node's jobs: the server re-dispatches it now
            proto.send(slot.msgid, Command.JOB_UNASSIGNED)
            budget.parked[slot] = self
            return
        super()._assign(slot, pkt)
        if slot.busy:
            budget.holders.add(slot)

    # the per-node log lines ------------------------------------------------------
    async def _on_connected(self) -> None:
        await super()._on_connected()
        self._lost = False
        if self._announce is not None:
            self._announce(f"Connected to {self.address}.")

    def _on_disconnected(self) -> None:
        super()._on_disconnected()
        if self._announce is not None and not self._closing:
            self._lost = True
            self._announce(f"Lost {self.address}; reconnecting in the background.")

    def _start_reconnect(self) -> None:
        task = self._reconnect_task
        if (
            self._announce is not None
            and (task is None or task.done())
            and not self._lost
            and not self.connected
        ):
            self._announce(
                f"{self.address} not reachable; retrying every "
                f"{self.reconnect_delay:g} s."
            )
        super()._start_reconnect()
