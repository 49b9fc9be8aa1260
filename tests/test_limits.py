"""Every server limit, hit (docs/security.md, "Limits").

* ``max_connections``: the extra connection is closed at once, unanswered;
* ``max_frame``: a request frame above it closes that connection;
* ``max_output``: a peer that does not read its output is dropped;
* ``registration_timeout``: a silent connection is closed;
* ``max_jobs_per_func``: SUBMIT_JOB, RUN_JOB and LOAD beyond it get NO_WORKER
  and change nothing (sans-I/O and over a socket);
* the ``periodicd`` options that set them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
import time
import zlib
from typing import Any

import pytest

from periodic_fast.codec import Packet, Parser, encode_payload
from periodic_fast.constants import ClientType
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.scheduler import Scheduler
from periodic_fast.server.app import Server, parse_address
from periodic_fast.store.memory import MemoryStore
from periodic_fast.testing import ServerProcess, running_server

pytestmark = pytest.mark.timeout(60)

WAIT = 5.0
T0 = 1_700_000_000.0
_HEADER = struct.Struct(">4sII")


def frame(body: bytes) -> bytes:
    return _HEADER.pack(b"\x00REQ", len(body), zlib.crc32(body)) + body


class Raw:
    """A raw connection to the server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.parser = Parser(requests=False, registration=True)
        self.frames: list[Packet] = []
        self._msgid = 0

    @classmethod
    async def open(cls, address: str, rcvbuf: int = 0) -> Raw:
        addr = parse_address(address)
        assert addr.scheme == "tcp"
        if rcvbuf:  # a small receive buffer: the server's output backs up fast
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(sock, (addr.host, addr.port))
            r, w = await asyncio.open_connection(sock=sock)
        else:
            r, w = await asyncio.open_connection(addr.host, addr.port)
        return cls(r, w)

    async def recv(self) -> Packet | None:
        """The next frame; None when the server closed the connection."""
        while not self.frames:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            except ConnectionError:
                data = b""
            if not data:
                return None
            self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)

    async def register(self, ctype: int = ClientType.CLIENT) -> None:
        self.writer.write(frame(bytes((ctype,))))
        got = await self.recv()
        assert got is not None and got.msgid is None

    def send(self, command: int, payload: bytes = b"") -> int:
        self._msgid += 1
        self.writer.write(frame(struct.pack(">IB", self._msgid, command) + payload))
        return self._msgid

    async def call(self, command: int, *fields: Any) -> Packet | None:
        msgid = self.send(command, encode_payload(command, *fields))
        while True:
            got = await self.recv()
            if got is None or got.msgid == msgid:
                return got

    async def closed(self) -> bool:
        """True once the server closed the connection (within WAIT)."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            except ConnectionError:
                return True
            except asyncio.TimeoutError:
                return False
            if not data:
                return True
        return False

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def wait_until(pred: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def connections(srv: Server) -> int:
    return int(srv.scheduler.connection_count)  # type: ignore[attr-defined]


# -- max connections -------------------------------------------------------------


async def test_max_connections(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="periodic_fast.server")
    async with running_server(unix=False, max_connections=2) as srv:
        addr = srv.addresses[0]
        a, b = await Raw.open(addr), await Raw.open(addr)
        await a.register()
        await b.register()
        extra = await Raw.open(addr)
        extra.writer.write(frame(b"\x01"))
        assert await extra.recv() is None  # closed, no registration reply
        assert "max-connections" in caplog.text
        assert (await a.call(C.PING)) is not None  # the others are untouched
        await b.close()
        await wait_until(lambda: len(srv.hub.protocols) == 1)
        c = await Raw.open(addr)
        await c.register()  # room again
        assert connections(srv) == 2
        for r in (a, c, extra):
            await r.close()


# -- frame size ------------------------------------------------------------------------


async def test_max_frame() -> None:
    async with running_server(unix=False, max_frame=1024) as srv:
        addr = srv.addresses[0]
        ok = await Raw.open(addr)
        await ok.register()
        small = Job(b"f", b"small", b"x" * 900)
        got = await ok.call(C.SUBMIT_JOB, small)
        assert got is not None and got.command == C.SUCCESS
        big = Job(b"f", b"big", b"x" * 1100)
        ok.send(C.SUBMIT_JOB, encode_payload(C.SUBMIT_JOB, big))
        assert await ok.closed()
        await ok.close()
        jobs = srv.scheduler.jobs()  # type: ignore[attr-defined]
        assert [j.name for j in jobs] == [b"small"]


# -- pending output ----------------------------------------------------------------


async def test_max_output_drops_a_peer_that_does_not_read(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="periodic_fast.server")
    async with running_server(unix=False, max_output=64 * 1024) as srv:
        addr = srv.addresses[0]
        worker = await Raw.open(addr)
        await worker.register(ClientType.WORKER)
        got = await worker.call(C.CAN_DO, b"f")
        assert got is not None and got.command == C.SUCCESS
        slow = await Raw.open(addr, rcvbuf=4096)
        await slow.register()
        got = await slow.call(C.RECV_DATA, Job(b"f", b"j"))
        assert got is not None and got.command == C.SUCCESS
        # from now on ``slow`` reads nothing; the worker streams to it
        chunk = b"x" * 65536
        for _ in range(2000):  # bounded: far more than any socket buffers
            got = await worker.call(C.WORK_DATA, b"f", b"j", chunk)
            assert got is not None and got.command == C.SUCCESS
            if connections(srv) == 1:
                break
        assert connections(srv) == 1, "the slow reader was never dropped"
        assert "does not read its output" in caplog.text
        for r in (worker, slow):
            await r.close()


# -- registration timeout ----------------------------------------------------------


async def test_registration_timeout() -> None:
    async with running_server(unix=False, registration_timeout=0.3) as srv:
        addr = srv.addresses[0]
        silent = await Raw.open(addr)
        prompt = await Raw.open(addr)
        await prompt.register()
        t0 = time.monotonic()
        assert await silent.closed()
        assert time.monotonic() - t0 < 3
        await asyncio.sleep(0.4)
        assert (await prompt.call(C.PING)) is not None  # registered: kept
        for r in (silent, prompt):
            await r.close()


# -- jobs per func (sans-I/O) ------------------------------------------------------


class Peer:
    def __init__(self, s: Scheduler, cid: int, ctype: int) -> None:
        self.s, self.id = s, cid
        self.parser = Parser(requests=False)
        self.frames: list[Packet] = []
        self._msgid = 0
        s.connect(cid, ctype, None, self.send, lambda: None, T0)

    def send(self, data: bytes) -> None:
        self.frames.extend(self.parser.feed(data))

    def req(self, command: int, *fields: Any, msgid: int | None = None) -> list[int]:
        self._msgid += 1
        payload = encode_payload(command, *fields)
        self.s.handle(self.id, msgid or self._msgid, command, payload, T0)
        out, self.frames = self.frames, []
        return [p.command for p in out]


def test_max_jobs_per_func_sans_io() -> None:
    s = Scheduler(MemoryStore(), T0, max_jobs_per_func=2)
    c = Peer(s, 1, ClientType.CLIENT)
    later = int(T0) + 100
    assert c.req(C.SUBMIT_JOB, Job(b"f", b"a", sched_at=later)) == [C.SUCCESS]
    assert c.req(C.SUBMIT_JOB, Job(b"f", b"b", sched_at=later)) == [C.SUCCESS]
    assert c.req(C.SUBMIT_JOB, Job(b"f", b"c")) == [C.NO_WORKER]
    assert s.job(b"f", b"c") is None
    # replacing a stored job is no new job; other funcs have their own count
    assert c.req(C.SUBMIT_JOB, Job(b"f", b"a", b"new", later)) == [C.SUCCESS]
    stored = s.job(b"f", b"a")
    assert stored is not None and stored[0].workload == b"new"
    assert c.req(C.SUBMIT_JOB, Job(b"g", b"c")) == [C.SUCCESS]
    # LOAD: refused as a whole when one func would overflow
    blob = [Job(b"g", b"d"), Job(b"h", b"x"), Job(b"g", b"e")]
    assert c.req(C.LOAD, blob) == [C.NO_WORKER]
    assert s.job(b"h", b"x") is None and s.job(b"g", b"d") is None
    assert c.req(C.LOAD, blob[:2] + [Job(b"g", b"c")]) == [C.SUCCESS]
    assert s.job(b"h", b"x") is not None
    # RUN_JOB of a new job beyond the limit
    w = Peer(s, 2, ClientType.WORKER)
    assert w.req(C.CAN_DO, b"f") == [C.SUCCESS]
    assert c.req(C.RUN_JOB, Job(b"f", b"r")) == [C.NO_WORKER]
    assert s.job(b"f", b"r") is None
    # a finished job makes room
    assert c.req(C.REMOVE_JOB, b"f", b"b") == [C.SUCCESS]
    assert c.req(C.RUN_JOB, Job(b"f", b"r")) == []  # accepted: result later
    assert c.req(C.SUBMIT_JOB, Job(b"f", b"z")) == [C.NO_WORKER]
    assert sorted((j.func, j.name) for j in s.jobs()) == [
        (b"f", b"a"),
        (b"f", b"r"),
        (b"g", b"c"),
        (b"g", b"d"),
        (b"h", b"x"),
    ]


def test_no_job_limit_by_default() -> None:
    s = Scheduler(MemoryStore(), T0)
    c = Peer(s, 1, ClientType.CLIENT)
    for i in range(300):
        assert c.req(C.SUBMIT_JOB, Job(b"f", b"%d" % i)) == [C.SUCCESS]


async def test_max_jobs_per_func_over_a_socket() -> None:
    async with running_server(unix=False, max_jobs_per_func=1) as srv:
        c = await Raw.open(srv.addresses[0])
        await c.register()
        got = await c.call(C.SUBMIT_JOB, Job(b"f", b"a"))
        assert got is not None and got.command == C.SUCCESS
        got = await c.call(C.SUBMIT_JOB, Job(b"f", b"b"))
        assert got is not None and got.command == C.NO_WORKER
        await c.close()
    with pytest.raises(ValueError, match="default scheduler"):
        Server(max_jobs_per_func=1, scheduler_factory=lambda now, stop: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match=">= 0"):
        Server(max_connections=-1)


# -- the periodicd options ---------------------------------------------------------


def test_periodicd_limit_options() -> None:
    args = ["--max-connections", "1", "--max-jobs-per-func", "1", "--log", "warning"]
    with ServerProcess(args) as proc:

        async def main() -> None:
            # the start-up probe's connection may still count for a moment
            for _ in range(50):
                a = await Raw.open(proc.address)
                a.writer.write(frame(b"\x01"))
                if await a.recv() is not None:
                    break
                await a.close()
                await asyncio.sleep(0.1)
            got = await a.call(C.SUBMIT_JOB, Job(b"f", b"a"))
            assert got is not None and got.command == C.SUCCESS
            got = await a.call(C.SUBMIT_JOB, Job(b"f", b"b"))
            assert got is not None and got.command == C.NO_WORKER
            b = await Raw.open(proc.address)
            b.writer.write(frame(b"\x01"))
            assert await b.recv() is None  # second connection refused
            for r in (a, b):
                await r.close()

        asyncio.run(asyncio.wait_for(main(), 20))
        deadline = time.monotonic() + WAIT
        while "max-connections" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)
