"""Authentication and authorization (docs/security.md, protocol.md 5.1-5.3).

* the auth file: parsing, every malformed case, constant-time tokens, reload;
* the scheduler's decisions, sans-I/O: role and func checks, admin-only
  commands, job ownership, STATUS filtering, rules replaced at run time;
* over real sockets: our Client and Worker and raw frames authenticating by
  name and token, refusals at registration, reload of the file while the
  server runs, and aio-periodic 1.0.0 (types 1/2 only) refused with auth on
  and served with it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from periodic_fast.auth import (
    AuthFile,
    AuthFileError,
    Identity,
    Role,
    load_auth_file,
    parse_auth_file,
)
from periodic_fast.client import Client
from periodic_fast.codec import (
    Packet,
    Parser,
    decode_job_list,
    decode_status,
    encode_identity,
    encode_payload,
)
from periodic_fast.constants import ClientType
from periodic_fast.constants import Command as C
from periodic_fast.errors import ProtocolError
from periodic_fast.job import Job
from periodic_fast.scheduler import Scheduler
from periodic_fast.server.app import Server, parse_address
from periodic_fast.store.memory import MemoryStore
from periodic_fast.testing import running_server
from periodic_fast.worker import Worker, WorkerJob

pytestmark = pytest.mark.timeout(60)

T0 = 1_700_000_000.0
WAIT = 5.0

AUTH_TEXT = b"""\
# role   name     token      funcs
client   web      web-tok    email,thumb
worker   mailer   mailer-tok email
worker   thumber  thumber-tok thumb
admin    ops      ops-tok    -
client   both     both-tok   email
"""


# -- the file ------------------------------------------------------------------


def test_parse_fields_comments_and_overrides() -> None:
    rules = parse_auth_file(
        b"\n   \n# a comment line\n"
        b"client\ta  ta\tf1,,f2,  # trailing comment\r\n"
        b"  worker b tb g#no space before the comment\n"
        b"client a ta2 f3\n"  # a later line with the same name wins
    )
    assert len(rules) == 2
    a = rules.identities[b"a"]
    assert a == Identity(Role.CLIENT, b"a", b"ta2", frozenset({b"f3"}))
    assert rules.identities[b"b"].funcs == frozenset({b"g"})
    assert rules.identities[b"b"].role is Role.WORKER


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"client a t", "want 4 fields"),
        (b"client a t f extra", "want 4 fields"),
        (b"root a t f", "unknown role"),
        (b"Client a t f", "unknown role"),
        (b"client a t ,,", "empty func list"),
        (b"client a t " + b"x" * 256, "longer than 255"),
        (b"client a t f\n\nworker b t", "line 3"),
    ],
)
def test_parse_rejects_malformed_lines(text: bytes, why: str) -> None:
    with pytest.raises(AuthFileError, match=why):
        parse_auth_file(text)


def test_authenticate_compares_tokens() -> None:
    rules = parse_auth_file(AUTH_TEXT)
    web = rules.authenticate(b"web", b"web-tok")
    assert web is not None and web.role is Role.CLIENT
    assert rules.authenticate(b"web", b"web-to") is None
    assert rules.authenticate(b"web", b"web-tok!") is None
    assert rules.authenticate(b"nobody", b"web-tok") is None
    assert rules.authenticate(b"web", b"") is None


def test_identity_decisions() -> None:
    rules = parse_auth_file(AUTH_TEXT)
    web, mailer, ops = (rules.identities[n] for n in (b"web", b"mailer", b"ops"))
    assert web.func_allowed(b"email") and not web.func_allowed(b"other")
    assert ops.func_allowed(b"anything")
    assert web.may_connect_as(False) and not web.may_connect_as(True)
    assert mailer.may_connect_as(True) and not mailer.may_connect_as(False)
    assert ops.may_connect_as(True) and ops.may_connect_as(False)


def _bump(path: Path, text: bytes) -> None:
    """Rewrite ``path`` with a surely different mtime."""
    before = path.stat().st_mtime_ns
    path.write_bytes(text)
    st = path.stat()
    if st.st_mtime_ns == before:
        os.utime(path, ns=(st.st_atime_ns, before + 1_000_000_000))


def test_auth_file_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "auth"
    with pytest.raises(AuthFileError, match="cannot read"):
        AuthFile(path)
    path.write_bytes(b"client a t f\n")
    af = AuthFile(path)
    assert af.poll() is None  # unchanged
    _bump(path, b"client a t f,g\n")
    new = af.poll()
    assert new is not None and af.rules is new
    assert new.identities[b"a"].funcs == {b"f", b"g"}
    assert af.poll() is None
    # a malformed version keeps the rules and says why, once
    caplog.set_level(logging.ERROR, logger="periodic_fast.auth")
    _bump(path, b"client a t\n")
    assert af.poll() is None
    assert af.rules is new
    assert "keeping the previous rules" in caplog.text and "line 1" in caplog.text
    caplog.clear()
    assert af.poll() is None and not caplog.text  # not logged again
    # fixed again: taken
    _bump(path, b"admin a t2 -\n")
    fixed = af.poll()
    assert fixed is not None and fixed.identities[b"a"].role is Role.ADMIN
    # deleted: the rules stay
    path.unlink()
    assert af.poll() is None and af.rules is fixed


def test_auth_file_malformed_at_start(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_bytes(b"client a t f\nbad line\n")
    with pytest.raises(AuthFileError, match="line 2"):
        AuthFile(path)
    with pytest.raises(AuthFileError, match="line 2"):
        load_auth_file(path)


# -- the scheduler (sans-I/O) ----------------------------------------------------


class Peer:
    """A fake connection: frames the scheduler sent, decoded."""

    def __init__(self, s: Scheduler, cid: int) -> None:
        self.s = s
        self.id = cid
        self.parser = Parser(requests=False)
        self.frames: list[Packet] = []
        self.closed = 0
        self._msgid = 100

    def send(self, data: bytes) -> None:
        self.frames.extend(self.parser.feed(data))

    def close(self) -> None:
        self.closed += 1

    def raw(
        self, command: int, payload: bytes = b"", msgid: int | None = None
    ) -> list[Packet]:
        if msgid is None:
            self._msgid += 1
            msgid = self._msgid
        self.s.handle(self.id, msgid, command, payload, T0)
        out, self.frames = self.frames, []
        return out

    def req(self, command: int, *fields: Any, msgid: int | None = None) -> list[Packet]:
        return self.raw(command, encode_payload(command, *fields), msgid=msgid)

    def one(self, command: int, *fields: Any) -> int:
        """The command of the single reply to one request."""
        got = self.req(command, *fields)
        assert len(got) == 1, got
        return got[0].command


def new_scheduler(text: bytes | None = AUTH_TEXT, **kw: Any) -> Scheduler:
    rules = parse_auth_file(text) if text is not None else None
    return Scheduler(MemoryStore(), T0, auth=rules, **kw)


_next_cid = iter(range(1, 1_000_000))


def peer(
    s: Scheduler, worker: bool, name: bytes | None = None, token: bytes | None = None
) -> Peer:
    p = Peer(s, next(_next_cid))
    identity = (name, token or name + b"-tok") if name is not None else None
    if identity is None:
        ctype = ClientType.WORKER if worker else ClientType.CLIENT
    else:
        ctype = ClientType.AUTH_WORKER if worker else ClientType.AUTH_CLIENT
    s.connect(p.id, ctype, identity, p.send, p.close, T0)
    return p


def job(func: bytes, name: bytes = b"j") -> Job:
    return Job(func, name, b"w")


def test_admit() -> None:
    s = new_scheduler()
    assert s.admit(1, None) is not None
    assert s.admit(2, None) is not None
    assert s.admit(3, (b"web", b"web-tok")) is None
    assert "wrong token" in (s.admit(3, (b"web", b"nope")) or "")
    assert "unknown identity" in (s.admit(4, (b"ghost", b"x")) or "")
    # a role that does not fit is admitted (refused per command, item 72)
    assert s.admit(4, (b"web", b"web-tok")) is None
    off = new_scheduler(None)
    assert off.admit(1, None) is None
    assert off.admit(3, (b"anyone", b"anything")) is None  # identity ignored


def test_connect_without_valid_identity_is_closed() -> None:
    s = new_scheduler()
    for name, token in ((None, None), (b"web", b"bad"), (b"ghost", b"x")):
        p = peer(s, False, name, token)
        assert p.closed == 1
        assert p.req(C.PING) == []  # never registered
    assert s.connection_count == 0


def test_role_must_fit_the_connection() -> None:
    s = new_scheduler()
    # a client identity registered as a worker (type 4): everything refused
    p = peer(s, True, b"web")
    assert p.one(C.PING) == C.NO_WORKER
    assert p.one(C.CAN_DO, b"email") == C.NO_WORKER  # item 72
    assert p.one(C.SUBMIT_JOB, job(b"email")) == C.NO_WORKER
    # and a worker identity registered as a client
    q = peer(s, False, b"mailer")
    assert q.one(C.PING) == C.NO_WORKER
    assert q.one(C.STATUS) == C.NO_WORKER
    assert s.jobs() == []
    # a malformed payload still closes, as without auth
    with pytest.raises(ProtocolError):
        p.raw(C.PING, b"x")


def test_client_identity_rules() -> None:
    s = new_scheduler()
    c = peer(s, False, b"web")
    assert c.one(C.PING) == C.PONG
    assert c.one(C.SUBMIT_JOB, job(b"email")) == C.SUCCESS  # item 73
    assert c.one(C.SUBMIT_JOB, job(b"other")) == C.NO_WORKER
    assert [j.func for j in s.jobs()] == [b"email"]
    assert c.one(C.REMOVE_JOB, b"other", b"j") == C.NO_WORKER
    assert c.one(C.RUN_JOB, job(b"other", b"r")) == C.NO_WORKER
    assert c.one(C.RECV_DATA, job(b"other", b"r")) == C.NO_WORKER
    assert c.one(C.CONFIG_GET, b"timeout") == C.CONFIG
    # worker commands on a client connection: refused (class rule)
    for cmd, fields in (
        (C.CAN_DO, (b"email",)),
        (C.GRAB_JOB, ()),
        (C.SLEEP, ()),
        (C.WORK_DONE, (b"email", b"j", b"")),
    ):
        assert c.one(cmd, *fields) == C.NO_WORKER, cmd
    assert c.one(C.REMOVE_JOB, b"email", b"j") == C.SUCCESS
    assert s.jobs() == []


def test_admin_only_commands() -> None:
    shutdowns: list[int] = []
    s = new_scheduler(on_shutdown=lambda: shutdowns.append(1))
    blob = encode_payload(C.LOAD, [job(b"email", b"l")])
    for who, worker in ((b"web", False), (b"mailer", True)):
        p = peer(s, worker, who)
        assert p.one(C.DUMP) == C.NO_WORKER
        assert p.raw(C.LOAD, blob)[0].command == C.NO_WORKER
        assert p.one(C.CONFIG_SET, b"timeout", 5) == C.NO_WORKER
        assert p.one(C.SHUTDOWN) == C.NO_WORKER
    assert s.get_config("timeout") == 600 and s.jobs() == [] and not shutdowns
    ops = peer(s, False, b"ops")
    assert ops.raw(C.LOAD, blob)[0].command == C.SUCCESS
    dumped = ops.req(C.DUMP)
    assert dumped[0].command == C.DATA
    assert [j.name for j in decode_job_list(dumped[0].payload)] == [b"l"]
    assert ops.one(C.CONFIG_SET, b"timeout", 5) == C.SUCCESS
    assert ops.one(C.DROP_FUNC, b"email") == C.SUCCESS
    assert s.jobs() == []
    assert ops.req(C.SHUTDOWN) == [] and shutdowns == [1]


def test_admin_may_do_everything_on_either_connection() -> None:
    s = new_scheduler()
    ops = peer(s, False, b"ops")  # connected as a client
    assert ops.one(C.CAN_DO, b"anything") == C.SUCCESS  # item 75
    assert ops.one(C.SUBMIT_JOB, job(b"zzz")) == C.SUCCESS
    assert ops.one(C.GRAB_JOB) == C.SUCCESS
    assert s.status(T0)[0].func == b"anything"


def test_worker_identity_rules() -> None:
    s = new_scheduler()
    w = peer(s, True, b"mailer")
    assert w.one(C.CAN_DO, b"email") == C.SUCCESS
    assert w.one(C.CAN_DO, b"thumb") == C.NO_WORKER
    assert w.one(C.BROADCAST, b"thumb") == C.NO_WORKER
    assert w.one(C.CANT_DO, b"thumb") == C.SUCCESS  # not func-checked
    # worker connections may send client commands (for their funcs)
    assert w.one(C.SUBMIT_JOB, job(b"email")) == C.SUCCESS
    assert w.one(C.SUBMIT_JOB, job(b"thumb")) == C.NO_WORKER
    assert {st.func: st.workers for st in s.status(T0)} == {b"email": 1}


def _assign(s: Scheduler, w: Peer, func: bytes, name: bytes, slot: int) -> None:
    c = peer(s, False, b"ops")
    assert c.one(C.SUBMIT_JOB, job(func, name)) == C.SUCCESS
    got = w.req(C.GRAB_JOB, msgid=slot)
    assert [p.command for p in got] == [C.SUCCESS, C.JOB_ASSIGN]


def test_job_ownership_with_auth() -> None:
    s = new_scheduler(AUTH_TEXT + b"worker mailer2 mailer2-tok email\n")
    w1 = peer(s, True, b"mailer")
    w2 = peer(s, True, b"mailer2")
    assert w1.one(C.CAN_DO, b"email") == C.SUCCESS
    assert w2.one(C.CAN_DO, b"email") == C.SUCCESS
    _assign(s, w1, b"email", b"j", 7)
    # unconfirmed assignments already belong to w1
    assert w2.one(C.WORK_DATA, b"email", b"j", b"chunk") == C.NO_WORKER
    assert w1.one(C.WORK_DATA, b"email", b"j", b"chunk") == C.SUCCESS
    assert w1.req(C.JOB_ASSIGNED, msgid=7) == []
    for cmd, fields in (
        (C.WORK_DONE, (b"email", b"j", b"r")),
        (C.WORK_FAIL, (b"email", b"j")),
        (C.SCHED_LATER, (b"email", b"j", 10, 1)),
        (C.WORK_DATA, (b"email", b"j", b"x")),
        (C.ACQUIRE, (b"L", 1, b"email", b"j")),
        (C.RELEASE, (b"L", b"email", b"j")),
    ):
        assert w2.one(cmd, *fields) == C.NO_WORKER, cmd
    stored = s.job(b"email", b"j")
    assert stored is not None and stored[1] == 1  # still running
    # a lock named after its func (the default lock rights, issue 16 item 6)
    assert w1.one(C.ACQUIRE, b"email-L", 1, b"email", b"j") == C.ACQUIRED
    assert w1.one(C.RELEASE, b"email-L", b"email", b"j") == C.SUCCESS
    assert w1.one(C.WORK_DONE, b"email", b"j", b"r") == C.SUCCESS
    assert s.job(b"email", b"j") is None
    # not assigned to anyone (pending, unknown): refused too
    c = peer(s, False, b"web")
    assert c.one(C.SUBMIT_JOB, job(b"email", b"p")) == C.SUCCESS
    assert w1.one(C.WORK_DONE, b"email", b"p", b"") == C.NO_WORKER
    assert w1.one(C.WORK_DONE, b"email", b"unknown", b"") == C.NO_WORKER
    assert s.job(b"email", b"p") is not None
    # a malformed payload still closes
    with pytest.raises(ProtocolError):
        w1.raw(C.WORK_DONE, b"\x05ab")


def test_job_ownership_without_auth_keeps_the_reference_quirk() -> None:
    s = new_scheduler(None)
    w1, w2 = peer(s, True), peer(s, True)
    assert w1.one(C.CAN_DO, b"f") == C.SUCCESS
    c = peer(s, False)
    assert c.one(C.SUBMIT_JOB, job(b"f")) == C.SUCCESS
    assert [p.command for p in w1.req(C.GRAB_JOB, msgid=1)] == [C.SUCCESS, C.JOB_ASSIGN]
    assert w2.one(C.WORK_DONE, b"f", b"j", b"") == C.SUCCESS
    assert s.job(b"f", b"j") is None


def test_status_shows_only_allowed_funcs() -> None:
    s = new_scheduler()
    ops = peer(s, False, b"ops")
    for func in (b"email", b"thumb", b"secret"):
        assert ops.one(C.SUBMIT_JOB, job(func)) == C.SUCCESS

    def funcs(p: Peer) -> list[bytes]:
        (reply,) = p.req(C.STATUS)
        assert reply.command == C.DATA
        return [st.func for st in decode_status(reply.payload)]

    assert funcs(peer(s, False, b"web")) == [b"email", b"thumb"]  # item 74
    assert funcs(peer(s, True, b"mailer")) == [b"email"]
    assert funcs(ops) == [b"email", b"secret", b"thumb"]


def test_set_auth_applies_new_rules_to_live_connections() -> None:
    s = new_scheduler()
    web = peer(s, False, b"web")
    mailer = peer(s, True, b"mailer")
    thumber = peer(s, True, b"thumber")
    assert mailer.one(C.CAN_DO, b"email") == C.SUCCESS
    assert thumber.one(C.CAN_DO, b"thumb") == C.SUCCESS
    new = parse_auth_file(
        b"client web web-tok thumb\n"  # email no longer allowed
        b"worker mailer mailer-tok thumb\n"  # email revoked: unregistered
        b"worker thumber new-token thumb\n"  # token changed: closed
    )
    closed = s.set_auth(new, T0)
    assert closed == [thumber.id] and thumber.closed == 1
    assert web.closed == mailer.closed == 0
    assert web.one(C.SUBMIT_JOB, job(b"email")) == C.NO_WORKER
    assert web.one(C.SUBMIT_JOB, job(b"thumb")) == C.SUCCESS
    assert {st.func: st.workers for st in s.status(T0)} == {b"email": 0, b"thumb": 0}
    assert mailer.one(C.CAN_DO, b"thumb") == C.SUCCESS
    assert s.connection_count == 2


def test_auth_off_connections_are_unchanged() -> None:
    s = new_scheduler(None)
    c = peer(s, False, b"whoever", b"whatever")  # identity ignored
    assert c.one(C.DUMP) == C.DATA
    assert c.one(C.CAN_DO, b"f") == C.NO_WORKER  # only the class rule
    assert s.auth is None


# -- over sockets ------------------------------------------------------------------

_HEADER = struct.Struct(">4sII")


def frame(body: bytes) -> bytes:
    return _HEADER.pack(b"\x00REQ", len(body), zlib.crc32(body)) + body


def request(msgid: int, command: int, payload: bytes = b"") -> bytes:
    return frame(struct.pack(">IB", msgid, command) + payload)


class Raw:
    """A raw socket: hand-built frames out, server frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.parser = Parser(requests=False, registration=True)
        self.frames: list[Packet] = []

    @classmethod
    async def open(cls, address: str) -> Raw:
        addr = parse_address(address)
        if addr.scheme == "tcp":
            r, w = await asyncio.open_connection(addr.host, addr.port)
        else:
            r, w = await asyncio.open_unix_connection(str(addr.host))
        return cls(r, w)

    async def recv(self) -> Packet | None:
        """The next frame, or None when the server closed the connection."""
        while not self.frames:
            try:
                data = await asyncio.wait_for(self.reader.read(65536), WAIT)
            except ConnectionError:
                data = b""
            if not data:
                return None
            self.frames.extend(self.parser.feed(data))
        return self.frames.pop(0)

    async def register(self, ctype: int, identity: tuple[bytes, bytes] | None) -> bool:
        """Send a registration; True when the server replied, False when it
        closed the connection without a reply."""
        body = bytes((ctype,)) + (encode_identity(*identity) if identity else b"")
        self.writer.write(frame(body))
        got = await self.recv()
        if got is None:
            return False
        assert got.msgid is None and got.command == C.DATA and len(got.payload) == 4
        return True

    async def call(self, command: int, *fields: Any) -> Packet:
        self.writer.write(request(1, command, encode_payload(command, *fields)))
        got = await self.recv()
        assert got is not None, "closed"
        return got

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


@pytest.fixture
def auth_path(tmp_path: Path) -> Path:
    path = tmp_path / "auth.txt"
    path.write_bytes(AUTH_TEXT)
    return path


@contextlib.asynccontextmanager
async def auth_server(path: Path | None, **kw: Any) -> AsyncIterator[Server]:
    async with running_server(auth_file=path, **kw) as srv:
        yield srv


async def eventually(
    pred: Callable[[], Awaitable[bool]], timeout: float = WAIT
) -> None:
    deadline = time.monotonic() + timeout
    while not await pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("transport", [0, 1], ids=["tcp", "unix"])
async def test_raw_registration(auth_path: Path, transport: int) -> None:
    async with auth_server(auth_path) as srv:
        addr = srv.addresses[transport]
        cases = [
            (ClientType.AUTH_CLIENT, (b"web", b"web-tok"), True),
            (ClientType.AUTH_WORKER, (b"mailer", b"mailer-tok"), True),
            (ClientType.AUTH_CLIENT, (b"web", b"wrong"), False),
            (ClientType.AUTH_CLIENT, (b"ghost", b"web-tok"), False),
            (ClientType.CLIENT, None, False),  # item 71, our deviation
            (ClientType.WORKER, None, False),
        ]
        for ctype, identity, accepted in cases:
            raw = await Raw.open(addr)
            try:
                assert await raw.register(ctype, identity) is accepted, identity
                if accepted:
                    assert (await raw.call(C.PING)).command == C.PONG
            finally:
                await raw.close()
        assert srv.scheduler.connection_count == 0  # type: ignore[attr-defined]


async def test_our_client_and_worker_authenticate(auth_path: Path) -> None:
    async with auth_server(auth_path) as srv:
        addr = srv.addresses[0]

        async def email(j: WorkerJob) -> bytes:
            return b"sent " + j.workload

        worker = Worker(addr, name="mailer", token="mailer-tok")
        await worker.add_func("email", email)
        try:
            await worker.start(2)
            async with Client(addr, name="web", token="web-tok") as client:
                assert await client.ping()
                assert await client.run_job("email", "j1", b"hi") == b"sent hi"
                assert not await client.submit_job("secret", "j2")
                assert set(await client.status()) == {"email"}
            async with Client(addr, name="web", token="nope", reconnect=False,
                              timeout=2) as bad:  # fmt: skip
                with pytest.raises(Exception):  # noqa: B017  # closed: any error
                    await bad.ping()
        finally:
            await worker.close()


async def test_reload_while_running(
    auth_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with auth_server(auth_path, auth_poll=0.05) as srv:
        addr = srv.addresses[0]
        raw = await Raw.open(addr)
        assert await raw.register(ClientType.AUTH_CLIENT, (b"web", b"web-tok"))
        assert (await raw.call(C.SUBMIT_JOB, job(b"new"))).command == C.NO_WORKER
        _bump(auth_path, AUTH_TEXT.replace(b"email,thumb", b"email,thumb,new"))

        async def allowed() -> bool:
            reply = await raw.call(C.SUBMIT_JOB, job(b"new"))
            return reply.command == C.SUCCESS

        await eventually(allowed)
        # a malformed version: logged, the previous rules stay
        _bump(auth_path, b"client web\n")
        await eventually(lambda: _logged(caplog, "keeping the previous rules"))
        assert (await raw.call(C.SUBMIT_JOB, job(b"new", b"k"))).command == C.SUCCESS
        # revoking the identity closes its live connection
        _bump(auth_path, b"admin ops ops-tok -\n")
        assert await _closed(raw)
        await raw.close()


async def _logged(caplog: pytest.LogCaptureFixture, text: str) -> bool:
    return text in caplog.text


async def _closed(raw: Raw) -> bool:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            data = await asyncio.wait_for(raw.reader.read(65536), WAIT)
        except ConnectionError:
            return True
        if not data:
            return True
    return False


async def test_server_refuses_to_start_with_a_bad_auth_file(tmp_path: Path) -> None:
    bad = tmp_path / "auth"
    bad.write_bytes(b"client a\n")
    with pytest.raises(AuthFileError, match="line 1"):
        async with auth_server(bad):
            pass  # pragma: no cover
    with pytest.raises(AuthFileError, match="cannot read"):
        async with auth_server(tmp_path / "missing"):
            pass  # pragma: no cover


# -- aio-periodic 1.0.0 --------------------------------------------------------


@contextlib.contextmanager
def _no_aio_noise() -> Iterator[None]:
    aio_log = logging.getLogger("aio_periodic")
    level = aio_log.level
    aio_log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        aio_log.setLevel(level)


async def _close_aio(c: Any) -> None:
    """Close an aio client without letting it reconnect; reap its tasks."""
    c.start_connect = lambda: None
    procs: list[asyncio.Future[Any]] = list(getattr(c, "_processes", []))
    writer = getattr(c, "_writer", None)
    if getattr(c, "_initialized", False):
        c.close()
    for t in procs:
        t.cancel()
    if procs:
        await asyncio.wait(procs, timeout=2)
    if writer is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), 2)


@pytest.mark.interop
@pytest.mark.parametrize("auth_on", [True, False], ids=["auth-on", "auth-off"])
async def test_aio_periodic_1_0_0(
    auth_path: Path, auth_on: bool, caplog: pytest.LogCaptureFixture
) -> None:
    from aio_periodic import Client as AioClient  # noqa: PLC0415
    from aio_periodic import Transport  # noqa: PLC0415

    caplog.set_level(logging.WARNING, logger="periodic_fast.server")
    async with auth_server(auth_path if auth_on else None) as srv:
        c = AioClient()
        with _no_aio_noise():
            try:
                await asyncio.wait_for(c.connect(Transport(srv.addresses[0])), WAIT)
                if auth_on:  # it sent type 1: closed at registration
                    try:
                        pong = await asyncio.wait_for(c.ping(), 2)
                    except Exception:  # closed or timed out: refused either way
                        pong = False
                    assert not pong
                    assert "registration refused: no identity" in caplog.text
                    assert srv.scheduler.connection_count == 0  # type: ignore[attr-defined]
                else:
                    assert await asyncio.wait_for(c.ping(), WAIT)
                    assert await asyncio.wait_for(c.submit_job("email", "a"), WAIT)
                    stats = await asyncio.wait_for(c.status(), WAIT)
                    assert "email" in stats
            finally:
                await _close_aio(c)
