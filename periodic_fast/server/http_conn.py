"""One HTTP/1.1 connection: keep-alive, pipelining, timeouts, flow control.

:class:`HttpConnection` takes over a transport the binary protocol sniffed as
HTTP.  It feeds a parser (:mod:`.http_parsers`), queues the parsed requests
(at most :data:`MAX_PIPELINE` before reading pauses), answers them in order
-- the next one only while the unsent output is under the transport's
high-water mark, so pipelining cannot queue more than one response beyond it --
through its owner's ``dispatch`` (a response now, or a future one for a
write waiting for the store) and closes after a malformed request, a
``Connection: close``, a read timeout (408) or an idle keep-alive period.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from typing import Final, Protocol

from .http_parsers import new_parser
from .http_wire import (
    HttpError,
    Request,
    Response,
    encode_response,
    error_response,
)
from .logbound import Throttle, clip

__all__ = ["MAX_PIPELINE", "HttpConnection", "HttpOwner"]

log = logging.getLogger("periodic_fast.http")

#: Parsed requests waiting for their turn on one connection before reading
#: from it pauses.
MAX_PIPELINE: Final = 16


class HttpOwner(Protocol):
    """What a connection needs from :class:`~.http_app.HttpApp`."""

    @property
    def parser(self) -> str:
        """``"auto"``, ``"httptools"`` or ``"h11"``."""
        ...

    @property
    def max_body(self) -> int: ...

    @property
    def read_timeout(self) -> float: ...

    @property
    def idle_timeout(self) -> float: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def peer_log(self) -> Throttle:
        """Where log lines a peer causes go (bounded, rate-limited)."""
        ...

    @property
    def connections(self) -> set[HttpConnection]:
        """The open connections (a closed one removes itself)."""
        ...

    def dispatch(
        self, req: Request, conn: HttpConnection | None = None
    ) -> Response | asyncio.Future[Response]:
        """Answer ``req``: a Response now, or a future one."""
        ...


class HttpConnection(asyncio.Protocol):
    """One HTTP connection taken over from a sniffed binary-port connection."""

    def __init__(
        self,
        app: HttpOwner,
        transport: asyncio.Transport,
        peer: str,
        *,
        probe_only: bool = False,
    ) -> None:
        self._app = app
        self._transport = transport
        self.peer = peer
        #: over the connection cap: one health probe, then closed
        self.probe_only = probe_only
        self._parser = new_parser(app.parser, app.max_body)
        self._queue: deque[Request | HttpError] = deque()
        self._busy = False  # a response waits for the store
        self._closing = False
        self._read_paused = False
        self._write_paused = False
        self._stop_after = False  # no request after the queued ones
        self._timer: asyncio.TimerHandle | None = None
        self._arm(app.idle_timeout)

    # asyncio callbacks ------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._closing or self._stop_after:
            return
        parser = self._parser
        was_idle = not parser.in_progress
        try:
            requests, stop = parser.feed(data)
        except HttpError as exc:
            requests, stop = [], True
            self._queue.append(exc)
            self._stop_after = True
        except Exception as exc:  # pragma: no cover - parser bug: never crash
            log.exception("%s: HTTP parser error", self.peer)
            requests, stop = [], True
            self._queue.append(HttpError(400, f"malformed request: {exc}"))
            self._stop_after = True
        if parser.expect_continue:
            parser.expect_continue = False
            # only for the request being answered next: an interim response
            # must not overtake the final response of an earlier request
            if not (self._stop_after or self._busy or self._queue or requests):
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._queue.extend(requests)
        if stop:
            self._stop_after = True
        if parser.in_progress and (was_idle or requests):
            # a request began in this chunk: all of it within read_timeout
            # (not re-armed per chunk, so a trickle cannot keep it open)
            self._arm(self._app.read_timeout)
        if len(self._queue) > MAX_PIPELINE:
            self._pause_reading()
        self._process()

    def eof_received(self) -> bool | None:
        # half-closed peer: answer what is queued, then close
        self._stop_after = True
        if not self._busy and not self._queue:
            self._close()
            return None
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._closing = True
        self._cancel_timer()
        self._queue.clear()
        self._app.connections.discard(self)
        self._parser.release()  # its partial body goes now, not at a GC pass

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if not self._closing:
            self._process()  # the next pipelined request, then reading

    # request processing ------------------------------------------------------------

    def _process(self) -> None:
        queue = self._queue
        # one response at a time: the next pipelined request runs only while
        # the write buffer is under its high-water mark (pause_writing)
        while queue and not self._busy and not self._closing and not self._write_paused:
            item = queue.popleft()
            if isinstance(item, HttpError):
                self._app.peer_log.info(
                    f"http-{item.status}",
                    "%s: HTTP %d: %s",
                    self.peer,
                    item.status,
                    clip(item.message),
                )
                self._write(None, error_response(item.status, item.message, close=True))
                return
            result = self._app.dispatch(item, self)
            if isinstance(result, Response):
                self._write(item, result)
            else:
                self._busy = True
                result.add_done_callback(functools.partial(self._finished, item))
        if self._closing:
            return
        if not queue:
            if self._stop_after and not self._busy:
                self._close()
                return
            if not self._busy and not self._parser.in_progress:
                self._arm(self._app.idle_timeout)
        if len(queue) <= MAX_PIPELINE and not self._write_paused:
            self._resume_reading()

    def _finished(self, req: Request, fut: asyncio.Future[Response]) -> None:
        self._busy = False
        if self._closing:
            return
        try:
            resp = fut.result()
        except Exception as exc:  # pragma: no cover - route bug
            log.error("%s: HTTP handler error: %r", self.peer, exc)
            resp = error_response(500, "internal error")
        self._write(req, resp)
        self._process()

    def _write(self, req: Request | None, resp: Response) -> None:
        keep = req is not None and req.keep_alive and not resp.close
        keep = keep and not self.probe_only
        if keep and self._stop_after and not self._queue:
            keep = False
        head_only = req is not None and req.method == "HEAD"
        self._transport.write(encode_response(resp, head_only, keep))
        if not keep:
            self._queue.clear()
            self._close()

    # timers, flow control, closing -------------------------------------------------

    def _arm(self, delay: float) -> None:
        self._cancel_timer()
        if delay > 0:
            self._timer = self._app.loop.call_later(delay, self._timeout)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timeout(self) -> None:
        self._timer = None
        if self._closing:
            return
        if self._busy or self._queue:
            self._arm(self._app.read_timeout)  # a response is under way
        elif self._parser.in_progress:
            self._app.peer_log.info("http-timeout", "%s: HTTP read timeout", self.peer)
            self._write(
                None, error_response(408, "request not received in time", close=True)
            )
        else:
            self._close()  # idle keep-alive connection

    def _pause_reading(self) -> None:
        if not self._read_paused:
            self._read_paused = True
            with contextlib.suppress(RuntimeError, NotImplementedError):
                self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._read_paused and not self._closing:
            self._read_paused = False
            with contextlib.suppress(RuntimeError, NotImplementedError):
                self._transport.resume_reading()

    def _close(self) -> None:
        if not self._closing:
            self._closing = True
            self._cancel_timer()
            self._transport.close()

    @property
    def closed(self) -> bool:
        """True once closing or closed."""
        return self._closing

    def close(self) -> None:
        """Close after what was written so far (server shutdown)."""
        self._close()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closing = True
        self._cancel_timer()
        self._transport.abort()
