"""Forwarding between nodes that run the RSA/AES transport (issue 18).

Three ``periodicd --cluster`` nodes with ``--rsa-private-path`` (one key
pair shared by the nodes, its public key listed among the allowed ones next
to the client's): a client and workers connect through the transport; every
request goes to one node, which forwards the others' jobs over links that
speak the same transport (``server/forward.link_keys``).  Before, such a
link was refused by its peer and the client got NO_WORKER after the retry
period.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_cluster_nodes import (
    LEASE,
    ROOT,
    SLOTS,
    Node,
    Recorder,
    _wait_balanced,
    _wait_for,
    pg,  # noqa: F401  # the fixture
)

pytest.importorskip("cryptography")

from periodic_fast.client import Client  # noqa: E402
from periodic_fast.cluster import WorkerCluster  # noqa: E402
from periodic_fast.rsa_transport import RSAConfig  # noqa: E402
from periodic_fast.worker import WorkerJob  # noqa: E402

pytestmark = pytest.mark.timeout(120)


def _keygen(where: Path, name: str) -> tuple[str, str]:
    """``periodic keygen NAME``: (private, public) key paths."""
    subprocess.run(  # noqa: S603
        [sys.executable, "-m", "periodic_fast", "keygen", name, "-s", "256"],
        cwd=where,
        check=True,
        capture_output=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    return str(where / f"{name}_private_key.pem"), str(where / f"{name}_public_key.pem")


async def test_rsa_nodes_forward_to_each_other(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    node_key, node_pub = _keygen(tmp_path, "cluster")
    client_key, client_pub = _keygen(tmp_path, "client")
    allowed = tmp_path / "allowed.pem"
    allowed.write_bytes(Path(node_pub).read_bytes() + Path(client_pub).read_bytes())
    extra = ["--rsa-private-path", node_key, "--rsa-public-path", str(allowed)]
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [Node(uri, f"n{i}", tmp_path / f"n{i}.log", extra) for i in range(3)]
    rec = Recorder()
    rsa = RSAConfig(client_key, node_pub)
    workers: WorkerCluster | None = None
    client: Client | None = None
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1", "n2"])

        async def published() -> bool:
            rows = await db.fetch(f"SELECT address FROM {prefix}cluster_nodes")
            return len(rows) == 3 and all(r[0] for r in rows)

        await _wait_for(published, 5 * LEASE, "the nodes' addresses")
        await asyncio.sleep(LEASE / 2)  # routes read by every node

        async def echo(job: WorkerJob) -> bytes:
            return b"ran " + job.name.encode()

        workers = WorkerCluster([n.address for n in nodes], rsa=rsa)
        await workers.add_func("f", rec.handler)
        await workers.add_func("r", echo)
        await workers.start(SLOTS)
        client = Client(nodes[0].address, rsa=rsa, timeout=2 * LEASE + 10)
        await client.connect()
        names = [f"s{i}" for i in range(90)]
        due = int(time.time()) + 1
        start = time.monotonic()
        acked = await asyncio.gather(
            *(client.submit_job(b"f", n, b"w", due) for n in names)
        )
        took = time.monotonic() - start
        assert all(acked), acked.count(False)
        # well under the retry period (a refused link would take 2 x lease + 1)
        assert took < 2 * LEASE + 1, took
        rec.acked.update(names)
        owners = {
            r[0]
            for r in await db.fetch(
                f"SELECT p.owner FROM {prefix}jobs j JOIN {prefix}cluster_parts p"
                " ON p.part = j.part"
            )
        }
        assert owners == {"n0", "n1", "n2"}  # two thirds went through links
        results = await asyncio.gather(
            *(client.run_job(b"r", f"run{i}", timeout=10) for i in range(9))
        )
        assert results == [f"ran run{i}".encode() for i in range(9)]

        async def all_ran() -> bool:
            return all(rec.runs[name] for name in rec.acked)

        await _wait_for(all_ran, 30, "every acknowledged job to run")
        for n in nodes:  # no link was refused on the way
            assert "RSA handshake" not in n.log.read_text()
    finally:
        if client is not None:
            await client.close()
        if workers is not None:
            await workers.close()
        for n in nodes:
            n.stop()
        await db.close()


def test_link_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The links' keys: the node's own pair, the strongest mode it allows; a
    warning when its public key is not among the allowed ones."""
    from periodic_fast._rsa_common import RSAMode, fingerprint
    from periodic_fast.server.forward import link_keys
    from periodic_fast.server.secure import SecureConfig

    node_key, node_pub = _keygen(tmp_path, "cluster")
    _, other_pub = _keygen(tmp_path, "other")
    secure = SecureConfig.load(node_key, node_pub, modes="Plain,RSA")
    keys = link_keys(secure)
    assert keys.mode == RSAMode.RSA and keys.generation == "v2"
    assert keys.server_fingerprint == fingerprint(secure.private_key.public_key())
    assert "not among the allowed" not in caplog.text
    link_keys(SecureConfig.load(node_key, other_pub))
    assert "not among the allowed public keys (--rsa-public-path)" in caplog.text
