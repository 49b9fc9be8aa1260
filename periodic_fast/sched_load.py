"""The scheduler's start-up: index every stored job (protocol.md 4.16).

:func:`rebuild` turns a :class:`~periodic_fast.store.StoreSnapshot` into the
scheduler's records: future jobs go into the timer wheel, due ones to the
caller (it makes them ready in ``(sched_at, name)`` order per func), running
and locked jobs become pending (written back to the store).  A 10-million-job
restart is mostly this loop, so it is one tight loop per func over plain rows:

* the snapshot's ``groups`` (func, row count, chunks of rows without the func
  column) when the store gives them (SQLite): each func's
  :class:`~periodic_fast.rec.NameTable` is sized once with the count
  (:meth:`~periodic_fast.rec.NameTable.reserve`) instead of growing 1.5x at a
  time, a rehash of every record each time;
* else ``rows`` (7-tuples with the func) or ``jobs`` (``(Job, state)``), cut
  into the same per-func groups on the way (no count: the tables grow).

Sans-I/O (L3): no clock (``t`` is handed in), the store is only written to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from .rec import JobRec, NameTable
from .sched_model import PENDING, Func
from .store import Store, StoreSnapshot

__all__ = ["rebuild", "snapshot_groups"]

Group = tuple[bytes, int, Iterable[Iterable[tuple[Any, ...]]]]

_first = itemgetter(0)
_tail = itemgetter(1, 2, 3, 4, 5, 6)  # a 7-tuple row without its func


def _job_func(item: tuple[Any, Any]) -> bytes:
    return item[0][0]  # type: ignore[no-any-return]


def snapshot_groups(snap: StoreSnapshot) -> Iterable[Group]:
    """The snapshot's jobs as ``StoreSnapshot.groups`` (one pass): the store's
    own groups, else its rows or jobs cut per run of one func (count 0)."""
    if snap.groups is not None:
        return snap.groups
    if snap.rows is not None:
        rows = chain.from_iterable(snap.rows)
        return ((func, 0, (map(_tail, run),)) for func, run in groupby(rows, _first))
    return (
        (func, 0, (((*job[1:], state) for job, state in run),))
        for func, run in groupby(snap.jobs, _job_func)
    )


def rebuild(
    snap: StoreSnapshot,
    t: int,
    *,
    funcs: dict[bytes, Func],
    new_func: Callable[[bytes], Func],
    recs: list[JobRec | None],
    wheel_add: Callable[[int, int], None],
    store: Store,
    shared: bool,
) -> list[int]:
    """Index every job of ``snap`` (wall second ``t``); returns the ids of
    the due ones (the caller makes them ready).

    ``funcs`` and ``new_func`` are the scheduler's func registry and its
    creator (no check, persisted: a func only the jobs name), ``recs`` its id
    -> record list (appended to), ``wheel_add`` its job wheel's ``add``.
    ``shared``: the tables are the store's (``keeps_records``), still
    holding the records the snapshot was made from: each func's table is
    cleared before its first row, this scheduler's records replace them.
    A second row of one name is dropped (the first one stays)."""
    due: list[int] = []
    stale: list[bytes] = []
    cleared: set[bytes] = set()
    for func, count, chunks in snapshot_groups(snap):
        fs = funcs.get(func) or new_func(func)
        jobs: NameTable = fs.jobs
        if shared and func not in cleared:
            # the store's table still holds the records the snapshot was made
            # from (an earlier scheduler's, or the store's own)
            cleared.add(func)
            jobs.clear()
        if not jobs:
            fs.name = func  # adopt the store's func bytes
        if count:
            jobs.reserve(len(jobs) + count)
        name_f = fs.name  # one func bytes object per func, not one per job
        jid = len(recs)
        for rows in chunks:
            # the loop over the rows is the table's (in C when compiled)
            jid = jobs.fill(rows, name_f, jid, recs, t, wheel_add, due, stale)
        for name in stale:  # protocol.md 4.16: all pending at start
            store.set_state(func, name, PENDING)
        stale.clear()
    return due
