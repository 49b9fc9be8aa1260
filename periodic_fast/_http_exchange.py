"""One HTTP/1.1 request over a fresh connection, parsed by h11.

Both HTTP clients of the project use it: :class:`~periodic_fast.admin.
AdminClient` (the JSON API from Python) and a cluster node forwarding an API
request to another node (``server/cluster_admin``).  It opens a TCP or unix
connection to a Periodic address, sends ``Host``, ``Content-Length`` and
``Connection: close`` plus the caller's headers, and reads the whole answer
(at most ``max_answer`` bytes of body).  Layering: L4, asyncio and h11 only.
"""

from __future__ import annotations

import asyncio

import h11

from ._address import parse_address

__all__ = ["AnswerTooLarge", "http_exchange"]


class AnswerTooLarge(OSError):
    """The answer's body went past ``max_answer`` bytes."""

    def __init__(self, status: int) -> None:
        super().__init__("answer too large")
        self.status = status


async def http_exchange(
    address: str,
    method: str,
    target: str | bytes,
    headers: list[tuple[str, str]],
    body: bytes,
    max_answer: int,
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``method target`` with ``headers`` and ``body`` to the server at
    ``address``; its ``(status, headers, body)``.

    :raises OSError: the server cannot be reached or the connection failed
        (:class:`AnswerTooLarge` for an answer over ``max_answer`` bytes).
    """
    addr = parse_address(address)
    if addr.scheme == "unix":
        reader, writer = await asyncio.open_unix_connection(addr.host)
        host = "localhost"
    else:
        reader, writer = await asyncio.open_connection(addr.host, addr.port)
        host = f"[{addr.host}]" if ":" in addr.host else addr.host
        host = f"{host}:{addr.port}"
    try:
        conn = h11.Connection(h11.CLIENT)
        sent = [
            ("Host", host),
            ("Content-Length", str(len(body))),
            ("Connection", "close"),
            *headers,
        ]
        out = conn.send(h11.Request(method=method, target=target, headers=sent))
        out += conn.send(h11.Data(data=body)) if body else b""
        out += conn.send(h11.EndOfMessage())
        writer.write(out)
        await writer.drain()
        status = 0
        answer_headers: list[tuple[bytes, bytes]] = []
        answer = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await reader.read(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = list(event.headers)
            elif isinstance(event, h11.Data):
                answer += event.data
                if len(answer) > max_answer:
                    raise AnswerTooLarge(status)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return status, answer_headers, bytes(answer)
    finally:
        writer.close()
