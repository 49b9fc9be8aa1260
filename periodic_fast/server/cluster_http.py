"""The HTTP API's writes in cluster mode (issue 18, docs/cluster.md): any
node takes them.

A node holds only its partitions' jobs.  :class:`ClusterWrites` is the hook
:class:`~.http_app.HttpApp` consults in cluster mode:

* ``POST /FUNC`` (submit) and ``POST /FUNC`` with ``act=remove`` of a job
  whose partition is **not ready here** are sent to the partition's owner as
  the binary SUBMIT_JOB / REMOVE_JOB, through the node's
  :class:`~.forward.Forwarder` (the same links, routes and retries as a
  forwarded binary request), and answered 200 once the owner answered
  SUCCESS: the owner replies after its commit, so a 200 still means
  committed.  503 when no owner answered within the forwarder's patience
  (a partition moving, or the owner refused it: a full func, too many
  funcs).  A forwarded remove of a job that does not exist answers 200
  (the binary REMOVE_JOB's answer); a job of a partition held here is
  handled here as on a single server (404 when missing).
* ``DELETE /FUNC`` (drop) goes to every live node as the binary DROP_FUNC
  (each drops its partitions' jobs); first checked against the cluster
  view: 404 when no live node knows the func, 409 while any node has a
  worker serving it (as a single server's HTTP drop); 200 when every node
  answered SUCCESS, 503 otherwise.

Layer L4 (server).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from ..codec import encode_handle, encode_job
from ..constants import Command
from ..sched_limits import bad_func_name
from .http_wire import SUCCESS, Response, error_response, text

if TYPE_CHECKING:
    from ..job import Job
    from ..sched_parts import Partitions
    from .cluster_view import ClusterView
    from .forward import Forwarder

__all__ = ["ClusterWrites"]

_SUCCESS = int(Command.SUCCESS)


class ClusterWrites:
    """HTTP submit, remove and drop for jobs held on other nodes (see the
    module doc).

    :param parts: the node's partitions (which are ready here).
    :param forwarder: the node's forwarder (None before it listens).
    :param view: the cluster view (the drop's unknown/busy check).
    """

    def __init__(
        self,
        parts: Partitions,
        forwarder: Callable[[], Forwarder | None],
        view: ClusterView,
    ) -> None:
        self._parts = parts
        self._forwarder = forwarder
        self._view = view
        self._tasks: set[asyncio.Task[Response]] = set()

    def held(self, func: bytes, name: bytes) -> bool:
        """True when the job's partition is ready here (handled locally)."""
        return self._parts.part(func, name) in self._parts.ready

    def submit(self, job: Job) -> Response | asyncio.Future[Response]:
        """``job`` submitted at its owner; 200 after the owner's SUCCESS."""
        if bad_func_name(job.func):
            return error_response(400, f"func name {text(job.func)!r} refused")
        part = self._parts.part(job.func, job.name)
        return self._spawn(
            self._ask(int(Command.SUBMIT_JOB), encode_job(job), part, "submit")
        )

    def remove(self, func: bytes, name: bytes) -> asyncio.Future[Response]:
        """The job removed at its owner; 200 after the owner's SUCCESS."""
        payload = encode_handle(func, name)
        part = self._parts.part(func, name)
        return self._spawn(self._ask(int(Command.REMOVE_JOB), payload, part, "remove"))

    def drop(self, func: bytes, now: float) -> Response | asyncio.Future[Response]:
        """``func`` dropped on every live node (see the module doc)."""
        if len(func) > 255:
            return error_response(400, "func must be at most 255 bytes")
        stat = self._view.func_stat(func, now)
        if stat is None:
            return error_response(404, f"unknown func {text(func)!r}")
        if stat.workers:
            return error_response(
                409, f"func {text(func)!r} has workers connected; not dropped"
            )
        return self._spawn(self._drop(func))

    # -- the forwarded requests ----------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Response]) -> asyncio.Future[Response]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)  # kept until done (the loop holds weak refs)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _ask(
        self, command: int, payload: bytes, part: int, what: str
    ) -> Response:
        fwd = self._forwarder()
        first = None if fwd is None else await fwd.ask(command, payload, part)
        if first == _SUCCESS:
            return SUCCESS
        return error_response(
            503,
            f"{what} not done: the node holding the job did not accept it in"
            " time (its partition is moving, or it refused the job)",
        )

    async def _drop(self, func: bytes) -> Response:
        fwd = self._forwarder()
        if fwd is not None and await fwd.drop_everywhere(bytes([len(func)]) + func):
            return SUCCESS
        return error_response(503, f"func {text(func)!r}: not dropped on every node")
