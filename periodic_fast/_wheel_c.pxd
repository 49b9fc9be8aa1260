# Cython twin of periodic_fast._wheel_py: declarations.  The algorithm and the
# public semantics are documented in _wheel_py.py (the spec); this file only
# adds the C layout.

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t


cdef extern from *:
    """
    #include <stdint.h>
    #if defined(_MSC_VER)
    #include <intrin.h>
    static inline int pf_ctz64(uint64_t x) {
        unsigned long i; _BitScanForward64(&i, x); return (int)i;
    }
    static inline int pf_msb64(uint64_t x) {
        unsigned long i; _BitScanReverse64(&i, x); return (int)i;
    }
    static inline void pf_prefetch(const void* p) { (void)p; }
    #else
    static inline int pf_ctz64(uint64_t x) { return __builtin_ctzll(x); }
    static inline int pf_msb64(uint64_t x) { return 63 - __builtin_clzll(x); }
    /* for writing, keep in all cache levels */
    static inline void pf_prefetch(const void* p) { __builtin_prefetch(p, 1, 3); }
    #endif

    /* Give the pages wholly inside [lo, hi) back to the OS (their contents
       become undefined).  Used on the consumed head of a long slot array, so
       that freeing the array later is cheap: unmapping 40 MB of touched pages
       at once takes milliseconds.  A no-op where madvise is not available. */
    #if defined(__linux__)
    #include <sys/mman.h>
    #include <unistd.h>
    static inline void pf_discard(void* lo, void* hi) {
        static uintptr_t pg = 0;
        uintptr_t a, b;
        if (pg == 0) pg = (uintptr_t)sysconf(_SC_PAGESIZE);
        a = ((uintptr_t)lo + pg - 1) & ~(pg - 1);
        b = (uintptr_t)hi & ~(pg - 1);
        if (b > a) (void)madvise((void*)a, b - a, MADV_DONTNEED);
    }
    #else
    static inline void pf_discard(void* lo, void* hi) { (void)lo; (void)hi; }
    #endif

    /* a new list of n ints from buf[0..n) (NULL with an exception set) */
    static PyObject* pf_ids_to_list(const uint32_t* buf, Py_ssize_t n) {
        Py_ssize_t k;
        PyObject* v;
        PyObject* out = PyList_New(n);
        if (out == NULL) return NULL;
        for (k = 0; k < n; k++) {
            /* the common case skips the digit count of the unsigned path */
            v = buf[k] < (1u << 30) ? PyLong_FromLong((long)buf[k])
                                    : PyLong_FromUnsignedLong(buf[k]);
            if (v == NULL) { Py_DECREF(out); return NULL; }
            PyList_SET_ITEM(out, k, v);
        }
        return out;
    }
    """
    # both undefined for x == 0: callers pass non-zero values only
    int pf_ctz64(uint64_t x) noexcept nogil
    int pf_msb64(uint64_t x) noexcept nogil
    # a hint only: any address is fine, nothing is read
    void pf_prefetch(const void* p) noexcept nogil
    list pf_ids_to_list(const uint32_t* buf, Py_ssize_t n)
    void pf_discard(void* lo, void* hi) noexcept nogil


# One wheel entry.  16 bytes, plus its 4-byte index in a slot array: the whole
# per-entry cost of a dense id.  (lst, pos) says where the live entry of this
# node sits; any other array cell naming the node is stale (lazy deletion).
ctypedef struct node_t:
    uint64_t u       # due time as unsigned position: t + 2**63 (mod 2**64)
    uint32_t pos     # index in slots[lst].a; free sparse node: next free
    uint16_t lst     # slot list 0..703; WL_NOLIST: absent (direct) / free
    uint16_t pad     # unused (alignment)


# One slot list: a FIFO array of node indexes, appended at len, consumed from
# head (level-0 pops, the chunked cascade).  Cells of [head, len) whose node
# no longer points back at them are stale; live counts the others.  The list
# is empty (the spec's "empty list") exactly when live == 0, and then the
# array is reset (head = len = 0).
ctypedef struct slot_t:
    uint32_t* a      # node indexes; owned (NULL while cap == 0)
    uint32_t head    # first cell not yet consumed
    uint32_t len     # cells in use
    uint32_t cap     # allocated cells
    uint32_t live    # live entries in [head, len)
    uint32_t trimmed # cells [0, trimmed) were given back (pf_discard)


cdef enum:
    WL_LEVELS = 11
    WL_BITS = 6
    WL_SLOTS = 64
    WL_NLISTS = 704          # WL_LEVELS * WL_SLOTS slot lists
    WL_NOLIST = 0xFFFF       # node_t.lst / pend_list: none


cdef class TimerWheel:
    # -- node pools --------------------------------------------------------
    # A node index with the top bit clear is a job id in the direct pool
    # (dn[id]); with the top bit set it indexes the sparse pool (sn[i ^ HI]),
    # which holds the ids that are too sparse (or >= 2**31) for the direct
    # array.
    cdef node_t* dn          # direct pool, indexed by job id; owned
    cdef uint32_t dcap       # allocated direct nodes (all initialised)
    cdef uint32_t dcount     # ids present in the direct pool
    cdef node_t* sn          # sparse pool; owned
    cdef uint32_t* sid       # job id of each sparse node; owned
    cdef uint32_t scap       # allocated sparse nodes
    cdef uint32_t sused      # sparse nodes ever handed out
    cdef uint32_t sfree      # head of the free sparse node list (via .pos)
    cdef uint32_t scount     # ids present in the sparse pool
    # -- sparse id -> sparse node hash (open addressing, linear probing,
    #    backward-shift deletion; slots hold a sparse index or NIL)
    cdef uint32_t* table     # owned; NULL until the first sparse id
    cdef uint32_t tmask      # table size - 1
    cdef int tbits           # log2(table size)
    # -- wheel ---------------------------------------------------------------
    cdef slot_t slots[704]        # slot list = level * 64 + slot
    cdef uint64_t occupied[11]    # per level: bit s set <=> slot s live > 0
    cdef uint64_t slot_min[704]   # smallest u linked in since last empty
    cdef uint64_t elapsed         # internal position E (unsigned)
    cdef int64_t now_             # wheel time T: largest now seen
    cdef Py_ssize_t length        # entries in the wheel
    cdef uint32_t pend_list       # slot being cascaded in chunks, or NOLIST
    cdef uint64_t pend_hi         # inclusive upper bound of the pending range
    cdef uint64_t pend_min        # smallest u linked into pending
    cdef Py_ssize_t chunk         # cascade moves per limited advance
    # -- advance output buffer (ids, turned into a list at the end) ----------
    cdef uint32_t* obuf           # owned
    cdef Py_ssize_t ocap          # allocated cells

    cdef inline node_t* node(self, uint32_t i) noexcept
    cdef inline uint32_t job_of(self, uint32_t i) noexcept
    cdef inline int link(self, uint32_t i, uint32_t lst) except -1
    cdef inline void drop(self, uint32_t i) noexcept
    cdef void compact(self, uint32_t lst) noexcept
    cdef void empty_list(self, uint32_t lst) noexcept
    cdef inline void trim_head(self, slot_t* s) noexcept
    cdef int grow_slot(self, slot_t* s) except -1
    cdef void reserve_level(self, int level, uint32_t n) noexcept
    cdef int reserve_out(self, Py_ssize_t need) except -1
    cdef inline int place(self, uint32_t i) except -1
    cdef inline bint earliest(self, uint32_t* lst, uint64_t* deadline) noexcept
    cdef uint32_t lookup(self, uint32_t job_id) noexcept
    cdef uint32_t alloc(self, uint32_t job_id) except? 0xFFFFFFFF
    cdef void release(self, uint32_t i) noexcept
    cdef int grow_direct(self, uint32_t need) except -1
    cdef int grow_sparse(self) except -1
    cdef int grow_table(self) except -1
    cdef inline uint32_t _home(self, uint32_t job_id) noexcept
    cdef uint32_t hash_find(self, uint32_t job_id) noexcept
    cdef void hash_insert(self, uint32_t sidx) noexcept
    cdef void hash_remove(self, uint32_t job_id) noexcept
    cdef void reset_lists(self) noexcept
