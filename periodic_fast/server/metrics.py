"""``GET /metrics``: the server's state in the Prometheus text format.

One :class:`Metrics` per HTTP app owns its own
:class:`~prometheus_client.CollectorRegistry` (nothing is registered in the
library's global registry) with one custom collector that reads the
scheduler, the store and the HTTP app at every scrape; nothing is counted
twice and nothing is kept between scrapes.  Metric names are listed in
docs/http.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # pragma: no cover
    from .http import HttpApp

__all__ = ["Metrics"]

_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
# every Prometheus version reads 0.0.4; newer clients default to announcing 1.0.0
_CONTENT_TYPE: str = getattr(
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


def _histogram(name: str, doc: str, hist: Any) -> HistogramMetricFamily:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(float(bound)), float(count))
        for bound, count in hist.cumulative()
    ]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist.sum)


class _Collector(Collector):
    """Reads the server's state at each scrape."""

    def __init__(self, app: HttpApp) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        app = self._app
        sched = app.scheduler
        now = app.clock()
        info = GaugeMetricFamily(
            "periodic_server_info",
            "Server version, name and HTTP parser (value 1).",
            labels=["version", "name", "http_parser"],
        )
        info.add_metric([__version__, app.name, app.parser_name], 1.0)
        yield info
        yield GaugeMetricFamily(
            "periodic_server_start_time_seconds",
            "Unix time the HTTP side of the server started.",
            value=app.started,
        )
        ready, _ = app.readiness()
        yield GaugeMetricFamily(
            "periodic_server_ready", "1 when /readyz answers 200.", value=float(ready)
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
                "periodic_jobs_failed", "WORK_FAIL received.", labels=["func"]
            ),
            "sched_later": CounterMetricFamily(
                "periodic_jobs_sched_later", "SCHED_LATER received.", labels=["func"]
            ),
        }
        for d in sched.func_details(now):
            label = [_text(d.func)]
            for key, family in per_func.items():
                family.add_metric(label, float(getattr(d, key)))
        yield from per_func.values()

        counters = sched.counters()
        for key, name, doc in (
            ("timeout", "periodic_job_timeouts", "Assignments that timed out."),
            ("lost", "periodic_jobs_lost", "Running jobs re-queued: worker gone."),
            ("removed", "periodic_jobs_removed", "Jobs removed (REMOVE_JOB, HTTP)."),
            ("connects", "periodic_connections_opened", "Registered connections."),
            ("disconnects", "periodic_connections_closed", "Closed connections."),
        ):
            yield CounterMetricFamily(name, doc, value=float(counters[key]))

        stats = sched.stats
        yield _histogram(
            "periodic_job_lateness_seconds",
            "Dispatch time minus sched_at, at each job's first assignment.",
            stats.lateness,
        )
        yield _histogram(
            "periodic_job_run_seconds",
            "JOB_ASSIGN to WORK_DONE, WORK_FAIL or SCHED_LATER.",
            stats.runtime,
        )

        conns = sched.connections()
        workers = sum(1 for c in conns if c.worker)
        gauge = GaugeMetricFamily(
            "periodic_connections",
            "Registered binary-protocol connections.",
            labels=["kind"],
        )
        gauge.add_metric(["worker"], float(workers))
        gauge.add_metric(["client"], float(len(conns) - workers))
        yield gauge
        yield GaugeMetricFamily(
            "periodic_http_connections",
            "Open HTTP connections.",
            value=float(len(app.connections)),
        )
        yield GaugeMetricFamily(
            "periodic_locks", "Named locks held or awaited.", value=len(sched.locks())
        )
        yield from self._store_metrics(getattr(sched, "store", None))

    @staticmethod
    def _store_metrics(store: Any) -> Iterator[Metric]:
        """store.metrics() (durable stores), when the store has it."""
        read = getattr(store, "metrics", None)
        if not callable(read):
            return
        values: dict[str, float] = read()
        for key, value in sorted(values.items()):
            known = _STORE_KEYS.get(key)
            if known is None:  # anything else a store reports, as a gauge
                name = "periodic_store_" + _NAME_BAD.sub("_", key)
                yield GaugeMetricFamily(name, f"store.metrics()[{key!r}]", value=value)
            elif known[1] == "counter":
                yield CounterMetricFamily(known[0], known[2], value=float(value))
            else:
                yield GaugeMetricFamily(known[0], known[2], value=float(value))


class Metrics:
    """The ``/metrics`` page of one HTTP app (own registry, one collector)."""

    def __init__(self, app: HttpApp) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(app))

    def render(self) -> tuple[bytes, str]:
        """``(body, content type)`` in the Prometheus text format 0.0.4."""
        return generate_latest(self.registry), _CONTENT_TYPE
