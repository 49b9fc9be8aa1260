"""Forwarded HTTP API requests authenticated as a cluster peer (issue 18).

A node sends a job's dead-set, cron and job-browser request to the job's
owner over HTTP, marked with ``x-periodic-cluster: <the cluster's secret>``
(``store/cluster`` makes the secret once, in the ``cluster`` table).  The
owner takes such a request as a peer's: its Host check and its loopback
rule for HTTP writes do not apply (the node that got it applied them to its
client).  A wrong secret is refused (403, logged); no header: any client.

The nodes run on one machine but publish a non-loopback address of it, so
each sees the others' requests as coming from beyond the machine (no auth
file, no ``--http-writes``): before the secret, a write asked through a node
that does not own the job was refused 403 by its owner.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from test_cluster_core import nodes  # noqa: F401  # the fixture
from test_cluster_extras import Outcomes, _owned_by, _three_nodes
from test_cluster_nodes import LEASE, _wait_for
from test_cluster_nodes import pg as pg_nodes  # noqa: F401  # the fixture
from test_cluster_view import HttpNode

from periodic_fast.admin import AdminError
from periodic_fast.server.http_guard import PEER_HEADER, peer_claim
from periodic_fast.server.http_wire import Request

HEADER = PEER_HEADER.decode()


def _machine_ip() -> str | None:
    """A non-loopback IPv4 address of this machine, or None."""
    found: list[str] = []
    try:
        out = subprocess.run(
            ["hostname", "-I"],  # noqa: S607
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout
        found += out.split()
    except OSError:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:  # the source address of the default route (nothing is sent)
            s.connect(("192.0.2.1", 9))
            found.append(s.getsockname()[0])
        except OSError:
            pass
    for text in found:
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if ip.version == 4 and not ip.is_loopback and not ip.is_unspecified:
            return text
    return None


def _ask(
    url: str, method: str, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, bytes]:
    req = urllib.request.Request(  # noqa: S310
        url + path, body, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# -- the guard ------------------------------------------------------------------------


def _req(**headers: str) -> Request:
    pairs = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    return Request("GET", b"/api/overview", pairs, b"", True, "1.1")


def test_peer_claim() -> None:
    secret = b"s3cr3t-value"
    assert peer_claim(_req(), secret) is None  # no claim: any client
    assert peer_claim(_req(**{HEADER: "s3cr3t-value"}), secret) is True
    assert peer_claim(_req(**{HEADER: "s3cr3t-valuE"}), secret) is False
    assert peer_claim(_req(**{HEADER: ""}), secret) is False
    assert peer_claim(_req(**{HEADER: "1"}), secret) is None  # an earlier release
    assert peer_claim(_req(**{HEADER: "s3cr3t-value"}), None) is None  # no cluster


class _Hook:
    """A cluster node's HTTP hook, as far as the guard asks it."""

    secret = b"the-cluster-secret"

    def handle(self, ctx: Any, req: Request) -> None:
        return None


async def test_with_auth_a_peer_still_needs_the_clients_token(
    tmp_path: Path,
) -> None:
    from test_auth_http import AUTH

    from periodic_fast.testing import running_server

    (tmp_path / "auth").write_bytes(AUTH)
    async with running_server(auth_file=tmp_path / "auth", unix=False) as srv:
        srv.hub.http.cluster_admin = _Hook()  # type: ignore[union-attr,assignment]
        url = "http://" + srv.addresses[0][len("tcp://") :]
        form = b"name=j"
        peer = {
            "Host": "rebound.example",
            HEADER: _Hook.secret.decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        }

        def ask(method: str, path: str, token: str | None, **over: str) -> int:
            headers = {**peer, **over}
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            body = form if method == "POST" else None
            return _ask(url, method, path, body, headers)[0]

        assert await asyncio.to_thread(ask, "GET", "/api/overview", None) == 401
        assert await asyncio.to_thread(ask, "POST", "/secret", "web-tok") == 403
        assert await asyncio.to_thread(ask, "POST", "/email", "web-tok") == 200
        wrong = {HEADER: "nope"}
        assert await asyncio.to_thread(ask, "GET", "/", "ops-tok", **wrong) == 403
        plain = {HEADER: "1"}  # no claim: the Host check applies
        assert await asyncio.to_thread(ask, "GET", "/", "ops-tok", **plain) == 403
        right = {"Host": "127.0.0.1"}
        assert await asyncio.to_thread(ask, "GET", "/", "ops-tok", **right) == 200


# -- the coordinator ----------------------------------------------------------------


async def test_the_secret_is_made_once_and_kept(nodes: Any) -> None:  # noqa: F811
    a, conn = await nodes("a")
    b, _ = await nodes("b")
    assert a.secret and len(a.secret) >= 40 and b.secret == a.secret
    meta = f"{a.prefix}cluster"
    # set up again (a restart): the same secret
    await a.setup(conn)
    assert a.secret == b.secret
    # a cluster created before the secret existed gets one, once
    await conn.execute(f"ALTER TABLE {meta} DROP COLUMN secret")
    c, _ = await nodes("c")
    assert c.secret and c.secret != a.secret
    d, _ = await nodes("d")
    assert d.secret == c.secret
    assert await conn.fetchval(f"SELECT secret FROM {meta}") == c.secret


# -- three real nodes ---------------------------------------------------------------


async def test_forwarded_writes_pass_as_a_peers(
    pg_nodes: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    ip = _machine_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    uri, prefix = pg_nodes
    out = Outcomes()
    async with _three_nodes(uri, prefix, tmp_path, out, publish=ip) as (
        db,
        nodes3,
        admins,
    ):
        secret = await db.fetchval(f"SELECT secret FROM {prefix}cluster")
        assert secret
        addresses = await db.fetch(f"SELECT address FROM {prefix}cluster_nodes")
        assert {r[0].split(":")[1] for r in addresses} == {"//" + ip}

        # a cron schedule added through n0 for a job of n2 (n2 sees n0's
        # request come from a non-loopback address)
        cname = await _owned_by(db, prefix, "n2", b"fc", "c")
        await admins[0].add_cron("fc", cname, "0 0 1 1 *")
        listed = await admins[1].cron_schedules("fc")
        assert [s["name"] for s in listed] == [cname]
        # a job of n1 deleted through n0 in the job browser
        jname = await _owned_by(db, prefix, "n1", b"fp", "j")
        code, _ = await asyncio.to_thread(
            nodes3[0].send, "POST", "/fp", name=jname, sched_at="4000000000"
        )
        assert code == 200
        await admins[0].delete_job("fp", jname)
        with pytest.raises(AdminError) as gone:
            await admins[2].job("fp", jname)
        assert gone.value.status == 404
        # a dead job of n2 retried through n0
        await admins[0].set_retry_policy("fd", max_attempts=1, backoff=1, jitter=0)

        async def policy_everywhere() -> bool:
            for a in admins:
                funcs = (await a.retry_policies())["funcs"]
                if funcs.get("fd", {}).get("max_attempts") != 1:
                    return False
            return True

        await _wait_for(policy_everywhere, 4 * LEASE, "the policy on every node")
        dname = await _owned_by(db, prefix, "n2", b"fd", "d")
        out.fail.add(dname)
        code, _ = await asyncio.to_thread(
            nodes3[0].send, "POST", "/fd", name=dname, sched_at="0"
        )
        assert code == 200

        async def dead() -> bool:
            return (await admins[0].dead_jobs("fd"))["total"] == 1

        await _wait_for(dead, 20, "the dead job")
        out.fail.discard(dname)
        assert await admins[0].retry_dead("fd", dname) == (1, False)

        async def ran_again() -> bool:
            return out.ran(dname) == 2

        await _wait_for(ran_again, 20, "the retried dead job's run")

        # straight to n1's non-loopback address (the test is not loopback
        # there): a write without the header is any client's, refused; a
        # wrong secret is refused, naming it; the right one passes, with
        # a Host that names no server too
        n1 = f"http://{ip}:{nodes3[1].port}"
        kname = await _owned_by(db, prefix, "n1", b"fp", "k")
        code, _ = await asyncio.to_thread(
            nodes3[0].send, "POST", "/fp", name=kname, sched_at="4000000000"
        )
        assert code == 200
        body = f'{{"func": "fp", "name": "{kname}"}}'.encode()
        json_type = {"Content-Type": "application/json"}
        path = "/api/job/delete"
        code, _ = await asyncio.to_thread(_ask, n1, "POST", path, body, json_type)
        assert code == 403
        wrong = {**json_type, HEADER: secret[:-1] + ("A" if secret[-1] != "A" else "B")}
        code, answer = await asyncio.to_thread(_ask, n1, "POST", path, body, wrong)
        assert code == 403 and b"wrong cluster secret" in answer
        evil = {"Host": "rebound.example"}
        code, _ = await asyncio.to_thread(_ask, n1, "GET", "/api/overview", None, evil)
        assert code == 403  # the Host check
        peer = {**evil, **json_type, HEADER: secret}
        code, answer = await asyncio.to_thread(_ask, n1, "POST", path, body, peer)
        assert code == 200, answer
        with pytest.raises(AdminError) as gone:
            await admins[1].job("fp", kname)
        assert gone.value.status == 404
    # the secret survives a restart of the whole cluster, and a new node
    # takes it
    again = HttpNode(uri, "n3", tmp_path / "n3.log", ip)
    try:
        again.wait_listening()
        code, _ = await asyncio.to_thread(
            _ask,
            f"http://{ip}:{again.port}",
            "GET",
            "/api/overview",
            None,
            {"Host": "rebound.example", HEADER: secret},
        )
        assert code == 200
    finally:
        again.stop()
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    conn = await asyncpg.connect(**parse_postgres_uri(uri)[0])
    try:
        assert await conn.fetchval(f"SELECT secret FROM {prefix}cluster") == secret
    finally:
        await conn.close()
    logs = {p.name: p.read_text() for p in tmp_path.glob("n*.log")}
    assert len(logs) == 4
    assert "wrong cluster secret" in logs["n1.log"]
    assert [name for name, text in logs.items() if secret in text] == []
