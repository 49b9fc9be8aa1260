"""Cluster fault injection with real processes (issue 18).

Three ``periodicd --cluster`` nodes (lease 2 s) on one throwaway PostgreSQL,
clients submitting through every node at a steady rate and recording every
acknowledged job, workers connected to every node recording every run
(:mod:`cluster_load`).  One fault per test, injected mid-load:

* ``kill -9`` of a node;
* a node frozen (SIGSTOP) for longer than its lease, then resumed (SIGCONT);
* a node cut off from PostgreSQL: it reaches the database through a TCP
  proxy the test controls (:mod:`tcp_proxy`), which closes every connection
  and refuses new ones, then relays again;
* a node joining under load, then one leaving (SIGTERM).

After each, :func:`cluster_load.check`: no acknowledged job lost; no run
with two completions that took effect; repeated runs only of jobs that were
running on the faulty node (or whose partition was handed over at the
rebalance that follows a recovery or a join); the faulty node's last
JOB_ASSIGN (as the workers received it) within one lease of the fault.

Each scenario takes 14-20 s on a 2-core machine; the file about 70 s with
``pytest -q -m "not slow" tests/test_cluster_faults.py`` (the silent cut,
marked ``slow``, 18 s more without ``-m``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cluster_load import Fault, Load, Ownership, check
from pg_fixture import fresh_prefix, require_postgres, shared_cluster
from tcp_proxy import TcpProxy
from test_cluster_nodes import LEASE, Node, _owners

pytestmark = pytest.mark.timeout(180)

WARM = 2.5  # seconds of load before the fault


@dataclass
class Bed:
    """The nodes, the database and the load of one scenario."""

    db: Any
    prefix: str
    uri: str
    tmp: Path
    nodes: list[Node]
    load: Load
    own: Ownership
    partitions: int
    faults: list[Fault] = field(default_factory=list)

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    async def balanced(self, ids: list[str], timeout: float) -> float:
        """Wait until exactly ``ids`` own every partition (valid leases),
        each its fair share; return the seconds it took."""
        start = time.monotonic()
        share = self.partitions // len(ids)
        while True:
            owners = await _owners(self.db, self.prefix)
            if (
                sorted(owners) == sorted(ids)
                and sum(owners.values()) == self.partitions
                and min(owners.values()) >= share
            ):
                return time.monotonic() - start
            assert time.monotonic() - start < timeout, f"not balanced: {owners}"
            await asyncio.sleep(0.1)

    async def start_node(self, node_id: str, uri: str | None = None) -> Node:
        """Start a node without blocking the loop (the load keeps running)."""
        n = Node(uri or self.uri, node_id, self.tmp / f"{node_id}.log")
        self.nodes.append(n)
        deadline = time.monotonic() + 30
        while True:
            try:
                _r, w = await asyncio.open_connection("127.0.0.1", n.port)
                w.close()
                return n
            except OSError:
                assert n.proc.poll() is None, n.log.read_text()
                assert time.monotonic() < deadline, "the node did not start"
                await asyncio.sleep(0.05)

    async def freeze_in_transaction(self, node: Node, app: str) -> str:
        """SIGSTOP ``node`` just after one of its heartbeats, at a moment one
        of its sessions (application name ``app``) is idle inside a
        transaction holding ``cluster_parts`` locks (a fenced commit: they
        last milliseconds, so it is tried a few times), else right after
        the heartbeat.  After a heartbeat its dispatch deadline is as far as
        it gets, so the node's other timers fall due before its expiry timer
        (the order that exposed a stale dispatch on resume); inside the
        transaction its row locks stay held while it is frozen.  Returns
        which it was."""
        locked = (
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_locks l ON l.pid ="
            " a.pid JOIN pg_class c ON c.oid = l.relation WHERE a.application_name"
            f" = $1 AND c.relname = '{self.prefix}cluster_parts'"
            " AND a.state = 'idle in transaction'"
        )
        beat = f"SELECT alive_until FROM {self.prefix}cluster_nodes WHERE node = $1"
        for _ in range(10):
            last = await self.db.fetchval(beat, node.id)
            while await self.db.fetchval(beat, node.id) == last:
                await asyncio.sleep(0.005)
            deadline = time.monotonic() + 0.3
            while time.monotonic() < deadline:
                if await self.db.fetchval(locked, app):
                    node.signal(signal.SIGSTOP)
                    if await self.db.fetchval(locked, app):
                        return "inside a transaction holding partition rows"
                    node.signal(signal.SIGCONT)  # it had committed meanwhile
        node.signal(signal.SIGSTOP)
        return "just after a heartbeat"

    async def drain(self, timeout: float = 45.0) -> None:
        """Stop submitting; wait until every job ran to its end (the table
        is empty) and every acknowledged one ran its last run."""
        await self.load.stop()
        start = time.monotonic()
        while True:
            left = await self.db.fetchval(f"SELECT count(*) FROM {self.prefix}jobs")
            done = {r.name for r in self.load.runs if r.outcome == "done"}
            missing = [n for n in self.load.acked if n not in done]
            if left == 0 and not missing:
                return
            if time.monotonic() - start > timeout:
                # let check() name what is missing
                print(f"\ndrain timed out: {left} row(s), {len(missing)} not done")
                return
            await asyncio.sleep(0.2)

    async def verify(self, what: str, rebalance_after: float | None = None) -> None:
        await self.own.stop()
        problems, figures = check(
            self.load,
            self.faults,
            self.own,
            LEASE,
            self.partitions,
            rebalance_after=rebalance_after,
        )
        print(f"\n{what}: {figures}")
        dump = os.environ.get("PF_FAULTS_DUMP")
        if dump:  # the records, for a post-mortem
            Path(dump).write_text(
                json.dumps(
                    {
                        "runs": [vars(r) for r in self.load.runs],
                        "acked": self.load.acked,
                        "faults": [vars(f) for f in self.faults],
                        "snaps": [
                            (t0, t1, {p: list(v) for p, v in s.items()})
                            for t0, t1, s in self.own.snaps
                        ],
                        "nodes": {n.id: n.address for n in self.nodes},
                    }
                )
            )
        assert not problems, "\n".join(problems[:20]) + f"\n({len(problems)} in all)"


@pytest.fixture
def pg_parts() -> tuple[Any, str, str]:
    require_postgres()
    cluster = shared_cluster()
    prefix = fresh_prefix()
    sep = "&" if "?" in cluster.uri else "?"
    return cluster, prefix, f"{cluster.uri}{sep}prefix={prefix}"


@asynccontextmanager
async def bed(
    pg_parts: tuple[Any, str, str], tmp: Path, uris: dict[str, str] | None = None
) -> AsyncIterator[Bed]:
    """Three nodes n0..n2 (``uris`` overrides a node's store URI), balanced,
    workers on every node, the ownership poller and the load running."""
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    _cluster, prefix, uri = pg_parts
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    poll_db = await asyncpg.connect(**connect)
    uris = uris or {}
    nodes = [Node(uris.get(f"n{i}", uri), f"n{i}", tmp / f"n{i}.log") for i in range(3)]
    load = Load([n.address for n in nodes])
    b: Bed | None = None
    try:
        for n in nodes:
            n.wait_listening()
        parts = await db.fetchval(f"SELECT partitions FROM {prefix}cluster")
        b = Bed(db, prefix, uri, tmp, nodes, load, Ownership(poll_db, prefix), parts)
        await b.balanced(["n0", "n1", "n2"], 10 * LEASE)
        await asyncio.sleep(LEASE / 2)  # routes: one more heartbeat everywhere
        await load.add_workers(load.addresses)
        b.own.start()
        load.start()
        await asyncio.sleep(WARM)
        yield b
    finally:
        await load.close()
        if b is not None:
            await b.own.stop()
        for n in nodes if b is None else b.nodes:
            if n.proc.poll() is None:
                n.signal(signal.SIGCONT)  # a frozen node still dies by SIGKILL
            n.stop()
        await db.close()
        await poll_db.close()


async def test_kill_9_mid_load(pg_parts: tuple[Any, str, str], tmp_path: Path) -> None:
    async with bed(pg_parts, tmp_path) as b:
        victim = b.node("n2")
        b.faults.append(Fault("kill", victim.address, victim.id, time.monotonic()))
        victim.signal(signal.SIGKILL)  # submissions to it in flight fail
        victim.wait()
        b.load.live.remove(victim.address)  # clients stop choosing it
        took = await b.balanced(["n0", "n1"], LEASE + 10)
        print(f"\nkill -9: partitions moved {took:.2f} s after the kill")
        assert took <= LEASE + 5
        await asyncio.sleep(2.0)
        await b.drain()
        await b.verify("kill -9")


async def test_frozen_longer_than_lease(
    pg_parts: tuple[Any, str, str], tmp_path: Path
) -> None:
    cluster, prefix, _uri = pg_parts
    # libpq's key=value form: n1's sessions carry their own application_name
    tagged = (
        f"postgres://host={cluster.sockdir} port={cluster.port}"
        f" dbname={cluster.dbname} user=postgres application_name=pf-n1"
        f" prefix={prefix}"
    )
    async with bed(pg_parts, tmp_path, {"n1": tagged}) as b:
        frozen = b.node("n1")
        # the hard case: frozen inside a transaction on the partition rows
        # (a fenced commit or a heartbeat), so its row locks stay held
        inside = await b.freeze_in_transaction(frozen, "pf-n1")
        fault = Fault("freeze", frozen.address, frozen.id, time.monotonic())
        b.faults.append(fault)
        took = await b.balanced(["n0", "n2"], 2.5 * LEASE)
        print(f"\nfreeze: partitions moved {took:.2f} s after SIGSTOP ({inside})")
        await asyncio.sleep(max(0.0, fault.t + 2.5 * LEASE - time.monotonic()))
        frozen.signal(signal.SIGCONT)
        fault.recovered = time.monotonic()
        back = await b.balanced(["n0", "n1", "n2"], 10 * LEASE)
        print(f"freeze: balanced again {back:.2f} s after SIGCONT")
        await asyncio.sleep(1.0)
        await b.drain()
        await b.verify("freeze", rebalance_after=fault.recovered)
        assert frozen.proc.poll() is None  # it resumed and kept running


@pytest.mark.parametrize(
    "how", ["reset", pytest.param("silent", marks=pytest.mark.slow)]
)
async def test_cut_off_from_postgres(
    pg_parts: tuple[Any, str, str], tmp_path: Path, how: str
) -> None:
    """``reset``: every connection closed, new ones refused; ``silent``: a
    blackhole (connections stay open, nothing gets through)."""
    cluster, prefix, _uri = pg_parts
    proxy = TcpProxy(f"{cluster.sockdir}/.s.PGSQL.{cluster.port}").start()
    via = (
        f"postgresql://postgres@127.0.0.1:{proxy.port}/{cluster.dbname}?prefix={prefix}"
    )
    try:
        async with bed(pg_parts, tmp_path, {"n0": via}) as b:
            assert proxy.connections > 0  # n0 really talks through the proxy
            cut = b.node("n0")
            fault = Fault("cut", cut.address, cut.id, time.monotonic())
            b.faults.append(fault)
            if how == "reset":
                proxy.cut()
            else:
                proxy.blackhole()
            took = await b.balanced(["n1", "n2"], LEASE + 10)
            print(f"\ncut ({how}): partitions moved {took:.2f} s after the cut")
            await asyncio.sleep(max(0.0, fault.t + 3 * LEASE - time.monotonic()))
            proxy.restore()
            fault.recovered = time.monotonic()
            back = await b.balanced(["n0", "n1", "n2"], 10 * LEASE)
            print(f"cut: balanced again {back:.2f} s after the restore")
            await asyncio.sleep(1.0)
            await b.drain()
            await b.verify(f"cut ({how})", rebalance_after=fault.recovered)
            assert cut.proc.poll() is None  # it reconnected and kept running
    finally:
        proxy.close()


async def test_join_and_leave_under_load(
    pg_parts: tuple[Any, str, str], tmp_path: Path
) -> None:
    async with bed(pg_parts, tmp_path) as b:
        joined_at = time.monotonic()
        n3 = await b.start_node("n3")
        await b.load.add_workers([n3.address])
        b.load.live.append(n3.address)
        took = await b.balanced(["n0", "n1", "n2", "n3"], 10 * LEASE)
        print(f"\njoin: n3 held its share {took:.2f} s after it started")
        await asyncio.sleep(1.5)
        leaving = b.node("n0")
        b.load.live.remove(leaving.address)
        b.faults.append(Fault("leave", leaving.address, leaving.id, time.monotonic()))
        leaving.signal(signal.SIGTERM)
        assert await asyncio.to_thread(leaving.wait) == 0
        took = await b.balanced(["n1", "n2", "n3"], 10 * LEASE)
        print(f"leave: the others held everything {took:.2f} s after SIGTERM")
        assert took < LEASE + 2  # a handover, not a lease expiry
        await asyncio.sleep(1.5)
        await b.drain()
        await b.verify("join + leave", rebalance_after=joined_at)
        ran = Counter(r.node for r in b.load.runs if r.t > joined_at + took)
        assert ran[n3.address] > 0, ran  # the newcomer dispatches


def test_proxy_cut_and_restore() -> None:
    """The proxy itself: relays, cuts (open connections drop, new ones are
    closed at once), relays again."""
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    proxy = TcpProxy(("127.0.0.1", port)).start()
    try:
        c = socket.create_connection(("127.0.0.1", proxy.port), 5)
        s, _ = srv.accept()
        c.sendall(b"ping")
        assert s.recv(4) == b"ping"
        s.sendall(b"pong")
        assert c.recv(4) == b"pong"
        proxy.cut()
        assert _closed(c)  # dropped
        c2 = socket.create_connection(("127.0.0.1", proxy.port), 5)
        assert _closed(c2)  # refused: closed at once
        proxy.restore()
        c3 = socket.create_connection(("127.0.0.1", proxy.port), 5)
        s3, _ = srv.accept()
        c3.sendall(b"again")
        assert s3.recv(5) == b"again"
        for x in (c, c2, c3, s, s3):
            x.close()
    finally:
        proxy.close()
        srv.close()


def _closed(sock: socket.socket) -> bool:
    """True when the peer closed or reset ``sock`` (within 5 s)."""
    sock.settimeout(5)
    try:
        return sock.recv(4) == b""
    except ConnectionResetError:
        return True


async def test_heartbeat_and_fenced_commits_never_deadlock() -> None:
    """A node's heartbeat (renewing its partition rows) and its writer's
    fenced commits (locking some of them ``FOR SHARE``) run on two
    connections at once; both must lock the rows in one order, else
    PostgreSQL finds a deadlock and fails one of them after a second (found
    by bench/bench_cluster.py: a failed heartbeat, a refused WORK_DONE, a
    1.1 s p99 lateness with 3 nodes)."""
    import random

    import asyncpg

    from periodic_fast.store.cluster import Coordinator
    from periodic_fast.store.postgres import parse_postgres_uri

    require_postgres()
    connect, _ = parse_postgres_uri(shared_cluster().uri)
    from periodic_fast.store.postgres import _WRITER_PLANNER

    # the store's planner settings: the plans that deadlocked
    settings = dict(_WRITER_PLANNER)
    hb, writer = [
        await asyncpg.connect(**connect, server_settings=settings) for _ in range(2)
    ]
    coord = Coordinator("solo", prefix=fresh_prefix(), lease_time=5.0, margin=1.0)
    try:
        await coord.setup(hb)
        await coord.join(hb)
        await coord.tick(hb)
        assert len(coord.owned) == coord.partitions  # alone: owns them all
        rng = random.Random(18)
        stop = time.monotonic() + 3.0
        counts = Counter[str]()

        async def heartbeats() -> None:
            while time.monotonic() < stop:
                await coord.tick(hb)
                counts["ticks"] += 1

        async def commits() -> None:
            while time.monotonic() < stop:
                parts = rng.sample(sorted(coord.owned), 64)
                async with coord.fenced(writer, parts):
                    await writer.execute("SELECT pg_sleep(0.001)")
                counts["commits"] += 1

        await asyncio.gather(heartbeats(), commits())
        assert counts["ticks"] > 10 and counts["commits"] > 10, counts
    finally:
        await hb.close()
        await writer.close()
