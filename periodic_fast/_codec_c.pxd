# Table of contents of the compiled codec (see _codec_py.py for the contract and
# docs/protocol.md sections 1-3 for the bytes).  Bodies live in _codec_c.pyx.

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


# -- cursor over one payload (decoders) ----------------------------------------
cdef struct Reader:
    const uint8_t *p        # first byte of the payload (owned by a bytes object)
    Py_ssize_t n            # payload length
    Py_ssize_t pos          # next byte to read


# -- growable byte writer (encoders) --------------------------------------------
cdef struct Writer:
    char *buf               # PyMem block, or `stack` while small
    Py_ssize_t len          # bytes written
    Py_ssize_t cap          # size of buf
    bint heap               # buf was PyMem_Malloc'ed (free it in _w_free)
    char stack[512]         # inline storage for small outputs


cdef uint32_t crc32_update(uint32_t crc, const uint8_t *p,
                           Py_ssize_t n) noexcept nogil

# readers raise TruncatedPayload / TrailingBytes like _codec_py._Reader
cdef Py_ssize_t _r_take(Reader *r, Py_ssize_t n) except -1
cdef object _r_str8(Reader *r)
cdef object _r_str32(Reader *r)
cdef object _r_rest(Reader *r)
cdef object _r_job(Reader *r)
cdef int _r_end(Reader *r) except -1

# writers raise ValueError for out-of-range fields like _codec_py's encoders
cdef void _w_init(Writer *w) noexcept
cdef void _w_free(Writer *w) noexcept
cdef int _w_reserve(Writer *w, Py_ssize_t extra) except -1
cdef int _w_raw(Writer *w, const void *data, Py_ssize_t n) except -1
cdef int _w_be(Writer *w, uint64_t value, int size) except -1
cdef int _w_bytes_obj(Writer *w, object value) except -1
cdef int _w_str8(Writer *w, object value) except -1
cdef int _w_job(Writer *w, object job) except -1
cdef bytes _w_bytes(Writer *w)
cdef int64_t _check(object value, int64_t lo, int64_t hi, str what) except? -1


cdef class Packet:
    cdef uint32_t _msgid    # message id (meaningless when not _has_msgid)
    cdef bint _has_msgid    # False for registration frames: msgid is None
    cdef readonly int command   # command code / client type
    cdef readonly bytes payload  # body after the command byte, copied once


cdef class Parser:
    cdef char *_buf              # PyMem block holding an incomplete frame
    cdef Py_ssize_t _cap         # size of _buf
    cdef Py_ssize_t _start       # first unconsumed byte in _buf
    cdef Py_ssize_t _end         # one past the last buffered byte
    cdef uint32_t _magic         # expected magic as a big-endian u32
    cdef uint64_t _max_frame     # largest accepted body length
    cdef object _max_frame_obj   # max_frame as given (for FrameTooLarge.limit)
    cdef bint _requests          # reading \0REQ (client -> server) frames
    cdef bint _need_registration  # the next frame is a registration frame
    cdef bint _resync            # skip garbage, accept either magic
    cdef object _error           # the ProtocolError that spent this parser

    # feed() body: top up the buffered frame, then parse in place
    cdef int _feed(self, const uint8_t *p, Py_ssize_t n, list packets) except -1
    # complete frames of p[0:n] into packets; returns the bytes used
    cdef Py_ssize_t _parse(self, const uint8_t *p, Py_ssize_t n,
                           list packets) except -1
    cdef int _append(self, const uint8_t *p, Py_ssize_t n,
                     Py_ssize_t hint) except -1
    # once per feed: move the kept tail to the front of _buf
    cdef int _compact(self) except -1
