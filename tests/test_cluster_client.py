"""Client-side failover (issue 18): :class:`ClientCluster` routes around a
down node and sends a request again when that is safe; the CLI uses the
first of several addresses that answers.

Unit tests against our in-process servers (independent, plus a fake server
that drops the connection on the first request), then a real three-node
``periodicd --cluster``: a node killed (kill -9) while a
``ClientCluster(cluster=True)`` submits through all three; every submission
is acknowledged and every job runs; the CLI given the dead node first works.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from test_cluster_nodes import (
    LEASE,
    SLOTS,
    Node,
    Recorder,
    _wait_balanced,
    _wait_for,
    pg,  # noqa: F401  # the fixture
)

from periodic_fast.client import Client
from periodic_fast.cluster import ClientCluster, KetamaRing, WorkerCluster
from periodic_fast.errors import ClientError, ConnectionLost, NotConnected
from periodic_fast.testing import free_port, running_server
from periodic_fast.worker import WorkerJob

pytestmark = pytest.mark.timeout(120)
ROOT = Path(__file__).resolve().parent.parent


def _name_owned_by(ring: KetamaRing, address: str, prefix: str = "j") -> str:
    return next(
        f"{prefix}{i}"
        for i in range(10_000)
        if ring.get_node(f"{prefix}{i}") == address
    )


def test_ring_failover_order() -> None:
    nodes = [f"tcp://10.0.0.{i}:5000" for i in range(5)]
    ring = KetamaRing(nodes)
    for i in range(200):
        order = ring.get_nodes(f"k{i}")
        assert order[0] == ring.get_node(f"k{i}")
        assert sorted(order) == sorted(nodes)
    # the next node of a name is the one a ring without its owner picks
    for i in range(200):
        first, second = ring.get_nodes(f"k{i}")[:2]
        rest = KetamaRing([n for n in nodes if n != first])
        assert rest.get_node(f"k{i}") == second


async def _dump_names(address: str) -> set[bytes]:
    async with Client(address) as c:
        return {j.name for j in await c.dump()}


async def test_a_down_server_is_skipped_with_failover() -> None:
    async with (
        running_server(unix=False) as s1,
        running_server(unix=False) as s2,
        running_server(unix=False) as s3,
    ):
        servers = {s.addresses[0]: s for s in (s1, s2, s3)}
        addrs = list(servers)
        ring = KetamaRing(addrs)
        victim = addrs[1]
        name = _name_owned_by(ring, victim)
        second = ring.get_nodes(name)[1]
        on = ClientCluster(addrs, failover=True, timeout=2, reconnect_delay=0.2)
        off = ClientCluster(addrs, timeout=1, reconnect_delay=0.2)
        await on.connect()
        await off.connect()
        try:
            assert await on.submit_job("f", name, b"before", int(time.time()) + 3600)
            assert name.encode() in await _dump_names(victim)
            await servers[victim].stop()
            # failover: the next node on the ring takes the name
            assert await on.submit_job("f", name, b"after", int(time.time()) + 3600)
            assert name.encode() in await _dump_names(second)
            assert await on.remove_job("f", name)
            assert name.encode() not in await _dump_names(second)
            # without failover (aio-periodic's behaviour) the request fails
            with pytest.raises(ClientError):
                await off.submit_job("f", name, b"x")
        finally:
            await on.close()
            await off.close()


async def test_connect_with_a_dead_address() -> None:
    async with running_server(unix=False) as s1:
        dead = f"tcp://127.0.0.1:{free_port()}"
        addrs = [dead, s1.addresses[0]]
        name = _name_owned_by(KetamaRing(addrs), dead)
        cc = ClientCluster(addrs, cluster=True, reconnect_delay=0.2)
        await cc.connect()  # one of two is enough
        try:
            assert await cc.submit_job("f", name, b"w", int(time.time()) + 3600)
            assert name.encode() in await _dump_names(s1.addresses[0])
            assert await cc.ping()
            assert (await cc.status())["f"].jobs == 1
        finally:
            await cc.close()
        with pytest.raises(NotConnected):
            await ClientCluster(addrs).connect()  # without failover: all needed
        with pytest.raises(NotConnected, match="no server reachable"):
            await ClientCluster([dead], failover=True).connect()


class _Dropper:
    """A fake server: accepts, reads the registration, and closes the
    connection as soon as a request arrives (a node dying mid-request)."""

    def __init__(self) -> None:
        self.requests = 0
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"

    async def _conn(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(4096)  # the registration frame
        data = await r.read(4096)
        if data:
            self.requests += 1
        w.transport.abort()

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


async def test_in_flight_requests_are_sent_again_when_safe() -> None:
    dropper = _Dropper()
    await dropper.start()
    try:
        async with running_server(unix=False) as s1:
            real = s1.addresses[0]
            addrs = [dropper.address, real]
            ring = KetamaRing(addrs)
            workers = WorkerCluster([real])

            @workers.func("echo")
            async def echo(job: WorkerJob) -> bytes:
                return job.workload + b"!"

            await workers.start(2)
            try:
                for cluster in (False, True):
                    cc = ClientCluster(
                        addrs, cluster=cluster, failover=True, reconnect_delay=30
                    )
                    await cc.connect()
                    await asyncio.sleep(0.05)  # the registration read alone
                    try:
                        name = _name_owned_by(ring, dropper.address, f"s{cluster}")
                        before = dropper.requests
                        # SUBMIT_JOB is an upsert: sent again to the next node
                        assert await cc.submit_job("f", name, b"w", 2**31)
                        assert dropper.requests == before + 1
                        assert name.encode() in await _dump_names(real)
                        # the dropper is reconnecting now: skipped up front
                        assert await cc.remove_job("f", name)
                        assert dropper.requests == before + 1
                    finally:
                        await cc.close()
                    cc = ClientCluster(
                        addrs, cluster=cluster, failover=True, reconnect_delay=30
                    )
                    await cc.connect()
                    await asyncio.sleep(0.05)
                    try:
                        name = _name_owned_by(ring, dropper.address, f"r{cluster}")
                        if cluster:  # the same job on any node: sent again
                            assert await cc.run_job("echo", name, b"x") == b"x!"
                        else:  # elsewhere it would be a second job: not resent
                            with pytest.raises(ConnectionLost):
                                await cc.run_job("echo", name, b"x")
                    finally:
                        await cc.close()
            finally:
                await workers.close()
    finally:
        await dropper.stop()


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``python -m periodic_fast ARGS`` (the event loop keeps serving)."""
    full = {k: v for k, v in os.environ.items() if k != "PERIODIC_PORT"}
    full.update(PYTHONPATH=str(ROOT), **(env or {}))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "periodic_fast",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=full,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_uses_the_first_address_that_answers() -> None:
    async with running_server(unix=False) as s1:
        live = s1.addresses[0]
        dead = f"tcp://127.0.0.1:{free_port()}"
        code, out, err = await _cli("-H", f"{dead},{live}", "submit", "f", "n1")
        assert code == 0, err
        assert b"n1" in await _dump_names(live)
        code, out, err = await _cli("-H", dead, "-H", live, "ping")
        assert code == 0, err
        assert f"pong from {live}" in out
        # $PERIODIC_PORT with several addresses
        code, out, err = await _cli(
            "remove", "f", "n1", env={"PERIODIC_PORT": f"{dead},{live}"}
        )
        assert code == 0, err
        assert b"n1" not in await _dump_names(live)
        # none answers: one line naming them, exit 1
        other = f"tcp://127.0.0.1:{free_port()}"
        code, out, err = await _cli("-H", f"{dead},{other}", "status")
        assert code == 1
        assert dead in err and other in err and len(err.strip().splitlines()) == 1


async def test_kill_9_while_a_client_cluster_submits(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"n{i}", tmp_path / f"n{i}.log") for i in range(3)]
    rec = Recorder()
    workers: WorkerCluster | None = None
    cc: ClientCluster | None = None
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1", "n2"])
        await asyncio.sleep(LEASE / 2)  # routes published everywhere
        addresses = [n.address for n in nodes]
        workers = WorkerCluster(addresses, reconnect_delay=0.2)
        await workers.add_func("f", rec.handler)
        await workers.start(SLOTS)
        cc = ClientCluster(
            addresses, cluster=True, timeout=2 * LEASE + 10, reconnect_delay=0.2
        )
        await cc.connect()
        victim = nodes[2]
        names = [f"c{i}" for i in range(400)]
        on_victim = [n for n in names if cc.ring.get_node(n) == victim.address]
        assert on_victim  # some requests' ring node is the one killed
        due = int(time.time()) + 2

        async def submit(name: str, delay: float) -> bool:
            await asyncio.sleep(delay)
            return await cc.submit_job(b"f", name, b"w", due)

        # spread over ~1 s; the kill lands in the middle
        pending = [
            asyncio.ensure_future(submit(n, i / 400)) for i, n in enumerate(names)
        ]
        await asyncio.sleep(0.4)
        victim.signal(signal.SIGKILL)
        victim.wait()
        answers = await asyncio.gather(*pending, return_exceptions=True)
        bad = [a for a in answers if a is not True]
        assert not bad, bad[:5]
        rec.acked.update(names)

        async def all_ran() -> bool:
            return all(rec.runs[name] for name in rec.acked)

        await _wait_for(all_ran, 30 + 3 * LEASE, "every acknowledged job to run")
        # the ring still sends some names to the dead node: they go elsewhere
        late = on_victim[:20]
        assert all(
            await asyncio.gather(
                *(cc.submit_job(b"f", f"late-{n}", b"w", 2**31) for n in late)
            )
        )
        # the CLI, given the dead node first, works through a live one
        code, out, err = await _cli(
            "-H",
            f"{victim.address},{nodes[0].address}",
            "submit",
            "f",
            "cli-1",
            "--later",
            "3600",
        )
        assert code == 0, err
        got = await db.fetchval(
            f"SELECT count(*) FROM {prefix}jobs WHERE name = 'cli-1'::bytea"
        )
        assert got == 1
    finally:
        if cc is not None:
            await cc.close()
        if workers is not None:
            await workers.close()
        for n in nodes:
            n.stop()
        await db.close()
