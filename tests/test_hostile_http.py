"""Issue 16 on the HTTP side: items 7 (the status page is admin-only with
auth on) and 9 (health probes are answered while the HTTP connection cap is
full).  Bounded: a handful of connections, no timing measured."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from periodic_fast.server.app import Server, parse_address

pytestmark = pytest.mark.timeout(60)

AUTH = b"""\
client  web     web-tok   email
admin   ops     ops-tok   -
"""


async def get(
    address: str, path: str, *, auth: str | None = None, accept: str | None = None
) -> tuple[int, bytes]:
    """One GET (Connection: close): (status, body)."""
    addr = parse_address(address)
    r, w = await asyncio.open_connection(addr.host, addr.port)
    head = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if auth is not None:
        head.append(f"Authorization: Bearer {auth}")
    if accept is not None:
        head.append(f"Accept: {accept}")
    w.write(("\r\n".join(head) + "\r\n\r\n").encode())
    try:
        data = await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()
        with contextlib.suppress(ConnectionError, OSError):
            await w.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data.partition(b"\r\n\r\n")[2]


# -- item 7: the status page is for admins ------------------------------------


@pytest.mark.parametrize(
    "path,accept",
    [
        ("/", "text/html"),
        ("/", "text/html,application/xhtml+xml,*/*;q=0.8"),
        ("/ui", None),
        ("/ui/fragment", None),
        ("/api/overview", None),
        ("/metrics", None),
    ],
)
async def test_status_page_is_admin_only(
    tmp_path: Path, path: str, accept: str | None
) -> None:
    auth = tmp_path / "auth"
    auth.write_bytes(AUTH)
    auth.chmod(0o600)
    async with Server(["tcp://127.0.0.1:0"], auth_file=auth) as srv:
        address = srv.addresses[0]
        status, body = await get(address, path, auth="web-tok", accept=accept)
        assert status == 403, body[:200]
        assert b"admin" in body
        status, body = await get(address, path, auth="ops-tok", accept=accept)
        assert status == 200, body[:200]
        # the client's own JSON status stays available to it
        status, body = await get(address, "/", auth="web-tok")
        assert status == 200 and body.startswith(b"{")


# -- item 9: probes get through a full HTTP connection cap ----------------------


async def test_health_probes_answered_while_the_cap_is_full() -> None:
    opts = {"max_connections": 4, "probe_connections": 2}
    async with Server(["tcp://127.0.0.1:0"], http_options=opts) as srv:
        address = srv.addresses[0]
        addr = parse_address(address)
        slow = []
        for _ in range(4 + 5):  # the cap, and more than the probe reserve
            r, w = await asyncio.open_connection(addr.host, addr.port)
            w.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finished
            await w.drain()
            slow.append(w)
        await asyncio.sleep(0.1)
        for path in ("/healthz", "/readyz", "/healthz"):
            status, body = await get(address, path)
            assert status == 200, body
        # anything else over the cap is refused
        status, body = await get(address, "/")
        assert status == 503, body
        http = srv.hub.http
        assert http is not None
        assert len(http.connections) <= 4 + 2  # type: ignore[attr-defined]
        for w in slow:
            w.close()
