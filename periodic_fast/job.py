"""Plain records shared by every layer: a job and a STATUS line.

Both are ``NamedTuple``s so they unpack, compare and hash like tuples and cost
no more memory than one.  The wire encodings live in :mod:`periodic_fast.codec`.
"""

from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["FuncStat", "Job", "JobState"]


class JobState(enum.IntEnum):
    """State of a stored job; the values are the ones the reference stores."""

    PENDING = 0  #: waiting for its time or for a grab slot
    RUNNING = 1  #: assigned to a worker
    LOCKED = 2  #: parked on a lock (ACQUIRE refused) until the lock is handed over


class Job(NamedTuple):
    """One job as it travels on the wire (protocol.md 2.1).

    ``(func, name)`` is the job's identity.  ``count`` and ``timeout`` are 0 when
    absent; a timeout of 0 means "the server's default".
    """

    func: bytes
    name: bytes
    workload: bytes = b""
    sched_at: int = 0
    count: int = 0  # type: ignore[assignment]  # shadows tuple.count
    timeout: int = 0

    @property
    def handle(self) -> bytes:
        """``str8(func) + str8(name)``: how workers refer to the job."""
        return (
            bytes((len(self.func),)) + self.func + bytes((len(self.name),)) + self.name
        )


class FuncStat(NamedTuple):
    """One line of the STATUS reply (protocol.md 2.4)."""

    func: bytes
    workers: int
    jobs: int
    processing: int
    locked: int
    sched_at: int
