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

Layering: this module imports only L0, the codec, the job records and asyncio
(docs/architecture.md); :mod:`periodic_fast.worker` builds on :class:`Connection`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias, cast

from .codec import (
    Packet,
    Parser,
    decode_job_list,
    decode_payload,
    decode_status,
    encode_job,
    encode_job_list,
    encode_payload,
    encode_registration,
    encode_request_into,
)
from .constants import (
    ADDRESS_ENV,
    DEFAULT_ADDRESS,
    DEFAULT_MAX_FRAME,
    STREAM_EOF,
    ClientType,
    Command,
)
from .errors import PeriodicError, ProtocolError
from .job import FuncStat, Job

if TYPE_CHECKING:
    from ._rsa_client import ClientKeys, ClientSecureProtocol
    from .rsa_transport import RSAConfig

__all__ = [
    "Address",
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

logger = logging.getLogger(__name__)

#: Bytes-like or text; text is encoded as UTF-8 on the wire.
BytesLike: TypeAlias = "bytes | bytearray | memoryview | str"
#: ``stream=`` callback of :meth:`Client.run_job`: plain or async.
StreamCallback: TypeAlias = "Callable[[bytes], None | Awaitable[Any]]"

_MAX_MSGID = 0xFFFFFF00  # aio-periodic's wrap point; FFFFFF00+ stay unused
_FLUSH_AT = 256 * 1024  # write at once when this much is queued
_Future = asyncio.Future  # the exact type loop.create_future() returns
# hot-path command codes as plain ints (no enum lookup per call)
_SUBMIT_JOB = int(Command.SUBMIT_JOB)
_SUCCESS = int(Command.SUCCESS)
_PING = int(Command.PING)
_PONG = int(Command.PONG)


# -- errors ---------------------------------------------------------------------


class ClientError(PeriodicError):
    """Base class of the errors a :class:`Client` or worker raises."""


class NotConnected(ClientError, ConnectionError):
    """The server could not be reached (connect refused, no such socket...)."""


class ConnectionLost(ClientError, ConnectionError):
    """The connection closed while the request was in flight."""


class RequestTimeout(ClientError, TimeoutError):
    """No reply within the request's timeout."""


class NoWorkerError(ClientError):
    """RUN_JOB / RECV_DATA: no worker has registered the func (or the server
    refused the request for lack of permission: same reply on the wire)."""


class RequestRejected(ClientError):
    """The server answered with an unexpected command (e.g. ``NO_WORKER`` for a
    request the identity may not make)."""

    def __init__(self, command: int, payload: bytes = b"") -> None:
        try:
            cname = Command(command).name
        except ValueError:
            cname = str(command)
        super().__init__(f"unexpected reply {cname}")
        self.command = command
        self.payload = payload


# -- addresses ------------------------------------------------------------------


class Address(NamedTuple):
    """A parsed address: ``("tcp", host, port)`` or ``("unix", path, 0)``."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def resolve_address(address: str | None = None) -> str:
    """``address``, else ``$PERIODIC_PORT``, else ``unix:///tmp/periodic.sock``.

    An empty environment variable counts as unset.
    """
    if address:
        return address
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def parse_address(address: str) -> Address:
    """Parse ``tcp://HOST:PORT``, ``tcp://[V6]:PORT``, ``unix://PATH``, a bare
    ``HOST:PORT`` (TCP, like aio-periodic) or a bare path (unix socket).

    :raises ValueError: for anything else.
    """
    if address.startswith("tcp://") or (
        "://" not in address and "/" not in address and ":" in address
    ):
        rest = address[6:] if address.startswith("tcp://") else address
        host, sep, port_s = rest.rpartition(":")
        if not sep or not port_s.isdigit() or not 0 < int(port_s) <= 65535:
            raise ValueError(f"bad tcp address {address!r} (want tcp://HOST:PORT)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return Address("tcp", host or "127.0.0.1", int(port_s))
    if address.startswith("unix://"):
        path = address[7:]
    elif "://" in address:
        raise ValueError(f"unsupported address {address!r} (tcp:// or unix://)")
    else:
        path = address
    if not path:
        raise ValueError(f"bad unix address {address!r}")
    return Address("unix", path, 0)


def to_bytes(value: BytesLike) -> bytes:
    """Text as UTF-8, any bytes-like as ``bytes``."""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)


def _now() -> int:
    return int(time.time())


# -- the connection ---------------------------------------------------------------


#: bytes a job adds to a job list besides its func, name and workload (an
#: upper bound: length prefixes, sched_at, count, timeout)
_JOB_OVERHEAD = 64


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


class _Sink:
    """Receives every frame for one msgid until it removes itself (streams,
    batches, worker grab slots)."""

    __slots__ = ()

    def feed(self, packet: Packet) -> None:
        raise NotImplementedError

    def lost(self, exc: BaseException) -> None:
        """The connection went away."""


class _Protocol(asyncio.Protocol):
    """One TCP / unix connection: parse frames, batch writes."""

    def __init__(self, owner: Connection) -> None:
        self._owner = owner
        self._parser = Parser(
            requests=False, registration=True, max_frame=owner.max_frame
        )
        self.transport: asyncio.Transport | None = None
        self.wbuf = bytearray()
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self._paused: asyncio.Future[None] | None = None

    # asyncio callbacks ----------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport: no isinstance
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._owner._last_rx = self._loop.time()
        try:
            packets = self._parser.feed(data)
        except ProtocolError as exc:
            logger.warning("bad frame from server: %s", exc)
            for pkt in getattr(exc, "packets", ()):
                self._owner._dispatch(pkt)
            if self.transport is not None:
                self.transport.abort()
            return
        # fast path: a reply resolving a plain request future
        owner = self._owner
        waiters = owner._waiters
        deadlines = owner._deadlines
        for pkt in packets:
            msgid = pkt.msgid
            w = waiters.get(msgid)  # type: ignore[arg-type]
            if w.__class__ is _Future:
                del waiters[msgid]  # type: ignore[arg-type]
                deadlines.pop(msgid, None)  # type: ignore[arg-type]
                if not w.done():
                    w.set_result(pkt)
            else:
                owner._dispatch(pkt)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)
        if not self.closed.done():
            self.closed.set_result(None)
        self._owner._connection_lost(self, exc)

    def pause_writing(self) -> None:
        if self._paused is None or self._paused.done():
            self._paused = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._paused is not None and not self._paused.done():
            self._paused.set_result(None)

    # writing ---------------------------------------------------------------------
    def send(self, msgid: int, command: int, payload: bytes = b"") -> None:
        encode_request_into(self.wbuf, msgid, command, payload)
        if len(self.wbuf) >= _FLUSH_AT:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def send_raw(self, data: bytes) -> None:
        self.wbuf += data
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        if self.wbuf and self.transport is not None:
            self.transport.write(bytes(self.wbuf))
        self.wbuf.clear()

    async def drain(self) -> None:
        """Wait while the transport's write buffer is above its high mark."""
        paused = self._paused
        if paused is not None and not paused.done():
            await paused


class Connection:
    """Shared machinery of :class:`Client` and the worker: one connection with
    message-id allocation, pending-reply futures, batched writes, keepalive
    pings and automatic reconnect.

    :param address: ``tcp://HOST:PORT``, ``unix://PATH``, ``HOST:PORT`` or a
        path; default ``$PERIODIC_PORT``, else ``unix:///tmp/periodic.sock``.
    :param name: identity name (registration type 3/4); needs ``token``.
    :param token: identity token.
    :param timeout: default per-request timeout in seconds.
    :param reconnect: re-open the connection after a loss.
    :param reconnect_delay: seconds between reconnect attempts.
    :param keepalive: ping after this many idle seconds (0: never); the
        connection is dropped (and re-opened) when the ping gets no answer.
    :param rsa: open every connection through the RSA/AES transport
        (:class:`~periodic_fast.rsa_transport.RSAConfig`); the keys are read
        here (:class:`ValueError` for a bad key file,
        :class:`~periodic_fast.rsa_transport.RSAUnavailable` without the
        ``cryptography`` package).
    """

    _client_type: int = ClientType.CLIENT

    def __init__(
        self,
        address: str | None = None,
        *,
        name: BytesLike | None = None,
        token: BytesLike | None = None,
        timeout: float = 10.0,
        reconnect: bool = True,
        reconnect_delay: float = 1.0,
        keepalive: float = 30.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        rsa: RSAConfig | None = None,
    ) -> None:
        if (name is None) != (token is None):
            raise ValueError("name and token must be given together")
        #: the loaded RSA keys (None: a plain connection, the fast path)
        self._rsa: ClientKeys | None = rsa.load() if rsa is not None else None
        self.address = resolve_address(address)
        self._addr = parse_address(self.address)
        self._identity = (
            (to_bytes(name), to_bytes(token))
            if name is not None and token is not None
            else None
        )
        self.timeout = timeout
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.keepalive = keepalive
        self.max_frame = max_frame
        self._proto: _Protocol | None = None
        self._waiters: dict[int, asyncio.Future[Packet] | _Sink] = {}
        # msgid -> (loop deadline, command, timeout) of every pending future;
        # one timer (_sweep) expires them instead of a call_later per request
        self._deadlines: dict[int, tuple[float, int, float]] = {}
        self._deadlines_sorted = True  # insertion order == deadline order
        self._deadline_last = 0.0
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._sweep_at = 0.0
        self._last_msgid = 0
        self._closing = False
        self._connect_lock: asyncio.Lock | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._last_rx = 0.0
        self._connected_event: asyncio.Event | None = None
        #: the 4-byte connection id the server sent (None before it arrives)
        self.connection_id: int | None = None

    # life cycle ---------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        """True while a connection is open."""
        return self._proto is not None and self._proto.transport is not None

    def _event(self) -> asyncio.Event:
        if self._connected_event is None:
            self._connected_event = asyncio.Event()
        return self._connected_event

    async def connect(self) -> None:
        """Open the connection now (requests also open it on demand).

        :raises NotConnected: the server cannot be reached.
        """
        self._closing = False
        await self._ensure()

    async def _ensure(self) -> _Protocol:
        proto = self._proto
        if proto is not None and proto.transport is not None:
            return proto
        if self._closing:
            raise NotConnected("client is closed")
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            proto = self._proto
            if proto is not None and proto.transport is not None:
                return proto
            return await self._open()

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        addr = self._addr
        proto = _Protocol(self)
        # the RSA/AES transport wraps the protocol; plain connections skip it
        secure: ClientSecureProtocol | None = None
        outer: asyncio.Protocol = proto
        if self._rsa is not None:
            outer = secure = self._rsa.protocol(proto, self.address)
        try:
            if addr.scheme == "tcp":
                await loop.create_connection(lambda: outer, addr.host, addr.port)
            else:
                await loop.create_unix_connection(lambda: outer, addr.host)
        except OSError as exc:
            raise NotConnected(f"cannot connect to {self.address}: {exc}") from exc
        if secure is not None:  # before the registration frame may leave
            await secure.wait_ready(self.timeout)
        ctype = self._client_type
        if self._identity is not None:
            ctype += 2  # CLIENT 1 -> AUTH_CLIENT 3, WORKER 2 -> AUTH_WORKER 4
            proto.send_raw(encode_registration(ctype, *self._identity))
        else:
            proto.send_raw(encode_registration(ctype))
        self._proto = proto
        self._last_rx = loop.time()
        if self._sweep_handle is not None and not self._deadlines:
            # a fresh connection (perhaps on another loop): re-arm on this one
            self._sweep_handle.cancel()
            self._sweep_handle = None
        if self.keepalive > 0 and (
            self._keepalive_task is None or self._keepalive_task.done()
        ):
            self._keepalive_task = loop.create_task(self._keepalive_loop())
        self._event().set()
        await self._on_connected()
        return proto

    async def _on_connected(self) -> None:
        """Hook run after every (re)connect (the worker re-registers here)."""

    def _on_disconnected(self) -> None:
        """Hook run after every connection loss."""

    def _connection_lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is not self._proto:
            return
        self._proto = None
        registered = self.connection_id is not None
        self.connection_id = None
        self._event().clear()
        if registered:
            err = ConnectionLost(f"connection to {self.address} lost")
        else:  # an auth-file server refusing the identity, a connection limit
            why = (
                f"identity {self._identity[0].decode(errors='replace')!r} refused"
                if self._identity is not None
                else "an identity (name and token) required"
            )
            if self._rsa is None:
                why += ", the RSA transport required"
            else:
                why += f", RSA mode {self._rsa.mode.name} not allowed"
            err = ConnectionLost(
                f"{self.address} closed the connection before the registration "
                f"reply ({why}, or too many connections?)"
            )
        if exc is not None:
            err.__cause__ = exc
        waiters = self._waiters
        self._deadlines.clear()
        for msgid, w in list(waiters.items()):
            if isinstance(w, _Sink):
                w.lost(err)
            else:
                del waiters[msgid]
                if not w.done():
                    w.set_exception(err)
        self._on_disconnected()
        if not self._closing and self.reconnect:
            self._start_reconnect()

    def _start_reconnect(self) -> None:
        if self._reconnect_task is None or self._reconnect_task.done():
            loop = asyncio.get_running_loop()
            self._reconnect_task = loop.create_task(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        while not self._closing and not self.connected:
            await asyncio.sleep(self.reconnect_delay)
            if self._closing:
                return
            try:
                await self._ensure()
                logger.info("reconnected to %s", self.address)
            except NotConnected as exc:
                logger.debug("reconnect failed: %s", exc)
            except ClientError as exc:  # e.g. a re-register request timed out
                logger.warning("reconnect hook failed: %s", exc)

    async def _keepalive_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await asyncio.sleep(min(self.keepalive, 5.0))
            proto = self._proto
            if proto is None or proto.transport is None:
                continue
            if loop.time() - self._last_rx < self.keepalive:
                continue
            try:
                await self._request(Command.PING, timeout=min(self.timeout, 10.0))
            except ClientError:
                if proto.transport is not None:
                    logger.warning("no answer to PING from %s", self.address)
                    proto.transport.abort()

    async def close(self) -> None:
        """Close the connection for good (no reconnect); in-flight requests
        raise :class:`ConnectionLost`."""
        self._closing = True
        for task in (self._reconnect_task, self._keepalive_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._reconnect_task = self._keepalive_task = None
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        proto = self._proto
        if proto is not None and proto.transport is not None:
            proto.flush()
            proto.transport.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(proto.closed), 2.0)

    async def __aenter__(self) -> Any:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Wait until a connection is open (after a loss, for the reconnect)."""
        await asyncio.wait_for(self._event().wait(), timeout)

    # messages --------------------------------------------------------------------
    def _next_msgid(self) -> int:
        waiters = self._waiters
        msgid = self._last_msgid
        while True:
            msgid += 1
            if msgid > _MAX_MSGID:
                msgid = 1
            if msgid not in waiters:
                self._last_msgid = msgid
                return msgid

    def _dispatch(self, pkt: Packet) -> None:
        msgid = pkt.msgid
        if msgid is None:  # registration reply: DATA + connection id
            self.connection_id = int.from_bytes(pkt.payload, "big")
            return
        w = self._waiters.get(msgid)
        if w is None:
            if pkt.command == Command.JOB_ASSIGN:
                self._unexpected_assign(pkt)
            else:
                logger.debug("reply for unknown msgid %d dropped", msgid)
            return
        if isinstance(w, _Sink):
            w.feed(pkt)
            return
        del self._waiters[msgid]
        self._deadlines.pop(msgid, None)
        if not w.done():
            w.set_result(pkt)

    def _unexpected_assign(self, pkt: Packet) -> None:
        """A JOB_ASSIGN on a msgid that is no grab slot (never for clients)."""
        proto = self._proto
        if proto is not None and pkt.msgid is not None:
            proto.send(pkt.msgid, Command.JOB_UNASSIGNED)

    async def _request(
        self, command: int, payload: bytes = b"", timeout: float | None = None
    ) -> Packet:
        """Send one request, wait for the frame with the same msgid."""
        if timeout is None:
            timeout = self.timeout
        proto = self._proto
        if proto is None or proto.transport is None:
            try:
                proto = await asyncio.wait_for(self._ensure_or_wait(), timeout)
            except asyncio.TimeoutError:
                raise RequestTimeout(
                    f"not connected to {self.address} after {timeout:g} s"
                ) from None
        fut = self._start(proto, command, payload, timeout)
        msgid = self._last_msgid
        try:
            return await fut
        except asyncio.CancelledError:
            self._forget(msgid, fut)
            raise

    def _start(
        self, proto: _Protocol, command: int, payload: bytes, timeout: float
    ) -> asyncio.Future[Packet]:
        """Queue one request on ``proto``; return the future of its reply.

        The hot path of every request: no task, no timer handle.  The
        deadline goes into ``_deadlines`` (checked by :meth:`_sweep`); the
        reply resolves the future in ``data_received``.  The msgid used is
        ``self._last_msgid`` right after the call.
        """
        waiters = self._waiters
        msgid = self._last_msgid + 1
        if msgid > _MAX_MSGID or msgid in waiters:
            msgid = self._next_msgid()
        else:
            self._last_msgid = msgid
        loop = proto._loop
        fut: asyncio.Future[Packet] = loop.create_future()
        waiters[msgid] = fut
        # proto.send, inlined (hot path)
        wbuf = proto.wbuf
        encode_request_into(wbuf, msgid, command, payload)
        if len(wbuf) >= _FLUSH_AT:
            proto.flush()
        elif not proto._flush_scheduled:
            proto._flush_scheduled = True
            loop.call_soon(proto.flush)
        deadline = loop.time() + timeout
        deadlines = self._deadlines
        if not deadlines:
            self._deadlines_sorted = True
        elif deadline < self._deadline_last:
            self._deadlines_sorted = False
        self._deadline_last = deadline
        deadlines[msgid] = (deadline, command, timeout)
        if self._sweep_handle is None or deadline < self._sweep_at:
            self._arm_sweep(loop, deadline)
        return fut

    def _arm_sweep(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
        self._sweep_at = when
        self._sweep_handle = loop.call_at(when, self._sweep)

    def _sweep(self) -> None:
        """Fail the requests whose deadline passed with :class:`RequestTimeout`;
        re-arm for the earliest remaining deadline.  While every pending
        request has the same timeout the dict is in deadline order and the
        scan stops at the first live entry."""
        self._sweep_handle = None
        deadlines = self._deadlines
        if not deadlines:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        in_order = self._deadlines_sorted
        expired: list[int] = []
        earliest = None
        for msgid, entry in deadlines.items():
            when = entry[0]
            if when > now + 0.001:  # timers may fire a hair early
                if in_order:
                    earliest = when
                    break
                if earliest is None or when < earliest:
                    earliest = when
            else:
                expired.append(msgid)
        waiters = self._waiters
        for msgid in expired:
            _, command, timeout = deadlines.pop(msgid)
            w = waiters.get(msgid)
            if w is None or isinstance(w, _Sink):
                continue
            del waiters[msgid]
            if not w.done():
                try:
                    cname = Command(command).name
                except ValueError:
                    cname = str(command)
                w.set_exception(
                    RequestTimeout(f"no reply to {cname} within {timeout:g} s")
                )
        if earliest is not None:
            self._arm_sweep(loop, earliest)

    def _forget(self, msgid: int, fut: asyncio.Future[Packet]) -> None:
        """Drop a request whose caller went away (cancelled)."""
        if self._waiters.get(msgid) is fut:
            del self._waiters[msgid]
            self._deadlines.pop(msgid, None)

    async def _ensure_or_wait(self) -> _Protocol:
        """Open a connection; while a reconnect loop is running, wait for it."""
        while True:
            if self._closing:
                raise NotConnected("client is closed")
            try:
                return await self._ensure()
            except NotConnected:
                if not self.reconnect or self._reconnect_task is None:
                    raise
                await self._event().wait()

    def _send_nowait(self, command: int, payload: bytes = b"") -> bool:
        """Fire-and-forget (JOB_ASSIGNED, SHUTDOWN); False when disconnected."""
        proto = self._proto
        if proto is None or proto.transport is None:
            return False
        proto.send(self._next_msgid(), command, payload)
        return True


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
    :class:`ConnectionLost` when the connection drops mid-request.
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
        for job in jobs:
            msgid = self._next_msgid()
            waiters[msgid] = batch
            batch.pending += 1
            send(msgid, submit, encode_job(job))
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
        st: _Stream | None = None
        reader: asyncio.Task[None] | None = None
        if stream is not None:
            st = await self._subscribe(job.func, job.name, wait)
            reader = asyncio.get_running_loop().create_task(_pump(st, stream, wait))
        try:
            pkt = await self._request(Command.RUN_JOB, encode_job(job), wait)
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
    ) -> bool:
        """Submit a job list (a list of jobs, or DUMP bytes) with LOAD.

        Large lists go out as several LOAD frames of at most ``chunk`` jobs
        and about ``chunk_bytes`` bytes each (big workloads would otherwise
        make a frame larger than the server accepts); a job larger than
        ``chunk_bytes`` on its own gets a frame of its own.
        """
        items = decode_job_list(jobs) if isinstance(jobs, bytes) else list(jobs)
        ok = True
        for part in _load_parts(items, chunk, chunk_bytes):
            pkt = await self._request(Command.LOAD, encode_job_list(part), timeout)
            ok = ok and pkt.command == Command.SUCCESS
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
