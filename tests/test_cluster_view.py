"""The cluster view (issue 18): STATUS, /api/overview, the status page and
/metrics show every live node.

The first tests drive :class:`~periodic_fast.server.cluster_view.ClusterView`
over a real scheduler and a stand-in for the node's heartbeat (its last
tick's members and summaries); the last one runs three ``periodicd
--cluster`` processes with HTTP on one throwaway PostgreSQL: STATUS through
any node shows every func's cluster total, ``/api/overview`` lists every
node, ``/metrics`` carries the ``node`` label, a CONFIG_SET on one node is
in force on every node within a heartbeat; HTTP submit, remove and drop
through any node reach the jobs' owners.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from test_cluster_nodes import (
    _CHILD,
    LEASE,
    ROOT,
    _free_port,
    _wait_balanced,
    _wait_for,
    pg,  # noqa: F401  # the fixture
)
from test_scheduler import T0, Harness, cmds

from periodic_fast.client import Client
from periodic_fast.codec import decode_status
from periodic_fast.constants import Command as C
from periodic_fast.job import FuncStat
from periodic_fast.server.cluster_view import ClusterView, NodeSummary
from periodic_fast.server.metrics import render, snapshot
from periodic_fast.server.status_page import overview, render_fragment

# -- the view over a stand-in heartbeat ---------------------------------------------


@dataclass
class _Parts:
    held: set[int] = field(default_factory=lambda: {0, 1, 2})
    count: int = 8


@dataclass
class FakeNode:
    """What ClusterView reads of a ClusterNode."""

    node: str = "a"
    address: str | None = "tcp://a:5000"
    lease_time: float = 5.0
    parts: _Parts = field(default_factory=_Parts)
    alive: dict[str, float] = field(default_factory=dict)
    summaries: dict[str, str] = field(default_factory=dict)
    members: dict[str, str | None] = field(default_factory=dict)


def _remote(view_of: Harness, node: str, now: float) -> str:
    """The summary another node would write (its own view's JSON)."""
    other = FakeNode(node=node, parts=_Parts({5}))
    return ClusterView(other, view_of.s, lambda: now).summary(now)


def _setup() -> tuple[Harness, Harness, FakeNode, ClusterView]:
    here, there = Harness(), Harness()
    node = FakeNode()
    view = ClusterView(node, here.s, lambda: here.now)
    view.install()
    return here, there, node, view


def test_status_sums_every_live_node() -> None:
    here, there, node, _ = _setup()
    here.submit(b"f", b"1", sched_at=int(T0) + 100)
    here.submit(b"g", b"1", sched_at=int(T0) + 50)
    # the other node: two f jobs, one due earlier, a func unknown here (its
    # name need not be UTF-8), a worker
    there.submit(b"f", b"2", sched_at=int(T0) + 10)
    there.submit(b"f", b"3", sched_at=int(T0) + 20)
    there.submit(b"h\xff", b"1", sched_at=int(T0) + 30)
    there.worker(b"f")
    node.alive = {"a": T0 + 5, "b": T0 + 5}
    node.members = {"a": "tcp://a:5000", "b": "tcp://b:5000"}
    node.summaries = {"b": _remote(there, "b", T0)}

    stats = here.status()
    assert stats[b"f"] == FuncStat(b"f", 1, 3, 0, 0, int(T0) + 10)
    assert stats[b"g"] == FuncStat(b"g", 0, 1, 0, 0, int(T0) + 50)
    assert stats[b"h\xff"].jobs == 1
    assert here.s.func_stat(b"f", T0) == stats[b"f"]
    assert here.s.func_stat(b"nope", T0) is None
    # the binary STATUS answers the same lines
    [p] = here.client().req(C.STATUS)
    assert decode_status(p.payload) == [stats[f] for f in sorted(stats)]
    # a node that left (not in the last tick's live set) no longer counts
    node.alive = {"a": T0 + 5}
    assert {f: s.jobs for f, s in here.status().items()} == {b"f": 1, b"g": 1}


def test_sched_at_is_the_earliest_pending_anywhere() -> None:
    """A node without pending jobs of a func must not pull the func's
    sched_at down to "now"."""
    here, there, node, _ = _setup()
    here.submit(b"f", b"1", sched_at=int(T0) + 3600)
    there.submit(b"f", b"2", sched_at=int(T0) + 7200)
    there.submit(b"f", b"gone", sched_at=int(T0) + 60)
    node.alive = {"a": T0 + 5, "b": T0 + 5}
    node.summaries = {"b": _remote(there, "b", T0)}
    assert here.status()[b"f"].sched_at == int(T0) + 60
    # the remote earliest is removed; a third node knows f without jobs
    assert cmds(there.client().req(C.REMOVE_JOB, b"f", b"gone")) == [C.SUCCESS]
    empty = Harness()
    empty.submit(b"f", b"x", sched_at=int(T0))
    assert cmds(empty.client().req(C.REMOVE_JOB, b"f", b"x")) == [C.SUCCESS]
    node.alive["c"] = T0 + 5
    node.summaries = {"b": _remote(there, "b", T0), "c": _remote(empty, "c", T0)}
    assert here.status()[b"f"].sched_at == int(T0) + 3600
    # nothing pending anywhere: now, as the protocol says
    assert cmds(here.client().req(C.REMOVE_JOB, b"f", b"1")) == [C.SUCCESS]
    assert cmds(there.client().req(C.REMOVE_JOB, b"f", b"2")) == [C.SUCCESS]
    node.summaries = {"b": _remote(there, "b", T0), "c": _remote(empty, "c", T0)}
    assert here.status()[b"f"].sched_at == int(here.now)


def test_unreadable_summary_shows_the_node_without_figures() -> None:
    here, _, node, view = _setup()
    node.alive = {"a": T0 + 5, "b": T0 + 5}
    node.summaries = {"b": json.dumps({"v": 99})}
    rows = view.overview(T0)["nodes"]
    assert [r["node"] for r in rows] == ["a", "b"]
    assert rows[1]["jobs"] == 0 and rows[1]["age"] is None


def test_overview_page_and_metrics_show_the_cluster() -> None:
    here, there, node, view = _setup()
    here.submit(b"f", b"1", sched_at=int(T0) + 100)
    there.submit(b"f", b"2", sched_at=int(T0) + 100)
    node.alive = {"a": T0 + 5, "b": T0 + 6}
    node.members = {"a": "tcp://a:5000", "b": "tcp://b:5000"}
    node.summaries = {"b": _remote(there, "b", T0 - 1)}
    cl = view.overview(T0)
    assert cl["node"] == "a" and cl["partitions"] == 8
    a, b = cl["nodes"]
    assert (a["node"], a["self"], a["parts"], a["jobs"]) == ("a", True, 3, 1)
    assert (b["node"], b["self"], b["parts"], b["jobs"]) == ("b", False, 1, 1)
    assert b["address"] == "tcp://b:5000" and b["alive_until"] == T0 + 6
    assert b["age"] == 1.0
    assert cl["totals"]["nodes"] == 2 and cl["totals"]["jobs"] == 2
    assert cl["totals"]["parts"] == 4

    ov = overview(
        here.s,
        T0,
        peers={},
        name="n",
        addresses=[],
        started=T0,
        writes=False,
        draining=False,
        http_connections=0,
    )
    assert "cluster" not in ov  # a single server: no cluster table
    assert 'id="cluster"' not in render_fragment(ov)
    ov["cluster"] = cl
    html = render_fragment(ov)
    assert 'id="cluster"' in html and 'data-node="b"' in html and "tcp://b:5000" in html

    snap = snapshot(
        here.s,
        T0,
        name="n",
        parser="h11",
        started=T0,
        ready=True,
        http_connections=0,
        cluster=view.metrics(),
    )
    text = render(snap).decode()
    assert 'periodic_cluster_nodes{node="a"} 2.0' in text
    assert 'periodic_cluster_partitions_held{node="a"} 3.0' in text
    assert 'periodic_cluster_partitions{node="a"} 8.0' in text
    # this node's own figures, labelled (not the cluster's sum)
    assert 'periodic_func_jobs{func="f",node="a"} 1.0' in text
    plain = render(snap._replace(cluster=None)).decode()
    assert "node=" not in plain and "periodic_cluster_" not in plain


def test_summary_is_bounded_and_round_trips() -> None:
    here, _, node, view = _setup()
    for i in range(5):
        here.submit(f"f{i}".encode(), b"x", sched_at=int(T0) + i)
    raw = view.summary(T0)
    doc = json.loads(raw)
    assert doc["v"] == 1 and doc["parts"] == 3 and len(doc["funcs"]) == 5
    back = NodeSummary(**{**view.local(T0)._asdict(), "at": T0})
    from periodic_fast.server.cluster_view import _parse

    parsed = _parse("a", raw)
    assert parsed is not None
    assert parsed.funcs == back.funcs and parsed.at == T0


def test_config_changes_stored_elsewhere_are_adopted() -> None:
    """The heartbeat applies the stored config values that changed since it
    last read them, and never undoes a value set here and not stored yet."""
    from types import SimpleNamespace

    from periodic_fast.server.cluster_node import ClusterNode
    from periodic_fast.store.cluster import Coordinator

    h = Harness()
    store = SimpleNamespace(coordinator=Coordinator("a", partitions=4))
    node = ClusterNode("n", h.s, store)  # type: ignore[arg-type]
    stored = {"timeout": 600, "keepalive": 1200}

    def get(key: str) -> int:
        [p] = h.client().req(C.CONFIG_GET, key.encode())
        return int.from_bytes(p.payload, "big")

    node._adopt_configs(dict(stored))
    assert get("timeout") == 600
    assert h.s.set_config("timeout", 5)  # set here, its commit not read yet
    node._adopt_configs(dict(stored))
    assert get("timeout") == 5
    stored["timeout"] = 30  # another node's CONFIG_SET, stored
    stored["future-key"] = 1  # unknown here: ignored
    node._adopt_configs(dict(stored))
    assert get("timeout") == 30
    assert any("(cluster)" in e.message for e in h.s.stats.events)
    # adopted values are not written back (a late write could undo a newer
    # one): this node's store still has only what was set here
    assert h.store.load().config.get("timeout") == 5


# -- three real nodes ------------------------------------------------------------------


class HttpNode:
    """One ``periodicd --cluster`` process with HTTP on its port."""

    def __init__(
        self, uri: str, node_id: str, log: Path, publish: str | None = None
    ) -> None:
        """``publish``: a host the node listens on first (so publishes for
        the other nodes) besides 127.0.0.1, where the test talks to it."""
        self.id = node_id
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.url = f"http://127.0.0.1:{self.port}"
        hosts = [self.address]
        if publish is not None:
            hosts.insert(0, f"tcp://{publish}:{self.port}")
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [
            sys.executable,
            "-c",
            _CHILD,
            "--cluster",
            "--node-id",
            node_id,
            "--lease-time",
            str(LEASE),
            "-H",
            ",".join(hosts),
            "-p",
            uri,
            "--log",
            "info",
        ]
        self.log = log
        self._err = log.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stderr=self._err)  # noqa: S603

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:  # noqa: S310
            return bytes(r.read())

    def send(self, method: str, path: str, **form: str) -> tuple[int, Any]:
        """An HTTP write: (status, JSON body)."""
        body = urllib.parse.urlencode(form).encode() if form else None
        req = urllib.request.Request(self.url + path, body, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.get("/healthz")
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the node did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        self._err.close()


async def test_three_nodes_status_overview_metrics(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [HttpNode(uri, f"n{i}", tmp_path / f"n{i}.log") for i in range(3)]
    clients: list[Client] = []
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1", "n2"])
        await asyncio.sleep(LEASE / 2)  # routes: one more tick everywhere
        clients = [Client(n.address, timeout=2 * LEASE + 10) for n in nodes]
        for c in clients:
            await c.connect()
        # jobs of three funcs, all through n0 (forwarded to their owners)
        due = int(time.time()) + 3600
        want = {b"fa": 40, b"fb": 25, b"fc": 7}
        for func, count in want.items():
            acked = await asyncio.gather(
                *(
                    clients[0].submit_job(func, f"j{i}", b"w", due + i)
                    for i in range(count)
                )
            )
            assert all(acked)
        # each node holds only its share of them
        here = {s.func: s.jobs for s in (await _local_status(db, prefix, "n1"))}
        assert sum(here.values()) < sum(want.values())

        async def totals_everywhere() -> bool:
            for c in clients:
                got = {f.encode(): s.jobs for f, s in (await c.status()).items()}
                if got != {k.decode().encode(): v for k, v in want.items()}:
                    return False
            return True

        await _wait_for(totals_everywhere, 6 * LEASE, "the cluster totals in STATUS")
        for c in clients:
            st = await c.status()
            assert st["fa"].sched_at == due  # the earliest over every node

        # /api/overview: every node with its partitions, the totals
        ov = json.loads(nodes[1].get("/api/overview"))
        cl: dict[str, Any] = ov["cluster"]
        assert cl["node"] == "n1"
        assert [r["node"] for r in cl["nodes"]] == ["n1", "n0", "n2"]
        assert sum(r["parts"] for r in cl["nodes"]) == 256
        assert cl["totals"]["jobs"] == sum(want.values())
        assert {r["address"] for r in cl["nodes"]} == {n.address for n in nodes}
        assert ov["totals"]["scheduled"] < sum(want.values())  # its own share
        # the HTTP JSON status is the cluster's too
        funcs = json.loads(nodes[2].get("/api/funcs"))
        assert {f: v["total_job"] for f, v in funcs.items()} == {
            k.decode(): v for k, v in want.items()
        }
        page = nodes[2].get("/ui").decode()
        assert 'id="cluster"' in page and 'data-node="n0"' in page

        # /metrics: this node's figures with its node label, cluster gauges
        metrics = nodes[2].get("/metrics").decode()
        assert 'periodic_cluster_nodes{node="n2"} 3.0' in metrics
        held = [
            line
            for line in metrics.splitlines()
            if line.startswith("periodic_cluster_partitions_held{")
        ]
        assert held and 80 <= float(held[0].split()[-1]) <= 90
        assert 'periodic_func_jobs{func="fa",node="n2"}' in metrics

        # CONFIG_SET on one node: every node applies it within a heartbeat
        for value in (77, 91):
            assert await clients[1].config_set("timeout", value)

            async def applied(value: int = value) -> bool:
                got = [await c.config_get("timeout") for c in clients]
                return got == [value] * 3

            took = await _wait_for(applied, 4 * LEASE, "the config on every node")
            assert took < 2 * LEASE, took  # a heartbeat is LEASE / 3
    finally:
        for c in clients:
            await c.close()
        for n in nodes:
            n.stop()
        await db.close()


async def test_http_writes_through_any_node(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """HTTP submit and remove of jobs held elsewhere are forwarded to their
    owners (200 after the owner's commit); DELETE /FUNC drops on every node."""
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri
    from periodic_fast.worker import Worker

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [HttpNode(uri, f"n{i}", tmp_path / f"n{i}.log") for i in range(3)]
    worker: Worker | None = None
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1", "n2"])
        await asyncio.sleep(LEASE / 2)  # routes: one more tick everywhere

        async def count(func: str) -> int:
            n: int = await db.fetchval(
                f"SELECT count(*) FROM {prefix}jobs WHERE func = $1", func.encode()
            )
            return n

        due = str(int(time.time()) + 3600)
        names = [f"h{i}" for i in range(60)]
        for name in names:  # every submit through n0: two thirds forwarded
            code, body = await asyncio.to_thread(
                nodes[0].send, "POST", "/fh", name=name, sched_at=due, args="a"
            )
            assert (code, body) == (200, {"msg": "SUCCESS"}), (name, code, body)
        assert await count("fh") == 60  # committed before the 200
        owners = {
            r[0]
            for r in await db.fetch(
                f"SELECT p.owner FROM {prefix}jobs j JOIN {prefix}cluster_parts p"
                " ON p.part = j.part WHERE j.func = 'fh'::bytea"
            )
        }
        assert owners == {"n0", "n1", "n2"}
        for name in names[:20]:  # removes through n1
            code, body = await asyncio.to_thread(
                nodes[1].send, "POST", "/fh", name=name, act="remove"
            )
            assert code == 200, (name, code, body)
        assert await count("fh") == 40

        # a func with a worker (on n1) is not dropped (409), as on one server
        worker = Worker(nodes[1].address)
        await worker.add_func("fw", lambda job: b"ok")
        await worker.start(1)
        code, _ = await asyncio.to_thread(
            nodes[2].send, "POST", "/fw", name="x", sched_at=due
        )
        assert code == 200

        async def worker_seen() -> bool:
            funcs = json.loads(await asyncio.to_thread(nodes[2].get, "/api/funcs"))
            return bool(funcs.get("fw", {}).get("total_worker"))

        await _wait_for(worker_seen, 6 * LEASE, "n1's worker in n2's view")
        code, _ = await asyncio.to_thread(nodes[2].send, "DELETE", "/fw")
        assert code == 409
        assert await count("fw") == 1

        # DELETE /FUNC through n2: every node drops its share
        code, body = await asyncio.to_thread(nodes[2].send, "DELETE", "/fh")
        assert (code, body) == (200, {"msg": "SUCCESS"}), body
        assert await count("fh") == 0
        code, _ = await asyncio.to_thread(nodes[2].send, "DELETE", "/nothing")
        assert code == 404
    finally:
        if worker is not None:
            await worker.close()
        for n in nodes:
            n.stop()
        await db.close()


async def _local_status(db: Any, prefix: str, node: str) -> list[FuncStat]:
    """The jobs one node holds, by func (its partitions' rows)."""
    rows = await db.fetch(
        f"SELECT j.func, count(*) FROM {prefix}jobs j"
        f" JOIN {prefix}cluster_parts p ON p.part = j.part"
        " WHERE p.owner = $1 GROUP BY j.func",
        node,
    )
    return [FuncStat(r[0], 0, r[1], 0, 0, 0) for r in rows]
