"""The worker tools with several addresses (issue 18): one process serves its
func on every server (a node of a ``--cluster``, or independent servers) and
``--thread N`` bounds the jobs it runs at once over all of them.  Real
``python -m periodic_fast`` processes on 127.0.0.1, two plain servers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from exec_helpers import (
    Script,
    env,
    periodic,
    spawn_periodic,
    status_json,
    wait_for,
    workers,
)
from test_cluster_nodes import (
    LEASE,
    Node,
    _owners,
    _wait_for,
    pg,  # noqa: F401  # the fixture
)

from periodic_fast.client import Client
from periodic_fast.cluster import WorkerCluster
from periodic_fast.testing import ServerProcess, free_port, running_server
from periodic_fast.worker import WorkerJob

pytestmark = pytest.mark.timeout(180)

# a job appends "<name> start <t>" and "<name> end <t>" to the log file
JOB = """#!/bin/sh
echo "$1 start $(date +%s.%N)" >> {log}
sleep {secs}
echo "$1 end $(date +%s.%N)" >> {log}
echo "ran $1"
"""


@pytest.fixture(scope="module")
def two() -> Iterator[tuple[str, str]]:
    with ServerProcess() as a, ServerProcess() as b:
        yield a.address, b.address


def _script(tmp_path: Path, secs: float) -> tuple[Path, Path]:
    log = tmp_path / "jobs.log"
    log.touch()
    script = tmp_path / "job.sh"
    script.write_text(JOB.format(log=log, secs=secs))
    script.chmod(0o755)
    return script, log


def _worker(
    *args: str, hosts: tuple[str, ...] = (), port_env: str | None = None
) -> subprocess.Popen[bytes]:
    opts = [x for h in hosts for x in ("-H", h)]
    return subprocess.Popen(
        [sys.executable, "-m", "periodic_fast", *opts, "run", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env(port_env),
    )


def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    proc.terminate()
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err.decode(errors="replace")


def _intervals(log: Path) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for line in log.read_text().splitlines():
        name, _, t = line.split()
        out.setdefault(name, []).append(float(t))
    return out


def _submit(address: str, func: str, *names: str) -> None:
    for name in names:
        r = periodic("submit", func, name, address=address)
        assert r.returncode == 0, r.stderr


def _done(log: Path, n: int) -> bool:
    return sum(len(v) == 2 for v in _intervals(log).values()) >= n


def test_one_worker_runs_both_servers_one_at_a_time(
    two: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two
    script, log = _script(tmp_path, 0.3)
    # jobs waiting on both servers before the worker comes: both offer at once
    _submit(a, "wk1", "a1", "a2", "a3")
    _submit(b, "wk1", "b1", "b2", "b3")
    w = _worker("-f", "wk1", "--exec", str(script), "--thread", "1", hosts=(a, b))
    try:
        wait_for(lambda: _done(log, 6), timeout=60)
    finally:
        rc, err = _stop(w)
    assert rc == 0, err
    assert "on 2 servers" in err and f"Connected to {b}" in err, err
    spans = sorted(_intervals(log).values())
    assert len(spans) == 6
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, f"two jobs at once with --thread 1: {spans}"
    for addr in (a, b):  # every job done and gone
        assert status_json(addr).get("wk1", {}).get("jobs", 0) == 0


def test_thread_n_is_shared_and_drain_covers_every_server(
    two: tuple[str, str], tmp_path: Path
) -> None:
    a, b = two
    script, log = _script(tmp_path, 2)
    w = _worker("-f", "wk2", "--exec", str(script), "--thread", "2", hosts=(a, b))
    runs = []
    try:
        wait_for(lambda: workers(a, "wk2") == 1 and workers(b, "wk2") == 1)
        # one job from each server runs at once: the two slots are shared
        runs = [
            spawn_periodic("run", "wk2", "ja", address=a),
            spawn_periodic("run", "wk2", "jb", address=b),
        ]
        wait_for(lambda: len(_intervals(log)) == 2, timeout=30)
        rc, err = _stop(w)  # SIGTERM while both run: both finish
        results = [r.communicate(timeout=30) for r in runs]
    finally:
        for r in runs:
            if r.poll() is None:
                r.kill()
        if w.poll() is None:
            _stop(w)
    assert rc == 0, err
    assert [out for out, _ in results] == [b"ran ja\n", b"ran jb\n"], results
    assert all(len(v) == 2 for v in _intervals(log).values())


def test_a_server_down_at_start_is_picked_up_later(tmp_path: Path) -> None:
    script, log = _script(tmp_path, 0)
    later = f"tcp://127.0.0.1:{free_port()}"
    with ServerProcess() as up:
        # PERIODIC_PORT with two addresses, the second one not listening yet
        w = _worker(
            "-f", "wk3", "--exec", str(script), port_env=f"{up.address},{later}"
        )
        try:
            wait_for(lambda: workers(up.address, "wk3") == 1)
            _submit(up.address, "wk3", "u1")
            wait_for(lambda: _done(log, 1), timeout=30)
            with ServerProcess(address=later):
                wait_for(lambda: workers(later, "wk3") == 1, timeout=30)
                _submit(later, "wk3", "l1")
                wait_for(lambda: _done(log, 2), timeout=30)
            # that server gone again: the other one is still served
            _submit(up.address, "wk3", "u2")
            wait_for(lambda: _done(log, 3), timeout=30)
            rc, err = _stop(w)
        finally:
            if w.poll() is None:
                _stop(w)
    assert rc == 0, err
    assert f"{later} not reachable" in err and f"Connected to {later}" in err, err
    assert f"Lost {later}" in err, err
    assert set(_intervals(log)) == {"u1", "l1", "u2"}


@pytest.mark.parametrize("form", ["comma list", "repeated -H"])
def test_pipe_worker_serves_both(
    two: tuple[str, str], tmp_path: Path, form: str
) -> None:
    a, b = two
    hosts = ["-H", f"{a},{b}"] if form == "comma list" else ["-H", a, "-H", b]
    w = Script(
        "periodic_run_pipe_main",
        *hosts,
        "--thread",
        "1",
        "wk4",
        "sh",
        "-c",
        "echo ready; cat",
        logdir=tmp_path / "logs",
    )
    try:
        wait_for(lambda: workers(a, "wk4") == 1 and workers(b, "wk4") == 1)
        for addr, name in ((a, "pa"), (b, "pb")):
            r = periodic("run", "wk4", name, address=addr)
            assert r.returncode == 0, r.stderr
            assert r.stdout == f"{name}\n"
    finally:
        assert w.stop() == 0, w.err()
    assert "Pipe Worker started on 2 servers" in w.err()


async def test_worker_cluster_shared_slots_bound_the_process() -> None:
    # the library API under the tools: 3 slots for the process, 3 servers
    # with 6 jobs each waiting; never more than 3 handlers at once, all done
    async with (
        running_server(unix=False) as s1,
        running_server(unix=False) as s2,
        running_server(unix=False) as s3,
    ):
        addrs = [s.addresses[0] for s in (s1, s2, s3)]
        for i, a in enumerate(addrs):
            async with Client(a) as c:
                for j in range(6):
                    assert await c.submit_job("sh", f"{i}-{j}", b"", int(time.time()))
        now = peak = 0
        ran: list[str] = []
        cluster = WorkerCluster(addrs, shared_slots=True)

        @cluster.func("sh")
        async def handler(job: WorkerJob) -> bytes:
            nonlocal now, peak
            now += 1
            peak = max(peak, now)
            await asyncio.sleep(0.05)
            now -= 1
            ran.append(job.name)
            return b""

        await cluster.start(3)
        try:
            deadline = time.monotonic() + 30
            while len(ran) < 18 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            await cluster.shutdown()
        assert sorted(ran) == sorted(f"{i}-{j}" for i in range(3) for j in range(6))
        assert peak == 3  # shared: 3 at once, not 3 per server


async def test_one_exec_worker_runs_every_job_of_a_3_node_cluster(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"w{i}", tmp_path / f"w{i}.log") for i in range(3)]
    script, log = _script(tmp_path, 0)
    w: subprocess.Popen[bytes] | None = None
    try:
        for n in nodes:
            n.wait_listening()

        async def balanced() -> bool:
            owners = await _owners(db, prefix)
            return sorted(owners) == ["w0", "w1", "w2"]

        await _wait_for(balanced, 10 * LEASE, "three nodes sharing the partitions")
        hosts = tuple(n.address for n in nodes)
        w = _worker("-f", "cw", "--exec", str(script), "--thread", "2", hosts=hosts)
        names = [f"c{i}" for i in range(60)]
        async with Client(nodes[0].address, timeout=10) as c:  # forwarded
            for name in names:
                assert await c.submit_job("cw", name, b"", int(time.time()))

        async def all_ran() -> bool:
            return _done(log, len(names))

        await _wait_for(all_ran, 60, "every job run")
        rc, err = await asyncio.to_thread(_stop, w)
        assert rc == 0, err
        for n in nodes:
            assert f"Connected to {n.address}" in err, err
        runs = [ln.split()[0] for ln in log.read_text().splitlines() if " end " in ln]
        assert sorted(runs) == sorted(names)  # each job once, from every node
    finally:
        if w is not None and w.poll() is None:
            _stop(w)
        for n in nodes:
            n.stop()
        await db.close()
