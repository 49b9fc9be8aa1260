"""One connection to a Periodic server: the machinery under the client and the worker.

:class:`Connection` owns one socket (through :class:`_Protocol`, an
:class:`asyncio.Protocol` around the compiled codec): message-id allocation,
the futures of pending replies (one timer expires them all), writes batched
per loop turn, keepalive pings, automatic reconnect, and the optional RSA/AES
transport.  Frames for a msgid that has a :class:`_Sink` (a stream, a submit
window, a worker grab slot) go to that sink instead of a future.

:class:`~periodic_fast.client.Client` and :class:`~periodic_fast.worker.Worker`
subclass :class:`Connection`; it stays importable from
:mod:`periodic_fast.client`.  Layering: L0, the codec, the job records and
asyncio only (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from ._address import BytesLike, parse_address, resolve_address, to_bytes
from ._sockowner import socket_path_problem
from .codec import Packet, Parser, encode_registration, encode_request_into
from .constants import DEFAULT_MAX_FRAME, ClientType, Command
from .errors import (
    ClientError,
    ConnectionLost,
    NotConnected,
    ProtocolError,
    RequestTimeout,
)

if TYPE_CHECKING:
    from ._rsa_client import ClientKeys, ClientSecureProtocol
    from .rsa_transport import RSAConfig

__all__ = ["Connection"]

# the client's log, whichever module of it writes
logger = logging.getLogger("periodic_fast.client")

_MAX_MSGID = 0xFFFFFF00  # aio-periodic's wrap point; FFFFFF00+ stay unused
_FLUSH_AT = 256 * 1024  # write at once when this much is queued
_Future = asyncio.Future  # the exact type loop.create_future() returns


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

    @property
    def reconnecting(self) -> bool:
        """True while the background reconnect loop runs (the server went
        away and has not answered again yet)."""
        task = self._reconnect_task
        return task is not None and not task.done() and not self.connected

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
        if addr.scheme == "unix" and (problem := socket_path_problem(addr.host)):
            raise NotConnected(f"refusing {self.address}: {problem}")
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
