"""The HTTP fuzz target, shared by fuzz/fuzz_http.py and tests/test_fuzz.py.

:func:`check_http` plays raw bytes at the HTTP side of the server: the real
:class:`~periodic_fast.server.protocol.ServerProtocol` sniffs them as HTTP and
hands the transport to a real :class:`~periodic_fast.server.http_app.HttpApp`
(parsers, pipelining, timeouts, routes, the status page, /metrics, writes
into the scheduler), over the fake loop and transports of
:mod:`fuzz.harness`: no sockets, no real time, every input reproducible.

The input: one option byte (HTTP parser, writes allowed, auth on, TCP or
unix peer, a small body cap), then operations on up to four connections:
send the next bytes, half-close, drop, let time pass.  A finding is anything
logged at ERROR (a route or parser raising: the 500 "internal error"),
output that is not a sequence of well-formed HTTP/1.1 responses, a 500
answer, a connection still open once every timeout has passed, a connection
the HTTP side keeps after it closed, or a fresh client that gets no 200 to
``GET /healthz`` and ``GET /api/funcs`` afterwards.
"""

from __future__ import annotations

import re
from typing import Any

from fuzz.harness import FakeTransport, ServerHarness, _Reader
from periodic_fast.auth import parse_auth_file
from periodic_fast.server.http_app import HttpApp
from periodic_fast.server.protocol import ServerProtocol

__all__ = ["HttpHarness", "check_http", "decode_http_ops", "seed_http_inputs"]

PARSERS = ("auto", "h11", "httptools", "auto")
AUTH = b"admin root adm-tok *\nclient web cli-tok f\nworker w w-tok f\n"
MAX_CONNS = 4
MAX_OPS = 48
#: longer than the read (10 s), idle (30 s) and write (30 s) timeouts
ALL_TIMEOUTS = 120.0

_STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) [\x20-\x7e]*\r\n")
_HEADER = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+: [\x20-\x7e\t]*")


class _Transport(FakeTransport):
    """A fake transport that holds input back while reading is paused, as a
    real one does, and may claim a TCP peer (so the Host check runs)."""

    def __init__(self, harness: ServerHarness, name: str, tcp: bool) -> None:
        super().__init__(harness.loop, name)
        self.tcp = tcp
        self.pending = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername" and self.tcp:
            return ("127.0.0.1", 40000)
        if name == "sockname" and self.tcp:
            return ("127.0.0.1", 7000)
        return super().get_extra_info(name, default)


class HttpConn:
    """One connection that starts binary and is sniffed as HTTP."""

    def __init__(self, harness: HttpHarness, name: str) -> None:
        self.name = name
        self.transport = _Transport(harness, name, harness.tcp)
        self.transport.protocol = proto = ServerProtocol(harness.hub)
        proto.connection_made(self.transport)  # type: ignore[arg-type]
        self.received = bytearray()

    def take_output(self) -> None:
        out = self.transport.out
        if out:
            self.received += out
            out.clear()


class HttpHarness(ServerHarness):
    """:class:`ServerHarness` with the HTTP side attached to its hub."""

    def __init__(self, options: int = 0) -> None:
        super().__init__()
        self.tcp = bool(options & 16)
        if options & 8:
            self.scheduler.set_auth(parse_auth_file(AUTH), self.now)
        self.app = HttpApp(
            self.scheduler,
            self.hub,
            addresses=lambda: ["tcp://127.0.0.1:7000"],
            clock=lambda: self.now,
            mono_clock=lambda: self.now,
            writes=bool(options & 4),
            parser=PARSERS[options & 3],
            max_body=64 if options & 32 else 1 << 20,
        )
        self.hub.http = self.app
        self.http_conns: list[HttpConn] = []

    def open_http(self) -> HttpConn:
        self._n += 1
        c = HttpConn(self, f"fuzz-http-{self._n}")
        self.http_conns.append(c)
        self.loop.run_ready()
        return c

    def send(self, c: HttpConn, data: bytes) -> None:
        t = c.transport
        t.pending += data
        self._pump(c)

    def _pump(self, c: HttpConn) -> None:
        """Deliver held input while the protocol reads (bounded)."""
        t = c.transport
        for _ in range(64):
            if t.closing or t.paused or not t.pending:
                break
            data = bytes(t.pending[:4096])
            del t.pending[:4096]
            t.protocol.data_received(data)  # type: ignore[union-attr]
            self.loop.run_ready()
        c.take_output()

    def eof(self, c: HttpConn) -> None:
        t = c.transport
        if not t.closing and not t.pending:
            proto = t.protocol
            keep = proto.eof_received()  # type: ignore[union-attr]
            if not keep and not t.closing:
                t.close()  # asyncio closes the transport when it returns falsy
        self.loop.run_ready()
        c.take_output()

    def drop(self, c: HttpConn) -> None:
        t = c.transport
        if not t.closing:
            t.closing = True
            t.protocol.connection_lost(None)  # type: ignore[union-attr]
        self.loop.run_ready()

    def wait(self, seconds: float) -> None:
        self.advance(seconds)
        for c in self.http_conns:
            self._pump(c)


def decode_http_ops(data: bytes) -> tuple[int, list[tuple[Any, ...]]]:
    """(options, script): ``("send", conn, bytes)``, ``("eof", conn)``,
    ``("drop", conn)``, ``("wait", seconds)``.  An op byte's low two bits
    pick the kind and the next two the connection; a send's length is the
    next byte (255: all the rest)."""
    r = _Reader(data)
    options = r.u8()
    ops: list[tuple[Any, ...]] = []
    while r.left() and len(ops) < MAX_OPS:
        op = r.u8()
        kind, conn = op & 3, (op >> 2) & 3
        if kind == 0:
            n = r.u8()
            ops.append(("send", conn, r.take(r.left() if n == 255 else n)))
        elif kind == 1:
            ops.append(("eof", conn))
        elif kind == 2:
            ops.append(("drop", conn))
        else:
            ops.append(("wait", (op >> 4) * 0.75))
    return options, ops


def parse_responses(data: bytes) -> list[int]:
    """The status codes of ``data``, which must be whole HTTP/1.1 responses
    (a HEAD answer's body may be absent), else AssertionError."""
    codes: list[int] = []
    pos = 0
    while pos < len(data):
        m = _STATUS_LINE.match(data, pos)
        assert m, f"not a status line at {pos}: {data[pos : pos + 80]!r}"
        end = data.find(b"\r\n\r\n", m.start())
        assert end >= 0, f"unterminated head: {data[pos : pos + 200]!r}"
        length = 0
        for line in data[m.end() : end].split(b"\r\n") if end > m.end() else []:
            assert _HEADER.fullmatch(line), f"bad header line {line!r}"
            name, _, value = line.partition(b": ")
            if name.lower() == b"content-length":
                length = int(value)
            assert name.lower() != b"transfer-encoding", line
        codes.append(int(m.group(1)))
        pos = end + 4
        if length and pos < len(data) and not _STATUS_LINE.match(data, pos):
            pos += length  # (no body: a HEAD answer)
            assert pos <= len(data), f"body cut short: {data[-200:]!r}"
    return codes


def check_http(data: bytes) -> None:
    """Play ``decode_http_ops(data)`` at a fresh server's HTTP side; assert it
    survived and released everything."""
    options, ops = decode_http_ops(data)
    with HttpHarness(options) as h:
        conns: list[HttpConn] = []
        for op in ops:
            if op[0] == "wait":
                h.wait(op[1])
                continue
            while len(conns) <= op[1] and len(conns) < MAX_CONNS:
                conns.append(h.open_http())
            c = conns[op[1] % len(conns)]
            if op[0] == "send":
                h.send(c, op[2])
            elif op[0] == "eof":
                h.eof(c)
            else:
                h.drop(c)
        h.wait(ALL_TIMEOUTS)  # read, idle and write timeouts all pass
        for c in conns:
            c.take_output()
            codes = parse_responses(bytes(c.received))
            assert 500 not in codes, (codes, c.received[-300:])
            assert c.transport.closing, f"{c.name} still open after every timeout"
        assert not h.app.connections, "closed HTTP connections are still held"
        assert not h.errors(), h.errors()
        # a fresh client is served: a health probe, then the funcs' status
        # (the scheduler after whatever the script wrote into it)
        probe = h.open_http()
        token = b"Authorization: Bearer adm-tok\r\n" if h.scheduler.auth else b""
        h.send(probe, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        h.send(probe, b"GET /api/funcs HTTP/1.1\r\nHost: 127.0.0.1\r\n" + token)
        h.send(probe, b"\r\n")
        codes = parse_responses(bytes(probe.received))
        assert codes == [200, 200], (codes, probe.received[-300:])
        assert not h.errors(), h.errors()


# -- seeds ---------------------------------------------------------------------


def _send(conn: int, data: bytes) -> bytes:
    """Ops that send ``data`` on ``conn`` (in pieces of at most 254 bytes)."""
    out = bytearray()
    for i in range(0, len(data), 254):
        piece = data[i : i + 254]
        out += bytes([conn << 2, len(piece)]) + piece
    return bytes(out)


H = b"Host: 127.0.0.1\r\n"
ADMIN = b"Authorization: Bearer adm-tok\r\n"
CLIENT = b"Authorization: Bearer cli-tok\r\n"
_REQUESTS = [
    b"GET / HTTP/1.1\r\n" + H + b"\r\n",
    b"GET / HTTP/1.1\r\n" + H + b"Accept: text/html\r\n" + ADMIN + b"\r\n",
    b"GET / HTTP/1.1\r\n" + H + b"Accept: text/html\r\n" + CLIENT + b"\r\n",
    b"GET /metrics HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /healthz HTTP/1.0\r\n\r\n",
    b"HEAD /readyz HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /api/overview HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
    b"GET /ui/fragment HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /api/funcs/f HTTP/1.1\r\n" + H + CLIENT + b"\r\n",
    b"POST /f HTTP/1.1\r\n" + H + b"Content-Length: 29\r\n\r\n"
    b'{"name":"a","workload":"x"}\r\n',
    b"POST /f HTTP/1.1\r\n" + H + ADMIN + b"Transfer-Encoding: chunked\r\n\r\n"
    b'5\r\n{"nam\r\n8\r\ne":"b"}\r\n0\r\n\r\n',
    b"POST /f HTTP/1.1\r\n" + H + b"Expect: 100-continue\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    b"DELETE /f/a HTTP/1.1\r\n" + H + CLIENT + b"\r\n",
    b"DELETE /f HTTP/1.1\r\n" + H + ADMIN + b"\r\n",
    b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /x HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    # the job-feature API (issue 20): reads, JSON writes, bad bodies
    b"GET /api/jobs?func=f&state=all&prefix=a&limit=5 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /api/job?func=f&name=a HTTP/1.1\r\n" + H + ADMIN + b"\r\n",
    b"GET /api/dead?limit=2&cursor=Zg HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /api/cron HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /api/series?limit=3 HTTP/1.1\r\n" + H + b"\r\n",
    b"GET /api/retry HTTP/1.1\r\n" + H + CLIENT + b"\r\n",
    b"POST /api/retry HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"
    b"Content-Length: 35\r\n\r\n" + b'{"func":"f","max_attempts":2,"x":1}',
    b"POST /api/cron HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"
    b"Content-Length: 44\r\n\r\n" + b'{"func":"f","name":"c","cron":"*/5 * * * *"}',
    b"POST /api/job/run-now HTTP/1.1\r\n"
    + H
    + ADMIN
    + b"Content-Type: application/json\r\nContent-Length: 24\r\n\r\n"
    + b'{"func":"f","name":"a"}\n',
    b"POST /api/dead/retry HTTP/1.1\r\n" + H + b"Content-Type: application/json\r\n"
    b"Content-Length: 12\r\n\r\n" + b'{"all":true}',
    b"DELETE /api/cron?func=f&name=c HTTP/1.1\r\n" + H + b"\r\n",
    b"POST /api/nothing HTTP/1.1\r\n" + H + b"Content-Length: 6\r\n\r\nname=x",
]


def seed_http_inputs() -> list[bytes]:
    """Each request alone under a few options, pipelined, cut and finished
    later, left unfinished until the read timeout, and on two connections."""
    seeds: list[bytes] = []
    for i, req in enumerate(_REQUESTS):
        options = (0, 4 | 8, 1 | 4 | 16, 2 | 8 | 16)[i % 4]
        seeds.append(bytes([options]) + _send(0, req))
        seeds.append(bytes([options | 4]) + _send(0, req * 3) + b"\x01")  # + EOF
        half = len(req) // 2
        seeds.append(
            bytes([options]) + _send(0, req[:half]) + b"\x33" + _send(0, req[half:])
        )
    seeds.append(bytes([4]) + _send(0, _REQUESTS[9][:40]) + b"\xf3")  # 408
    seeds.append(bytes([4 | 32]) + _send(0, _REQUESTS[9]))  # body over the cap
    seeds.append(bytes([0]) + _send(0, _REQUESTS[0]) + _send(1, _REQUESTS[3]) + b"\x06")
    return seeds
