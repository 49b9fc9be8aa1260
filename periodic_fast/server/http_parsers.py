"""The two HTTP/1.1 request parsers behind one small interface.

httptools (llhttp) when importable, else h11 (pure Python); both produce
:class:`~.http_wire.Request` objects and enforce the same limits: request
target (414), header count and bytes (431), body size (413), with 400 for
anything malformed (:class:`~.http_wire.HttpError`).
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from .http_wire import MAX_HEADER_BYTES, MAX_HEADERS, MAX_TARGET, HttpError, Request

try:  # the fast parser; h11 (pure Python) is the fallback
    import httptools
except ImportError:  # pragma: no cover - exercised by forcing the h11 parser
    httptools = None  # type: ignore[assignment]

__all__ = ["PARSERS", "Parser", "httptools", "new_parser", "parser_name"]

#: Values of ``HttpApp(parser=...)``.
PARSERS = ("auto", "httptools", "h11")


class Parser(Protocol):
    """What :class:`HttpConnection` needs from a request parser."""

    #: True while a request has started but is not complete
    in_progress: bool
    #: set when a request asked for ``100 Continue`` (cleared by the reader)
    expect_continue: bool

    def feed(self, data: bytes) -> tuple[list[Request], bool]:
        """Parse ``data``; the completed requests, and True when the stream
        cannot continue after them (upgrade).  Raises :class:`HttpError`."""
        ...

    def release(self) -> None:
        """The connection closed: drop every buffer and reference cycle now
        (reference counting frees the parser at once, GC tuning or not)."""
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
        self._parser: Any = httptools.HttpRequestParser(self)
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

    def release(self) -> None:
        # llhttp holds this object for its callbacks: a cycle holding the
        # partial body
        self._parser = None
        self._reset()
        self._done = []

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

    def release(self) -> None:
        self._req = None
        self._body = []

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


def parser_name(kind: str) -> str:
    """The parser ``kind`` (one of :data:`PARSERS`) stands for: ``"httptools"``
    or ``"h11"``."""
    if kind == "auto":
        return "httptools" if httptools is not None else "h11"
    return kind


def new_parser(kind: str, max_body: int) -> Parser:
    """A fresh parser of ``kind`` (one of :data:`PARSERS`) for one connection."""
    if kind == "httptools" or (kind == "auto" and httptools is not None):
        return _HttptoolsParser(max_body)
    return cast(Parser, _H11Parser(max_body))
