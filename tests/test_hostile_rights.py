"""Hostile peers against the scheduler's rights and limits (issue 16).

Each test is an attack from the issue, bounded in time and memory, that
failed before its fix:

* item 4: RUN_JOB / RECV_DATA waiters outlive their connection and are
  unbounded (``max_waiters``, ``max_waiters_per_conn``);
* item 6: locks step outside the ACL (lock rights), a later acquirer widens
  a lock, a parked job is granted on a second ACQUIRE;
* item 10: unbounded funcs (``max_funcs``);
* item 11: func names with ``,`` or a newline forge STATUS lines;
* item 12: DROP_FUNC is allowed to a non-admin whose rights cover the func.

Sans-I/O against :class:`~periodic_fast.scheduler.Scheduler`, plus one
attack per limit over a real connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import zlib
from typing import Any

import pytest

from periodic_fast.auth import parse_auth_file
from periodic_fast.codec import Packet, Parser, encode_payload
from periodic_fast.constants import ClientType
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.scheduler import Scheduler
from periodic_fast.server.app import parse_address
from periodic_fast.store.memory import MemoryStore
from periodic_fast.testing import running_server

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
WAIT = 5.0
_HEADER = struct.Struct(">4sII")

AUTH_TEXT = b"""\
client   web      web-tok     email,thumb
worker   mailer   mailer-tok  email
worker   thumber  thumber-tok thumb
worker   locker   locker-tok  email,lock:shared,lock:pool-*
admin    ops      ops-tok     -
"""


class Peer:
    """A fake connection: the commands of the frames the scheduler sent."""

    def __init__(
        self,
        s: Scheduler,
        cid: int,
        worker: bool,
        name: bytes | None = None,
    ) -> None:
        self.s, self.id = s, cid
        self.parser = Parser(requests=False)
        self.frames: list[Packet] = []
        self.closed = 0
        self._msgid = 0
        if name is None:
            ctype = ClientType.WORKER if worker else ClientType.CLIENT
            identity = None
        else:
            ctype = ClientType.AUTH_WORKER if worker else ClientType.AUTH_CLIENT
            identity = (name, name + b"-tok")
        s.connect(cid, ctype, identity, self.send, self.close, T0)

    def send(self, data: bytes) -> None:
        self.frames.extend(self.parser.feed(data))

    def close(self) -> None:
        self.closed += 1

    def packets(self, command: int, *fields: Any, now: float = T0) -> list[Packet]:
        self._msgid += 1
        payload = encode_payload(command, *fields)
        self.s.handle(self.id, self._msgid, command, payload, now)
        out, self.frames = self.frames, []
        return out

    def req(self, command: int, *fields: Any, now: float = T0) -> list[int]:
        return [p.command for p in self.packets(command, *fields, now=now)]


def frame(body: bytes) -> bytes:
    return _HEADER.pack(b"\x00REQ", len(body), zlib.crc32(body)) + body


class Raw:
    """A raw TCP connection to a running server."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.parser = Parser(requests=False, registration=True)
        self.frames: list[Packet] = []
        self._msgid = 0

    @classmethod
    async def open(cls, address: str, ctype: int = ClientType.CLIENT) -> Raw:
        addr = parse_address(address)
        r, w = await asyncio.open_connection(addr.host, addr.port)
        raw = cls(r, w)
        w.write(frame(bytes((ctype,))))
        got = await raw.recv()
        assert got is not None and got.msgid is None
        return raw

    async def recv(self) -> Packet | None:
        while not self.frames:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            except ConnectionError:
                data = b""
            if not data:
                return None
            self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)

    def send(self, command: int, *fields: Any) -> int:
        self._msgid += 1
        payload = encode_payload(command, *fields)
        self.writer.write(frame(struct.pack(">IB", self._msgid, command) + payload))
        return self._msgid

    async def call(self, command: int, *fields: Any) -> int | None:
        msgid = self.send(command, *fields)
        while True:
            got = await self.recv()
            if got is None:
                return None
            if got.msgid == msgid:
                return got.command

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def wait_until(pred: Any, timeout: float = WAIT) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def status_funcs(p: Peer) -> list[bytes]:
    [got] = p.packets(C.STATUS)
    return [line.split(b",")[0] for line in got.payload.split(b"\n") if line]


# -- item 11: STATUS cannot be forged ----------------------------------------------

FORGED = b"ok,1,2,3,4,5\nfake"


def test_func_names_that_would_forge_status_are_refused() -> None:
    s = Scheduler(MemoryStore(), T0)
    c = Peer(s, 1, False)
    w = Peer(s, 2, True)
    assert c.req(C.SUBMIT_JOB, Job(b"ok", b"a")) == [C.SUCCESS]
    for bad in (FORGED, b"a,b", b"a\nb", b"a\rb"):
        assert c.req(C.SUBMIT_JOB, Job(bad, b"x")) == [C.NO_WORKER]
        assert w.req(C.CAN_DO, bad) == [C.NO_WORKER]
        assert w.req(C.BROADCAST, bad) == [C.NO_WORKER]
        assert c.req(C.LOAD, [Job(b"fine", b"l"), Job(bad, b"l")]) == [C.NO_WORKER]
        assert c.req(C.RUN_JOB, Job(bad, b"r")) == [C.NO_WORKER]
        assert c.req(C.RECV_DATA, Job(bad, b"r")) == [C.NO_WORKER]
        assert c.req(C.DROP_FUNC, bad) == [C.NO_WORKER]
        with pytest.raises(ValueError, match="func"):
            s.submit(Job(bad, b"h"), T0)
    assert status_funcs(c) == [b"ok"]
    assert [j.func for j in s.jobs()] == [b"ok"]
    # names are refused only where they enter: other bytes stay valid
    assert c.req(C.SUBMIT_JOB, Job(b"x y;z\t\xff", b"a")) == [C.SUCCESS]


async def test_forged_status_over_a_socket() -> None:
    async with running_server(unix=False) as srv:
        c = await Raw.open(srv.addresses[0])
        assert await c.call(C.SUBMIT_JOB, Job(FORGED, b"a")) == C.NO_WORKER
        assert await c.call(C.SUBMIT_JOB, Job(b"ok", b"a")) == C.SUCCESS
        c.send(C.STATUS)
        got = await c.recv()
        assert got is not None and got.command == C.DATA
        assert got.payload.startswith(b"ok,0,1,0,0,")
        assert b"\n" not in got.payload
        await c.close()


# -- item 10: funcs are bounded ------------------------------------------------------


def test_max_funcs_refuses_new_funcs_and_forgets_idle_ones() -> None:
    s = Scheduler(MemoryStore(), T0, max_funcs=3)
    c = Peer(s, 1, False)
    w = Peer(s, 2, True)
    assert c.req(C.SUBMIT_JOB, Job(b"a", b"j")) == [C.SUCCESS]
    assert w.req(C.CAN_DO, b"b") == [C.SUCCESS]
    assert w.req(C.BROADCAST, b"c") == [C.SUCCESS]
    # full: every way a func enters is refused, nothing changes
    assert c.req(C.SUBMIT_JOB, Job(b"d", b"j")) == [C.NO_WORKER]
    assert w.req(C.CAN_DO, b"d") == [C.NO_WORKER]
    assert w.req(C.BROADCAST, b"d") == [C.NO_WORKER]
    assert c.req(C.LOAD, [Job(b"d", b"j")]) == [C.NO_WORKER]
    assert not s.submit(Job(b"d", b"j"), T0)
    assert status_funcs(c) == [b"a", b"b", b"c"]
    # known funcs are still served
    assert c.req(C.SUBMIT_JOB, Job(b"b", b"j")) == [C.SUCCESS]
    assert w.req(C.CAN_DO, b"a") == [C.SUCCESS]
    # the worker leaves: "c" has no job and no worker, and is forgotten when
    # room is needed ("a" and "b" hold jobs and stay)
    s.disconnect(w.id, T0 + 1)
    assert status_funcs(c) == [b"a", b"b", b"c"]  # not before
    assert c.req(C.SUBMIT_JOB, Job(b"d", b"j"), now=T0 + 2) == [C.SUCCESS]
    assert status_funcs(c) == [b"a", b"b", b"d"]
    assert s.counters()["submit"] == 3


def test_funcs_from_a_closed_client_stay_bounded() -> None:
    s = Scheduler(MemoryStore(), T0)  # the default limit
    w = Peer(s, 1, True)
    refused = 0
    for i in range(10_050):
        refused += w.req(C.CAN_DO, b"f%d" % i) == [C.NO_WORKER]
    assert refused == 50
    s.disconnect(w.id, T0)
    c = Peer(s, 2, False)
    assert c.req(C.SUBMIT_JOB, Job(b"new", b"j"), now=T0 + 5) == [C.SUCCESS]
    assert status_funcs(c) == [b"new"]  # the idle ones were forgotten


async def test_max_funcs_over_a_socket() -> None:
    async with running_server(unix=False, max_funcs=2) as srv:
        w = await Raw.open(srv.addresses[0], ClientType.WORKER)
        assert await w.call(C.CAN_DO, b"a") == C.SUCCESS
        assert await w.call(C.SUBMIT_JOB, Job(b"b", b"j")) == C.SUCCESS
        assert await w.call(C.CAN_DO, b"c") == C.NO_WORKER
        assert await w.call(C.SUBMIT_JOB, Job(b"c", b"j")) == C.NO_WORKER
        await w.close()


# -- item 4: waiters go with their connection and are bounded -------------------------


def _waiters(s: Scheduler) -> int:
    return sum(len(w.results) + len(w.streams) for w in s._waiters.values())


def test_waiters_are_dropped_with_their_connection() -> None:
    s = Scheduler(MemoryStore(), T0)
    w = Peer(s, 1, True)
    assert w.req(C.CAN_DO, b"f") == [C.SUCCESS]
    c = Peer(s, 2, False)
    stay = Peer(s, 3, False)
    big = (1 << 31) - 1  # a lifetime the client picks
    for i in range(500):
        assert c.req(C.RECV_DATA, Job(b"f", b"r%d" % i, timeout=big)) == [C.SUCCESS]
        assert c.req(C.RUN_JOB, Job(b"f", b"j%d" % i, timeout=big)) == []
    assert stay.req(C.RUN_JOB, Job(b"f", b"j0", timeout=big)) == []
    assert _waiters(s) == 1001
    s.disconnect(c.id, T0 + 1)
    assert len(s._waiters) == 1 and _waiters(s) == 1  # the other client's
    # the jobs stay (like submitted ones); the remaining waiter still works
    assert w.req(C.GRAB_JOB) == [C.SUCCESS, C.JOB_ASSIGN]
    assert len(s.jobs()) == 500
    s.remove(b"f", b"j0", T0 + 2)
    assert [p.payload for p in stay.frames] == [b"removed"]
    assert not s._waiters


def test_waiter_limits() -> None:
    s = Scheduler(MemoryStore(), T0, max_waiters=5, max_waiters_per_conn=3)
    w = Peer(s, 1, True)
    assert w.req(C.CAN_DO, b"f") == [C.SUCCESS]
    a, b = Peer(s, 2, False), Peer(s, 3, False)
    for i in range(3):
        assert a.req(C.RECV_DATA, Job(b"f", b"%d" % i)) == [C.SUCCESS]
    assert a.req(C.RECV_DATA, Job(b"f", b"x")) == [C.NO_WORKER]  # per conn
    assert a.req(C.RUN_JOB, Job(b"f", b"x")) == [C.NO_WORKER]
    assert s.job(b"f", b"x") is None  # a refused RUN_JOB stores nothing
    assert b.req(C.RUN_JOB, Job(b"f", b"y")) == []
    assert b.req(C.RECV_DATA, Job(b"f", b"y")) == [C.SUCCESS]
    assert b.req(C.RECV_DATA, Job(b"f", b"z")) == [C.NO_WORKER]  # global
    s.remove(b"f", b"y", T0)  # its two waiters end: room again
    assert [p.payload for p in b.frames] == [b"EOF", b"removed"]
    b.frames.clear()
    assert b.req(C.RECV_DATA, Job(b"f", b"z")) == [C.SUCCESS]
    s.disconnect(a.id, T0)
    assert [b.req(C.RECV_DATA, Job(b"f", b"%d" % i)) for i in range(3)] == [
        [C.SUCCESS],
        [C.SUCCESS],
        [C.NO_WORKER],  # b's own three
    ]


async def test_waiters_of_a_closed_connection_are_released() -> None:
    async with running_server(unix=False, max_waiters_per_conn=100) as srv:
        w = await Raw.open(srv.addresses[0], ClientType.WORKER)
        assert await w.call(C.CAN_DO, b"f") == C.SUCCESS
        c = await Raw.open(srv.addresses[0])
        for i in range(100):
            assert await c.call(C.RECV_DATA, Job(b"f", b"%d" % i)) == C.SUCCESS
        assert await c.call(C.RECV_DATA, Job(b"f", b"x")) == C.NO_WORKER
        for i in range(50):
            c.send(C.RUN_JOB, Job(b"f", b"r%d" % i, timeout=1 << 30))
        assert await c.call(C.PING) == C.PONG
        sched: Any = srv.scheduler
        assert len(sched._waiters) == 100
        await c.close()
        await wait_until(lambda: not sched._waiters)
        await w.close()


# -- item 6: locks have rights of their own; nobody widens or slips in ---------------


def _auth_scheduler() -> Scheduler:
    rules = parse_auth_file(AUTH_TEXT)
    return Scheduler(MemoryStore(), T0, auth=rules, config={"assign-wait": 0})


def _running(s: Scheduler, w: Peer, func: bytes, *names: bytes) -> None:
    """Jobs of ``func`` submitted by an admin and assigned to ``w``."""
    ops = Peer(s, 1000 + w.id, False, b"ops")
    assert w.req(C.CAN_DO, func) == [C.SUCCESS]
    for name in names:
        assert ops.req(C.SUBMIT_JOB, Job(func, name)) == [C.SUCCESS]
        assert w.req(C.GRAB_JOB) == [C.SUCCESS, C.JOB_ASSIGN]


def _acquire(w: Peer, lock: bytes, count: int, func: bytes, name: bytes) -> int:
    [got] = w.packets(C.ACQUIRE, lock, count, func, name)
    if got.command != C.ACQUIRED:
        return -int(got.command)  # refused: -NO_WORKER
    return got.payload[0]


def test_lock_names_need_rights() -> None:
    s = _auth_scheduler()
    mailer = Peer(s, 1, True, b"mailer")
    thumber = Peer(s, 2, True, b"thumber")
    locker = Peer(s, 3, True, b"locker")
    _running(s, mailer, b"email", b"m")
    _running(s, thumber, b"thumb", b"a", b"b")
    _running(s, locker, b"email", b"k")
    assert _acquire(thumber, b"thumb-mutex", 1, b"thumb", b"a") == 1
    # the issue's attack: a worker allowed only email widens thumb's lock
    assert _acquire(mailer, b"thumb-mutex", 1000, b"email", b"m") == -C.NO_WORKER
    # so two thumb jobs never hold the count-1 lock at once
    assert _acquire(thumber, b"thumb-mutex", 1, b"thumb", b"b") == 0
    [info] = s.locks()
    assert info.max == 1 and [h[1] for h in info.holders] == [b"a"]
    # default rights: FUNC and FUNC-...; lock: entries add names and prefixes
    assert _acquire(mailer, b"email", 1, b"email", b"m") == 1
    assert _acquire(mailer, b"email-x", 1, b"email", b"m") == 1
    assert _acquire(mailer, b"emailx", 1, b"email", b"m") == -C.NO_WORKER
    assert _acquire(mailer, b"shared", 1, b"email", b"m") == -C.NO_WORKER
    assert _acquire(locker, b"shared", 1, b"email", b"k") == 1
    assert _acquire(locker, b"pool-7", 1, b"email", b"k") == 1
    assert _acquire(locker, b"shared2", 1, b"email", b"k") == -C.NO_WORKER
    assert _acquire(locker, b"thumb-mutex", 1, b"email", b"k") == -C.NO_WORKER


def test_a_later_acquirer_does_not_widen_a_lock_with_auth() -> None:
    s = _auth_scheduler()
    thumber = Peer(s, 1, True, b"thumber")
    _running(s, thumber, b"thumb", b"a", b"b", b"c")
    assert _acquire(thumber, b"thumb", 1, b"thumb", b"a") == 1
    assert _acquire(thumber, b"thumb", 1000, b"thumb", b"b") == 0  # not widened
    # an admin may widen (as everyone may without auth: protocol.md 4.11)
    ops = Peer(s, 2, True, b"ops")
    _running(s, ops, b"other", b"o")
    assert _acquire(ops, b"thumb", 2, b"other", b"o") == 1
    assert s.locks()[0].max == 2


@pytest.mark.parametrize("auth", [False, True])
def test_a_parked_job_asking_again_is_refused(auth: bool) -> None:
    s = _auth_scheduler() if auth else Scheduler(MemoryStore(), T0)
    w = Peer(s, 1, True, b"thumber" if auth else None)
    if auth:
        _running(s, w, b"thumb", b"a", b"b")
    else:
        assert w.req(C.CAN_DO, b"thumb") == [C.SUCCESS]
        for name in (b"a", b"b"):
            assert w.req(C.SUBMIT_JOB, Job(b"thumb", name)) == [C.SUCCESS]
            got = w.packets(C.GRAB_JOB)
            assert [p.command for p in got] == [C.SUCCESS, C.JOB_ASSIGN]
            s.handle(w.id, w._msgid, C.JOB_ASSIGNED, b"", T0)
    assert _acquire(w, b"thumb", 1, b"thumb", b"a") == 1
    assert _acquire(w, b"thumb", 1, b"thumb", b"b") == 0  # parked
    assert _acquire(w, b"thumb", 5, b"thumb", b"b") == 0  # not granted now
    [info] = s.locks()
    assert [h[1] for h in info.holders] == [b"a"]
    assert [q[1] for q in info.waiting] == [b"b"]


def test_auth_file_lock_entries() -> None:
    from periodic_fast.auth import AuthFileError

    rules = parse_auth_file(
        b"worker w t f,lock:a,lock:b-*,lock:**\nworker v t lock:z\n"
    )
    w = rules.identities[b"w"]
    assert w.funcs == frozenset({b"f"}) and w.locks == frozenset({b"a"})
    assert w.lock_prefixes == (b"*", b"b-")  # lock:** is the prefix "*"
    assert w.lock_allowed(b"a") and w.lock_allowed(b"b-1") and w.lock_allowed(b"f-1")
    assert not w.lock_allowed(b"b") and not w.func_allowed(b"lock:a")
    v = rules.identities[b"v"]  # only a lock entry: valid, no func
    assert v.funcs == frozenset() and v.lock_allowed(b"z")
    assert parse_auth_file(b"worker w t lock:*\n").identities[b"w"].lock_allowed(b"q")
    with pytest.raises(AuthFileError, match="without a name"):
        parse_auth_file(b"worker w t f,lock:\n")
    with pytest.raises(AuthFileError, match="longer than 255"):
        parse_auth_file(b"worker w t lock:" + b"x" * 256 + b"\n")


# -- item 12: DROP_FUNC for an identity whose rights cover the func -------------------


def test_drop_func_follows_func_rights() -> None:
    s = _auth_scheduler()
    web = Peer(s, 1, False, b"web")  # email, thumb
    mailer = Peer(s, 2, True, b"mailer")  # email
    ops = Peer(s, 3, False, b"ops")
    for func in (b"email", b"thumb", b"other"):
        assert ops.req(C.SUBMIT_JOB, Job(func, b"j")) == [C.SUCCESS]
    assert mailer.req(C.DROP_FUNC, b"thumb") == [C.NO_WORKER]  # not its func
    assert web.req(C.DROP_FUNC, b"other") == [C.NO_WORKER]
    assert web.req(C.DROP_FUNC, b"email") == [C.SUCCESS]
    assert mailer.req(C.DROP_FUNC, b"thumb") == [C.NO_WORKER]
    assert ops.req(C.DROP_FUNC, b"other") == [C.SUCCESS]  # admin: any func
    assert [j.func for j in s.jobs()] == [b"thumb"]
    # the other admin-only commands stay admin-only
    for cmd, fields in (
        (C.DUMP, ()),
        (C.CONFIG_SET, (b"timeout", 5)),
        (C.SHUTDOWN, ()),
        (C.LOAD, ([Job(b"email", b"l")],)),
    ):
        assert web.req(cmd, *fields) == [C.NO_WORKER], cmd


def test_periodicd_scheduler_limit_options() -> None:
    from periodic_fast.testing import ServerProcess

    args = ["--max-funcs", "1", "--max-waiters-per-conn", "1", "--log", "warning"]
    with ServerProcess(args) as proc:

        async def main() -> None:
            w = await Raw.open(proc.address, ClientType.WORKER)
            assert await w.call(C.CAN_DO, b"f") == C.SUCCESS
            assert await w.call(C.CAN_DO, b"g") == C.NO_WORKER  # max-funcs
            assert await w.call(C.RECV_DATA, Job(b"f", b"a")) == C.SUCCESS
            assert await w.call(C.RECV_DATA, Job(b"f", b"b")) == C.NO_WORKER
            await w.close()

        asyncio.run(asyncio.wait_for(main(), 20))


async def test_http_submit_of_a_forging_func_name_is_a_400() -> None:
    """The scheduler refuses the name with ValueError; HTTP says 400, not 500."""
    import urllib.parse

    from periodic_fast.server.app import Server

    async with Server(["tcp://127.0.0.1:0"], http_writes=True) as srv:
        host, port = srv.addresses[0].removeprefix("tcp://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        body = urllib.parse.urlencode({"name": "j"}).encode()
        func = urllib.parse.quote("ok,1,2,3,4,5\nfake")
        writer.write(
            f"POST /{func} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        status = (await asyncio.wait_for(reader.readline(), 5)).split()[1]
        writer.close()
        assert status == b"400"
