# Cython twin of periodic_fast._wheel_py: declarations.  The algorithm and the
# public semantics are documented in _wheel_py.py (the spec); this file only
# adds the C layout.

from libc.stdint cimport int64_t, uint32_t, uint64_t


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
    #else
    static inline int pf_ctz64(uint64_t x) { return __builtin_ctzll(x); }
    static inline int pf_msb64(uint64_t x) { return 63 - __builtin_clzll(x); }
    #endif
    """
    # both undefined for x == 0: callers pass non-zero values only
    int pf_ctz64(uint64_t x) noexcept nogil
    int pf_msb64(uint64_t x) noexcept nogil


# One wheel entry (or list sentinel).  16 bytes: the whole per-entry cost of a
# dense id.  Lists are circular and doubly linked through sentinels, so an
# unlink needs no "which list am I in" field.
ctypedef struct node_t:
    uint64_t u       # due time as unsigned position: t + 2**63 (mod 2**64)
    uint32_t prev    # node index of the previous node in the list
    uint32_t next    # node index of the next node; NIL: direct id absent


cdef enum:
    WL_LEVELS = 11
    WL_BITS = 6
    WL_SLOTS = 64
    WL_NLISTS = 704          # WL_LEVELS * WL_SLOTS slot lists
    WL_PENDING = 704         # list being cascaded in chunks
    WL_NSENT = 705           # sentinels: sparse pool indexes 0..704


cdef class TimerWheel:
    # -- node pools --------------------------------------------------------
    # A node index with the top bit clear is a job id in the direct pool
    # (dn[id]); with the top bit set it indexes the sparse pool (sn[i ^ HI]),
    # which holds the 705 sentinels and the ids that are too sparse (or
    # >= 2**31) for the direct array.
    cdef node_t* dn          # direct pool, indexed by job id; owned
    cdef uint32_t dcap       # allocated direct nodes (all initialised)
    cdef uint32_t dcount     # ids present in the direct pool
    cdef node_t* sn          # sparse pool: sentinels then sparse nodes; owned
    cdef uint32_t* sid       # job id of each sparse node; owned
    cdef uint32_t scap       # allocated sparse nodes
    cdef uint32_t sused      # sparse nodes ever handed out (>= WL_NSENT)
    cdef uint32_t sfree      # head of the free sparse node list (via .next)
    cdef uint32_t scount     # ids present in the sparse pool
    # -- sparse id -> sparse node hash (open addressing, linear probing,
    #    backward-shift deletion; slots hold a sparse index or NIL)
    cdef uint32_t* table     # owned; NULL until the first sparse id
    cdef uint32_t tmask      # table size - 1
    cdef int tbits           # log2(table size)
    # -- wheel ---------------------------------------------------------------
    cdef uint64_t occupied[11]    # per level: bit s set <=> slot s non-empty
    cdef uint64_t slot_min[704]   # smallest u linked in since last empty
    cdef uint64_t elapsed         # internal position E (unsigned)
    cdef int64_t now_             # wheel time T: largest now seen
    cdef Py_ssize_t length        # entries in the wheel
    cdef uint64_t pend_hi         # inclusive upper bound of the pending range
    cdef uint64_t pend_min        # smallest u linked into pending
    cdef Py_ssize_t chunk         # cascade moves per limited advance

    cdef inline node_t* node(self, uint32_t i) noexcept
    cdef inline uint32_t job_of(self, uint32_t i) noexcept
    cdef inline void link(self, uint32_t i, uint32_t lst) noexcept
    cdef inline void unlink(self, uint32_t i) noexcept
    cdef inline void place(self, uint32_t i) noexcept
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
