"""The hub: what every connection of one server shares.

:class:`Hub` owns the scheduler reference, the live connections, the
connection ids, and the once-per-loop-turn output flush -- with a deferred
(durable) store, the output held behind the store's durability barriers and
released in order.  Connections are :class:`~.protocol.ServerProtocol`
objects, seen here through the small :class:`Conn` protocol (the hub does not
import them; :func:`~.protocol.new_protocol` makes one for a listener).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ..codec import encode_response
from ..constants import DEFAULT_MAX_FRAME, DEFAULT_MAX_REGISTRATION, Command
from .logbound import DEFAULT_PEER_LOG_RATE, Throttle
from .views import HttpSide, SchedulerLike

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Store
    from .secure import SecureConfig

__all__ = [
    "DEFAULT_MAX_OUTPUT",
    "DEFAULT_MAX_REGISTRATION",
    "DEFAULT_REGISTRATION_TIMEOUT",
    "Conn",
    "Hub",
]

log = logging.getLogger("periodic_fast.server")

#: Seconds a new connection may take to send its registration frame.
DEFAULT_REGISTRATION_TIMEOUT = 30.0
#: Unread output (bytes) after which a peer is considered dead and dropped.
DEFAULT_MAX_OUTPUT = 64 * 1024 * 1024

_SUCCESS = int(Command.SUCCESS)
_NO_WORKER = int(Command.NO_WORKER)
_U32 = struct.Struct(">I")
_U32_MASK = 0xFFFFFFFF


class Conn(Protocol):
    """What the hub uses of a connection (:class:`~.protocol.ServerProtocol`)."""

    @property
    def peer(self) -> str:
        """Printable peer address."""
        ...

    @property
    def held_turns(self) -> int:
        """Barriers this connection's output still waits for."""
        ...

    def flush(self) -> None:
        """Write the pending frames."""
        ...

    def take_output(self) -> tuple[list[bytes], list[bytes]]:
        """The pending frames as ``(free, held)``."""
        ...

    def write_free(self, frames: list[bytes]) -> bool:
        """Write frames that need no commit; False when dropped."""
        ...

    def held_add(self, frames: list[bytes]) -> None:
        """``frames`` wait for a barrier."""
        ...

    def held_release(self, frames: list[bytes]) -> None:
        """The barrier for ``frames`` passed: write them."""
        ...

    def drop(self, reason: str | None, *, abort: bool = False) -> None:
        """Close the connection."""
        ...

    def abort(self) -> None:
        """Drop the connection at once."""
        ...


class Hub:
    """State shared by every connection of one server.

    Owns the scheduler reference, the live connections, connection-id
    allocation and the once-per-loop-turn output flush.
    """

    __slots__ = (
        "_dirty",
        "_flush_scheduled",
        "_held",
        "_loop_thread",
        "_next_id",
        "_store",
        "clock",
        "connections",
        "http",
        "loop",
        "max_connections",
        "max_frame",
        "max_output",
        "max_registration",
        "mono",
        "on_input",
        "peer_log",
        "protocols",
        "registration_timeout",
        "scheduler",
        "secure",
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
        store: Store | None = None,
        max_connections: int = 0,
        max_registration: int = DEFAULT_MAX_REGISTRATION,
        peer_log_rate: float = DEFAULT_PEER_LOG_RATE,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scheduler = scheduler
        self.loop = loop
        # A deferred (durable) store: output waits behind its barrier.
        self._store = store if store is not None and store.deferred else None
        self._held: deque[_HeldTurn] = deque()
        self._loop_thread = threading.get_ident()
        #: wall clock (float seconds) for every "now" handed to the scheduler
        self.clock = clock
        #: monotonic clock for every "mono" (deadlines) handed to it
        self.mono = mono
        self.max_frame = max_frame
        # jobs that could not be DUMPed and LOADed back are refused up front
        scheduler.max_frame = max_frame
        self.registration_timeout = registration_timeout
        self.max_output = max_output
        #: largest registration frame body, checked from its header
        self.max_registration = max_registration
        #: log lines peers cause: rate-limited per kind (logbound)
        self.peer_log = Throttle(log, peer_log_rate)
        #: open connections allowed at once (0: no limit); extra ones are closed
        self.max_connections = max_connections
        #: registered connections by connection id
        self.connections: dict[int, Conn] = {}
        #: every open connection, registered or not
        self.protocols: set[Conn] = set()
        self._dirty: list[Conn] = []
        self._flush_scheduled = False
        self._next_id = 0
        #: called after each batch of input was handled (the server re-arms
        #: its timer if the scheduler now has earlier work)
        self.on_input: Callable[[], None] | None = None
        #: RSA/AES transport config, or None
        self.secure: SecureConfig | None = None
        #: the HTTP side (a server.http_app.HttpApp) that sniffed HTTP
        #: connections are handed to, or None (HTTP off: closed as bad magic)
        self.http: HttpSide | None = None

    def allocate_id(self, proto: Conn) -> int:
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

    def mark_dirty(self, proto: Conn) -> None:
        """``proto`` has pending output: flush it at the end of this loop turn."""
        self._dirty.append(proto)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write every dirty connection's pending frames (one write each).

        With a deferred store the frames of this loop turn are held instead,
        behind one ``store.on_durable`` barrier: they leave when everything
        the scheduler wrote so far is committed (see :meth:`_durable`).
        The exception is output that confirms no state change
        (:meth:`Conn.take_output`: JOB_ASSIGN pushes and the
        output of GRAB_JOB).  After a crash a dispatched job only comes back
        pending and runs again, so such frames leave at once, ahead of any
        held reply of their connection: a worker gets its next job while the
        commit of its last WORK_DONE is still on its way.  Replies match by
        msgid, never by order (protocol.md 1.5), and held replies keep their
        order among themselves: a worker's WORK_DONE reply waits behind a
        later barrier than the SUBMIT of that job, so it never arrives
        first.
        """
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        store = self._store
        if store is None:
            for proto in dirty:
                proto.flush()
            return
        held: list[tuple[Conn, list[bytes]]] = []
        for proto in dirty:
            free, frames = proto.take_output()
            if free and not proto.write_free(free):
                continue  # dropped: the rest is moot
            if frames:
                held.append((proto, frames))
        if held:
            self.hold(held)

    def hold(self, held: list[tuple[Conn, list[bytes]]]) -> None:
        """Queue ``held`` output behind a new durability barrier."""
        turn = _HeldTurn(held)
        for proto, frames in held:
            proto.held_add(frames)
        self._held.append(turn)
        assert self._store is not None
        self._store.on_durable(lambda error: self._durable(turn, error))

    def holding_for(self, proto: Conn, out: list[bytes]) -> bool:
        """A closing connection: hold its last frames ``out`` too; True when
        it has output waiting for a barrier (close it after the release)."""
        if self._store is None:
            return False
        if out:
            self.hold([(proto, out)])
        return proto.held_turns > 0

    @property
    def holding(self) -> bool:
        """True while output waits for a durability barrier."""
        return bool(self._held)

    @property
    def deferred(self) -> bool:
        """True when output waits for the store's commits (a durable store)."""
        return self._store is not None

    def _durable(self, turn: _HeldTurn, error: BaseException | None) -> None:
        # called by the store: on its writer thread, or synchronously here
        if threading.get_ident() == self._loop_thread:
            self._release(turn, error)
        else:
            with contextlib.suppress(RuntimeError):  # loop closed: output is moot
                self.loop.call_soon_threadsafe(self._release, turn, error)

    def _release(self, turn: _HeldTurn, error: BaseException | None) -> None:
        """Mark ``turn`` durable (or failed); write every finished turn in
        order, so held replies never overtake each other."""
        turn.done = True
        turn.error = error
        if error is not None:
            log.error("store commit failed; refusing the affected requests: %s", error)
        held = self._held
        while held and held[0].done:
            head = held.popleft()
            for proto, frames in head.output:
                if head.error is not None:
                    frames = [_refuse_successes(f) for f in frames]
                proto.held_release(frames)

    def close_all(self) -> None:
        """Close every connection (server shutdown); output queued so far is sent."""
        for proto in list(self.protocols):
            proto.drop(None)


class _HeldTurn:
    """One loop turn's output waiting for its durability barrier."""

    __slots__ = ("done", "error", "output")

    def __init__(self, output: list[tuple[Conn, list[bytes]]]) -> None:
        self.output = output
        self.done = False
        self.error: BaseException | None = None


def _refuse_successes(chunk: bytes) -> bytes:
    """Rewrite every SUCCESS frame in ``chunk`` as NO_WORKER (same msgid).

    Used when the commit a SUCCESS depended on failed: the protocol has no
    error reply, and NO_WORKER is its generic refusal (protocol.md 5.3).
    """
    out: list[bytes] = []
    pos, end = 0, len(chunk)
    while pos + 12 <= end:
        size = _U32.unpack_from(chunk, pos + 4)[0]
        stop = pos + 12 + size
        if size == 5 and chunk[pos + 16] == _SUCCESS:
            msgid = _U32.unpack_from(chunk, pos + 12)[0]
            out.append(encode_response(msgid, _NO_WORKER))
        else:
            out.append(chunk[pos:stop])
        pos = stop
    return b"".join(out) if len(out) != 1 else out[0]
