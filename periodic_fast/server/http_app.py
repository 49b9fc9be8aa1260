"""The HTTP application: routes, the JSON API, durable writes, health.

:class:`HttpApp` is what the binary side hands a sniffed HTTP connection to
(:meth:`HttpApp.accept` installs an :class:`~.http_conn.HttpConnection`);
each parsed request comes back through :meth:`HttpApp.dispatch`.

Routes (docs/http.md): the reference's API (``GET /``, ``GET /FUNC``,
``POST /`` and ``POST /FUNC`` to submit or, with ``act=remove``, remove a
job, ``DELETE /FUNC`` to drop a func), the status page (``/ui``, or ``GET /``
when the client prefers HTML; :mod:`.status_page`), ``/api/overview``,
``/metrics`` (:mod:`.metrics`), ``/healthz`` and ``/readyz``.  Writes go
through the scheduler like the binary commands and are answered only after
the store's durability barrier (``store.on_durable``) passed; they are
allowed as on the binary port (:func:`~.http_guard.writes_allowed`: auth
on, the identity's rights; off, loopback and unix peers, others only with
``--http-writes``).
:meth:`HttpApp._authorize` is the one place a request can be refused before
routing (:mod:`.http_guard`: Host check, bearer tokens, a cluster peer's
secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from ..auth import Role
from ..job import FuncStat, Job
from .http_api import route_for
from .http_conn import HttpConnection
from .http_guard import (
    PEER_HEADER,
    PROBES,
    check_identity,
    host_allowed,
    peer_claim,
    refuse_write,
    writes_allowed,
)
from .http_parsers import PARSERS, httptools, parser_name
from .http_wire import (
    DEFAULT_MAX_BODY,
    HTML,
    SUCCESS,
    HttpError,
    Request,
    Response,
    encode_response,
    error_response,
    form_fields,
    int_field,
    json_response,
    looks_like_http,
    text,
)
from .logbound import DEFAULT_PEER_LOG_RATE, Throttle, peer_text
from .status_page import overview, render_fragment, render_page
from .views import HubView, SchedulerView

if TYPE_CHECKING:
    from .cluster_admin import ClusterAdmin
    from .cluster_http import ClusterWrites
    from .cluster_view import ClusterView

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_PROBE_CONNECTIONS",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_WRITE_TIMEOUT",
    "HttpApp",
]

log = logging.getLogger("periodic_fast.http")

#: Seconds a started request may take to arrive completely (408 after).
DEFAULT_READ_TIMEOUT: Final = 10.0
#: Seconds an idle keep-alive connection stays open.
DEFAULT_IDLE_TIMEOUT: Final = 30.0
#: Seconds a write waits for the store's commit before 503.
DEFAULT_WRITE_TIMEOUT: Final = 30.0
#: Open HTTP connections at once; more get 503 and are closed.
DEFAULT_MAX_CONNECTIONS: Final = 256
#: Connections kept beyond that cap for health probes only (the oldest is
#: closed to make room), so that slow clients cannot fail /healthz.
DEFAULT_PROBE_CONNECTIONS: Final = 8

_ALLOW: Final = "GET, HEAD, POST, DELETE, OPTIONS"


class HttpApp:
    """Routes and state shared by the HTTP connections of one server.

    :param scheduler: the server's scheduler (status, writes, stats).
    :param hub: the server's :class:`~.protocol.Hub` (peers of connections,
        the timer re-arm after a write).
    :param name: server name shown on the page.
    :param addresses: the bound addresses (``/readyz``: listening).
    :param running: False while the server stops (``/readyz``: draining).
    :param clock: the server's wall clock.
    :param mono_clock: the server's monotonic clock (the writes hand it to
        the scheduler with the wall time).
    :param writes: serve POST and DELETE from any peer (else only from
        loopback and unix peers, or as the auth file allows).
    :param parser: ``"auto"`` (httptools if importable), ``"httptools"``, ``"h11"``.
    :param allowed_hosts: Host names accepted by the Host check besides IP
        literals, ``localhost``, this machine's name and the listen hosts.
    :param max_connections: open HTTP connections at once (503 beyond).
    :param peer_log_rate: log lines per second per kind that peers may
        cause (bad requests, refusals); 0: no limit (logbound).
    :param probe_connections: connections allowed beyond ``max_connections``
        for ``/healthz``, ``/readyz`` only (one request each; the oldest is
        closed when a new one needs room).
    :param host_check: check the Host header of TCP requests (403 for other
        names; docs/security.md).  On by default, auth or not: without it a
        web page whose name resolves to 127.0.0.1 could read the status
        through a visitor's browser (DNS rebinding).
    """

    def __init__(
        self,
        scheduler: SchedulerView,
        hub: HubView,
        *,
        name: str = "periodicd",
        addresses: Callable[[], list[str]] = list,
        running: Callable[[], bool] = lambda: True,
        clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] = time.monotonic,
        writes: bool = False,
        parser: str = "auto",
        max_body: int = DEFAULT_MAX_BODY,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        write_timeout: float = DEFAULT_WRITE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        probe_connections: int = DEFAULT_PROBE_CONNECTIONS,
        peer_log_rate: float = DEFAULT_PEER_LOG_RATE,
        allowed_hosts: Iterable[str] = (),
        host_check: bool = True,
    ) -> None:
        if parser not in PARSERS:
            raise ValueError(f"unknown HTTP parser {parser!r}")
        if parser == "httptools" and httptools is None:
            raise ValueError("httptools is not installed")
        self.scheduler = scheduler
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop = hub.loop
        self.name = name
        self._addresses = addresses
        self._running = running
        self.clock = clock
        self.mono_clock = mono_clock
        self.writes = writes
        self.parser = parser
        self.max_body = max_body
        self.read_timeout = read_timeout
        self.idle_timeout = idle_timeout
        self.write_timeout = write_timeout
        self.max_connections = max_connections
        self.probe_connections = probe_connections
        #: log lines peers cause: rate-limited per kind (logbound)
        self.peer_log = Throttle(log, peer_log_rate)
        # connections over the cap, oldest first: they may only ask a probe
        self._probes: deque[HttpConnection] = deque()
        #: Host names accepted besides IP literals, localhost and the
        #: listen hosts
        hosts = {h.lower().rstrip(".") for h in allowed_hosts}
        with contextlib.suppress(OSError):  # this machine's own name
            hosts.add(socket.gethostname().lower())
        self.allowed_hosts = frozenset(h for h in hosts if h)
        self.host_check = host_check
        self.started = clock()
        self.connections: set[HttpConnection] = set()
        self._loop_thread = threading.get_ident()
        #: cluster mode: every live node's figures (set by the server)
        self.cluster: ClusterView | None = None
        #: cluster mode: writes of jobs held by other nodes (set by the server)
        self.cluster_writes: ClusterWrites | None = None
        #: cluster mode: dead set, cron and job browser across the nodes
        self.cluster_admin: ClusterAdmin | None = None

    @property
    def parser_name(self) -> str:
        """The parser in use: ``"httptools"`` or ``"h11"``."""
        return parser_name(self.parser)

    # -- hand-over from the binary protocol -------------------------------------

    @staticmethod
    def sniff(head: bytes) -> bool | None:
        """See :func:`~.http_wire.looks_like_http`."""
        return looks_like_http(head)

    def accept(self, transport: asyncio.Transport, head: bytes, peer: str) -> None:
        """Take over ``transport`` (its first bytes were ``head``)."""
        probe_only = len(self.connections) >= self.max_connections
        if probe_only:
            probes = self._probes = deque(c for c in self._probes if not c.closed)
            if len(probes) >= self.probe_connections:
                if not probes:  # no reserve at all
                    self.peer_log.warning(
                        "http-max-connections",
                        "%s: refusing HTTP: %d connections open",
                        peer,
                        len(self.connections),
                    )
                    refused = error_response(503, "too many HTTP connections")
                    transport.write(encode_response(refused, False, False))
                    transport.close()
                    return
                probes.popleft().abort()  # the newest probe gets the room
        conn = HttpConnection(self, transport, peer, probe_only=probe_only)
        if probe_only:
            self._probes.append(conn)
        self.connections.add(conn)
        transport.set_protocol(conn)
        conn.data_received(head)

    def close_all(self) -> None:
        """Close every HTTP connection (server shutdown)."""
        for conn in list(self.connections):
            conn.close()

    # -- routing -----------------------------------------------------------------

    def _authorize(
        self, req: Request, conn: HttpConnection | None = None
    ) -> Response | None:
        """The one check before routing: a Response refuses the request.

        Over TCP the Host header must name this server (DNS rebinding;
        ``host_check=False`` turns that off).  With an auth file
        (docs/security.md) every request but ``/healthz`` and ``/readyz``
        also needs ``Authorization: Bearer <token>`` of an identity whose
        role and funcs allow it, as a client connection would need on the
        binary side.

        In cluster mode a request carrying the cluster's secret comes from
        another node, which applied its own rules to its client: the Host
        check and the write rule do not apply (the auth file's still does).
        A wrong secret is refused.
        """
        rules = self.scheduler.auth
        ca = self.cluster_admin  # cluster mode: it knows the cluster's secret
        peer = peer_claim(req, None if ca is None else ca.secret)
        if peer is False:
            self.peer_log.warning(
                "http-peer-secret",
                "%s: refused %s %s: wrong cluster secret in %s",
                conn.peer if conn is not None else "?",
                req.method,
                peer_text(req.target),
                PEER_HEADER.decode(),
            )
            return error_response(
                403, f"wrong cluster secret in the {PEER_HEADER.decode()} header"
            )
        unix = conn is not None and conn.peer.startswith("unix")
        if (
            self.host_check
            and not unix
            and not peer
            and not host_allowed(
                req.header(b"host"), self.allowed_hosts, self._addresses
            )
        ):
            return error_response(
                403, "Host header not allowed (this server's names only)"
            )
        if rules is not None:
            refused = check_identity(rules, req, req.path)
            if refused is not None:
                return refused
        if req.method in ("POST", "DELETE"):  # the binary port's rules
            address = conn.peer if conn is not None else None
            writes = self.writes or peer is True  # a peer: its origin checked
            allowed = writes_allowed(req, address, rules is not None, writes)
            return refuse_write(req, allowed)
        return None

    def dispatch(
        self, req: Request, conn: HttpConnection | None = None
    ) -> Response | asyncio.Future[Response]:
        """Answer ``req``: a Response now, or a future one (writes)."""
        try:
            if conn is not None and conn.probe_only and req.path not in PROBES:
                return error_response(503, "too many HTTP connections", close=True)
            refused = self._authorize(req, conn)
            if refused is not None:
                return refused
            return self._route(req)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        except Exception:
            log.exception(
                "HTTP %s %s: internal error", req.method, peer_text(req.target)
            )
            return error_response(500, "internal error")

    def _route(self, req: Request) -> Response | asyncio.Future[Response]:
        method = req.method
        path = req.path
        handler = route_for(method, path)
        if handler is not None:  # the job-feature API (http_api)
            ca = self.cluster_admin  # cluster mode: every node's (cluster_admin)
            if ca is not None and (answer := ca.handle(self, req)) is not None:
                return answer
            return handler(self, req)
        if (
            method in ("POST", "DELETE")
            and path.startswith(b"/api/")
            and path != b"/api/backup"
        ):
            # never the classic "POST /FUNC" of a func named "api/...": a
            # mistyped API write must not submit a job
            return error_response(404, f"no API route {method} {text(path)}")
        if method in ("GET", "HEAD"):
            return self._get(req, path)
        if method == "POST":
            if path == b"/api/backup":
                return self._backup(req)
            return self._post(req, path)
        if method == "DELETE":
            return self._delete(req, path)
        if method == "OPTIONS":
            return Response(204, headers=(("Allow", _ALLOW),))
        return error_response(
            405, f"method {method} not allowed", headers=(("Allow", _ALLOW),)
        )

    def _get(self, req: Request, path: bytes) -> Response | asyncio.Future[Response]:
        if path == b"/":
            if _prefers_html(req):
                # the page shows every func, connection, lock and event: with
                # auth on it is for admins (a client gets its JSON status)
                ident = req.identity
                if ident is not None and ident.role is not Role.ADMIN:
                    return error_response(403, "the status page needs the admin role")
                return self._page()
            return json_response(200, self._status_all(req))
        if path in (b"/ui", b"/ui/"):
            return self._page()
        if path == b"/ui/fragment":
            return Response(200, render_fragment(self.overview()).encode(), HTML)
        if path == b"/api/overview":
            return json_response(200, self.overview())
        if path == b"/metrics":
            return self._metrics_response()
        if path == b"/healthz":
            return json_response(200, {"status": "ok"})
        if path == b"/readyz":
            ready, checks = self.readiness()
            return json_response(200 if ready else 503, {"ready": ready, **checks})
        if path in (b"/api/funcs", b"/api/funcs/"):
            return json_response(200, self._status_all(req))
        if path == b"/favicon.ico":
            return Response(204)
        if path.startswith(b"/api/funcs/"):
            return self._status_one(path[len(b"/api/funcs/") :])
        return self._status_one(path[1:])

    def _status_all(self, req: Request | None = None) -> dict[str, Any]:
        now = self.clock()
        ident = req.identity if req is not None else None
        return {
            text(s.func): _func_json(s)
            for s in self.scheduler.status(now)
            if ident is None or ident.func_allowed(s.func)
        }

    def _status_one(self, func: bytes) -> Response:
        stat = self.scheduler.func_stat(func, self.clock())
        if stat is None:
            return error_response(404, f"unknown func {text(func)!r}")
        return json_response(200, _func_json(stat))

    # -- writes ----------------------------------------------------------------------

    def _post(self, req: Request, path: bytes) -> Response | asyncio.Future[Response]:
        form = form_fields(req)
        func = path[1:] if path not in (b"", b"/") else form.get("func", b"")
        name = form.get("name", b"")
        if not func or not name:
            return error_response(400, "job name or func is required")
        if len(func) > 255 or len(name) > 255:
            return error_response(400, "func and name must be at most 255 bytes")
        now, mono = self.clock(), self.mono_clock()
        remove = form.get("act", b"").lower() == b"remove"
        cw = self.cluster_writes
        forward = cw is not None and not cw.held(func, name)  # held elsewhere
        if remove:
            if forward and cw is not None:
                return cw.remove(func, name)
            if not self.scheduler.remove(func, name, now, mono):
                return error_response(
                    404, f"job {text(func)}:{text(name)} does not exist"
                )
            return self._durable(SUCCESS)
        sched_at = int_field(form, "sched_at", -(1 << 63), (1 << 63) - 1)
        timeout = int_field(form, "timeout", 0, (1 << 31) - 1)
        job = Job(func, name, form.get("args", b""), sched_at, 0, timeout)
        if forward and cw is not None:
            return cw.submit(job)
        try:
            accepted = self.scheduler.submit(job, now, mono)
        except ValueError as exc:  # a func name the scheduler refuses
            return error_response(400, str(exc))
        if not accepted:
            return error_response(
                409,
                f"func {text(func)!r} holds the maximum number of jobs,"
                " or the server knows the maximum number of funcs",
            )
        return self._durable(SUCCESS)

    def _delete(self, req: Request, path: bytes) -> Response | asyncio.Future[Response]:
        func = path[1:]
        if not func:
            return error_response(400, "func is required")
        if self.cluster_writes is not None:  # on every node
            return self.cluster_writes.drop(func, self.clock())
        result = self.scheduler.drop_func(func, self.clock(), self.mono_clock())
        if result == "unknown":
            return error_response(404, f"unknown func {text(func)!r}")
        if result == "busy":
            return error_response(
                409, f"func {text(func)!r} has workers connected; not dropped"
            )
        return self._durable(SUCCESS)

    def durable(self, ok: Response) -> Response | asyncio.Future[Response]:
        """``ok`` once the store committed what was just written, else 503
        (the API routes of http_api answer writes through it)."""
        return self._durable(ok)

    def _durable(self, ok: Response) -> Response | asyncio.Future[Response]:
        """``ok`` once the store committed what was just written, else 503."""
        on_input = self.hub.on_input
        if on_input is not None:
            on_input()  # the write may have brought the next wake-up earlier
        store = self.scheduler.store
        loop = self.loop
        fut: asyncio.Future[Response] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if fut.done():
                return
            if error is None:
                fut.set_result(ok)
            else:
                fut.set_result(error_response(503, f"store commit failed: {error}"))

        def durable(error: BaseException | None) -> None:
            if threading.get_ident() == self._loop_thread:
                settle(error)
            else:
                with contextlib.suppress(RuntimeError):  # loop closed
                    loop.call_soon_threadsafe(settle, error)

        store.on_durable(durable)
        if fut.done():  # an immediate store answered synchronously
            return fut.result()

        def expire() -> None:
            if not fut.done():
                fut.set_result(
                    error_response(503, "store commit did not finish in time")
                )

        timer = loop.call_later(self.write_timeout, expire)
        fut.add_done_callback(lambda _: timer.cancel())
        return fut

    # -- health and metrics ----------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, checks): store healthy, listening, not draining."""
        running = self._running()
        listening = running and bool(self._addresses())
        store_ok = _store_healthy(self.scheduler)
        checks = {"listening": listening, "draining": not running, "store": store_ok}
        return listening and store_ok and running, checks

    def _metrics_response(self) -> asyncio.Future[Response]:
        """Numbers copied here, formatted in a worker thread (the slow part)."""
        # prometheus-client (~65 ms to import) only once /metrics is asked for
        from .metrics import CONTENT_TYPE, render, snapshot  # noqa: PLC0415

        snap = snapshot(
            self.scheduler,
            self.clock(),
            name=self.name,
            parser=self.parser_name,
            started=self.started,
            ready=self.readiness()[0],
            http_connections=len(self.connections),
            cluster=None if self.cluster is None else self.cluster.metrics(),
        )
        loop = self.loop
        out: asyncio.Future[Response] = loop.create_future()
        rendering = loop.run_in_executor(None, render, snap)

        def done(fut: asyncio.Future[bytes]) -> None:
            if out.done():
                return
            try:
                body = fut.result()
            except Exception:
                log.exception("/metrics: rendering failed")
                out.set_result(error_response(500, "internal error"))
                return
            out.set_result(Response(200, body, CONTENT_TYPE))

        rendering.add_done_callback(done)
        return out

    # -- backup ----------------------------------------------------------------------

    def _backup(self, req: Request) -> Response | asyncio.Future[Response]:
        """``POST /api/backup`` (``periodic backup``): the SQLite store's
        online backup as the body, made in a worker thread; another store:
        409 with ``"format": "dump"`` (the CLI then DUMPs).  Admin only
        when auth is on: it is every job of every func."""
        ident = req.identity
        if self.scheduler.auth is not None and (
            ident is None or ident.role is not Role.ADMIN
        ):
            return error_response(403, "a backup needs the admin role")
        backup = getattr(self.scheduler.store, "backup", None)
        if backup is None:
            return json_response(
                409,
                {"err": "this store has no file backup: use DUMP", "format": "dump"},
            )
        loop = self.loop
        out: asyncio.Future[Response] = loop.create_future()
        copying = loop.run_in_executor(None, _backup_bytes, backup)

        def done(fut: asyncio.Future[bytes]) -> None:
            if out.done():
                return
            try:
                body = fut.result()
            except Exception as exc:
                log.exception("backup failed")
                out.set_result(error_response(500, f"backup failed: {exc}"))
                return
            out.set_result(Response(200, body, _SQLITE))

        copying.add_done_callback(done)
        return out

    # -- the status page -------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """Everything the status page shows (also ``GET /api/overview``)."""
        now = self.clock()
        ov = overview(
            self.scheduler,
            now,
            peers=self.hub.connections,
            name=self.name,
            addresses=self._addresses(),
            started=self.started,
            writes=self.writes,
            draining=not self._running(),
            http_connections=len(self.connections),
        )
        if self.cluster is not None:  # every live node (the rest: this one)
            ov["cluster"] = self.cluster.overview(now)
        return ov

    def _page(self) -> Response:
        page = render_page(self.overview(), name=self.name, writes=self.writes)
        return Response(200, page.encode(), HTML)


# -- helpers for the routes ------------------------------------------------------

_SQLITE: Final = "application/vnd.sqlite3"


def _backup_bytes(backup: Callable[[str], None]) -> bytes:
    """Run ``backup`` into a private temporary file; its bytes (a worker
    thread: the copy and the read stay off the event loop)."""
    fd, tmp = tempfile.mkstemp(prefix="periodic-backup-", suffix=".db")
    os.close(fd)
    try:
        backup(tmp)
        with open(tmp, "rb") as f:
            return f.read()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _prefers_html(req: Request) -> bool:
    """True when the Accept header ranks text/html above JSON (a browser)."""
    accept = req.header(b"accept")
    if not accept:
        return False
    best_html = best_json = -1.0
    for part in accept.decode("latin-1").split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        media = media.lower()
        if media in ("text/html", "application/xhtml+xml"):
            best_html = max(best_html, q)
        elif media in ("application/json", "*/*", "application/*"):
            best_json = max(
                best_json, q - (0.001 if media != "application/json" else 0)
            )
    return best_html > 0 and best_html >= best_json


def _func_json(stat: FuncStat) -> dict[str, Any]:
    """One STATUS line in the reference's JSON shape (plus locked, sched_at)."""
    return {
        "func_name": text(stat.func),
        "total_worker": stat.workers,
        "total_job": stat.jobs,
        "processing": stat.processing,
        "locked": stat.locked,
        "sched_at": stat.sched_at,
    }


def _store_healthy(sched: SchedulerView) -> bool:
    store = sched.store
    if store.closed:
        return False
    try:
        return bool(store.metrics().get("healthy", 1.0))
    except Exception:  # pragma: no cover - a failing store is not ready
        log.exception("store.metrics() failed")
        return False
