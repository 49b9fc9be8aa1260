"""Transport tests of the server over real sockets (TCP and unix).

Every socket test runs on the stock asyncio loop and on uvloop (the ``run``
fixture creates the loop; tests are plain functions that hand it a coroutine
and a bounded timeout).  Frames are built and parsed with
:mod:`periodic_fast.codec`.

Black-box tests use the real scheduler when ``periodic_fast.scheduler`` is
importable, otherwise a small fake that answers the few commands used here;
white-box tests (output bounds, the timer) always use the fake.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from periodic_fast import codec
from periodic_fast.constants import ClientType, Command
from periodic_fast.errors import ProtocolError
from periodic_fast.job import Job
from periodic_fast.server.app import (
    AddressInUse,
    SchedulerFactory,
    Server,
    new_event_loop,
    parse_address,
)
from periodic_fast.store.memory import MemoryStore
from periodic_fast.testing import (
    ServerProcess,
    free_port,
    running_server,
    wait_listening,
)

T = TypeVar("T")

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
HAVE_SCHEDULER = importlib.util.find_spec("periodic_fast.scheduler") is not None
needs_scheduler = pytest.mark.skipif(
    not HAVE_SCHEDULER, reason="periodic_fast.scheduler not there yet"
)
TIMEOUT = 10.0

# -- a fake scheduler (sans-I/O, same seam as the real one) ---------------------


class FakeScheduler:
    """Answers PING, SUBMIT_JOB, DUMP, UNKNOWN and SHUTDOWN; records calls."""

    def __init__(self, now: float, on_shutdown: Callable[[], None]) -> None:
        self.on_shutdown = on_shutdown
        self.sends: dict[int, Callable[[bytes], None]] = {}
        self.closes: dict[int, Callable[[], None]] = {}
        self.connected: list[tuple[int, int, tuple[bytes, bytes] | None]] = []
        self.disconnected: list[int] = []
        self.jobs: dict[tuple[bytes, bytes], Job] = {}
        self.ticks = 0
        self.wakeup: float | None = None
        self.store = MemoryStore()  # immediate: replies are never held
        self.auth = None  # no auth file

    def admit(
        self, client_type: int, identity: tuple[bytes, bytes] | None
    ) -> str | None:
        return None  # auth off: every registration is accepted

    def connect(
        self,
        conn_id: int,
        client_type: int,
        identity: tuple[bytes, bytes] | None,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        now: float,
        mono: float | None = None,
    ) -> None:
        assert conn_id not in self.sends
        self.sends[conn_id] = send
        self.closes[conn_id] = close
        self.connected.append((conn_id, client_type, identity))

    def disconnect(self, conn_id: int, now: float, mono: float | None = None) -> None:
        if self.sends.pop(conn_id, None) is not None:
            self.disconnected.append(conn_id)
            del self.closes[conn_id]

    def handle(
        self,
        conn_id: int,
        msgid: int,
        command: int,
        payload: bytes,
        now: float,
        mono: float | None = None,
    ) -> None:
        fields = codec.decode_payload(command, payload)  # raises ProtocolError
        send = self.sends[conn_id]
        if command == Command.PING:
            send(codec.encode_response(msgid, Command.PONG))
        elif command == Command.SUBMIT_JOB:
            job: Job = fields[0]
            self.jobs[(job.func, job.name)] = job
            send(codec.encode_response(msgid, Command.SUCCESS))
        elif command == Command.DUMP:
            data = codec.encode_job_list(self.jobs.values())
            send(codec.encode_response(msgid, Command.DATA, data))
        elif command == Command.UNKNOWN:
            send(codec.encode_response(msgid, Command.UNKNOWN))
        elif command == Command.SHUTDOWN:
            self.on_shutdown()
        elif command == Command.SLEEP:  # test hook: wake up soon
            self.wakeup = (now if mono is None else mono) + 0.05  # timer: mono
            send(codec.encode_response(msgid, Command.NOOP))

    def tick(self, now: float, mono: float | None = None) -> None:
        self.ticks += 1
        if self.wakeup is not None and self.wakeup <= (now if mono is None else mono):
            self.wakeup = None

    def next_wakeup(self) -> float | None:
        return self.wakeup


def fake_factory() -> tuple[SchedulerFactory, list[FakeScheduler]]:
    made: list[FakeScheduler] = []

    def factory(now: float, on_shutdown: Callable[[], None]) -> FakeScheduler:
        s = FakeScheduler(now, on_shutdown)
        made.append(s)
        return s

    return factory, made


def black_box_factory() -> SchedulerFactory | None:
    """The real scheduler (None: the Server's default) when it exists."""
    return None if HAVE_SCHEDULER else fake_factory()[0]


# -- loops -----------------------------------------------------------------------

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop")
    ),
]

Runner = Callable[[Awaitable[T]], T]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Awaitable[Any]], Any]]:
    """Run a coroutine to completion on a fresh loop of the chosen kind."""
    loop = new_event_loop(request.param)

    def runner(aw: Awaitable[Any], timeout: float = TIMEOUT * 2) -> Any:
        return loop.run_until_complete(asyncio.wait_for(aw, timeout))

    try:
        yield runner
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- a raw client ------------------------------------------------------------------


class Raw:
    """One raw connection: write bytes, read server frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.parser = codec.Parser(requests=False, registration=True)
        self.packets: list[codec.Packet] = []

    @classmethod
    async def open(cls, address: str) -> Raw:
        addr = parse_address(address)
        if addr.scheme == "tcp":
            r, w = await asyncio.open_connection(addr.host, addr.port)
        else:
            assert addr.host is not None
            r, w = await asyncio.open_unix_connection(addr.host)
        return cls(r, w)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self) -> codec.Packet:
        while not self.packets:
            data = await asyncio.wait_for(self.reader.read(65536), TIMEOUT)
            if not data:
                raise ConnectionError("closed by the server")
            self.packets.extend(self.parser.feed(data))
        return self.packets.pop(0)

    async def register(self, ctype: int = ClientType.CLIENT) -> int:
        self.send(codec.encode_registration(ctype))
        reply = await self.recv()
        assert reply.msgid is None and reply.command == Command.DATA
        return int(struct.unpack(">I", reply.payload)[0])

    async def request(
        self, msgid: int, command: int, payload: bytes = b""
    ) -> codec.Packet:
        self.send(codec.encode_request(msgid, command, payload))
        return await self.recv()

    async def closed(self, timeout: float = TIMEOUT) -> bytes:
        """Wait for the server to close; return whatever it sent before."""
        got = b""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                got += data
        except (ConnectionResetError, BrokenPipeError):
            pass
        await self.close()
        return got

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def pick(server: Server, kind: str) -> str:
    return next(a for a in server.addresses if a.startswith(kind))


def submit_frame(msgid: int, func: bytes, name: bytes) -> bytes:
    job = Job(func, name, b"w", int(time.time()) + 3600)
    return codec.encode_request(msgid, Command.SUBMIT_JOB, codec.encode_job(job))


async def dump(conn: Raw, msgid: int) -> list[Job]:
    reply = await conn.request(msgid, Command.DUMP)
    assert reply.command == Command.DATA
    return codec.decode_job_list(reply.payload)


# -- registration and framing ---------------------------------------------------------


def test_registration_reply_first_then_ping(run: Runner[None], transport: str) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            conn = await Raw.open(pick(srv, transport))
            conn.send(codec.encode_registration(ClientType.WORKER))
            first = await conn.recv()
            assert first.msgid is None
            assert first.command == Command.DATA and len(first.payload) == 4
            pong = await conn.request(7, Command.PING)
            assert (pong.msgid, pong.command, pong.payload) == (7, Command.PONG, b"")
            await conn.close()

    run(main())


def test_reply_bytes_exact(run: Runner[None]) -> None:
    """protocol.md 1.3 worked example: PONG for PING msgid 1."""

    async def main() -> None:
        async with running_server(
            unix=False, scheduler_factory=black_box_factory()
        ) as srv:
            conn = await Raw.open(srv.addresses[0])
            await conn.register()
            conn.send(bytes.fromhex("00524551 00000005 a6e57ef8 0000000109"))
            data = await asyncio.wait_for(conn.reader.readexactly(17), TIMEOUT)
            assert data == bytes.fromhex("00524553 00000005 3fec2f42 000000010a")
            await conn.close()

    run(main())


def test_connection_ids_unique(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            conns = [await Raw.open(a) for a in srv.addresses * 4]
            ids = [await c.register() for c in conns]
            assert len(set(ids)) == len(ids)
            for c in conns:
                await c.close()

    run(main())


def test_identity_registration(run: Runner[None]) -> None:
    factory, made = fake_factory()

    async def main() -> None:
        async with running_server(unix=False, scheduler_factory=factory) as srv:
            conn = await Raw.open(srv.addresses[0])
            conn.send(codec.encode_registration(ClientType.AUTH_WORKER, b"n", b"t"))
            await conn.recv()
            assert (await conn.request(1, Command.PING)).command == Command.PONG
            assert made[0].connected[0][1:] == (4, (b"n", b"t"))
            await conn.close()

    run(main())


def test_pipelined_with_registration(run: Runner[None], transport: str) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            conn = await Raw.open(pick(srv, transport))
            conn.send(
                codec.encode_registration(ClientType.CLIENT)
                + codec.encode_request(1, Command.PING)
                + submit_frame(2, b"f", b"pipelined")
                + codec.encode_request(3, Command.PING)
            )
            first = await conn.recv()
            assert first.msgid is None
            replies = {}
            for _ in range(3):
                p = await conn.recv()
                replies[p.msgid] = p.command
            assert replies == {1: Command.PONG, 2: Command.SUCCESS, 3: Command.PONG}
            await conn.close()

    run(main())


def test_many_pipelined_requests(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(
            tcp=False, scheduler_factory=black_box_factory()
        ) as srv:
            conn = await Raw.open(srv.addresses[0])
            await conn.register()
            n = 2000
            conn.send(b"".join(codec.encode_request(i, Command.PING) for i in range(n)))
            seen = {(await conn.recv()).msgid for _ in range(n)}
            assert seen == set(range(n))
            await conn.close()

    run(main())


def test_bytes_before_magic_skipped(run: Runner[None], transport: str) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            conn = await Raw.open(pick(srv, transport))
            await conn.register()
            conn.send(b"garbage\x00RE" + codec.encode_request(5, Command.PING))
            pong = await conn.recv()
            assert (pong.msgid, pong.command) == (5, Command.PONG)
            await conn.close()

    run(main())


def test_split_frames_reassembled(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(
            unix=False, scheduler_factory=black_box_factory()
        ) as srv:
            conn = await Raw.open(srv.addresses[0])
            data = codec.encode_registration(ClientType.CLIENT) + codec.encode_request(
                9, Command.PING
            )
            for i in range(len(data)):
                conn.send(data[i : i + 1])
                await conn.writer.drain()
                await asyncio.sleep(0)
            assert (await conn.recv()).msgid is None
            assert (await conn.recv()).command == Command.PONG
            await conn.close()

    run(main())


# -- bad input closes only that connection --------------------------------------------


def _crc_mismatch() -> bytes:
    frame = bytearray(codec.encode_request(1, Command.PING))
    frame[8] ^= 0xFF
    return bytes(frame)


def _unknown_command() -> bytes:
    body = b"\x00\x00\x00\x01" + bytes([35])
    return b"\x00REQ" + struct.pack(">II", len(body), zlib.crc32(body)) + body


def _oversize_header() -> bytes:
    return b"\x00REQ" + struct.pack(">II", 0xFFFFFFFF, 0)  # 4 GiB, no body


def _ping_with_trailing_bytes() -> bytes:
    return codec.encode_request(1, Command.PING, b"xx")


def _truncated_submit() -> bytes:
    return codec.encode_request(1, Command.SUBMIT_JOB, b"\x05ab")


BAD_AFTER_REGISTRATION = {
    "crc-mismatch": _crc_mismatch,
    "unknown-command": _unknown_command,
    "oversize-frame": _oversize_header,
    "ping-trailing-bytes": _ping_with_trailing_bytes,
    "truncated-payload": _truncated_submit,
}


async def _check_bystander(other: Raw) -> None:
    assert (await other.request(100, Command.PING)).command == Command.PONG
    jobs = await dump(other, 101)
    assert [(j.func, j.name) for j in jobs] == [(b"keep", b"me")]


async def _bystander(srv: Server, kind: str) -> Raw:
    other = await Raw.open(pick(srv, kind))
    await other.register()
    other.send(submit_frame(1, b"keep", b"me"))
    assert (await other.recv()).command == Command.SUCCESS
    return other


@pytest.mark.parametrize("bad", list(BAD_AFTER_REGISTRATION))
def test_bad_frame_closes_only_that_connection(
    run: Runner[None], transport: str, bad: str
) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            other = await _bystander(srv, transport)
            conn = await Raw.open(pick(srv, transport))
            await conn.register()
            conn.send(BAD_AFTER_REGISTRATION[bad]())
            assert await conn.closed() == b""
            await _check_bystander(other)
            await other.close()

    run(main())


@pytest.mark.parametrize(
    "first",
    [
        pytest.param(b"\x00REX" + b"\x00" * 20, id="near-magic"),
        pytest.param(b"x", id="one-byte"),
        pytest.param(
            b"junk" + codec.encode_registration(ClientType.CLIENT), id="junk-first"
        ),
    ],
)
def test_bad_first_bytes_closed(
    run: Runner[None], transport: str, first: bytes
) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            other = await _bystander(srv, transport)
            conn = await Raw.open(pick(srv, transport))
            conn.send(first)
            assert await conn.closed() == b""
            await _check_bystander(other)
            await other.close()

    run(main())


@pytest.mark.parametrize(
    "registration",
    [
        pytest.param(b"\x05", id="unknown-type"),
        pytest.param(b"\x01\x00", id="trailing-bytes"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\x03\x00\x00", id="bad-identity"),
    ],
)
def test_bad_registration_closed(run: Runner[None], registration: bytes) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            other = await _bystander(srv, "unix")
            conn = await Raw.open(pick(srv, "tcp"))
            header = struct.pack(">II", len(registration), zlib.crc32(registration))
            conn.send(b"\x00REQ" + header + registration)
            assert await conn.closed() == b""
            await _check_bystander(other)
            await other.close()

    run(main())


def test_packets_before_error_are_handled(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(
            unix=False, scheduler_factory=black_box_factory()
        ) as srv:
            conn = await Raw.open(srv.addresses[0])
            conn.send(
                codec.encode_registration(ClientType.CLIENT)
                + codec.encode_request(3, Command.PING)
                + _crc_mismatch()
            )
            rest = await conn.closed()
            packets = codec.Parser(requests=False, registration=True).feed(rest)
            assert [(p.msgid, p.command) for p in packets][1:] == [(3, Command.PONG)]

    run(main())


def test_registration_timeout(run: Runner[None], transport: str) -> None:
    async def main() -> None:
        async with running_server(
            scheduler_factory=black_box_factory(), registration_timeout=0.2
        ) as srv:
            other = await _bystander(srv, transport)
            silent = await Raw.open(pick(srv, transport))
            partial = await Raw.open(pick(srv, transport))
            partial.send(codec.encode_registration(ClientType.CLIENT)[:6])
            assert await silent.closed(timeout=5) == b""
            assert await partial.closed(timeout=5) == b""
            await _check_bystander(other)  # registered long ago: not affected
            await other.close()

    run(main())


def test_frame_limit_configurable(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(
            unix=False, scheduler_factory=black_box_factory(), max_frame=64
        ) as srv:
            ok = await Raw.open(srv.addresses[0])
            await ok.register()
            small = submit_frame(1, b"f", b"n")
            assert (await ok.request(2, Command.PING)).command == Command.PONG
            conn = await Raw.open(srv.addresses[0])
            await conn.register()
            big = Job(b"f", b"big", b"x" * 100)
            conn.send(
                small
                + codec.encode_request(2, Command.SUBMIT_JOB, codec.encode_job(big))
            )
            rest = await conn.closed()
            packets = codec.Parser(requests=False).feed(rest)
            assert [p.command for p in packets] == [Command.SUCCESS]
            await ok.close()

    run(main())


def test_disconnect_reaches_scheduler(run: Runner[None]) -> None:
    factory, made = fake_factory()

    async def main() -> None:
        async with running_server(tcp=False, scheduler_factory=factory) as srv:
            conn = await Raw.open(srv.addresses[0])
            cid = await conn.register()
            bad = await Raw.open(srv.addresses[0])
            bad_id = await bad.register()
            bad.send(_crc_mismatch())
            await bad.closed()
            assert made[0].disconnected == [bad_id]
            await conn.close()
            for _ in range(200):
                if cid in made[0].disconnected:
                    break
                await asyncio.sleep(0.01)
            assert made[0].disconnected == [bad_id, cid]
            assert srv.hub.connections == {}

    run(main())


# -- output bounds, close requests and the timer (fake scheduler) -------------------


def test_peer_that_never_reads_is_dropped(run: Runner[None], transport: str) -> None:
    factory, made = fake_factory()

    async def main() -> None:
        async with running_server(scheduler_factory=factory, max_output=1 << 20) as srv:
            other = await _bystander(srv, transport)
            sleeper = await Raw.open(pick(srv, transport))
            cid = await sleeper.register()
            send = made[0].sends[cid]
            chunk = codec.encode_response(1, Command.DATA, b"x" * 65536)
            for _ in range(2000):  # up to 128 MiB; the bound is 1 MiB
                if cid not in made[0].sends:
                    break
                send(chunk)
                await asyncio.sleep(0)
            assert cid in made[0].disconnected
            await sleeper.close()
            await _check_bystander(other)
            await other.close()

    run(main())


def test_reading_paused_while_output_backs_up(
    run: Runner[None], transport: str
) -> None:
    factory, made = fake_factory()

    async def main() -> None:
        async with running_server(scheduler_factory=factory) as srv:
            conn = await Raw.open(pick(srv, transport))
            cid = await conn.register()
            proto = srv.hub.connections[cid]
            assert proto._transport is not None
            conn.reader._transport.pause_reading()  # type: ignore[attr-defined]
            chunk = codec.encode_response(1, Command.DATA, b"x" * 65536)
            total = 0
            while proto._transport.is_reading():
                assert total < 256 << 20, "reading never paused"
                made[0].sends[cid](chunk)
                total += len(chunk)
                await asyncio.sleep(0)
            # the peer catches up: reading resumes, everything arrives in order
            conn.reader._transport.resume_reading()  # type: ignore[attr-defined]
            for _ in range(total // len(chunk)):
                assert (await conn.recv()).command == Command.DATA
            assert proto._transport.is_reading()
            assert (await conn.request(2, Command.PING)).command == Command.PONG
            await conn.close()

    run(main())


class CountingTransport:
    """Delegates to a transport, recording the size of each write."""

    def __init__(self, inner: Any, writes: list[int]) -> None:
        self._inner = inner
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(len(data))
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_replies_batched_in_one_write(run: Runner[None]) -> None:
    factory, made = fake_factory()

    async def main() -> None:
        async with running_server(unix=False, scheduler_factory=factory) as srv:
            conn = await Raw.open(srv.addresses[0])
            cid = await conn.register()
            proto = srv.hub.connections[cid]
            writes: list[int] = []
            proto._transport = CountingTransport(proto._transport, writes)  # type: ignore[assignment]
            conn.send(
                b"".join(codec.encode_request(i, Command.PING) for i in range(50))
            )
            for _ in range(50):
                await conn.recv()
            assert writes and sum(writes) == 50 * 17 and len(writes) < 50
            await conn.close()

    run(main())


def test_scheduler_close_request(run: Runner[None]) -> None:
    factory, made = fake_factory()

    async def main() -> None:
        async with running_server(unix=False, scheduler_factory=factory) as srv:
            conn = await Raw.open(srv.addresses[0])
            cid = await conn.register()
            made[0].sends[cid](codec.encode_response(4, Command.NOOP))
            made[0].closes[cid]()
            rest = await conn.closed()
            assert [p.msgid for p in codec.Parser(requests=False).feed(rest)] == [4]
            assert made[0].disconnected == [cid]

    run(main())


def test_timer_ticks_and_rearms_early(run: Runner[None]) -> None:
    factory, made = fake_factory()

    async def main() -> None:
        async with running_server(unix=False, scheduler_factory=factory) as srv:
            conn = await Raw.open(srv.addresses[0])
            await conn.register()
            before = made[0].ticks
            t0 = time.monotonic()
            await conn.request(1, Command.SLEEP)  # wakeup in 50 ms
            while made[0].ticks == before:
                await asyncio.sleep(0.005)
            assert time.monotonic() - t0 < 0.9  # not the 1 s fallback
            await conn.close()

    run(main())


# -- listeners ------------------------------------------------------------


def test_parse_address() -> None:
    assert parse_address("tcp://127.0.0.1:5000") == ("tcp", "127.0.0.1", 5000)
    assert parse_address("tcp://:5000") == ("tcp", None, 5000)
    assert parse_address("tcp://[::1]:5000") == ("tcp", "::1", 5000)
    assert parse_address("unix:///tmp/x.sock") == ("unix", "/tmp/x.sock", 0)
    assert parse_address("/tmp/x.sock") == ("unix", "/tmp/x.sock", 0)
    for bad in (
        "tcp://host",
        "tcp://h:port",
        "tcp://::1:5",
        "unix://",
        "tcp://h:70000",
    ):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_several_listeners_and_ipv6(run: Runner[None], tmp_path: Path) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    short = tempfile.mkdtemp(prefix="pf-")

    async def main() -> None:
        path = os.path.join(short, "a.sock")
        srv = Server(
            ["tcp://127.0.0.1:0", "tcp://[::1]:0", path],
            scheduler_factory=black_box_factory(),
        )
        try:
            await srv.start()
        except OSError:
            pytest.skip("cannot bind ::1")
        try:
            assert srv.addresses[2] == f"unix://{path}"
            assert srv.addresses[1].startswith("tcp://[::1]:")
            for addr in srv.addresses:
                conn = await Raw.open(addr)
                await conn.register()
                assert (await conn.request(1, Command.PING)).command == Command.PONG
                await conn.close()
        finally:
            await srv.stop()
        assert not os.path.exists(path)

    try:
        run(main())
    finally:
        os.rmdir(short)


def test_unix_stale_file_removed(run: Runner[None]) -> None:
    short = tempfile.mkdtemp(prefix="pf-")
    path = os.path.join(short, "stale.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()  # leaves the file, nobody listens
    assert os.path.exists(path)

    async def main() -> None:
        async with Server(
            [f"unix://{path}"], scheduler_factory=black_box_factory()
        ) as srv:
            conn = await Raw.open(srv.addresses[0])
            await conn.register()
            assert (await conn.request(1, Command.PING)).command == Command.PONG
            await conn.close()
        assert not os.path.exists(path)

    try:
        run(main())
    finally:
        os.rmdir(short)


def test_unix_address_in_use(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(
            tcp=False, scheduler_factory=black_box_factory()
        ) as first:
            path = parse_address(first.addresses[0]).host
            second = Server([f"unix://{path}"], scheduler_factory=fake_factory()[0])
            with pytest.raises(AddressInUse, match="address in use"):
                await second.start()
            # the first server and its socket file are untouched
            assert path is not None and os.path.exists(path)
            conn = await Raw.open(first.addresses[0])
            await conn.register()
            assert (await conn.request(1, Command.PING)).command == Command.PONG
            await conn.close()

    run(main())


def test_unix_path_not_a_socket(run: Runner[None], tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("keep")

    async def main() -> None:
        srv = Server([str(path)], scheduler_factory=fake_factory()[0])
        with pytest.raises(AddressInUse):
            await srv.start()

    run(main())
    assert path.read_text() == "keep"


def test_tcp_port_in_use(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(unix=False, scheduler_factory=fake_factory()[0]) as a:
            srv = Server(a.addresses, scheduler_factory=fake_factory()[0])
            with pytest.raises(OSError):
                await srv.start()

    run(main())


def test_shutdown_frame_stops_server(run: Runner[None]) -> None:
    short = tempfile.mkdtemp(prefix="pf-")
    path = os.path.join(short, "s.sock")

    async def main() -> None:
        srv = Server(
            ["tcp://127.0.0.1:0", f"unix://{path}"],
            scheduler_factory=black_box_factory(),
        )
        await srv.start()
        task = asyncio.ensure_future(srv.serve_forever())
        conn = await Raw.open(srv.addresses[0])
        await conn.register()
        bystander = await Raw.open(srv.addresses[1])
        await bystander.register()
        conn.send(codec.encode_request(1, Command.SHUTDOWN))
        await asyncio.wait_for(task, TIMEOUT)
        assert await conn.closed() == b""
        assert await bystander.closed() == b""
        assert not os.path.exists(path)
        with pytest.raises(OSError):
            await Raw.open(srv.addresses[0])

    try:
        run(main())
    finally:
        os.rmdir(short)


def test_shutdown_frame_stops_running_server(run: Runner[None]) -> None:
    """No serve_forever: SHUTDOWN still stops the server by itself."""

    async def main() -> None:
        async with running_server(scheduler_factory=black_box_factory()) as srv:
            conn = await Raw.open(srv.addresses[1])
            await conn.register()
            conn.send(codec.encode_request(1, Command.SHUTDOWN))
            assert await conn.closed() == b""
            with pytest.raises(OSError):
                await Raw.open(srv.addresses[0])
            path = parse_address(srv.addresses[1]).host
            assert path is not None and not os.path.exists(path)

    run(main())


def test_server_stop_is_idempotent(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(scheduler_factory=fake_factory()[0]) as srv:
            await srv.stop()
        await srv.stop()

    run(main())


def test_scheduler_protocol_error_type() -> None:
    """The fake raises the same class the server catches."""
    s = FakeScheduler(0.0, lambda: None)
    s.connect(1, 1, None, lambda b: None, lambda: None, 0.0)
    with pytest.raises(ProtocolError):
        s.handle(1, 1, Command.PING, b"x", 0.0)


# -- the command line and subprocesses ------------------------------------------------


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, env.get("PYTHONPATH", "")) if p
    )
    return env


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(
            ["-c", "from periodic_fast.cli import periodicd_main; periodicd_main()"],
            id="periodicd",
        ),
        pytest.param(["-m", "periodic_fast"], id="periodic"),
    ],
)
def test_help(argv: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, *argv, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_python_env(),
    )
    assert out.returncode == 0, out.stderr
    assert "--host" in out.stdout and "Usage" in out.stdout


def test_periodic_without_daemon_prints_help() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "periodic_fast"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_python_env(),
    )
    assert out.returncode == 0 and "--daemon" in out.stdout


def test_bad_address_exits_nonzero() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "periodic_fast", "-d", "-H", "tcp://nope"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_python_env(),
    )
    assert out.returncode != 0


@needs_scheduler
def test_bad_store_uri_exits_1() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "periodic_fast", "-d", "-H", "tcp://127.0.0.1:0"]
        + ["-p", "bogus://x"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_python_env(),
    )
    assert out.returncode == 1
    assert "bogus://x" in out.stderr and "Traceback" not in out.stderr


SUBPROCESS_LOOPS = [
    pytest.param({"PERIODIC_FAST_NO_UVLOOP": "1"}, id="asyncio"),
    pytest.param(
        {}, id="uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop")
    ),
]


def _sync_ping(address: str) -> bytes:
    addr = parse_address(address)
    if addr.scheme == "tcp":
        s = socket.create_connection((addr.host or "127.0.0.1", addr.port), TIMEOUT)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(TIMEOUT)
        s.connect(str(addr.host))
    with s:
        s.sendall(
            codec.encode_registration(ClientType.CLIENT)
            + codec.encode_request(1, Command.PING)
        )
        parser = codec.Parser(requests=False, registration=True)
        packets: list[codec.Packet] = []
        while len(packets) < 2:
            data = s.recv(4096)
            assert data
            packets.extend(parser.feed(data))
        return bytes([packets[1].command])


@needs_scheduler
@pytest.mark.parametrize("env", SUBPROCESS_LOOPS)
@pytest.mark.parametrize("command", ["periodicd", "module"])
def test_sigterm_stops_cleanly(env: dict[str, str], command: str) -> None:
    short = tempfile.mkdtemp(prefix="pf-")
    path = os.path.join(short, "p.sock")
    proc = ServerProcess(address=f"unix://{path}", command=command, env=env)
    try:
        proc.start()
        assert _sync_ping(proc.address) == bytes([Command.PONG])
        assert proc.stop() == 0, proc.output()
        assert not os.path.exists(path)
        assert "listening on" in proc.output()
    finally:
        proc.kill()
        os.rmdir(short)


@needs_scheduler
def test_shutdown_frame_stops_process() -> None:
    with ServerProcess(env={"PERIODIC_FAST_NO_UVLOOP": "1"}) as proc:
        addr = parse_address(proc.address)
        s = socket.create_connection((addr.host, addr.port), TIMEOUT)
        with s:
            s.sendall(
                codec.encode_registration(ClientType.CLIENT)
                + codec.encode_request(1, Command.SHUTDOWN)
            )
        assert proc.wait(TIMEOUT) == 0
        assert not wait_listening(proc.address, timeout=0.1)


@needs_scheduler
def test_server_process_restart_and_kill() -> None:
    with ServerProcess(args=["--log", "debug"]) as proc:
        assert _sync_ping(proc.address) == bytes([Command.PONG])
        proc.restart(crash=True)
        assert _sync_ping(proc.address) == bytes([Command.PONG])
        proc.restart()
        assert _sync_ping(proc.address) == bytes([Command.PONG])


@needs_scheduler
def test_second_unix_server_refuses(tmp_path: Path) -> None:
    short = tempfile.mkdtemp(prefix="pf-")
    path = os.path.join(short, "p.sock")
    try:
        with ServerProcess(address=f"unix://{path}"):
            out = subprocess.run(
                [sys.executable, "-m", "periodic_fast", "-d", "-H", path],
                capture_output=True,
                text=True,
                timeout=60,
                env=_python_env(),
            )
            assert out.returncode == 1
            assert "address in use" in out.stderr
            assert os.path.exists(path)
    finally:
        os.rmdir(short)


@needs_scheduler
def test_repeated_and_comma_separated_hosts() -> None:
    short = tempfile.mkdtemp(prefix="pf-")
    path = os.path.join(short, "p.sock")
    proc = ServerProcess(args=[])
    second = proc.address
    while second == proc.address:  # two free ports, never the same one twice
        second = f"tcp://127.0.0.1:{free_port()}"
    proc.args = ["-H", f"{second},unix://{path}"]
    try:
        with proc:
            for addr in (proc.address, second, f"unix://{path}"):
                assert wait_listening(addr, timeout=5)
                assert _sync_ping(addr) == bytes([Command.PONG])
        assert not os.path.exists(path)
    finally:
        os.rmdir(short)


@needs_scheduler
def test_address_from_environment() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    env = _python_env()
    env["PERIODIC_PORT"] = address
    proc = subprocess.Popen(
        [sys.executable, "-m", "periodic_fast", "-d"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_listening(address, timeout=15)
        assert _sync_ping(address) == bytes([Command.PONG])
        proc.terminate()
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
