"""The job-feature JSON API: one route table the HTTP app consults first.

Each feature module (retries and the dead set, cron schedules, the job
browser) exports ``ROUTES``, a mapping ``(method, path) -> handler``; this
module merges them.  A handler gets the :class:`ApiContext` (the HTTP app)
and the request, and returns a response, or a future one for a write that
must be committed first (:meth:`ApiContext.durable`).  ``HEAD`` is served by
the ``GET`` handler.  With an auth file, every ``/api/`` route but the status
list needs the admin role (server/http_guard.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from . import http_jobs as _http_jobs
from .http_series import ROUTES as SERIES_ROUTES
from .http_wire import HttpError, Request, Response
from .status_page import ROUTES as PAGE_ROUTES
from .views import SchedulerView

__all__ = ["ROUTES", "ApiContext", "Handler", "json_body", "route_for"]


class ApiContext(Protocol):
    """What a route handler may use of the HTTP app."""

    scheduler: SchedulerView
    clock: Callable[[], float]  #: the server's wall clock
    mono_clock: Callable[[], float]  #: the server's monotonic clock

    def durable(self, ok: Response) -> Response | asyncio.Future[Response]:
        """``ok`` once the store committed what was just written, else 503."""
        ...


Handler = Callable[[ApiContext, Request], "Response | asyncio.Future[Response]"]


def json_body(req: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty); HttpError(400/415)."""
    if not req.body:
        return {}
    ctype = (req.header(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if ctype not in (b"application/json", b""):
        raise HttpError(415, "send a JSON object (Content-Type: application/json)")
    try:
        obj = json.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"bad JSON body: {exc}") from None
    if not isinstance(obj, dict):
        raise HttpError(400, "the JSON body must be an object")
    return obj


RouteTable = Mapping[tuple[str, bytes], Handler]

# the feature modules import this one's names: imported once they exist
from .http_retry import ROUTES as _retry_routes  # noqa: E402


def _merge(*tables: RouteTable) -> dict[tuple[str, bytes], Handler]:
    routes: dict[tuple[str, bytes], Handler] = {}
    for table in tables:
        for key, handler in table.items():
            if key in routes:  # pragma: no cover - a programming error
                raise RuntimeError(f"route {key!r} defined twice")
            routes[key] = handler
    return routes


#: every feature route: (method, path) -> handler
ROUTES: dict[tuple[str, bytes], Handler] = _merge(
    SERIES_ROUTES,  # the dashboard's series (server/http_series)
    PAGE_ROUTES,  # the dashboard's script and style (server/status_page)
    _http_jobs.ROUTES,  # the job browser
    _retry_routes,  # retry policies and the dead set
)


def route_for(method: str, path: bytes) -> Handler | None:
    """The handler of ``method path`` (HEAD uses GET's), or None."""
    return ROUTES.get(("GET" if method == "HEAD" else method, path))
