"""The JSON API of retry policies and the dead set (docs/retries.md).

* ``GET /api/retry``: ``{"default": P, "funcs": {func: P}}``;
* ``POST /api/retry``: body ``{"func": f (absent: the default), P fields}``
  (missing fields kept from the policy in force; ``"preset": "reference"``
  or ``"default"`` starts from that preset) -> ``{"msg", "policy"}``;
* ``DELETE /api/retry?func=f``: the func follows the default again (no
  func: the default goes back to the operator's);
* ``GET /api/dead?func=&prefix=&cursor=&limit=``: a page of the dead set;
* ``POST /api/dead/retry`` and ``/api/dead/delete``: body ``{"func",
  "name"}``, ``{"func", "all": true}`` or ``{"all": true}`` -> ``{"msg",
  "count", "more"}``; a bulk call handles a bounded slice: ``"more": true``
  asks for another call.

Funcs and names are JSON strings (UTF-8).  Writes answer once committed.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Final

from ..retry import DEFAULT_POLICY, POLICY_FIELDS, REFERENCE_POLICY, RetryPolicy
from .http_ctx import Answer, ApiContext, Handler, json_body
from .http_wire import (
    HttpError,
    Request,
    error_response,
    form_fields,
    int_field,
    json_response,
    text,
)

if TYPE_CHECKING:  # pragma: no cover
    from ..sched_retry import DeadJob

__all__ = ["ROUTES", "dead_json", "decode_cursor", "encode_cursor"]

_LIMIT_DEFAULT: Final = 50
_LIMIT_MAX: Final = 500
_PREVIEW: Final = 200  # workload bytes shown in a listing
_PRESETS: Final = {"reference": REFERENCE_POLICY, "default": DEFAULT_POLICY}


def encode_cursor(key: tuple[bytes, bytes]) -> str:
    """An opaque page cursor for the dead-set key ``(func, name)``."""
    func, name = key
    raw = bytes([len(func)]) + func + bytes([len(name)]) + name
    return base64.urlsafe_b64encode(raw).decode("ascii")


def decode_cursor(cursor: bytes) -> tuple[bytes, bytes]:
    """The key of :func:`encode_cursor`'s cursor; HttpError(400) if bad."""
    try:
        raw = base64.urlsafe_b64decode(cursor)
        n = raw[0]
        func = raw[1 : 1 + n]
        m = raw[1 + n]
        name = raw[2 + n : 2 + n + m]
        if len(func) != n or len(name) != m or len(raw) != 2 + n + m:
            raise ValueError
    except (ValueError, IndexError, binascii.Error):
        raise HttpError(400, "bad cursor") from None
    return func, name


def _name(value: Any, what: str) -> bytes:
    """A func or job name from JSON: a string of 1 to 255 UTF-8 bytes."""
    if not isinstance(value, str):
        raise HttpError(400, f"{what} must be a string")
    raw = value.encode("utf-8", "surrogateescape")
    if not 0 < len(raw) <= 255:
        raise HttpError(400, f"{what} must be 1 to 255 bytes")
    return raw


def _query_name(form: dict[str, bytes], key: str) -> bytes | None:
    raw = form.get(key)
    if raw is None or raw == b"":
        return None
    if len(raw) > 255:
        raise HttpError(400, f"{key} must be 1 to 255 bytes")
    return raw


def _policies(ctx: ApiContext, req: Request) -> Answer:
    default, funcs = ctx.scheduler.retry_policies()
    return json_response(
        200,
        {
            "default": default.to_dict(),
            "funcs": {text(f): p.to_dict() for f, p in sorted(funcs.items())},
        },
    )


def _set_policy(ctx: ApiContext, req: Request) -> Answer:
    body = json_body(req)
    raw_func = body.pop("func", None)
    func = None if raw_func is None else _name(raw_func, "func")
    sched = ctx.scheduler
    preset = body.pop("preset", None)
    if preset is not None:
        if preset not in _PRESETS:
            raise HttpError(400, f"preset must be one of {', '.join(_PRESETS)}")
        base = _PRESETS[preset]
    else:
        base = sched.retry_policy(func) if func else sched.retry_policies()[0]
    unknown = sorted(set(body) - set(POLICY_FIELDS))
    if unknown:
        raise HttpError(400, f"unknown field(s): {', '.join(unknown)}")
    try:
        policy = RetryPolicy.from_dict(body, base)
        sched.set_retry_policy(func, policy, ctx.clock(), ctx.mono_clock())
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    return ctx.durable(
        json_response(200, {"msg": "SUCCESS", "policy": policy.to_dict()})
    )


def _reset_policy(ctx: ApiContext, req: Request) -> Answer:
    func = _query_name(form_fields(req), "func")
    try:
        known = ctx.scheduler.set_retry_policy(
            func, None, ctx.clock(), ctx.mono_clock()
        )
    except ValueError as exc:
        raise HttpError(400, str(exc)) from None
    if not known:
        return error_response(
            404, f"func {text(func or b'')!r} has no retry policy of its own"
        )
    return ctx.durable(json_response(200, {"msg": "SUCCESS"}))


def dead_json(job: DeadJob) -> dict[str, Any]:
    """One dead job (:class:`~periodic_fast.sched_retry.DeadJob`) as the API
    shows it."""
    j, f = job.job, job.failure
    return {
        "func": text(j.func),
        "name": text(j.name),
        "args_preview": text(j.workload[:_PREVIEW]),
        "args_size": len(j.workload),
        "sched_at": j.sched_at,
        "timeout": j.timeout,
        "attempts": f.attempts,
        "failed_at": f.failed_at,
        "worker": f.worker,
        "reason": f.reason,
    }


def _dead(ctx: ApiContext, req: Request) -> Answer:
    form = form_fields(req)
    func = _query_name(form, "func")
    prefix = form.get("prefix", b"")
    if len(prefix) > 255:
        raise HttpError(400, "prefix must be at most 255 bytes")
    raw_cursor = form.get("cursor", b"")
    cursor = decode_cursor(raw_cursor) if raw_cursor else None
    limit = int_field(form, "limit", 0, _LIMIT_MAX) or _LIMIT_DEFAULT
    jobs, nxt, total = ctx.scheduler.dead_jobs(func, prefix, cursor, limit)
    return json_response(
        200,
        {
            "jobs": [dead_json(d) for d in jobs],
            "next": None if nxt is None else encode_cursor(nxt),
            "total": total,
        },
    )


def _target(body: dict[str, Any]) -> tuple[bytes | None, bytes | None]:
    """``{"func", "name"}``, ``{"func", "all": true}`` or ``{"all": true}``."""
    unknown = sorted(set(body) - {"func", "name", "all"})
    if unknown:
        raise HttpError(400, f"unknown field(s): {', '.join(unknown)}")
    every = body.get("all", False)
    if not isinstance(every, bool):
        raise HttpError(400, "all must be true or false")
    func = _name(body["func"], "func") if "func" in body else None
    name = _name(body["name"], "name") if "name" in body else None
    if every == (name is not None):
        raise HttpError(
            400, 'send {"func", "name"}, {"func", "all": true} or {"all": true}'
        )
    if name is not None and func is None:
        raise HttpError(400, "a name needs its func")
    return func, name


def _bulk(ctx: ApiContext, req: Request, retry: bool) -> Answer:
    func, name = _target(json_body(req))
    sched = ctx.scheduler
    act = sched.retry_dead if retry else sched.delete_dead
    count, more = act(func, name, ctx.clock(), ctx.mono_clock())
    if name is not None and not count:
        return error_response(
            404, f"no dead job {text(func or b'')}:{text(name)} (or it was refused)"
        )
    return ctx.durable(
        json_response(200, {"msg": "SUCCESS", "count": count, "more": more})
    )


def _retry_dead(ctx: ApiContext, req: Request) -> Answer:
    return _bulk(ctx, req, True)


def _delete_dead(ctx: ApiContext, req: Request) -> Answer:
    return _bulk(ctx, req, False)


#: the routes of this module, merged by server/http_api
ROUTES: dict[tuple[str, bytes], Handler] = {
    ("GET", b"/api/retry"): _policies,
    ("POST", b"/api/retry"): _set_policy,
    ("DELETE", b"/api/retry"): _reset_policy,
    ("GET", b"/api/dead"): _dead,
    ("POST", b"/api/dead/retry"): _retry_dead,
    ("POST", b"/api/dead/delete"): _delete_dead,
}
