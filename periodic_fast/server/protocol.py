"""One :class:`asyncio.Protocol` per connection, and the hub they share.

Life of a connection (protocol.md 1.2-1.9):

1. ``connection_made``: ``TCP_NODELAY`` (and best-effort ``SO_KEEPALIVE``) on TCP,
   write-buffer limits, and a registration timer.
2. The first bytes are *sniffed*: they must start with a frame magic, else the
   connection is closed with "bad magic" (:meth:`ServerProtocol._sniff` is the
   one place another protocol, e.g. HTTP, can be recognised later).
3. A :class:`~periodic_fast.codec.Parser` in registration + resync mode turns
   bytes into packets.  The registration frame gets a connection id, unique
   among live connections; the reply is queued *first*, then
   ``scheduler.connect`` runs.  Every later packet goes to ``scheduler.handle``.
4. Output: the scheduler's ``send`` appends to the connection's pending list;
   the :class:`Hub` flushes every dirty connection once per event-loop turn
   with a single ``transport.write``.
5. Any :class:`~periodic_fast.errors.ProtocolError` (from the codec or from the
   scheduler decoding a payload) closes that connection only, after the
   packets completed before the error have been handled.

Flow control: when the transport's write buffer passes its high-water mark the
connection stops reading from the peer until the buffer drains; a peer whose
unread output exceeds ``max_output`` bytes is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from typing import Protocol, cast

from ..codec import Packet, Parser, decode_identity, encode_registration_reply
from ..constants import (
    DEFAULT_MAX_FRAME,
    MAGIC_REQUEST,
    MAGIC_RESPONSE,
    ClientType,
)
from ..errors import ProtocolError

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_REGISTRATION_TIMEOUT",
    "Hub",
    "SchedulerLike",
    "ServerProtocol",
]

log = logging.getLogger("periodic_fast.server")

#: Seconds a new connection may take to send its registration frame.
DEFAULT_REGISTRATION_TIMEOUT = 30.0
#: Unread output (bytes) after which a peer is considered dead and dropped.
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024
#: Transport write-buffer high-water mark: above it we stop reading that peer.
WRITE_HIGH_WATER = 1024 * 1024
#: ...and resume reading once the buffer is below this.
WRITE_LOW_WATER = 256 * 1024

_MAGICS = (MAGIC_REQUEST, MAGIC_RESPONSE)
_U32_MASK = 0xFFFFFFFF
# pause/resume_reading may raise on transports that are closing (uvloop) or
# that do not support it; neither matters to us.
_PAUSE_RESUME_ERRORS = (RuntimeError, NotImplementedError, AttributeError)


class SchedulerLike(Protocol):
    """The part of :class:`periodic_fast.scheduler.Scheduler` the server uses.

    See docs/architecture.md, "The seam between the server and the scheduler".
    """

    def connect(
        self,
        conn_id: int,
        client_type: int,
        identity: tuple[bytes, bytes] | None,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        now: float,
    ) -> None: ...

    def disconnect(self, conn_id: int, now: float) -> None: ...

    def handle(
        self, conn_id: int, msgid: int, command: int, payload: bytes, now: float
    ) -> None: ...

    def tick(self, now: float) -> None: ...

    def next_wakeup(self) -> float | None: ...


class Hub:
    """State shared by every connection of one server.

    Owns the scheduler reference, the live connections, connection-id
    allocation and the once-per-loop-turn output flush.
    """

    __slots__ = (
        "_dirty",
        "_flush_scheduled",
        "_next_id",
        "clock",
        "connections",
        "loop",
        "max_frame",
        "max_output",
        "on_input",
        "protocols",
        "registration_timeout",
        "scheduler",
    )

    def __init__(
        self,
        scheduler: SchedulerLike,
        loop: asyncio.AbstractEventLoop,
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        registration_timeout: float = DEFAULT_REGISTRATION_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.scheduler = scheduler
        self.loop = loop
        #: wall clock (float seconds) for every "now" handed to the scheduler
        self.clock = clock
        self.max_frame = max_frame
        self.registration_timeout = registration_timeout
        self.max_output = max_output
        #: registered connections by connection id
        self.connections: dict[int, ServerProtocol] = {}
        #: every open connection, registered or not
        self.protocols: set[ServerProtocol] = set()
        self._dirty: list[ServerProtocol] = []
        self._flush_scheduled = False
        self._next_id = 0
        #: called after each batch of input was handled (the server re-arms
        #: its timer if the scheduler now has earlier work)
        self.on_input: Callable[[], None] | None = None

    def factory(self) -> ServerProtocol:
        """Protocol factory for ``loop.create_server`` / ``create_unix_server``."""
        return ServerProtocol(self)

    def allocate_id(self, proto: ServerProtocol) -> int:
        """A u32 connection id not used by any live connection."""
        conns = self.connections
        cid = self._next_id
        while True:
            cid = (cid + 1) & _U32_MASK
            if cid and cid not in conns:
                break
        self._next_id = cid
        conns[cid] = proto
        return cid

    def mark_dirty(self, proto: ServerProtocol) -> None:
        """``proto`` has pending output: flush it at the end of this loop turn."""
        self._dirty.append(proto)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every dirty connection's pending frames (one write each)."""
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        for proto in dirty:
            proto.flush()

    def close_all(self) -> None:
        """Close every connection (server shutdown); output queued so far is sent."""
        for proto in list(self.protocols):
            proto.drop(None)


class ServerProtocol(asyncio.Protocol):
    """One client or worker connection (see the module docstring)."""

    __slots__ = (
        "_closing",
        "_conn_id",
        "_head",
        "_hub",
        "_out",
        "_parser",
        "_peer",
        "_reg_timer",
        "_send",
        "_transport",
        "_write_paused",
    )

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._transport: asyncio.Transport | None = None
        self._parser: Parser | None = None
        self._head = b""  # first bytes, until the sniff decides
        self._out: list[bytes] = []
        self._conn_id: int | None = None
        self._closing = False
        self._write_paused = False
        self._reg_timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        self._send = self._queue  # bound once; handed to the scheduler

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, never assert
        self._transport = cast(asyncio.Transport, transport)
        hub = self._hub
        hub.protocols.add(self)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            except OSError:  # pragma: no cover - best effort
                pass
            peer = transport.get_extra_info("peername")
            if isinstance(peer, tuple) and len(peer) >= 2:
                self._peer = f"{peer[0]}:{peer[1]}"
        else:
            name = transport.get_extra_info("sockname")
            self._peer = f"unix:{name}" if name else "unix"
        self._transport.set_write_buffer_limits(
            high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER
        )
        if hub.registration_timeout > 0:
            self._reg_timer = hub.loop.call_later(
                hub.registration_timeout, self._registration_timeout
            )

    def data_received(self, data: bytes) -> None:
        if self._closing:
            return
        parser = self._parser
        if parser is None:
            parser = self._sniff(data)
            if parser is None:
                return
            data = self._head
            self._head = b""
        try:
            packets = parser.feed(data)
        except ProtocolError as exc:
            self._handle_packets(getattr(exc, "packets", None) or ())
            self.drop(f"protocol error: {exc.__class__.__name__}: {exc}")
            return
        if packets:
            self._handle_packets(packets)
            on_input = self._hub.on_input
            if on_input is not None:
                on_input()

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost does the clean-up

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._closing:
            self._closing = True
            self._out.clear()
            self._cancel_timer()
            self._release(defer=False)
        self._hub.protocols.discard(self)

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._transport is not None:
            try:
                self._transport.pause_reading()
            except _PAUSE_RESUME_ERRORS:  # pragma: no cover
                pass

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            try:
                self._transport.resume_reading()
            except _PAUSE_RESUME_ERRORS:  # pragma: no cover
                pass

    # -- input -------------------------------------------------------------------

    def _sniff(self, data: bytes) -> Parser | None:
        """Decide what the peer speaks from its first bytes.

        Returns the parser to use (the bytes so far are in ``self._head``), or
        None when more bytes are needed or the connection was dropped.  Another
        protocol (HTTP) can be added here as one more branch.
        """
        head = self._head + data
        self._head = head
        n = min(len(head), 4)
        if any(head[:n] == m[:n] for m in _MAGICS):
            if n < 4:
                return None
            parser = Parser(
                requests=True,
                registration=True,
                resync=True,
                max_frame=self._hub.max_frame,
            )
            self._parser = parser
            return parser
        self._head = b""
        self.drop(f"bad magic {head[:4]!r}", abort=True)
        return None

    def _handle_packets(self, packets: Iterable[Packet]) -> None:
        scheduler = self._hub.scheduler
        cid = self._conn_id
        now = self._hub.clock()  # one clock read per batch of input
        for packet in packets:
            if self._closing:
                return
            msgid = packet.msgid
            if cid is None:
                cid = self._register(packet.command, packet.payload, now)
                if cid is None:
                    return
                continue
            assert msgid is not None  # only the registration frame has none
            try:
                scheduler.handle(cid, msgid, packet.command, packet.payload, now)
            except ProtocolError as exc:
                self.drop(f"malformed payload: {exc.__class__.__name__}: {exc}")
                return
            except Exception:
                log.exception(
                    "%s: internal error handling command %s", self._peer, packet.command
                )
                self.drop("internal error")
                return

    def _register(self, client_type: int, payload: bytes, now: float) -> int | None:
        self._cancel_timer()
        identity: tuple[bytes, bytes] | None = None
        if client_type in (ClientType.AUTH_CLIENT, ClientType.AUTH_WORKER):
            try:
                identity = decode_identity(payload)
            except ProtocolError as exc:  # pragma: no cover - parser checked it
                self.drop(f"bad registration: {exc}")
                return None
        hub = self._hub
        cid = hub.allocate_id(self)
        self._conn_id = cid
        self._queue(encode_registration_reply(cid))
        try:
            hub.scheduler.connect(
                cid, client_type, identity, self._send, self.close, now
            )
        except Exception:
            log.exception("%s: internal error in connect", self._peer)
            self.drop("internal error")
            return None
        log.debug("%s: registered as %d (type %d)", self._peer, cid, client_type)
        return cid

    def _registration_timeout(self) -> None:
        self._reg_timer = None
        if self._conn_id is None and not self._closing:
            self.drop("registration timeout", abort=True)

    def _cancel_timer(self) -> None:
        timer = self._reg_timer
        if timer is not None:
            self._reg_timer = None
            timer.cancel()

    # -- output ------------------------------------------------------------------

    def _queue(self, frame: bytes) -> None:
        """The ``send`` callable: queue one encoded frame for this loop turn."""
        if self._closing:
            return
        out = self._out
        if not out:
            self._hub.mark_dirty(self)
        out.append(frame)

    def flush(self) -> None:
        """Write the pending frames with one ``transport.write``."""
        out = self._out
        if not out or self._closing:
            return
        self._out = []
        transport = self._transport
        assert transport is not None
        if transport.get_write_buffer_size() > self._hub.max_output:
            self.drop("peer does not read its output", abort=True)
            return
        transport.write(out[0] if len(out) == 1 else b"".join(out))

    # -- closing -----------------------------------------------------------------

    @property
    def conn_id(self) -> int | None:
        """The connection id, once registered."""
        return self._conn_id

    @property
    def peer(self) -> str:
        """Printable peer address, for logs."""
        return self._peer

    def close(self) -> None:
        """The ``close`` callable handed to the scheduler (keepalive, assign-wait).

        Pending output is sent; the scheduler's ``disconnect`` runs on the next
        loop turn (never re-entrantly from inside the scheduler).
        """
        if not self._closing:
            log.info("%s: closed by the scheduler", self._peer)
            self._shutdown(abort=False, defer=True)

    def drop(self, reason: str | None, *, abort: bool = False) -> None:
        """Close this connection (logs ``reason`` unless None) and disconnect it."""
        if self._closing:
            return
        if reason is not None:
            log.warning("%s: closing: %s", self._peer, reason)
        self._shutdown(abort=abort, defer=False)

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent output."""
        if self._transport is not None:
            self._transport.abort()
        if not self._closing:
            self._shutdown(abort=True, defer=False)

    def _shutdown(self, *, abort: bool, defer: bool) -> None:
        transport = self._transport
        out = self._out
        self._closing = True
        self._out = []
        self._cancel_timer()
        if transport is not None and not abort:
            # send what is queued, unless the peer already sits on too much
            if transport.get_write_buffer_size() > self._hub.max_output:
                abort = True
            elif out:
                transport.write(out[0] if len(out) == 1 else b"".join(out))
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()
        self._release(defer=defer)

    def _release(self, *, defer: bool) -> None:
        cid = self._conn_id
        if cid is None:
            return
        self._conn_id = None
        if defer:
            self._hub.loop.call_soon(self._disconnect, cid)
        else:
            self._disconnect(cid)

    def _disconnect(self, cid: int) -> None:
        # the id stays reserved until the scheduler has forgotten it
        conns = self._hub.connections
        if conns.get(cid) is self:
            del conns[cid]
        try:
            self._hub.scheduler.disconnect(cid, self._hub.clock())
        except Exception:  # pragma: no cover - scheduler bug
            log.exception("%s: internal error in disconnect", self._peer)
