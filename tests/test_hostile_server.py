"""Issue 16: the server against hostile peers (items 1, 2, 3, 5, 7, 9).

Each test is an attack in bounded form (small sizes, a few connections) that
failed on the code before its fix.  No timing is measured: every check is a
count, a size or an object's life.

* item 1: a closed connection's objects (and the buffer of its partial frame
  or body) are freed by reference counting at once, with the cyclic GC off;
* item 2: an unregistered peer cannot make the server buffer more than a
  registration frame; the connection cap has a default;
* item 3: queued output is capped as it is queued, pipelined requests wait
  for the output of the earlier ones;
* item 5: peer bytes in log lines are truncated and rate-limited;
* item 7: the status page is admin-only when auth is on;
* item 9: health probes are answered while the HTTP connection cap is full.
"""

from __future__ import annotations

import asyncio
import gc
import struct
import weakref
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from periodic_fast.server.app import Server, parse_address

pytestmark = pytest.mark.timeout(60)

_HEADER = struct.Struct(">4sII")
MIB = 1024 * 1024


def frame(body: bytes) -> bytes:
    return _HEADER.pack(b"\x00REQ", len(body), zlib.crc32(body)) + body


@pytest.fixture
def no_gc() -> Iterator[None]:
    """The daemon's GC tuning makes cycles nearly immortal: turn it off."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _open(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    addr = parse_address(server.addresses[0])
    return await asyncio.open_connection(addr.host, addr.port)


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server(["tcp://127.0.0.1:0"], max_frame=4 * MIB) as srv:
        yield srv


# -- item 1: closed connections are released at once ---------------------------


async def _partial_binary(server: Server, *, register: bool) -> weakref.ref[Any]:
    reader, writer = await _open(server)
    if register:
        writer.write(frame(b"\x01"))
        await reader.readexactly(12 + 5)
    body = b"\x00\x00\x00\x01\x01" + b"x" * (3 * MIB)
    writer.write(frame(body)[: 2 * MIB])  # a partial frame: 2 MiB buffered
    await writer.drain()
    await _until(lambda: bool(server.hub.protocols))
    (proto,) = server.hub.protocols
    ref = weakref.ref(proto)
    await asyncio.sleep(0.05)
    del proto
    writer.close()
    await _until(lambda: not server.hub.protocols)
    await asyncio.sleep(0.02)
    return ref


@pytest.mark.parametrize("register", [False, True])
async def test_closed_binary_connection_is_freed_at_once(
    server: Server, no_gc: None, register: bool
) -> None:
    ref = await _partial_binary(server, register=register)
    assert ref() is None, gc.get_referrers(ref())


async def test_connection_closed_on_a_protocol_error_is_freed(
    server: Server, no_gc: None
) -> None:
    reader, writer = await _open(server)
    writer.write(frame(b"\x01") + b"x" * 1000)  # garbage after registration
    writer.write(_HEADER.pack(b"\x00REQ", 64 * MIB, 0))  # over max_frame
    await _until(lambda: bool(server.hub.protocols))
    ref = weakref.ref(next(iter(server.hub.protocols)))
    assert await reader.read() is not None
    writer.close()
    await _until(lambda: not server.hub.protocols)
    await asyncio.sleep(0.02)
    assert ref() is None


@pytest.mark.parametrize("parser", ["httptools", "h11"])
async def test_closed_http_connection_with_a_partial_body_is_freed(
    no_gc: None, parser: str
) -> None:
    if parser == "httptools":
        pytest.importorskip("httptools")
    async with Server(["tcp://127.0.0.1:0"], http_options={"parser": parser}) as server:
        assert server.hub.http is not None
        conns = server.hub.http.connections  # type: ignore[attr-defined]
        reader, writer = await _open(server)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 900000\r\n\r\n"
            + b"a" * 500_000
        )
        await writer.drain()
        await _until(lambda: bool(conns))
        conn = next(iter(conns))
        ref = weakref.ref(conn)
        parser_type = type(conn._parser)
        del conn
        await asyncio.sleep(0.05)
        writer.close()
        await _until(lambda: not conns)
        await asyncio.sleep(0.02)
        assert ref() is None
        # the parser (and the partial body it holds) is gone too
        assert not [o for o in gc.get_objects() if type(o) is parser_type]


async def test_closed_rsa_connection_is_freed(tmp_path: Any, no_gc: None) -> None:
    rsa = pytest.importorskip("cryptography.hazmat.primitives.asymmetric.rsa")
    from cryptography.hazmat.primitives import serialization as ser

    from periodic_fast.server.secure import SecureProtocol

    def write_key(name: str) -> str:
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        priv = tmp_path / f"{name}.pem"
        priv.write_bytes(
            key.private_bytes(
                ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
            )
        )
        pub = tmp_path / f"{name}_pub.pem"
        pub.write_bytes(
            key.public_key().public_bytes(
                ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return str(priv) if name == "server" else str(pub)

    async with Server(
        ["tcp://127.0.0.1:0"],
        rsa_private_path=write_key("server"),
        rsa_public_path=write_key("client"),
    ) as server:
        reader, writer = await _open(server)
        writer.write(b"\x01" * 100)  # a partial handshake block
        await writer.drain()
        await _until(lambda: bool(server.hub.protocols))
        ref = weakref.ref(next(iter(server.hub.protocols)))
        await asyncio.sleep(0.05)
        writer.close()
        await _until(lambda: not server.hub.protocols)
        await asyncio.sleep(0.02)
        assert ref() is None
        assert not [o for o in gc.get_objects() if type(o) is SecureProtocol]


# -- item 2: unregistered peers cannot park memory ------------------------------


async def test_large_registration_frame_refused_from_its_header(
    server: Server,
) -> None:
    reader, writer = await _open(server)
    # announces 1 MiB: refused from the header, the body is never awaited
    writer.write(_HEADER.pack(b"\x00REQ", MIB, 0) + b"\x03" + b"n" * 100)
    assert await asyncio.wait_for(reader.read(), 2.0) == b""
    writer.close()
    await _until(lambda: not server.hub.protocols)


async def test_registration_frame_limit_is_configurable() -> None:
    from periodic_fast.codec import encode_identity

    ident = encode_identity(b"n" * 3000, b"t" * 3000)  # 6 KB: over 4 KiB
    async with Server(["tcp://127.0.0.1:0"], max_registration=8192) as srv:
        reader, writer = await _open(srv)
        writer.write(frame(b"\x03" + ident))
        reply = await asyncio.wait_for(reader.readexactly(17), 2.0)
        assert reply[:4] == b"\x00RES"
        writer.close()
    with pytest.raises(ValueError, match="max_registration"):
        Server(max_registration=4)


async def test_connections_are_capped_by_default() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with Server(["tcp://127.0.0.1:0"]) as srv:
        cap = srv.hub.max_connections
        assert 0 < cap <= 10_000
        if soft != resource.RLIM_INFINITY:
            assert cap < soft
    async with Server(["tcp://127.0.0.1:0"], max_connections=0) as srv:
        assert srv.hub.max_connections == 0  # asked for: no limit


# -- item 3: output is capped as it is queued ------------------------------------


def req(msgid: int, command: int, *fields: Any) -> bytes:
    from periodic_fast.codec import encode_payload, encode_request

    return encode_request(msgid, command, encode_payload(command, *fields))


async def _client(
    server: Server, ctype: int = 1, rcvbuf: int = 0
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    import socket

    addr = parse_address(server.addresses[0])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # the server's output backs up at once
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (addr.host, addr.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(frame(bytes([ctype])))
    await reader.readexactly(17)
    return reader, writer


def _conn_of(server: Server, before: set[int]) -> Any:
    (cid,) = set(server.hub.connections) - before
    return server.hub.connections[cid]


async def test_fan_out_to_waiters_is_capped_per_send(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from periodic_fast.constants import Command as C

    async with Server(["tcp://127.0.0.1:0"], max_output=MIB) as server:
        wr, ww = await _client(server, 2)
        ww.write(req(1, C.CAN_DO, b"f"))
        cr, cw = await _client(server)
        cw.write(req(1, C.SUBMIT_JOB, (b"f", b"j", b"", 0, 0, 0)))
        await cr.readexactly(17)
        before = set(server.hub.connections)
        sr, sw = await _client(server, rcvbuf=4096)
        slow = _conn_of(server, before)
        sw.write(
            b"".join(
                req(i, C.RECV_DATA, (b"f", b"j", b"", 0, 0, 0)) for i in range(2, 42)
            )
        )
        await sr.readexactly(17 * 40)  # 40 SUCCESS: 40 waiters
        ww.write(req(2, C.WORK_DATA, b"f", b"j", b"d" * 100_000))  # 4 MB fan-out
        await _until(lambda: slow.conn_id is None)
        assert "over max-output" in caplog.text  # at the send, not a turn later
        # the largest write buffer it ever had stays near the cap
        assert await asyncio.wait_for(wr.readexactly(17), 5)  # worker served
        for w in (ww, cw, sw):
            w.close()


async def test_pipelined_dumps_wait_for_their_output() -> None:
    from periodic_fast.codec import Parser
    from periodic_fast.constants import Command as C

    async with Server(["tcp://127.0.0.1:0"]) as server:
        cr, cw = await _client(server)
        cw.write(
            b"".join(
                req(i + 1, C.SUBMIT_JOB, (b"d", b"%d" % i, b"a" * 500, 0, 0, 0))
                for i in range(1000)
            )
        )
        await cr.readexactly(17 * 1000)
        before = set(server.hub.connections)
        sr, sw = await _client(server, rcvbuf=4096)
        slow = _conn_of(server, before)
        sw.write(b"".join(req(i + 1, C.DUMP) for i in range(40)))  # 40 x ~0.5 MB
        await asyncio.sleep(0.5)
        # two or three DUMPs ran, the rest wait: not 20 MB in the buffer
        assert slow._transport.get_write_buffer_size() < 4 * MIB
        assert slow._stash
        # a reader gets every reply, in order
        parser = Parser(requests=False)
        got: list[int] = []
        while len(got) < 40:
            data = await asyncio.wait_for(sr.read(1 << 20), 5)
            assert data
            got += [p.msgid for p in parser.feed(data)]
        assert got == list(range(1, 41))
        cw.close()
        sw.close()


async def test_one_dump_larger_than_max_output_reaches_a_reader() -> None:
    """A DUMP is one DATA frame as large as the store: the cap on queued
    output lets one such reply through (the requests behind it wait), and a
    second pipelined DUMP still gets its reply once the first drained."""
    from periodic_fast.codec import Parser
    from periodic_fast.constants import Command as C

    async with Server(["tcp://127.0.0.1:0"], max_output=MIB) as server:
        cr, cw = await _client(server)
        cw.write(
            b"".join(
                req(i + 1, C.SUBMIT_JOB, (b"d", b"%d" % i, b"a" * 1000, 0, 0, 0))
                for i in range(3000)
            )
        )
        await cr.readexactly(17 * 3000)
        cw.write(req(1, C.DUMP) + req(2, C.DUMP) + req(3, C.PING))
        parser = Parser(requests=False)
        got: list[tuple[int, int]] = []
        while len(got) < 3:
            data = await asyncio.wait_for(cr.read(1 << 20), 5)
            assert data, "dropped for a reply it asked for"
            got += [(p.msgid, len(p.payload)) for p in parser.feed(data)]
        assert [m for m, _ in got] == [1, 2, 3]
        assert got[0][1] > 2 * MIB  # each reply alone is over max_output
        cw.close()


async def test_pipelined_http_requests_wait_for_their_response() -> None:
    from periodic_fast.job import Job

    async with Server(["tcp://127.0.0.1:0"]) as server:
        for i in range(400):
            server.scheduler.submit(Job(b"func-%04d" % i, b"j"), server._clock())
        assert server.hub.http is not None
        conns = server.hub.http.connections  # type: ignore[attr-defined]
        import socket

        addr = parse_address(server.addresses[0])
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (addr.host, addr.port))
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 300)
        await _until(lambda: bool(conns))
        await asyncio.sleep(0.5)
        (conn,) = conns
        # ~40 KB a response: 300 of them would be 12 MB; the high-water mark
        # is 1 MiB (set on the binary side), plus at most one response
        assert conn._transport.get_write_buffer_size() < 2 * MIB
        n = 0
        while n < 300:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            i = head.index(b"Content-Length: ") + 16
            await reader.readexactly(int(head[i : head.index(b"\r\n", i)]))
            n += 1
        writer.close()


# -- item 5: peer bytes in the log are bounded in size and rate --------------------


async def _refused_registrations(
    tmp_path: Any, names: list[bytes], caplog: pytest.LogCaptureFixture
) -> list[str]:
    import logging

    from periodic_fast.codec import encode_identity

    auth = tmp_path / "auth"
    auth.write_bytes(b"client web web-tok email\n")
    auth.chmod(0o600)
    caplog.set_level(logging.WARNING, logger="periodic_fast.server")
    async with Server(["tcp://127.0.0.1:0"], auth_file=auth) as srv:
        for name in names:
            reader, writer = await _open(srv)
            writer.write(frame(b"\x03" + encode_identity(name, b"bad")))
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "periodic_fast.server" and r.levelname == "WARNING"
    ]


async def test_refused_name_is_logged_clipped(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lines = await _refused_registrations(tmp_path, [b"\xff" * 3000], caplog)
    (line,) = [x for x in lines if "registration refused" in x]
    assert len(line) < 400, len(line)  # the repr of the name was 12,000 chars
    assert "chars)" in line  # and it says it was cut


async def test_refusals_in_a_loop_are_rate_limited(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    lines = await _refused_registrations(tmp_path, [b"n"] * 60, caplog)
    refused = [x for x in lines if "registration refused" in x]
    assert 1 <= len(refused) <= 30, len(refused)  # burst: 4 s of 5 lines/s


def test_throttle_reports_what_it_suppressed(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from periodic_fast.server.logbound import Throttle, peer_text

    now = [0.0]
    log = logging.getLogger("periodic_fast.test_throttle")
    caplog.set_level(logging.INFO, logger=log.name)
    t = Throttle(log, rate=1.0, burst=2, clock=lambda: now[0])
    for _ in range(10):
        t.info("kind", "line")
    now[0] += 1.0
    t.info("kind", "line")
    msgs = [r.getMessage() for r in caplog.records]
    assert msgs == ["line", "line", "suppressed 8 similar messages (kind)", "line"]
    assert peer_text(b"x" * 1000) == repr(b"x" * 64) + "...(+936)"


# -- item 1, process level: RSS comes back after the connections closed -----------


def test_server_rss_returns_after_partial_frames() -> None:
    """8 connections each leave 7 MiB of an 8 MiB frame, then close: the
    server's RSS is back near where it started (it stayed +56 MiB before)."""
    import socket
    import time

    from periodic_fast.testing import ServerProcess

    def rss(pid: int) -> float:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def ping(address: str) -> None:
        host, port = address[6:].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(frame(b"\x01") + frame(b"\x00\x00\x00\x01\x09"))
            got = b""
            while len(got) < 17 + 17:
                chunk = s.recv(64)
                assert chunk
                got += chunk

    with ServerProcess() as srv:
        assert srv.pid is not None
        ping(srv.address)
        before = rss(srv.pid)
        host, port = srv.address[6:].rsplit(":", 1)
        for _ in range(8):
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.sendall(frame(b"\x01"))
                s.sendall(_HEADER.pack(b"\x00REQ", 8 * MIB, 0) + b"x" * (7 * MIB))
                s.recv(17)
            ping(srv.address)
        for _ in range(50):  # the closes are handled on the next loop turns
            ping(srv.address)
            after = rss(srv.pid)
            if after < before + 16:
                break
            time.sleep(0.05)
        assert after < before + 16, (before, after)


# -- the same limits from the command line ----------------------------------------


def test_periodicd_sets_the_peer_limits() -> None:
    """--max-registration and --max-connections reach the server."""
    import socket

    from periodic_fast.codec import encode_identity
    from periodic_fast.testing import ServerProcess

    ident = encode_identity(b"n" * 100, b"t" * 100)  # over 64 bytes
    args = ["--max-registration", "64", "--max-connections", "3", "--log", "warning"]
    with ServerProcess(args) as proc:
        host, port = proc.address.removeprefix("tcp://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(frame(b"\x03" + ident)[:12])  # the header alone
            assert sock.recv(1) == b""  # refused from the header: closed
        held = [socket.create_connection((host, int(port)), timeout=5)]
        held += [socket.create_connection((host, int(port)), timeout=5)]
        held += [socket.create_connection((host, int(port)), timeout=5)]
        try:
            with socket.create_connection((host, int(port)), timeout=5) as extra:
                assert extra.recv(1) == b""  # the fourth is over the cap
        finally:
            for sock in held:
                sock.close()
