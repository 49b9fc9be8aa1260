# Cython twin of periodic_fast._wheel_py (the spec: read its module docstring
# first).  Same algorithm, same constants, same results call by call; the
# entries live in C arrays instead of one Python object per entry.
#
# Layout (differs from the spec's linked lists, not in results): a slot list
# is a FIFO array of node indexes (slot_t).  Cancel and reschedule are lazy:
# the node's (lst, pos) back-pointer moves, the old array cell stays behind as
# garbage and is skipped when its slot is popped or cascaded.  Popping and
# cascading therefore scan arrays sequentially, prefetching the node of the
# cell PREFETCH positions ahead so the random node reads overlap.  Garbage is
# bounded: a list whose garbage (stale plus consumed cells) exceeds half its
# live count + COMPACT_SLACK is compacted on the spot, a list whose live count
# drops to 0 is reset, so add/cancel/reschedule are O(1) amortized (one call
# may compact one list).  The "pending" list of the spec (the slot being
# cascaded in chunks) is the detached slot's own array: pend_list names it,
# entries that fall into its range are appended to it, behind the rest.
#
# Bounded work: a limited advance makes at most `limit` pops, `cascade_chunk`
# cascade moves (both exactly as the spec) and skips at most
# 2 * cascade_chunk + SKIP_SLACK stale cells; when that skip budget runs out
# it returns early like a spent cascade budget (next_due() <= now says so).
# The spec never returns early there (it has no stale cells); results differ
# only then, and only in how the due ids are split over calls.
#
# Memory ownership: dn, sn, sid, table, obuf and every slots[k].a are PyMem
# allocations owned by the TimerWheel and freed in __dealloc__.  Pointers into
# dn/sn/slot arrays are only held between growth points (alloc() and link()
# may realloc; nothing keeps a pointer across them, except that a node_t*
# stays valid across link(): link grows slot arrays only).

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

cdef uint32_t NIL = 0xFFFFFFFF      # "no node"
cdef uint32_t HI = 0x80000000       # node index tag: sparse pool
cdef uint64_t SIGN = 0x8000000000000000   # t -> u is t ^ SIGN (t + 2**63)
cdef uint64_t MASK = 63
cdef Py_ssize_t NO_LIMIT = <Py_ssize_t>1 << 62
# direct pool grows only while it stays at least ~1/4 dense (plus slack)
cdef uint64_t DENSE_SLACK = 65536
# prefetch distance (cells) of the array scans
cdef uint32_t PREFETCH = 16
# a list is compacted once its garbage exceeds live / 2 + COMPACT_SLACK
cdef uint32_t COMPACT_SLACK = 64
# emptied lists keep arrays up to this many cells, bigger ones are freed
cdef uint32_t KEEP_CELLS = 1024
# stale cells skipped per limited advance: 2 * chunk + SKIP_SLACK
cdef Py_ssize_t SKIP_SLACK = 65536
# a detached slot with this many live entries pre-sizes the level below
cdef uint32_t RESERVE_MIN = 1 << 16
# consumed head cells are given back to the OS in steps of this many
cdef uint32_t TRIM_CELLS = 1 << 16
# the output buffer is freed after a call that needed more cells than this
cdef Py_ssize_t KEEP_OUT = 1 << 18


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
        self.obuf = NULL
        self.ocap = 0
        memset(self.slots, 0, sizeof(self.slots))
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
        cdef uint32_t k
        for k in range(WL_NLISTS):
            PyMem_Free(self.slots[k].a)
        PyMem_Free(self.dn)
        PyMem_Free(self.sn)
        PyMem_Free(self.sid)
        PyMem_Free(self.table)
        PyMem_Free(self.obuf)

    cdef void reset_lists(self) noexcept:
        # empty lists, no sparse ids, empty bitmaps
        cdef uint32_t k
        self.pend_list = WL_NOLIST
        for k in range(WL_NLISTS):
            self.empty_list(k)
        self.sused = 0
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
        if job_id < self.dcap and self.dn[job_id].lst != WL_NOLIST:
            return job_id
        if self.scount:
            return self.hash_find(job_id)
        return NIL

    cdef uint32_t alloc(self, uint32_t job_id) except? 0xFFFFFFFF:
        # a node for an id known to be absent; link() makes it present
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
            self.sfree = self.sn[idx].pos
        else:
            if self.sused == self.scap:
                self.grow_sparse()
            idx = self.sused
            self.sused += 1
        self.sn[idx].lst = WL_NOLIST
        self.sid[idx] = job_id
        self.hash_insert(idx)
        self.scount += 1
        return idx | HI

    cdef void release(self, uint32_t i) noexcept:
        # the node's list cell is already dropped or consumed
        if i & HI:
            i ^= HI
            self.hash_remove(self.sid[i])
            self.sn[i].lst = WL_NOLIST
            self.sn[i].pos = self.sfree
            self.sfree = i
            self.scount -= 1
        else:
            self.dn[i].lst = WL_NOLIST
            self.dcount -= 1

    cdef int grow_direct(self, uint32_t need) except -1:
        cdef node_t* p = <node_t*>PyMem_Realloc(self.dn, <size_t>need * sizeof(node_t))
        cdef uint32_t k
        if p == NULL:
            raise MemoryError()
        for k in range(self.dcap, need):
            p[k].lst = WL_NOLIST
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

    # -- slot lists --------------------------------------------------------------

    cdef int grow_slot(self, slot_t* s) except -1:
        cdef uint64_t cap = <uint64_t>s.cap + (s.cap >> 1)
        cdef uint32_t* a
        if cap < 8:
            cap = 8
        if cap > 0xFFFFFFFF:
            cap = 0xFFFFFFFF
            if cap <= s.cap:
                raise MemoryError("slot list too long")
        a = <uint32_t*>PyMem_Realloc(s.a, <size_t>cap * sizeof(uint32_t))
        if a == NULL:
            raise MemoryError()
        s.a = a
        s.cap = <uint32_t>cap
        return 0

    cdef void reserve_level(self, int level, uint32_t n) noexcept:
        # before cascading n entries into `level` (empty: the detached slot
        # was the earliest), give its 64 arrays room for an even share plus
        # 1/8, so the chunked cascade does not regrow (copy) 64 arrays at
        # once; best effort, and untouched room costs no RSS
        cdef uint64_t want = (<uint64_t>n >> WL_BITS) + (<uint64_t>n >> 9)
        cdef uint32_t* a
        cdef slot_t* s
        cdef int k
        for k in range(WL_SLOTS):
            s = &self.slots[level * WL_SLOTS + k]
            if s.cap - s.len >= want or s.len + want > 0xFFFFFFFF:
                continue
            a = <uint32_t*>PyMem_Realloc(s.a, <size_t>(s.len + want) * sizeof(uint32_t))
            if a == NULL:
                return
            s.a = a
            s.cap = <uint32_t>(s.len + want)

    cdef inline int link(self, uint32_t i, uint32_t lst) except -1:
        # append node i at the tail of list lst (FIFO); the pending list has
        # no bitmap bit and no slot_min (place() keeps pend_min)
        cdef slot_t* s = &self.slots[lst]
        cdef node_t* n
        cdef uint64_t u
        if s.len == s.cap:
            self.grow_slot(s)
        n = self.node(i)
        s.a[s.len] = i
        n.lst = <uint16_t>lst
        n.pos = s.len
        s.len += 1
        if lst != self.pend_list:
            u = n.u
            if s.live == 0:
                self.occupied[lst >> WL_BITS] |= (<uint64_t>1) << (lst & MASK)
                self.slot_min[lst] = u
            elif u < self.slot_min[lst]:
                self.slot_min[lst] = u
        s.live += 1
        return 0

    cdef inline void drop(self, uint32_t i) noexcept:
        # unlink node i lazily: its cell becomes garbage
        cdef uint32_t lst = self.node(i).lst
        cdef slot_t* s = &self.slots[lst]
        s.live -= 1
        if s.live == 0:
            self.empty_list(lst)
        elif s.len - s.live > (s.live >> 1) + COMPACT_SLACK:
            self.compact(lst)

    cdef void empty_list(self, uint32_t lst) noexcept:
        # live == 0: the spec's list is empty; so is the array now
        cdef slot_t* s = &self.slots[lst]
        s.head = 0
        s.len = 0
        s.live = 0
        s.trimmed = 0
        if s.cap > KEEP_CELLS:
            PyMem_Free(s.a)
            s.a = NULL
            s.cap = 0
        if lst == self.pend_list:
            self.pend_list = WL_NOLIST
        else:
            self.occupied[lst >> WL_BITS] &= ~((<uint64_t>1) << (lst & MASK))

    cdef inline void trim_head(self, slot_t* s) noexcept:
        # a long list consumed from its head (a big cascade or pop run):
        # give the consumed pages back now, a step per call, rather than all
        # at once when the array is freed
        if s.head - s.trimmed >= TRIM_CELLS:
            pf_discard(&s.a[s.trimmed], &s.a[s.head])
            s.trimmed = s.head

    cdef void compact(self, uint32_t lst) noexcept:
        # keep the live cells of [head, len), in order, at the front
        cdef slot_t* s = &self.slots[lst]
        cdef uint32_t* a = s.a
        cdef uint32_t p, i, j = 0, end = s.len
        cdef node_t* n
        cdef uint64_t cap
        for p in range(s.head, end):
            if p + PREFETCH < end:
                pf_prefetch(self.node(a[p + PREFETCH]))
            i = a[p]
            n = self.node(i)
            if n.lst == lst and n.pos == p:
                a[j] = i
                n.pos = j
                j += 1
        s.head = 0
        s.len = j
        s.trimmed = 0
        if s.cap > 4 * (<uint64_t>j) + KEEP_CELLS:
            # give back most of a drained array (a failed shrink is harmless)
            cap = 2 * (<uint64_t>j) + 8
            a = <uint32_t*>PyMem_Realloc(s.a, <size_t>cap * sizeof(uint32_t))
            if a != NULL:
                s.a = a
                s.cap = <uint32_t>cap

    cdef inline int place(self, uint32_t i) except -1:
        cdef uint64_t u = self.node(i).u
        cdef int level
        if u <= self.pend_hi and self.pend_list != WL_NOLIST:
            # inside the range being cascaded: queue behind it (FIFO)
            self.link(i, self.pend_list)
            if u < self.pend_min:
                self.pend_min = u
            return 0
        level = _level_for(self.elapsed, u)
        self.link(i, level * WL_SLOTS + ((u >> (WL_BITS * level)) & MASK))
        return 0

    cdef int reserve_out(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef uint32_t* p
        if need <= self.ocap:
            return 0
        cap = max(need, self.ocap * 2, 1024)
        p = <uint32_t*>PyMem_Realloc(self.obuf, <size_t>cap * sizeof(uint32_t))
        if p == NULL:
            raise MemoryError()
        self.obuf = p
        self.ocap = cap
        return 0

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
            self.drop(i)
        self.node(i).u = (<uint64_t>t) ^ SIGN
        try:
            self.place(i)
        except MemoryError:
            # out of memory growing a slot array: the entry is gone
            self.release(i)
            self.length -= 1
            raise

    def cancel(self, job_id):
        """Remove job_id; False if it was not in the wheel."""
        cdef uint32_t i = self.lookup(_as_id(job_id))
        if i == NIL:
            return False
        self.drop(i)
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
        cdef Py_ssize_t remaining, budget, skips, popped, cnt = 0
        cdef uint64_t u_now, deadline, u
        cdef uint32_t lst, i, p, end
        cdef int level
        cdef slot_t* s
        cdef node_t* n
        cdef uint32_t* a
        if limit is None:
            remaining = budget = skips = NO_LIMIT
        else:
            limit = PyNumber_Index(limit)
            if limit < 0:
                raise ValueError("limit must be >= 0")
            remaining = limit if limit < NO_LIMIT else NO_LIMIT
            budget = self.chunk
            skips = 2 * budget + SKIP_SLACK if budget < NO_LIMIT // 4 else NO_LIMIT
        if tnow > self.now_:
            self.now_ = tnow
        u_now = (<uint64_t>tnow) ^ SIGN
        try:
            while remaining:
                if self.pend_list != WL_NOLIST:
                    # finish the cascade of the detached slot, in chunks
                    if self.elapsed > u_now:
                        return pf_ids_to_list(self.obuf, cnt)
                    lst = self.pend_list
                    s = &self.slots[lst]
                    p = s.head
                    # link() grows other lists only: a and end stay valid
                    a = s.a
                    end = s.len
                    while budget and s.live:
                        if p + PREFETCH < end:
                            pf_prefetch(self.node(a[p + PREFETCH]))
                        i = a[p]
                        n = self.node(i)
                        p += 1
                        if n.lst != lst or n.pos != p - 1:
                            skips -= 1
                            if not skips:
                                break
                            continue
                        u = n.u
                        level = _level_for(self.elapsed, u)
                        self.link(
                            i, level * WL_SLOTS + ((u >> (WL_BITS * level)) & MASK)
                        )
                        s.head = p     # an exception in link() leaves a sane list
                        s.live -= 1
                        budget -= 1
                    s.head = p
                    self.trim_head(s)
                    if s.live:
                        # budget spent; the rest on the next call
                        return pf_ids_to_list(self.obuf, cnt)
                    self.empty_list(lst)
                    continue
                if not self.earliest(&lst, &deadline) or deadline > u_now:
                    break
                self.elapsed = deadline
                s = &self.slots[lst]
                if lst < WL_SLOTS:
                    # level 0: every entry is due exactly at deadline
                    self.reserve_out(cnt + min(remaining, <Py_ssize_t>s.live))
                    a = s.a
                    end = s.len
                    p = s.head
                    popped = cnt
                    while remaining and s.live:
                        if p + PREFETCH < end:
                            pf_prefetch(self.node(a[p + PREFETCH]))
                        i = a[p]
                        n = self.node(i)
                        p += 1
                        if n.lst != lst or n.pos != p - 1:
                            skips -= 1
                            if not skips:
                                break
                            continue
                        self.obuf[cnt] = self.job_of(i)
                        cnt += 1
                        self.release(i)
                        s.live -= 1
                        remaining -= 1
                    s.head = p
                    self.trim_head(s)
                    self.length -= cnt - popped
                    if not s.live:
                        self.empty_list(lst)
                    elif not skips:
                        return pf_ids_to_list(self.obuf, cnt)
                    continue
                # upper level: detach the whole slot as the pending list, O(1)
                level = lst >> WL_BITS
                self.occupied[level] &= ~((<uint64_t>1) << (lst & MASK))
                self.pend_list = lst
                self.pend_hi = deadline + ((<uint64_t>1) << (WL_BITS * level)) - 1
                self.pend_min = self.slot_min[lst]
                if s.live >= RESERVE_MIN:
                    self.reserve_level(level - 1, s.live)
            else:
                # limit reached: due entries may remain
                return pf_ids_to_list(self.obuf, cnt)
            # nothing due is left: the position catches up with now
            if u_now > self.elapsed:
                self.elapsed = u_now
            return pf_ids_to_list(self.obuf, cnt)
        finally:
            if self.ocap > KEEP_OUT:
                PyMem_Free(self.obuf)
                self.obuf = NULL
                self.ocap = 0

    def next_due(self):
        """Earliest due time (never later than it), or None when empty."""
        cdef bint have = False
        cdef uint64_t best = 0, m, deadline
        cdef uint32_t lst
        if self.pend_list != WL_NOLIST:
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
            self.dn[k].lst = WL_NOLIST
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
