"""A func's job names in order: the job browser's index (docs/jobs.md).

A func's jobs live in a hash table keyed by name (:class:`~periodic_fast.rec.
NameTable`), which has no order a cursor could resume from.  The job browser
(:mod:`periodic_fast.sched_browse`) pages through a func by name, so a func
that is listed gets a :class:`NameIndex`: its job names in a
``sortedcontainers.SortedList`` (sorted blocks of ~1000 names; add and
discard cost O(log n), about 1 us at a million names).

Nobody pays for it unless a func is browsed: ``Func.index`` is None until the
first listing, and the scheduler's two hooks (a new job in ``_submit``, a
deleted one in ``_delete``) test it before calling in.  An index left unused
for :data:`INDEX_IDLE` seconds is dropped again.

Building the index of a big func is work proportional to the whole id space,
so it runs in slices (issue 17): ids below ``scan_at`` have been scanned,
a slice per scheduler tick.  While it builds, :meth:`NameIndex.add` files a
new job only when its id is below ``scan_at`` (the scan will meet the others),
and :meth:`NameIndex.discard` always discards (a no-op for a name not filed
yet), so the finished index equals the func's table whatever happened
meanwhile.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Final

from sortedcontainers import SortedList  # type: ignore[import-untyped]

if TYPE_CHECKING:
    from .rec import JobRec

__all__ = ["INDEX_IDLE", "NameIndex"]

#: seconds (monotonic) without a listing after which a func's index is dropped
INDEX_IDLE: Final = 600.0

_DONE: Final = sys.maxsize  # ``scan_at`` of a complete index


class NameIndex:
    """The names of one func's stored jobs, in byte order.

    :param names: the names already known (a small func is indexed at once).
    :param complete: False: a sliced build starts at id 0 (``scan_at``).
    :param used: monotonic time of the listing that asked for it.
    """

    __slots__ = ("names", "scan_at", "used")

    def __init__(self, names: list[bytes], complete: bool, used: float) -> None:
        self.names: SortedList = SortedList(names)
        #: ids below this were scanned (the build); ``sys.maxsize`` when done
        self.scan_at = _DONE if complete else 0
        self.used = used

    @property
    def complete(self) -> bool:
        """True once every job of the func is filed."""
        return self.scan_at == _DONE

    def finish(self) -> None:
        """The build scanned every id: the index is complete."""
        self.scan_at = _DONE

    def add(self, rec: JobRec) -> None:
        """A new job (the scheduler's ``_submit`` hook)."""
        if rec.id < self.scan_at:  # else the running build will file it
            self.names.add(rec.name)

    def discard(self, rec: JobRec) -> None:
        """A deleted job (the scheduler's ``_delete`` hook)."""
        self.names.discard(rec.name)

    def __len__(self) -> int:
        return len(self.names)
