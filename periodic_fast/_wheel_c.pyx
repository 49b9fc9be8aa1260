# Cython twin of periodic_fast._wheel_py (the spec: read its module docstring
# first).  Same algorithm, same constants, same results call by call; the
# entries live in C arrays instead of one Python object per entry.
#
# Memory ownership: dn, sn, sid and table are PyMem allocations owned by the
# TimerWheel and freed in __dealloc__.  Pointers into dn/sn are only held
# between growth points (alloc() may realloc; nothing keeps a node_t* across
# it).

from cpython.long cimport PyLong_Check
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.number cimport PyNumber_Index
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.string cimport memset

cimport cython

#: Number of levels (11 x 6 bits covers every unsigned 64-bit time).
LEVELS = WL_LEVELS
#: Slots per level.
SLOTS = WL_SLOTS
#: Largest accepted job id.
MAX_JOB_ID = 0xFFFFFFFF
#: Smallest / largest accepted time (signed 64-bit seconds).
MIN_TIME = -(1 << 63)
MAX_TIME = (1 << 63) - 1
#: Entries moved down a level per limited advance call at most.
DEFAULT_CASCADE_CHUNK = 32768

__all__ = [
    "DEFAULT_CASCADE_CHUNK",
    "LEVELS",
    "MAX_JOB_ID",
    "MAX_TIME",
    "MIN_TIME",
    "SLOTS",
    "TimerWheel",
]

cdef uint32_t NIL = 0xFFFFFFFF      # "no node"; dn[id].next == NIL: id absent
cdef uint32_t HI = 0x80000000       # node index tag: sparse pool
cdef uint64_t SIGN = 0x8000000000000000   # t -> u is t ^ SIGN (t + 2**63)
cdef uint64_t MASK = 63
cdef Py_ssize_t NO_LIMIT = <Py_ssize_t>1 << 62
# direct pool grows only while it stays at least ~1/4 dense (plus slack)
cdef uint64_t DENSE_SLACK = 65536


cdef inline int64_t _as_time(object o) except? -1:
    # ints only (floats are a TypeError, as in the Python twin); out of the
    # int64 range is an OverflowError from Cython's conversion
    if not PyLong_Check(o):
        o = PyNumber_Index(o)
    return <int64_t>o


cdef inline uint32_t _as_id(object o) except? 0xFFFFFFFF:
    if not PyLong_Check(o):
        o = PyNumber_Index(o)
    return <uint32_t>o


cdef inline int _level_for(uint64_t elapsed, uint64_t u) noexcept:
    return pf_msb64((elapsed ^ u) | MASK) // WL_BITS


@cython.final
cdef class TimerWheel:
    """Hierarchical timer wheel; see periodic_fast._wheel_py."""

    def __cinit__(self):
        self.dn = NULL
        self.dcap = 0
        self.dcount = 0
        self.table = NULL
        self.tmask = 0
        self.tbits = 0
        self.scap = 1024
        self.sn = <node_t*>PyMem_Malloc(self.scap * sizeof(node_t))
        self.sid = <uint32_t*>PyMem_Malloc(self.scap * sizeof(uint32_t))
        if self.sn == NULL or self.sid == NULL:
            raise MemoryError()
        self.reset_lists()

    def __init__(self, now=None, *, cascade_chunk=DEFAULT_CASCADE_CHUNK):
        cascade_chunk = PyNumber_Index(cascade_chunk)
        if cascade_chunk < 1:
            raise ValueError("cascade_chunk must be >= 1")
        self.chunk = cascade_chunk if cascade_chunk < NO_LIMIT else NO_LIMIT
        self.now_ = MIN_TIME if now is None else _as_time(now)
        self.elapsed = (<uint64_t>self.now_) ^ SIGN

    def __dealloc__(self):
        PyMem_Free(self.dn)
        PyMem_Free(self.sn)
        PyMem_Free(self.sid)
        PyMem_Free(self.table)

    cdef void reset_lists(self) noexcept:
        # empty sentinels, no sparse ids, empty bitmaps
        cdef uint32_t k
        for k in range(WL_NSENT):
            self.sn[k].u = 0
            self.sn[k].prev = HI | k
            self.sn[k].next = HI | k
        self.sused = WL_NSENT
        self.sfree = NIL
        self.scount = 0
        if self.table != NULL:
            memset(self.table, 0xFF, (self.tmask + 1) * sizeof(uint32_t))
        memset(self.occupied, 0, sizeof(self.occupied))
        self.length = 0

    # -- node pools --------------------------------------------------------

    cdef inline node_t* node(self, uint32_t i) noexcept:
        if i & HI:
            return &self.sn[i ^ HI]
        return &self.dn[i]

    cdef inline uint32_t job_of(self, uint32_t i) noexcept:
        if i & HI:
            return self.sid[i ^ HI]
        return i

    cdef uint32_t lookup(self, uint32_t job_id) noexcept:
        # an id can sit in the sparse pool even below dcap (added before the
        # direct array grew over it), so a direct miss falls through
        if job_id < self.dcap and self.dn[job_id].next != NIL:
            return job_id
        if self.scount:
            return self.hash_find(job_id)
        return NIL

    cdef uint32_t alloc(self, uint32_t job_id) except? 0xFFFFFFFF:
        # a node for an id known to be absent
        cdef uint64_t newcap
        cdef uint32_t idx
        if job_id < self.dcap:
            self.dcount += 1
            return job_id
        if job_id < HI:
            newcap = max(<uint64_t>job_id + 1, <uint64_t>self.dcap * 3 // 2, 1024)
            if newcap > HI:
                newcap = HI
            if newcap <= 4 * (<uint64_t>self.dcount + 1) + DENSE_SLACK:
                self.grow_direct(<uint32_t>newcap)
                self.dcount += 1
                return job_id
        # sparse id
        if self.table == NULL or (<uint64_t>self.scount + 1) * 2 > self.tmask + 1:
            self.grow_table()
        if self.sfree != NIL:
            idx = self.sfree
            self.sfree = self.sn[idx].next
        else:
            if self.sused == self.scap:
                self.grow_sparse()
            idx = self.sused
            self.sused += 1
        self.sid[idx] = job_id
        self.hash_insert(idx)
        self.scount += 1
        return idx | HI

    cdef void release(self, uint32_t i) noexcept:
        # the node is already unlinked
        if i & HI:
            i ^= HI
            self.hash_remove(self.sid[i])
            self.sn[i].next = self.sfree
            self.sfree = i
            self.scount -= 1
        else:
            self.dn[i].next = NIL
            self.dcount -= 1

    cdef int grow_direct(self, uint32_t need) except -1:
        cdef node_t* p = <node_t*>PyMem_Realloc(self.dn, <size_t>need * sizeof(node_t))
        cdef uint32_t k
        if p == NULL:
            raise MemoryError()
        for k in range(self.dcap, need):
            p[k].next = NIL
        self.dn = p
        self.dcap = need
        return 0

    cdef int grow_sparse(self) except -1:
        cdef uint64_t cap = <uint64_t>self.scap * 2
        cdef node_t* p
        cdef uint32_t* q
        if cap >= HI - 1:
            cap = HI - 2
            if cap <= self.scap:
                raise MemoryError("too many sparse job ids")
        p = <node_t*>PyMem_Realloc(self.sn, <size_t>cap * sizeof(node_t))
        if p == NULL:
            raise MemoryError()
        self.sn = p
        q = <uint32_t*>PyMem_Realloc(self.sid, <size_t>cap * sizeof(uint32_t))
        if q == NULL:
            raise MemoryError()
        self.sid = q
        self.scap = <uint32_t>cap
        return 0

    # -- sparse hash -----------------------------------------------------------

    cdef inline uint32_t _home(self, uint32_t job_id) noexcept:
        # Fibonacci hashing of the id to tbits bits
        return <uint32_t>((<uint32_t>(job_id * <uint32_t>2654435769u)) >> (32 - self.tbits))

    cdef int grow_table(self) except -1:
        cdef int bits = self.tbits + 1 if self.tbits else 6
        cdef uint32_t size = (<uint32_t>1) << bits
        cdef uint32_t* old = self.table
        cdef uint32_t oldsize = self.tmask + 1 if old != NULL else 0
        cdef uint32_t* t = <uint32_t*>PyMem_Malloc(<size_t>size * sizeof(uint32_t))
        cdef uint32_t k
        if t == NULL:
            raise MemoryError()
        memset(t, 0xFF, <size_t>size * sizeof(uint32_t))
        self.table = t
        self.tbits = bits
        self.tmask = size - 1
        for k in range(oldsize):
            if old[k] != NIL:
                self.hash_insert(old[k])
        PyMem_Free(old)
        return 0

    cdef uint32_t hash_find(self, uint32_t job_id) noexcept:
        cdef uint32_t h = self._home(job_id)
        cdef uint32_t e
        while True:
            e = self.table[h]
            if e == NIL:
                return NIL
            if self.sid[e] == job_id:
                return e | HI
            h = (h + 1) & self.tmask

    cdef void hash_insert(self, uint32_t sidx) noexcept:
        cdef uint32_t h = self._home(self.sid[sidx])
        while self.table[h] != NIL:
            h = (h + 1) & self.tmask
        self.table[h] = sidx

    cdef void hash_remove(self, uint32_t job_id) noexcept:
        cdef uint32_t i = self._home(job_id)
        cdef uint32_t j, k
        while self.sid[self.table[i]] != job_id:
            i = (i + 1) & self.tmask
        # backward-shift deletion: no tombstones
        self.table[i] = NIL
        j = i
        while True:
            j = (j + 1) & self.tmask
            if self.table[j] == NIL:
                return
            k = self._home(self.sid[self.table[j]])
            # leave table[j] if its home k lies cyclically in (i, j]
            if (i < k <= j) if i <= j else (i < k or k <= j):
                continue
            self.table[i] = self.table[j]
            self.table[j] = NIL
            i = j

    # -- list primitives (see _wheel_py) ---------------------------------------

    cdef inline void link(self, uint32_t i, uint32_t lst) noexcept:
        # append node i at the tail of list lst (FIFO)
        cdef uint32_t s = HI | lst
        cdef node_t* sent = &self.sn[lst]
        cdef uint32_t tail = sent.prev
        cdef node_t* n = self.node(i)
        cdef uint64_t u = n.u
        n.prev = tail
        n.next = s
        self.node(tail).next = i
        sent.prev = i
        if lst < WL_NLISTS:
            if tail == s:
                self.occupied[lst >> WL_BITS] |= (<uint64_t>1) << (lst & MASK)
                self.slot_min[lst] = u
            elif u < self.slot_min[lst]:
                self.slot_min[lst] = u

    cdef inline void unlink(self, uint32_t i) noexcept:
        cdef node_t* n = self.node(i)
        cdef uint32_t p = n.prev
        cdef uint32_t q = n.next
        cdef uint32_t lst
        self.node(p).next = q
        self.node(q).prev = p
        if p == q:
            # only the sentinel is left (p is a sentinel): list now empty
            lst = p ^ HI
            if lst < WL_NLISTS:
                self.occupied[lst >> WL_BITS] &= ~((<uint64_t>1) << (lst & MASK))

    cdef inline void place(self, uint32_t i) noexcept:
        cdef uint64_t u = self.node(i).u
        cdef int level
        if u <= self.pend_hi and self.sn[WL_PENDING].next != (HI | WL_PENDING):
            # inside the range being cascaded: queue behind it (FIFO)
            self.link(i, WL_PENDING)
            if u < self.pend_min:
                self.pend_min = u
            return
        level = _level_for(self.elapsed, u)
        self.link(i, level * WL_SLOTS + ((u >> (WL_BITS * level)) & MASK))

    cdef inline bint earliest(self, uint32_t* lst, uint64_t* deadline) noexcept:
        cdef int level, slot, shift
        cdef uint64_t occ, start
        for level in range(WL_LEVELS):
            occ = self.occupied[level]
            if occ:
                slot = pf_ctz64(occ)
                shift = WL_BITS * level
                if level == WL_LEVELS - 1:
                    start = 0      # a shift by 66 would be undefined in C
                else:
                    start = (self.elapsed >> (shift + WL_BITS)) << (shift + WL_BITS)
                lst[0] = level * WL_SLOTS + slot
                deadline[0] = start + ((<uint64_t>slot) << shift)
                return True
        return False

    # -- public API ---------------------------------------------------------------

    def add(self, job_id, when):
        """Schedule job_id at when; moves it if already present."""
        cdef uint32_t jid = _as_id(job_id)
        cdef int64_t t = _as_time(when)
        cdef uint32_t i
        if t < self.now_:
            t = self.now_
        i = self.lookup(jid)
        if i == NIL:
            i = self.alloc(jid)
            self.length += 1
        else:
            self.unlink(i)
        self.node(i).u = (<uint64_t>t) ^ SIGN
        self.place(i)

    def cancel(self, job_id):
        """Remove job_id; False if it was not in the wheel."""
        cdef uint32_t i = self.lookup(_as_id(job_id))
        if i == NIL:
            return False
        self.unlink(i)
        self.release(i)
        self.length -= 1
        return True

    def when(self, job_id):
        """Due time of job_id (clamped to the wheel's time for late adds)."""
        cdef uint32_t i = self.lookup(_as_id(job_id))
        if i == NIL:
            return None
        return <int64_t>(self.node(i).u ^ SIGN)

    def advance(self, now, limit=None):
        """Ids due at or before now, in due order (FIFO within a second)."""
        cdef int64_t tnow = _as_time(now)
        cdef Py_ssize_t remaining, budget
        cdef uint64_t u_now, deadline, u
        cdef uint32_t lst, i, q, s, first, last
        cdef int level
        cdef node_t* sent
        cdef node_t* psent
        cdef list out = []
        if limit is None:
            remaining = budget = NO_LIMIT
        else:
            limit = PyNumber_Index(limit)
            if limit < 0:
                raise ValueError("limit must be >= 0")
            remaining = limit if limit < NO_LIMIT else NO_LIMIT
            budget = self.chunk
        if tnow > self.now_:
            self.now_ = tnow
        u_now = (<uint64_t>tnow) ^ SIGN
        psent = &self.sn[WL_PENDING]
        while remaining:
            if psent.next != (HI | WL_PENDING):
                # finish the cascade of the detached slot, in chunks
                if self.elapsed > u_now:
                    return out
                while budget and psent.next != (HI | WL_PENDING):
                    i = psent.next
                    self.unlink(i)
                    u = self.node(i).u
                    level = _level_for(self.elapsed, u)
                    self.link(i, level * WL_SLOTS + ((u >> (WL_BITS * level)) & MASK))
                    budget -= 1
                if psent.next != (HI | WL_PENDING):
                    return out     # budget spent; the rest on the next call
                continue
            if not self.earliest(&lst, &deadline) or deadline > u_now:
                break
            self.elapsed = deadline
            sent = &self.sn[lst]
            s = HI | lst
            if lst < WL_SLOTS:
                # level 0: every entry is due exactly at deadline
                # pop from the head; the sentinel's bitmap bit is fixed once
                # after the loop (the pop loop is memory-latency bound)
                i = sent.next
                while remaining and i != s:
                    q = self.node(i).next
                    out.append(self.job_of(i))
                    self.release(i)
                    self.length -= 1
                    remaining -= 1
                    i = q
                sent.next = i
                self.node(i).prev = s
                if i == s:
                    self.occupied[0] &= ~((<uint64_t>1) << lst)
                continue
            # upper level: detach the whole slot onto the pending list, O(1)
            level = lst >> WL_BITS
            first = sent.next
            last = sent.prev
            psent.next = first
            psent.prev = last
            self.node(first).prev = HI | WL_PENDING
            self.node(last).next = HI | WL_PENDING
            sent.next = s
            sent.prev = s
            self.occupied[level] &= ~((<uint64_t>1) << (lst & MASK))
            self.pend_hi = deadline + ((<uint64_t>1) << (WL_BITS * level)) - 1
            self.pend_min = self.slot_min[lst]
        else:
            return out     # limit reached: due entries may remain
        # nothing due is left: the position catches up with now
        if u_now > self.elapsed:
            self.elapsed = u_now
        return out

    def next_due(self):
        """Earliest due time (never later than it), or None when empty."""
        cdef bint have = False
        cdef uint64_t best = 0, m, deadline
        cdef uint32_t lst
        if self.sn[WL_PENDING].next != (HI | WL_PENDING):
            best = self.pend_min
            have = True
        if self.earliest(&lst, &deadline):
            m = self.slot_min[lst]
            if not have or m < best:
                best = m
            have = True
        if not have:
            return None
        return <int64_t>(best ^ SIGN)

    def clear(self):
        """Remove every entry (the wheel's time is kept)."""
        cdef uint32_t k
        for k in range(self.dcap):
            self.dn[k].next = NIL
        self.dcount = 0
        self.reset_lists()

    @property
    def time(self):
        """The wheel's time: the largest now seen (or the initial one)."""
        return self.now_

    def __len__(self):
        return self.length

    def __contains__(self, job_id):
        if not isinstance(job_id, int) or not 0 <= job_id <= MAX_JOB_ID:
            return False
        return self.lookup(<uint32_t>job_id) != NIL
