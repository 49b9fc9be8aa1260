"""``GET /metrics``: the server's state in the Prometheus text format.

Each scrape copies the numbers on the event loop (:func:`snapshot`, from
the scheduler and a few figures the HTTP side passes in), then
:func:`render` builds a fresh :class:`~prometheus_client.CollectorRegistry`
with one custom collector over that copy and formats it, in a worker
thread.  Nothing is registered in the library's global registry and nothing
is kept between scrapes.  Metric names are listed in docs/http.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, NamedTuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import exposition as _exposition
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .. import __version__
from .._build import UNITS, build_info
from .views import SchedulerView

if TYPE_CHECKING:  # pragma: no cover
    from ..scheduler import FuncDetail
    from .cluster_view import ClusterMetrics

__all__ = ["CONTENT_TYPE", "Snapshot", "render", "snapshot"]

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
#: Content type of :func:`render`'s output.  Every Prometheus version reads
#: 0.0.4; newer clients announce 1.0.0 by default.
CONTENT_TYPE: str = getattr(
    _exposition, "CONTENT_TYPE_PLAIN_0_0_4", CONTENT_TYPE_LATEST
)

# store.metrics() keys with a known meaning: (metric name, type, help)
_STORE_KEYS = {
    "commits": ("periodic_store_commits", "counter", "Store commits (batches)."),
    "commit_seconds_sum": (
        "periodic_store_commit_seconds",
        "counter",
        "Seconds spent committing (sum over commits).",
    ),
    "last_commit_seconds": (
        "periodic_store_last_commit_seconds",
        "gauge",
        "Duration of the last commit.",
    ),
    "errors": ("periodic_store_errors", "counter", "Failed commits."),
    "pending": (
        "periodic_store_pending_writes",
        "gauge",
        "Writes waiting for the next commit.",
    ),
    "healthy": ("periodic_store_healthy", "gauge", "1 when the store accepts writes."),
}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "backslashreplace")


def _histogram(
    name: str, doc: str, cumulative: list[tuple[float, int]], total: float
) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(float(bound)), float(count))
        for bound, count in cumulative
    ]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=total)


class Snapshot(NamedTuple):
    """Plain copies of everything /metrics shows, taken on the event loop."""

    info: tuple[str, str, str]  #: version, server name, HTTP parser
    started: float
    ready: bool
    funcs: list[FuncDetail]  #: Scheduler.func_details()
    counters: dict[str, int]
    lateness: tuple[list[tuple[float, int]], float]  #: cumulative buckets, sum
    runtime: tuple[list[tuple[float, int]], float]
    workers: int
    clients: int
    http_connections: int
    locks: int
    store: dict[str, float]  #: store.metrics()
    reaping: int = 0  #: records of dropped funcs not freed yet
    cluster: ClusterMetrics | None = None  #: cluster mode (docs/cluster.md)


def snapshot(
    sched: SchedulerView,
    now: float,
    *,
    name: str,
    parser: str,
    started: float,
    ready: bool,
    http_connections: int,
    cluster: ClusterMetrics | None = None,
) -> Snapshot:
    """Copy the scheduler's figures (on the loop: it is not thread-safe);
    the keywords describe the server and its HTTP side (``cluster``: a
    cluster node's figures, :meth:`~.cluster_view.ClusterView.metrics`)."""
    stats = sched.stats
    conns = sched.connections()
    workers = sum(1 for c in conns if c.worker)
    return Snapshot(
        (__version__, name, parser),
        started,
        ready,
        sched.func_details(now),
        sched.counters(),
        (stats.lateness.cumulative(), stats.lateness.sum),
        (stats.runtime.cumulative(), stats.runtime.sum),
        workers,
        len(conns) - workers,
        http_connections,
        len(sched.locks()),
        dict(sched.store.metrics()),
        sched.reaping,
        cluster,
    )


def _build_metric() -> Metric:
    """``periodic_build_info{version, codec, wheel, rec, python} 1``: which
    twins (``cython`` or ``python``) this process runs."""
    labels = ["version", *UNITS, "python"]
    build = build_info()
    metric = GaugeMetricFamily(
        "periodic_build_info",
        "Version and implementation of each accelerated unit (value 1).",
        labels=labels,
    )
    metric.add_metric([build[k] for k in labels], 1.0)
    return metric


class _Collector(Collector):
    """Turns one :class:`Snapshot` into metric families."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        cluster = self._snap.cluster
        if cluster is None:
            yield from self._families()
            return
        # a cluster node: its figures are one node's share, so every sample
        # carries the node id (sum over ``node`` for the cluster's)
        node = cluster.node
        for metric in (*self._families(), *_cluster_metrics(cluster)):
            metric.samples = [
                s._replace(labels={**s.labels, "node": node}) for s in metric.samples
            ]
            yield metric

    def _families(self) -> Iterator[Metric]:
        snap = self._snap
        info = GaugeMetricFamily(
            "periodic_server_info",
            "Server version, name and HTTP parser (value 1).",
            labels=["version", "name", "http_parser"],
        )
        info.add_metric(list(snap.info), 1.0)
        yield info
        yield _build_metric()
        yield GaugeMetricFamily(
            "periodic_server_start_time_seconds",
            "Unix time the HTTP side of the server started.",
            value=snap.started,
        )
        yield GaugeMetricFamily(
            "periodic_server_ready",
            "1 when /readyz answers 200.",
            value=float(snap.ready),
        )

        per_func: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "jobs": GaugeMetricFamily(
                "periodic_func_jobs",
                "Stored jobs of the func, any state (queue depth).",
                labels=["func"],
            ),
            "due": GaugeMetricFamily(
                "periodic_func_due_jobs",
                "Jobs whose time has come, waiting for a worker.",
                labels=["func"],
            ),
            "running": GaugeMetricFamily(
                "periodic_func_running_jobs",
                "Jobs assigned to workers.",
                labels=["func"],
            ),
            "locked": GaugeMetricFamily(
                "periodic_func_locked_jobs", "Jobs parked on a lock.", labels=["func"]
            ),
            "workers": GaugeMetricFamily(
                "periodic_func_workers",
                "Connections that serve the func.",
                labels=["func"],
            ),
            "submitted": CounterMetricFamily(
                "periodic_jobs_submitted",
                "Jobs submitted (SUBMIT_JOB, RUN_JOB, LOAD, HTTP).",
                labels=["func"],
            ),
            "done": CounterMetricFamily(
                "periodic_jobs_done", "WORK_DONE received.", labels=["func"]
            ),
            "failed": CounterMetricFamily(
                "periodic_jobs_failed",
                "WORK_FAIL received, and run timeouts.",
                labels=["func"],
            ),
            "sched_later": CounterMetricFamily(
                "periodic_jobs_sched_later", "SCHED_LATER received.", labels=["func"]
            ),
        }
        for d in snap.funcs:
            label = [_text(d.func)]
            for key, family in per_func.items():
                family.add_metric(label, float(getattr(d, key)))
        yield from per_func.values()

        counters = snap.counters
        for key, name, doc in (
            ("timeout", "periodic_job_timeouts", "Assignments that timed out."),
            ("lost", "periodic_jobs_lost", "Running jobs re-queued: worker gone."),
            ("removed", "periodic_jobs_removed", "Jobs removed (REMOVE_JOB, HTTP)."),
            ("connects", "periodic_connections_opened", "Registered connections."),
            ("disconnects", "periodic_connections_closed", "Closed connections."),
        ):
            yield CounterMetricFamily(name, doc, value=float(counters[key]))
        # retry policies and the dead set (sched_retry; absent: a custom scheduler)
        for key, name, doc in (
            ("retried", "periodic_job_retries", "Retries scheduled after failures."),
            ("dead", "periodic_jobs_dead", "Jobs moved to the dead set."),
            ("dead_evicted", "periodic_dead_evicted", "Dead jobs evicted (bound)."),
        ):
            yield CounterMetricFamily(name, doc, value=float(counters.get(key, 0)))
        yield GaugeMetricFamily(
            "periodic_dead_jobs",
            "Jobs in the dead set.",
            value=float(counters.get("dead_jobs", 0)),
        )

        yield _histogram(
            "periodic_job_lateness_seconds",
            "Dispatch time minus sched_at, at each job's first assignment.",
            *snap.lateness,
        )
        yield _histogram(
            "periodic_job_run_seconds",
            "JOB_ASSIGN to WORK_DONE, WORK_FAIL or SCHED_LATER.",
            *snap.runtime,
        )

        gauge = GaugeMetricFamily(
            "periodic_connections",
            "Registered binary-protocol connections.",
            labels=["kind"],
        )
        gauge.add_metric(["worker"], float(snap.workers))
        gauge.add_metric(["client"], float(snap.clients))
        yield gauge
        yield GaugeMetricFamily(
            "periodic_http_connections",
            "Open HTTP connections.",
            value=float(snap.http_connections),
        )
        yield GaugeMetricFamily(
            "periodic_locks", "Named locks held or awaited.", value=snap.locks
        )
        yield GaugeMetricFamily(
            "periodic_jobs_reaping",
            "Jobs of dropped funcs still being freed (a slice per loop turn).",
            value=float(snap.reaping),
        )
        yield from self._store_metrics(snap.store)

    @staticmethod
    def _store_metrics(values: dict[str, float]) -> Iterator[Metric]:
        """store.metrics() (durable stores)."""
        for key, value in sorted(values.items()):
            known = _STORE_KEYS.get(key)
            if known is None:  # anything else a store reports, as a gauge
                name = "periodic_store_" + _NAME_BAD.sub("_", key)
                yield GaugeMetricFamily(name, f"store.metrics()[{key!r}]", value=value)
            elif known[1] == "counter":
                yield CounterMetricFamily(known[0], known[2], value=float(value))
            else:
                yield GaugeMetricFamily(known[0], known[2], value=float(value))


def _cluster_metrics(c: ClusterMetrics) -> Iterator[Metric]:
    """A cluster node's membership gauges."""
    yield GaugeMetricFamily(
        "periodic_cluster_nodes",
        "Live cluster nodes, as this node's last heartbeat read them.",
        value=float(c.nodes),
    )
    yield GaugeMetricFamily(
        "periodic_cluster_partitions_held",
        "Partitions this node holds (loading or loaded).",
        value=float(c.held),
    )
    yield GaugeMetricFamily(
        "periodic_cluster_partitions",
        "The cluster's partition count.",
        value=float(c.partitions),
    )


def render(snap: Snapshot) -> bytes:
    """``snap`` in the Prometheus text format 0.0.4.

    Builds the families in a fresh registry (no global state) and formats
    them: the slow part (about 8 us per series), safe to run in a worker
    thread while the loop keeps serving."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))
    return generate_latest(registry)
