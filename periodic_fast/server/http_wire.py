"""HTTP messages: :class:`Request`, :class:`Response`, :class:`HttpError`,
the response encoding and the form fields of a request.

No parsing of the byte stream here (:mod:`.http_parsers`) and no routing
(:mod:`.http_app`): the shapes both sides share.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Any, Final, NamedTuple
from urllib.parse import unquote_to_bytes

from .. import __version__
from ..auth import Identity

__all__ = [
    "DEFAULT_MAX_BODY",
    "HttpError",
    "Request",
    "Response",
    "encode_response",
    "error_response",
    "form_fields",
    "int_field",
    "json_response",
    "looks_like_http",
    "text",
]

#: Largest request body accepted (413 beyond).
DEFAULT_MAX_BODY: Final = 1024 * 1024
#: Longest request target (414 beyond).
MAX_TARGET: Final = 8 * 1024
#: Header block limits (431 beyond): number of headers, bytes of names+values.
MAX_HEADERS: Final = 100
MAX_HEADER_BYTES: Final = 32 * 1024

_METHODS: Final = (
    b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
    b"TRACE ", b"CONNECT ",
)  # fmt: skip
_MAX_FIELDS: Final = 64  # form fields per request
JSON: Final = "application/json; charset=utf-8"
HTML: Final = "text/html; charset=utf-8"
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


def text(raw: bytes) -> str:
    """Bytes from the wire or the scheduler as text (never fails)."""
    return raw.decode("utf-8", "backslashreplace")


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
    content_type: str = JSON
    headers: tuple[tuple[str, str], ...] = ()
    close: bool = False  #: close the connection after this response


def json_response(status: int, obj: Any, **kw: Any) -> Response:
    """``obj`` as a JSON body."""
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return Response(status, body.encode() + b"\n", JSON, **kw)


def error_response(status: int, message: str, **kw: Any) -> Response:
    """``{"err": message}`` with ``status``."""
    return json_response(status, {"err": message}, **kw)


#: The reference's answer to a write that took effect.
SUCCESS: Final = json_response(200, {"msg": "SUCCESS"})


def encode_response(resp: Response, head_only: bool, keep_alive: bool) -> bytes:
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


# -- form fields ---------------------------------------------------------------


def form_fields(req: Request) -> dict[str, bytes]:
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


def int_field(form: dict[str, bytes], key: str, low: int, high: int) -> int:
    """Integer field ``key`` (0 when absent); HttpError(400) when malformed
    or outside ``low..high``."""
    raw = form.get(key, b"").strip()
    if not raw:
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise HttpError(
            400, f"{key} must be an integer, not {text(raw[:40])!r}"
        ) from None
    if not low <= value <= high:
        raise HttpError(400, f"{key} out of range ({low}..{high})")
    return value
