"""The HTTP side with an auth file (docs/security.md): bearer tokens, the same
role and func rules as the binary side, and the Host header check against
DNS rebinding."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from periodic_fast.auth import parse_auth_file
from periodic_fast.server.app import Server, parse_address
from periodic_fast.testing import ServerProcess, running_server

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0
AUTH = b"""\
client  web     web-tok   email,thumb
worker  mailer  mail-tok  email
admin   ops     ops-tok   -
"""
BEARER = {
    "web": "Bearer web-tok",
    "mailer": "Bearer mail-tok",
    "ops": "Bearer ops-tok",
}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:200]!r})"


async def http(
    address: str,
    method: str,
    path: str,
    *,
    auth: str | None = None,
    host: str | None = None,
    form: dict[str, str] | None = None,
) -> Reply:
    """One HTTP/1.1 request (Connection: close) on a raw socket."""
    addr = parse_address(address)
    if addr.scheme == "tcp":
        r, w = await asyncio.open_connection(addr.host, addr.port)
        default_host = f"{addr.host}:{addr.port}"
    else:
        r, w = await asyncio.open_unix_connection(str(addr.host))
        default_host = "localhost"
    body = "&".join(f"{k}={v}" for k, v in (form or {}).items()).encode()
    head = [f"{method} {path} HTTP/1.1", f"Host: {host or default_host}"]
    head.append("Connection: close")
    if auth is not None:
        head.append(f"Authorization: {auth}")
    if form is not None:
        head.append("Content-Type: application/x-www-form-urlencoded")
        head.append(f"Content-Length: {len(body)}")
    w.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    try:
        data = await asyncio.wait_for(r.read(), WAIT)
    finally:
        w.close()
        with contextlib.suppress(ConnectionError, OSError):
            await w.wait_closed()
    raw_head, _, payload = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Reply(status, headers, payload)


@contextlib.asynccontextmanager
async def serve(
    tmp: Path, text: bytes | None = AUTH, **kw: Any
) -> AsyncIterator[Server]:
    path = None
    if text is not None:
        path = tmp / "auth"
        path.write_bytes(text)
    async with running_server(auth_file=path, http_writes=True, **kw) as srv:
        yield srv


def tcp(srv: Server) -> str:
    return srv.addresses[0]


async def test_bearer_token_required(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        r = await http(tcp(srv), "GET", "/")
        assert r.status == 401 and r.headers["www-authenticate"].startswith("Bearer")
        for bad in ("Bearer nope", "Basic web-tok", "Bearer", "web-tok"):
            assert (await http(tcp(srv), "GET", "/", auth=bad)).status == 401, bad
        for probe in ("/healthz", "/readyz"):  # no secrets: no token needed
            assert (await http(tcp(srv), "GET", probe)).status == 200
        r = await http(tcp(srv), "GET", "/", auth=BEARER["web"])
        assert r.status == 200 and r.json() == {}


async def test_roles_and_funcs(tmp_path: Path) -> None:
    async with serve(tmp_path) as srv:
        a = tcp(srv)
        ops, web = BEARER["ops"], BEARER["web"]
        for func in ("email", "thumb", "secret"):
            r = await http(a, "POST", f"/{func}", auth=ops, form={"name": "j"})
            assert r.status == 200, r
        # a client identity: its funcs only
        r = await http(a, "GET", "/", auth=web)
        assert sorted(r.json()) == ["email", "thumb"]
        r = await http(a, "GET", "/api/funcs", auth=web)
        assert sorted(r.json()) == ["email", "thumb"]
        assert (await http(a, "GET", "/email", auth=web)).status == 200
        assert (await http(a, "GET", "/api/funcs/email", auth=web)).status == 200
        assert (await http(a, "GET", "/secret", auth=web)).status == 403
        assert (await http(a, "GET", "/api/funcs/secret", auth=web)).status == 403
        form = {"name": "k"}
        assert (await http(a, "POST", "/email", auth=web, form=form)).status == 200
        assert (await http(a, "POST", "/secret", auth=web, form=form)).status == 403
        form = {"func": "secret", "name": "k"}
        assert (await http(a, "POST", "/", auth=web, form=form)).status == 403
        form = {"name": "k", "act": "remove"}
        assert (await http(a, "POST", "/email", auth=web, form=form)).status == 200
        assert (await http(a, "POST", "/secret", auth=web, form=form)).status == 403
        # dropping a func follows the func rights, like DROP_FUNC (issue 16.12)
        assert (await http(a, "DELETE", "/secret", auth=web)).status == 403
        # admin only: status page, overview, metrics
        for method, path in (
            ("GET", "/ui"),
            ("GET", "/api/overview"),
            ("GET", "/metrics"),
        ):
            r = await http(a, method, path, auth=web)
            assert r.status == 403, (method, path, r)
        # a worker identity acts as a client over HTTP: refused
        assert (await http(a, "GET", "/", auth=BEARER["mailer"])).status == 403
        # the admin sees and may do everything
        r = await http(a, "GET", "/", auth=ops)
        assert sorted(r.json()) == ["email", "secret", "thumb"]
        assert (await http(a, "GET", "/api/overview", auth=ops)).status == 200
        assert (await http(a, "DELETE", "/secret", auth=ops)).status == 200
        assert (await http(a, "DELETE", "/thumb", auth=web)).status == 200
        jobs = srv.scheduler.jobs()  # type: ignore[attr-defined]
        assert sorted((j.func, j.name) for j in jobs) == [(b"email", b"j")]


async def test_host_header_check(tmp_path: Path) -> None:
    options = {"allowed_hosts": ["periodic.internal"]}
    async with serve(tmp_path, http_options=options) as srv:
        a = tcp(srv)
        port = parse_address(a).port
        ops = BEARER["ops"]
        for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
            r = await http(a, "GET", "/", auth=ops, host=host)
            assert r.status == 403 and b"Host" in r.body, host
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            "localhost",
            f"[::1]:{port}",
            "10.1.2.3",
            f"periodic.internal:{port}",
            "PERIODIC.Internal.",
        ):
            r = await http(a, "GET", "/", auth=ops, host=host)
            assert r.status == 200, (host, r)
        # a unix socket cannot be reached by a browser: any Host is fine
        r = await http(srv.addresses[1], "GET", "/", auth=ops, host="evil.example")
        assert r.status == 200


async def test_without_auth_the_host_check_stays(tmp_path: Path) -> None:
    """No auth file: no token needed, but the Host check (DNS rebinding)
    still applies over TCP; ``host_check=False`` turns it off."""
    async with serve(tmp_path, None) as srv:
        r = await http(tcp(srv), "GET", "/", host="evil.example")
        assert r.status == 403 and b"Host" in r.body
        r = await http(tcp(srv), "GET", "/")
        assert r.status == 200 and r.json() == {}
        r = await http(tcp(srv), "POST", "/f", form={"name": "a"})
        assert r.status == 200
        # a unix socket is not checked
        r = await http(srv.addresses[1], "GET", "/", host="evil.example")
        assert r.status == 200
    async with serve(tmp_path, None, http_options={"host_check": False}) as srv:
        r = await http(tcp(srv), "GET", "/", host="anything.example")
        assert r.status == 200


async def test_reloaded_tokens_apply_to_http(tmp_path: Path) -> None:
    async with serve(tmp_path, auth_poll=0.05) as srv:
        a = tcp(srv)
        assert (await http(a, "GET", "/", auth=BEARER["web"])).status == 200
        path = tmp_path / "auth"
        before = path.stat().st_mtime_ns
        path.write_bytes(AUTH.replace(b"web-tok", b"web-tok-2"))
        os.utime(path, ns=(before + 10**9, before + 10**9))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while (await http(a, "GET", "/", auth=BEARER["web"])).status != 401:
            assert loop.time() < deadline, "old token still accepted"
            await asyncio.sleep(0.05)
        assert (await http(a, "GET", "/", auth="Bearer web-tok-2")).status == 200


def test_token_lookup() -> None:
    rules = parse_auth_file(AUTH + b"client twin web-tok email\n")
    assert rules.authenticate_token(b"ops-tok") is not None
    assert rules.authenticate_token(b"web-tok") is None  # shared: ambiguous
    assert rules.authenticate_token(b"nope") is None
    assert rules.authenticate_token(b"") is None


def test_periodicd_http_host_option(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_bytes(AUTH)
    args = ["--auth-file", str(auth), "--http-host", "jobs.example", "--log", "warning"]
    with ServerProcess(args) as proc:

        async def main() -> None:
            ops = BEARER["ops"]
            r = await http(proc.address, "GET", "/", auth=ops, host="jobs.example")
            assert r.status == 200, r
            r = await http(proc.address, "GET", "/", auth=ops, host="other.example")
            assert r.status == 403, r
            assert (await http(proc.address, "GET", "/")).status == 401

        asyncio.run(asyncio.wait_for(main(), 20))
