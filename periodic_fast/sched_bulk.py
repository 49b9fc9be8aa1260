"""DUMP and LOAD of many jobs in bounded slices (issue 17).

A DUMP reply holds every job of the store and a LOAD request may carry a
million: done in the request's turn, either holds the loop for seconds.
:class:`BulkWork` runs them a slice per :meth:`tick
<periodic_fast.scheduler.Scheduler.tick>` instead (the scheduler asks for an
immediate wake-up while :attr:`BulkWork.busy`), so the server answers other
peers between slices.  A request small enough for one slice is still done at
once by its handler.

DUMP walks the id -> record list (no snapshot: a record keeps its id for its
whole life) and encodes :data:`DUMP_SLICE` slots per slice, then computes the
frame's CRC over :data:`CRC_SLICE` bytes per slice and sends the one DATA
frame.  Every job that exists throughout the dump is in it, once, as it was
when its slice was encoded (a job changed by a later request of another peer
may show the old or the new version; one removed before its slice is left
out; one added during the dump may or may not be in it).  Records of a
dropped func that are still being freed (:mod:`~periodic_fast.sched_reap`)
are left out.

LOAD decodes :data:`LOAD_SLICE` jobs per slice (the job boundaries are found
with a few index reads, each slice is decoded by the codec), checks the whole
request as the protocol asks (every func, sizes: refused as a whole, nothing
stored) once it is decoded, then submits :data:`LOAD_SLICE` jobs per slice
and replies SUCCESS after the last one: the server holds that reply behind
the store's durability barrier, so SUCCESS still means every job is
committed.  A LOAD cut short (a crash, its connection closed: the work stops
at its next slice) may be partly applied; it was never acknowledged.

Order per connection is kept: while a connection's DUMP or LOAD runs, its
later requests are queued here (its dispatch table is swapped for one that
queues, so other connections pay nothing) and handled, in order, when it
ends.  At most :data:`BACKLOG_MAX` requests wait; a peer that pipelines more
is closed.
"""

from __future__ import annotations

import struct
import zlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .codec import decode_job_list, encode_job_list
from .constants import MAGIC_RESPONSE
from .errors import ProtocolError, TrailingBytes, TruncatedPayload
from .sched_wire import DATA

if TYPE_CHECKING:
    from .job import Job
    from .rec import JobRec
    from .sched_model import Conn, Func, Handler

__all__ = ["BACKLOG_MAX", "CRC_SLICE", "DUMP_SLICE", "LOAD_SLICE", "BulkWork"]

#: record slots encoded per DUMP slice (~1 us each: a few ms)
DUMP_SLICE: Final = 4096
#: reply bytes checksummed per DUMP slice (~1 GB/s: a few ms)
CRC_SLICE: Final = 4 << 20
#: jobs decoded, or submitted, per LOAD slice (~1-3 us each)
LOAD_SLICE: Final = 2048
#: requests a connection may pipeline behind its running DUMP or LOAD
BACKLOG_MAX: Final = 65536

_U64: Final = struct.Struct(">Q")
_HEADER: Final = struct.Struct(">4sII")  # magic, body size, CRC32 (codec)
_MSGID: Final = struct.Struct(">IB")  # msgid, command

#: the LOAD checks: ``(conn, msgid, jobs) -> ok``; False: refused (the
#: callee replied); True: every func of ``jobs`` exists now
LoadCheck = Callable[["Conn", int, "list[Job]"], bool]


def _job_end(data: bytes, pos: int) -> int:
    """Offset just past the job encoded at ``pos`` (protocol.md 2.1); may
    point beyond ``data`` (or raise IndexError) when it is truncated."""
    pos += 1 + data[pos]  # str8 func
    pos += 1 + data[pos]  # str8 name
    pos += 13 + int.from_bytes(data[pos : pos + 4], "big")  # workload, sched_at
    version = data[pos - 1]
    if version == 3:
        return pos + 8  # count and timeout
    if version == 1 or version == 2:
        return pos + 4
    return pos


class _Dump:
    """One DUMP in progress: encoding, then the CRC, then the reply."""

    __slots__ = ("conn", "count", "crc", "crc_part", "end", "msgid", "parts", "pos")

    def __init__(self, conn: Conn, msgid: int, end: int) -> None:
        self.conn = conn
        self.msgid = msgid
        self.pos = 0  # next id slot to encode
        self.end = end  # slots at the start (later ones hold newer jobs)
        self.parts: list[memoryview] = []  # encoded jobs, no count prefix
        self.count = 0
        self.crc = -1  # -1: still encoding
        self.crc_part = 0  # next part to checksum


class _Load:
    """One LOAD in progress: decoding, then submitting."""

    __slots__ = (
        "conn",
        "data",
        "decoded",
        "jobs",
        "left",
        "msgid",
        "pos",
        "sized",
        "too_big",
    )

    def __init__(self, conn: Conn, msgid: int, data: bytes, count: int) -> None:
        self.conn = conn
        self.msgid = msgid
        self.data = data
        self.pos = 8  # next job's offset in ``data``
        self.left = count  # jobs still to decode
        self.jobs: list[Job] = []
        self.decoded = False  # checked and submitting (``pos``: next job)
        self.sized = False  # check each job against the frame limit
        self.too_big = False  # one job could not be DUMPed back: refused


class BulkWork:
    """Running DUMP and LOAD requests, a slice per :meth:`step`.

    :param jobs: the scheduler's id -> record list.
    :param funcs: the func registry (a dropped func's records are skipped).
    :param reaping: records of dropped funcs still to free (then a record is
        checked against its func's table).
    :param table_for: a connection's normal dispatch table.
    :param kill: ``(conn, why)``: forget and close a misbehaving connection.
    :param check: the LOAD checks once a request is decoded (:data:`LoadCheck`).
    :param submit: submit one LOAD job (protocol.md 4.3).
    :param done: ``(conn, msgid)``: a LOAD is stored; reply SUCCESS.
    :param oversize: True when a job could not be DUMPed back.
    :param refuse: ``(conn, msgid, why)``: a LOAD refused for its size.
    """

    __slots__ = (
        "_backlog_table",
        "_check",
        "_done",
        "_funcs",
        "_jobs",
        "_kill",
        "_oversize",
        "_parked",
        "_reaping",
        "_refuse",
        "_submit",
        "_table_for",
        "_tasks",
        "crc_slice",
        "dump_slice",
        "load_slice",
    )

    def __init__(
        self,
        jobs: list[JobRec | None],
        funcs: dict[bytes, Func],
        reaping: Callable[[], int],
        table_for: Callable[[Conn], list[Handler]],
        kill: Callable[[Conn, str], None],
        check: LoadCheck,
        submit: Callable[[Job], None],
        done: Callable[[Conn, int], None],
        oversize: Callable[[Job], bool],
        refuse: Callable[[Conn, int, str], None],
    ) -> None:
        self._jobs = jobs
        self._funcs = funcs
        self._reaping = reaping
        self._table_for = table_for
        self._kill = kill
        self._check = check
        self._submit = submit
        self._done = done
        self._oversize = oversize
        self._refuse = refuse
        self._tasks: deque[_Dump | _Load] = deque()
        # connection -> its requests that wait for its DUMP / LOAD
        self._parked: dict[Conn, deque[tuple[int, int, bytes]]] = {}
        self._backlog_table: list[Handler] = [
            self._queue_for(command) for command in range(256)
        ]
        self.dump_slice = DUMP_SLICE
        self.crc_slice = CRC_SLICE
        self.load_slice = LOAD_SLICE

    @property
    def busy(self) -> bool:
        """True while a DUMP or LOAD has slices left."""
        return bool(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    # -- starting -------------------------------------------------------------

    def dump(self, conn: Conn, msgid: int) -> None:
        """Start a DUMP for ``conn``; its reply leaves from a later slice."""
        self._start(_Dump(conn, msgid, len(self._jobs)))

    def load(self, conn: Conn, msgid: int, data: bytes, sized: bool = False) -> None:
        """Start a LOAD of the job list ``data`` (protocol.md 2.3); ``sized``:
        check every job against the frame limit (``oversize``).  Raises
        :class:`~periodic_fast.errors.TruncatedPayload` at once for a count
        the payload cannot hold (other defects close the connection from
        the slice that finds them)."""
        if len(data) < 8:
            raise TruncatedPayload(f"job list of {len(data)} bytes has no count")
        count = _U64.unpack_from(data, 0)[0]
        if count > (len(data) - 8) // 15:  # a job is at least 15 bytes
            raise TruncatedPayload(
                f"job list announces {count} jobs in {len(data)} bytes"
            )
        task = _Load(conn, msgid, bytes(data), count)
        task.sized = sized
        self._start(task)

    def _start(self, task: _Dump | _Load) -> None:
        conn = task.conn
        self._tasks.append(task)
        if conn not in self._parked:
            self._parked[conn] = deque()
        conn.table = self._backlog_table

    def _queue_for(self, command: int) -> Handler:
        def queue(conn: Conn, msgid: int, payload: bytes) -> None:
            backlog = self._parked.get(conn)
            if backlog is None:  # pragma: no cover - the table is swapped back
                conn.table = self._table_for(conn)
                conn.table[command](conn, msgid, payload)
            elif len(backlog) >= BACKLOG_MAX:
                self._kill(conn, f"{BACKLOG_MAX} requests behind its DUMP or LOAD")
            else:
                backlog.append((msgid, command, payload))

        return queue

    # -- slices ---------------------------------------------------------------

    def step(self) -> None:
        """Run one slice of the oldest task (tasks take turns)."""
        tasks = self._tasks
        if not tasks:
            return
        task = tasks.popleft()
        conn = task.conn
        if not conn.alive:  # closed: its work stops here
            self._end(task)
            return
        try:
            finished = (
                self._dump_slice(task)
                if isinstance(task, _Dump)
                else self._load_slice(task)
            )
        except ProtocolError as exc:  # a malformed LOAD: as in the request's turn
            self._end(task)
            self._kill(conn, f"malformed LOAD: {exc.__class__.__name__}: {exc}")
            return
        if finished:
            self._end(task)
        else:
            tasks.append(task)

    def _end(self, task: _Dump | _Load) -> None:
        """``task`` is over: unless its connection has another one, give it
        its table back and handle what it pipelined meanwhile, in order."""
        conn = task.conn
        if any(t.conn is conn for t in self._tasks):
            return
        backlog = self._parked.pop(conn, None)
        if not conn.alive:
            return
        conn.table = self._table_for(conn)
        while backlog:
            msgid, command, payload = backlog.popleft()
            try:
                conn.table[command](conn, msgid, payload)
            except ProtocolError as exc:
                self._kill(conn, f"malformed payload: {exc.__class__.__name__}: {exc}")
                return
            if not conn.alive:
                return
            if conn in self._parked:  # a new DUMP / LOAD: the rest waits again
                self._parked[conn] = backlog
                return

    def _dump_slice(self, task: _Dump) -> bool:
        if task.crc < 0:
            jobs = self._jobs
            pos = task.pos
            stop = min(pos + self.dump_slice, task.end, len(jobs))
            recs = jobs[pos:stop]
            task.pos = stop
            if self._reaping():  # detached records are still in the list
                funcs = self._funcs
                out = []
                for rec in recs:
                    if rec is not None:
                        fs = funcs.get(rec.func)
                        if fs is not None and fs.jobs.get(rec.name) is rec:
                            out.append(rec.job)
            else:
                out = [rec.job for rec in recs if rec is not None]
            if out:
                task.parts.append(memoryview(encode_job_list(out))[8:])
                task.count += len(out)
            if stop < task.end and stop < len(jobs):
                return False
            # the CRC covers the msgid, the command, then the payload
            head = _MSGID.pack(task.msgid, DATA) + _U64.pack(task.count)
            task.crc = zlib.crc32(head)
            return False
        parts = task.parts
        i = task.crc_part
        crc = task.crc
        budget = self.crc_slice
        while i < len(parts) and budget > 0:
            crc = zlib.crc32(parts[i], crc)
            budget -= len(parts[i])
            i += 1
        task.crc = crc
        task.crc_part = i
        if i < len(parts):
            return False
        size = 5 + 8 + sum(map(len, parts))
        frame = b"".join(
            [
                _HEADER.pack(MAGIC_RESPONSE, size, crc),
                _MSGID.pack(task.msgid, DATA),
                _U64.pack(task.count),
                *parts,
            ]
        )
        parts.clear()
        task.conn.send(frame)
        return True

    def _load_slice(self, task: _Load) -> bool:
        if not task.decoded:
            data = task.data
            start = end = task.pos
            k = min(self.load_slice, task.left)
            try:
                for _ in range(k):
                    end = _job_end(data, end)
            except IndexError:
                end = len(data) + 1
            if end > len(data):
                raise TruncatedPayload(f"job list truncated after offset {start}")
            jobs = decode_job_list(_U64.pack(k) + data[start:end])
            task.pos = end
            task.left -= k
            if task.sized and not task.too_big:
                task.too_big = any(map(self._oversize, jobs))
            task.jobs += jobs
            if task.left:
                return False
            if end != len(data):
                raise TrailingBytes(f"{len(data) - end} trailing bytes after the jobs")
            task.data = b""
            task.decoded = True
            task.pos = 0
            if task.too_big:
                self._refuse(
                    task.conn, task.msgid, "LOAD of a job over the frame limit"
                )
                return True
            # refused as a whole (the callee replied), or every func exists
            return not self._check(task.conn, task.msgid, task.jobs)
        jobs = task.jobs
        pos = task.pos
        stop = min(pos + self.load_slice, len(jobs))
        submit = self._submit
        for i in range(pos, stop):
            submit(jobs[i])
        task.pos = stop
        if stop < len(jobs):
            return False
        task.jobs = []
        self._done(task.conn, task.msgid)
        return True
