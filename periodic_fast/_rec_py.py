"""The scheduler's per-job record, pure-Python twin (the spec).

One :class:`JobRec` exists per stored job, so its size is most of the
server's memory per scheduled job (docs/benchmarks.md, W3).  The Cython twin
(``_rec_c``) has the same API and semantics with C fields and no GC header:
48 bytes per record instead of 96 plus a Python int for the id.
:mod:`periodic_fast.rec` picks the live twin.

Fields (read and written directly by :mod:`periodic_fast.scheduler`):

* ``job``: the stored :class:`~periodic_fast.job.Job` (timeout 0 = the
  server's default); the scheduler finds the job's func through ``job[0]``.
  A record references nothing else (no func record, no connection), so it
  can never be part of a reference cycle: the compiled twin is not tracked
  by the cyclic GC, which saves its 16-byte header.
* ``id``: dense id, the timer wheel's key; ``0 <= id < 2**31``.
* ``state``: ``JobState`` value, or -1 once deleted.
* ``where``: 0 nowhere, 1 in the wheel, 2 in its func's ready queue.
* ``epoch``: changes whenever the job (re)enters pending (:meth:`repend`),
  -1 once deleted; assignments remember it to ignore late events.  It wraps
  at ``2**31`` (only equality matters).
* ``run``: live assignments of this epoch.
* ``confirmed``: some assignment of this epoch was confirmed.
"""

from __future__ import annotations

from .job import Job

__all__ = ["EPOCH_MASK", "JobRec"]

#: ``epoch`` stays below ``2**31`` (it fits the compiled twin's C int).
EPOCH_MASK = 0x7FFFFFFF

# the str8 length prefix of a handle, by length
_LEN_BYTE = [bytes((n,)) for n in range(256)]


class JobRec:
    """One stored job and its scheduling state."""

    __slots__ = ("confirmed", "epoch", "id", "job", "run", "state", "where")

    def __init__(self, jid: int, job: Job) -> None:
        self.id = jid
        self.job = job
        self.state = 0
        self.where = 0
        self.epoch = 0
        self.run = 0
        self.confirmed = False

    @property
    def key(self) -> bytes:
        """The job handle ``str8(func) + str8(name)``, built on each call."""
        job = self.job
        func = job[0]
        name = job[1]
        return _LEN_BYTE[len(func)] + func + _LEN_BYTE[len(name)] + name

    def repend(self) -> None:
        """A new epoch: no assignment of it yet (the job is pending again)."""
        self.epoch = (self.epoch + 1) & EPOCH_MASK
        self.run = 0
        self.confirmed = False
