"""What the job-feature routes share: their context, handler type, JSON body.

A route handler of the JSON API (server/http_api's table, filled by
``http_retry``, ``http_cron``, ``http_jobs``, ``http_series`` and the
status page's static files) gets an :class:`ApiContext` (the HTTP app) and
the request, and answers a response, or a future one for a write that must
be committed first (:meth:`ApiContext.durable`).  This module sits below the
feature modules so they need not import ``http_api``, which imports them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from .http_wire import HttpError, Request, Response
from .views import HubView, SchedulerView

__all__ = ["Answer", "ApiContext", "Handler", "RouteTable", "json_body"]

#: what a handler returns: a response now, or one after the commit
Answer = Response | asyncio.Future[Response]


class ApiContext(Protocol):
    """What a route handler may use of the HTTP app."""

    scheduler: SchedulerView
    hub: HubView
    clock: Callable[[], float]  #: the server's wall clock
    mono_clock: Callable[[], float]  #: the server's monotonic clock

    def durable(self, ok: Response) -> Answer:
        """``ok`` once the store committed what was just written, else 503."""
        ...


Handler = Callable[[ApiContext, Request], Answer]
RouteTable = Mapping[tuple[str, bytes], Handler]


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
