# Cython twin of periodic_fast._rec_py (the spec: read its module docstring).
# Same API and semantics.  JobRec keeps the job's fields as C fields (no Job
# tuple, no Python int per due time) and is not tracked by the cyclic GC (it
# references only bytes, so it can never be part of a cycle): 3 pointers,
# one int64 and five C ints plus three chars after the 16-byte object header
# (71 bytes, an 80-byte pymalloc block).  NameTable is an open-addressing
# table of record pointers keyed by the record's name (linear probing,
# backward-shift deletion, any table size through a multiply-shift index), so
# a job costs one 8-byte slot at 50-75% load instead of a dict entry.  Each
# array draws a fresh odd multiplier for that index (see _home): the records
# left after deleting in slot order, or added in another table's slot order,
# are then spread evenly instead of packed into one probe run.  Ints assigned
# out of a field's range raise OverflowError (the scheduler never does: ids
# are dense, run counts are small, epochs wrap through repend(), job fields
# are range-checked like the wire format).  The earliest-pending heap
# (earliest/note, spec in _rec_py) is a C array of (sched_at, name) pairs, 16
# bytes an entry, holding a reference to the name (not the record: a dead
# record is not kept alive by its entry).

from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.mem cimport PyMem_Calloc, PyMem_Free, PyMem_Realloc
from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.stdint cimport uint64_t, uintptr_t
from libc.string cimport memcmp, memcpy

cimport cython


cdef extern from *:
    ctypedef unsigned long long u128 "unsigned __int128"
    void __builtin_prefetch(const void *p) noexcept nogil

from periodic_fast.job import Job

#: ``epoch`` stays below ``2**31`` (it fits a C int).
EPOCH_MASK = 0x7FFFFFFF

cdef object _tuple_new = tuple.__new__
cdef object _ZERO = 0


@cython.no_gc
@cython.final
cdef class JobRec:
    """One stored job and its scheduling state."""

    # order: pointers, the int64, ints, then chars: the struct packs into 71
    cdef public bytes func
    cdef readonly bytes name
    cdef public bytes workload
    cdef public long long sched_at
    cdef public int count
    cdef public int timeout
    cdef public int id
    cdef public int run
    cdef public int epoch
    cdef public signed char state
    cdef public signed char where
    cdef unsigned char _confirmed

    def __cinit__(
        self,
        int jid,
        bytes func not None,
        bytes name not None,
        bytes workload not None = b"",
        long long sched_at = 0,
        int count = 0,
        int timeout = 0,
    ):
        self.id = jid
        self.func = func
        self.name = name
        self.workload = workload
        self.sched_at = sched_at
        self.count = count
        self.timeout = timeout

    @property
    def job(self):
        """The job as a fresh :class:`~periodic_fast.job.Job`."""
        return _tuple_new(
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

    @property
    def confirmed(self):
        """Some assignment of this epoch was confirmed."""
        return self._confirmed != 0

    @confirmed.setter
    def confirmed(self, value):
        self._confirmed = 1 if value else 0

    @property
    def key(self):
        """The job handle ``str8(func) + str8(name)``, built on each call."""
        cdef bytes func = self.func
        cdef bytes name = self.name
        cdef Py_ssize_t nf = len(func)
        cdef Py_ssize_t nn = len(name)
        if nf > 255 or nn > 255:
            raise ValueError("func and name must be at most 255 bytes")
        cdef bytes out = PyBytes_FromStringAndSize(NULL, nf + nn + 2)
        cdef char *p = PyBytes_AS_STRING(out)
        p[0] = <char>nf
        memcpy(p + 1, PyBytes_AS_STRING(func), nf)
        p[1 + nf] = <char>nn
        memcpy(p + 2 + nf, PyBytes_AS_STRING(name), nn)
        return out

    def repend(self):
        """A new epoch: no assignment of it yet (the job is pending again)."""
        self.epoch = (self.epoch + 1) & 0x7FFFFFFF
        self.run = 0
        self._confirmed = 0


cdef inline Py_ssize_t _home(Py_hash_t h, uint64_t mul, Py_ssize_t size) noexcept:
    # multiply-shift onto [0, size): the high bits of h * mul (mod 2**64),
    # any size, so growth can be 1.5x.  Without the per-array multiplier the
    # index would be monotone in h at every size: deleting in slot order
    # leaves the names of one hash range, which a shrink then packs into a
    # fraction of the smaller table (one run of them all, quadratic pops);
    # a fresh pseudo-random odd mul (universal multiply-shift) per array
    # makes its homes independent of the old array's order.
    return <Py_ssize_t>((<u128>(<uint64_t>h * mul) * <uint64_t>size) >> 64)


# the splitmix64 sequence the multipliers come from: deterministic, and no
# two arrays of one process share a multiplier
cdef uint64_t _mul_state = 0


cdef inline uint64_t _next_mul() noexcept:
    global _mul_state
    _mul_state += 0x9E3779B97F4A7C15ULL
    cdef uint64_t z = _mul_state
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL
    return (z ^ (z >> 31)) | 1


# A slot is a record pointer with 4 low bits of its name's hash in the
# pointer's alignment bits (objects are 16-byte aligned): a probe skips
# other names without loading their record and name (two cache misses).
DEF TAG = 15
# fill(): rows ahead whose home slot is prefetched
DEF FILL_AHEAD = 8

cdef inline PyObject *_rec_of(uintptr_t slot) noexcept:
    return <PyObject *>(slot & ~(<uintptr_t>TAG))


cdef inline Py_hash_t _name_hash(uintptr_t slot) except? -1:
    # hash() of a bytes object is cached in it: no rehash cost
    return hash((<JobRec>_rec_of(slot)).name)


ctypedef struct Entry:  # an earliest-pending heap entry
    long long at
    PyObject *name  # a reference


@cython.final
cdef class NameTable:
    """Records keyed by their ``name``: at most one record per name."""

    cdef uintptr_t *slots
    cdef Py_ssize_t size
    cdef Py_ssize_t used
    cdef uint64_t mul  # the index multiplier of this array (_home)
    cdef Entry *heap  # min-heap by ``at`` of (sched_at, name), lazily dead
    cdef Py_ssize_t hlen
    cdef Py_ssize_t hcap
    cdef public Py_ssize_t visits  # heap entries earliest() examined

    def __cinit__(self):
        self.slots = <uintptr_t *>PyMem_Calloc(8, sizeof(uintptr_t))
        if self.slots == NULL:
            raise MemoryError()
        self.size = 8
        self.mul = _next_mul()

    def __dealloc__(self):
        cdef Py_ssize_t i
        self._heap_clear()
        PyMem_Free(self.heap)
        self.heap = NULL
        if self.slots != NULL:
            for i in range(self.size):
                if self.slots[i]:
                    Py_DECREF(<object>_rec_of(self.slots[i]))
            PyMem_Free(self.slots)
            self.slots = NULL

    # -- the earliest-pending heap ------------------------------------------

    cdef void _heap_clear(self) noexcept:
        cdef Py_ssize_t i
        cdef Entry *heap = self.heap
        cdef Py_ssize_t n = self.hlen
        self.hlen = 0
        for i in range(n):
            Py_DECREF(<object>heap[i].name)

    cdef int _heap_room(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap
        cdef Entry *p
        if need <= self.hcap:
            return 0
        cap = max(need, 2 * self.hcap, 8)
        p = <Entry *>PyMem_Realloc(self.heap, cap * sizeof(Entry))
        if p == NULL:
            raise MemoryError()
        self.heap = p
        self.hcap = cap
        return 0

    cdef inline void _sift_up(self, Py_ssize_t i) noexcept:
        cdef Entry *heap = self.heap
        cdef Entry e = heap[i]
        cdef Py_ssize_t parent
        while i > 0:
            parent = (i - 1) >> 1
            if heap[parent].at <= e.at:
                break
            heap[i] = heap[parent]
            i = parent
        heap[i] = e

    cdef void _sift_down(self, Py_ssize_t i) noexcept:
        cdef Entry *heap = self.heap
        cdef Py_ssize_t n = self.hlen
        cdef Entry e = heap[i]
        cdef Py_ssize_t child
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and heap[child + 1].at < heap[child].at:
                child += 1
            if heap[child].at >= e.at:
                break
            heap[i] = heap[child]
            i = child
        heap[i] = e

    cdef int _push(self, JobRec rec) except -1:
        if self.hlen > 2 * self.used + 64:
            return self._heap_rebuild()
        self._heap_room(self.hlen + 1)
        cdef Py_ssize_t i = self.hlen
        Py_INCREF(rec.name)
        self.heap[i].at = rec.sched_at
        self.heap[i].name = <PyObject *>rec.name
        self.hlen = i + 1
        self._sift_up(i)
        return 0

    cdef int _heap_rebuild(self) except -1:
        """One entry per pending record (drops the dead ones)."""
        cdef Py_ssize_t i, n = 0
        cdef JobRec rec
        self._heap_clear()
        for i in range(self.size):
            if self.slots[i] and (<JobRec>_rec_of(self.slots[i])).state == 0:
                n += 1
        self._heap_room(n)
        n = 0
        for i in range(self.size):
            if self.slots[i]:
                rec = <JobRec>_rec_of(self.slots[i])
                if rec.state == 0:
                    Py_INCREF(rec.name)
                    self.heap[n].at = rec.sched_at
                    self.heap[n].name = <PyObject *>rec.name
                    n += 1
        self.hlen = n
        i = n // 2 - 1
        while i >= 0:
            self._sift_down(i)
            i -= 1
        return 0

    def note(self, JobRec rec not None):
        """``rec`` (a record of this table) is pending again or has another
        ``sched_at``: index it for :meth:`earliest`."""
        self._push(rec)

    def earliest(self):
        """The smallest ``sched_at`` of the pending records (``state == 0``),
        or None; exact given the :meth:`note` calls (see _rec_py)."""
        cdef Py_ssize_t i
        cdef JobRec rec
        cdef object name
        if self.hlen > 2 * self.used + 64:  # records left without a push
            self._heap_rebuild()
        while self.hlen:
            self.visits += 1
            name = <object>self.heap[0].name
            i = self._find(<bytes>name)
            if i >= 0:
                rec = <JobRec>_rec_of(self.slots[i])
                if rec.state == 0 and rec.sched_at == self.heap[0].at:
                    return rec.sched_at
            self.hlen -= 1
            self.heap[0] = self.heap[self.hlen]
            if self.hlen:
                self._sift_down(0)
            Py_DECREF(name)  # the heap's reference; ``name`` keeps it alive
        return None

    def reserve(self, Py_ssize_t n):
        """Make room for ``n`` records in all: the array is sized once (2/3
        full at ``n``) instead of growing 1.5x at a time, and the heap too.
        Raises ValueError for a negative ``n``."""
        if n < 0:
            raise ValueError(f"reserve: negative size {n}")
        cdef Py_ssize_t size = n + n // 2 + 1
        if size > self.size and n * 4 > self.size * 3:
            self._resize(size)
        self._heap_room(n)

    def __len__(self):
        return self.used

    cdef inline Py_ssize_t _probe(
        self, bytes name, Py_hash_t h, Py_ssize_t *empty
    ) noexcept:
        """Slot index of the record named ``name`` (of hash ``h``), or -1
        with ``*empty`` set to the empty slot ending its probe run."""
        cdef uintptr_t tag = <uintptr_t>h & TAG
        cdef Py_ssize_t size = self.size
        cdef Py_ssize_t i = _home(h, self.mul, size)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(name)
        cdef const char *p = PyBytes_AS_STRING(name)
        cdef uintptr_t slot
        cdef PyObject *other
        while True:
            slot = self.slots[i]
            if not slot:
                empty[0] = i
                return -1
            if slot & TAG == tag:
                other = <PyObject *>(<JobRec>_rec_of(slot)).name
                if other == <PyObject *>name or (
                    PyBytes_GET_SIZE(<object>other) == n
                    and memcmp(PyBytes_AS_STRING(<object>other), p, n) == 0
                ):
                    return i
            i += 1
            if i == size:
                i = 0

    cdef Py_ssize_t _find(self, bytes name) except -2:
        """Slot index of the record named ``name``, or -1."""
        cdef Py_ssize_t empty = 0
        return self._probe(name, hash(name), &empty)

    cdef int _resize(self, Py_ssize_t size) except -1:
        cdef uintptr_t *old = self.slots
        cdef Py_ssize_t old_size = self.size
        cdef uintptr_t *new = <uintptr_t *>PyMem_Calloc(size, sizeof(uintptr_t))
        cdef uint64_t mul = _next_mul()
        cdef Py_ssize_t i, j
        cdef uintptr_t slot
        if new == NULL:
            raise MemoryError()
        for i in range(old_size):
            # every entry's home needs its name's hash (record -> name ->
            # cached hash): fetch records 16 slots and names 8 slots ahead
            if i + 16 < old_size and old[i + 16]:
                __builtin_prefetch(_rec_of(old[i + 16]))
            if i + 8 < old_size and old[i + 8]:
                __builtin_prefetch(<PyObject *>(<JobRec>_rec_of(old[i + 8])).name)
            slot = old[i]
            if slot:
                j = _home(_name_hash(slot), mul, size)
                while new[j]:
                    j += 1
                    if j == size:
                        j = 0
                new[j] = slot  # the reference moves with it
        self.slots = new
        self.size = size
        self.mul = mul
        PyMem_Free(old)
        return 0

    def __contains__(self, name):
        if type(name) is not bytes:
            return False
        return self._find(<bytes>name) >= 0

    def __iter__(self):
        """The records (the table must not change while iterating)."""
        cdef uintptr_t *slots = self.slots
        cdef Py_ssize_t size = self.size
        cdef Py_ssize_t i
        for i in range(size):
            # a resize frees the array: never read it after one (a change
            # without a resize may skip or repeat records, like a dict's)
            if self.slots != slots:
                raise RuntimeError("NameTable changed size during iteration")
            if slots[i]:
                yield <object>_rec_of(slots[i])

    def get(self, bytes name not None):
        """The record named ``name``, or None."""
        cdef Py_ssize_t i = self._find(name)
        return None if i < 0 else <object>_rec_of(self.slots[i])

    def add(self, JobRec rec not None):
        """Insert ``rec``, replacing a record of the same name; returns the
        replaced record (None if there was none; ``rec`` if it was there)."""
        return self._add(rec)

    def fill(
        self,
        rows,
        bytes func not None,
        Py_ssize_t jid,
        list recs not None,
        long long t,
        wheel_add,
        list due not None,
        list stale not None,
    ):
        """Start-up (see _rec_py): one record per row, in C."""
        cdef list chunk
        cdef object ahead
        cdef Py_ssize_t k, n
        if type(rows) is not list:
            for row in rows:
                jid = self._fill_one(row, func, jid, recs, t, wheel_add, due, stale)
            return jid
        chunk = <list>rows
        n = len(chunk)
        for k in range(n):
            # each insert's home slot is a cache miss in a big table: hash
            # the name of the row FILL_AHEAD on and prefetch its slot
            if k + FILL_AHEAD < n:
                ahead = chunk[k + FILL_AHEAD]
                if type(ahead) is tuple and len(<tuple>ahead) == 6:
                    ahead = (<tuple>ahead)[0]
                    if type(ahead) is bytes:
                        __builtin_prefetch(
                            &self.slots[_home(hash(ahead), self.mul, self.size)]
                        )
            jid = self._fill_one(chunk[k], func, jid, recs, t, wheel_add, due, stale)
        return jid

    cdef Py_ssize_t _fill_one(
        self,
        object row_obj,
        bytes func,
        Py_ssize_t jid,
        list recs,
        long long t,
        object wheel_add,
        list due,
        list stale,
    ) except -1:
        cdef tuple row = row_obj
        cdef JobRec rec
        cdef object old, state
        cdef long long when
        if len(row) != 6:
            raise ValueError(f"fill: a row of {len(row)} fields, not 6")
        rec = JobRec.__new__(JobRec, jid, func, row[0], row[1], row[2], row[3], row[4])
        old = self._add(rec)
        if old is not None:  # a store should not hold duplicates
            self._add(<JobRec>old)  # the first one stays
            return jid
        recs.append(rec)
        state = row[5]
        if state is not _ZERO and state != 0:
            stale.append(rec.name)
        when = rec.sched_at
        if when > t:
            wheel_add(jid, when)
            rec.where = 1
        else:
            due.append(jid)
        return jid + 1

    cdef object _add(self, JobRec rec):
        cdef uintptr_t ptr = <uintptr_t><PyObject *>rec
        if ptr & TAG:  # pragma: no cover - CPython aligns objects to 16
            raise SystemError("NameTable: record not 16-byte aligned")
        cdef Py_hash_t h = hash(rec.name)
        cdef Py_ssize_t empty = 0
        cdef Py_ssize_t i = self._probe(rec.name, h, &empty)
        cdef object old
        if i >= 0:
            old = <object>_rec_of(self.slots[i])
            Py_INCREF(rec)
            self.slots[i] = ptr | (<uintptr_t>h & TAG)
            Py_DECREF(old)  # the table's reference; ``old`` keeps it alive
            if old is not rec:  # the same one again (a store's save): noted
                self._push(rec)
            return old
        if (self.used + 1) * 4 > self.size * 3:  # above 75%: grow to 50%
            self._resize(2 * (self.used + 1))
            self._probe(rec.name, h, &empty)  # its empty slot in the new array
        Py_INCREF(rec)
        self.slots[empty] = ptr | (<uintptr_t>h & TAG)
        self.used += 1
        self._push(rec)
        return None

    def pop(self, bytes name not None):
        """Remove and return the record named ``name``, or None."""
        cdef Py_ssize_t i = self._find(name)
        if i < 0:
            return None
        cdef object rec = <object>_rec_of(self.slots[i])
        Py_DECREF(rec)  # the table's reference; ``rec`` keeps it alive
        self.slots[i] = 0
        self.used -= 1
        # backward-shift deletion: pull later entries of the probe run into
        # the hole unless that would move them before their home slot
        cdef Py_ssize_t size = self.size
        cdef uint64_t mul = self.mul
        cdef Py_ssize_t j = i
        cdef Py_ssize_t home
        cdef uintptr_t slot
        while True:
            j += 1
            if j == size:
                j = 0
            slot = self.slots[j]
            if not slot:
                break
            home = _home(_name_hash(slot), mul, size)
            # move when home is not cyclically within (i, j]
            if (j - home + size) % size >= (j - i + size) % size:
                self.slots[i] = slot
                self.slots[j] = 0
                i = j
        if self.size > 8 and self.used * 8 < self.size:  # below 12.5%: shrink
            self._resize(max(8, 2 * self.used))
        return rec

    def min_sched_at(self, int state):
        """The earliest ``sched_at`` of the records in ``state``, or None
        (STATUS: one pass in C, no int or list per job)."""
        cdef bint found = False
        cdef long long best = 0
        cdef Py_ssize_t i, size = self.size
        cdef uintptr_t *slots = self.slots
        cdef JobRec rec
        for i in range(size):
            if i + 8 < size and slots[i + 8]:
                __builtin_prefetch(_rec_of(slots[i + 8]))
            if slots[i]:
                rec = <JobRec>_rec_of(slots[i])
                if rec.state == state and (not found or rec.sched_at < best):
                    best = rec.sched_at
                    found = True
        return best if found else None

    def values(self):
        """A list of the records (safe to change the table meanwhile)."""
        cdef list out = []
        cdef Py_ssize_t i
        for i in range(self.size):
            if self.slots[i]:
                out.append(<object>_rec_of(self.slots[i]))
        return out

    def clear(self):
        """Remove every record."""
        cdef uintptr_t *new = <uintptr_t *>PyMem_Calloc(8, sizeof(uintptr_t))
        if new == NULL:
            raise MemoryError()
        cdef uintptr_t *old = self.slots
        cdef Py_ssize_t i, size = self.size
        self.slots = new
        self.size = 8
        self.used = 0
        # a fresh index too: refilling from values() is then no slot-order fill
        self.mul = _next_mul()
        self._heap_clear()
        for i in range(size):
            if old[i]:
                Py_DECREF(<object>_rec_of(old[i]))
        PyMem_Free(old)

    def _probe_stats(self):
        """``(longest_run, displacement)``: the longest run of occupied slots
        (it bounds the probes of an insert, a miss or a deletion's backward
        shift) and the total distance of the records from their home slots
        (the probes of looking every record up once).  For tests and benches:
        one pass over the array."""
        cdef Py_ssize_t size = self.size
        cdef uintptr_t *slots = self.slots
        cdef Py_ssize_t start = 0, k, i, home, run = 0, longest = 0
        cdef Py_ssize_t displacement = 0
        while slots[start]:  # the load stays below 1: an empty slot exists
            start += 1
        for k in range(1, size + 1):  # from an empty slot: runs never wrap
            i = (start + k) % size
            if slots[i]:
                run += 1
                longest = max(longest, run)
                home = _home(_name_hash(slots[i]), self.mul, size)
                displacement += (i - home + size) % size
            else:
                run = 0
        return longest, displacement
