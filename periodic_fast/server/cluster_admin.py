"""The job-feature API across a cluster (issue 18, docs/cluster.md): the dead
set, cron schedules and the job browser through any node.

A node holds only its partitions' jobs and their extras (failure counts,
dead jobs, schedules: :mod:`periodic_fast.sched_part_extras`).
:class:`ClusterAdmin` is the hook :class:`~.http_app.HttpApp` consults in
cluster mode before the API routes of :mod:`.http_retry`, :mod:`.http_cron`
and :mod:`.http_jobs`:

* **About one job** (``GET /api/job``, ``POST /api/job/run-now``,
  ``/reschedule``, ``/delete``, ``POST /api/cron``, ``DELETE /api/cron``,
  ``POST /api/dead/retry`` and ``/delete`` with a name): handled here when
  the job's partition is ready here, else sent unchanged (method, target,
  body, ``Authorization``) to the owner's HTTP port, the address it
  publishes, and its answer relayed.  The owner answers writes after its
  commit, so a relayed 200 still means committed.  An owner that no longer
  holds the partition (a stale route) answers 421; the request is tried
  again, with fresh routes, until the forwarding patience (``2 x lease +
  1`` s) runs out: then 503.
* **Listings** (``GET /api/dead``, ``GET /api/cron``, ``GET /api/jobs``):
  the same page is asked of every live node (this one directly) and the
  answers merged in key order: ``limit`` rows at most, the next cursor the
  last row's key when any node has more, totals added.  Each node's page
  starts after the same cursor, so paging through the merged pages visits
  every row once.
* **Bulk dead retry/delete** (a func's, or all): sent to every live node;
  the counts are added and ``more`` is true when any node has more.

A node that does not answer within :data:`NODE_TIMEOUT` fails the request
with 503 naming it (a listing or bulk call is never answered from part of
the cluster).  Requests carrying :data:`LOCAL` (the ones a node sends) are
answered from the node's own partitions, never sent on.  The header's value
is the cluster's secret (:attr:`ClusterAdmin.secret`): the receiving node
takes such a request as a peer's, past its Host check and its loopback
rule for writes (:meth:`.http_app.HttpApp._authorize`), since the node that
sent it applied its own to its client.

Layer L4 (server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

import h11

from .._http_exchange import http_exchange
from .http_api import route_for
from .http_ctx import json_body
from .http_guard import PEER_HEADER
from .http_jobs import encode_cursor as encode_name_cursor
from .http_retry import encode_cursor as encode_dead_cursor
from .http_wire import (
    HttpError,
    Request,
    Response,
    error_response,
    form_fields,
    json_response,
)

if TYPE_CHECKING:
    from ..sched_parts import Partitions
    from .http_ctx import Answer

__all__ = ["LOCAL", "NODE_TIMEOUT", "ClusterAdmin"]

#: the header of a request one node sends another (its value: the
#: cluster's secret): answer it locally
LOCAL: Final = PEER_HEADER
#: seconds one node's answer may take
NODE_TIMEOUT: Final = 10.0
_MAX_ANSWER: Final = 64 * 1024 * 1024

# one job, named by func and name in the query or body
_ONE_JOB: Final = {
    ("GET", b"/api/job"),
    ("POST", b"/api/job/run-now"),
    ("POST", b"/api/job/reschedule"),
    ("POST", b"/api/job/delete"),
    ("POST", b"/api/cron"),
    ("DELETE", b"/api/cron"),
}
_DEAD_ACTS: Final = {("POST", b"/api/dead/retry"), ("POST", b"/api/dead/delete")}
_LISTINGS: Final = {
    ("GET", b"/api/dead"),
    ("GET", b"/api/cron"),
    ("GET", b"/api/jobs"),
}


class NodeDown(Exception):
    """A node did not answer (its id in the message)."""


class ClusterAdmin:
    """The API's dead set, cron and job browser across the cluster (see the
    module doc).

    :param parts: the node's partitions (which are ready here).
    :param route: ``part -> the owner's address`` (None: unknown).
    :param members: the live nodes' ``{node: address}`` (this one included).
    :param me: this node's id.
    :param patience: seconds a request about one job keeps trying.
    :param secret: the cluster's secret (``store/cluster``), sent in
        :data:`LOCAL` and expected there from the other nodes; None: the
        cluster has none (``1`` is sent, as by earlier releases).
    """

    def __init__(
        self,
        parts: Partitions,
        route: Callable[[int], str | None],
        members: Callable[[], dict[str, str | None]],
        me: str,
        patience: float,
        secret: str | None = None,
    ) -> None:
        #: the cluster's secret as the header carries it (never logged)
        self.secret = None if secret is None else secret.encode("ascii")
        self._parts = parts
        self._route = route
        self._members = members
        self._me = me
        self._patience = patience
        self._tasks: set[asyncio.Task[Response]] = set()

    def handle(self, ctx: Any, req: Request) -> Answer | None:
        """The answer to ``req`` when the cluster takes it, else None (the
        API route answers here as on a single server)."""
        key = ("GET" if req.method == "HEAD" else req.method, req.path)
        forwarded = req.header(LOCAL) is not None
        if key in _ONE_JOB:
            return self._one(ctx, req, self._job_key(req), forwarded)
        if key in _DEAD_ACTS:
            try:
                body = json_body(req)
            except HttpError:
                return None  # the route answers the error
            if "name" in body:
                return self._one(ctx, req, self._job_key(req, body), forwarded)
            if forwarded:
                return None
            return self._spawn(self._bulk(ctx, req, key))
        if key in _LISTINGS and not forwarded:
            return self._spawn(self._gather(ctx, req, key))
        return None

    # -- one job ----------------------------------------------------------------------

    @staticmethod
    def _job_key(
        req: Request, body: dict[str, Any] | None = None
    ) -> tuple[bytes, bytes] | None:
        try:
            if body is not None:
                func, name = body.get("func"), body.get("name")
                if not isinstance(func, str) or not isinstance(name, str):
                    return None
                return func.encode("utf-8", "surrogateescape"), name.encode(
                    "utf-8", "surrogateescape"
                )
            form = form_fields(req)
        except HttpError:
            return None
        func, name = form.get("func", b""), form.get("name", b"")
        return (func, name) if func and name else None

    def _one(
        self, ctx: Any, req: Request, key: tuple[bytes, bytes] | None, forwarded: bool
    ) -> Answer | None:
        if key is None or not 0 < len(key[0]) <= 255 or not 0 < len(key[1]) <= 255:
            return None  # the route answers the bad request
        part = self._parts.part(*key)
        if part in self._parts.ready:
            return None
        if forwarded:  # a stale route at the sender: it asks again
            return error_response(421, "the job's partition is not held here")
        return self._spawn(self._to_owner(ctx, req, part))

    async def _to_owner(self, ctx: Any, req: Request, part: int) -> Response:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._patience
        why = "no node holds its partition"
        while True:
            if part in self._parts.ready:  # acquired here meanwhile
                return await _local(ctx, req)
            address = self._route(part)
            if address is not None:
                try:
                    status, body, ctype = await _exchange(
                        address, req, min(NODE_TIMEOUT, self._patience), self.secret
                    )
                    if status != 421:
                        return Response(status, body, ctype)
                    why = "its owner changed"
                except (OSError, TimeoutError, h11.ProtocolError) as exc:
                    why = f"its owner at {address} did not answer ({exc!r})"
            if loop.time() + 0.2 > deadline:
                return error_response(503, f"not done: {why}; ask again")
            await asyncio.sleep(0.2)

    # -- every node -------------------------------------------------------------------

    async def _each(self, ctx: Any, req: Request) -> list[tuple[str, int, Any]]:
        """``(node, status, JSON)`` of ``req`` on every live node (this one
        answered locally).  Raises :class:`NodeDown` naming the silent ones."""
        members = {n: a for n, a in self._members().items() if n != self._me}

        async def here() -> tuple[str, int, Any]:
            resp = await _local(ctx, req)
            return self._me, resp.status, _json(resp.body)

        async def there(node: str, address: str | None) -> tuple[str, int, Any]:
            if not address:
                raise NodeDown(node)
            try:
                status, body, _ = await _exchange(
                    address, req, NODE_TIMEOUT, self.secret
                )
            except (OSError, TimeoutError, h11.ProtocolError):
                raise NodeDown(node) from None
            return node, status, _json(body)

        got = await asyncio.gather(
            here(),
            *(there(n, a) for n, a in sorted(members.items())),
            return_exceptions=True,
        )
        down = [str(g) for g in got if isinstance(g, NodeDown)]
        if down:
            raise NodeDown(", ".join(down))
        for g in got:
            if isinstance(g, BaseException):
                raise g
        return [g for g in got if not isinstance(g, BaseException)]

    async def _bulk(self, ctx: Any, req: Request, key: tuple[str, bytes]) -> Response:
        try:
            answers = await self._each(ctx, req)
        except NodeDown as exc:
            return _down(exc)
        count, more = 0, False
        for node, status, doc in answers:
            if status != 200 or not isinstance(doc, dict):
                return _relay(node, status, doc)
            count += int(doc.get("count", 0))
            more = more or bool(doc.get("more"))
        return json_response(200, {"msg": "SUCCESS", "count": count, "more": more})

    async def _gather(self, ctx: Any, req: Request, key: tuple[str, bytes]) -> Response:
        try:
            answers = await self._each(ctx, req)
        except NodeDown as exc:
            return _down(exc)
        path = key[1]
        try:
            form = form_fields(req)
        except HttpError as exc:
            return error_response(exc.status, exc.message)
        ok = [(n, d) for n, s, d in answers if s == 200 and isinstance(d, dict)]
        if path == b"/api/jobs" and not ok:  # every node: "unknown func"
            node, status, doc = answers[0]
            return _relay(node, status, doc)
        for node, status, doc in answers:
            if status != 200 and not (path == b"/api/jobs" and status == 404):
                return _relay(node, status, doc)
        docs = [d for _, d in ok]
        if path == b"/api/cron":
            limit = _int(form.get("limit"), 1000)
            rows = sorted(
                (r for d in docs for r in d.get("schedules", ())), key=_row_key
            )
            total = sum(int(d.get("total", 0)) for d in docs)
            return json_response(200, {"schedules": rows[:limit], "total": total})
        dead = path == b"/api/dead" or form.get("state", b"").lower() == b"dead"
        limit = _int(form.get("limit"), 50)
        rows = sorted((r for d in docs for r in d.get("jobs", ())), key=_row_key)
        more = len(rows) > limit or any(d.get("next") for d in docs)
        page = rows[:limit]
        nxt = None
        if more and page:
            func, name = _row_key(page[-1])
            nxt = encode_dead_cursor((func, name)) if dead else encode_name_cursor(name)
        out: dict[str, Any] = {"jobs": page, "next": nxt}
        if path == b"/api/dead":
            out["total"] = sum(int(d.get("total", 0)) for d in docs)
        return json_response(200, out)

    def _spawn(self, coro: Coroutine[Any, Any, Response]) -> asyncio.Future[Response]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # kept until done (the loop holds weak refs)
        task.add_done_callback(self._tasks.discard)
        return task


async def _local(ctx: Any, req: Request) -> Response:
    """``req`` answered by this node's API route (its own partitions)."""
    handler = route_for(req.method, req.path)
    if handler is None:  # pragma: no cover - only routed paths come here
        return error_response(404, "no such API route")
    try:
        answer = handler(ctx, req)
        return await answer if isinstance(answer, asyncio.Future) else answer
    except HttpError as exc:
        return error_response(exc.status, exc.message)


def _row_key(row: dict[str, Any]) -> tuple[bytes, bytes]:
    """A listed row's ``(func, name)`` as bytes (the API shows UTF-8 text)."""
    return (
        str(row.get("func", "")).encode("utf-8", "surrogateescape"),
        str(row.get("name", "")).encode("utf-8", "surrogateescape"),
    )


def _int(raw: bytes | None, default: int) -> int:
    try:
        value = int(raw) if raw else 0
    except ValueError:
        value = 0
    return value if value > 0 else default


def _json(body: bytes) -> Any:
    try:
        return json.loads(body) if body else None
    except ValueError:
        return None


def _down(exc: NodeDown) -> Response:
    return error_response(
        503, f"cluster node(s) {exc} did not answer within {NODE_TIMEOUT:g} s"
    )


def _relay(node: str, status: int, doc: Any) -> Response:
    """A node's refusal, passed on with its node's id."""
    err = doc.get("err") if isinstance(doc, dict) else None
    return error_response(status, f"node {node}: {err or 'HTTP ' + str(status)}")


async def _exchange(
    address: str, req: Request, timeout: float, secret: bytes | None
) -> tuple[int, bytes, str]:
    """``req`` sent to the node at ``address`` (HTTP on its protocol port),
    marked :data:`LOCAL` with ``secret``; its ``(status, body, content
    type)``."""
    return await asyncio.wait_for(_exchange_once(address, req, secret), timeout)


async def _exchange_once(
    address: str, req: Request, secret: bytes | None
) -> tuple[int, bytes, str]:
    headers = [
        ("Accept", "application/json"),
        (LOCAL.decode(), "1" if secret is None else secret.decode("ascii")),
    ]
    for name in (b"authorization", b"content-type"):
        value = req.header(name)
        if value is not None:
            headers.append((name.decode(), value.decode("latin-1")))
    method = "GET" if req.method == "HEAD" else req.method
    status, answer_headers, body = await http_exchange(
        address, method, req.target, headers, req.body, _MAX_ANSWER
    )
    ctype = "application/json"
    for k, v in answer_headers:
        if k == b"content-type":
            ctype = v.decode("latin-1")
    return status, body, ctype
