"""The scheduler's per-job record and name table, pure-Python twin (the spec).

One :class:`JobRec` exists per stored job, so its size is most of the
server's memory per scheduled job (docs/benchmarks.md, W3).  The Cython twin
(``_rec_c``) has the same API and semantics with C fields and no GC header
(80 bytes per record, the job's fields included), and a :class:`NameTable`
of 8-byte slots instead of a dict.  :mod:`periodic_fast.rec` picks the live
twin.

:class:`JobRec` fields (read and written directly by
:mod:`periodic_fast.scheduler`):

* the job itself, no :class:`~periodic_fast.job.Job` tuple kept: ``func``
  (bytes; the scheduler passes its func's own name object, so jobs share it),
  ``name``, ``workload`` (bytes), ``sched_at`` (a signed 64-bit int),
  ``count`` (signed 32-bit) and ``timeout`` (0 to ``2**31 - 1``; 0 = the
  server's default).  :attr:`JobRec.job` builds a ``Job`` on demand and
  assigning it sets all six fields.  A record references nothing but bytes
  (no func record, no connection), so it can never be part of a reference
  cycle: the compiled twin is not tracked by the cyclic GC.
* ``id``: dense id, the timer wheel's key; ``0 <= id < 2**31``.
* ``state``: ``JobState`` value, or -1 once deleted.
* ``where``: 0 nowhere, 1 in the wheel, 2 in its func's ready queue.
* ``epoch``: changes whenever the job (re)enters pending (:meth:`repend`),
  -1 once deleted; assignments remember it to ignore late events.  It wraps
  at ``2**31`` (only equality matters).
* ``run``: live assignments of this epoch.
* ``confirmed``: some assignment of this epoch was confirmed.

The compiled twin raises OverflowError (or TypeError for a non-bytes) when a
field is given a value out of its C range; the scheduler and the stores check
ranges before (the wire format has the same ones).

:class:`NameTable` is a set of records keyed by their ``name`` (one per func
in the scheduler and in the memory store): the compiled twin is an
open-addressing table of record pointers, this one wraps a dict.  Both keep
lookups, inserts and deletions O(1) amortized whatever the order of the
operations (deleting in iteration order included).  :meth:`NameTable.reserve`
pre-sizes the compiled table for a known number of records (a restart loads
each func's rows in one go).

Earliest pending time (STATUS): a :class:`NameTable` also keeps a min-heap of
``(sched_at, name)`` entries, lazily invalidated.  :meth:`NameTable.add`
(of a record not in the table yet) and :meth:`NameTable.note` push one; an
entry is *live* while the table's record of that name is pending
(``state == 0``) with that ``sched_at``.
:meth:`NameTable.earliest` drops dead entries from the top and reads the
first live one: exact as long as every pending record has an entry, i.e. the
owner calls ``note(rec)`` whenever a record of the table becomes pending
again or gets another ``sched_at`` (the scheduler does in ``_place`` and
``_repend_now``).  Leaving pending (dispatch, deletion) needs no call.  When
the heap holds more than twice the records (plus 64), at a push or a read,
it is rebuilt from the pending records, so dead entries cost O(1) amortized
per push and a read after mass deletions scans the (shrunk) table once
instead of popping every dead entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from heapq import heapify, heappop, heappush
from typing import Any

from .job import Job

__all__ = ["EPOCH_MASK", "JobRec", "NameTable"]

#: ``epoch`` stays below ``2**31`` (it fits the compiled twin's C int).
EPOCH_MASK = 0x7FFFFFFF

# the str8 length prefix of a handle, by length
_LEN_BYTE = [bytes((n,)) for n in range(256)]

_new = tuple.__new__


class JobRec:
    """One stored job and its scheduling state."""

    __slots__ = (
        "confirmed",
        "count",
        "epoch",
        "func",
        "id",
        "name",
        "run",
        "sched_at",
        "state",
        "timeout",
        "where",
        "workload",
    )

    def __init__(
        self,
        jid: int,
        func: bytes,
        name: bytes,
        workload: bytes = b"",
        sched_at: int = 0,
        count: int = 0,
        timeout: int = 0,
    ) -> None:
        self.id = jid
        self.func = func
        self.name = name
        self.workload = workload
        self.sched_at = sched_at
        self.count = count
        self.timeout = timeout
        self.state = 0
        self.where = 0
        self.epoch = 0
        self.run = 0
        self.confirmed = False

    @property
    def job(self) -> Job:
        """The job as a fresh :class:`~periodic_fast.job.Job`; assigning one
        sets the six job fields."""
        return _new(
            Job,
            (
                self.func,
                self.name,
                self.workload,
                self.sched_at,
                self.count,
                self.timeout,
            ),
        )

    @job.setter
    def job(self, job: Job) -> None:
        (
            self.func,
            self.name,
            self.workload,
            self.sched_at,
            self.count,
            self.timeout,
        ) = job

    @property
    def key(self) -> bytes:
        """The job handle ``str8(func) + str8(name)``, built on each call."""
        func = self.func
        name = self.name
        return _LEN_BYTE[len(func)] + func + _LEN_BYTE[len(name)] + name

    def repend(self) -> None:
        """A new epoch: no assignment of it yet (the job is pending again)."""
        self.epoch = (self.epoch + 1) & EPOCH_MASK
        self.run = 0
        self.confirmed = False


class NameTable:
    """Records keyed by their ``name``: at most one record per name."""

    __slots__ = ("_d", "_h", "visits")

    def __init__(self) -> None:
        self._d: dict[bytes, JobRec] = {}
        # (sched_at, name) of pending records, lazily invalidated (earliest)
        self._h: list[tuple[int, bytes]] = []
        #: heap entries :meth:`earliest` examined (tests: its work per call)
        self.visits = 0

    def reserve(self, n: int) -> None:
        """Make room for ``n`` records in all without growing (a hint: the
        compiled twin sizes its array once; a dict cannot be pre-sized).
        Raises ValueError for a negative ``n``."""
        if n < 0:
            raise ValueError(f"reserve: negative size {n}")

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, name: object) -> bool:
        # only bytes keys (the compiled twin compares bytes contents)
        return type(name) is bytes and name in self._d

    def __iter__(self) -> Iterator[JobRec]:
        """The records (the table must not change while iterating)."""
        return iter(self._d.values())

    def get(self, name: bytes) -> JobRec | None:
        """The record named ``name``, or None."""
        return self._d.get(name)

    def add(self, rec: JobRec) -> JobRec | None:
        """Insert ``rec``, replacing a record of the same name; returns the
        replaced record (None if there was none; ``rec`` if it was there)."""
        d = self._d
        name = rec.name
        old = d.get(name)
        d[name] = rec
        if old is rec:  # the same one again (a store's save): noted already
            return old
        h = self._h
        if len(h) > 2 * len(d) + 64:
            self._rebuild_heap()
        else:
            heappush(h, (rec.sched_at, name))
        return old

    def fill(
        self,
        rows: Iterable[tuple[Any, ...]],
        func: bytes,
        jid: int,
        recs: list[JobRec | None],
        t: int,
        wheel_add: Callable[[int, int], None],
        due: list[int],
        stale: list[bytes],
    ) -> int:
        """Start-up (:mod:`periodic_fast.sched_load`): a record per row
        ``(name, workload, sched_at, count, timeout, state)`` of ``func``,
        ids from ``jid`` on, appended to ``recs``; a future one goes to
        ``wheel_add(id, sched_at)`` (``where`` 1), a due one's id to ``due``,
        the name of one not stored as pending (state != 0) to ``stale``.  A
        second row of a name in the table is dropped.  Returns the next id.
        The compiled twin runs the loop in C (a restart is mostly this)."""
        add = self.add
        append = recs.append
        for row in rows:
            if len(row) != 6:
                raise ValueError(f"fill: a row of {len(row)} fields, not 6")
            name, workload, when, count, timeout, state = row
            rec = JobRec(jid, func, name, workload, when, count, timeout)
            old = add(rec)
            if old is not None:  # a store should not hold duplicates
                add(old)  # the first one stays
                continue
            append(rec)
            if state != 0:
                stale.append(name)
            if when > t:
                wheel_add(jid, when)
                rec.where = 1
            else:
                due.append(jid)
            jid += 1
        return jid

    def note(self, rec: JobRec) -> None:
        """``rec`` (a record of this table) is pending again or has another
        ``sched_at``: index it for :meth:`earliest`."""
        h = self._h
        if len(h) > 2 * len(self._d) + 64:
            self._rebuild_heap()
        else:
            heappush(h, (rec.sched_at, rec.name))

    def earliest(self) -> int | None:
        """The smallest ``sched_at`` of the pending records (``state == 0``),
        or None; exact given the :meth:`note` calls (module docstring).
        O(log n) per dead entry dropped, amortized O(1) per push."""
        d = self._d
        if len(self._h) > 2 * len(d) + 64:  # records left without a push
            self._rebuild_heap()
        h = self._h
        while h:
            self.visits += 1
            at, name = h[0]
            rec = d.get(name)
            if rec is not None and rec.state == 0 and rec.sched_at == at:
                return at
            heappop(h)
        return None

    def _rebuild_heap(self) -> None:
        """Drop the dead entries: one entry per pending record."""
        h = [(r.sched_at, r.name) for r in self._d.values() if r.state == 0]
        heapify(h)
        self._h = h

    def pop(self, name: bytes) -> JobRec | None:
        """Remove and return the record named ``name``, or None."""
        return self._d.pop(name, None)

    def min_sched_at(self, state: int) -> int | None:
        """The earliest ``sched_at`` of the records in ``state``, or None."""
        return min(
            (r.sched_at for r in self._d.values() if r.state == state), default=None
        )

    def values(self) -> list[JobRec]:
        """A list of the records (safe to change the table meanwhile)."""
        return list(self._d.values())

    def clear(self) -> None:
        """Remove every record."""
        self._d.clear()
        self._h = []

    def _probe_stats(self) -> tuple[int, int]:
        """``(longest_run, displacement)`` of the compiled twin's array: the
        longest run of occupied slots and the records' total distance from
        their home slots (probe work, for tests and benches).  A dict has no
        such runs: ``(0, 0)``."""
        return 0, 0
