"""Cluster mode with real processes (issue 18): three ``periodicd --cluster``
nodes on one throwaway PostgreSQL, each on its own port, workers connected
to every node (our :class:`~periodic_fast.cluster.WorkerCluster`).

One scenario, in steps: jobs submitted spread over the nodes' partitions;
``kill -9`` of a node (its partitions move within the lease plus a few
seconds and its due jobs run on the others); SIGTERM of another (the last
takes over at once, not after a lease); a node joining takes its share.
Every acknowledged job and every run is recorded: no acknowledged job is
lost, and a job runs twice only when it may have been running on a node
that went away (at most the worker slots of that node).

Interim rule (docs/cluster.md): a node refuses requests for partitions it
does not hold (NO_WORKER); this test's client tries the nodes in turn.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pg_fixture import fresh_prefix, require_postgres, shared_cluster

from periodic_fast.client import Client
from periodic_fast.cluster import WorkerCluster
from periodic_fast.worker import WorkerJob

LEASE = 2.0
SLOTS = 4  # grab slots per node per worker
ROOT = Path(__file__).resolve().parent.parent
_CHILD = "import sys; from periodic_fast.cli import periodicd_main; periodicd_main()"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One ``periodicd --cluster`` process."""

    def __init__(
        self, uri: str, node_id: str, log: Path, extra: Sequence[str] = ()
    ) -> None:
        self.id = node_id
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.log = log
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
            self.address,
            "-p",
            uri,
            "--no-http",
            "--log",
            "info",
            *extra,  # more periodicd options (e.g. the RSA transport)
        ]
        self._err = log.open("wb")
        self.proc = subprocess.Popen(argv, env=env, stderr=self._err)  # noqa: S603
        _RECENT_LOGS.append(log)
        del _RECENT_LOGS[:-4]

    def wait_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                assert self.proc.poll() is None, self.log.read_text()
                assert time.monotonic() < deadline, "the node did not start"
                time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._err.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


class Recorder:
    """Every acknowledged submission and every run, by job name."""

    def __init__(self) -> None:
        self.acked: set[str] = set()
        self.runs: Counter[str] = Counter()
        self.ran_on: dict[str, str] = {}

    async def handler(self, job: WorkerJob) -> bytes:
        self.runs[job.name] += 1
        self.ran_on[job.name] = job.worker.address
        await asyncio.sleep(0.005)
        return b"ok"


async def _submit(nodes: list[Node], rec: Recorder, names: list[str], at: int) -> None:
    """Submit each job to some node that holds its partition (interim: try
    the nodes in turn until one says SUCCESS)."""
    clients = [Client(n.address, timeout=5) for n in nodes]
    for c in clients:
        await c.connect()
    try:
        for name in names:
            deadline = time.monotonic() + 30
            order = random.sample(range(len(clients)), len(clients))
            while name not in rec.acked:
                for i in order:
                    try:
                        if await clients[i].submit_job(b"f", name, b"w", at):
                            rec.acked.add(name)
                            break
                    except Exception:  # a node going away: try the next
                        continue
                else:
                    assert time.monotonic() < deadline, f"nobody took {name}"
                    await asyncio.sleep(0.1)
    finally:
        for c in clients:
            await c.close()


async def _owners(conn: Any, prefix: str) -> Counter[str]:
    rows = await conn.fetch(
        f"SELECT owner FROM {prefix}cluster_parts WHERE lease_until > now()"
    )
    return Counter(r[0] for r in rows)


#: the logs of the last nodes started, shown when a wait times out
_RECENT_LOGS: list[Path] = []


def _log_tails(lines: int = 12) -> str:
    out = []
    for log in _RECENT_LOGS:
        try:
            tail = log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        out.append(f"--- {log.name} (last {lines} lines)\n" + "\n".join(tail))
    return "\n".join(out)


async def _wait_for(pred: Any, timeout: float, what: str) -> float:
    """Poll the async predicate; return the seconds it took (a timeout shows
    the last lines of the recent nodes' logs)."""
    start = time.monotonic()
    while not await pred():
        if time.monotonic() - start >= timeout:
            pytest.fail(f"timed out waiting for {what}\n{_log_tails()}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def _wait_balanced(db: Any, prefix: str, ids: list[str]) -> float:
    """Wait until exactly the nodes ``ids`` hold every partition (live
    leases) between them; return the seconds it took."""

    async def balanced() -> bool:
        owners = await _owners(db, prefix)
        return sorted(owners) == sorted(ids) and sum(owners.values()) == 256

    n = len(ids)
    what = (
        f"{'two' if n == 2 else 'three' if n == 3 else n} nodes sharing the partitions"
    )
    return await _wait_for(balanced, 10 * LEASE, what)


@pytest.fixture
def pg() -> tuple[str, str]:
    require_postgres()
    cluster = shared_cluster()
    prefix = fresh_prefix()
    sep = "&" if "?" in cluster.uri else "?"
    return f"{cluster.uri}{sep}prefix={prefix}", prefix


async def test_three_nodes_failover_handover_and_join(
    pg: tuple[str, str], tmp_path: Path
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"n{i}", tmp_path / f"n{i}.log") for i in range(3)]
    rec = Recorder()
    workers: WorkerCluster | None = None
    extra: list[WorkerCluster] = []
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1", "n2"])
        addresses = [n.address for n in nodes]
        workers = WorkerCluster(addresses, reconnect_delay=0.2)
        await workers.add_func("f", rec.handler)
        await workers.start(SLOTS)

        # 1. jobs spread over every node, due a few seconds from now
        due = int(time.time()) + 4
        first = [f"a{i}" for i in range(300)]
        await _submit(nodes, rec, first, due)
        spread = await db.fetch(
            f"SELECT p.owner, count(*) FROM {prefix}jobs j"
            f" JOIN {prefix}cluster_parts p ON p.part = j.part GROUP BY p.owner"
        )
        by_owner = {r[0]: r[1] for r in spread}
        assert sorted(by_owner) == ["n0", "n1", "n2"], by_owner
        assert min(by_owner.values()) > 40  # about a third each
        victim_jobs = {
            r[0].decode()
            for r in await db.fetch(
                f"SELECT j.name FROM {prefix}jobs j JOIN {prefix}cluster_parts p"
                " ON p.part = j.part WHERE p.owner = 'n0'"
            )
        }

        # 2. kill -9 of n0 before its jobs are due: the others take over
        killed_at = time.monotonic()
        nodes[0].signal(signal.SIGKILL)
        nodes[0].wait()

        async def n0_gone() -> bool:
            owners = await _owners(db, prefix)
            return "n0" not in owners and sum(owners.values()) == 256

        took = await _wait_for(n0_gone, LEASE + 10, "n0's partitions to move")
        assert took <= LEASE + 5

        async def all_ran() -> bool:
            return all(rec.runs[name] for name in rec.acked)

        await _wait_for(all_ran, 30, "every acknowledged job to run")
        moved = time.monotonic() - killed_at
        assert all(rec.runs[name] for name in victim_jobs)
        assert moved < max(due - time.time(), 0) + LEASE + 15
        print(f"\nfailover: partitions moved {took:.2f} s after kill -9")

        # 3. SIGTERM of n1: n2 takes over at once (no lease to wait for)
        second = [f"b{i}" for i in range(150)]
        await _submit(nodes[1:], rec, second, int(time.time()) + 3)
        nodes[1].signal(signal.SIGTERM)
        assert nodes[1].wait() == 0
        stopped = time.monotonic()

        async def n2_alone() -> bool:
            owners = await _owners(db, prefix)
            return owners == Counter({"n2": 256})

        handover = await _wait_for(n2_alone, LEASE + 10, "n2 to take everything")
        assert handover < LEASE, f"handover took {handover:.2f} s, not at once"
        print(f"handover: n2 owned everything {handover:.2f} s after n1 exited")
        assert time.monotonic() - stopped < LEASE + 1
        await _wait_for(all_ran, 30, "the second batch to run")

        # 4. a node joins and takes its share; jobs run on both
        nodes.append(Node(uri, "n3", tmp_path / "n3.log"))
        nodes[3].wait_listening()
        w3 = WorkerCluster([nodes[3].address], reconnect_delay=0.2)
        extra.append(w3)
        await w3.add_func("f", rec.handler)
        await w3.start(SLOTS)

        async def shared() -> bool:
            owners = await _owners(db, prefix)
            return owners == Counter({"n2": 128, "n3": 128})

        joined = await _wait_for(shared, 6 * LEASE, "n3 to take its share")
        print(f"join: n3 held its share {joined:.2f} s after it listened")
        third = [f"c{i}" for i in range(150)]
        await _submit(nodes[2:], rec, third, 0)
        await _wait_for(all_ran, 30, "the third batch to run")
        where = Counter(rec.ran_on[n] for n in third)
        assert set(where) == {nodes[2].address, nodes[3].address}, where

        # nothing acknowledged lost; every job done and deleted
        assert not [n for n in rec.acked if not rec.runs[n]]

        async def empty() -> bool:
            return await db.fetchval(f"SELECT count(*) FROM {prefix}jobs") == 0

        await _wait_for(empty, 15, "the jobs table to empty")
        # a second run only for jobs that may have been running on a node
        # that went away (the killed one, the stopped one)
        twice = [n for n, c in rec.runs.items() if c > 1]
        assert len(twice) <= 2 * SLOTS, twice
        assert set(rec.runs) == rec.acked
    finally:
        for w in [workers, *extra]:
            if w is not None:
                await w.close()
        for n in nodes:
            n.stop()
        await db.close()


def test_cluster_needs_a_postgres_store(capsys: pytest.CaptureFixture[str]) -> None:
    from periodic_fast.cli import periodicd_main_args

    code = periodicd_main_args(["--cluster", "-p", ":memory:", "-H", "tcp://:0"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--cluster" in err and "PostgreSQL" in err, err
