"""The cron routes of the JSON API (docs/cron.md, docs/http.md).

* ``GET /api/cron?func=&limit=`` lists the schedules (all, or one func's),
  each with its next five fire times as ISO-8601 local times;
* ``POST /api/cron`` with a JSON object ``{"func", "name", "cron", "tz",
  "missed", "args", "timeout"}`` creates or replaces a schedule and submits
  its job (answered once both are committed);
* ``DELETE /api/cron?func=&name=`` removes a schedule and its job.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from ..cron import CronError, CronRefused, iso, next_fires
from .http_ctx import ApiContext, Handler
from .http_ctx import json_body as _json_body
from .http_wire import (
    HttpError,
    Request,
    Response,
    error_response,
    form_fields,
    int_field,
    json_response,
    text,
)

__all__ = ["ROUTES"]

_NEXT_RUNS: Final = 5  # fire times listed per schedule
_LIMIT: Final = 1000  # schedules listed by default
_MAX_LIMIT: Final = 10_000


def _string(body: dict[str, Any], key: str, default: str | None = None) -> str:
    value = body.get(key, default)
    if value is None:
        raise HttpError(400, f"{key} is required")
    if not isinstance(value, str):
        raise HttpError(400, f"{key} must be a string")
    return value


def _key(value: str, what: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    if not 0 < len(raw) <= 255:
        raise HttpError(400, f"{what} must be 1 to 255 bytes")
    return raw


def _list(ctx: ApiContext, req: Request) -> Response:
    form = form_fields(req)
    func = form.get("func") or None
    limit = int_field(form, "limit", 0, _MAX_LIMIT) or _LIMIT
    now = ctx.clock()
    infos = ctx.scheduler.cron_schedules(func, now)
    out = []
    for info in infos[:limit]:
        try:
            later = next_fires(info.cron, info.tz, info.next_run, _NEXT_RUNS - 1)
        except CronError:  # pragma: no cover - a stored schedule is valid
            later = []
        out.append(
            {
                "func": text(info.func),
                "name": text(info.name),
                "cron": info.cron,
                "tz": info.tz,
                "missed": info.missed,
                "state": info.state,
                "next_run": info.next_run,
                "next_runs": [iso(t, info.tz) for t in (info.next_run, *later)],
            }
        )
    return json_response(200, {"schedules": out, "total": len(infos)})


def _add(ctx: ApiContext, req: Request) -> Response | asyncio.Future[Response]:
    body = _json_body(req)
    func = _key(_string(body, "func"), "func")
    name = _key(_string(body, "name"), "name")
    expr = _string(body, "cron")
    tz = _string(body, "tz", "UTC")
    missed = _string(body, "missed", "once")
    args = _string(body, "args", "").encode("utf-8", "surrogatepass")
    timeout = body.get("timeout", 0)
    if not isinstance(timeout, int) or isinstance(timeout, bool):
        raise HttpError(400, "timeout must be an integer")
    if not 0 <= timeout <= 0x7FFFFFFF:
        raise HttpError(400, "timeout out of range (0..2147483647)")
    try:
        when = ctx.scheduler.add_cron(
            func, name, expr, tz, missed, args, timeout, ctx.clock(), ctx.mono_clock()
        )
    except CronRefused as exc:
        return error_response(409, str(exc))
    except ValueError as exc:  # CronError included
        return error_response(400, str(exc))
    return ctx.durable(json_response(200, {"msg": "SUCCESS", "next_run": when}))


def _remove(ctx: ApiContext, req: Request) -> Response | asyncio.Future[Response]:
    form = form_fields(req)
    func, name = form.get("func", b""), form.get("name", b"")
    if not func or not name:
        return error_response(400, "func and name are required")
    if not ctx.scheduler.remove_cron(func, name, ctx.clock(), ctx.mono_clock()):
        return error_response(404, f"no cron schedule for {text(func)}:{text(name)}")
    return ctx.durable(json_response(200, {"msg": "SUCCESS"}))


#: (method, path) -> handler, merged by server/http_api
ROUTES: dict[tuple[str, bytes], Handler] = {
    ("GET", b"/api/cron"): _list,
    ("POST", b"/api/cron"): _add,
    ("DELETE", b"/api/cron"): _remove,
}
