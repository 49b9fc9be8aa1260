"""Pure-Python codec of the Periodic wire protocol: the readable reference.

Byte layouts are specified in docs/protocol.md; this module cites it rather than
restating it.  ``_codec_c.pyx`` is the compiled twin: it exports the same names,
returns byte-identical output and raises the same :mod:`periodic_fast.errors`
classes at the same points.  Code outside the codec imports
:mod:`periodic_fast.codec`, never a twin.

Overview
--------
* :class:`Parser` turns a byte stream into :class:`Packet` objects.  It is fed
  arbitrary chunks, returns every complete packet in order and keeps a partial
  frame for the next feed.  The payload of a packet is copied out of the stream
  exactly once.
* ``encode_request`` / ``encode_response`` build one frame;  the ``*_into``
  variants append to a caller's ``bytearray`` so a batch of replies becomes one
  ``write``.
* ``encode_payload`` / ``decode_payload`` cover the payload of every command
  (0-34) as a tuple of fields; ``encode_job`` / ``decode_job`` and friends are
  the building blocks, exported for callers that know the command already.

Field tuples per command (``decode_payload`` returns, ``encode_payload`` takes):

=====================================  =======================================
commands                               fields
=====================================  =======================================
NOOP GRAB_JOB NO_JOB PING PONG SLEEP   ``()``
UNKNOWN STATUS SUCCESS DUMP SHUTDOWN
NO_WORKER JOB_ASSIGNED JOB_UNASSIGNED
SCHED_LATER                            ``(func, name, delay, step)``
WORK_DONE                              ``(func, name, result)``
WORK_FAIL                              ``(func, name)``
JOB_ASSIGN SUBMIT_JOB RUN_JOB          ``(job,)``
RECV_DATA
CAN_DO CANT_DO BROADCAST DROP_FUNC     ``(func,)``
REMOVE_JOB                             ``(func, name)``
LOAD                                   ``(jobs,)``  (a list of Job)
CONFIG_GET                             ``(key,)``
CONFIG_SET                             ``(key, value)``
CONFIG                                 ``(value,)``
ACQUIRED                               ``(granted,)``  (0 or 1)
ACQUIRE                                ``(lock, count, func, name)``
RELEASE                                ``(lock, func, name)``
DATA                                   ``(data,)``
WORK_DATA                              ``(func, name, chunk)``
=====================================  =======================================

Errors: framing problems raise :class:`~periodic_fast.errors.BadMagic`,
``CRCMismatch``, ``FrameTooLarge``, ``UnknownCommand``, ``TruncatedPayload`` or
``BadRegistration``; payload decoders raise ``TruncatedPayload`` and
``TrailingBytes``; encoders raise ``ValueError`` for a field that does not fit
its wire type (a name over 255 bytes, an integer out of range).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

from .constants import (
    DEFAULT_MAX_FRAME,
    HEADER_SIZE,
    MAGIC_REQUEST,
    MAGIC_RESPONSE,
    MAX_COMMAND,
    ClientType,
    Command,
)
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

_HEADER = struct.Struct(">4sII")
_U8 = struct.Struct(">B")
_I16 = struct.Struct(">h")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U64 = struct.Struct(">Q")
_MSGID = struct.Struct(">IB")

_I16_RANGE = (-(1 << 15), (1 << 15) - 1)
_I32_RANGE = (-(1 << 31), (1 << 31) - 1)
_I64_RANGE = (-(1 << 63), (1 << 63) - 1)
_U32_MAX = (1 << 32) - 1


class Packet:
    """One decoded frame.

    ``msgid`` is the 4-byte message id as an unsigned int, or ``None`` for a
    registration frame.  ``command`` is the command code; for a registration
    request it is the client type (1-4) and for a registration reply it is
    ``Command.DATA``.  ``payload`` is the bytes after the command byte (for a
    registration request: the identity, for a reply: the 4-byte connection id).
    """

    __slots__ = ("command", "msgid", "payload")

    def __init__(self, msgid: int | None, command: int, payload: bytes) -> None:
        self.msgid = msgid
        self.command = command
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return (
            self.msgid == other.msgid
            and self.command == other.command
            and self.payload == other.payload
        )

    def __hash__(self) -> int:
        return hash((self.msgid, self.command, self.payload))

    def __repr__(self) -> str:
        return (
            f"Packet(msgid={self.msgid!r}, command={self.command!r}, "
            f"payload={self.payload!r})"
        )


class Parser:
    """Streaming frame parser (protocol.md 1.3-1.4).

    :param requests: read client -> server frames (``\\0REQ``) when true,
        server -> client frames (``\\0RES``) when false.
    :param registration: the first frame is a registration frame (the server
        side of a new connection, or a client reading the server's reply).
    :param max_frame: largest body accepted; a larger length is refused from the
        header alone, before any body byte is buffered.
    :param resync: accept either magic and skip bytes before a magic, as the
        reference server does; otherwise anything but the expected magic at a
        frame boundary raises :class:`BadMagic`.

    After an error the parser is spent: every later :meth:`feed` raises the same
    exception.  The exception carries ``packets``, the packets completed in that
    feed before the error, so a server can still act on them.
    """

    __slots__ = (
        "_buf",
        "_error",
        "_magic",
        "_max_frame",
        "_need_registration",
        "_requests",
        "_resync",
    )

    def __init__(
        self,
        *,
        requests: bool = True,
        registration: bool = False,
        max_frame: int = DEFAULT_MAX_FRAME,
        resync: bool = False,
    ) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must be >= 0")
        self._requests = requests
        self._need_registration = registration
        self._max_frame = max_frame
        self._resync = resync
        self._magic = MAGIC_REQUEST if requests else MAGIC_RESPONSE
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held back as the start of an incomplete frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Consume ``data``; return every packet it completes, in order."""
        if self._error is not None:
            raise self._error
        buf = self._buf
        buf += data
        packets: list[Packet] = []
        pos = 0
        try:
            while True:
                start = self._find_frame(buf, pos)
                if start < 0:
                    # no magic anywhere: keep only a possible magic prefix
                    pos = max(pos, len(buf) - 3)
                    break
                pos = start
                if len(buf) - pos < HEADER_SIZE:
                    break
                _, length, crc = _HEADER.unpack_from(buf, pos)
                if length > self._max_frame:
                    raise FrameTooLarge(length, self._max_frame)
                end = pos + HEADER_SIZE + length
                if len(buf) < end:
                    break
                body = bytes(buf[pos + HEADER_SIZE : end])
                if zlib.crc32(body) != crc:
                    raise CRCMismatch(f"CRC-32 mismatch in a {length}-byte frame")
                pos = end
                packets.append(self._packet(body))
        except ProtocolError as exc:
            exc.packets = packets  # type: ignore[attr-defined]
            self._error = exc
            del buf[:]
            raise
        if pos:
            del buf[:pos]
        return packets

    def _find_frame(self, buf: bytearray, pos: int) -> int:
        """Index of the next frame start at or after ``pos``, or -1."""
        if not self._resync:
            have = len(buf) - pos
            if have >= 4:
                if buf[pos : pos + 4] != self._magic:
                    raise BadMagic(f"bad magic {bytes(buf[pos : pos + 4])!r}")
            elif have and buf[pos : pos + have] != self._magic[:have]:
                raise BadMagic(f"bad magic {bytes(buf[pos:])!r}")
            return pos
        a = buf.find(MAGIC_REQUEST, pos)
        b = buf.find(MAGIC_RESPONSE, pos)
        if a < 0:
            return b
        if b < 0:
            return a
        return min(a, b)

    def _packet(self, body: bytes) -> Packet:
        if self._need_registration:
            self._need_registration = False
            return _registration_packet(body, self._requests)
        if len(body) < 5:
            raise TruncatedPayload(f"frame body of {len(body)} bytes has no command")
        msgid, command = _MSGID.unpack_from(body)
        if command > MAX_COMMAND:
            raise UnknownCommand(f"unknown command {command}")
        return Packet(msgid, command, body[5:])


def _registration_packet(body: bytes, requests: bool) -> Packet:
    if not requests:
        if len(body) != 5 or body[0] != Command.DATA:
            raise BadRegistration(f"bad registration reply {body!r}")
        return Packet(None, 30, body[1:])  # Command.DATA
    if not body:
        raise BadRegistration("empty registration frame")
    ctype = body[0]
    rest = body[1:]
    if ctype in (ClientType.CLIENT, ClientType.WORKER):
        if rest:
            raise BadRegistration("trailing bytes after the client type")
    elif ctype in (ClientType.AUTH_CLIENT, ClientType.AUTH_WORKER):
        decode_identity(rest)
    else:
        raise BadRegistration(f"unknown client type {ctype}")
    return Packet(None, ctype, rest)


# -- small readers ------------------------------------------------------------


class _Reader:
    """Cursor over one payload; every read checks the remaining length."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, n: int) -> int:
        pos = self.pos
        if len(self.data) - pos < n:
            raise TruncatedPayload(
                f"payload truncated: need {n} bytes at offset {pos}, "
                f"have {len(self.data) - pos}"
            )
        self.pos = pos + n
        return pos

    def u8(self) -> int:
        return self.data[self._take(1)]

    def i16(self) -> int:
        return int(_I16.unpack_from(self.data, self._take(2))[0])

    def u32(self) -> int:
        return int(_U32.unpack_from(self.data, self._take(4))[0])

    def i32(self) -> int:
        return int(_I32.unpack_from(self.data, self._take(4))[0])

    def i64(self) -> int:
        return int(_I64.unpack_from(self.data, self._take(8))[0])

    def u64(self) -> int:
        return int(_U64.unpack_from(self.data, self._take(8))[0])

    def raw(self, n: int) -> bytes:
        pos = self._take(n)
        return self.data[pos : pos + n]

    def str8(self) -> bytes:
        return self.raw(self.u8())

    def str32(self) -> bytes:
        return self.raw(self.u32())

    def rest(self) -> bytes:
        pos = self.pos
        self.pos = len(self.data)
        return self.data[pos:]

    def job(self) -> Job:
        func = self.str8()
        name = self.str8()
        workload = self.str32()
        sched_at = self.i64()
        version = self.u8()
        count = self.i32() if version in (1, 3) else 0
        timeout = self.i32() if version in (2, 3) else 0
        return Job(func, name, workload, sched_at, count, timeout)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise TrailingBytes(
                f"{len(self.data) - self.pos} trailing bytes after the payload"
            )


# -- small writers ------------------------------------------------------------


def _check(value: int, lo: int, hi: int, what: str) -> int:
    if not lo <= value <= hi:
        raise ValueError(f"{what} {value} does not fit in [{lo}, {hi}]")
    return value


def _str8(value: bytes) -> bytes:
    n = len(value)
    if n > 255:
        raise ValueError(f"name of {n} bytes is longer than 255")
    return bytes((n,)) + bytes(value)


def _job_into(out: bytearray, job: Job) -> None:
    func, name, workload, sched_at, count, timeout = job
    out += _str8(func)
    out += _str8(name)
    wl = bytes(workload)
    _check(len(wl), 0, _U32_MAX, "workload length")
    out += _U32.pack(len(wl))
    out += wl
    out += _I64.pack(_check(sched_at, *_I64_RANGE, "sched_at"))
    _check(count, *_I32_RANGE, "count")
    _check(timeout, *_I32_RANGE, "timeout")
    version = (1 if count > 0 else 0) | (2 if timeout > 0 else 0)
    out.append(version)
    if version & 1:
        out += _I32.pack(count)
    if version & 2:
        out += _I32.pack(timeout)


# -- public payload helpers ---------------------------------------------------


def encode_job(job: Job) -> bytes:
    """Encode a job (protocol.md 2.1), choosing the version from count/timeout."""
    out = bytearray()
    _job_into(out, job)
    return bytes(out)


def decode_job(data: bytes) -> Job:
    """Decode exactly one job; unknown version bytes mean "no extras"."""
    r = _Reader(bytes(data))
    job = r.job()
    r.end()
    return job


def encode_handle(func: bytes, name: bytes) -> bytes:
    """``str8(func) + str8(name)`` (protocol.md 2.2)."""
    return _str8(func) + _str8(name)


def decode_handle(data: bytes) -> tuple[bytes, bytes]:
    """Split a job handle into ``(func, name)``."""
    r = _Reader(bytes(data))
    func = r.str8()
    name = r.str8()
    r.end()
    return func, name


def encode_job_list(jobs: Iterable[Job]) -> bytes:
    """``u64 count`` followed by the jobs (the DUMP / LOAD format, 2.3)."""
    out = bytearray(8)
    n = 0
    for job in jobs:
        _job_into(out, job)
        n += 1
    _U64.pack_into(out, 0, n)
    return bytes(out)


def decode_job_list(data: bytes) -> list[Job]:
    """Decode a DUMP / LOAD job list."""
    r = _Reader(bytes(data))
    n = r.u64()
    # each job is at least 15 bytes: refuse a count the payload cannot hold
    # before building anything
    if n > (len(r.data) - 8) // 15:
        raise TruncatedPayload(f"job list announces {n} jobs in {len(r.data)} bytes")
    jobs = [r.job() for _ in range(n)]
    r.end()
    return jobs


def encode_status(stats: Iterable[FuncStat]) -> bytes:
    """STATUS text (2.4): one ``func,workers,jobs,processing,locked,sched_at``
    line per func, sorted by func, joined by ``\\n`` with no trailing newline."""
    lines = [
        b"%s,%d,%d,%d,%d,%d" % (bytes(s[0]), s[1], s[2], s[3], s[4], s[5])
        for s in sorted(stats, key=lambda s: bytes(s[0]))
    ]
    return b"\n".join(lines)


def decode_status(data: bytes) -> list[FuncStat]:
    """Parse STATUS text; func names may contain commas (split from the right)."""
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


def encode_identity(name: bytes, token: bytes) -> bytes:
    """``hsbytes(name) + hsbytes(token)`` for registration types 3 and 4."""
    return _U64.pack(len(name)) + bytes(name) + _U64.pack(len(token)) + bytes(token)


def decode_identity(data: bytes) -> tuple[bytes, bytes]:
    """Decode the identity of a type 3 / 4 registration."""
    r = _Reader(bytes(data))
    try:
        name = r.raw(_hslen(r.i64()))
        token = r.raw(_hslen(r.i64()))
        r.end()
    except (TruncatedPayload, TrailingBytes) as exc:
        raise BadRegistration(f"malformed identity: {exc}") from None
    return name, token


def _hslen(n: int) -> int:
    if n < 0:
        raise TruncatedPayload(f"negative length {n}")
    return n


# -- frames -------------------------------------------------------------------


def _frame_into(
    out: bytearray, magic: bytes, msgid: int, command: int, payload: bytes
) -> None:
    if not 0 <= msgid <= _U32_MAX:
        raise ValueError(f"msgid {msgid} does not fit in 32 bits")
    if not 0 <= command <= 255:
        raise ValueError(f"command {command} does not fit in a byte")
    head = _MSGID.pack(msgid, command)
    crc = zlib.crc32(payload, zlib.crc32(head))
    out += _HEADER.pack(magic, len(payload) + 5, crc)
    out += head
    out += payload


def encode_request(msgid: int, command: int, payload: bytes = b"") -> bytes:
    """One client -> server frame."""
    out = bytearray()
    _frame_into(out, MAGIC_REQUEST, msgid, command, payload)
    return bytes(out)


def encode_response(msgid: int, command: int, payload: bytes = b"") -> bytes:
    """One server -> client frame."""
    out = bytearray()
    _frame_into(out, MAGIC_RESPONSE, msgid, command, payload)
    return bytes(out)


def encode_request_into(
    out: bytearray, msgid: int, command: int, payload: bytes = b""
) -> None:
    """Append one client -> server frame to ``out``."""
    _frame_into(out, MAGIC_REQUEST, msgid, command, payload)


def encode_response_into(
    out: bytearray, msgid: int, command: int, payload: bytes = b""
) -> None:
    """Append one server -> client frame to ``out``."""
    _frame_into(out, MAGIC_RESPONSE, msgid, command, payload)


def encode_registration(
    client_type: int, name: bytes | None = None, token: bytes | None = None
) -> bytes:
    """The registration frame a client sends first (protocol.md 1.4).

    Types 3 and 4 need ``name`` and ``token``; types 1 and 2 take neither.
    """
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
    return _HEADER.pack(MAGIC_REQUEST, len(body), zlib.crc32(body)) + body


def encode_registration_reply(conn_id: int) -> bytes:
    """The server's first frame: DATA + 4-byte connection id."""
    if not 0 <= conn_id <= _U32_MAX:
        raise ValueError(f"connection id {conn_id} does not fit in 32 bits")
    body = b"\x1e" + _U32.pack(conn_id)  # DATA + connection id
    return _HEADER.pack(MAGIC_RESPONSE, 5, zlib.crc32(body)) + body


# -- every command ------------------------------------------------------------

_EMPTY = frozenset(
    {0, 1, 6, 9, 10, 11, 12, 14, 16, 18, 20, 29, 33, 34}
)  # constants.EMPTY_PAYLOAD_COMMANDS, as ints for speed
_JOB = frozenset({5, 13, 25, 31})
_FUNC = frozenset({7, 8, 15, 21, 22})


def decode_payload(command: int, payload: bytes) -> tuple[Any, ...]:
    """Decode a command's payload into its field tuple (see module docstring)."""
    if not 0 <= command <= MAX_COMMAND:
        raise UnknownCommand(f"unknown command {command}")
    r = _Reader(bytes(payload))
    fields: tuple[Any, ...]
    if command in _EMPTY:
        fields = ()
    elif command in _JOB:
        fields = (r.job(),)
    elif command in _FUNC:
        fields = (r.str8(),)
    elif command == Command.SCHED_LATER:
        fields = (r.str8(), r.str8(), r.i64(), r.i16())
    elif command in (Command.WORK_DONE, Command.WORK_DATA):
        fields = (r.str8(), r.str8(), r.rest())
    elif command in (Command.WORK_FAIL, Command.REMOVE_JOB):
        fields = (r.str8(), r.str8())
    elif command == Command.LOAD:
        fields = (decode_job_list(r.rest()),)
    elif command == Command.CONFIG_SET:
        fields = (r.str8(), r.u32())
    elif command == Command.CONFIG:
        fields = (r.u32(),)
    elif command == Command.ACQUIRED:
        fields = (r.u8(),)
    elif command == Command.ACQUIRE:
        fields = (r.str8(), r.i16(), r.str8(), r.str8())
    elif command == Command.RELEASE:
        fields = (r.str8(), r.str8(), r.str8())
    else:  # DATA
        fields = (r.rest(),)
    r.end()
    return fields


def encode_payload(command: int, *fields: Any) -> bytes:
    """Encode a command's field tuple (the inverse of :func:`decode_payload`)."""
    if not 0 <= command <= MAX_COMMAND:
        raise UnknownCommand(f"unknown command {command}")
    expect = _ARITY[command]
    if len(fields) != expect:
        raise ValueError(
            f"{Command(command).name} takes {expect} field(s), got {len(fields)}"
        )
    if command in _EMPTY:
        return b""
    if command in _JOB:
        return encode_job(Job(*fields[0]))
    if command in _FUNC:
        return _str8(fields[0])
    if command == Command.SCHED_LATER:
        func, name, delay, step = fields
        return (
            encode_handle(func, name)
            + _I64.pack(_check(delay, *_I64_RANGE, "delay"))
            + _I16.pack(_check(step, *_I16_RANGE, "step"))
        )
    if command in (Command.WORK_DONE, Command.WORK_DATA):
        return encode_handle(fields[0], fields[1]) + bytes(fields[2])
    if command in (Command.WORK_FAIL, Command.REMOVE_JOB):
        return encode_handle(fields[0], fields[1])
    if command == Command.LOAD:
        return encode_job_list(fields[0])
    if command == Command.CONFIG_SET:
        return _str8(fields[0]) + _U32.pack(_check(fields[1], 0, _U32_MAX, "value"))
    if command == Command.CONFIG:
        return _U32.pack(_check(fields[0], 0, _U32_MAX, "value"))
    if command == Command.ACQUIRED:
        return _U8.pack(_check(fields[0], 0, 255, "granted"))
    if command == Command.ACQUIRE:
        lock, count, func, name = fields
        return (
            _str8(lock)
            + _I16.pack(_check(count, *_I16_RANGE, "count"))
            + encode_handle(func, name)
        )
    if command == Command.RELEASE:
        return _str8(fields[0]) + encode_handle(fields[1], fields[2])
    return bytes(fields[0])  # DATA


def _arity() -> Sequence[int]:
    arity = [0] * (MAX_COMMAND + 1)
    for c in _JOB | _FUNC | {Command.LOAD, Command.CONFIG, Command.ACQUIRED}:
        arity[c] = 1
    arity[Command.DATA] = 1
    for c in (Command.WORK_FAIL, Command.REMOVE_JOB, Command.CONFIG_SET):
        arity[c] = 2
    for c in (Command.WORK_DONE, Command.WORK_DATA, Command.RELEASE):
        arity[c] = 3
    arity[Command.SCHED_LATER] = 4
    arity[Command.ACQUIRE] = 4
    return tuple(arity)


_ARITY = _arity()
