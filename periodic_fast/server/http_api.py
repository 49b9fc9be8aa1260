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

from . import http_cron as _cron
from . import http_jobs as _http_jobs
from .http_ctx import ApiContext, Handler, RouteTable, json_body
from .http_retry import ROUTES as _retry_routes
from .http_series import ROUTES as SERIES_ROUTES
from .status_page import ROUTES as PAGE_ROUTES

__all__ = ["ROUTES", "ApiContext", "Handler", "json_body", "route_for"]


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
    _cron.ROUTES,  # cron schedules
    SERIES_ROUTES,  # the dashboard's series (server/http_series)
    PAGE_ROUTES,  # the dashboard's script and style (server/status_page)
    _http_jobs.ROUTES,  # the job browser
    _retry_routes,  # retry policies and the dead set
)


def route_for(method: str, path: bytes) -> Handler | None:
    """The handler of ``method path`` (HEAD uses GET's), or None."""
    return ROUTES.get(("GET" if method == "HEAD" else method, path))
