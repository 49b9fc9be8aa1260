"""Client-side sharding over several independent servers.

:class:`ClientCluster` routes each job to one server by a consistent hash ring
keyed on the **job name**, exactly like aio-periodic's ``ClientCluster``
(protocol.md 6.4), so both clients send the same name to the same server.
aio-periodic builds its ring with ``uhashring.HashRing(nodes, hash_fn="ketama")``;
:class:`KetamaRing` is a dependency-free re-implementation of that ring:

* every node (its address string, in the order given) gets
  ``40 * n * weight // total_weight`` = 40 virtual nodes ``"<node>-<i>"``;
  each virtual node's MD5 digest gives 4 points (bytes 0-3, 4-7, 8-11, 12-15,
  each read little-endian); a later node wins a (vanishingly rare) collision;
* a key's point is the first 4 digest bytes of ``MD5(str(key))`` read
  little-endian; the owner is the first ring point strictly greater
  (``bisect_right``), wrapping to the first point.

``str(key)``: aio-periodic hashes the name as the Python object it was given
(a ``str`` normally); we hash names given as bytes by their UTF-8 text, so
``b"x"`` and ``"x"`` route alike.

Failover (``ClientCluster(..., failover=True)``, the default with
``cluster=True`` for the nodes of one ``periodicd --cluster``): a request
whose ring node is down goes to the next distinct node on the ring
(:meth:`KetamaRing.get_nodes`), and one in flight when its connection
dropped is sent again there when that is safe (see :class:`ClientCluster`).

:class:`WorkerCluster` is the worker side: one :class:`~periodic_fast.worker.Worker`
per server, every func registered on all of them, so whichever server a job
was routed to finds a worker (aio-periodic's ``WorkerCluster``).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, overload

from ._address import BytesLike
from ._drain import SignalDrain
from ._shared_slots import SharedSlotWorker, SlotBudget
from .client import Client, StreamCallback
from .errors import ClientError, ConnectionLost, NotConnected
from .job import FuncStat
from .worker import Handler, Worker

__all__ = ["ClientCluster", "KetamaRing", "WorkerCluster"]

logger = logging.getLogger(__name__)
_H = TypeVar("_H", bound=Callable[..., Any])
_R = TypeVar("_R")


class KetamaRing:
    """uhashring-compatible ketama ring over node names (see module doc)."""

    def __init__(self, nodes: Sequence[str], vnodes: int = 40, replicas: int = 4):
        if not nodes:
            raise ValueError("need at least one node")
        self.nodes = list(nodes)
        ring: dict[int, str] = {}
        n = len(self.nodes)
        per_node = (vnodes * n * 1) // n  # weight 1 each, as aio-periodic uses
        for node in self.nodes:
            for w in range(per_node):
                digest = hashlib.md5(f"{node}-{w}".encode()).digest()
                for r in range(replicas):
                    ring[int.from_bytes(digest[r * 4 : r * 4 + 4], "little")] = node
        self._keys = sorted(ring)
        self._ring = ring

    @staticmethod
    def hash_key(key: BytesLike) -> int:
        """The ring point of ``key``."""
        if not isinstance(key, str):
            key = bytes(key).decode(errors="replace")
        return int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "little")

    def get_node(self, key: BytesLike) -> str:
        """The node that owns ``key``."""
        pos = bisect.bisect_right(self._keys, self.hash_key(key))
        if pos == len(self._keys):
            pos = 0
        return self._ring[self._keys[pos]]

    def get_nodes(self, key: BytesLike) -> list[str]:
        """Every node, in the order a walk round the ring from ``key``'s
        point meets them: the owner first (failover order)."""
        keys = self._keys
        ring = self._ring
        start = bisect.bisect_right(keys, self.hash_key(key))
        out: list[str] = []
        seen: set[str] = set()
        want = len(set(self.nodes))
        for i in range(len(keys)):
            node = ring[keys[(start + i) % len(keys)]]
            if node not in seen:
                seen.add(node)
                out.append(node)
                if len(out) == want:
                    break
        return out


class ClientCluster:
    """One :class:`Client` per server; jobs routed by name (see module doc).

    ``submit_job``, ``run_job``, ``remove_job`` and ``recv_job_data`` go to the
    server owning the job name on the ring.

    **Independent servers** (``cluster=False``, the default, aio-periodic's
    model): each server has its own jobs; ``drop_func`` and ``ping`` go to
    all; ``status`` asks all and merges (workers, jobs, processing and locked
    summed, earliest ``sched_at`` kept).

    **Nodes of one** ``periodicd --cluster`` (``cluster=True``): any node
    answers any request (it forwards to the job's owner), so ``status``,
    ``drop_func`` and ``ping`` ask one live node (its STATUS is already the
    cluster's total) and failover is on by default.

    **Failover** (``failover``, default: ``cluster``): a request whose ring
    node is down (refused, reconnecting) goes to the next node on the ring
    that is up; a request in flight when its connection dropped is sent
    again to the next node when that is safe: SUBMIT_JOB (an upsert),
    REMOVE_JOB, DROP_FUNC, STATUS and PING always, RUN_JOB only with
    ``cluster=True`` (the same job, at least once, as the cluster's own
    failover; on independent servers it would run a second job elsewhere,
    so :class:`~periodic_fast.errors.ConnectionLost` is raised).  A
    RECV_DATA stream fails over only before it starts.  On independent
    servers failover moves a name to another server while its own is down:
    the job is stored *there* (a later REMOVE routed to the recovered
    server does not find it); that is the trade-off for accepting
    submissions during an outage.  A down node is retried in the background
    (the client's ``reconnect_delay``) and gets its names back once it
    answers.

    :param addresses: server addresses; the ring is keyed on these strings,
        so give them exactly as the aio-periodic side does.
    :param cluster: the addresses are nodes of one cluster (see above).
    :param failover: route around down nodes (default: ``cluster``).
    :param client_kwargs: passed to every :class:`Client`.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        cluster: bool = False,
        failover: bool | None = None,
        **client_kwargs: Any,
    ) -> None:
        if not addresses:
            raise ValueError("need at least one address")
        if len(set(addresses)) != len(addresses):
            raise ValueError("duplicate address")
        self.addresses = list(addresses)
        self.cluster = cluster
        self.failover = cluster if failover is None else failover
        self.ring = KetamaRing(self.addresses)
        self.clients = {a: Client(a, **client_kwargs) for a in self.addresses}

    def get(self, name: BytesLike) -> Client:
        """The client of the server that owns job ``name``."""
        return self.clients[self.ring.get_node(name)]

    def candidates(self, name: BytesLike | None) -> list[Client]:
        """The clients a request about ``name`` tries, in order: the ring's
        owner, then the next distinct nodes on the ring (``None``: the
        addresses in the given order)."""
        if name is None:
            return list(self.clients.values())
        return [self.clients[a] for a in self.ring.get_nodes(name)]

    async def connect(self) -> None:
        """Connect to every server.  With failover, servers that cannot be
        reached are retried in the background (their requests go to the
        others meanwhile).

        :raises NotConnected: a server (with failover: every server) cannot
            be reached.
        """
        clients = list(self.clients.values())
        if not self.failover:
            await asyncio.gather(*(c.connect() for c in clients))
            return
        res = await asyncio.gather(
            *(c.connect() for c in clients), return_exceptions=True
        )
        failed: list[BaseException] = []
        for c, r in zip(clients, res, strict=True):
            if isinstance(r, NotConnected):
                logger.warning("%s: %s; retrying in the background", c.address, r)
                _retry_later(c)
                failed.append(r)
            elif isinstance(r, BaseException):
                raise r
        if len(failed) == len(clients):
            await self.close()
            raise NotConnected(
                "no server reachable: " + "; ".join(str(e) for e in failed)
            )

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(*(c.close() for c in self.clients.values()))

    async def __aenter__(self) -> ClientCluster:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _routed(
        self,
        name: BytesLike | None,
        call: Callable[[Client], Awaitable[_R]],
        *,
        resend: bool,
    ) -> _R:
        """``call`` on the owner of ``name``; with failover on the next live
        node when the owner is down, and (``resend``) when the connection
        dropped with the request in flight."""
        if not self.failover:
            return await call(self.get(name) if name is not None else self._first())
        errors: list[str] = []
        for client in self.candidates(name):
            if client.reconnecting:  # known down: do not wait for it
                errors.append(f"{client.address}: reconnecting")
                continue
            try:
                return await call(client)
            except NotConnected as exc:  # never sent
                _retry_later(client)
                errors.append(str(exc))
            except ConnectionLost as exc:
                if not resend:
                    raise
                logger.info("%s; sending the request to the next node", exc)
                errors.append(str(exc))
        raise NotConnected("no server reachable: " + "; ".join(errors))

    def _first(self) -> Client:
        return next(iter(self.clients.values()))

    async def submit_job(
        self, func: BytesLike, name: BytesLike, *args: Any, **kwargs: Any
    ) -> bool:
        """:meth:`Client.submit_job` on the owner of ``name``."""
        return await self._routed(
            name, lambda c: c.submit_job(func, name, *args, **kwargs), resend=True
        )

    async def run_job(
        self,
        func: BytesLike,
        name: BytesLike,
        *args: Any,
        stream: StreamCallback | None = None,
        **kwargs: Any,
    ) -> bytes:
        """:meth:`Client.run_job` on the owner of ``name`` (sent again after a
        lost connection only with ``cluster=True``: see the class doc)."""
        return await self._routed(
            name,
            lambda c: c.run_job(func, name, *args, stream=stream, **kwargs),
            resend=self.cluster,
        )

    async def remove_job(self, func: BytesLike, name: BytesLike) -> bool:
        """:meth:`Client.remove_job` on the owner of ``name``."""
        return await self._routed(name, lambda c: c.remove_job(func, name), resend=True)

    async def recv_job_data(
        self, func: BytesLike, name: BytesLike, timeout: float = 120
    ) -> AsyncIterator[bytes]:
        """:meth:`Client.recv_job_data` on the owner of ``name`` (failover
        before the stream starts only)."""
        client = self.get(name)
        if self.failover and client.reconnecting:
            live = [c for c in self.candidates(name) if not c.reconnecting]
            if not live:
                raise NotConnected(f"no server reachable for {name!r}")
            client = live[0]
        async for chunk in client.recv_job_data(func, name, timeout):
            yield chunk

    async def drop_func(self, func: BytesLike) -> bool:
        """Drop ``func`` on every server (``cluster=True``: on one node, which
        drops it on every node); True when all answered SUCCESS."""
        if self.cluster:
            return await self._routed(None, lambda c: c.drop_func(func), resend=True)
        res = await asyncio.gather(*(c.drop_func(func) for c in self.clients.values()))
        return all(res)

    async def ping(self) -> bool:
        """True when every server (``cluster=True``: a live node) answered."""
        if self.cluster:
            return await self._routed(None, lambda c: c.ping(), resend=True)
        res = await asyncio.gather(*(c.ping() for c in self.clients.values()))
        return all(res)

    async def status(self) -> dict[str, FuncStat]:
        """Merged per-func statistics of all servers (``cluster=True``: one
        live node's, which are the cluster's totals)."""
        if self.cluster:
            return await self._routed(None, lambda c: c.status(), resend=True)
        merged: dict[str, FuncStat] = {}
        for st in await asyncio.gather(*(c.status() for c in self.clients.values())):
            for func, s in st.items():
                m = merged.get(func)
                if m is None:
                    merged[func] = s
                else:
                    merged[func] = FuncStat(
                        m.func,
                        m.workers + s.workers,
                        m.jobs + s.jobs,
                        m.processing + s.processing,
                        m.locked + s.locked,
                        min(m.sched_at, s.sched_at),
                    )
        return merged


def _retry_later(client: Client) -> None:
    """Let the client's background loop reconnect a down server (its
    requests are routed elsewhere meanwhile)."""
    if client.reconnect and not client.reconnecting:
        client._start_reconnect()


class WorkerCluster(SignalDrain):
    """One :class:`~periodic_fast.worker.Worker` per server, all serving the
    same funcs (aio-periodic's ``WorkerCluster``)::

        cluster = WorkerCluster(["tcp://10.0.0.1:5000", "tcp://10.0.0.2:5000"])

        @cluster.func("echo")
        async def echo(job: WorkerJob) -> bytes:
            return job.workload

        await cluster.work(size=8)   # 8 grab slots on *each* server

    Registration (``func`` / ``broadcast`` decorators, :meth:`add_func`,
    :meth:`remove_func`) applies to every worker.  A job's outcome goes back
    on the connection it came from.  A server that is down when the cluster
    starts is retried in the background (every ``reconnect_delay`` seconds)
    and gets the funcs and slots once it answers; :meth:`start` fails only
    when no server can be reached.

    With ``shared_slots=True`` the ``size`` of :meth:`start` / ``work`` is
    the number of jobs the whole cluster runs at once (the process's
    capacity), shared over the servers: a job from any server takes one
    (:mod:`periodic_fast._shared_slots`); ``announce`` then gets a line per
    server connected, lost or retried.

    :param addresses: server addresses (as for :class:`ClientCluster`).
    :param shared_slots: one budget of ``size`` jobs for every server.
    :param announce: with ``shared_slots``, the per-server log lines.
    :param worker_kwargs: passed to every :class:`~periodic_fast.worker.Worker`
        (``name``/``token``, ``threads``, ``drain_timeout``, ...).
    """

    def __init__(
        self,
        addresses: Sequence[str],
        *,
        shared_slots: bool = False,
        announce: Callable[[str], None] | None = None,
        **worker_kwargs: Any,
    ) -> None:
        if not addresses:
            raise ValueError("need at least one address")
        if len(set(addresses)) != len(addresses):
            raise ValueError("duplicate address")
        self.addresses = list(addresses)
        self._budget: SlotBudget | None = None
        if shared_slots:
            budget = self._budget = SlotBudget()
            self.workers: dict[str, Worker] = {
                a: SharedSlotWorker(
                    a, budget=budget, announce=announce, **worker_kwargs
                )
                for a in self.addresses
            }
        else:
            self.workers = {a: Worker(a, **worker_kwargs) for a in self.addresses}
        self._stopped: asyncio.Event | None = None
        self._shutdown_task: asyncio.Task[None] | None = None

    def _each(self) -> Iterable[Worker]:
        return self.workers.values()

    # registration -------------------------------------------------------------
    @property
    def funcs(self) -> list[str]:
        """The registered func names (the same on every worker)."""
        return next(iter(self._each())).funcs

    @property
    def running(self) -> int:
        """Jobs running now, over all servers."""
        return sum(w.running for w in self._each())

    async def add_func(
        self, func: BytesLike, handler: Handler, *, broadcast: bool = False
    ) -> bool:
        """Register ``handler`` for ``func`` on every server (see
        :meth:`Worker.add_func <periodic_fast.worker.Worker.add_func>`); True
        when every connected server accepted it."""
        res = await asyncio.gather(
            *(w.add_func(func, handler, broadcast=broadcast) for w in self._each()),
            return_exceptions=True,
        )
        return _all_ok(res, "add_func")

    @overload
    def broadcast(
        self, func: BytesLike | None = None, handler: None = None
    ) -> Callable[[_H], _H]: ...

    @overload
    def broadcast(self, func: BytesLike, handler: Handler) -> Awaitable[bool]: ...

    def broadcast(
        self, func: BytesLike | None = None, handler: Handler | None = None
    ) -> Callable[[_H], _H] | Awaitable[bool]:
        """A broadcast func on every server: ``@cluster.broadcast("name")`` or
        ``await cluster.broadcast("name", handler)``."""
        if handler is None:
            return self.func(func, broadcast=True)
        if func is None:
            raise TypeError("broadcast(func, handler) needs a func name")
        return self.add_func(func, handler, broadcast=True)

    def func(
        self, name: BytesLike | None = None, *, broadcast: bool = False
    ) -> Callable[[_H], _H]:
        """Decorator: register the function for ``name`` (default: its
        ``__name__``) on every server."""

        def deco(handler: _H) -> _H:
            for w in self._each():
                w.func(name, broadcast=broadcast)(handler)
            return handler

        return deco

    async def remove_func(self, func: BytesLike) -> bool:
        """Unregister ``func`` on every server (CANT_DO)."""
        res = await asyncio.gather(
            *(w.remove_func(func) for w in self._each()), return_exceptions=True
        )
        return _all_ok(res, "remove_func")

    # running --------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect every worker; a server that cannot be reached is retried in
        the background.

        :raises NotConnected: no server could be reached.
        """
        res = await asyncio.gather(
            *(w.connect() for w in self._each()), return_exceptions=True
        )
        await self._check_started(res)

    async def start(self, size: int = 1) -> None:
        """Offer ``size`` grab slots on every server and return (jobs run in
        the background until :meth:`shutdown`); with ``shared_slots`` at most
        ``size`` jobs run at once over all servers.

        :raises NotConnected: no server could be reached.
        """
        if size < 1:
            raise ValueError("size must be >= 1")
        if self._budget is not None:
            self._budget.size = size
        self._stopped = asyncio.Event()
        res = await asyncio.gather(
            *(w.start(size) for w in self._each()), return_exceptions=True
        )
        await self._check_started(res)

    async def _check_started(self, results: list[Any]) -> None:
        failed: list[tuple[str, Worker, BaseException]] = []
        for (address, w), r in zip(self.workers.items(), results, strict=True):
            if isinstance(r, NotConnected):
                failed.append((address, w, r))
            elif isinstance(r, BaseException):
                await self.close()
                raise r
        if len(failed) == len(self.workers):
            await self.close()  # stops the background retries
            raise NotConnected(
                "no server reachable: " + "; ".join(str(e) for _, _, e in failed)
            )
        for address, w, r in failed:
            if self._budget is None:  # shared_slots: the worker announces it
                logger.warning("%s: %s; retrying in the background", address, r)
            w._start_reconnect()

    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful drain of every worker at once (see
        :meth:`Worker.shutdown <periodic_fast.worker.Worker.shutdown>`)."""
        await asyncio.gather(*(w.shutdown(timeout) for w in self._each()))
        if self._stopped is not None:
            self._stopped.set()

    async def close(self) -> None:
        """Close every worker at once (running jobs are cancelled)."""
        await asyncio.gather(*(w.close() for w in self._each()))
        if self._stopped is not None:
            self._stopped.set()

    async def __aenter__(self) -> WorkerCluster:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _all_ok(results: list[Any], what: str) -> bool:
    ok = True
    for r in results:
        if isinstance(r, ClientError):
            logger.warning("%s: %s", what, r)
            ok = False
        elif isinstance(r, BaseException):
            raise r
        else:
            ok = ok and bool(r)
    return ok
