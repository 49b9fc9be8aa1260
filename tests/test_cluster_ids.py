"""Duplicate node ids (issue 18): a second live process with a node's id is
refused, a node restarted after kill -9 with its id joins once the old row
expires, and a process whose id was taken over renews nothing.

Against PostgreSQL with coordinators in this process (the rules), then with
real ``periodicd --cluster`` processes (the refusal message and the exit
status, the restart).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from test_cluster_core import LEASE, Factory, nodes  # noqa: F401  # the fixture
from test_cluster_nodes import (
    Node,
    _owners,
    _wait_for,
    pg,  # noqa: F401  # the fixture
)

from periodic_fast.store.cluster import NodeIdInUseError

pytestmark = pytest.mark.timeout(120)


async def _beating(coord: Any, conn: Any) -> None:
    """Tick like a server's heartbeat (every lease / 3) until cancelled."""
    while True:
        await coord.tick(conn)
        await asyncio.sleep(coord.lease_time / 3)


async def test_a_live_duplicate_is_refused(nodes: Factory) -> None:  # noqa: F811
    a, a_conn = await nodes("a")
    beat = asyncio.ensure_future(_beating(a, a_conn))
    try:
        start = time.monotonic()
        with pytest.raises(NodeIdInUseError, match="--node-id"):
            await nodes("a")
        # refused as soon as a renewal is seen: about a third of a lease
        assert time.monotonic() - start < 2 * LEASE + 1
        # the live node is undisturbed
        assert (await a.tick(a_conn)).nodes == ["a"]
    finally:
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat


async def test_a_killed_nodes_id_is_taken_over(nodes: Factory) -> None:  # noqa: F811
    a, a_conn = await nodes("a")
    await a.tick(a_conn)
    assert len(a.owned) > 0
    # "kill -9": a stops ticking; its row is live for up to a lease
    start = time.monotonic()
    b, b_conn = await nodes("a")
    waited = time.monotonic() - start
    assert waited < 2 * LEASE + 1  # the old row expired, then b joined
    assert b.incarnation != a.incarnation
    # the old process, resumed, renews nothing: its id is b's now
    with pytest.raises(NodeIdInUseError, match="taken over"):
        await a.tick(a_conn)
    assert len(a.owned) > 0  # its leases are left to expire (and move)
    tick = await b.tick(b_conn)
    assert tick.nodes == ["a"]
    assert set(b.owned) == set(range(b.partitions))  # a's leases had expired


async def test_periodicd_with_a_live_nodes_id_refuses_to_start(
    pg: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    uri, prefix = pg
    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    first = Node(uri, "n0", tmp_path / "n0.log")
    dup: Node | None = None
    again: Node | None = None
    try:
        first.wait_listening()

        async def owns_all() -> bool:
            return dict(await _owners(db, prefix)) == {"n0": 256}

        await _wait_for(owns_all, 20, "n0 to own every partition")
        # 1. a second process with the same id: refused, exit non-zero
        dup = Node(uri, "n0", tmp_path / "dup.log")
        code = await asyncio.to_thread(dup.wait, 30)
        assert code != 0
        text = dup.log.read_text()
        assert "--node-id" in text and "in use by a live node" in text, text
        print("refused:", text.strip().splitlines()[-1])
        assert first.proc.poll() is None
        assert await owns_all()
        # 2. kill -9, restarted at once with the same id: joins (after the
        # old row expires) and takes every partition back
        first.signal(signal.SIGKILL)
        first.wait()
        start = time.monotonic()
        again = Node(uri, "n0", tmp_path / "again.log")
        await asyncio.to_thread(again.wait_listening, 30)
        await _wait_for(owns_all, 20, "the restarted n0 to own every partition")
        took = time.monotonic() - start
        row = await db.fetchrow(
            f"SELECT incarnation FROM {prefix}cluster_nodes WHERE node = 'n0'"
        )
        assert row is not None and row[0] and str(again.proc.pid) in row[0]
        print(f"restart with the same id: every partition back in {took:.1f} s")
    finally:
        for n in (first, dup, again):
            if n is not None:
                n.stop()
        await db.close()
