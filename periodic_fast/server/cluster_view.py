"""The cluster view (issue 18, docs/cluster.md): STATUS, ``/api/overview``,
the status page and ``/metrics`` show the whole cluster.

A node holds only its partitions' jobs, so its own figures are a share of
the cluster's.  Every heartbeat (``server/cluster_node``) writes a small
summary of this node into its ``cluster_nodes`` row (the ``summary``
JSONB column: per func the workers, jobs, running, locked counts and the
earliest pending ``sched_at``; the worker and client connections; the
partitions held) and reads the live nodes' summaries back in the same
transaction.  :class:`ClusterView` joins this node's **current** figures
with the **other** live nodes' summaries as of their last heartbeat:

* :meth:`ClusterView.status` replaces the scheduler's ``status`` (and
  ``func_stat``) in cluster mode, so the binary STATUS (admins and
  filtered identities alike), ``GET /`` (JSON) and ``/api/funcs`` answer
  with the protocol's per-func lines **summed over the live nodes**:
  ``workers``, ``jobs``, ``processing`` and ``locked`` are sums (a worker
  connected to every node counts once per node: it holds a connection on
  each), ``sched_at`` is the earliest pending job's over the nodes (now
  when none is pending anywhere).  The other nodes' figures are at most
  about two heartbeats old (``2 x lease / 3``); a partition moving between
  nodes may be counted twice or not at all meanwhile.
* :meth:`ClusterView.overview` is the ``cluster`` part of
  ``/api/overview`` and of the status page: one row per live node (id,
  address, partitions held, jobs, running, locked, workers, clients,
  alive until) and their totals.
* :meth:`ClusterView.metrics` is what ``/metrics`` adds: the node id
  (every sample of this node gets a ``node`` label), the live nodes, the
  partitions this node holds and the cluster's partition count.

Layer L4 (server): it reads the scheduler and the node's last heartbeat on
the event loop; nothing here does I/O.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from ..job import FuncStat
from .forward import PEER_NAME

if TYPE_CHECKING:
    from ..sched_stats import FuncDetail
    from ..scheduler import Scheduler

__all__ = ["ClusterMetrics", "ClusterView", "HeartbeatState", "NodeSummary"]

log = logging.getLogger("periodic_fast.server.cluster")

#: funcs written into one summary: the busiest first (a heartbeat row stays
#: small; the rest only shows on their own nodes)
MAX_SUMMARY_FUNCS: Final = 10_000
_VERSION: Final = 1

#: per func: workers, jobs, running, locked, earliest pending sched_at (None)
_Counts = tuple[int, int, int, int, int | None]


class _Held(Protocol):
    @property
    def held(self) -> set[int]: ...
    @property
    def count(self) -> int: ...


class HeartbeatState(Protocol):
    """What the view reads of the node's heartbeat
    (:class:`~.cluster_node.ClusterNode`), as its last tick left it."""

    @property
    def node(self) -> str: ...
    @property
    def address(self) -> str | None: ...
    @property
    def lease_time(self) -> float: ...
    @property
    def parts(self) -> _Held: ...
    @property
    def alive(self) -> dict[str, float]: ...
    @property
    def summaries(self) -> dict[str, str]: ...
    @property
    def members(self) -> dict[str, str | None]: ...


class NodeSummary(NamedTuple):
    """One node's figures (this node's current ones, or another's as of its
    last heartbeat)."""

    node: str
    address: str | None
    alive_until: float | None  #: Unix time (database clock); None: unknown
    at: float | None  #: when the figures were taken (None: this node, now)
    parts: int  #: partitions held
    workers: int  #: worker connections
    clients: int  #: client connections (other nodes' links not counted)
    funcs: dict[bytes, _Counts]
    omitted: int = 0  #: funcs left out of the summary (beyond the cap)

    def totals(self) -> tuple[int, int, int]:
        """``(jobs, running, locked)`` over the funcs."""
        jobs = running = locked = 0
        for _, j, r, lk, _ in self.funcs.values():
            jobs += j
            running += r
            locked += lk
        return jobs, running, locked


class ClusterMetrics(NamedTuple):
    """The cluster figures ``/metrics`` adds (copied on the loop)."""

    node: str
    nodes: int  #: live nodes
    held: int  #: partitions this node holds
    partitions: int  #: the cluster's partition count


class ClusterView:
    """The cluster as one node sees it (see the module doc).

    :param node: the node's heartbeat (its last tick's members and
        summaries, its partitions).
    :param sched: the node's scheduler.
    :param clock: the wall clock.
    """

    def __init__(
        self, node: HeartbeatState, sched: Scheduler, clock: Callable[[], float]
    ) -> None:
        self._node = node
        self._sched = sched
        self._clock = clock
        # the last tick's summaries, parsed once: node -> (raw text, parsed)
        self._parsed: dict[str, tuple[str, NodeSummary | None]] = {}

    def install(self) -> None:
        """Answer STATUS and the HTTP func views with the cluster's totals
        (the scheduler's ``status_view``; a single server never sets it)."""
        self._sched.status_view = self

    # -- this node ---------------------------------------------------------------------

    def local(self, now: float) -> NodeSummary:
        """This node's current figures (a pass over its jobs, as STATUS)."""
        details = self._sched.func_details(now)
        return self._local(details)

    def _local(self, details: list[FuncDetail]) -> NodeSummary:
        node = self._node
        workers = clients = 0
        for c in self._sched.connections():
            if c.worker:
                workers += 1
            elif c.identity != PEER_NAME:
                clients += 1
        return NodeSummary(
            node.node,
            node.address,
            node.alive.get(node.node),
            None,
            len(node.parts.held),
            workers,
            clients,
            {
                d.func: (d.workers, d.jobs, d.running, d.locked, d.next_due)
                for d in details
            },
        )

    def summary(self, now: float) -> str:
        """This node's summary as JSON text (what its heartbeat writes)."""
        mine = self.local(now)
        funcs = sorted(mine.funcs.items(), key=lambda kv: -kv[1][1])
        kept = funcs[:MAX_SUMMARY_FUNCS]
        return json.dumps(
            {
                "v": _VERSION,
                "at": now,
                "parts": mine.parts,
                "workers": mine.workers,
                "clients": mine.clients,
                # func names are bytes: latin-1 maps each byte to one char
                "funcs": [[f.decode("latin-1"), *c] for f, c in kept],
                "omitted": len(funcs) - len(kept),
            },
            separators=(",", ":"),
        )

    # -- the other nodes ---------------------------------------------------------------

    def others(self) -> list[NodeSummary]:
        """The other live nodes' summaries as of the last heartbeat, by id
        (a node that wrote none yet shows with empty figures)."""
        node = self._node
        out = []
        parsed: dict[str, tuple[str, NodeSummary | None]] = {}
        for other, alive in sorted(node.alive.items()):
            if other == node.node:
                continue
            raw = node.summaries.get(other)
            summary: NodeSummary | None = None
            if raw is not None:
                cached = self._parsed.get(other)
                if cached is not None and cached[0] == raw:
                    summary = cached[1]
                else:
                    summary = _parse(other, raw)
                parsed[other] = (raw, summary)
            address = node.members.get(other)
            if summary is None:
                summary = NodeSummary(other, address, alive, None, 0, 0, 0, {})
            else:
                summary = summary._replace(address=address, alive_until=alive)
            out.append(summary)
        self._parsed = parsed
        return out

    def nodes(self, now: float) -> list[NodeSummary]:
        """Every live node, this one first with its current figures."""
        return [self.local(now), *self.others()]

    # -- STATUS ------------------------------------------------------------------------

    def status(self, now: float) -> list[FuncStat]:
        """The STATUS lines summed over the live nodes (see the module doc),
        sorted by func."""
        merged: dict[bytes, list[Any]] = {}
        for n in self.nodes(now):
            for func, (w, j, r, lk, due) in n.funcs.items():
                m = merged.get(func)
                if m is None:
                    merged[func] = [w, j, r, lk, due]
                    continue
                m[0] += w
                m[1] += j
                m[2] += r
                m[3] += lk
                if due is not None and (m[4] is None or due < m[4]):
                    m[4] = due
        t = int(now)
        return [
            FuncStat(f, m[0], m[1], m[2], m[3], t if m[4] is None else m[4])
            for f, m in sorted(merged.items())
        ]

    def func_stat(self, func: bytes, now: float) -> FuncStat | None:
        """One func's cluster STATUS line, or None when no node knows it."""
        for stat in self.status(now):
            if stat.func == func:
                return stat
        return None

    # -- pages and metrics -------------------------------------------------------------

    def overview(self, now: float) -> dict[str, Any]:
        """The ``cluster`` part of ``/api/overview``: every live node and the
        totals."""
        rows = []
        totals = dict.fromkeys(
            ("parts", "jobs", "running", "locked", "workers", "clients"), 0
        )
        node = self._node
        for n in self.nodes(now):
            jobs, running, locked = n.totals()
            counts = {
                "parts": n.parts,
                "jobs": jobs,
                "running": running,
                "locked": locked,
                "workers": n.workers,
                "clients": n.clients,
            }
            for key, value in counts.items():
                totals[key] += value
            rows.append(
                {
                    "node": n.node,
                    "address": n.address,
                    "self": n.node == node.node,
                    **counts,
                    "funcs": len(n.funcs) + n.omitted,
                    "alive_until": n.alive_until,
                    "age": None if n.at is None else max(0.0, now - n.at),
                }
            )
        return {
            "node": node.node,
            "partitions": node.parts.count,
            "lease_time": node.lease_time,
            "nodes": rows,
            "totals": {"nodes": len(rows), **totals},
        }

    def metrics(self) -> ClusterMetrics:
        """The cluster figures of ``/metrics``."""
        node = self._node
        live = set(node.alive) | {node.node}
        return ClusterMetrics(
            node.node, len(live), len(node.parts.held), node.parts.count
        )


def _parse(node: str, raw: str) -> NodeSummary | None:
    """A summary row's JSON, or None (logged) when it is not one we read."""
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("v") != _VERSION:
            raise ValueError(f"unknown summary version {doc.get('v')!r}")
        funcs: dict[bytes, _Counts] = {}
        for f, w, j, r, lk, due in doc["funcs"]:
            funcs[str(f).encode("latin-1")] = (
                int(w),
                int(j),
                int(r),
                int(lk),
                None if due is None else int(due),
            )
        return NodeSummary(
            node,
            None,
            None,
            float(doc["at"]),
            int(doc["parts"]),
            int(doc["workers"]),
            int(doc["clients"]),
            funcs,
            int(doc.get("omitted", 0)),
        )
    except (ValueError, TypeError, KeyError, UnicodeEncodeError) as exc:
        log.warning("cluster node %s: unreadable summary (%s)", node, exc)
        return None
