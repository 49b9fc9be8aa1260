"""The status page (the dashboard): a plain-dict view model, its Jinja2
templates and its script.

:func:`overview` copies what the page shows out of the scheduler into plain
dicts, lists and numbers (also the body of ``GET /api/overview``);
:func:`render_page` and :func:`render_fragment` turn that dict into HTML
with the templates in ``templates/`` (``status.html.j2`` around
``fragment.html.j2``, which the page's script re-fetches).  Autoescaping is
on: func names, job names and event messages come from peers.  The templates
are compiled once per process, on first use.

The page's script and style sheet (``static/``) are served by :data:`ROUTES`
at ``/ui/dashboard.js`` and ``/ui/dashboard.css``: the page loads nothing
from elsewhere, so it works offline.  The script draws the charts
(``/api/series``) and the job browser, dead set, retry policies and cron
schedules from the JSON API (docs/dashboard.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import jinja2

from .. import __version__
from .._build import build_info
from .http_wire import Request, Response, text
from .views import PeerView, SchedulerView

__all__ = ["PAGE_ROWS", "ROUTES", "overview", "render_fragment", "render_page"]

#: Rows shown on the status page / returned by /api/overview, per table.
PAGE_ROWS: Final = 500
_TEMPLATES: Final = Path(__file__).with_name("templates")
_STATIC: Final = Path(__file__).with_name("static")


def overview(
    sched: SchedulerView,
    now: float,
    *,
    peers: Mapping[int, PeerView],
    name: str,
    addresses: list[str],
    started: float,
    writes: bool,
    draining: bool,
    http_connections: int,
) -> dict[str, Any]:
    """Everything the status page shows, as JSON-ready values.

    ``peers`` are the binary connections by id (their peer addresses);
    the other keywords describe the server itself.
    """
    details = sched.func_details(now)
    conns = sched.connections()
    workers = sum(1 for c in conns if c.worker)
    funcs = [
        {
            "func": text(d.func),
            "workers": d.workers,
            "jobs": d.jobs,
            "due": d.due,
            "running": d.running,
            "locked": d.locked,
            "next_due": d.next_due,
            "oldest_due_age": None if d.oldest_due is None else now - d.oldest_due,
            "no_worker": d.due > 0 and d.workers == 0,
            "submitted": d.submitted,
            "done": d.done,
            "failed": d.failed,
            "sched_later": d.sched_later,
        }
        for d in details
    ]
    # funcs that need attention first, then by name
    funcs.sort(key=lambda f: (not f["no_worker"], f["func"]))
    connections = []
    for c in conns[:PAGE_ROWS]:
        proto = peers.get(c.id)
        connections.append(
            {
                "id": c.id,
                "kind": "worker" if c.worker else "client",
                "peer": "?" if proto is None else proto.peer,
                "identity": None if c.identity is None else text(c.identity),
                "funcs": [text(f) for f in c.funcs],
                "slots": c.slots,
                "running": c.running,
                "unconfirmed": c.unconfirmed,
                "idle": max(0.0, now - c.last_seen),
            }
        )
    locks = [
        {
            "name": text(lk.name),
            "max": lk.max,
            "holders": [_lock_entry(e, now) for e in lk.holders],
            "waiting": [_lock_entry(e, now) for e in lk.waiting],
        }
        for lk in sched.locks()[:PAGE_ROWS]
    ]
    events = [
        {"time": e.time, "kind": e.kind, "message": e.message}
        for e in reversed(sched.stats.events)
    ]
    rates = sched.rates(now)
    return {
        "server": {
            "name": name,
            "version": __version__,
            "build": build_info(),
            "addresses": addresses,
            "now": now,
            "uptime": now - started,
            "writes": writes,
            "draining": draining,
            "store": type(sched.store).__name__,
        },
        "totals": {
            "scheduled": sum(d.jobs for d in details),
            "due": sum(d.due for d in details),
            "running": sum(d.running for d in details),
            "locked": sum(d.locked for d in details),
            "workers": workers,
            "clients": len(conns) - workers,
            "funcs": len(details),
            "http_connections": http_connections,
            "no_worker_funcs": sum(1 for f in funcs if f["no_worker"]),
            "cron": sched.cron_count,  # cron schedules (sched_cron)
        },
        "per_minute": {k: round(v, 2) for k, v in rates.items()},
        "counters": sched.counters(),
        "funcs": funcs[:PAGE_ROWS],
        "funcs_total": len(funcs),
        "connections": connections,
        "connections_total": len(conns),
        "locks": locks,
        "events": events[:100],
        "retry": _retry_overview(sched, funcs[:PAGE_ROWS]),
    }


def _retry_overview(
    sched: SchedulerView, shown: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """Retry policies (issue 20): the default, the per-func ones of the funcs
    shown, the dead set's size (None: a scheduler without retry policies)."""
    if not hasattr(sched, "retry_policies"):  # a custom scheduler factory
        return None
    default, own = sched.retry_policies()
    names = {f["func"] for f in shown}
    counters = sched.retry_counters()
    return {
        "default": default.to_dict(),
        "funcs": {
            text(f): p.to_dict() for f, p in sorted(own.items()) if text(f) in names
        },
        "funcs_total": len(own),
        "dead_jobs": counters["dead_jobs"],
        "retried": counters["retried"],
        "dead": counters["dead"],
    }


def _lock_entry(entry: tuple[bytes, bytes, float], now: float) -> dict[str, Any]:
    func, name, since = entry
    return {"func": text(func), "name": text(name), "for": max(0.0, now - since)}


def render_page(ov: dict[str, Any], *, name: str, writes: bool) -> str:
    """The whole status page for the view model ``ov`` (:func:`overview`)."""
    return _template("status.html.j2").render(
        ov=ov, name=name, version=__version__, writes=writes
    )


def render_fragment(ov: dict[str, Any]) -> str:
    """The live part of the page alone (``GET /ui/fragment``)."""
    return _template("fragment.html.j2").render(ov=ov)


# -- templates and their filters ------------------------------------------------


def _dur(seconds: float | None) -> str:
    """A short human duration: 0.4s, 12s, 3m 5s, 2h 10m, 4d 3h."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    n = int(s)
    if n < 60:
        return f"{n}s"
    if n < 3600:
        return f"{n // 60}m {n % 60}s"
    if n < 86400:
        return f"{n // 3600}h {n % 3600 // 60}m"
    return f"{n // 86400}d {n % 86400 // 3600}h"


def _when(at: int | None, now: float) -> str:
    """When a job is due, relative to ``now``: "-", "now", "in 3m 5s"."""
    if at is None:
        return "-"
    if at <= now:
        return "now"
    return "in " + _dur(at - now)


def _clock(stamp: float) -> str:
    """Local time of day of a Unix time: 14:03:59."""
    return time.strftime("%H:%M:%S", time.localtime(stamp))


def _num(value: float) -> str:
    """A count as is, a rate without trailing zeros."""
    return f"{value:g}" if isinstance(value, float) else str(value)


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_TEMPLATES),
        autoescape=True,  # every value is text from peers unless marked safe
        auto_reload=False,  # compiled once; the files never change under us
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,  # a typo fails loudly, in tests
    )
    env.filters.update(dur=_dur, when=_when, clock=_clock, num=_num)
    return env


@functools.cache
def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)


# -- the page's script and style sheet ---------------------------------------------

_ASSETS: Final = {
    b"/ui/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    b"/ui/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
}


@functools.cache
def _asset(path: bytes) -> Response:
    """A file of ``static/`` (read once per process)."""
    name, ctype = _ASSETS[path]
    body = (_STATIC / name).read_bytes()
    # revalidated on each load: a server upgrade must not leave an old script
    return Response(200, body, ctype, headers=(("Cache-Control", "no-cache"),))


def _serve_asset(ctx: object, req: Request) -> Response:
    return _asset(req.path)


#: the page's static files, as an http_api route table
ROUTES: dict[tuple[str, bytes], Callable[[Any, Request], Response]] = {
    ("GET", path): _serve_asset for path in _ASSETS
}
