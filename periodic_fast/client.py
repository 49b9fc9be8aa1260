"""The asyncio client of the Periodic protocol.

:class:`Client` speaks the wire protocol (docs/protocol.md) through an
:class:`asyncio.Protocol` and the compiled codec, with the method names users
of aio-periodic know (``submit_job``, ``run_job``, ``recv_job_data``,
``remove_job``, ``drop_func``, ``status``, ``ping``) plus the commands the
reference CLI uses (``config_get`` / ``config_set``, ``dump`` / ``load``,
``shutdown``)::

    async with Client("tcp://127.0.0.1:5000") as c:
        await c.submit_job("echo", "job-1", b"hello")
        result = await c.run_job("echo", "job-2", b"hi", timeout=10)

Requests are pipelined: each gets its own message id and a future, several can
be in flight on one connection, and every frame queued during one loop turn
goes out in a single ``transport.write``.  :meth:`Client.submit_many` is the
bulk path: it keeps a window of submits in flight with no per-job future.

The connection is opened lazily and re-opened after a loss (every
``reconnect_delay`` seconds, until ``close()``); a request that was in flight
when the connection died raises :class:`ConnectionLost`, a request issued while
disconnected waits for the reconnect up to its own timeout.

The connection machinery lives in :mod:`periodic_fast._connection`
(:class:`Connection`, which :mod:`periodic_fast.worker` builds on too), the
address helpers in :mod:`periodic_fast._address`, the errors in
:mod:`periodic_fast.errors`; all of them stay importable from here.  Layering:
L0, the codec, the job records and asyncio only (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeAlias

from ._address import Address, BytesLike, parse_address, resolve_address, to_bytes
from ._connection import Connection, _Sink
from .codec import (
    LOAD_FRAME_OVERHEAD,
    Packet,
    decode_job_list,
    decode_payload,
    decode_status,
    encode_job,
    encode_job_list,
    encode_payload,
    load_frame_size,
    oversize_job,
)
from .constants import STREAM_EOF, ClientType, Command
from .errors import (
    ClientError,
    ConnectionLost,
    NotConnected,
    NoWorkerError,
    RequestRejected,
    RequestTimeout,
)
from .job import FuncStat, Job

__all__ = [
    "Address",
    "BytesLike",
    "Client",
    "ClientError",
    "Connection",
    "ConnectionLost",
    "NoWorkerError",
    "NotConnected",
    "RequestRejected",
    "RequestTimeout",
    "StreamCallback",
    "parse_address",
    "resolve_address",
    "to_bytes",
]

#: ``stream=`` callback of :meth:`Client.run_job`: plain or async.
StreamCallback: TypeAlias = "Callable[[bytes], None | Awaitable[Any]]"

# hot-path command codes as plain ints (no enum lookup per call)
_SUBMIT_JOB = int(Command.SUBMIT_JOB)
_SUCCESS = int(Command.SUCCESS)
_PING = int(Command.PING)
_PONG = int(Command.PONG)


#: bytes a job adds to a job list besides its func, name and workload (an
#: upper bound: length prefixes, sched_at, count, timeout)
_JOB_OVERHEAD = 64
#: a job payload at most this much under ``max_frame`` fits for sure (the
#: exact bound is codec.load_frame_size: what the server accepts)
_SURE_SLACK = LOAD_FRAME_OVERHEAD - 15


def _too_large(size: int, limit: int) -> ValueError:
    """The error of a job the server would refuse: its LOAD frame (a job
    must survive DUMP and LOAD) would be over the frame limit."""
    return ValueError(
        f"a job that needs a LOAD frame of {size} bytes is over the frame limit"
        f" of {limit} bytes (the server's --max-frame; the client's max_frame)"
    )


def _load_parts(items: list[Job], chunk: int, chunk_bytes: int) -> list[list[Job]]:
    """Cut ``items`` into LOAD frames: at most ``chunk`` jobs and about
    ``chunk_bytes`` bytes each; always at least one (possibly empty) part."""
    if chunk < 1 or chunk_bytes < 1:
        raise ValueError("chunk and chunk_bytes must be >= 1")
    parts: list[list[Job]] = []
    part: list[Job] = []
    size = 0
    for job in items:
        n = len(job[0]) + len(job[1]) + len(job[2]) + _JOB_OVERHEAD
        if part and (len(part) >= chunk or size + n > chunk_bytes):
            parts.append(part)
            part, size = [], 0
        part.append(job)
        size += n
    if part or not parts:
        parts.append(part)
    return parts


def _expect(pkt: Packet, command: int) -> Packet:
    if pkt.command != command:
        raise RequestRejected(pkt.command, pkt.payload)
    return pkt


class _Stream(_Sink):
    """RECV_DATA subscription: queue of DATA chunks until ``EOF``."""

    __slots__ = ("_conn", "msgid", "queue", "started")

    def __init__(self, conn: Connection, msgid: int) -> None:
        self._conn = conn
        self.msgid = msgid
        self.queue: asyncio.Queue[Packet | BaseException] = asyncio.Queue()
        self.started: asyncio.Future[Packet] = (
            asyncio.get_running_loop().create_future()
        )

    def feed(self, packet: Packet) -> None:
        if packet.command == Command.DATA:
            if packet.payload == STREAM_EOF:
                self.close()
            self.queue.put_nowait(packet)
            return
        if not self.started.done():
            self.started.set_result(packet)
        if packet.command != Command.SUCCESS:
            self.close()
            self.queue.put_nowait(packet)

    def lost(self, exc: BaseException) -> None:
        self.close()
        if not self.started.done():
            self.started.set_exception(exc)
            self.started.exception()  # retrieved: the caller may be gone
        self.queue.put_nowait(exc)

    def close(self) -> None:
        if self._conn._waiters.get(self.msgid) is self:
            del self._conn._waiters[self.msgid]


class _Batch(_Sink):
    """A window of pipelined SUBMIT_JOBs counted without one future each."""

    __slots__ = ("_conn", "done", "error", "ok", "pending")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.pending = 0
        self.ok = 0
        self.error: BaseException | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def feed(self, packet: Packet) -> None:
        assert packet.msgid is not None
        self._conn._waiters.pop(packet.msgid, None)
        if packet.command == Command.SUCCESS:
            self.ok += 1
        self.pending -= 1
        if self.pending <= 0 and not self.done.done():
            self.done.set_result(None)

    def lost(self, exc: BaseException) -> None:
        self.error = exc
        waiters = self._conn._waiters
        for k in [k for k, v in waiters.items() if v is self]:
            del waiters[k]
        if not self.done.done():
            self.done.set_result(None)


# -- the client ------------------------------------------------------------------


class Client(Connection):
    """Asyncio Periodic client (see the module docstring).

    Func and job names, workloads and config keys accept ``str`` (UTF-8) or
    bytes.  All methods raise :class:`NotConnected` when the server cannot be
    reached, :class:`RequestTimeout` when it does not answer in time and
    :class:`ConnectionLost` when the connection drops mid-request; a job the
    server would drop the connection for (a name over 255 bytes, a number out
    of range, a frame over ``max_frame``) raises :class:`ValueError` before
    it is sent.
    """

    _client_type = ClientType.CLIENT

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def ping(self, timeout: float | None = None) -> bool:
        """PING; True when the server answered PONG."""
        pkt = await self._request(_PING, timeout=timeout)
        return pkt.command == _PONG

    async def submit_job(
        self,
        func: BytesLike,
        name: BytesLike,
        workload: BytesLike = b"",
        sched_at: int = 0,
        count: int = 0,
        timeout: int = 0,
        *,
        job: Job | None = None,
    ) -> bool:
        """Store a job (update it if ``(func, name)`` exists).

        ``sched_at`` is absolute epoch seconds (0 or past: due now); ``timeout``
        is the job's run timeout (0: the server's default).  Returns True when
        the server answered SUCCESS.
        """
        if job is None:
            # a plain tuple encodes like a Job and costs a third of one
            payload = encode_job(
                (  # type: ignore[arg-type]
                    func if func.__class__ is bytes
                    else func.encode() if func.__class__ is str
                    else to_bytes(func),
                    name if name.__class__ is bytes
                    else name.encode() if name.__class__ is str
                    else to_bytes(name),
                    workload if workload.__class__ is bytes else to_bytes(workload),
                    sched_at, count, timeout,
                )
            )  # fmt: skip
        else:
            payload = encode_job(job)
        if len(payload) > self.max_frame - _SURE_SLACK:  # near the limit
            size = oversize_job(payload, self.max_frame)
            if size:  # refused by the server (or a lost connection)
                raise _too_large(size, self.max_frame)
        proto = self._proto
        if proto is None or proto.transport is None:
            pkt = await self._request(_SUBMIT_JOB, payload)
        else:
            fut = self._start(proto, _SUBMIT_JOB, payload, self.timeout)
            msgid = self._last_msgid
            try:
                pkt = await fut
            except asyncio.CancelledError:
                self._forget(msgid, fut)
                raise
        return pkt.command == _SUCCESS and not pkt.payload

    async def submit_many(
        self,
        jobs: Iterable[Job | tuple[Any, ...]],
        *,
        window: int = 4096,
        timeout: float | None = None,
    ) -> int:
        """Submit many jobs pipelined; return how many were accepted.

        Each item is a :class:`~periodic_fast.job.Job` or a tuple of
        :meth:`submit_job` arguments ``(func, name[, workload[, sched_at[,
        count[, timeout]]]])``.  Up to ``window`` submits are in flight at
        once; frames queued in one loop turn go out in one write.
        ``timeout`` bounds each window's wait.

        :raises ConnectionLost: the connection dropped (jobs already
            acknowledged stay stored).
        """
        if timeout is None:
            timeout = self.timeout
        total = 0
        batch_jobs: list[Job] = []
        for item in jobs:
            if not isinstance(item, Job):
                f, n, *rest = item
                item = Job(to_bytes(f), to_bytes(n), *rest)
                if rest:
                    item = item._replace(workload=to_bytes(item.workload))
            batch_jobs.append(item)
            if len(batch_jobs) >= window:
                total += await self._submit_window(batch_jobs, timeout)
                batch_jobs = []
        if batch_jobs:
            total += await self._submit_window(batch_jobs, timeout)
        return total

    async def _submit_window(self, jobs: list[Job], timeout: float) -> int:
        proto = self._proto
        if proto is None or proto.transport is None:
            proto = await asyncio.wait_for(self._ensure_or_wait(), timeout)
        batch = _Batch(self)
        waiters = self._waiters
        send = proto.send
        submit = Command.SUBMIT_JOB
        limit = self.max_frame - _SURE_SLACK
        for job in jobs:
            payload = encode_job(job)
            if len(payload) > limit and oversize_job(payload, self.max_frame):
                proto.flush()  # the jobs before it are sent
                raise _too_large(load_frame_size(job), self.max_frame)
            msgid = self._next_msgid()
            waiters[msgid] = batch
            batch.pending += 1
            send(msgid, submit, payload)
        proto.flush()
        try:
            await asyncio.wait_for(asyncio.shield(batch.done), timeout)
        except asyncio.TimeoutError:
            batch.lost(RequestTimeout("submit window timed out"))
            raise RequestTimeout(
                f"{batch.pending} submits unanswered after {timeout:g} s"
            ) from None
        if batch.error is not None:
            raise batch.error
        await proto.drain()
        return batch.ok

    async def run_job(
        self,
        func: BytesLike,
        name: BytesLike,
        workload: BytesLike = b"",
        sched_at: int = 0,
        count: int = 0,
        timeout: int = 10,
        *,
        stream: StreamCallback | None = None,
        job: Job | None = None,
        wait: float | None = None,
    ) -> bytes:
        """Run a job synchronously and return the worker's result.

        ``timeout`` (0 means 10, like aio-periodic) is sent as the job timeout;
        the reply is awaited ``wait`` seconds (default ``timeout + 5``: the
        server itself answers ``expired`` after the job timeout).  The server's
        own outcome texts ``failed``, ``removed`` and ``expired`` come back as
        the result (they cannot be told apart from a worker's result).
        ``stream`` receives every WORK_DATA chunk (subscribed before the job is
        sent, so no chunk is missed).

        :raises NoWorkerError: no worker has registered ``func``.
        """
        if job is None:
            job = Job(
                to_bytes(func), to_bytes(name), to_bytes(workload), sched_at, count,
                timeout or 10,
            )  # fmt: skip
        elif job.timeout == 0:
            job = job._replace(timeout=10)
        if wait is None:
            wait = job.timeout + 5.0
        payload = encode_job(job)
        if len(payload) > self.max_frame - _SURE_SLACK:  # near the limit
            size = oversize_job(payload, self.max_frame)
            if size:  # refused by the server (or a lost connection)
                raise _too_large(size, self.max_frame)
        st: _Stream | None = None
        reader: asyncio.Task[None] | None = None
        if stream is not None:
            st = await self._subscribe(job.func, job.name, wait)
            reader = asyncio.get_running_loop().create_task(_pump(st, stream, wait))
        try:
            pkt = await self._request(Command.RUN_JOB, payload, wait)
            if pkt.command == Command.NO_WORKER:
                raise NoWorkerError(
                    f"no worker for {job.func.decode(errors='replace')}"
                )
            _expect(pkt, Command.DATA)
            if reader is not None:
                # EOF precedes the result; give the stream a moment to finish
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), 1.0)
            return pkt.payload
        finally:
            if reader is not None and not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ClientError):
                    await reader
            elif reader is not None and not reader.cancelled():
                reader.exception()  # retrieved
            if st is not None:
                st.close()

    async def _subscribe(self, func: bytes, name: bytes, timeout: float) -> _Stream:
        proto = self._proto
        if proto is None or proto.transport is None:
            proto = await asyncio.wait_for(self._ensure_or_wait(), timeout)
        msgid = self._next_msgid()
        st = _Stream(self, msgid)
        self._waiters[msgid] = st
        proto.send(msgid, Command.RECV_DATA, encode_job(Job(func, name)))
        try:
            first = await asyncio.wait_for(asyncio.shield(st.started), timeout)
        except asyncio.TimeoutError:
            st.close()
            raise RequestTimeout("no reply to RECV_DATA") from None
        if first.command == Command.NO_WORKER:
            st.close()
            raise NoWorkerError(f"no worker for {func.decode(errors='replace')}")
        if first.command != Command.SUCCESS:
            st.close()
            raise RequestRejected(first.command, first.payload)
        return st

    async def recv_job_data(
        self, func: BytesLike, name: BytesLike, timeout: float = 120
    ) -> AsyncIterator[bytes]:
        """Yield the chunks a worker streams for the job (WORK_DATA) until the
        job ends.  ``timeout`` bounds the wait for each chunk.

        :raises NoWorkerError: no worker has registered ``func``.
        """
        st = await self._subscribe(to_bytes(func), to_bytes(name), timeout)
        try:
            while True:
                try:
                    item = await asyncio.wait_for(st.queue.get(), timeout)
                except asyncio.TimeoutError:
                    raise RequestTimeout(f"no data within {timeout:g} s") from None
                if isinstance(item, BaseException):
                    raise item
                if item.command != Command.DATA:
                    raise RequestRejected(item.command, item.payload)
                if item.payload == STREAM_EOF:
                    return
                yield item.payload
        finally:
            st.close()

    async def remove_job(self, func: BytesLike, name: BytesLike) -> bool:
        """Delete a job whatever its state; True on SUCCESS."""
        payload = encode_payload(Command.REMOVE_JOB, to_bytes(func), to_bytes(name))
        pkt = await self._request(Command.REMOVE_JOB, payload)
        return pkt.command == Command.SUCCESS

    async def drop_func(self, func: BytesLike) -> bool:
        """Forget a func and delete its jobs (only when no worker has it)."""
        payload = encode_payload(Command.DROP_FUNC, to_bytes(func))
        pkt = await self._request(Command.DROP_FUNC, payload)
        return pkt.command == Command.SUCCESS

    async def status(self) -> dict[str, FuncStat]:
        """Per-func statistics keyed by func name (text, UTF-8 with
        replacement), in the server's order (sorted by func)."""
        return {s.func.decode(errors="replace"): s for s in await self.status_list()}

    async def status_list(self) -> list[FuncStat]:
        """Per-func statistics as the server sent them."""
        pkt = _expect(await self._request(Command.STATUS), Command.DATA)
        return list(decode_status(pkt.payload))

    async def config_get(self, key: BytesLike) -> int:
        """Read a config key (unknown keys read 0)."""
        pkt = await self._request(
            Command.CONFIG_GET, encode_payload(Command.CONFIG_GET, to_bytes(key))
        )
        (value,) = decode_payload(Command.CONFIG, _expect(pkt, Command.CONFIG).payload)
        return int(value)

    async def config_set(self, key: BytesLike, value: int) -> bool:
        """Write a config key (a u32); True on SUCCESS."""
        payload = encode_payload(Command.CONFIG_SET, to_bytes(key), value)
        pkt = await self._request(Command.CONFIG_SET, payload)
        return pkt.command == Command.SUCCESS

    async def dump_raw(self, timeout: float | None = None) -> bytes:
        """Every stored job as the DUMP job-list bytes (the ``dump`` file)."""
        pkt = await self._request(Command.DUMP, timeout=timeout)
        return _expect(pkt, Command.DATA).payload

    async def dump(self, timeout: float | None = None) -> list[Job]:
        """Every stored job (any state)."""
        return list(decode_job_list(await self.dump_raw(timeout)))

    async def load(
        self,
        jobs: Iterable[Job] | bytes,
        *,
        chunk: int = 10000,
        chunk_bytes: int = 16 * 1024 * 1024,
        timeout: float | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> bool:
        """Submit a job list (a list of jobs, or DUMP bytes) with LOAD.

        Large lists go out as several LOAD frames of at most ``chunk`` jobs
        and about ``chunk_bytes`` bytes each (big workloads would otherwise
        make a frame larger than the server accepts); a job larger than
        ``chunk_bytes`` on its own gets a frame of its own.  ``progress``, when
        given, is called with the number of jobs loaded after each frame.

        :raises ValueError: a job alone is over the frame limit (checked
            before any frame is sent).
        """
        items = decode_job_list(jobs) if isinstance(jobs, bytes) else list(jobs)
        for job in items:  # what the server accepts (codec.load_frame_size)
            size = load_frame_size(job)
            if size > self.max_frame:
                raise _too_large(size, self.max_frame)
        ok = True
        done = 0
        for part in _load_parts(items, chunk, chunk_bytes):
            pkt = await self._request(Command.LOAD, encode_job_list(part), timeout)
            ok = ok and pkt.command == Command.SUCCESS
            if progress is not None:
                done += len(part)
                progress(done)
        return ok

    async def shutdown(self, wait: float = 2.0) -> None:
        """Ask the server to stop (no reply); wait up to ``wait`` s for it to
        close the connection."""
        proto = await self._ensure()
        self._closing = True  # do not reconnect to a server we stopped
        proto.send(self._next_msgid(), Command.SHUTDOWN)
        proto.flush()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(proto.closed), wait)
        await self.close()


async def _pump(st: _Stream, callback: StreamCallback, timeout: float) -> None:
    while True:
        item = await asyncio.wait_for(st.queue.get(), timeout)
        if isinstance(item, BaseException):
            raise item
        if item.command != Command.DATA or item.payload == STREAM_EOF:
            return
        ret = callback(item.payload)
        if asyncio.iscoroutine(ret) or isinstance(ret, asyncio.Future):
            await ret
