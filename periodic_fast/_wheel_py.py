"""Hierarchical timer wheel, pure-Python twin (the readable spec).

The compiled twin ``_wheel_c`` implements exactly this algorithm over C arrays;
both are reached through :mod:`periodic_fast.wheel`.  The design follows
Varghese-Lauck scheme 7 as used by Kafka's purgatory and Tokio, see
``persistence-and-scale.md`` sections 2-3.

What it stores
    Entries ``job_id -> due time``.  Job ids are integers ``0 <= id < 2**32``
    (:data:`MAX_JOB_ID`); times are integer epoch seconds anywhere in the
    signed 64-bit range (:data:`MIN_TIME` .. :data:`MAX_TIME`).  An id is in
    the wheel at most once: ``add`` of a present id moves it (reschedule).
    Out-of-range ids and times raise :class:`OverflowError`, non-integers
    :class:`TypeError`, a negative ``limit`` :class:`ValueError` - the same in
    both twins.

Tick and levels
    One tick is one second.  Times are mapped to unsigned 64-bit values
    ``u = t + 2**63`` so the whole signed range is covered.  There are 11
    levels of 64 slots; level ``k`` slots are ``64**k`` seconds wide, so a
    level spans ``64**(k+1)`` seconds: 64 s, ~68 min, ~3 days, ~194 days,
    ~34 years, ~2,200 years for levels 0-5.  Levels 6-10 are the "overflow
    levels": they exist only so that any 64-bit time (year 3000, ``2**62``,
    ``-2**63``) has a place; real schedules never reach them.

Slot arithmetic
    ``E`` is the wheel's internal position (elapsed time, unsigned).  An entry
    due at ``u >= E`` lives at level ``k = msb((E ^ u) | 63) // 6`` (the
    highest 6-bit digit in which ``u`` differs from ``E``) and slot
    ``(u >> 6*k) & 63``.  All entries of one level therefore lie in ``E``'s
    current level-``k+1`` block, in a slot after ``E``'s own digit (level 0:
    at or after), so the earliest occupied slot of the lowest non-empty level
    holds the earliest entry.  Each level keeps a 64-bit occupancy bitmap:
    finding it is a ``ctz`` per level, never a walk over empty slots.

Worked example
    ``E = 1000``.  ``add(7, 1010)``: ``1000 ^ 1010 = 0b0001_1110`` fits in the
    low 6 bits, so level 0, slot ``1010 & 63 = 50``.  ``add(8, 5000)``:
    ``1000 ^ 5000`` has its top bit at 12, level ``12 // 6 = 2``, slot
    ``(5000 >> 12) & 63 = 1`` (seconds 4096-8191).  ``advance(6000)`` first
    pops level-0 slot 50 (deadline 1010, id 7), then finds level-2 slot 1
    (deadline 4096 <= 6000): ``E`` becomes 4096 and the slot is cascaded:
    ``4096 ^ 5000 = 904`` -> level 1, slot ``(5000 >> 6) & 63 = 14``
    (deadline 4096 + 14*64 = 4992).  That slot is cascaded in turn into
    level-0 slot ``5000 & 63 = 8``, which is popped: id 8.  Result ``[7, 8]``
    and, nothing being left, ``E`` becomes 6000.

Ordering
    ``advance`` returns ids in due-time order; within one second in FIFO order
    of their last ``add``.  Slot lists are FIFO and a cascade re-links a slot
    in list order; a later add for the same second can only land in the same
    or a lower level than an earlier one, and a lower one only after the
    earlier one's slot has been cascaded (while a slot is being cascaded in
    chunks, adds that fall into its range are appended to that slot's
    "pending" list so they stay behind it).

Who advances the clock
    Nobody but the caller: the wheel never reads a clock.  ``now`` passed to
    :meth:`TimerWheel.advance` moves the wheel's time ``T`` (the largest
    ``now`` seen, or the constructor's ``now``) forward; it never moves back.
    An entry added with ``when <= T`` is late: it is due at ``T`` (so at the
    next ``advance``), after entries already due, FIFO among late adds;
    :meth:`TimerWheel.when` reports that clamped time.  A backwards ``now``
    (``now < T``) returns only entries still waiting with a due time
    ``<= now`` (left over from an earlier limited call); nothing due after
    ``now`` is ever returned.

Bounded work
    ``advance(now)`` (no limit) returns everything due.  ``advance(now,
    limit)`` returns at most ``limit`` ids and also moves at most
    ``cascade_chunk`` entries down a level per call, so a cascade of a
    million entries is spread over several calls.  It may thus return fewer
    than ``limit`` ids (even none) while entries are due; the rest come on the
    next calls.  The caller loops while ``next_due() <= now``.

next_due
    Returns a time never later than the earliest due time, ``None`` when
    empty.  It is exact when the earliest entry sits in level 0 (the current
    64-second block) and, for upper levels, exact unless the earliest entry of
    that slot was cancelled or moved since the slot was last filled (then it
    is that entry's old time: an early wake-up whose ``advance`` cascades the
    slot, after which ``next_due`` is tighter).

Costs
    ``add``, ``cancel``, reschedule: O(1).  ``advance``: O(1) per returned id
    plus at most ``levels - 1`` cascade moves per entry over its life (one or
    two for real schedules), and O(levels) bitmap probes per slot.
    ``next_due``: O(levels).

Not thread-safe: one owner (the scheduler on the event loop) calls it.
"""

from __future__ import annotations

from operator import index
from typing import Final

__all__ = [
    "DEFAULT_CASCADE_CHUNK",
    "LEVELS",
    "MAX_JOB_ID",
    "MAX_TIME",
    "MIN_TIME",
    "SLOTS",
    "TimerWheel",
]

#: Number of levels (11 x 6 bits covers every unsigned 64-bit time).
LEVELS: Final = 11
#: Slots per level.
SLOTS: Final = 64
#: Largest accepted job id.
MAX_JOB_ID: Final = (1 << 32) - 1
#: Smallest / largest accepted time (signed 64-bit seconds).
MIN_TIME: Final = -(1 << 63)
MAX_TIME: Final = (1 << 63) - 1
#: Entries moved down a level per limited ``advance`` call at most.
DEFAULT_CASCADE_CHUNK: Final = 32768

_BITS: Final = 6
_MASK: Final = SLOTS - 1
_NLISTS: Final = LEVELS * SLOTS  # slot lists 0..703 (list = level*64 + slot)
_PENDING: Final = _NLISTS  # list 704: the slot being cascaded in chunks
_OFFSET: Final = 1 << 63  # signed time -> unsigned position
_NO_LIMIT: Final = 1 << 64

# Node layout: [u, prev, next].  Job nodes are keyed by job id (>= 0), the
# sentinel of list L by -1 - L; every list is circular through its sentinel.
_U: Final = 0
_PREV: Final = 1
_NEXT: Final = 2


def _check_id(job_id: int) -> int:
    job_id = index(job_id)
    if not 0 <= job_id <= MAX_JOB_ID:
        raise OverflowError(f"job id {job_id} out of range 0..{MAX_JOB_ID}")
    return job_id


def _check_time(t: int) -> int:
    t = index(t)
    if not MIN_TIME <= t <= MAX_TIME:
        raise OverflowError(f"time {t} out of the signed 64-bit range")
    return t


def _level_for(elapsed: int, u: int) -> int:
    """Level of an entry due at ``u`` when the wheel is at ``elapsed``."""
    return (((elapsed ^ u) | _MASK).bit_length() - 1) // _BITS


def _ctz(x: int) -> int:
    return (x & -x).bit_length() - 1


class TimerWheel:
    """Hierarchical timer wheel of ``job_id -> due second``; see the module doc.

    ``now`` (optional) is the wheel's initial time: adds before it are late.
    Without it the wheel starts at :data:`MIN_TIME` and the first ``advance``
    moves it (passing ``now`` saves the first cascade through the upper
    levels).  ``cascade_chunk`` bounds the cascade moves of a limited
    ``advance`` call.
    """

    __slots__ = (
        "_chunk",
        "_elapsed",
        "_len",
        "_nodes",
        "_now",
        "_occupied",
        "_pend_hi",
        "_pend_min",
        "_slot_min",
    )

    def __init__(
        self, now: int | None = None, *, cascade_chunk: int = DEFAULT_CASCADE_CHUNK
    ) -> None:
        cascade_chunk = index(cascade_chunk)
        if cascade_chunk < 1:
            raise ValueError("cascade_chunk must be >= 1")
        self._chunk: int = cascade_chunk
        #: wheel time T: the largest ``now`` seen (signed)
        self._now: int = MIN_TIME if now is None else _check_time(now)
        #: internal position E (unsigned); E <= T + 2**63 and E <= every entry
        self._elapsed: int = self._now + _OFFSET
        self._len: int = 0
        self._nodes: dict[int, list[int]] = {}
        #: one occupancy bitmap per level (bit s: slot s non-empty)
        self._occupied: list[int] = [0] * LEVELS
        #: per slot list: smallest u linked into it since it was last empty
        self._slot_min: list[int] = [0] * _NLISTS
        #: inclusive upper bound / smallest u of the pending (cascading) list
        self._pend_hi: int = 0
        self._pend_min: int = 0
        for lst in range(_NLISTS + 1):
            s = -1 - lst
            self._nodes[s] = [0, s, s]

    # -- list primitives ---------------------------------------------------

    def _link(self, key: int, node: list[int], lst: int) -> None:
        """Append ``node`` at the tail of list ``lst`` (FIFO)."""
        nodes = self._nodes
        s = -1 - lst
        sent = nodes[s]
        tail = sent[_PREV]
        node[_PREV] = tail
        node[_NEXT] = s
        nodes[tail][_NEXT] = key
        sent[_PREV] = key
        if lst < _NLISTS:
            u = node[_U]
            if tail == s:  # was empty
                self._occupied[lst >> _BITS] |= 1 << (lst & _MASK)
                self._slot_min[lst] = u
            elif u < self._slot_min[lst]:
                self._slot_min[lst] = u

    def _unlink(self, node: list[int]) -> None:
        nodes = self._nodes
        p = node[_PREV]
        n = node[_NEXT]
        nodes[p][_NEXT] = n
        nodes[n][_PREV] = p
        if p == n:  # only the sentinel is left: the list is now empty
            lst = -1 - p
            if lst < _NLISTS:
                self._occupied[lst >> _BITS] &= ~(1 << (lst & _MASK))

    def _pending_empty(self) -> bool:
        return self._nodes[-1 - _PENDING][_NEXT] == -1 - _PENDING

    def _place(self, key: int, node: list[int]) -> None:
        """Link a node by its due time ``u`` relative to the position E."""
        u = node[_U]
        if u <= self._pend_hi and not self._pending_empty():
            # inside the range being cascaded: queue behind it (FIFO)
            self._link(key, node, _PENDING)
            if u < self._pend_min:
                self._pend_min = u
            return
        level = _level_for(self._elapsed, u)
        self._link(key, node, level * SLOTS + ((u >> (_BITS * level)) & _MASK))

    def _earliest(self) -> tuple[int, int] | None:
        """(list, deadline) of the earliest occupied slot, or None."""
        elapsed = self._elapsed
        for level in range(LEVELS):
            occ = self._occupied[level]
            if occ:
                slot = _ctz(occ)
                shift = _BITS * level
                start = (elapsed >> (shift + _BITS)) << (shift + _BITS)
                return level * SLOTS + slot, start + (slot << shift)
        return None

    # -- public API ----------------------------------------------------------

    def add(self, job_id: int, when: int) -> None:
        """Schedule ``job_id`` at ``when``; moves it if already present.

        A ``when`` at or before the wheel's time is due at the next advance.
        """
        job_id = _check_id(job_id)
        when = _check_time(when)
        u = (when if when > self._now else self._now) + _OFFSET
        node = self._nodes.get(job_id)
        if node is None:
            node = [u, 0, 0]
            self._nodes[job_id] = node
            self._len += 1
        else:
            self._unlink(node)
            node[_U] = u
        self._place(job_id, node)

    def cancel(self, job_id: int) -> bool:
        """Remove ``job_id``; False if it was not in the wheel."""
        job_id = _check_id(job_id)
        node = self._nodes.pop(job_id, None)
        if node is None:
            return False
        self._unlink(node)
        self._len -= 1
        return True

    def when(self, job_id: int) -> int | None:
        """Due time of ``job_id`` (clamped to the wheel's time for late adds)."""
        job_id = _check_id(job_id)
        node = self._nodes.get(job_id)
        return None if node is None else node[_U] - _OFFSET

    def advance(self, now: int, limit: int | None = None) -> list[int]:
        """Ids due at or before ``now``, in due order (FIFO within a second).

        ``limit``: at most that many ids, and at most ``cascade_chunk``
        cascade moves; what is left comes on the next calls.
        """
        now = _check_time(now)
        if limit is None:
            remaining = budget = _NO_LIMIT
        else:
            remaining = index(limit)
            if remaining < 0:
                raise ValueError("limit must be >= 0")
            budget = self._chunk
        if now > self._now:
            self._now = now
        u_now = now + _OFFSET
        nodes = self._nodes
        out: list[int] = []
        pend = -1 - _PENDING
        while remaining:
            if nodes[pend][_NEXT] != pend:
                # finish the cascade of the detached slot, in chunks
                if self._elapsed > u_now:
                    return out
                while budget and nodes[pend][_NEXT] != pend:
                    key = nodes[pend][_NEXT]
                    node = nodes[key]
                    self._unlink(node)
                    u = node[_U]
                    level = _level_for(self._elapsed, u)
                    self._link(
                        key, node, level * SLOTS + ((u >> (_BITS * level)) & _MASK)
                    )
                    budget -= 1
                if nodes[pend][_NEXT] != pend:
                    return out  # budget spent; the rest on the next call
                continue
            found = self._earliest()
            if found is None or found[1] > u_now:
                break
            lst, deadline = found
            self._elapsed = deadline
            s = -1 - lst
            sent = nodes[s]
            if lst < SLOTS:
                # level 0: every entry is due exactly at ``deadline``
                while remaining and sent[_NEXT] != s:
                    key = sent[_NEXT]
                    self._unlink(nodes.pop(key))
                    self._len -= 1
                    out.append(key)
                    remaining -= 1
                continue
            # upper level: detach the whole slot onto the pending list, O(1)
            level = lst >> _BITS
            first, last = sent[_NEXT], sent[_PREV]
            psent = nodes[pend]
            psent[_NEXT] = first
            psent[_PREV] = last
            nodes[first][_PREV] = pend
            nodes[last][_NEXT] = pend
            sent[_NEXT] = sent[_PREV] = s
            self._occupied[level] &= ~(1 << (lst & _MASK))
            self._pend_hi = deadline + (1 << (_BITS * level)) - 1
            self._pend_min = self._slot_min[lst]
        else:
            return out  # limit reached: due entries may remain
        # nothing due is left: the position catches up with ``now``
        if u_now > self._elapsed:
            self._elapsed = u_now
        return out

    def next_due(self) -> int | None:
        """Earliest due time (never later than it; see module doc), or None."""
        best: int | None = None
        if not self._pending_empty():
            best = self._pend_min
        found = self._earliest()
        if found is not None:
            m = self._slot_min[found[0]]
            if best is None or m < best:
                best = m
        return None if best is None else best - _OFFSET

    def clear(self) -> None:
        """Remove every entry (the wheel's time is kept)."""
        self._nodes.clear()
        for lst in range(_NLISTS + 1):
            s = -1 - lst
            self._nodes[s] = [0, s, s]
        self._occupied = [0] * LEVELS
        self._len = 0

    @property
    def time(self) -> int:
        """The wheel's time: the largest ``now`` seen (or the initial one)."""
        return self._now

    def __len__(self) -> int:
        return self._len

    def __contains__(self, job_id: object) -> bool:
        if not isinstance(job_id, int) or not 0 <= job_id <= MAX_JOB_ID:
            return False
        return job_id in self._nodes
