"""HTTP on the binary port: the classic curl API, a status page, metrics, health.

The server's connections all start as :class:`~.protocol.ServerProtocol`; its
``_sniff`` asks :meth:`HttpApp.sniff` whether the first bytes are an HTTP
request method and, if so, hands the transport to :meth:`HttpApp.accept`,
which installs an :class:`HttpConnection` as the transport's protocol.  A
binary connection never reaches this module.

Parsing is httptools (llhttp) when importable, else h11; both sit behind the
same small interface (:class:`_HttptoolsParser`, :class:`_H11Parser`) and
produce :class:`Request` objects.  Limits: request target, header count and
bytes, body size (:data:`DEFAULT_MAX_BODY`), and a read timeout for a request
that is started but not finished.  A malformed or over-limit request gets
400, 408, 413, 414 or 431 and the connection is closed; keep-alive and
pipelining are supported otherwise.

Routes (docs/http.md): the reference's API (``GET /``, ``GET /FUNC``,
``POST /`` and ``POST /FUNC`` to submit or, with ``act=remove``, remove a
job, ``DELETE /FUNC`` to drop a func), the status page (``/ui``, or ``GET /``
when the client prefers HTML), ``/api/overview``, ``/metrics``, ``/healthz``
and ``/readyz``.  Writes go through the scheduler like the binary commands
and are answered only after the store's durability barrier
(``store.on_durable``) passed; they are refused with 403 unless the server
runs with ``--http-writes``.  :meth:`HttpApp._authorize` is the one place a
request can be refused before routing (authentication hooks in there).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import html
import ipaddress
import json
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, Final, NamedTuple, Protocol, cast
from urllib.parse import unquote_to_bytes

from .. import __version__
from ..auth import Identity, Role
from ..job import Job

try:  # the fast parser; h11 (pure Python) is the fallback
    import httptools
except ImportError:  # pragma: no cover - exercised by forcing the h11 parser
    httptools = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_MAX_BODY",
    "HttpApp",
    "HttpConnection",
    "HttpError",
    "Request",
    "Response",
    "looks_like_http",
]

log = logging.getLogger("periodic_fast.http")

#: Largest request body accepted (413 beyond).
DEFAULT_MAX_BODY: Final = 1024 * 1024
#: Longest request target (414 beyond).
MAX_TARGET: Final = 8 * 1024
#: Header block limits (431 beyond): number of headers, bytes of names+values.
MAX_HEADERS: Final = 100
MAX_HEADER_BYTES: Final = 32 * 1024
#: Seconds a started request may take to arrive completely (408 after).
DEFAULT_READ_TIMEOUT: Final = 10.0
#: Seconds an idle keep-alive connection stays open.
DEFAULT_IDLE_TIMEOUT: Final = 30.0
#: Seconds a write waits for the store's commit before 503.
DEFAULT_WRITE_TIMEOUT: Final = 30.0
#: Open HTTP connections at once; more get 503 and are closed.
DEFAULT_MAX_CONNECTIONS: Final = 256
#: Parsed requests waiting for their turn on one connection before reading
#: from it pauses.
MAX_PIPELINE: Final = 16
#: Rows shown on the status page / returned by /api/overview, per table.
PAGE_ROWS: Final = 500

_METHODS: Final = (
    b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
    b"TRACE ", b"CONNECT ",
)  # fmt: skip
_MAX_FIELDS: Final = 64  # form fields per request
_ALLOW: Final = "GET, HEAD, POST, DELETE, OPTIONS"
_JSON: Final = "application/json; charset=utf-8"
_HTML: Final = "text/html; charset=utf-8"
_SERVER: Final = f"periodic_fast/{__version__}"


def looks_like_http(head: bytes) -> bool | None:
    """True when ``head`` starts with an HTTP method and a space, None when it
    is still a prefix of one (wait for more bytes), False otherwise."""
    for method in _METHODS:
        if head.startswith(method):
            return True
        if len(head) < len(method) and method.startswith(head):
            return None
    return False


# -- requests and responses ----------------------------------------------------


class HttpError(Exception):
    """A request that cannot be served: answered with ``status`` and closed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Request:
    """One parsed HTTP request."""

    __slots__ = (
        "body",
        "headers",
        "identity",
        "keep_alive",
        "method",
        "target",
        "version",
    )

    def __init__(
        self,
        method: str,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        keep_alive: bool,
        version: str,
    ) -> None:
        self.method = method  #: upper case, e.g. "GET"
        self.target = target  #: the raw request target ("/f%20x?y=1")
        self.headers = headers  #: (lower-case name, value), in order
        self.body = body
        self.keep_alive = keep_alive
        self.version = version  #: "1.1" or "1.0"
        #: the auth-file identity of its bearer token (auth on), else None
        self.identity: Identity | None = None

    def header(self, name: bytes) -> bytes | None:
        """The first value of header ``name`` (lower case), or None."""
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def path(self) -> bytes:
        """The URL-decoded path, without query string."""
        raw = self.target.split(b"?", 1)[0].split(b"#", 1)[0]
        if raw.startswith((b"http://", b"https://")):  # absolute form
            rest = raw.split(b"//", 1)[1]
            raw = b"/" + rest.split(b"/", 1)[1] if b"/" in rest else b"/"
        return unquote_to_bytes(raw)

    @property
    def query(self) -> bytes:
        """The raw query string ('' when none)."""
        _, _, query = self.target.partition(b"?")
        return query.split(b"#", 1)[0]


class Response(NamedTuple):
    """What a route returns."""

    status: int
    body: bytes = b""
    content_type: str = _JSON
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  #: close the connection after this response


def json_response(status: int, obj: Any, **kw: Any) -> Response:
    """``obj`` as a JSON body."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return Response(status, body.encode() + b"\n", _JSON, **kw)


def _err(status: int, message: str, **kw: Any) -> Response:
    return json_response(status, {"err": message}, **kw)


_SUCCESS = json_response(200, {"msg": "SUCCESS"})


def _encode(resp: Response, head_only: bool, keep_alive: bool) -> bytes:
    """Status line, headers and body of ``resp``."""
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:  # pragma: no cover - all our codes are standard
        reason = "Unknown"
    lines = [
        f"HTTP/1.1 {resp.status} {reason}",
        f"Server: {_SERVER}",
        f"Content-Length: {len(resp.body)}",
        "Cache-Control: no-store",
        "X-Content-Type-Options: nosniff",
        f"Connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    if resp.body or resp.status not in (204, 304):
        lines.append(f"Content-Type: {resp.content_type}")
    lines.extend(f"{k}: {v}" for k, v in resp.headers)
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


# -- parsers -------------------------------------------------------------------


class _Parser(Protocol):
    """What :class:`HttpConnection` needs from a request parser."""

    #: True while a request has started but is not complete
    in_progress: bool
    #: set when a request asked for ``100 Continue`` (cleared by the reader)
    expect_continue: bool

    def feed(self, data: bytes) -> tuple[list[Request], bool]:
        """Parse ``data``; the completed requests, and True when the stream
        cannot continue after them (upgrade).  Raises :class:`HttpError`."""
        ...


def _keep_alive(version: str, headers: list[tuple[bytes, bytes]]) -> bool:
    tokens: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    if b"close" in tokens:
        return False
    return version == "1.1" or b"keep-alive" in tokens


class _Limits:
    """Checks shared by both parsers."""

    __slots__ = ("max_body",)

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body

    def check_headers(self, headers: list[tuple[bytes, bytes]]) -> None:
        """413 for a declared body over the limit, 400 for a bad length."""
        for name, value in headers:
            if name == b"content-length":
                if not value.strip().isdigit():
                    raise HttpError(400, "bad Content-Length")
                if int(value) > self.max_body:
                    raise HttpError(413, f"body over {self.max_body} bytes")


class _HttptoolsParser:
    """llhttp through httptools; callbacks collect one request at a time."""

    __slots__ = (
        "_body",
        "_body_len",
        "_done",
        "_head_bytes",
        "_header_bytes",
        "_headers",
        "_headers_done",
        "_limits",
        "_parser",
        "_url",
        "expect_continue",
        "in_progress",
    )

    def __init__(self, max_body: int) -> None:
        assert httptools is not None
        self._limits = _Limits(max_body)
        self._parser = httptools.HttpRequestParser(self)
        self._done: list[Request] = []
        self.in_progress = False
        self.expect_continue = False
        self._reset()

    def _reset(self) -> None:
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_len = 0
        self._headers_done = False
        self._head_bytes = -1  # bytes fed while the head is incomplete

    # httptools callbacks (errors raised here come back chained)
    def on_message_begin(self) -> None:
        self._reset()
        self.in_progress = True

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_TARGET:
            raise HttpError(414, f"request target over {MAX_TARGET} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))
        self._header_bytes += len(name) + len(value)
        if len(self._headers) > MAX_HEADERS or self._header_bytes > MAX_HEADER_BYTES:
            raise HttpError(431, "request header fields too large")

    def on_headers_complete(self) -> None:
        self._headers_done = True
        self._limits.check_headers(self._headers)
        if self._parser.get_http_version() == "1.1" and not any(
            name == b"host" for name, _ in self._headers
        ):  # RFC 9112 3.2, and what h11 enforces
            raise HttpError(400, "malformed request: missing Host header")
        for name, value in self._headers:
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_continue = True

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len > self._limits.max_body:
            raise HttpError(413, f"body over {self._limits.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        p = self._parser
        self._done.append(
            Request(
                p.get_method().decode("ascii"),
                self._url,
                self._headers,
                b"".join(self._body),
                p.should_keep_alive(),
                p.get_http_version(),
            )
        )
        self.in_progress = False

    def feed(self, data: bytes) -> tuple[list[Request], bool]:
        upgrade = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            upgrade = True  # not supported: answer what came, then close
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                raise cause from None
            raise HttpError(400, f"malformed request: {cause}") from exc
        except httptools.HttpParserError as exc:
            raise HttpError(400, f"malformed request: {exc}") from None
        if self.in_progress and not self._headers_done:
            # a header line still arriving is buffered inside llhttp, out of
            # on_header's sight: bound what is fed meanwhile (the chunk the
            # request began in is not counted, it is bounded by the read size)
            if self._head_bytes >= 0:
                self._head_bytes += len(data)
            else:
                self._head_bytes = 0
            if self._head_bytes > MAX_TARGET + MAX_HEADER_BYTES:
                raise HttpError(431, "request header fields too large")
        done, self._done = self._done, []
        return done, upgrade


class _H11Parser:
    """h11 as a pure parser: its own responses are generated and dropped so
    that it moves on to the next pipelined request."""

    __slots__ = ("_body", "_body_len", "_conn", "_limits", "_req", "expect_continue")

    def __init__(self, max_body: int) -> None:
        import h11  # noqa: PLC0415 - only when httptools is not used

        self._limits = _Limits(max_body)
        self._conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=MAX_TARGET + MAX_HEADER_BYTES
        )
        self._req: Any = None
        self._body: list[bytes] = []
        self._body_len = 0
        self.expect_continue = False

    @property
    def in_progress(self) -> bool:
        import h11  # noqa: PLC0415 - cached import

        return self._req is not None or (
            self._conn.their_state is h11.IDLE and bool(self._conn.trailing_data[0])
        )

    def feed(self, data: bytes) -> tuple[list[Request], bool]:
        import h11  # noqa: PLC0415 - cached import

        conn = self._conn
        out: list[Request] = []
        if data:
            try:
                conn.receive_data(data)
            except RuntimeError:  # data after the peer said it closes
                raise HttpError(400, "data after Connection: close") from None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                raise HttpError(status, f"malformed request: {exc}") from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                if event is h11.PAUSED and conn.their_state is not h11.DONE:
                    return out, True  # CONNECT / upgrade: not supported
                return out, False
            if isinstance(event, h11.Request):
                if event.http_version not in (b"1.0", b"1.1"):  # as llhttp does
                    raise HttpError(400, "malformed request: bad HTTP version")
                if len(event.target) > MAX_TARGET:
                    raise HttpError(414, f"request target over {MAX_TARGET} bytes")
                headers = [(bytes(k), bytes(v)) for k, v in event.headers]
                size = sum(len(k) + len(v) for k, v in headers)
                if len(headers) > MAX_HEADERS or size > MAX_HEADER_BYTES:
                    raise HttpError(431, "request header fields too large")
                self._limits.check_headers(headers)
                self._req = (event, headers)
                self._body = []
                self._body_len = 0
                for name, value in headers:
                    if name == b"expect" and value.lower() == b"100-continue":
                        self.expect_continue = True
            elif isinstance(event, h11.Data):
                self._body_len += len(event.data)
                if self._body_len > self._limits.max_body:
                    raise HttpError(413, f"body over {self._limits.max_body} bytes")
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                req, headers = self._req
                self._req = None
                version = req.http_version.decode("ascii")
                keep = _keep_alive(version, headers)
                out.append(
                    Request(
                        req.method.decode("ascii"),
                        bytes(req.target),
                        headers,
                        b"".join(self._body),
                        keep,
                        version,
                    )
                )
                if not keep:
                    return out, False
                # a dummy response moves h11 to the next cycle
                try:
                    conn.send(h11.Response(status_code=204, headers=[]))
                    conn.send(h11.EndOfMessage())
                    conn.start_next_cycle()
                except h11.LocalProtocolError:  # e.g. HTTP/1.0 keep-alive
                    out[-1].keep_alive = False
                    return out, False
            elif isinstance(event, h11.ConnectionClosed):
                return out, False


def _new_parser(kind: str, max_body: int) -> _Parser:
    if kind == "httptools" or (kind == "auto" and httptools is not None):
        return _HttptoolsParser(max_body)
    return cast(_Parser, _H11Parser(max_body))


# -- the connection ------------------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """One HTTP connection taken over from a sniffed binary-port connection."""

    def __init__(self, app: HttpApp, transport: asyncio.Transport, peer: str) -> None:
        self._app = app
        self._transport = transport
        self.peer = peer
        self._parser = _new_parser(app.parser, app.max_body)
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

    def pause_writing(self) -> None:
        self._write_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        if len(self._queue) <= MAX_PIPELINE:
            self._resume_reading()

    # request processing ------------------------------------------------------------

    def _process(self) -> None:
        queue = self._queue
        while queue and not self._busy and not self._closing:
            item = queue.popleft()
            if isinstance(item, HttpError):
                log.info("%s: HTTP %d: %s", self.peer, item.status, item.message)
                self._write(None, _err(item.status, item.message, close=True))
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
            resp = _err(500, "internal error")
        self._write(req, resp)
        self._process()

    def _write(self, req: Request | None, resp: Response) -> None:
        keep = req is not None and req.keep_alive and not resp.close
        if keep and self._stop_after and not self._queue:
            keep = False
        head_only = req is not None and req.method == "HEAD"
        self._transport.write(_encode(resp, head_only, keep))
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
            log.info("%s: HTTP read timeout", self.peer)
            self._write(None, _err(408, "request not received in time", close=True))
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

    def close(self) -> None:
        """Close after what was written so far (server shutdown)."""
        self._close()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._closing = True
        self._cancel_timer()
        self._transport.abort()


# -- the application -----------------------------------------------------------


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _prefers_html(req: Request) -> bool:
    """True when the Accept header ranks text/html above JSON (a browser)."""
    accept = req.header(b"accept")
    if not accept:
        return False
    best_html = best_json = -1.0
    for part in accept.decode("latin-1").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("text/html", "application/xhtml+xml"):
            best_html = max(best_html, q)
        elif media in ("application/json", "*/*", "application/*"):
            best_json = max(
                best_json, q - (0.001 if media != "application/json" else 0)
            )
    return best_html > 0 and best_html >= best_json


class HttpApp:
    """Routes and state shared by the HTTP connections of one server.

    :param scheduler: the server's scheduler (status, writes, stats).
    :param hub: the server's :class:`~.protocol.Hub` (peers of connections,
        the timer re-arm after a write).
    :param name: server name shown on the page.
    :param addresses: the bound addresses (``/readyz``: listening).
    :param running: False while the server stops (``/readyz``: draining).
    :param clock: the server's wall clock.
    :param writes: serve POST and DELETE (else 403).
    :param parser: ``"auto"`` (httptools if importable), ``"httptools"``, ``"h11"``.
    :param allowed_hosts: Host names accepted by the Host check besides IP
        literals, ``localhost``, this machine's name and the listen hosts.
    :param host_check: check the Host header of TCP requests (403 for other
        names; docs/security.md).  On by default, auth or not: without it a
        web page whose name resolves to 127.0.0.1 could read the status
        through a visitor's browser (DNS rebinding).
    """

    def __init__(
        self,
        scheduler: Any,
        hub: Any,
        *,
        name: str = "periodicd",
        addresses: Callable[[], list[str]] = list,
        running: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        writes: bool = False,
        parser: str = "auto",
        max_body: int = DEFAULT_MAX_BODY,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        allowed_hosts: Iterable[str] = (),
        host_check: bool = True,
    ) -> None:
        if parser not in ("auto", "httptools", "h11"):
            raise ValueError(f"unknown HTTP parser {parser!r}")
        if parser == "httptools" and httptools is None:
            raise ValueError("httptools is not installed")
        self.scheduler = scheduler
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop = hub.loop
        self.name = name
        self._addresses = addresses
        self._running = running
        self.clock = clock
        self.writes = writes
        self.parser = parser
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        #: Host names accepted besides IP literals, localhost and the
        #: listen hosts
        hosts = {h.lower().rstrip(".") for h in allowed_hosts}
        with contextlib.suppress(OSError):  # this machine's own name
            hosts.add(socket.gethostname().lower())
        self.allowed_hosts = frozenset(h for h in hosts if h)
        self.host_check = host_check
        self.started = clock()
        self.connections: set[HttpConnection] = set()
        self._loop_thread = threading.get_ident()

    @property
    def parser_name(self) -> str:
        """The parser in use: ``"httptools"`` or ``"h11"``."""
        if self.parser == "auto":
            return "httptools" if httptools is not None else "h11"
        return self.parser

    # -- hand-over from the binary protocol -------------------------------------

    @staticmethod
    def sniff(head: bytes) -> bool | None:
        """See :func:`looks_like_http`."""
        return looks_like_http(head)

    def accept(self, transport: asyncio.Transport, head: bytes, peer: str) -> None:
        """Take over ``transport`` (its first bytes were ``head``)."""
        if len(self.connections) >= self.max_connections:
            log.warning(
                "%s: refusing HTTP: %d connections open", peer, len(self.connections)
            )
            refused = _err(503, "too many HTTP connections")
            transport.write(_encode(refused, False, False))
            transport.close()
            return
        conn = HttpConnection(self, transport, peer)
        self.connections.add(conn)
        transport.set_protocol(conn)
        conn.data_received(head)

    def close_all(self) -> None:
        """Close every HTTP connection (server shutdown)."""
        for conn in list(self.connections):
            conn.close()

    # -- routing -----------------------------------------------------------------

    def _authorize(
        self, req: Request, conn: HttpConnection | None = None
    ) -> Response | None:
        """The one check before routing: a Response refuses the request.

        Over TCP the Host header must name this server (DNS rebinding;
        ``host_check=False`` turns that off).  With an auth file
        (docs/security.md) every request but ``/healthz`` and ``/readyz``
        also needs ``Authorization: Bearer <token>`` of an identity whose
        role and funcs allow it, as a client connection would need on the
        binary side.
        """
        rules = getattr(self.scheduler, "auth", None)
        unix = conn is not None and conn.peer.startswith("unix")
        if self.host_check and not unix and not self._host_ok(req.header(b"host")):
            return _err(403, "Host header not allowed (this server's names only)")
        if rules is None:
            return None
        path = req.path
        if path in (b"/healthz", b"/readyz", b"/favicon.ico"):
            return None  # probes: nothing secret
        ident = _bearer_identity(rules, req.header(b"authorization"))
        if ident is None:
            return _err(
                401,
                "a valid 'Authorization: Bearer <token>' is required",
                headers=(("WWW-Authenticate", 'Bearer realm="periodic"'),),
            )
        req.identity = ident
        if not ident.may_connect_as(False):  # HTTP acts as a client connection
            return _err(403, "this identity may not act as a client")
        if ident.role is Role.ADMIN:
            return None
        func = self._func_of(req, path)
        if func is None:  # admin-only: drop, status page, overview, metrics
            return _err(403, "this request needs the admin role")
        if func and not ident.func_allowed(func):
            return _err(403, f"func {_text(func)!r} is not allowed for this identity")
        return None

    def _func_of(self, req: Request, path: bytes) -> bytes | None:
        """The func a non-admin request names: b"" when none (status list,
        OPTIONS), None when the request is for admins only."""
        method = req.method
        if method == "OPTIONS":
            return b""
        if method in ("GET", "HEAD"):
            if path in (b"/", b"/api/funcs", b"/api/funcs/"):
                return b""  # filtered in _status_all
            if path.startswith(b"/api/funcs/"):
                return path[len(b"/api/funcs/") :]
            if path.startswith((b"/ui", b"/api/", b"/metrics")):
                return None
            return path[1:]  # GET /FUNC
        if method == "POST":
            if path not in (b"", b"/"):
                return path[1:]
            return _form(req).get("func", b"") or None
        return None  # DELETE (drop func) and the rest

    def _host_ok(self, host: bytes | None) -> bool:
        """Is ``host`` (a Host header) a name of this server?"""
        if not host:
            return False
        text = host.decode("latin-1").strip().lower()
        if text.startswith("["):  # [v6]:port
            name = text[1 : text.find("]")] if "]" in text else ""
        else:
            name = text.rsplit(":", 1)[0] if text.count(":") == 1 else text
        name = name.rstrip(".")
        if not name:
            return False
        try:
            ipaddress.ip_address(name)
            return True  # an IP literal cannot be rebound
        except ValueError:
            pass
        if name == "localhost" or name.endswith(".localhost"):
            return True
        if name in self.allowed_hosts:
            return True
        for addr in self._addresses():
            if addr.startswith("tcp://"):
                bound = addr[6:].rsplit(":", 1)[0].strip("[]").lower()
                if bound == name:
                    return True
        return False

    def dispatch(
        self, req: Request, conn: HttpConnection | None = None
    ) -> Response | asyncio.Future[Response]:
        """Answer ``req``: a Response now, or a future one (writes)."""
        try:
            refused = self._authorize(req, conn)
            if refused is not None:
                return refused
            return self._route(req)
        except HttpError as exc:
            return _err(exc.status, exc.message)
        except Exception:
            log.exception("HTTP %s %r: internal error", req.method, req.target[:200])
            return _err(500, "internal error")

    def _route(self, req: Request) -> Response | asyncio.Future[Response]:
        method = req.method
        path = req.path
        if method in ("GET", "HEAD"):
            return self._get(req, path)
        if method == "POST":
            return self._post(req, path)
        if method == "DELETE":
            return self._delete(req, path)
        if method == "OPTIONS":
            return Response(204, headers=(("Allow", _ALLOW),))
        return _err(405, f"method {method} not allowed", headers=(("Allow", _ALLOW),))

    def _get(self, req: Request, path: bytes) -> Response | asyncio.Future[Response]:
        if path == b"/":
            if _prefers_html(req):
                return self._page()
            return json_response(200, self._status_all(req))
        if path in (b"/ui", b"/ui/"):
            return self._page()
        if path == b"/ui/fragment":
            return Response(200, _render_fragment(self.overview()).encode(), _HTML)
        if path == b"/api/overview":
            return json_response(200, self.overview())
        if path == b"/metrics":
            return self._metrics_response()
        if path == b"/healthz":
            return json_response(200, {"status": "ok"})
        if path == b"/readyz":
            ready, checks = self.readiness()
            return json_response(200 if ready else 503, {"ready": ready, **checks})
        if path in (b"/api/funcs", b"/api/funcs/"):
            return json_response(200, self._status_all(req))
        if path == b"/favicon.ico":
            return Response(204)
        if path.startswith(b"/api/funcs/"):
            return self._status_one(path[len(b"/api/funcs/") :])
        return self._status_one(path[1:])

    def _status_all(self, req: Request | None = None) -> dict[str, Any]:
        now = self.clock()
        ident = req.identity if req is not None else None
        return {
            _text(s.func): _func_json(s)
            for s in self.scheduler.status(now)
            if ident is None or ident.func_allowed(s.func)
        }

    def _status_one(self, func: bytes) -> Response:
        stat = self.scheduler.func_stat(func, self.clock())
        if stat is None:
            return _err(404, f"unknown func {_text(func)!r}")
        return json_response(200, _func_json(stat))

    # -- writes ----------------------------------------------------------------------

    def _refuse_write(self, req: Request) -> Response | None:
        """403 unless writes are on and the request is not a browser's
        cross-site request (a page elsewhere posting to this server)."""
        if not self.writes:
            return _err(
                403, "writes over HTTP are off (start the server with --http-writes)"
            )
        if req.header(b"sec-fetch-site") == b"cross-site":
            return _err(403, "cross-site write refused")
        origin = req.header(b"origin")
        if origin is not None:
            host = req.header(b"host") or b""
            if origin.split(b"://", 1)[-1].rstrip(b"/") != host:
                return _err(403, "cross-origin write refused")
        return None

    def _post(self, req: Request, path: bytes) -> Response | asyncio.Future[Response]:
        refused = self._refuse_write(req)
        if refused is not None:
            return refused
        form = _form(req)
        func = path[1:] if path not in (b"", b"/") else form.get("func", b"")
        name = form.get("name", b"")
        if not func or not name:
            return _err(400, "job name or func is required")
        if len(func) > 255 or len(name) > 255:
            return _err(400, "func and name must be at most 255 bytes")
        now = self.clock()
        if form.get("act", b"").lower() == b"remove":
            if not self.scheduler.remove(func, name, now):
                return _err(404, f"job {_text(func)}:{_text(name)} does not exist")
            return self._durable(_SUCCESS)
        sched_at = _int_field(form, "sched_at", -(1 << 63), (1 << 63) - 1)
        timeout = _int_field(form, "timeout", 0, (1 << 31) - 1)
        job = Job(func, name, form.get("args", b""), sched_at, 0, timeout)
        if not self.scheduler.submit(job, now):
            return _err(409, f"func {_text(func)!r} holds the maximum number of jobs")
        return self._durable(_SUCCESS)

    def _delete(self, req: Request, path: bytes) -> Response | asyncio.Future[Response]:
        refused = self._refuse_write(req)
        if refused is not None:
            return refused
        func = path[1:]
        if not func:
            return _err(400, "func is required")
        result = self.scheduler.drop_func(func, self.clock())
        if result == "unknown":
            return _err(404, f"unknown func {_text(func)!r}")
        if result == "busy":
            return _err(409, f"func {_text(func)!r} has workers connected; not dropped")
        return self._durable(_SUCCESS)

    def _durable(self, ok: Response) -> Response | asyncio.Future[Response]:
        """``ok`` once the store committed what was just written, else 503."""
        on_input = getattr(self.hub, "on_input", None)
        if on_input is not None:
            on_input()  # the write may have brought the next wake-up earlier
        store = getattr(self.scheduler, "store", None)
        if store is None:
            return ok
        loop = self.loop
        fut: asyncio.Future[Response] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(ok)
            else:
                fut.set_result(_err(503, f"store commit failed: {error}"))

        def durable(error: BaseException | None) -> None:
            if threading.get_ident() == self._loop_thread:
                settle(error)
            else:
                with contextlib.suppress(RuntimeError):  # loop closed
                    loop.call_soon_threadsafe(settle, error)

        store.on_durable(durable)
        if fut.done():  # an immediate store answered synchronously
            return fut.result()

        def expire() -> None:
            if not fut.done():
                fut.set_result(_err(503, "store commit did not finish in time"))

        timer = loop.call_later(self.write_timeout, expire)
        fut.add_done_callback(lambda _: timer.cancel())
        return fut

    # -- health ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks): store healthy, listening, not draining."""
        running = self._running()
        listening = running and bool(self._addresses())
        store_ok = _store_healthy(getattr(self.scheduler, "store", None))
        checks = {"listening": listening, "draining": not running, "store": store_ok}
        return listening and store_ok and running, checks

    def _metrics_response(self) -> asyncio.Future[Response]:
        """Numbers copied here, formatted in a worker thread (the slow part)."""
        from . import metrics  # noqa: PLC0415 - prometheus-client on demand

        snap = metrics.snapshot(self)
        loop = self.loop
        out: asyncio.Future[Response] = loop.create_future()
        rendering = loop.run_in_executor(None, metrics.render, snap)

        def done(fut: asyncio.Future[bytes]) -> None:
            if out.done():
                return
            try:
                body = fut.result()
            except Exception:
                log.exception("/metrics: rendering failed")
                out.set_result(_err(500, "internal error"))
                return
            out.set_result(Response(200, body, metrics.CONTENT_TYPE))

        rendering.add_done_callback(done)
        return out

    # -- the status page -------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Everything the status page shows (also ``GET /api/overview``)."""
        sched = self.scheduler
        now = self.clock()
        details = sched.func_details(now)
        conns = sched.connections()
        hub_conns = getattr(self.hub, "connections", {})
        workers = sum(1 for c in conns if c.worker)
        funcs = [
            {
                "func": _text(d.func),
                "workers": d.workers,
                "jobs": d.jobs,
                "due": d.due,
                "running": d.running,
                "locked": d.locked,
                "next_due": d.next_due,
                "oldest_due_age": None if d.oldest_due is None else now - d.oldest_due,
                "no_worker": d.due > 0 and d.workers == 0,
                "submitted": d.submitted,
                "done": d.done,
                "failed": d.failed,
                "sched_later": d.sched_later,
            }
            for d in details
        ]
        # funcs that need attention first, then by name
        funcs.sort(key=lambda f: (not f["no_worker"], f["func"]))
        connections = []
        for c in conns[:PAGE_ROWS]:
            proto = hub_conns.get(c.id)
            connections.append(
                {
                    "id": c.id,
                    "kind": "worker" if c.worker else "client",
                    "peer": getattr(proto, "peer", "?"),
                    "identity": None if c.identity is None else _text(c.identity),
                    "funcs": [_text(f) for f in c.funcs],
                    "slots": c.slots,
                    "running": c.running,
                    "unconfirmed": c.unconfirmed,
                    "idle": max(0.0, now - c.last_seen),
                }
            )
        locks = [
            {
                "name": _text(lk.name),
                "max": lk.max,
                "holders": [_lock_entry(e, now) for e in lk.holders],
                "waiting": [_lock_entry(e, now) for e in lk.waiting],
            }
            for lk in sched.locks()[:PAGE_ROWS]
        ]
        events = [
            {"time": e.time, "kind": e.kind, "message": e.message}
            for e in reversed(sched.stats.events)
        ]
        rates = sched.rates(now)
        return {
            "server": {
                "name": self.name,
                "version": __version__,
                "addresses": self._addresses(),
                "now": now,
                "uptime": now - self.started,
                "writes": self.writes,
                "draining": not self._running(),
                "store": type(getattr(sched, "store", None)).__name__,
            },
            "totals": {
                "scheduled": sum(d.jobs for d in details),
                "due": sum(d.due for d in details),
                "running": sum(d.running for d in details),
                "locked": sum(d.locked for d in details),
                "workers": workers,
                "clients": len(conns) - workers,
                "funcs": len(details),
                "http_connections": len(self.connections),
                "no_worker_funcs": sum(1 for f in funcs if f["no_worker"]),
            },
            "per_minute": {k: round(v, 2) for k, v in rates.items()},
            "counters": sched.counters(),
            "funcs": funcs[:PAGE_ROWS],
            "funcs_total": len(funcs),
            "connections": connections,
            "connections_total": len(conns),
            "locks": locks,
            "events": events[:100],
        }

    def _page(self) -> Response:
        ov = self.overview()
        page = _PAGE.format(
            title=html.escape(f"{self.name} · periodic_fast"),
            name=html.escape(self.name),
            version=html.escape(__version__),
            writes=_WRITE_FORMS if self.writes else "",
            mode="read-write" if self.writes else "read-only",
            content=_render_fragment(ov),
        )
        return Response(200, page.encode(), _HTML)


# -- helpers for the routes ------------------------------------------------------


def _func_json(stat: Any) -> dict[str, Any]:
    """One STATUS line in the reference's JSON shape (plus locked, sched_at)."""
    return {
        "func_name": _text(stat.func),
        "total_worker": stat.workers,
        "total_job": stat.jobs,
        "processing": stat.processing,
        "locked": stat.locked,
        "sched_at": stat.sched_at,
    }


def _lock_entry(entry: tuple[bytes, bytes, float], now: float) -> dict[str, Any]:
    func, name, since = entry
    return {"func": _text(func), "name": _text(name), "for": max(0.0, now - since)}


def _bearer_identity(rules: Any, header: bytes | None) -> Identity | None:
    """The identity of an ``Authorization: Bearer <token>`` header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    ident: Identity | None = rules.authenticate_token(token)
    return ident


def _form(req: Request) -> dict[str, bytes]:
    """Form fields from the query string and the body (first value wins;
    the body's win over the query's).  Raises HttpError(400/415)."""
    fields: dict[str, bytes] = {}
    ctype = (req.header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    body_fields: list[tuple[bytes, bytes]] = []
    if req.body:
        if ctype in (b"", b"application/x-www-form-urlencoded"):
            body_fields = _parse_qs(req.body)
        elif ctype == b"application/json":
            try:
                obj = json.loads(req.body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise HttpError(400, f"bad JSON body: {exc}") from None
            if not isinstance(obj, dict):
                raise HttpError(400, "the JSON body must be an object")
            for key, value in obj.items():
                if not isinstance(value, (str, int)) or isinstance(value, bool):
                    raise HttpError(400, f"field {key!r} must be a string or a number")
                body_fields.append((str(key).encode(), str(value).encode()))
        else:
            raise HttpError(
                415, "send the fields as application/x-www-form-urlencoded or JSON"
            )
    for key, value in [*body_fields, *_parse_qs(req.query)]:
        fields.setdefault(key.decode("latin-1"), value)
    return fields


def _parse_qs(raw: bytes) -> list[tuple[bytes, bytes]]:
    """``a=1&b=x%20y`` as bytes pairs (values are bytes: any workload)."""
    out: list[tuple[bytes, bytes]] = []
    for part in raw.split(b"&"):
        if not part:
            continue
        if len(out) >= _MAX_FIELDS:
            raise HttpError(400, f"bad form: more than {_MAX_FIELDS} fields")
        key, _, value = part.partition(b"=")
        out.append(
            (
                unquote_to_bytes(key.replace(b"+", b" ")),
                unquote_to_bytes(value.replace(b"+", b" ")),
            )
        )
    return out


def _int_field(form: dict[str, bytes], key: str, low: int, high: int) -> int:
    raw = form.get(key, b"").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(
            400, f"{key} must be an integer, not {_text(raw[:40])!r}"
        ) from None
    if not low <= value <= high:
        raise HttpError(400, f"{key} out of range ({low}..{high})")
    return value


def _store_healthy(store: Any) -> bool:
    if store is None or getattr(store, "closed", False):
        return False
    metrics = getattr(store, "metrics", None)
    if callable(metrics):
        try:
            return bool(metrics().get("healthy", 1.0))
        except Exception:  # pragma: no cover - a failing store is not ready
            log.exception("store.metrics() failed")
            return False
    return True


# -- page rendering (server side; the page's script re-fetches the fragment) ------


def _dur(seconds: float | None) -> str:
    """A short human duration: 0.4s, 12s, 3m 5s, 2h 10m, 4d 3h."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    n = int(s)
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m {n % 60}s"
    if n < 86400:
        return f"{n // 3600}h {n % 3600 // 60}m"
    return f"{n // 86400}d {n % 86400 // 3600}h"


def _when(at: int | None, now: float) -> str:
    if at is None:
        return "-"
    if at <= now:
        return "now"
    return "in " + _dur(at - now)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _render_fragment(ov: dict[str, Any]) -> str:
    """The live part of the page: totals, funcs, connections, locks, events."""
    now = ov["server"]["now"]
    t = ov["totals"]
    pm = ov["per_minute"]
    out: list[str] = []
    cards = [
        ("scheduled", t["scheduled"], ""),
        ("due", t["due"], "warn" if t["due"] else ""),
        ("running", t["running"], ""),
        ("locked", t["locked"], ""),
        ("workers", t["workers"], ""),
        ("clients", t["clients"], ""),
        ("done / min", pm["done"], ""),
        ("fail / min", pm["fail"], "bad" if pm["fail"] else ""),
        ("sched_later / min", pm["sched_later"], ""),
        ("submit / min", pm["submit"], ""),
    ]
    out.append('<section class="cards" id="totals">')
    for label, value, cls in cards:
        key = label.split(" ")[0]
        shown = f"{value:g}" if isinstance(value, float) else str(value)
        out.append(
            f'<div class="card {cls}" data-total="{_e(key)}">'
            f'<div class="v">{_e(shown)}</div><div class="l">{_e(label)}</div></div>'
        )
    out.append("</section>")
    if t["no_worker_funcs"]:
        out.append(
            f'<p class="alert-banner" id="no-worker">{t["no_worker_funcs"]} func(s) '
            "have due jobs and no worker</p>"
        )
    out.append(f'<h2>Funcs <span class="n">{ov["funcs_total"]}</span></h2>')
    if ov["funcs"]:
        out.append(
            '<table id="funcs"><thead><tr><th>func</th><th>workers</th><th>jobs</th>'
            "<th>due</th><th>processing</th><th>locked</th><th>next due</th>"
            "<th>oldest due</th><th>done</th><th>failed</th></tr></thead><tbody>"
        )
        for f in ov["funcs"]:
            cls = ' class="alert"' if f["no_worker"] else ""
            out.append(
                f'<tr{cls} data-func="{_e(f["func"])}"><td class="name">'
                f"{_e(f['func'])}</td><td>{f['workers']}</td><td>{f['jobs']}</td>"
                f"<td>{f['due']}</td><td>{f['running']}</td><td>{f['locked']}</td>"
                f"<td>{_e(_when(f['next_due'], now))}</td>"
                f"<td>{_e(_dur(f['oldest_due_age']))}</td><td>{f['done']}</td>"
                f"<td>{f['failed']}</td></tr>"
            )
        out.append("</tbody></table>")
        if ov["funcs_total"] > len(ov["funcs"]):
            out.append(f'<p class="muted">first {len(ov["funcs"])} shown</p>')
    else:
        out.append('<p class="muted">no funcs yet</p>')
    out.append(f'<h2>Connections <span class="n">{ov["connections_total"]}</span></h2>')
    if ov["connections"]:
        out.append(
            '<table id="connections"><thead><tr><th>id</th><th>kind</th><th>peer</th>'
            "<th>identity</th><th>funcs</th><th>free slots</th><th>running</th>"
            "<th>idle</th></tr></thead><tbody>"
        )
        for c in ov["connections"]:
            funcs = ", ".join(c["funcs"][:8]) + (" ..." if len(c["funcs"]) > 8 else "")
            out.append(
                f"<tr><td>{c['id']}</td><td>{c['kind']}</td><td>{_e(c['peer'])}</td>"
                f"<td>{_e(c['identity'] or '-')}</td><td>{_e(funcs or '-')}</td>"
                f"<td>{c['slots']}</td><td>{c['running']}</td>"
                f"<td>{_e(_dur(c['idle']))}</td></tr>"
            )
        out.append("</tbody></table>")
    else:
        out.append('<p class="muted">no registered connections</p>')
    out.append(f'<h2>Locks <span class="n">{len(ov["locks"])}</span></h2>')
    if ov["locks"]:
        out.append(
            '<table id="locks"><thead><tr><th>lock</th><th>max</th><th>holders</th>'
            "<th>waiting</th></tr></thead><tbody>"
        )
        for lk in ov["locks"]:
            holders = ", ".join(f"{h['func']}:{h['name']}" for h in lk["holders"][:8])
            out.append(
                f"<tr><td>{_e(lk['name'])}</td><td>{lk['max']}</td>"
                f"<td>{_e(holders or '-')}</td><td>{len(lk['waiting'])}</td></tr>"
            )
        out.append("</tbody></table>")
    else:
        out.append('<p class="muted">no locks held</p>')
    out.append('<h2>Recent events</h2><ol id="events">')
    for ev in ov["events"][:50]:
        stamp = time.strftime("%H:%M:%S", time.localtime(ev["time"]))
        out.append(
            f'<li class="ev-{_e(ev["kind"])}"><time>{stamp}</time> '
            f"<b>{_e(ev['kind'])}</b> {_e(ev['message'])}</li>"
        )
    if not ov["events"]:
        out.append('<li class="muted">nothing yet</li>')
    out.append("</ol>")
    srv = ov["server"]
    out.append(
        f'<footer id="server-info" data-now="{srv["now"]:.3f}">'
        f"{_e(', '.join(srv['addresses']))} · store {_e(srv['store'])} · "
        f"up {_e(_dur(srv['uptime']))} · HTTP connections "
        f"{t['http_connections']}</footer>"
    )
    return "".join(out)


_WRITE_FORMS = """
<details id="writes"><summary>Submit or remove a job</summary>
<form data-action="submit"><input name="func" placeholder="func" required>
<input name="name" placeholder="name" required><input name="args" placeholder="args">
<input name="sched_at" placeholder="sched_at (Unix s)"><input name="timeout"
placeholder="timeout (s)"><button>submit</button></form>
<form data-action="remove"><input name="func" placeholder="func" required>
<input name="name" placeholder="name" required><input type="hidden" name="act"
value="remove"><button>remove</button></form><output id="write-result"></output>
</details>"""

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
:root {{ --fg:#1d2330; --muted:#6b7385; --line:#e3e6ee; --bg:#f6f7fb; --card:#fff;
  --warn:#b35c00; --bad:#b3261e; --ok:#1e7b34; }}
* {{ box-sizing: border-box; }}
body {{ margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;
  color:var(--fg); background:var(--bg); }}
header {{ display:flex; align-items:baseline; gap:1em; padding:14px 24px;
  background:#1d2330; color:#fff; }}
header h1 {{ font-size:18px; margin:0; }}
header .meta {{ color:#aeb6c8; font-size:12px; }}
#refresh-state {{ margin-left:auto; font-size:12px; }}
#refresh-state.ok {{ color:#8fe3a5; }} #refresh-state.bad {{ color:#ff9c94; }}
main {{ padding:16px 24px 32px; max-width:1400px; }}
.cards {{ display:grid; grid-template-columns:repeat(auto-fill,minmax(100px,1fr));
  gap:10px; }}
.card {{ background:var(--card); border:1px solid var(--line); border-radius:8px;
  padding:10px 12px; }}
.card .v {{ font-size:22px; font-weight:600; font-variant-numeric:tabular-nums; }}
.card .l {{ color:var(--muted); font-size:12px; }}
.card.warn .v {{ color:var(--warn); }} .card.bad .v {{ color:var(--bad); }}
h2 {{ font-size:15px; margin:22px 0 8px; }}
h2 .n {{ color:var(--muted); font-weight:400; }}
table {{ border-collapse:collapse; width:100%; background:var(--card);
  border:1px solid var(--line); border-radius:8px; overflow:hidden; }}
th,td {{ text-align:left; padding:6px 10px; border-bottom:1px solid var(--line);
  font-variant-numeric:tabular-nums; }}
th {{ background:#eef0f6; font-weight:600; font-size:12px; color:#3b4356; }}
tr.alert td {{ background:#fdecea; color:var(--bad); font-weight:600; }}
td.name {{ font-family:ui-monospace,Menlo,monospace; }}
.alert-banner {{ background:#fdecea; color:var(--bad); border:1px solid #f5c2bd;
  padding:8px 12px; border-radius:8px; margin:14px 0 0; }}
.muted {{ color:var(--muted); }}
ol#events {{ list-style:none; padding:0; margin:0; background:var(--card);
  border:1px solid var(--line); border-radius:8px; max-height:320px; overflow:auto; }}
ol#events li {{ padding:4px 10px; border-bottom:1px solid var(--line); }}
ol#events time {{ color:var(--muted); font-family:ui-monospace,monospace; }}
.ev-fail b,.ev-timeout b {{ color:var(--bad); }} .ev-connect b {{ color:var(--ok); }}
footer {{ color:var(--muted); font-size:12px; margin-top:20px; }}
details#writes {{ margin:0 0 14px; }} form {{ margin:6px 0; }}
input {{ padding:4px 6px; border:1px solid var(--line); border-radius:4px; }}
</style></head>
<body data-refreshes="0">
<header><h1>{name}</h1><span class="meta">periodic_fast {version} · {mode}</span>
<span id="refresh-state">server-rendered; live refresh needs JavaScript</span></header>
<main>{writes}<div id="content">{content}</div></main>
<script>
(function () {{
  var box = document.getElementById("content");
  var state = document.getElementById("refresh-state");
  var count = 0;
  function refresh() {{
    fetch("/ui/fragment", {{cache: "no-store"}})
      .then(function (r) {{ if (!r.ok) throw new Error("HTTP " + r.status);
                            return r.text(); }})
      .then(function (text) {{
        box.innerHTML = text; count += 1;
        document.body.setAttribute("data-refreshes", String(count));
        state.className = "ok";
        state.textContent = "live · refreshed " + new Date().toLocaleTimeString();
      }})
      .catch(function (e) {{
        state.className = "bad"; state.textContent = "not refreshed: " + e.message;
      }})
      .then(function () {{ setTimeout(refresh, 2000); }});
  }}
  state.textContent = "live";
  refresh();
  document.querySelectorAll("form[data-action]").forEach(function (form) {{
    form.addEventListener("submit", function (ev) {{
      ev.preventDefault();
      var out = document.getElementById("write-result");
      fetch("/", {{method: "POST", body: new URLSearchParams(new FormData(form))}})
        .then(function (r) {{ return r.text().then(function (t) {{
          out.textContent = r.status + " " + t; }}); }})
        .catch(function (e) {{ out.textContent = String(e); }});
    }});
  }});
}})();
</script>
</body></html>
"""
