"""``GET /api/series``: the dashboard's per-func minutes of the last hour.

Answers ``{"minute": <Unix time of the newest minute>, "funcs": {func:
{"done": [60], "failed": [60], "late_avg": [60], "late_max": [60]}},
"tracked": n}``, oldest minute first, from the scheduler's bounded ring
buffers (:mod:`periodic_fast.sched_series`); lateness is null for a minute
in which no job of the func was assigned.  Query: ``func`` (that func only),
``limit`` (the busiest funcs, default 50, at most :data:`MAX_LIMIT`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from .http_ctx import ApiContext as _Context
from .http_wire import Request, Response, form_fields, int_field, json_response, text

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "ROUTES"]

#: Funcs answered when the request names no ``limit``.
DEFAULT_LIMIT: Final = 50
#: The most funcs one answer carries.
MAX_LIMIT: Final = 200


def _series(ctx: _Context, req: Request) -> Response:
    form = form_fields(req)
    limit = int_field(form, "limit", 0, MAX_LIMIT) if "limit" in form else DEFAULT_LIMIT
    func = form.get("func") or None
    snap = ctx.scheduler.series(ctx.clock(), limit=limit, func=func)
    return json_response(
        200,
        {
            "minute": snap.minute,
            "funcs": {
                text(p.func): {
                    "done": p.done,
                    "failed": p.failed,
                    "late_avg": p.late_avg,
                    "late_max": p.late_max,
                }
                for p in snap.funcs
            },
            "tracked": snap.tracked,
        },
    )


#: this module's routes (merged by :mod:`.http_api`)
ROUTES: dict[tuple[str, bytes], Callable[[_Context, Request], Response]] = {
    ("GET", b"/api/series"): _series,
}
