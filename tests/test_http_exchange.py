"""The one HTTP exchange AdminClient and the cluster's API forwarding share:
headers sent, the answer read, and its size cap hit (a peer that answers
without end must not grow the caller's memory past the cap)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from periodic_fast._http_exchange import AnswerTooLarge, http_exchange
from periodic_fast.admin import AdminClient, AdminError

pytestmark = pytest.mark.timeout(30)


@asynccontextmanager
async def _peer(status: int, body: bytes) -> AsyncIterator[tuple[str, list[bytes]]]:
    """A one-answer HTTP peer; yields its address and the requests it read."""
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        seen.append(head + (await reader.readexactly(length) if length else b""))
        writer.write(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n"
            % (status, len(body))
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"tcp://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_request_sent_and_answer_read() -> None:
    async with _peer(201, b'{"ok": 1}') as (address, seen):
        status, headers, body = await http_exchange(
            address, "POST", "/api/x?y=1", [("X-Test", "t")], b"{}", 1024
        )
    assert (status, body) == (201, b'{"ok": 1}')
    assert (b"content-type", b"application/json") in headers
    request = seen[0]
    assert request.startswith(b"POST /api/x?y=1 HTTP/1.1\r\n")
    for line in (b"host: 127.0.0.1:", b"content-length: 2", b"connection: close"):
        assert line in request.lower()
    assert b"X-Test: t" in request and request.endswith(b"\r\n\r\n{}")


async def test_an_answer_over_the_cap_is_refused() -> None:
    async with _peer(200, b"x" * 5000) as (address, _):
        with pytest.raises(AnswerTooLarge) as info:
            await http_exchange(address, "GET", "/", [], b"", 4096)
    assert info.value.status == 200
    assert isinstance(info.value, OSError)  # callers treat it as a failed peer


async def test_admin_client_reports_the_cap_as_its_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("periodic_fast.admin._MAX_ANSWER", 100)
    async with _peer(200, b"[" + b"1," * 100 + b"1]") as (address, _):
        with pytest.raises(AdminError, match="answer too large"):
            await AdminClient(address).request("GET", "/api/funcs")


async def test_unreachable_peer_is_an_os_error() -> None:
    async with _peer(200, b"") as (address, _):
        pass  # closed: nothing listens there now
    with pytest.raises(OSError):
        await http_exchange(address, "GET", "/", [], b"", 10)
