"""One :class:`asyncio.Protocol` per binary connection.

Life of a connection (protocol.md 1.2-1.9):

1. ``connection_made``: ``TCP_NODELAY`` (and best-effort ``SO_KEEPALIVE``) on TCP,
   write-buffer limits, and a registration timer.
2. The first bytes are *sniffed*: they must start with a frame magic, else the
   connection is closed with "bad magic" (:meth:`ServerProtocol._sniff` is the
   one place another protocol, e.g. HTTP, can be recognised later).  The
   registration frame's length is checked from its header
   (``max_registration``) before any of its body is buffered.
3. A :class:`~periodic_fast.codec.Parser` in registration + resync mode turns
   bytes into packets.  The registration frame gets a connection id, unique
   among live connections; the reply is queued *first*, then
   ``scheduler.connect`` runs.  Every later packet goes to ``scheduler.handle``.
4. Output: the scheduler's ``send`` appends to the connection's pending list;
   the :class:`~.hub.Hub` flushes every dirty connection once per event-loop
   turn with a single ``transport.write``.
5. Any :class:`~periodic_fast.errors.ProtocolError` (from the codec or from the
   scheduler decoding a payload) closes that connection only, after the
   packets completed before the error have been handled.
6. ``connection_lost`` breaks every reference cycle through the connection,
   so reference counting frees it (and its partial frame) at once.

Flow control: when the transport's write buffer passes its high-water mark the
connection stops reading from the peer until the buffer drains.  Output is
counted as it is queued: once one loop turn's output of a connection passes
:data:`WRITE_HIGH_WATER`, its later pipelined requests wait, parsed but not
run (reading paused), until that output has drained; a peer whose queued and
unread output would exceed ``max_output`` bytes is dropped at the send that
crosses it (a fan-out to many waiters, a large DUMP), not a loop turn later.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from collections.abc import Iterable
from typing import cast

from ..codec import (
    Packet,
    Parser,
    decode_identity,
    encode_registration_reply,
)
from ..constants import (
    MAGIC_REQUEST,
    MAGIC_RESPONSE,
    ClientType,
    Command,
)
from ..errors import ProtocolError
from .hub import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_REGISTRATION,
    DEFAULT_REGISTRATION_TIMEOUT,
    Hub,
)
from .logbound import clip
from .views import HttpSide, SchedulerLike

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_REGISTRATION",
    "DEFAULT_REGISTRATION_TIMEOUT",
    "Hub",
    "SchedulerLike",
    "ServerProtocol",
    "new_protocol",
]

log = logging.getLogger("periodic_fast.server")

#: Transport write-buffer high-water mark: above it we stop reading that peer.
WRITE_HIGH_WATER = 1024 * 1024
#: ...and resume reading once the buffer is below this.
WRITE_LOW_WATER = 256 * 1024

_MAGICS = (MAGIC_REQUEST, MAGIC_RESPONSE)
_JOB_ASSIGN = int(Command.JOB_ASSIGN)
_GRAB_JOB = int(Command.GRAB_JOB)
_PING = int(Command.PING)
_U32 = struct.Struct(">I")
# pause/resume_reading may raise on transports that are closing (uvloop) or
# that do not support it; neither matters to us.
_PAUSE_RESUME_ERRORS = (RuntimeError, NotImplementedError, AttributeError)


def new_protocol(hub: Hub) -> asyncio.Protocol:
    """A new connection's protocol, for ``loop.create_server`` (wrapped in
    the RSA/AES transport when ``hub.secure`` is set)."""
    if hub.secure is not None:
        from .secure import SecureProtocol  # noqa: PLC0415  # optional dep

        return SecureProtocol(ServerProtocol(hub), hub.secure)
    return ServerProtocol(hub)


def _is_push(frame: bytes) -> bool:
    """True when ``frame`` is exactly one JOB_ASSIGN frame."""
    return (
        len(frame) > 16
        and frame[16] == _JOB_ASSIGN
        and _U32.unpack_from(frame, 4)[0] + 12 == len(frame)
    )


def _discard(frame: bytes) -> None:
    """The ``send`` of a closed connection: output goes nowhere."""


def _peer_name(transport: asyncio.BaseTransport) -> str:
    """Printable peer address of a fresh transport, for logs."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "unix"


class ServerProtocol(asyncio.Protocol):
    """One client or worker connection (see the module docstring)."""

    __slots__ = (
        "_close_when_released",
        "_closing",
        "_conn_id",
        "_deferred",
        "_free_out",
        "_grabbing",
        "_head",
        "_held_bytes",
        "_held_turns",
        "_hub",
        "_out",
        "_parser",
        "_peer",
        "_pending",
        "_reg_timer",
        "_room",
        "_send",
        "_stash",
        "_transport",
        "_write_paused",
        "__weakref__",  # tests check that a closed connection is freed
    )

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._transport: asyncio.Transport | None = None
        self._parser: Parser | None = None
        self._head = b""  # first bytes, until the sniff decides
        self._out: list[bytes] = []
        # with a deferred store: frames that confirm no state change, which
        # need not wait for a commit (JOB_ASSIGN pushes and the output of a
        # GRAB_JOB, while _grabbing), kept apart from _out
        self._deferred = hub.deferred
        self._free_out: list[bytes] = []
        self._grabbing = False
        self._conn_id: int | None = None
        self._closing = False
        self._write_paused = False
        self._reg_timer: asyncio.TimerHandle | None = None
        self._peer = "?"
        self._send = self._queue  # bound once; handed to the scheduler
        # output held behind durability barriers (deferred stores only)
        self._held_turns = 0
        self._held_bytes = 0
        self._close_when_released = False
        # bytes queued since the last flush, and how many fit under
        # max_output (conservative: the slow path recounts before a drop)
        self._pending = 0
        self._room = hub.max_output
        # parsed requests not run yet: the output of earlier ones passed the
        # high-water mark (reading is paused meanwhile)
        self._stash: deque[Packet] | None = None

    # -- asyncio callbacks -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses: cast, never assert
        self._transport = cast(asyncio.Transport, transport)
        hub = self._hub
        if hub.max_connections and len(hub.protocols) >= hub.max_connections:
            self._closing = True  # refused: read nothing, close at once
            hub.peer_log.warning(
                "max-connections",
                "refusing a connection from %s: %d connections open (max-connections)",
                _peer_name(transport),
                len(hub.protocols),
            )
            transport.close()
            return
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
            # the parser keeps its error: its traceback holds this frame
            # (self, data), a cycle that would outlive the connection
            exc.__traceback__ = None
            if self._stash is None:
                self._handle_packets(getattr(exc, "packets", None) or ())
            self.drop(f"protocol error: {exc.__class__.__name__}: {exc}")
            return
        if packets:
            if self._stash is not None:  # earlier requests wait: keep order
                self._stash.extend(packets)
                return
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
            self._free_out.clear()
            self._cancel_timer()
            self._release(defer=False)
        self._hub.protocols.discard(self)
        self._stash = None
        # Break every reference cycle through this object now: the daemon's
        # GC tuning (gc.freeze, raised thresholds) would leave a cyclic
        # connection, and the partial frame in its parser, alive for ages.
        self._parser = None
        self._head = b""
        self._transport = None
        self._send = _discard

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._transport is not None and not self._closing:
            if self._stash is not None:
                self._resume_input()  # resumes reading once the stash ran
            else:
                self._resume_reading()

    def _pause_reading(self) -> None:
        if self._transport is not None:
            try:
                self._transport.pause_reading()
            except _PAUSE_RESUME_ERRORS:  # pragma: no cover
                pass

    def _resume_reading(self) -> None:
        if self._transport is not None:
            try:
                self._transport.resume_reading()
            except _PAUSE_RESUME_ERRORS:  # pragma: no cover
                pass

    # -- input -------------------------------------------------------------------

    def _sniff(self, data: bytes) -> Parser | None:
        """Decide what the peer speaks from its first bytes.

        Returns the parser to use (the bytes so far are in ``self._head``), or
        None when more bytes are needed or the connection was dropped (or
        handed to the HTTP side: an HTTP method as first bytes).
        """
        head = self._head + data
        self._head = head
        n = min(len(head), 4)
        if any(head[:n] == m[:n] for m in _MAGICS):
            if len(head) < 8:
                return None
            # the registration frame is the one an unauthenticated peer
            # sends: refuse a large one from its header, before buffering it
            size = _U32.unpack_from(head, 4)[0]
            if size > self._hub.max_registration:
                self._head = b""
                self.drop(
                    f"registration frame of {size} bytes "
                    f"(max-registration {self._hub.max_registration})",
                    abort=True,
                )
                return None
            parser = Parser(
                requests=True,
                registration=True,
                resync=True,
                max_frame=self._hub.max_frame,
            )
            self._parser = parser
            return parser
        http = self._hub.http
        if http is not None:
            verdict = http.sniff(head)
            if verdict is None:
                return None  # a method name is still arriving
            if verdict:
                self._head = b""
                self._to_http(http, head)
                return None
        self._head = b""
        self.drop(f"bad magic {head[:4]!r}", abort=True)
        return None

    def _to_http(self, http: HttpSide, head: bytes) -> None:
        """Hand the transport to the HTTP side; this protocol is done with it
        (nothing was registered with the scheduler)."""
        self._closing = True
        self._cancel_timer()
        self._hub.protocols.discard(self)
        assert self._transport is not None
        http.accept(self._transport, head, self._peer)

    def _handle_packets(self, packets: Iterable[Packet]) -> None:
        hub = self._hub
        scheduler = hub.scheduler
        cid = self._conn_id
        now = hub.clock()  # one read of each clock per batch of input
        mono = hub.mono()
        rest = iter(packets)
        for packet in rest:
            if self._closing:
                return
            msgid = packet.msgid
            if cid is None:
                cid = self._register(packet.command, packet.payload, now, mono)
                if cid is None:
                    return
                continue
            assert msgid is not None  # only the registration frame has none
            command = packet.command
            # GRAB_JOB confirms nothing stored (a grab slot, and maybe a
            # dispatch, which a crash turns back into a pending job): its
            # output is free.  So is a PONG when none of this connection's
            # output waits for a barrier (else it keeps its place behind those
            # replies): it must not wait for a commit it does not need (17)
            self._grabbing = command == _GRAB_JOB or (
                command == _PING and not self._out and not self._held_turns
            )
            try:
                scheduler.handle(cid, msgid, command, packet.payload, now, mono)
            except ProtocolError as exc:
                self.drop(f"malformed payload: {exc.__class__.__name__}: {exc}")
                return
            except Exception:
                log.exception(
                    "%s: internal error handling command %s", self._peer, command
                )
                self.drop("internal error")
                return
            finally:
                self._grabbing = False
            if self._pending > WRITE_HIGH_WATER:
                # pipelined requests wait until this output has drained
                stash = deque(rest)
                if stash:
                    self._stash = stash
                    self._pause_reading()
                return

    def _resume_input(self) -> None:
        """Run the requests that waited for earlier output to drain."""
        stash = self._stash
        if (
            stash is None
            or self._closing
            or self._write_paused
            or self._pending > WRITE_HIGH_WATER
            or self._held_bytes > WRITE_HIGH_WATER
        ):
            return
        self._stash = None
        self._handle_packets(stash)
        if self._closing:
            return
        if self._stash is None:
            self._resume_reading()
        on_input = self._hub.on_input
        if on_input is not None:
            on_input()

    def _register(
        self, client_type: int, payload: bytes, now: float, mono: float
    ) -> int | None:
        self._cancel_timer()
        identity: tuple[bytes, bytes] | None = None
        if client_type in (ClientType.AUTH_CLIENT, ClientType.AUTH_WORKER):
            try:
                identity = decode_identity(payload)
            except ProtocolError as exc:  # pragma: no cover - parser checked it
                self.drop(f"bad registration: {exc}")
                return None
        hub = self._hub
        # auth on: unknown identity, wrong token or none -> closed, no reply
        # (the reference refuses per command instead; docs/security.md)
        refused = hub.scheduler.admit(client_type, identity)
        if refused is not None:
            self.drop(f"registration refused: {refused}")
            return None
        cid = hub.allocate_id(self)
        self._conn_id = cid
        reply = encode_registration_reply(cid)
        if self._deferred:
            # it confirms nothing stored, and it must be the peer's first
            # frame: free output of this same write (a GRAB_JOB right behind
            # the registration) may not overtake it
            if not self._out and not self._free_out:
                hub.mark_dirty(self)
            self._free_out.append(reply)
        else:
            self._queue(reply)
        try:
            hub.scheduler.connect(
                cid, client_type, identity, self._send, self.close, now, mono
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
        self._pending += len(frame)
        if self._pending > self._room and self._over_output(len(frame)):
            return
        out = self._out
        free = self._free_out
        if not out and not free:
            self._hub.mark_dirty(self)
        if self._deferred and (self._grabbing or _is_push(frame)):
            free.append(frame)
        else:
            out.append(frame)

    def _over_output(self, size: int) -> bool:
        """The queued output passed the conservative room: recount it (the
        write buffer may have drained); True when the peer was dropped.

        A frame of ``size`` bytes queued while less than the 1 MiB mark of
        other output waits is let through whatever its size: a DUMP of a big
        store is one DATA frame, and the requests pipelined behind it wait
        until it drained, so a connection holds at most one such reply."""
        transport = self._transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        limit = self._hub.max_output
        total = self._pending + buffered + self._held_bytes
        if total <= limit or total - size <= WRITE_HIGH_WATER:
            self._room = limit - buffered - self._held_bytes
            return False
        self._hub.peer_log.warning(
            "max-output",
            "%s: closing: peer does not read its output "
            "(%d bytes queued, over max-output %d)",
            self._peer,
            total,
            limit,
        )
        # inside the scheduler's send: its disconnect runs on the next turn
        self._shutdown(abort=True, defer=True)
        return True

    def take_output(self) -> tuple[list[bytes], list[bytes]]:
        """Hand over the pending frames as ``(free, held)``.

        ``free`` confirm no state change, so a crash before the commit breaks
        no promise: JOB_ASSIGN pushes (a job whose assignment is lost runs
        again) and the output of a GRAB_JOB (its SUCCESS and the JOB_ASSIGN
        it may cause), and the registration reply.  The hub writes them at
        once and holds the rest for durability.  ``free`` stays empty unless
        the store is deferred.
        """
        if self._closing:
            return [], []
        free, out = self._free_out, self._out
        self._free_out = []
        self._out = []
        transport = self._transport
        buffered = transport.get_write_buffer_size() if transport is not None else 0
        self._room = self._hub.max_output - buffered - self._held_bytes
        self._pending = 0
        if self._stash is not None:
            self._hub.loop.call_soon(self._resume_input)
        return free, out

    def write_free(self, frames: list[bytes]) -> bool:
        """Write ``frames`` (output that needs no commit) now, ahead of any
        held output of this connection.  False when the connection is gone
        or was dropped for not reading its output."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        if transport.get_write_buffer_size() > self._hub.max_output:
            self.drop("peer does not read its output", abort=True)
            return False
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        return True

    def held_add(self, frames: list[bytes]) -> None:
        """``frames`` now wait for a barrier: count them for flow control."""
        self._held_turns += 1
        self._held_bytes += sum(map(len, frames))
        if self._held_bytes > WRITE_HIGH_WATER:
            self._pause_reading()  # a slow disk slows the peers that write

    def held_release(self, frames: list[bytes]) -> None:
        """The barrier for ``frames`` passed: write them (one write)."""
        self._held_turns -= 1
        before = self._held_bytes
        self._held_bytes = before - sum(map(len, frames))
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._closing and not self._close_when_released:
            return  # dropped meanwhile
        if transport.get_write_buffer_size() > self._hub.max_output:
            self.abort()
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if self._close_when_released:
            if self._held_turns == 0:
                transport.close()
        elif before > WRITE_HIGH_WATER >= self._held_bytes and not self._write_paused:
            if self._stash is not None:
                self._resume_input()
            else:
                self._resume_reading()

    def flush(self) -> None:
        """Write the pending frames with one ``transport.write``."""
        out = self._out
        if not out or self._closing:
            return
        self._out = []
        transport = self._transport
        assert transport is not None
        buffered = transport.get_write_buffer_size()
        if buffered > self._hub.max_output:
            self.drop("peer does not read its output", abort=True)
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        transport.write(data)
        # as if none of it was sent: _over_output recounts when it matters
        self._room = self._hub.max_output - buffered - len(data)
        self._pending = 0
        if self._stash is not None:
            self._hub.loop.call_soon(self._resume_input)

    # -- closing -----------------------------------------------------------------

    @property
    def held_turns(self) -> int:
        """Barriers this connection's output still waits for."""
        return self._held_turns

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
            # reasons may carry peer bytes (a refused name, bad magic): clip
            # them, and throttle per kind (a client in a reconnect loop)
            self._hub.peer_log.warning(
                reason[:24].partition(":")[0],
                "%s: closing: %s",
                self._peer,
                clip(reason),
            )
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
        free = self._free_out
        self._closing = True
        self._out = []
        self._free_out = []
        self._cancel_timer()
        if transport is not None and not abort:
            # send what is queued, unless the peer already sits on too much
            if transport.get_write_buffer_size() > self._hub.max_output:
                abort = True
            else:
                if free:  # needs no commit: ahead of any held output
                    transport.write(b"".join(free))
                if self._hub.holding_for(self, out):
                    # output still waits for durability: close once it is out
                    self._close_when_released = True
                    self._release(defer=defer)
                    return
                if out:
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
            hub = self._hub
            hub.scheduler.disconnect(cid, hub.clock(), hub.mono())
        except Exception:  # pragma: no cover - scheduler bug
            log.exception("%s: internal error in disconnect", self._peer)
