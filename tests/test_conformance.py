"""Conformance tests: protocol.md section 8, items 1-70 and 79, over real sockets.

Each ``test_item_NN_...`` covers checklist item NN with raw frames written to
and read from a real socket (TCP; a few over a unix socket as well) of an
in-process server, on the stock asyncio loop and on uvloop (the ``run``
fixture, as in tests/test_server.py).  Request frames are built by hand and
every server frame is checked by hand (magic, length, CRC-32): the codec under
test is only the server's.  Items 71-76 (auth) run against a server with an
auth file (at the end); 77-78 (RSA) belong to a later issue.

Time: the server gets a movable clock (real time plus an offset, see
:class:`Clock`); :meth:`Env.jump` moves it forward second by second and runs
the server's timer after each step (``Server.poke``), so keepalive, assign-wait,
retries, timeouts and waiter expiry take no real minutes.

scripts/test.sh runs this file twice, with the compiled twins and with
``PERIODIC_FAST_NO_EXTENSIONS=1``; :func:`test_implementations_in_use` records
which codec and wheel the server used.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import math
import os
import re
import struct
import tempfile
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, NamedTuple

import pytest

from periodic_fast import codec, wheel
from periodic_fast._compat import NO_EXTENSIONS
from periodic_fast.constants import ClientType
from periodic_fast.constants import Command as C
from periodic_fast.server import protocol as server_protocol
from periodic_fast.server.app import Server, new_event_loop, parse_address
from periodic_fast.testing import running_server

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
TIMEOUT = 5.0  # waiting for a frame that must come
QUIET = 0.2  # window in which no frame may come
TEST_TIMEOUT = 30.0

MAGIC_REQ = b"\x00REQ"
MAGIC_RES = b"\x00RES"
_HEADER = struct.Struct(">4sII")

# -- loops --

LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop")
    ),
]

Runner = Callable[[Awaitable[Any]], Any]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Iterator[Runner]:
    """Run a coroutine to completion on a fresh loop of the chosen kind."""
    loop = new_event_loop(request.param)

    def runner(aw: Awaitable[Any]) -> Any:
        return loop.run_until_complete(asyncio.wait_for(aw, TEST_TIMEOUT))

    try:
        yield runner
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- raw frames --


def frame(body: bytes) -> bytes:
    """A client frame around ``body`` (protocol.md 1.3)."""
    return _HEADER.pack(MAGIC_REQ, len(body), zlib.crc32(body)) + body


def req(msgid: int, command: int, payload: bytes = b"") -> bytes:
    return frame(struct.pack(">IB", msgid, command) + payload)


def registration(ctype: int, extra: bytes = b"") -> bytes:
    return frame(bytes((ctype,)) + extra)


def s8(value: bytes) -> bytes:
    return bytes((len(value),)) + value


def handle(func: bytes, name: bytes) -> bytes:
    return s8(func) + s8(name)


def job_bytes(
    func: bytes,
    name: bytes,
    workload: bytes = b"",
    sched_at: int = 0,
    count: int = 0,
    timeout: int = 0,
) -> bytes:
    """A job encoding (protocol.md 2.1), version from count / timeout."""
    version = (1 if count > 0 else 0) | (2 if timeout > 0 else 0)
    out = handle(func, name) + struct.pack(">I", len(workload)) + workload
    out += struct.pack(">qB", sched_at, version)
    if version & 1:
        out += struct.pack(">i", count)
    if version & 2:
        out += struct.pack(">i", timeout)
    return out


class JobV(NamedTuple):
    """A decoded job with its version byte."""

    func: bytes
    name: bytes
    workload: bytes
    sched_at: int
    version: int
    count: int
    timeout: int


def parse_job(data: bytes, pos: int = 0) -> tuple[JobV, int]:
    n = data[pos]
    func = data[pos + 1 : pos + 1 + n]
    pos += 1 + n
    n = data[pos]
    name = data[pos + 1 : pos + 1 + n]
    pos += 1 + n
    (wl_len,) = struct.unpack_from(">I", data, pos)
    workload = data[pos + 4 : pos + 4 + wl_len]
    pos += 4 + wl_len
    sched_at, version = struct.unpack_from(">qB", data, pos)
    pos += 9
    count = timeout = 0
    if version in (1, 3):
        (count,) = struct.unpack_from(">i", data, pos)
        pos += 4
    if version in (2, 3):
        (timeout,) = struct.unpack_from(">i", data, pos)
        pos += 4
    return JobV(func, name, workload, sched_at, version, count, timeout), pos


def parse_one_job(data: bytes) -> JobV:
    job, pos = parse_job(data)
    assert pos == len(data), "trailing bytes after the job"
    return job


def parse_job_list(data: bytes) -> list[JobV]:
    (n,) = struct.unpack_from(">Q", data)
    pos = 8
    jobs = []
    for _ in range(n):
        job, pos = parse_job(data, pos)
        jobs.append(job)
    assert pos == len(data), "trailing bytes after the job list"
    return jobs


Stat = tuple[int, int, int, int, int]  # workers, jobs, processing, locked, sched_at


def parse_status(text: bytes) -> dict[bytes, Stat]:
    out: dict[bytes, Stat] = {}
    if not text:
        return out
    for line in text.split(b"\n"):
        func, *nums = line.rsplit(b",", 5)
        w, j, p, lk, s = (int(x) for x in nums)
        out[func] = (w, j, p, lk, s)
    return out


# -- a raw connection --


class Frame(NamedTuple):
    """One server frame: ``msgid`` is None for the registration reply."""

    msgid: int | None
    command: int
    payload: bytes
    raw: bytes


class NoFrame(AssertionError):
    """No frame arrived within the deadline."""


class Closed(AssertionError):
    """The server closed the connection."""


class Conn:
    """One raw connection: hand-built frames out, hand-checked frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.frames: deque[Frame] = deque()
        self.eof = False
        self.registered = False
        self.conn_id: int | None = None
        self._msgid = 0x1000

    @classmethod
    async def open(cls, address: str) -> Conn:
        addr = parse_address(address)
        if addr.scheme == "tcp":
            r, w = await asyncio.open_connection(addr.host, addr.port)
        else:
            assert addr.host is not None
            r, w = await asyncio.open_unix_connection(addr.host)
        return cls(r, w)

    def next_msgid(self) -> int:
        self._msgid += 1
        return self._msgid

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    # input

    def _parse(self) -> None:
        buf = self.buf
        while len(buf) >= _HEADER.size:
            magic, length, crc = _HEADER.unpack_from(buf)
            assert magic == MAGIC_RES, f"bad magic in {bytes(buf[:12])!r}"  # item 1
            end = _HEADER.size + length
            if len(buf) < end:
                return
            raw = bytes(buf[:end])
            body = raw[_HEADER.size :]
            del buf[:end]
            assert zlib.crc32(body) == crc, "bad CRC from the server"  # item 1
            if not self.registered:  # item 4: the registration reply comes first
                assert length == 5 and body[0] == C.DATA, f"not a reply: {raw!r}"
                self.registered = True
                self.conn_id = struct.unpack(">I", body[1:])[0]
                self.frames.append(Frame(None, C.DATA, body[1:], raw))
            else:
                assert length >= 5, f"short frame {raw!r}"
                msgid, command = struct.unpack_from(">IB", body)
                self.frames.append(Frame(msgid, command, body[5:], raw))

    async def _read(self, timeout: float) -> None:
        try:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            return
        self.buf += data
        self._parse()

    async def recv(self, timeout: float = TIMEOUT) -> Frame:
        """The next frame; NoFrame after ``timeout``, Closed on EOF."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.frames:
            if self.eof:
                raise Closed("closed by the server")
            left = deadline - loop.time()
            if left <= 0:
                raise NoFrame(f"no frame within {timeout} s")
            try:
                await self._read(left)
            except asyncio.TimeoutError:
                raise NoFrame(f"no frame within {timeout} s") from None
        return self.frames.popleft()

    async def expect(
        self, command: int, msgid: int | None = None, timeout: float = TIMEOUT
    ) -> Frame:
        f = await self.recv(timeout)
        assert f.command == command, f"want {C(command).name}, got {f}"
        if msgid is not None:
            assert f.msgid == msgid, f"want msgid {msgid}, got {f}"
        return f

    async def silent(self, window: float = QUIET) -> None:
        """Assert that no frame arrives (and no close) within ``window``."""
        try:
            f = await self.recv(window)
        except NoFrame:
            return
        raise AssertionError(f"unexpected frame {f}")

    async def closed(self, timeout: float = TIMEOUT) -> list[Frame]:
        """Wait for the server to close; return the frames sent before."""
        got = []
        while True:
            try:
                got.append(await self.recv(timeout))
            except Closed:
                return got

    # requests

    async def call(
        self, command: int, payload: bytes = b"", msgid: int | None = None
    ) -> Frame:
        """Send one request; return the first frame on its msgid.

        Frames on other msgids that come first (assignments, results) are
        kept for :meth:`recv`.
        """
        m = self.next_msgid() if msgid is None else msgid
        self.send(req(m, command, payload))
        other: list[Frame] = []
        try:
            while True:
                f = await self.recv()
                if f.msgid == m:
                    return f
                other.append(f)
        finally:
            self.frames.extendleft(reversed(other))

    async def ok(self, command: int, payload: bytes = b"") -> None:
        f = await self.call(command, payload)
        assert (f.command, f.payload) == (C.SUCCESS, b""), f

    async def register(self, ctype: int = ClientType.CLIENT, extra: bytes = b"") -> int:
        self.send(registration(ctype, extra))
        f = await self.recv()
        assert f.msgid is None
        assert self.conn_id is not None
        return self.conn_id

    async def ping(self) -> None:
        f = await self.call(C.PING)
        assert (f.command, f.payload) == (C.PONG, b"")

    async def status(self) -> dict[bytes, Stat]:
        return parse_status(await self.status_text())

    async def status_text(self) -> bytes:
        f = await self.call(C.STATUS)
        assert f.command == C.DATA
        return f.payload

    async def dump(self) -> list[JobV]:
        f = await self.call(C.DUMP)
        assert f.command == C.DATA
        return parse_job_list(f.payload)

    async def config_get(self, key: bytes) -> int:
        f = await self.call(C.CONFIG_GET, s8(key))
        assert f.command == C.CONFIG and len(f.payload) == 4
        return int(struct.unpack(">I", f.payload)[0])

    async def config_set(self, key: bytes, value: int) -> None:
        await self.ok(C.CONFIG_SET, s8(key) + struct.pack(">I", value))

    async def submit(
        self, func: bytes, name: bytes, workload: bytes = b"", **kw: int
    ) -> None:
        await self.ok(C.SUBMIT_JOB, job_bytes(func, name, workload, **kw))

    async def run_job(
        self, func: bytes, name: bytes, workload: bytes = b"", **kw: int
    ) -> int:
        """Send RUN_JOB (no reply expected yet); return its msgid."""
        m = self.next_msgid()
        self.send(req(m, C.RUN_JOB, job_bytes(func, name, workload, **kw)))
        return m

    # worker requests

    async def can_do(self, *funcs: bytes) -> None:
        for func in funcs:
            await self.ok(C.CAN_DO, s8(func))

    async def grab(self, msgid: int) -> None:
        """GRAB_JOB: SUCCESS on the same msgid comes first (item 37)."""
        f = await self.call(C.GRAB_JOB, msgid=msgid)
        assert (f.command, f.payload) == (C.SUCCESS, b""), f

    async def assignment(self, timeout: float = TIMEOUT) -> tuple[int, JobV]:
        f = await self.expect(C.JOB_ASSIGN, timeout=timeout)
        assert f.msgid is not None
        return f.msgid, parse_one_job(f.payload)

    def assigned(self, msgid: int) -> None:
        """JOB_ASSIGNED: no reply."""
        self.send(req(msgid, C.JOB_ASSIGNED))

    async def done(self, func: bytes, name: bytes, result: bytes = b"") -> None:
        await self.ok(C.WORK_DONE, handle(func, name) + result)

    async def acquire(self, lock: bytes, count: int, func: bytes, name: bytes) -> int:
        payload = s8(lock) + struct.pack(">h", count) + handle(func, name)
        f = await self.call(C.ACQUIRE, payload)
        assert f.command == C.ACQUIRED and len(f.payload) == 1, f
        return f.payload[0]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


# -- the server under test --


class Clock:
    """Real time plus an offset that :meth:`Env.jump` moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class Env:
    """A running server, its clock, and connection helpers."""

    def __init__(self, server: Server, clock: Clock) -> None:
        self.server = server
        self.clock = clock
        self.conns: list[Conn] = []

    def address(self, transport: str = "tcp") -> str:
        return next(a for a in self.server.addresses if a.startswith(transport))

    def now(self) -> int:
        return int(self.clock())

    async def open(self, transport: str = "tcp") -> Conn:
        conn = await Conn.open(self.address(transport))
        self.conns.append(conn)
        return conn

    async def client(self, transport: str = "tcp") -> Conn:
        conn = await self.open(transport)
        await conn.register(ClientType.CLIENT)
        return conn

    async def worker(
        self, *funcs: bytes, slots: tuple[int, ...] = (), transport: str = "tcp"
    ) -> Conn:
        conn = await self.open(transport)
        await conn.register(ClientType.WORKER)
        await conn.can_do(*funcs)
        for m in slots:
            await conn.grab(m)
        return conn

    def align(self) -> None:
        """Move the clock to just after its next whole second (no server tick)."""
        t = self.clock()
        self.clock.offset += math.ceil(t) - t + 0.01

    async def jump(self, seconds: float, step: float = 1.0) -> None:
        """Move the clock forward, running the server's timer every ``step``."""
        left = seconds
        while left > 0:
            d = min(step, left)
            self.clock.offset += d
            left -= d
            self.server.poke()
            await asyncio.sleep(0)
        await asyncio.sleep(0.01)

    async def close(self) -> None:
        for conn in self.conns:
            await conn.close()


@contextlib.asynccontextmanager
async def serve(
    *, unix: bool = False, config: dict[str, int] | None = None
) -> AsyncIterator[Env]:
    clock = Clock()
    async with running_server(unix=unix, config=config, clock=clock) as srv:
        env = Env(srv, clock)
        try:
            yield env
        finally:
            await env.close()


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def running_pair(env: Env) -> Conn:
    """A worker of ``f`` running ``h1`` (slot 1) and ``h2`` (slot 2), confirmed."""
    w = await env.worker(b"f", slots=(1, 2))
    c = await env.client()
    await c.submit(b"f", b"h1")
    await c.submit(b"f", b"h2")
    got = {}
    for _ in range(2):
        m, job = await w.assignment()
        w.assigned(m)
        got[job.name] = m
    assert sorted(got) == [b"h1", b"h2"]
    await w.ping()  # the confirmations were handled
    return w


# -- which twins --


def test_implementations_in_use(
    run: Runner, record_property: Callable[[str, object], None]
) -> None:
    expected = "python" if NO_EXTENSIONS else "cython"
    record_property("codec", codec.IMPLEMENTATION)
    record_property("wheel", wheel.IMPLEMENTATION)
    assert codec.IMPLEMENTATION == expected
    assert wheel.IMPLEMENTATION == expected
    mod = {"cython": "_c", "python": "_py"}[expected]
    assert server_protocol.Parser.__module__ == f"periodic_fast._codec{mod}"

    async def main() -> None:
        async with serve() as env:
            wheel_type = type(env.server.scheduler._wheel)  # type: ignore[attr-defined]
            assert wheel_type.__module__ == f"periodic_fast._wheel{mod}"
            c = await env.client()
            await c.ping()

    run(main())


# -- framing and registration (items 1-12) --


def test_item_01_server_frames_magic_length_crc(run: Runner, transport: str) -> None:
    async def main() -> None:
        async with serve(unix=True) as env:
            c = await env.open(transport)
            c.send(registration(1))
            reg = await c.recv()
            body = b"\x1e" + reg.payload
            assert reg.raw == MAGIC_RES + struct.pack(">II", 5, zlib.crc32(body)) + body
            c.send(req(7, C.PING))
            pong = await c.recv()
            body = struct.pack(">IB", 7, C.PONG)
            assert (
                pong.raw == MAGIC_RES + struct.pack(">II", 5, zlib.crc32(body)) + body
            )
            await c.submit(b"f", b"j", b"w" * 1000, sched_at=env.now() + 100)
            f = await c.call(C.DUMP)  # a long body: checked by Conn._parse
            magic, length, crc = _HEADER.unpack_from(f.raw)
            assert magic == MAGIC_RES and length == len(f.raw) - 12 > 1000
            assert crc == zlib.crc32(f.raw[12:])

    run(main())


def test_item_02_wrong_crc_closes_without_reply(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            bystander = await env.client()
            c = await env.client()
            good = req(1, C.PING)
            bad = good[:8] + struct.pack(">I", zlib.crc32(good[12:]) ^ 1) + good[12:]
            c.send(bad)
            assert await c.closed() == []
            await bystander.ping()

    run(main())


def test_item_03_bytes_before_magic_skipped(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            c.send(b"garbage\x00RE" + req(5, C.PING))
            await c.expect(C.PONG, msgid=5)
            await c.ping()

    run(main())


def test_item_04_registration_reply_first(run: Runner, transport: str) -> None:
    async def main() -> None:
        async with serve(unix=True) as env:
            ids = set()
            for ctype in (ClientType.CLIENT, ClientType.WORKER):
                c = await env.open(transport)
                c.send(registration(ctype) + req(3, C.PING))  # pipelined
                reg = await c.recv()
                assert reg.msgid is None and len(reg.payload) == 4
                assert reg.raw[12] == 0x1E
                ids.add(reg.payload)
                await c.expect(C.PONG, msgid=3)
            assert len(ids) == 2
            # the roles are what the type byte says
            c = env.conns[0]
            f = await c.call(C.CAN_DO, s8(b"f"))
            assert f.command == C.NO_WORKER
            w = env.conns[1]
            await w.can_do(b"f")

    run(main())


def test_item_05_registration_with_identity(run: Runner) -> None:
    def ident(name: bytes, token: bytes) -> bytes:
        return (
            struct.pack(">q", len(name)) + name + struct.pack(">q", len(token)) + token
        )

    async def main() -> None:
        async with serve() as env:
            c = await env.open()
            await c.register(ClientType.AUTH_CLIENT, ident(b"alice", b"secret"))
            await c.ping()
            await c.submit(b"f", b"j")
            w = await env.open()
            await w.register(ClientType.AUTH_WORKER, ident(b"bob", b""))
            await w.ping()
            await w.can_do(b"f")

    run(main())


@pytest.mark.parametrize(
    "reg",
    [registration(5), registration(0), registration(1, b"\x00"), registration(2, b"x")],
    ids=["type5", "type0", "client-trailing", "worker-trailing"],
)
def test_item_06_bad_registration_closes_without_reply(run: Runner, reg: bytes) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.open()
            c.send(reg)
            assert await c.closed() == []
            assert not c.registered
            ok = await env.client()
            await ok.ping()

    run(main())


def test_item_07_requests_pipelined_with_registration(
    run: Runner, transport: str
) -> None:
    async def main() -> None:
        async with serve(unix=True) as env:
            w = await env.open(transport)
            w.send(
                registration(ClientType.WORKER)
                + req(1, C.CAN_DO, s8(b"f"))
                + req(2, C.GRAB_JOB)
                + req(3, C.PING)
                + req(4, C.SUBMIT_JOB, job_bytes(b"f", b"j"))
            )
            reg = await w.recv()
            assert reg.msgid is None
            await w.expect(C.SUCCESS, msgid=1)
            await w.expect(C.SUCCESS, msgid=2)
            await w.expect(C.PONG, msgid=3)
            got = {(await w.recv()).command for _ in range(2)}
            assert got == {C.SUCCESS, C.JOB_ASSIGN}

    run(main())


def test_item_08_replies_matched_by_msgid(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            # two requests in flight: the RUN_JOB is answered after the PING
            c.send(req(100, C.RUN_JOB, job_bytes(b"f", b"j")) + req(101, C.PING))
            await c.expect(C.PONG, msgid=101)
            m, _ = await w.assignment()
            w.assigned(m)
            await w.done(b"f", b"j", b"res")
            f = await c.expect(C.DATA, msgid=100)
            assert f.payload == b"res"
            # several replies in one write still carry their own msgids
            c.send(req(0xFFFFFFFF, C.STATUS) + req(0, C.PING) + req(0x01020304, C.DUMP))
            got = {(await c.recv()).msgid for _ in range(3)}
            assert got == {0xFFFFFFFF, 0, 0x01020304}

    run(main())


@pytest.mark.parametrize("command", [35, 36, 128, 255])
def test_item_09_command_out_of_range_closes(run: Runner, command: int) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            c.send(req(1, command))
            assert await c.closed() == []
            other = await env.client()
            await other.ping()

    run(main())


def test_item_10_unknown_is_echoed(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            for conn in (await env.client(), await env.worker()):
                f = await conn.call(C.UNKNOWN, msgid=42)
                assert (f.msgid, f.command, f.payload) == (42, C.UNKNOWN, b"")

    run(main())


def test_item_11_ping_with_payload_closes(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            c.send(req(1, C.PING, b"x"))
            assert await c.closed() == []

    run(main())


def test_item_12_keepalive(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            idle = await env.client()
            worker = await env.worker(b"f", slots=(1,))
            await env.jump(110)
            await idle.silent(0.05)  # still open
            await worker.ping()
            await env.jump(21)  # 131 s idle: the 10 s sweep has closed it
            assert await idle.closed() == []
            await worker.ping()  # active 21 s ago: kept
            # keepalive 0: never closed for idleness
            admin = await env.client()
            await admin.config_set(b"keepalive", 0)
            assert await admin.config_get(b"keepalive") == 0
            await env.jump(1000, step=5)
            for conn in (admin, worker):
                await conn.silent(0.05)
                await conn.ping()

    run(main())


# -- basic commands (items 13-30) --


def test_item_13_ping_pong_from_client_and_worker(run: Runner, transport: str) -> None:
    async def main() -> None:
        async with serve(unix=True) as env:
            for conn in (
                await env.client(transport),
                await env.worker(transport=transport),
            ):
                conn.send(req(0xABCDEF01, C.PING))
                f = await conn.recv()
                assert f.raw[12:] == b"\xab\xcd\xef\x01\x0a"

    run(main())


def test_item_14_submit_job_success_byte(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            c.send(req(9, C.SUBMIT_JOB, job_bytes(b"f", b"j", b"w")))
            f = await c.recv()
            assert f.raw[12:] == struct.pack(">I", 9) + b"\x10"

    run(main())


def test_item_15_sleep_gets_noop(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker()
            w.send(req(9, C.SLEEP))
            f = await w.recv()
            assert f.raw[12:] == struct.pack(">I", 9) + b"\x00"

    run(main())


def test_item_16_can_do_counts_once_per_connection(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f")
            c = await env.client()
            assert (await c.status())[b"f"][0] == 1
            await w.can_do(b"f")
            assert (await c.status())[b"f"][0] == 1

    run(main())


def test_item_17_worker_count_follows_connections(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w1 = await env.worker(b"f")
            await env.worker(b"f")
            c = await env.client()
            assert (await c.status())[b"f"][0] == 2
            await w1.close()

            async def one() -> bool:
                return (await c.status())[b"f"][0] == 1

            await eventually(one)

    run(main())


def test_item_18_cant_do(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", b"g")
            c = await env.client()
            await w.ok(C.CANT_DO, s8(b"f"))
            st = await c.status()
            assert (st[b"f"][0], st[b"g"][0]) == (0, 1)
            await w.ok(C.CANT_DO, s8(b"f"))  # not registered any more
            await w.ok(C.CANT_DO, s8(b"never"))
            st2 = await c.status()
            assert (st2[b"f"][0], st2[b"g"][0]) == (0, 1)
            assert b"never" not in st2

    run(main())


def test_item_19_status_text_format(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            assert await c.status_text() == b""
            t = env.now()
            await c.submit(b"b", b"j", sched_at=t + 500)
            await c.submit(b"c", b"j", sched_at=t + 700)
            await env.worker(b"a")
            before = env.now()
            text = await c.status_text()
            after = env.now()
            assert not text.endswith(b"\n")
            lines = text.split(b"\n")
            assert [ln.split(b",")[0] for ln in lines] == [b"a", b"b", b"c"]
            assert all(re.fullmatch(rb"[^,]+(,\d+){5}", ln) for ln in lines)
            a_sched = int(lines[0].rsplit(b",", 1)[1])
            assert before <= a_sched <= after
            assert lines[0] == b"a,1,0,0,0,%d" % a_sched
            assert lines[1:] == [
                b"b,0,1,0,0,%d" % (t + 500),
                b"c,0,1,0,0,%d" % (t + 700),
            ]

    run(main())


async def _mixed_states(env: Env) -> tuple[Conn, int]:
    """f: h1 running (holds L), h2 locked, p1 / p2 pending in the future."""
    w = await running_pair(env)
    assert await w.acquire(b"L", 1, b"f", b"h1") == 1
    assert await w.acquire(b"L", 1, b"f", b"h2") == 0
    c = await env.client()
    t = env.now()
    await c.submit(b"f", b"p1", sched_at=t + 100)
    await c.submit(b"f", b"p2", sched_at=t + 50)
    return c, t


def test_item_20_status_counts_and_sched_at(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c, t = await _mixed_states(env)
            await env.worker(b"idle")
            before = env.now()
            st = await c.status()
            after = env.now()
            assert st[b"f"] == (1, 4, 1, 1, t + 50)
            w, j, p, lk, sched = st[b"idle"]
            assert (w, j, p, lk) == (1, 0, 0, 0) and before <= sched <= after

    run(main())


def test_item_21_func_with_only_jobs_has_zero_workers(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            await c.submit(b"lonely", b"j")
            st = await c.status()
            assert st[b"lonely"][:4] == (0, 1, 0, 0)

    run(main())


CONFIG_DEFAULTS = {
    b"timeout": 600,
    b"assign-wait": 2,
    b"keepalive": 120,
    b"lock-timeout": 300,
    b"max-batch-size": 500,
    b"max-pool-size": 2,
    b"run-job-aggressive": 0,
}


def test_item_22_config_defaults(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            f = await c.call(C.CONFIG_GET, s8(b"timeout"), msgid=3)
            assert f.raw[12:] == struct.pack(">I", 3) + b"\x18\x00\x00\x02\x58"
            for key, value in CONFIG_DEFAULTS.items():
                assert await c.config_get(key) == value, key

    run(main())


def test_item_23_config_set_then_get(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            await c.config_set(b"timeout", 30)
            assert await c.config_get(b"timeout") == 30
            other = await env.client()
            assert await other.config_get(b"timeout") == 30

    run(main())


def test_item_24_unknown_config_key(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            assert await c.config_get(b"poll-interval") == 0
            await c.config_set(b"poll-interval", 7)
            assert await c.config_get(b"poll-interval") == 0

    run(main())


def test_item_25_dump_has_every_state(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c, t = await _mixed_states(env)
            f = await c.call(C.DUMP)
            assert f.command == C.DATA
            assert struct.unpack_from(">Q", f.payload)[0] == 4
            jobs = {j.name: j for j in parse_job_list(f.payload)}
            assert set(jobs) == {b"h1", b"h2", b"p1", b"p2"}
            assert jobs[b"p2"].sched_at == t + 50
            empty = await (await env.client()).call(C.DUMP)
            assert empty.payload != b""  # count prefix at least

    run(main())


def test_item_26_load_of_a_dump(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c, _ = await _mixed_states(env)
            blob = (await c.call(C.DUMP)).payload
            async with serve() as env2:
                c2 = await env2.client()
                await c2.ok(C.LOAD, blob)
                assert (await c2.status())[b"f"][1:4] == (4, 0, 0)
                names = sorted(j.name for j in await c2.dump())
                assert names == [b"h1", b"h2", b"p1", b"p2"]
                # pending for real: a worker gets the due ones
                w = await env2.worker(b"f", slots=(1, 2))
                got = {(await w.assignment())[1].name for _ in range(2)}
                assert got == {b"h1", b"h2"}

    run(main())


def test_item_27_shutdown(run: Runner) -> None:
    async def main() -> None:
        async with serve(unix=True) as env:
            tcp = parse_address(env.address("tcp"))
            unix_path = parse_address(env.address("unix")).host
            assert unix_path is not None and os.path.exists(unix_path)
            c = await env.client()
            c.send(req(1, C.SHUTDOWN))
            assert await c.closed() == []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TIMEOUT
            while True:
                try:
                    _, wr = await asyncio.open_connection(tcp.host, tcp.port)
                except OSError:
                    break
                wr.close()
                assert loop.time() < deadline, "still listening"
                await asyncio.sleep(0.02)
            assert not os.path.exists(unix_path)

    run(main())


def test_item_28_client_role_worker_commands_refused(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            await c.submit(b"f", b"j")
            before = await c.status()
            for command, payload in [
                (C.GRAB_JOB, b""),
                (C.CAN_DO, s8(b"f")),
                (C.BROADCAST, s8(b"f")),
                (C.WORK_DONE, handle(b"f", b"j")),
                (C.SLEEP, b""),
            ]:
                f = await c.call(command, payload)
                assert (f.command, f.payload) == (C.NO_WORKER, b""), command
            await c.silent()  # no JOB_ASSIGN for the refused GRAB_JOB
            assert await c.status() == before
            assert [j.name for j in await c.dump()] == [b"j"]

    run(main())


def test_item_29_worker_role_may_use_client_commands(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            runner = await env.worker(b"g")
            doer = await env.worker(b"f", slots=(1,))
            await runner.submit(b"g", b"s", sched_at=env.now() + 100)
            assert (await runner.status())[b"g"][:2] == (1, 1)
            m = await runner.run_job(b"f", b"r", b"in")
            am, job = await doer.assignment()
            assert job.workload == b"in"
            doer.assigned(am)
            await doer.done(b"f", b"r", b"out")
            f = await runner.expect(C.DATA, msgid=m)
            assert f.payload == b"out"

    run(main())


def test_item_30_noop_and_success_from_a_client_ignored(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            for conn in (await env.client(), await env.worker()):
                conn.send(req(1, C.NOOP) + req(2, C.SUCCESS))
                await conn.silent()
                await conn.ping()

    run(main())


# -- job identity and life cycle (items 31-54) --


def test_item_31_past_sched_at_stored_as_now(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            before = env.now()
            await c.submit(b"f", b"j", sched_at=1000)
            after = env.now()
            [job] = await c.dump()
            assert before <= job.sched_at <= after

    run(main())


def test_item_32_resubmit_pending_replaces(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            t = env.now()
            await c.submit(b"f", b"j", b"old", sched_at=t + 100, count=1, timeout=50)
            await c.submit(b"f", b"j", b"new", sched_at=t - 5, count=4, timeout=9)
            [job] = await c.dump()
            assert (job.workload, job.count, job.timeout) == (b"new", 4, 9)
            assert t - 1 <= job.sched_at <= env.now()  # past: now (item 31)
            w = await env.worker(b"f", slots=(1,))
            _, got = await w.assignment()
            assert (got.workload, got.count, got.timeout) == (b"new", 4, 9)
            await w.silent()

    run(main())


def test_item_33_resubmit_running_is_ignored(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1, 2))
            c = await env.client()
            await c.submit(b"f", b"j", b"a")
            m, _ = await w.assignment()
            w.assigned(m)
            await c.submit(b"f", b"j", b"b", sched_at=env.now() + 100)
            await w.silent()
            [job] = await c.dump()
            assert job.workload == b"a"
            assert (await c.status())[b"f"][1:3] == (1, 1)

    run(main())


def test_item_34_after_done_same_name_runs_again(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j", b"1")
            m, _ = await w.assignment()
            w.assigned(m)
            await w.done(b"f", b"j")
            await w.grab(2)
            await c.submit(b"f", b"j", b"2")
            m2, job = await w.assignment()
            assert (m2, job.workload) == (2, b"2")

    run(main())


def test_item_35_future_job_assigned_at_its_time(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            env.align()  # whole seconds: "before its time" has a margin
            at = env.now() + 3
            await c.submit(b"f", b"later", sched_at=at)
            await w.silent()
            await env.jump(2)
            await w.silent()
            await env.jump(2)
            _, job = await w.assignment(timeout=2.0)
            assert (job.name, job.sched_at) == (b"later", at)

    run(main())


def test_item_36_job_waits_for_a_worker(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            await c.submit(b"f", b"j")
            await env.jump(3)
            assert (await c.status())[b"f"][:3] == (0, 1, 0)
            w = await env.open()
            await w.register(ClientType.WORKER)
            await w.grab(1)  # grab before CAN_DO: the slot waits
            await w.silent()
            await w.can_do(b"f")
            m, job = await w.assignment()
            assert (m, job.name) == (1, b"j")

    run(main())


def test_item_37_grab_job_success_never_no_job(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f")
            w.send(req(77, C.GRAB_JOB))
            f = await w.recv()
            assert f.raw[12:] == struct.pack(">I", 77) + b"\x10"
            await w.silent()  # no NO_JOB (6), nothing

    run(main())


def test_item_38_job_assign_on_slot_msgid_with_timeout(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(0xDEADBEEF,))
            c = await env.client()
            await c.submit(b"f", b"j", b"wl")
            m, job = await w.assignment()
            assert m == 0xDEADBEEF
            assert (job.version, job.timeout, job.count) == (2, 600, 0)
            assert (job.func, job.name, job.workload) == (b"f", b"j", b"wl")

    run(main())


def test_item_39_slot_used_once(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(5,))
            c = await env.client()
            await c.submit(b"f", b"a")
            await c.submit(b"f", b"b")
            m, first = await w.assignment()
            assert m == 5
            w.assigned(m)
            await w.silent()
            await w.grab(5)
            m2, second = await w.assignment()
            assert m2 == 5 and {first.name, second.name} == {b"a", b"b"}

    run(main())


def test_item_40_repeated_grab_one_slot(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(5, 5, 5))
            c = await env.client()
            await c.submit(b"f", b"a")
            await c.submit(b"f", b"b")
            m, _ = await w.assignment()
            assert m == 5
            await w.silent()

    run(main())


def test_item_41_jobs_only_to_registered_workers(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            other = await env.worker(b"g", slots=(1, 2))
            mine = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j")
            m, job = await mine.assignment()
            assert (m, job.func) == (1, b"f")
            await c.submit(b"f", b"k")
            await other.silent()

    run(main())


def test_item_42_job_assigned_confirms_without_reply(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j")
            m, _ = await w.assignment()
            w.assigned(m)
            await w.silent()
            assert (await c.status())[b"f"][2] == 1
            await env.jump(5)  # past assign-wait: confirmed, kept
            await w.silent()
            await w.ping()
            assert (await c.status())[b"f"][2] == 1

    run(main())


def test_item_43_job_unassigned_goes_elsewhere(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w1 = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j")
            m, _ = await w1.assignment()
            w2 = await env.worker(b"f", slots=(2,))
            w1.send(req(m, C.JOB_UNASSIGNED))
            m2, job = await w2.assignment(timeout=2.0)
            assert (m2, job.name) == (2, b"j")
            await w1.silent()
            await w1.ping()

    run(main())


def test_item_44_no_confirmation_closes_and_reassigns(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w1 = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j")
            await w1.assignment()  # never confirmed
            w2 = await env.worker(b"f", slots=(2,))
            await env.jump(3)
            assert await w1.closed() == []
            m, job = await w2.assignment()
            assert (m, job.name) == (2, b"j")

    run(main())


def test_item_45_grab_reusing_unconfirmed_msgid(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"a")
            m, _ = await w.assignment()
            await w.grab(m)  # SUCCESS, but no slot
            await c.submit(b"f", b"b")
            await w.silent()
            w.assigned(m)  # still confirms "a"
            await w.ping()
            st = await c.status()
            assert st[b"f"][1:3] == (2, 1)
            await env.jump(4)  # past assign-wait: not closed
            await w.silent()
            await w.ping()

    run(main())


def test_item_46_work_done_deletes(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j")
            m, _ = await w.assignment()
            w.assigned(m)
            await w.done(b"f", b"j", b"result")
            assert (await c.status())[b"f"][1:3] == (0, 0)
            assert await c.dump() == []

    run(main())


def test_item_47_work_done_for_pending_or_unknown(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f")
            c = await env.client()
            await c.submit(b"f", b"p", sched_at=env.now() + 100)
            await w.done(b"f", b"p")
            assert await c.dump() == []
            await w.done(b"f", b"unknown")
            await w.done(b"nofunc", b"x")

    run(main())


def test_item_48_work_fail_retries_after_a_second(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j", count=2)
            m, job = await w.assignment()
            assert job.count == 2
            w.assigned(m)
            await w.grab(2)
            before = env.now()
            await w.ok(C.WORK_FAIL, handle(b"f", b"j"))
            after = env.now()
            await env.jump(1.5)
            m2, again = await w.assignment()
            assert m2 == 2 and again.count == 2
            assert before + 1 <= again.sched_at <= after + 1

    run(main())


def test_item_49_sched_later(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j", b"wl")
            m, job = await w.assignment()
            assert (job.version, job.count) == (2, 0)
            w.assigned(m)
            before = env.now()
            await w.ok(C.SCHED_LATER, handle(b"f", b"j") + struct.pack(">qh", 5, 1))
            after = env.now()
            [stored] = await c.dump()
            # at least 5 s after the report: from the next whole second
            assert before + 5 <= stored.sched_at <= after + 6 and stored.count == 1
            assert (await c.status())[b"f"][1:3] == (1, 0)
            await w.grab(2)
            await env.jump(3)
            await w.silent()
            await env.jump(3)
            m2, again = await w.assignment()
            assert m2 == 2
            assert (again.version, again.count, again.timeout) == (3, 1, 600)
            assert again.workload == b"wl"

    run(main())


def test_item_50_timeout_fails_and_reassigns(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            env.align()
            # the job's own timeout: failed at +6, retried at +7
            await c.submit(b"f", b"j", timeout=5)
            m, job = await w.assignment()
            assert job.timeout == 5
            w.assigned(m)
            await w.grab(2)
            await env.jump(4)
            await w.silent()
            await env.jump(3.5)  # stop before the retry's assign-wait ends
            m2, again = await w.assignment()
            assert (m2, again.name) == (2, b"j")
            w.assigned(m2)
            await w.done(b"f", b"j")
            # the config default
            await c.config_set(b"timeout", 3)
            await w.grab(3)
            env.align()
            await c.submit(b"f", b"k")
            m3, job3 = await w.assignment()
            assert job3.timeout == 3
            w.assigned(m3)
            await w.grab(4)
            await env.jump(2)
            await w.silent()
            await env.jump(3.5)
            m4, again3 = await w.assignment()
            assert (m4, again3.name) == (4, b"k")

    run(main())


def test_item_51_closing_worker_requeues_its_job(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w1 = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j")
            m, _ = await w1.assignment()
            w1.assigned(m)
            await w1.ping()
            w2 = await env.worker(b"f", slots=(2,))
            assert (await c.status())[b"f"][:3] == (2, 1, 1)
            await w1.close()

            async def dropped() -> bool:
                return (await c.status())[b"f"][0] == 1

            await eventually(dropped)
            await env.jump(2)
            m2, job = await w2.assignment()
            assert (m2, job.name) == (2, b"j")

    run(main())


def test_item_52_remove_pending_future_job(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await c.submit(b"f", b"j", sched_at=env.now() + 3)
            await c.submit(b"f", b"k", sched_at=env.now() + 300)
            await c.ok(C.REMOVE_JOB, handle(b"f", b"j"))
            assert (await c.status())[b"f"][1] == 1
            await env.jump(6)
            await w.silent()
            assert [j.name for j in await c.dump()] == [b"k"]

    run(main())


def test_item_53_drop_func(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            await c.submit(b"gone", b"j1")
            await c.submit(b"gone", b"j2", sched_at=env.now() + 100)
            await env.worker(b"kept")
            await c.submit(b"kept", b"k", sched_at=env.now() + 100)
            before = await c.status()
            await c.ok(C.DROP_FUNC, s8(b"gone"))
            await c.ok(C.DROP_FUNC, s8(b"kept"))
            after = await c.status()
            assert b"gone" not in after
            assert after[b"kept"] == before[b"kept"]
            assert [(j.func, j.name) for j in await c.dump()] == [(b"kept", b"k")]

    run(main())


def test_item_54_broadcast(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            ws = []
            for _ in range(2):
                w = await env.open()
                await w.register(ClientType.WORKER)
                await w.ok(C.BROADCAST, s8(b"b"))
                await w.grab(1)
                ws.append(w)
            c = await env.client()
            await c.submit(b"b", b"all", b"x")
            for w in ws:
                m, job = await w.assignment()
                assert (m, job.name) == (1, b"all")
                w.assigned(m)
            await ws[0].done(b"b", b"all")
            assert await c.dump() == []
            assert (await c.status())[b"b"][1] == 0
            await ws[1].done(b"b", b"all")

    run(main())


# -- RUN_JOB and streaming (items 55-64) --


def test_item_55_run_job_without_worker(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            f = await c.call(C.RUN_JOB, job_bytes(b"f", b"j"))
            assert (f.command, f.payload) == (C.NO_WORKER, b"")
            assert await c.dump() == []
            assert b"f" not in await c.status()

    run(main())


def test_item_56_run_job_result(run: Runner, transport: str) -> None:
    async def main() -> None:
        async with serve(unix=True) as env:
            w = await env.worker(b"f", slots=(1,), transport=transport)
            c = await env.client(transport)
            m = await c.run_job(b"f", b"j", b"in")
            await c.silent()
            am, job = await w.assignment()
            assert job.workload == b"in"
            w.assigned(am)
            await w.done(b"f", b"j", b"x")
            f = await c.expect(C.DATA, msgid=m)
            assert f.payload == b"x"
            assert await c.dump() == []

    run(main())


def _run_job_ends_failed(run: Runner, how: str) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            m = await c.run_job(b"f", b"j")
            am, _ = await w.assignment()
            w.assigned(am)
            if how == "fail":
                await w.ok(C.WORK_FAIL, handle(b"f", b"j"))
            else:
                await w.ok(C.SCHED_LATER, handle(b"f", b"j") + struct.pack(">qh", 1, 0))
            f = await c.expect(C.DATA, msgid=m)
            assert f.payload == b"failed"
            assert await c.dump() == []
            await w.grab(2)
            await env.jump(3)
            await w.silent()  # not retried

    run(main())


def test_item_57_run_job_work_fail(run: Runner) -> None:
    _run_job_ends_failed(run, "fail")


def test_item_58_run_job_sched_later(run: Runner) -> None:
    _run_job_ends_failed(run, "sched_later")


def test_item_59_run_job_then_remove(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            await env.worker(b"f")  # registered, never grabs
            c = await env.client()
            m = await c.run_job(b"f", b"j")
            other = await env.client()
            await other.ok(C.REMOVE_JOB, handle(b"f", b"j"))
            f = await c.expect(C.DATA, msgid=m)
            assert f.payload == b"removed"
            assert await c.dump() == []

    run(main())


def test_item_60_run_job_expires(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            await env.worker(b"f")  # registered, never grabs
            c = await env.client()
            m = await c.run_job(b"f", b"j", timeout=2)
            await c.silent()
            await env.jump(12)
            f = await c.expect(C.DATA, msgid=m)
            assert f.payload == b"expired"
            assert await c.dump() == []

    run(main())


def test_item_61_run_job_of_a_running_handle(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1, 2))
            a = await env.client()
            b = await env.client()
            ma = await a.run_job(b"f", b"j", b"first")
            am, _ = await w.assignment()
            w.assigned(am)
            await w.ping()
            mb = await b.run_job(b"f", b"j", b"second")
            await w.silent()  # no second run
            await w.done(b"f", b"j", b"r")
            assert (await a.expect(C.DATA, msgid=ma)).payload == b"r"
            assert (await b.expect(C.DATA, msgid=mb)).payload == b"r"
            await w.silent()

    run(main())


def test_item_62_recv_data_stream_then_eof_before_result(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            mr = await c.run_job(b"f", b"j")
            f = await c.call(C.RECV_DATA, job_bytes(b"f", b"j"))
            assert (f.command, f.payload) == (C.SUCCESS, b"")
            md = f.msgid
            am, _ = await w.assignment()
            w.assigned(am)
            for chunk in (b"c1", b"c2"):
                await w.ok(C.WORK_DATA, handle(b"f", b"j") + chunk)
                f = await c.expect(C.DATA, msgid=md)
                assert f.payload == chunk
            await w.done(b"f", b"j", b"res")
            f = await c.expect(C.DATA, msgid=md)
            assert f.payload == b"EOF"
            f = await c.expect(C.DATA, msgid=mr)
            assert f.payload == b"res"

    run(main())


def test_item_63_recv_data_without_worker(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            f = await c.call(C.RECV_DATA, job_bytes(b"f", b"j"))
            assert (f.command, f.payload) == (C.NO_WORKER, b"")

    run(main())


def test_item_64_work_data_without_listener(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1,))
            c = await env.client()
            await w.ok(C.WORK_DATA, handle(b"f", b"unknown") + b"chunk")
            await c.submit(b"f", b"j")
            m, _ = await w.assignment()
            w.assigned(m)
            await w.ok(C.WORK_DATA, handle(b"f", b"j") + b"chunk")
            await c.silent()

    run(main())


# -- locks (items 65-70) --


def test_item_65_acquire_and_refuse(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await running_pair(env)
            assert await w.acquire(b"L", 1, b"f", b"h1") == 1
            assert await w.acquire(b"L", 1, b"f", b"h2") == 0
            c = await env.client()
            assert (await c.status())[b"f"][1:4] == (2, 1, 1)

    run(main())


def test_item_66_acquire_for_job_not_running(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f")
            c = await env.client()
            await c.submit(b"f", b"p", sched_at=env.now() + 100)
            assert await w.acquire(b"L", 1, b"f", b"p") == 1
            assert await w.acquire(b"L", 1, b"f", b"unknown") == 1
            # nothing recorded: running jobs still get the lock
            w2 = await running_pair(env)
            assert await w2.acquire(b"L", 1, b"f", b"h1") == 1
            assert (await c.status())[b"f"][3] == 0

    run(main())


def test_item_67_reacquire(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await running_pair(env)
            assert await w.acquire(b"L", 1, b"f", b"h1") == 1
            assert await w.acquire(b"L", 1, b"f", b"h1") == 1
            assert await w.acquire(b"L", 1, b"f", b"h2") == 0
            # h2 is parked now; once running again (60 s sweep) while queued: 0
            await w.grab(3)
            await env.jump(61)
            m, job = await w.assignment()
            assert job.name == b"h2"
            w.assigned(m)
            assert await w.acquire(b"L", 1, b"f", b"h2") == 0
            assert await w.acquire(b"L", 1, b"f", b"h1") == 1

    run(main())


def test_item_68_done_hands_the_lock_over(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await running_pair(env)
            assert await w.acquire(b"L", 1, b"f", b"h1") == 1
            assert await w.acquire(b"L", 1, b"f", b"h2") == 0
            await w.grab(3)
            await w.silent()
            await w.done(b"f", b"h1")  # no explicit RELEASE
            m, job = await w.assignment()
            assert (m, job.name) == (3, b"h2")
            w.assigned(m)
            assert await w.acquire(b"L", 1, b"f", b"h2") == 1
            c = await env.client()
            assert (await c.status())[b"f"][1:4] == (1, 1, 0)

    run(main())


def test_item_69_max_holders_grows(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f", slots=(1, 2, 3))
            c = await env.client()
            for name in (b"a", b"b", b"c"):
                await c.submit(b"f", name)
            for _ in range(3):
                m, _ = await w.assignment()
                w.assigned(m)
            await w.ping()
            assert await w.acquire(b"L", 1, b"f", b"a") == 1
            assert await w.acquire(b"L", 2, b"f", b"b") == 1
            assert await w.acquire(b"L", 1, b"f", b"c") == 0  # max stays 2

    run(main())


def test_item_70_release_unknown_lock(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            w = await env.worker(b"f")
            await w.ok(C.RELEASE, s8(b"nolock") + handle(b"f", b"j"))
            w2 = await running_pair(env)
            assert await w2.acquire(b"L", 1, b"f", b"h1") == 1
            await w2.ok(C.RELEASE, s8(b"L") + handle(b"f", b"h1"))
            await w2.ok(C.RELEASE, s8(b"L") + handle(b"f", b"h1"))
            assert await w2.acquire(b"L", 1, b"f", b"h2") == 1

    run(main())


# -- extensions (item 79) --


def test_item_79_assign_wait_zero_accepts_on_send(run: Runner) -> None:
    async def main() -> None:
        async with serve() as env:
            c = await env.client()
            await c.config_set(b"assign-wait", 0)
            w = await env.worker(b"f", slots=(1,))
            await c.submit(b"f", b"j")
            m, _ = await w.assignment()  # never confirmed (GO worker)
            await env.jump(10)
            await w.silent()
            await w.ping()
            assert (await c.status())[b"f"][1:3] == (1, 1)
            await w.grab(1)  # GO re-grabs the same msgid: a new slot
            await c.submit(b"f", b"k")
            m2, job = await w.assignment()
            assert (m2, job.name) == (1, b"k")
            await w.done(b"f", b"j", b"ok")
            await w.done(b"f", b"k", b"ok")
            assert await c.dump() == []

    run(main())


# -- authorization (items 71-76; server started with an auth file) --

AUTH_FILE = b"""\
client  alice  a-tok  f,g
worker  wally  w-tok  f
admin   root   r-tok  -
"""


def identity(name: bytes, token: bytes) -> bytes:
    """``hsbytes(name) + hsbytes(token)`` (protocol.md 1.4)."""
    return struct.pack(">q", len(name)) + name + struct.pack(">q", len(token)) + token


class AuthEnv(Env):
    """An :class:`Env` whose server reads the auth file at ``auth_path``."""

    def __init__(self, server: Server, clock: Clock, auth_path: str) -> None:
        super().__init__(server, clock)
        self.auth_path = auth_path


@contextlib.asynccontextmanager
async def serve_auth(text: bytes = AUTH_FILE) -> AsyncIterator[AuthEnv]:
    """Like :func:`serve`, with an auth file holding ``text``."""
    with tempfile.TemporaryDirectory(prefix="pf-auth-") as tmp:
        path = os.path.join(tmp, "auth")
        with open(path, "wb") as f:
            f.write(text)
        clock = Clock()
        async with running_server(unix=False, clock=clock, auth_file=path) as srv:
            env = AuthEnv(srv, clock, path)
            try:
                yield env
            finally:
                await env.close()


async def auth_conn(env: Env, ctype: int, name: bytes, token: bytes) -> Conn:
    conn = await env.open()
    await conn.register(ctype, identity(name, token))
    return conn


def test_item_71_no_identity_is_refused(run: Runner) -> None:
    # [deviation] the reference registers a type-1 connection and answers every
    # command (PING included) with NO_WORKER; we close it at registration,
    # without a reply, and likewise an unknown name or a wrong token.
    async def main() -> None:
        async with serve_auth() as env:
            for ctype, extra in (
                (ClientType.CLIENT, b""),
                (ClientType.WORKER, b""),
                (ClientType.AUTH_CLIENT, identity(b"alice", b"wrong")),
                (ClientType.AUTH_CLIENT, identity(b"nobody", b"a-tok")),
            ):
                conn = await env.open()
                conn.send(registration(ctype, extra))
                conn.send(req(1, C.PING))
                assert await conn.closed() == [], (ctype, extra)
            ok = await auth_conn(env, ClientType.AUTH_CLIENT, b"alice", b"a-tok")
            await ok.ping()

    run(main())


def test_item_72_client_identity_as_worker(run: Runner) -> None:
    async def main() -> None:
        async with serve_auth() as env:
            w = await auth_conn(env, ClientType.AUTH_WORKER, b"alice", b"a-tok")
            f = await w.call(C.CAN_DO, s8(b"f"))
            assert (f.command, f.payload) == (C.NO_WORKER, b"")
            f = await w.call(C.PING)  # the role check covers every command
            assert f.command == C.NO_WORKER
            root = await auth_conn(env, ClientType.AUTH_CLIENT, b"root", b"r-tok")
            assert await root.status() == {}

    run(main())


def test_item_73_func_check_on_submit(run: Runner) -> None:
    async def main() -> None:
        async with serve_auth() as env:
            c = await auth_conn(env, ClientType.AUTH_CLIENT, b"alice", b"a-tok")
            await c.submit(b"f", b"j")
            f = await c.call(C.SUBMIT_JOB, job_bytes(b"h", b"j"))
            assert (f.command, f.payload) == (C.NO_WORKER, b"")
            assert list(await c.status()) == [b"f"]
            root = await auth_conn(env, ClientType.AUTH_CLIENT, b"root", b"r-tok")
            assert [(j.func, j.name) for j in await root.dump()] == [(b"f", b"j")]

    run(main())


def test_item_74_status_filtered(run: Runner) -> None:
    async def main() -> None:
        async with serve_auth() as env:
            root = await auth_conn(env, ClientType.AUTH_CLIENT, b"root", b"r-tok")
            for func in (b"f", b"g", b"h"):
                await root.submit(func, b"j")
            c = await auth_conn(env, ClientType.AUTH_CLIENT, b"alice", b"a-tok")
            assert list(await c.status()) == [b"f", b"g"]
            w = await auth_conn(env, ClientType.AUTH_WORKER, b"wally", b"w-tok")
            assert list(await w.status()) == [b"f"]
            assert list(await root.status()) == [b"f", b"g", b"h"]

    run(main())


def test_item_75_admin_as_client_may_can_do(run: Runner) -> None:
    async def main() -> None:
        async with serve_auth() as env:
            root = await auth_conn(env, ClientType.AUTH_CLIENT, b"root", b"r-tok")
            await root.can_do(b"anything")
            assert (await root.status())[b"anything"][0] == 1
            await root.grab(7)
            await root.submit(b"anything", b"j")
            m, job = await root.assignment()
            assert (m, job.name) == (7, b"j")

    run(main())


def test_item_76_auth_file_reloaded(run: Runner) -> None:
    async def main() -> None:
        async with serve_auth() as env:  # checked every second (the default)
            c = await auth_conn(env, ClientType.AUTH_CLIENT, b"alice", b"a-tok")
            f = await c.call(C.SUBMIT_JOB, job_bytes(b"h", b"j"))
            assert f.command == C.NO_WORKER
            path = env.auth_path
            before = os.stat(path).st_mtime_ns
            with open(path, "wb") as fh:
                fh.write(AUTH_FILE.replace(b"f,g", b"f,g,h"))
            os.utime(path, ns=(before + 10**9, before + 10**9))  # a new mtime
            t0 = time.monotonic()

            async def allowed() -> bool:
                f = await c.call(C.SUBMIT_JOB, job_bytes(b"h", b"j"))
                return bool(f.command == C.SUCCESS)

            await eventually(allowed, timeout=3.0)
            assert time.monotonic() - t0 < 2.5  # within ~1-2 s

    run(main())
