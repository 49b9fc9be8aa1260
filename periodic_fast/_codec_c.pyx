# Compiled twin of _codec_py.py: same names, same arguments, byte-identical
# output, the same periodic_fast.errors classes raised at the same points (and,
# where cheap, the same messages).  _codec_py.py is the spec and carries the
# docstrings; this file carries comments on invariants and memory ownership.
# Byte layouts: docs/protocol.md sections 1-3.
#
# Known, deliberate differences from the pure twin (never hit by protocol
# traffic): integer fields must be real ints (a float raises TypeError here,
# struct.error there), and Packet is immutable and validates its msgid.

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytearray cimport (
    PyByteArray_AS_STRING,
    PyByteArray_CheckExact,
    PyByteArray_GET_SIZE,
    PyByteArray_Resize,
)
from cpython.bytes cimport (
    PyBytes_AS_STRING,
    PyBytes_CheckExact,
    PyBytes_FromStringAndSize,
    PyBytes_GET_SIZE,
)
from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from libc.stdint cimport (
    INT64_MAX,
    INT64_MIN,
    int16_t,
    int32_t,
    int64_t,
    uint8_t,
    uint32_t,
    uint64_t,
)
from libc.string cimport memchr, memcmp, memcpy, memmove

from .constants import DEFAULT_MAX_FRAME, ClientType, Command
from .errors import (
    BadMagic,
    BadRegistration,
    CRCMismatch,
    FrameTooLarge,
    ProtocolError,
    TrailingBytes,
    TruncatedPayload,
    UnknownCommand,
)
from .job import FuncStat, Job

__all__ = [
    "Packet",
    "Parser",
    "decode_handle",
    "decode_identity",
    "decode_job",
    "decode_job_list",
    "decode_payload",
    "decode_status",
    "encode_handle",
    "encode_identity",
    "encode_job",
    "encode_job_list",
    "encode_payload",
    "encode_registration",
    "encode_registration_reply",
    "encode_request",
    "encode_request_into",
    "encode_response",
    "encode_response_into",
    "encode_status",
]

try:  # CPython's zlib, used for long bodies only (see _crc_long)
    from zlib import crc32 as _zlib_crc32
except ImportError:  # pragma: no cover - interpreters built without zlib
    _zlib_crc32 = None

# tuple.__new__ builds a Job without running the NamedTuple's Python __new__
_tuple_new = tuple.__new__

cdef extern from *:
    """
    #define PF_HEADER_SIZE 12
    #define PF_MAX_COMMAND 34
    #define PF_U32_MAX 0xFFFFFFFFLL
    #define PF_MAGIC_REQ 0x00524551U  /* "\\0REQ" read as a big-endian u32 */
    #define PF_MAGIC_RES 0x00524553U  /* "\\0RES" */
    #define PF_BUF_KEEP 262144        /* free an empty parse buffer above this */
    /* command classes (constants.EMPTY_PAYLOAD_COMMANDS etc.) as bitmasks */
    #define PF_EMPTY_MASK ((1ULL << 0) | (1ULL << 1) | (1ULL << 6) | (1ULL << 9) \\
        | (1ULL << 10) | (1ULL << 11) | (1ULL << 12) | (1ULL << 14) \\
        | (1ULL << 16) | (1ULL << 18) | (1ULL << 20) | (1ULL << 29) \\
        | (1ULL << 33) | (1ULL << 34))
    #define PF_JOB_MASK ((1ULL << 5) | (1ULL << 13) | (1ULL << 25) | (1ULL << 31))
    #define PF_FUNC_MASK ((1ULL << 7) | (1ULL << 8) | (1ULL << 15) \\
        | (1ULL << 21) | (1ULL << 22))
    """
    const Py_ssize_t _HEADER_SIZE "PF_HEADER_SIZE"
    const long long _MAX_COMMAND "PF_MAX_COMMAND"
    const long long _U32_MAX "PF_U32_MAX"
    const uint32_t _MAGIC_REQ "PF_MAGIC_REQ"
    const uint32_t _MAGIC_RES "PF_MAGIC_RES"
    const Py_ssize_t _BUF_KEEP "PF_BUF_KEEP"
    const uint64_t _EMPTY_MASK "PF_EMPTY_MASK"
    const uint64_t _JOB_MASK "PF_JOB_MASK"
    const uint64_t _FUNC_MASK "PF_FUNC_MASK"

cdef int[35] _ARITY
_ARITY[:] = [0, 0, 4, 3, 2, 1, 0, 1, 1, 0, 0, 0, 0, 1, 0, 1, 0, 2, 0, 1, 0, 1,
             1, 2, 1, 1, 1, 4, 3, 0, 1, 1, 3, 0, 0]


# -- CRC-32 (zlib's polynomial), slice-by-8 ----------------------------------------
# Our own table-driven CRC so the build never needs zlib headers or -lz.

cdef uint32_t _T[8][256]


cdef void _crc_init() noexcept:
    cdef uint32_t c
    cdef int i, k, _
    for i in range(256):
        c = <uint32_t>i
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320U if c & 1 else 0U)
        _T[0][i] = c
    for i in range(256):
        c = _T[0][i]
        for k in range(1, 8):
            c = _T[0][c & 0xFF] ^ (c >> 8)
            _T[k][i] = c


_crc_init()


cdef inline uint32_t _le32(const uint8_t *p) noexcept nogil:
    # byte-composed so it is portable; compilers fuse it into one load
    return (<uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16)
            | (<uint32_t>p[3] << 24))


cdef inline uint32_t _be32(const uint8_t *p) noexcept nogil:
    return ((<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16)
            | (<uint32_t>p[2] << 8) | <uint32_t>p[3])


cdef inline uint64_t _be64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>_be32(p) << 32) | <uint64_t>_be32(p + 4)


cdef inline void _put_be32(char *d, uint32_t v) noexcept nogil:
    d[0] = <char>(v >> 24)
    d[1] = <char>(v >> 16)
    d[2] = <char>(v >> 8)
    d[3] = <char>v


cdef uint32_t crc32_update(uint32_t crc, const uint8_t *p,
                           Py_ssize_t n) noexcept nogil:
    # zlib.crc32(data, crc): chaining two calls equals one call over both parts
    cdef uint32_t one, two
    crc = ~crc
    while n >= 8:
        one = _le32(p) ^ crc
        two = _le32(p + 4)
        crc = (_T[7][one & 0xFF] ^ _T[6][(one >> 8) & 0xFF]
               ^ _T[5][(one >> 16) & 0xFF] ^ _T[4][one >> 24]
               ^ _T[3][two & 0xFF] ^ _T[2][(two >> 8) & 0xFF]
               ^ _T[1][(two >> 16) & 0xFF] ^ _T[0][two >> 24])
        p += 8
        n -= 8
    while n > 0:
        crc = _T[0][(crc ^ p[0]) & 0xFF] ^ (crc >> 8)
        p += 1
        n -= 1
    return ~crc


# Measured: zlib 1.2.13's braided CRC runs ~1.7x faster than this slice-by-8 on
# 64 KiB bodies, and a call through the zlib module costs ~0.1 us, so long bodies
# go through zlib when the module exists (no header or -lz needed at build time).
cdef Py_ssize_t _ZLIB_MIN = 2048


cdef uint32_t _crc_long(uint32_t crc, object buf, const uint8_t *p,
                        Py_ssize_t n) except? 0xFFFFFFFF:
    # CRC of p[0:n], continuing `crc`; `buf` is a buffer object exposing the
    # same bytes (or None if there is none), used to reach zlib
    if buf is not None and n >= _ZLIB_MIN and _zlib_crc32 is not None:
        return _zlib_crc32(buf, crc)
    return crc32_update(crc, p, n)


# -- integer arguments -------------------------------------------------------------

cdef int64_t _check(object value, int64_t lo, int64_t hi, str what) except? -1:
    # _codec_py._check: ValueError with the same text when out of range
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(value, &overflow)
    if overflow or x < lo or x > hi:
        raise ValueError(f"{what} {value} does not fit in [{lo}, {hi}]")
    return x


# -- reader ------------------------------------------------------------------------
# Reader.p points into a bytes object the caller keeps alive for the whole decode.

cdef inline int _r_init(Reader *r, bytes data) except -1:
    r.p = <const uint8_t *>PyBytes_AS_STRING(data)
    r.n = PyBytes_GET_SIZE(data)
    r.pos = 0
    return 0


cdef Py_ssize_t _r_take(Reader *r, Py_ssize_t n) except -1:
    # returns the offset of the n bytes taken
    cdef Py_ssize_t pos = r.pos
    if r.n - pos < n:
        raise TruncatedPayload(
            f"payload truncated: need {n} bytes at offset {pos}, "
            f"have {r.n - pos}"
        )
    r.pos = pos + n
    return pos


cdef inline object _r_raw(Reader *r, Py_ssize_t n):
    cdef Py_ssize_t pos = _r_take(r, n)
    return PyBytes_FromStringAndSize(<const char *>r.p + pos, n)


cdef object _r_str8(Reader *r):
    cdef Py_ssize_t pos = _r_take(r, 1)
    return _r_raw(r, r.p[pos])


cdef object _r_str32(Reader *r):
    cdef Py_ssize_t pos = _r_take(r, 4)
    return _r_raw(r, <Py_ssize_t>_be32(r.p + pos))


cdef object _r_rest(Reader *r):
    cdef Py_ssize_t pos = r.pos
    r.pos = r.n
    return PyBytes_FromStringAndSize(<const char *>r.p + pos, r.n - pos)


cdef inline uint8_t _r_u8(Reader *r) except? 0xFF:
    return r.p[_r_take(r, 1)]


cdef inline int16_t _r_i16(Reader *r) except? -1:
    cdef Py_ssize_t pos = _r_take(r, 2)
    return <int16_t>((<uint32_t>r.p[pos] << 8) | r.p[pos + 1])


cdef inline uint32_t _r_u32(Reader *r) except? 0xFFFFFFFF:
    return _be32(r.p + _r_take(r, 4))


cdef inline int32_t _r_i32(Reader *r) except? -1:
    return <int32_t>_be32(r.p + _r_take(r, 4))


cdef inline int64_t _r_i64(Reader *r) except? -1:
    return <int64_t>_be64(r.p + _r_take(r, 8))


cdef inline uint64_t _r_u64(Reader *r) except? 0xFFFFFFFFFFFFFFFF:
    return _be64(r.p + _r_take(r, 8))


cdef object _r_job(Reader *r):
    # protocol.md 2.1; unknown version bytes mean "no extras"
    cdef object func = _r_str8(r)
    cdef object name = _r_str8(r)
    cdef object workload = _r_str32(r)
    cdef int64_t sched_at = _r_i64(r)
    cdef uint8_t version = _r_u8(r)
    cdef int32_t count = 0
    cdef int32_t timeout = 0
    if version == 1 or version == 3:
        count = _r_i32(r)
    if version == 2 or version == 3:
        timeout = _r_i32(r)
    return _tuple_new(Job, (func, name, workload, sched_at, count, timeout))


cdef int _r_end(Reader *r) except -1:
    if r.pos != r.n:
        raise TrailingBytes(f"{r.n - r.pos} trailing bytes after the payload")
    return 0


# -- writer ------------------------------------------------------------------------

cdef void _w_init(Writer *w) noexcept:
    w.buf = w.stack
    w.len = 0
    w.cap = 512
    w.heap = False


cdef void _w_free(Writer *w) noexcept:
    if w.heap:
        PyMem_Free(w.buf)
    w.buf = w.stack
    w.heap = False


cdef int _w_reserve(Writer *w, Py_ssize_t extra) except -1:
    cdef Py_ssize_t need = w.len + extra
    cdef Py_ssize_t cap
    cdef char *buf
    if need <= w.cap:
        return 0
    cap = w.cap * 2
    if cap < need:
        cap = need
    if w.heap:
        buf = <char *>PyMem_Realloc(w.buf, cap)
    else:
        buf = <char *>PyMem_Malloc(cap)
        if buf != NULL:
            memcpy(buf, w.buf, w.len)
    if buf == NULL:
        raise MemoryError()
    w.buf = buf
    w.cap = cap
    w.heap = True
    return 0


cdef int _w_raw(Writer *w, const void *data, Py_ssize_t n) except -1:
    _w_reserve(w, n)
    memcpy(w.buf + w.len, data, n)
    w.len += n
    return 0


cdef int _w_be(Writer *w, uint64_t value, int size) except -1:
    # big-endian, `size` bytes (1, 2, 4 or 8)
    cdef int i
    _w_reserve(w, size)
    for i in range(size):
        w.buf[w.len + i] = <char>(value >> (8 * (size - 1 - i)))
    w.len += size
    return 0


cdef int _w_bytes_obj(Writer *w, object value) except -1:
    # append bytes(value)
    cdef bytes b = value if PyBytes_CheckExact(value) else bytes(value)
    return _w_raw(w, PyBytes_AS_STRING(b), PyBytes_GET_SIZE(b))


cdef int _w_str8(Writer *w, object value) except -1:
    # _codec_py._str8: the length byte is len(value), the bytes are bytes(value)
    cdef Py_ssize_t n = len(value)
    if n > 255:
        raise ValueError(f"name of {n} bytes is longer than 255")
    _w_be(w, <uint64_t>n, 1)
    return _w_bytes_obj(w, value)


cdef int _w_job(Writer *w, object job) except -1:
    func, name, workload, sched_at, count, timeout = job
    _w_str8(w, func)
    _w_str8(w, name)
    cdef bytes wl = workload if PyBytes_CheckExact(workload) else bytes(workload)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(wl)
    if n > _U32_MAX:
        raise ValueError(f"workload length {n} does not fit in [0, {_U32_MAX}]")
    _w_be(w, <uint64_t>n, 4)
    _w_raw(w, PyBytes_AS_STRING(wl), n)
    cdef int64_t s = _check(sched_at, INT64_MIN, INT64_MAX,
                            "sched_at")
    cdef int64_t c = _check(count, -0x80000000, 0x7FFFFFFF, "count")
    cdef int64_t t = _check(timeout, -0x80000000, 0x7FFFFFFF, "timeout")
    _w_be(w, <uint64_t>s, 8)
    cdef uint8_t version = (1 if c > 0 else 0) | (2 if t > 0 else 0)
    _w_be(w, version, 1)
    if version & 1:
        _w_be(w, <uint32_t>c, 4)
    if version & 2:
        _w_be(w, <uint32_t>t, 4)
    return 0


cdef bytes _w_bytes(Writer *w):
    return PyBytes_FromStringAndSize(w.buf, w.len)


# -- Packet ------------------------------------------------------------------------

@cython.final
@cython.freelist(256)
cdef class Packet:
    # Built by the parser through Packet.__new__ (no __init__); msgid is kept as
    # a C u32 and boxed only when Python reads it.

    def __init__(self, msgid, int command, payload):
        if msgid is None:
            self._has_msgid = False
            self._msgid = 0
        else:
            self._has_msgid = True
            self._msgid = msgid
        self.command = command
        self.payload = payload if PyBytes_CheckExact(payload) else bytes(payload)

    @property
    def msgid(self):
        return self._msgid if self._has_msgid else None

    def __eq__(self, other):
        if not isinstance(other, Packet):
            return NotImplemented
        cdef Packet o = <Packet>other
        return (self._has_msgid == o._has_msgid and self._msgid == o._msgid
                and self.command == o.command and self.payload == o.payload)

    def __hash__(self):
        return hash((self.msgid, self.command, self.payload))

    def __repr__(self):
        return (
            f"Packet(msgid={self.msgid!r}, command={self.command!r}, "
            f"payload={self.payload!r})"
        )


cdef bytes _bytes_at(const uint8_t *p, Py_ssize_t n):
    return PyBytes_FromStringAndSize(<const char *>p, n)


cdef inline Packet _packet(uint32_t msgid, bint has_msgid, int command,
                           bytes payload):
    cdef Packet pkt = Packet.__new__(Packet)
    pkt._msgid = msgid
    pkt._has_msgid = has_msgid
    pkt.command = command
    pkt.payload = payload
    return pkt


cdef Packet _registration_packet(bytes body, bint requests):
    # _codec_py._registration_packet
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef const uint8_t *b = <const uint8_t *>PyBytes_AS_STRING(body)
    cdef int ctype
    if not requests:
        if n != 5 or b[0] != 30:
            raise BadRegistration(f"bad registration reply {body!r}")
        return _packet(0, False, 30, body[1:])
    if n == 0:
        raise BadRegistration("empty registration frame")
    ctype = b[0]
    rest = body[1:]
    if ctype == 1 or ctype == 2:
        if rest:
            raise BadRegistration("trailing bytes after the client type")
    elif ctype == 3 or ctype == 4:
        decode_identity(rest)
    else:
        raise BadRegistration(f"unknown client type {ctype}")
    return _packet(0, False, ctype, rest)


# -- Parser ------------------------------------------------------------------------
# Buffer invariant between feeds: _buf[_start:_end] holds the start of the next
# frame and nothing else.  Either it is < 12 bytes (a magic, part of one, or -
# resync mode - at most 3 trailing bytes that may begin a magic), or it is >= 12
# bytes that begin with a header already checked (magic, length <= max_frame).
# feed() first tops the buffered frame up with just the bytes it lacks, then
# parses the rest of the caller's buffer in place: payloads are copied once, into
# their bytes objects, and only an incomplete tail is copied into _buf.

@cython.final
cdef class Parser:

    def __cinit__(self):
        self._buf = NULL
        self._cap = 0
        self._start = 0
        self._end = 0
        self._error = None

    def __init__(self, *, requests=True, registration=False,
                 max_frame=DEFAULT_MAX_FRAME, resync=False):
        if max_frame < 0:
            raise ValueError("max_frame must be >= 0")
        self._requests = requests
        self._need_registration = registration
        self._resync = resync
        self._magic = _MAGIC_REQ if self._requests else _MAGIC_RES
        self._max_frame_obj = max_frame
        # a length is a u32: any limit above that accepts everything
        self._max_frame = _U32_MAX if max_frame >= _U32_MAX else max_frame

    def __dealloc__(self):
        PyMem_Free(self._buf)
        self._buf = NULL

    @property
    def buffered(self):
        return self._end - self._start

    def feed(self, data):
        if self._error is not None:
            raise self._error
        cdef Py_buffer view
        cdef list packets = []
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            self._feed(<const uint8_t *>view.buf, view.len, packets)
        except ProtocolError as exc:
            exc.packets = packets
            self._error = exc
            self._start = self._end = 0
            raise
        finally:
            PyBuffer_Release(&view)
        return packets

    cdef int _feed(self, const uint8_t *p, Py_ssize_t n, list packets) except -1:
        cdef Py_ssize_t off = 0, have, need, take, used, hint
        # 1. complete the buffered frame with only the bytes it lacks
        while self._end > self._start and off < n:
            have = self._end - self._start
            if have < _HEADER_SIZE:
                need = _HEADER_SIZE - have
                hint = 0
            else:
                hint = _HEADER_SIZE + <Py_ssize_t>_be32(
                    <const uint8_t *>self._buf + self._start + 4)
                need = hint - have
            take = need if need < n - off else n - off
            self._append(p + off, take, hint)
            off += take
            used = self._parse(<const uint8_t *>self._buf + self._start,
                               self._end - self._start, packets)
            self._start += used
            if self._start == self._end:
                self._start = self._end = 0
        # 2. nothing buffered: parse in place, keep only an incomplete tail
        if off < n:
            used = self._parse(p + off, n - off, packets)
            off += used
            if off < n:
                self._append(p + off, n - off, 0)
        return self._compact()

    cdef Py_ssize_t _parse(self, const uint8_t *p, Py_ssize_t n,
                           list packets) except -1:
        # Parse complete frames from p[0:n]; return how many bytes were used.
        # p may point into the caller's buffer: nothing here may outlive feed().
        cdef Py_ssize_t pos = 0, have, end
        cdef const uint8_t *q
        cdef const uint8_t *last
        cdef const uint8_t *body
        cdef uint32_t length, crc
        cdef uint8_t command
        cdef object payload
        cdef const char *magic = b"\x00REQ" if self._requests else b"\x00RES"
        while True:
            have = n - pos
            if self._resync:
                # earliest "\0REQ" or "\0RES" at or after pos
                if have < 4:
                    q = NULL
                else:
                    q = p + pos
                    last = p + n - 4
                    while True:
                        q = <const uint8_t *>memchr(q, 0, last - q + 1)
                        if q == NULL:
                            break
                        # "R" "E" then "Q" or "S"
                        if (q[1] == 0x52 and q[2] == 0x45
                                and (q[3] == 0x51 or q[3] == 0x53)):
                            break
                        if q == last:
                            q = NULL
                            break
                        q += 1
                if q == NULL:
                    # no magic: keep only what could be a magic's first bytes
                    return pos if pos > n - 3 else n - 3
                pos = q - p
                have = n - pos
            elif have >= 4:
                if _be32(p + pos) != self._magic:
                    raise BadMagic(f"bad magic {_bytes_at(p + pos, 4)!r}")
            elif have and memcmp(p + pos, magic, have) != 0:
                raise BadMagic(f"bad magic {_bytes_at(p + pos, have)!r}")
            if have < _HEADER_SIZE:
                return pos
            length = _be32(p + pos + 4)
            if length > self._max_frame:
                raise FrameTooLarge(length, self._max_frame_obj)
            end = pos + _HEADER_SIZE + length
            if end > n:
                return pos
            body = p + pos + _HEADER_SIZE
            if length >= _ZLIB_MIN and not self._need_registration:
                # long body: copy the payload out first and let zlib CRC it
                payload = PyBytes_FromStringAndSize(<const char *>body + 5,
                                                    length - 5)
                crc = _crc_long(crc32_update(0, body, 5), payload, body + 5,
                                length - 5)
            else:
                payload = None
                crc = crc32_update(0, body, length)
            if crc != _be32(p + pos + 8):
                raise CRCMismatch(f"CRC-32 mismatch in a {length}-byte frame")
            pos = end
            if self._need_registration:
                self._need_registration = False
                packets.append(_registration_packet(
                    PyBytes_FromStringAndSize(<const char *>body, length),
                    self._requests))
                continue
            if length < 5:
                raise TruncatedPayload(
                    f"frame body of {length} bytes has no command")
            command = body[4]
            if command > _MAX_COMMAND:
                raise UnknownCommand(f"unknown command {command}")
            if payload is None:
                payload = PyBytes_FromStringAndSize(<const char *>body + 5,
                                                    length - 5)
            packets.append(_packet(_be32(body), True, command, payload))

    cdef int _append(self, const uint8_t *p, Py_ssize_t n,
                     Py_ssize_t hint) except -1:
        # copy p[0:n] after the buffered bytes; `hint` is the size of the frame
        # being completed when known (0 otherwise) so a big frame is allocated
        # once at its final size instead of doubling past it
        cdef Py_ssize_t have = self._end - self._start
        cdef Py_ssize_t need = have + n
        cdef Py_ssize_t cap
        cdef char *buf
        if self._end + n > self._cap:
            if self._start:
                memmove(self._buf, self._buf + self._start, have)
                self._start = 0
                self._end = have
            if need > self._cap:
                cap = self._cap * 2
                if cap < 4096:
                    cap = 4096
                if hint >= need and cap > hint:
                    cap = hint
                if cap < need:
                    cap = need
                buf = <char *>PyMem_Realloc(self._buf, cap)
                if buf == NULL:
                    raise MemoryError()
                self._buf = buf
                self._cap = cap
        memcpy(self._buf + self._end, p, n)
        self._end += n
        return 0

    cdef int _compact(self) except -1:
        # once per feed: move the kept tail to the front, or drop a big buffer
        cdef Py_ssize_t have = self._end - self._start
        if have == 0:
            self._start = self._end = 0
            if self._cap > _BUF_KEEP:
                PyMem_Free(self._buf)
                self._buf = NULL
                self._cap = 0
        elif self._start:
            memmove(self._buf, self._buf + self._start, have)
            self._start = 0
            self._end = have
        return 0


# -- public payload helpers --------------------------------------------------------

def encode_job(job):
    cdef Writer w
    _w_init(&w)
    try:
        _w_job(&w, job)
        return _w_bytes(&w)
    finally:
        _w_free(&w)


def decode_job(data):
    cdef bytes b = data if PyBytes_CheckExact(data) else bytes(data)
    cdef Reader r
    _r_init(&r, b)
    job = _r_job(&r)
    _r_end(&r)
    return job


def encode_handle(func, name):
    cdef Writer w
    _w_init(&w)
    try:
        _w_str8(&w, func)
        _w_str8(&w, name)
        return _w_bytes(&w)
    finally:
        _w_free(&w)


def decode_handle(data):
    cdef bytes b = data if PyBytes_CheckExact(data) else bytes(data)
    cdef Reader r
    _r_init(&r, b)
    func = _r_str8(&r)
    name = _r_str8(&r)
    _r_end(&r)
    return func, name


def encode_job_list(jobs):
    cdef Writer w
    cdef uint64_t count = 0
    cdef Py_ssize_t i
    _w_init(&w)
    try:
        _w_be(&w, 0, 8)
        for job in jobs:
            _w_job(&w, job)
            count += 1
        for i in range(8):
            w.buf[i] = <char>(count >> (8 * (7 - i)))
        return _w_bytes(&w)
    finally:
        _w_free(&w)


def decode_job_list(data):
    cdef bytes b = data if PyBytes_CheckExact(data) else bytes(data)
    cdef Reader r
    cdef uint64_t n, _
    _r_init(&r, b)
    n = _r_u64(&r)
    # each job is at least 15 bytes: refuse a count the payload cannot hold
    # before building anything
    if n > <uint64_t>((r.n - 8) // 15):
        raise TruncatedPayload(f"job list announces {n} jobs in {r.n} bytes")
    cdef list jobs = []
    for _ in range(n):
        jobs.append(_r_job(&r))
    _r_end(&r)
    return jobs


def encode_status(stats):
    lines = [
        b"%s,%d,%d,%d,%d,%d" % (bytes(s[0]), s[1], s[2], s[3], s[4], s[5])
        for s in sorted(stats, key=lambda s: bytes(s[0]))
    ]
    return b"\n".join(lines)


def decode_status(data):
    stats = []
    for line in bytes(data).split(b"\n"):
        if not line:
            continue
        parts = line.rsplit(b",", 5)
        if len(parts) != 6:
            raise TruncatedPayload(f"bad STATUS line {line!r}")
        try:
            nums = [int(p) for p in parts[1:]]
        except ValueError:
            raise TruncatedPayload(f"bad STATUS line {line!r}") from None
        stats.append(FuncStat(parts[0], *nums))
    return stats


def encode_identity(name, token):
    cdef Writer w
    _w_init(&w)
    try:
        _w_be(&w, <uint64_t>len(name), 8)
        _w_bytes_obj(&w, name)
        _w_be(&w, <uint64_t>len(token), 8)
        _w_bytes_obj(&w, token)
        return _w_bytes(&w)
    finally:
        _w_free(&w)


cdef Py_ssize_t _hslen(int64_t n) except -1:
    if n < 0:
        raise TruncatedPayload(f"negative length {n}")
    return <Py_ssize_t>n


def decode_identity(data):
    cdef bytes b = data if PyBytes_CheckExact(data) else bytes(data)
    cdef Reader r
    _r_init(&r, b)
    try:
        name = _r_raw(&r, _hslen(_r_i64(&r)))
        token = _r_raw(&r, _hslen(_r_i64(&r)))
        _r_end(&r)
    except (TruncatedPayload, TrailingBytes) as exc:
        raise BadRegistration(f"malformed identity: {exc}") from None
    return name, token


# -- frames ------------------------------------------------------------------------

cdef inline uint32_t _msgid_arg(object msgid) except? 0xFFFFFFFF:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(msgid, &overflow)
    if overflow or x < 0 or x > _U32_MAX:
        raise ValueError(f"msgid {msgid} does not fit in 32 bits")
    return <uint32_t>x


cdef inline uint8_t _command_arg(object command) except? 0xFF:
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(command, &overflow)
    if overflow or x < 0 or x > 255:
        raise ValueError(f"command {command} does not fit in a byte")
    return <uint8_t>x


cdef inline int _frame_write(char *d, uint32_t magic, uint32_t msgid,
                             uint8_t command, object pobj, const char *payload,
                             Py_ssize_t plen) except -1:
    # d has room for 17 + plen bytes; pobj exposes the payload's bytes
    cdef uint32_t crc
    _put_be32(d, magic)
    _put_be32(d + 4, <uint32_t>(plen + 5))
    _put_be32(d + 12, msgid)
    d[16] = <char>command
    if plen:
        memcpy(d + 17, payload, plen)
    crc = crc32_update(0, <const uint8_t *>d + 12, 5)
    crc = _crc_long(crc, pobj, <const uint8_t *>payload, plen)
    _put_be32(d + 8, crc)
    return 0


cdef object _frame(object out, uint32_t magic, object msgid, object command,
                   object payload):
    # one frame: returned as bytes (out is None) or appended to out
    cdef uint32_t mid = _msgid_arg(msgid)
    cdef uint8_t cmd = _command_arg(command)
    cdef Py_buffer view
    cdef const char *data
    cdef Py_ssize_t plen, old
    cdef bint release = False
    cdef object frame
    if PyBytes_CheckExact(payload):
        data = PyBytes_AS_STRING(payload)
        plen = PyBytes_GET_SIZE(payload)
    else:
        PyObject_GetBuffer(payload, &view, PyBUF_SIMPLE)
        release = True
        data = <const char *>view.buf
        plen = view.len
    try:
        if plen > _U32_MAX - 5:
            raise ValueError(f"payload of {plen} bytes does not fit in a frame")
        if out is None:
            frame = PyBytes_FromStringAndSize(NULL, 17 + plen)
            _frame_write(PyBytes_AS_STRING(frame), magic, mid, cmd, payload, data, plen)
            return frame
        if PyByteArray_CheckExact(out):
            old = PyByteArray_GET_SIZE(out)
            PyByteArray_Resize(out, old + 17 + plen)
            _frame_write(PyByteArray_AS_STRING(out) + old, magic, mid, cmd,
                         payload, data, plen)
            return None
        frame = PyBytes_FromStringAndSize(NULL, 17 + plen)
        _frame_write(PyBytes_AS_STRING(frame), magic, mid, cmd, payload, data, plen)
    finally:
        if release:
            PyBuffer_Release(&view)
    out += frame  # any other mutable sequence, as the pure twin does
    return None


def encode_request(msgid, command, payload=b""):
    return _frame(None, _MAGIC_REQ, msgid, command, payload)


def encode_response(msgid, command, payload=b""):
    return _frame(None, _MAGIC_RES, msgid, command, payload)


def encode_request_into(out, msgid, command, payload=b""):
    _frame(out, _MAGIC_REQ, msgid, command, payload)


def encode_response_into(out, msgid, command, payload=b""):
    _frame(out, _MAGIC_RES, msgid, command, payload)


cdef bytes _unframed(uint32_t magic, bytes body):
    # header + body for the registration frames (no msgid)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef bytes frame = PyBytes_FromStringAndSize(NULL, _HEADER_SIZE + n)
    cdef char *d = PyBytes_AS_STRING(frame)
    _put_be32(d, magic)
    _put_be32(d + 4, <uint32_t>n)
    _put_be32(d + 8, crc32_update(0, <const uint8_t *>PyBytes_AS_STRING(body), n))
    memcpy(d + _HEADER_SIZE, PyBytes_AS_STRING(body), n)
    return frame


def encode_registration(client_type, name=None, token=None):
    if client_type in (ClientType.CLIENT, ClientType.WORKER):
        if name is not None or token is not None:
            raise ValueError("client types 1 and 2 carry no identity")
        body = bytes((client_type,))
    elif client_type in (ClientType.AUTH_CLIENT, ClientType.AUTH_WORKER):
        if name is None or token is None:
            raise ValueError("client types 3 and 4 need a name and a token")
        body = bytes((client_type,)) + encode_identity(name, token)
    else:
        raise ValueError(f"unknown client type {client_type}")
    return _unframed(_MAGIC_REQ, body)


def encode_registration_reply(conn_id):
    if not 0 <= conn_id <= _U32_MAX:
        raise ValueError(f"connection id {conn_id} does not fit in 32 bits")
    cdef uint32_t cid = conn_id
    cdef char body[5]
    body[0] = 0x1E  # DATA + connection id
    _put_be32(body + 1, cid)
    return _unframed(_MAGIC_RES, PyBytes_FromStringAndSize(body, 5))


# -- every command -----------------------------------------------------------------

cdef inline bint _in(uint64_t mask, long long command) noexcept:
    return (mask >> command) & 1


cdef long long _command_code(object command) except -1:
    # the pure twin's `0 <= command <= MAX_COMMAND` check
    cdef int overflow = 0
    cdef long long x = PyLong_AsLongLongAndOverflow(command, &overflow)
    if overflow or x < 0 or x > _MAX_COMMAND:
        raise UnknownCommand(f"unknown command {command}")
    return x


def decode_payload(command, payload):
    cdef long long c = _command_code(command)
    cdef bytes b = payload if PyBytes_CheckExact(payload) else bytes(payload)
    cdef Reader r
    cdef tuple fields
    _r_init(&r, b)
    if _in(_EMPTY_MASK, c):
        fields = ()
    elif _in(_JOB_MASK, c):
        fields = (_r_job(&r),)
    elif _in(_FUNC_MASK, c):
        fields = (_r_str8(&r),)
    elif c == 2:  # SCHED_LATER
        a = _r_str8(&r)
        b2 = _r_str8(&r)
        delay = _r_i64(&r)
        step = _r_i16(&r)
        fields = (a, b2, delay, step)
    elif c == 3 or c == 32:  # WORK_DONE, WORK_DATA
        a = _r_str8(&r)
        b2 = _r_str8(&r)
        fields = (a, b2, _r_rest(&r))
    elif c == 4 or c == 17:  # WORK_FAIL, REMOVE_JOB
        a = _r_str8(&r)
        fields = (a, _r_str8(&r))
    elif c == 19:  # LOAD
        fields = (decode_job_list(_r_rest(&r)),)
    elif c == 23:  # CONFIG_SET
        a = _r_str8(&r)
        fields = (a, _r_u32(&r))
    elif c == 24:  # CONFIG
        fields = (_r_u32(&r),)
    elif c == 26:  # ACQUIRED
        fields = (_r_u8(&r),)
    elif c == 27:  # ACQUIRE
        a = _r_str8(&r)
        count = _r_i16(&r)
        b2 = _r_str8(&r)
        fields = (a, count, b2, _r_str8(&r))
    elif c == 28:  # RELEASE
        a = _r_str8(&r)
        b2 = _r_str8(&r)
        fields = (a, b2, _r_str8(&r))
    else:  # DATA
        fields = (_r_rest(&r),)
    _r_end(&r)
    return fields


def encode_payload(command, *fields):
    cdef long long c = _command_code(command)
    cdef int expect = _ARITY[c]
    if len(fields) != expect:
        raise ValueError(
            f"{Command(c).name} takes {expect} field(s), got {len(fields)}"
        )
    if _in(_EMPTY_MASK, c):
        return b""
    cdef Writer w
    _w_init(&w)
    try:
        if _in(_JOB_MASK, c):
            _w_job(&w, Job(*fields[0]))
        elif _in(_FUNC_MASK, c):
            _w_str8(&w, fields[0])
        elif c == 2:  # SCHED_LATER
            func, name, delay, step = fields
            _w_str8(&w, func)
            _w_str8(&w, name)
            _w_be(&w, <uint64_t>_check(
                delay, INT64_MIN, INT64_MAX, "delay"), 8)
            _w_be(&w, <uint64_t>_check(step, -0x8000, 0x7FFF, "step"), 2)
        elif c == 3 or c == 32:  # WORK_DONE, WORK_DATA
            _w_str8(&w, fields[0])
            _w_str8(&w, fields[1])
            _w_bytes_obj(&w, fields[2])
        elif c == 4 or c == 17:  # WORK_FAIL, REMOVE_JOB
            _w_str8(&w, fields[0])
            _w_str8(&w, fields[1])
        elif c == 19:  # LOAD
            return encode_job_list(fields[0])
        elif c == 23:  # CONFIG_SET
            _w_str8(&w, fields[0])
            _w_be(&w, <uint64_t>_check(fields[1], 0, _U32_MAX, "value"), 4)
        elif c == 24:  # CONFIG
            _w_be(&w, <uint64_t>_check(fields[0], 0, _U32_MAX, "value"), 4)
        elif c == 26:  # ACQUIRED
            _w_be(&w, <uint64_t>_check(fields[0], 0, 255, "granted"), 1)
        elif c == 27:  # ACQUIRE
            lock, count, func, name = fields
            _w_str8(&w, lock)
            _w_be(&w, <uint64_t>_check(count, -0x8000, 0x7FFF, "count"), 2)
            _w_str8(&w, func)
            _w_str8(&w, name)
        elif c == 28:  # RELEASE
            _w_str8(&w, fields[0])
            _w_str8(&w, fields[1])
            _w_str8(&w, fields[2])
        else:  # DATA
            return bytes(fields[0])
        return _w_bytes(&w)
    finally:
        _w_free(&w)
