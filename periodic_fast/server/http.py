"""HTTP on the binary port: the classic curl API, a status page, metrics, health.

The server's connections all start as :class:`~.protocol.ServerProtocol`; its
``_sniff`` asks :meth:`HttpApp.sniff` whether the first bytes are an HTTP
request method and, if so, hands the transport to :meth:`HttpApp.accept`,
which installs an :class:`HttpConnection` as the transport's protocol.  A
binary connection never reaches the HTTP modules.

This module keeps the names of the HTTP side at their historical import
path; the code lives in one module per concern:

* :mod:`.http_wire`: requests, responses, errors, response encoding, forms;
* :mod:`.http_parsers`: the httptools and h11 parsers and their limits;
* :mod:`.http_conn`: :class:`HttpConnection` (keep-alive, pipelining,
  timeouts, flow control);
* :mod:`.http_guard`: the Host check, bearer tokens, write guards;
* :mod:`.http_app`: :class:`HttpApp`, the routes and the JSON API;
* :mod:`.status_page` and ``templates/``: the HTML status page;
* :mod:`.metrics`: ``/metrics``.
"""

from __future__ import annotations

from .http_app import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_WRITE_TIMEOUT,
    HttpApp,
)
from .http_conn import MAX_PIPELINE, HttpConnection
from .http_parsers import httptools

# a private name tests/test_http.py uses to force the h11 fallback
from .http_parsers import new_parser as _new_parser  # noqa: F401
from .http_wire import (
    DEFAULT_MAX_BODY,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_TARGET,
    HttpError,
    Request,
    Response,
    json_response,
    looks_like_http,
)
from .status_page import PAGE_ROWS

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "MAX_HEADERS",
    "MAX_HEADER_BYTES",
    "MAX_PIPELINE",
    "MAX_TARGET",
    "PAGE_ROWS",
    "HttpApp",
    "HttpConnection",
    "HttpError",
    "Request",
    "Response",
    "httptools",
    "json_response",
    "looks_like_http",
]
