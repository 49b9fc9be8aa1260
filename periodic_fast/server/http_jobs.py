"""The job browser's JSON API (docs/jobs.md): list, show and act on jobs.

* ``GET /api/jobs?func=F&state=&prefix=&due_from=&due_to=&cursor=&limit=``:
  a page of F's jobs by name, ``{"jobs": [S], "next": cursor or null}``;
* ``GET /api/job?func=&name=``: one job, S with its args preview, its last
  failure and its cron schedule;
* ``POST /api/job/run-now``, ``/api/job/reschedule`` (``sched_at``),
  ``/api/job/delete``, each with ``func`` and ``name``: answered
  ``{"msg": "SUCCESS"}`` once the store committed the change.

Fields come from the query string or the body (JSON or a form).  A cursor is
opaque to clients: the URL-safe base64 of the last name a page covered (the
dead set's own cursors are passed through).  The first listing of a big func
waits, asynchronously, for its name index to be built a slice per tick.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Callable, Mapping
from typing import Any, Final

from ..sched_browse import DEFAULT_LIMIT, MAX_LIMIT, STATES, JobRow
from ..sched_retry import DeadJob
from .http_ctx import ApiContext, Handler
from .http_retry import decode_cursor as decode_dead_cursor
from .http_retry import encode_cursor as encode_dead_cursor
from .http_wire import (
    SUCCESS,
    HttpError,
    Request,
    Response,
    error_response,
    form_fields,
    json_response,
    text,
)

__all__ = ["INDEX_WAIT", "PREVIEW", "ROUTES", "decode_cursor", "encode_cursor"]

#: bytes of a job's workload shown as ``args_preview``
PREVIEW: Final = 256
#: seconds a listing waits for a func's name index before a 503
INDEX_WAIT: Final = 30.0

_I64: Final = (-(1 << 63), (1 << 63) - 1)


def encode_cursor(name: bytes) -> str:
    """The cursor that resumes a listing after ``name``."""
    return base64.urlsafe_b64encode(name).decode("ascii").rstrip("=")


def decode_cursor(cursor: bytes) -> bytes:
    """The name a cursor resumes after; HttpError(400) for a bad one."""
    raw = cursor.strip()
    try:
        name = base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        raise HttpError(400, f"bad cursor {text(cursor[:40])!r}") from None
    if not name or len(name) > 255:
        raise HttpError(400, f"bad cursor {text(cursor[:40])!r}")
    return name


def _bytes(form: Mapping[str, bytes], key: str, required: bool = True) -> bytes:
    value = form.get(key, b"")
    if required and not value:
        raise HttpError(400, f"{key} is required")
    if len(value) > 255:
        raise HttpError(400, f"{key} must be at most 255 bytes")
    return value


def _int(form: Mapping[str, bytes], key: str) -> int | None:
    raw = form.get(key, b"").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        try:  # epoch seconds may come with a fraction
            value = int(float(raw))
        except (ValueError, OverflowError):
            raise HttpError(
                400, f"{key} must be epoch seconds, not {text(raw[:40])!r}"
            ) from None
    if not _I64[0] <= value <= _I64[1]:
        raise HttpError(400, f"{key} out of range")
    return value


def _limit(form: Mapping[str, bytes]) -> int:
    raw = form.get("limit", b"").strip()
    if not raw:
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_LIMIT:
        raise HttpError(400, f"limit must be an integer 1..{MAX_LIMIT}")
    return value


def row_json(row: JobRow) -> dict[str, Any]:
    """A listing's S object."""
    return {
        "func": text(row.func),
        "name": text(row.name),
        "state": row.state,
        "sched_at": row.sched_at,
        "count": row.count,
        "timeout": row.timeout,
        "attempts": row.attempts,
        "args_size": row.args_size,
    }


def _dead_row(d: DeadJob) -> dict[str, Any]:
    """A dead-set entry as a listing's S object."""
    job = d.job
    return {
        "func": text(job.func),
        "name": text(job.name),
        "state": "dead",
        "sched_at": job.sched_at,
        "count": job.count,
        "timeout": job.timeout,
        "attempts": d.failure.attempts,
        "args_size": len(job.workload),
    }


def _dead(
    ctx: ApiContext, func: bytes, prefix: bytes, cursor: bytes, limit: int
) -> Response:
    """state=dead: a page of the dead set (sched_retry), with its cursors."""
    after = decode_dead_cursor(cursor) if cursor else None
    jobs, nxt, _ = ctx.scheduler.dead_jobs(func, prefix, after, limit)
    return json_response(
        200,
        {
            "jobs": [_dead_row(d) for d in jobs],
            "next": None if nxt is None else encode_dead_cursor(nxt),
        },
    )


def list_jobs(ctx: ApiContext, req: Request) -> Response | asyncio.Future[Response]:
    """``GET /api/jobs``."""
    form = form_fields(req)
    func = _bytes(form, "func")
    state = text(form.get("state", b"all")).lower() or "all"
    if state not in STATES:
        raise HttpError(400, f"state must be one of {', '.join(STATES)}")
    prefix = _bytes(form, "prefix", required=False)
    due_from = _int(form, "due_from")
    due_to = _int(form, "due_to")
    limit = _limit(form)
    raw_cursor = form.get("cursor", b"")
    if state == "dead":
        return _dead(ctx, func, prefix, raw_cursor, limit)
    after = decode_cursor(raw_cursor) if raw_cursor else None
    sched = ctx.scheduler
    if not sched.has_func(func):  # O(1): func_stat scans the func's jobs
        return error_response(404, f"unknown func {text(func)!r}")

    def page() -> Response | None:
        got = sched.list_jobs(
            func,
            state,
            prefix=prefix,
            due_from=due_from,
            due_to=due_to,
            after=after,
            limit=limit,
            mono=ctx.mono_clock(),
        )
        if got is None:  # the func's name index is still building
            return None
        return json_response(
            200,
            {
                "jobs": [row_json(r) for r in got.rows],
                "next": None if got.next is None else encode_cursor(got.next),
            },
        )

    answer = page()
    return _wait_index(ctx, func, page) if answer is None else answer


def _wait_index(
    ctx: ApiContext, func: bytes, answer: Callable[[], Response | None]
) -> Response | asyncio.Future[Response]:
    """``answer()`` once ``func``'s name index is built (a slice per tick)."""
    busy = error_response(
        503,
        f"the job index of func {text(func)!r} is still being built; ask again shortly",
    )
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Response] = loop.create_future()

    def ready() -> None:
        if fut.done():
            return
        if not ctx.scheduler.has_func(func):
            fut.set_result(error_response(404, f"unknown func {text(func)!r}"))
            return
        fut.set_result(answer() or busy)

    if not ctx.scheduler.when_indexed(func, ready):  # pragma: no cover
        return answer() or busy
    # the scheduler wants a tick at once: have the server re-arm its timer
    on_input = ctx.hub.on_input
    if on_input is not None:
        on_input()

    def expire() -> None:
        if not fut.done():
            fut.set_result(busy)

    timer = loop.call_later(INDEX_WAIT, expire)
    fut.add_done_callback(lambda _: timer.cancel())
    return fut


def show_job(ctx: ApiContext, req: Request) -> Response:
    """``GET /api/job``."""
    form = form_fields(req)
    func = _bytes(form, "func")
    name = _bytes(form, "name")
    detail = ctx.scheduler.job_detail(func, name)
    if detail is None:
        return error_response(404, f"job {text(func)}:{text(name)} does not exist")
    out = row_json(detail.row)
    out["args_preview"] = text(detail.workload[:PREVIEW])
    out["last_failed_at"] = detail.last_failed_at
    out["last_worker"] = detail.last_worker
    out["cron"] = detail.cron
    return json_response(200, out)


def _act(
    ctx: ApiContext, req: Request, at_field: bool
) -> Response | asyncio.Future[Response]:
    form = form_fields(req)
    func = _bytes(form, "func")
    name = _bytes(form, "name")
    sched_at = None
    if at_field:
        sched_at = _int(form, "sched_at")
        if sched_at is None:
            raise HttpError(400, "sched_at is required (epoch seconds)")
    result = ctx.scheduler.reschedule(
        func, name, sched_at, ctx.clock(), ctx.mono_clock()
    )
    if result == "unknown":
        return error_response(404, f"job {text(func)}:{text(name)} does not exist")
    if result == "running":
        return error_response(
            409, f"job {text(func)}:{text(name)} is running; left alone"
        )
    return ctx.durable(SUCCESS)


def run_now(ctx: ApiContext, req: Request) -> Response | asyncio.Future[Response]:
    """``POST /api/job/run-now``: due now, dispatched at once."""
    return _act(ctx, req, False)


def reschedule(ctx: ApiContext, req: Request) -> Response | asyncio.Future[Response]:
    """``POST /api/job/reschedule``: a new ``sched_at``."""
    return _act(ctx, req, True)


def delete_job(ctx: ApiContext, req: Request) -> Response | asyncio.Future[Response]:
    """``POST /api/job/delete``: as REMOVE_JOB (waiters get "removed")."""
    form = form_fields(req)
    func = _bytes(form, "func")
    name = _bytes(form, "name")
    if not ctx.scheduler.remove(func, name, ctx.clock(), ctx.mono_clock()):
        return error_response(404, f"job {text(func)}:{text(name)} does not exist")
    return ctx.durable(SUCCESS)


ROUTES: Final[dict[tuple[str, bytes], Handler]] = {
    ("GET", b"/api/jobs"): list_jobs,
    ("GET", b"/api/job"): show_job,
    ("POST", b"/api/job/run-now"): run_now,
    ("POST", b"/api/job/reschedule"): reschedule,
    ("POST", b"/api/job/delete"): delete_job,
}
