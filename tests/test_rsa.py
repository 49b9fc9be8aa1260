"""The RSA/AES transport (protocol.md 5.4, checklist items 77-78) and keygen.

* aio-periodic 1.0.0's real ``RSATransport`` (the legacy handshake) in each
  mode, Plain, RSA and AES, with its Client and Worker against our server:
  submit, run_job, and payloads large enough that both directions are cut
  into many RSA blocks / several AES records.
* the v1 handshake (reference 1.2.9.1) and our v2 through a small client
  written here from the spec (docs/transport.md): proofs both ways, AES
  records with an HMAC tag (v2: keys per direction, sequenced tags).
* refusals, each closing only that connection with a log line: unknown key,
  wrong proof, mode not allowed, legacy refused (the default, with a
  rate-limited warning naming --rsa-legacy), undecryptable block, oversized,
  tampered or replayed AES record, a plain Periodic client.
* legacy is served only with ``rsa_legacy=True`` / ``--rsa-legacy`` (the aio
  1.0.0 tests here pass it).
* ``periodic keygen`` output loads in aio-periodic and in the server; the
  periodicd flags work end to end in a subprocess.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import shutil
import stat
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")

from aio_periodic import Client, Transport, Worker  # noqa: E402
from aio_periodic.job import Job as AioJob  # noqa: E402
from aio_periodic.transport import RSAMode as AioMode  # noqa: E402
from aio_periodic.transport import RSATransport  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding, rsa  # noqa: E402
from cryptography.hazmat.primitives.ciphers import (  # noqa: E402
    Cipher,
    algorithms,
    modes,
)
from test_interop_aio import LOOPS, close_aio, run_on, wait_until  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from periodic_fast.cli import app  # noqa: E402
from periodic_fast.codec import Parser, encode_registration, encode_request  # noqa: E402
from periodic_fast.constants import ClientType, Command  # noqa: E402
from periodic_fast.server import secure  # noqa: E402
from periodic_fast.server.secure import (  # noqa: E402
    KeyFileError,
    SecureConfig,
    fingerprint,
    load_private_key,
    load_public_keys,
    parse_modes,
)
from periodic_fast.testing import ServerProcess, running_server  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
LOG = "periodic_fast.server"


@dataclass(frozen=True)
class Keys:
    dir: Path
    server_private: str
    server_public: str
    client_private: str  # allowed, 2048 bits
    client_public: str
    small_private: str  # allowed, 1024 bits: other block size than the server's
    small_public: str
    stranger_private: str  # not allowed
    allowed: str  # file with the two allowed public keys


@pytest.fixture(scope="module")
def keys() -> Iterator[Keys]:
    """Key pairs made by ``periodic keygen`` (its output must load everywhere)."""
    d = Path(tempfile.mkdtemp(prefix="pf-rsa-"))
    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(d)
    try:
        for name, size in (("server", 256), ("client", 256), ("small", 128)):
            res = runner.invoke(app, ["keygen", name, "-s", str(size)])
            assert res.exit_code == 0, res.output
        res = runner.invoke(app, ["keygen", "stranger"])
        assert res.exit_code == 0, res.output
    finally:
        os.chdir(cwd)
    allowed = d / "allowed.pem"
    allowed.write_bytes(
        (d / "client_public_key.pem").read_bytes()
        + (d / "small_public_key.pem").read_bytes()
    )
    yield Keys(
        d,
        str(d / "server_private_key.pem"),
        str(d / "server_public_key.pem"),
        str(d / "client_private_key.pem"),
        str(d / "client_public_key.pem"),
        str(d / "small_private_key.pem"),
        str(d / "small_public_key.pem"),
        str(d / "stranger_private_key.pem"),
        str(allowed),
    )
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=LOOPS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def rsa_server(keys: Keys, **kw: Any) -> contextlib.AbstractAsyncContextManager[Any]:
    """Our server with the transport on (pass ``rsa_legacy=True`` for
    aio-periodic 1.0.0's clients: legacy is off by default)."""
    kw.setdefault("tcp", True)
    kw.setdefault("unix", False)
    return running_server(
        rsa_private_path=keys.server_private, rsa_public_path=keys.allowed, **kw
    )


def aio_rsa(address: str, keys: Keys, mode: AioMode, private: str = "") -> Any:
    return RSATransport(
        Transport(address), private or keys.client_private, keys.server_public, mode
    )


@contextlib.asynccontextmanager
async def aio_client(transport: Any) -> AsyncIterator[Client]:
    c = Client()
    try:
        await asyncio.wait_for(c.connect(transport), 10)
        yield c
    finally:
        await close_aio(c)


@contextlib.asynccontextmanager
async def aio_worker(
    transport: Any, funcs: dict[str, Callable[[AioJob], Awaitable[Any]]]
) -> AsyncIterator[Worker]:
    w = Worker()
    for name, task in funcs.items():
        w.func(name)(task)
    work: asyncio.Task[None] | None = None
    try:
        await asyncio.wait_for(w.connect(transport), 10)
        work = asyncio.create_task(w.work(2))
        yield w
    finally:
        if work is not None:
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
        await close_aio(w)


# -- aio-periodic 1.0.0, legacy handshake, every mode --------------------------------

# payload sizes: many RSA blocks both ways; several AES records (256 KiB each)
SIZES = {AioMode.Plain: 300_000, AioMode.RSA: 20_000, AioMode.AES: 1_100_000}


@pytest.mark.parametrize("mode", list(AioMode), ids=lambda m: m.name)
def test_aio_rsatransport_each_mode(keys: Keys, loop_kind: str, mode: AioMode) -> None:
    """Checklist 77: AIO 1.0.0 RSATransport in Plain, RSA and AES: ping,
    submit + worker, run_job with a large workload and result; the worker
    uses a 1024-bit key, the client a 2048-bit one (different block sizes)."""
    big = os.urandom(SIZES[mode])
    seen: list[tuple[str, int]] = []

    async def echo(job: AioJob) -> bytes:
        seen.append((job.name, len(job.workload)))
        return b"R" + job.workload[::-1]

    async def main() -> None:
        async with rsa_server(keys, rsa_legacy=True) as srv:
            (addr,) = srv.addresses
            async with (
                aio_client(aio_rsa(addr, keys, mode)) as client,
                aio_worker(
                    aio_rsa(addr, keys, mode, keys.small_private), {"echo": echo}
                ),
            ):
                assert await client.ping() is True
                assert await client.submit_job("echo", "s1", b"hello") is True
                await wait_until(lambda: ("s1", 5) in seen, 15, "the submitted job")
                res = await client.run_job("echo", "big", big, timeout=30)
                assert res == b"R" + big[::-1]
                st = await client.status()
                assert st["echo"]["worker_count"] == 1
            assert srv.hub.secure.stats[f"legacy/{mode.name}"] >= 2, (
                srv.hub.secure.stats
            )
            assert srv.hub.secure.stats["refused"] == 0

    run_on(loop_kind, main, timeout=80)


def test_aio_over_unix_socket_aes(keys: Keys) -> None:
    async def main() -> None:
        async with rsa_server(keys, tcp=False, unix=True, rsa_legacy=True) as srv:
            (addr,) = srv.addresses
            async with aio_client(aio_rsa(addr, keys, AioMode.AES)) as client:
                assert await client.ping() is True

    run_on("asyncio", main)


def test_wrong_key_refused(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    """A client key the server does not list: closed after the first block,
    with a log line; an allowed client on the same server is undisturbed."""

    async def main() -> None:
        async with rsa_server(keys, rsa_legacy=True) as srv:
            (addr,) = srv.addresses
            async with aio_client(aio_rsa(addr, keys, AioMode.AES)) as good:
                bad = aio_rsa(addr, keys, AioMode.AES, keys.stranger_private)
                with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                    await asyncio.wait_for(bad.get(), 10)
                assert await good.ping() is True

    with caplog.at_level(logging.WARNING, LOG):
        run_on("asyncio", main)
    assert "rsa transport: unknown client key" in caplog.text


def test_server_with_other_key(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    """A server that does not hold the key the client encrypts to cannot
    read the first block: it closes, the client's handshake fails."""

    async def main() -> None:
        async with running_server(
            unix=False,
            rsa_private_path=keys.stranger_private,  # not the key the client expects
            rsa_public_path=keys.allowed,
        ) as srv:
            (addr,) = srv.addresses
            with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                await asyncio.wait_for(aio_rsa(addr, keys, AioMode.AES).get(), 10)

    with caplog.at_level(logging.WARNING, LOG):
        run_on("asyncio", main)
    assert "rsa transport: bad ciphertext" in caplog.text


# -- raw handshakes written from protocol.md 5.4 ---------------------------------------


def _mac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


class RawClient:
    """A spec-level client: legacy, v1 or v2 handshake, then any mode."""

    def __init__(self, keys: Keys, private: str = "") -> None:
        self.key = load_private_key(private or keys.client_private)
        (self.server_key,) = load_public_keys(keys.server_public)
        self.k_own = self.key.key_size // 8
        self.fp = fingerprint(self.key.public_key())
        self.server_fp = fingerprint(self.server_key)
        self.reader: asyncio.StreamReader
        self.writer: asyncio.StreamWriter
        self.session = b""
        self.gen = "legacy"
        self.mode = 0
        # AES (encryption, tag) keys and sequence numbers, each direction
        self.send_keys = self.recv_keys = (b"", b"")
        self.sent = self.received = 0

    async def open(self, address: str) -> None:
        host, port = address[len("tcp://") :].rsplit(":", 1)
        self.reader, self.writer = await asyncio.open_connection(host, int(port))

    def send_block(self, data: bytes) -> None:
        self.writer.write(self.server_key.encrypt(data, OAEP))

    async def recv_block(self) -> bytes:
        block = await asyncio.wait_for(self.reader.readexactly(self.k_own), 5)
        return self.key.decrypt(block, OAEP)

    async def handshake(
        self, *, gen: str, mode: int, proof: bytes | None = None
    ) -> None:
        """``gen``: "legacy", "v1" or "v2"; ``proof`` replaces ours."""
        self.gen, self.mode = gen, mode
        nonce = os.urandom(16)
        hello = {"legacy": b"", "v1": nonce, "v2": nonce + b"\x02"}[gen]
        self.send_block(self.fp + hello)
        assert await self.recv_block() == self.server_fp
        self.session = os.urandom(32) if mode == 2 else b""
        self.send_keys = self.recv_keys = (self.session, self.session)
        if gen == "legacy":
            self.send_block(bytes([mode]))
            if self.session:
                self.send_block(self.session)
            return
        server_proof = await self.recv_block()
        challenge = await self.recv_block()
        assert len(challenge) == 16
        if gen == "v1":
            expect = hashlib.sha256(b"metro-rsa-server-v1" + nonce + self.server_fp)
            assert server_proof == expect.digest()
            if proof is None:
                proof = hashlib.sha256(
                    b"metro-rsa-client-v1" + challenge + self.fp
                ).digest()
            for block in (proof, bytes([mode]), self.session):
                if block:
                    self.send_block(block)
            return
        # v2 (docs/transport.md): HMACs keyed with the peer's secret over the
        # transcript; the client's proof, last, covers mode and session key
        t = b"periodic-fast-rsa-v2" + self.fp + nonce + self.server_fp + challenge
        assert server_proof == _mac(nonce, b"server" + t)
        if proof is None:
            proof = _mac(challenge, b"client" + t + bytes([mode]) + self.session)
        for block in (bytes([mode]), self.session, proof):
            if block:
                self.send_block(block)
        if self.session:
            keys = {
                label: _mac(self.session, label + t)
                for label in (b"c2s enc", b"c2s mac", b"s2c enc", b"s2c mac")
            }
            self.send_keys = (keys[b"c2s enc"], keys[b"c2s mac"])
            self.recv_keys = (keys[b"s2c enc"], keys[b"s2c mac"])

    def record(self, data: bytes) -> bytes:
        enc_key, mac_key = self.send_keys
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(enc_key), modes.CTR(iv)).encryptor()
        ct = enc.update(data) + enc.finalize()
        tag = b""
        if self.gen == "v1":
            tag = _mac(mac_key, iv + ct)
        elif self.gen == "v2":
            tag = _mac(mac_key, struct.pack(">Q", self.sent) + iv + ct)
            self.sent += 1
        return struct.pack(">Q", 16 + len(ct) + len(tag)) + iv + ct + tag

    def send(self, data: bytes) -> None:
        if self.mode == 0:
            self.writer.write(data)
        elif self.mode == 1:
            for i in range(0, len(data), self.server_key.key_size // 8 - 66):
                self.send_block(data[i : i + self.server_key.key_size // 8 - 66])
        else:
            self.writer.write(self.record(data))

    async def recv(self) -> bytes:
        """One unit of the server's stream, decrypted (b"" at EOF)."""
        r = self.reader
        try:
            if self.mode == 0:
                return await asyncio.wait_for(r.read(65536), 5)
            if self.mode == 1:
                return await self.recv_block()
            (size,) = struct.unpack(">Q", await asyncio.wait_for(r.readexactly(8), 5))
            body = await asyncio.wait_for(r.readexactly(size), 5)
        except asyncio.IncompleteReadError:
            return b""
        enc_key, mac_key = self.recv_keys
        if self.gen != "legacy":
            body, tag = body[:-32], body[-32:]
            head = b""
            if self.gen == "v2":
                head = struct.pack(">Q", self.received)
                self.received += 1
            assert hmac.compare_digest(tag, _mac(mac_key, head + body))
        dec = Cipher(algorithms.AES(enc_key), modes.CTR(body[:16])).decryptor()
        return dec.update(body[16:]) + dec.finalize()

    async def ping(self, msgid: int = 7) -> bool:
        """Register (first time) and PING; True on PONG."""
        parser = Parser(requests=False)
        self.send(encode_request(msgid, Command.PING))
        packets: list[Any] = []
        while not any(p.command == Command.PONG for p in packets):
            data = await self.recv()
            if not data:
                return False
            packets += parser.feed(data)
        return True

    async def closed(self) -> bool:
        """True when the server closes the connection within 5 s."""
        try:
            while await asyncio.wait_for(self.reader.read(65536), 5):
                pass
        except (asyncio.TimeoutError, ConnectionError):
            return False
        return True

    def close(self) -> None:
        self.writer.close()


async def _registered(c: RawClient) -> None:
    c.send(encode_registration(ClientType.CLIENT))
    parser = Parser(requests=False, registration=True)
    packets: list[Any] = []
    while not packets:
        data = await c.recv()
        assert data, "closed before the registration reply"
        packets += parser.feed(data)
    assert len(packets[0].payload) == 4  # the connection id


@pytest.mark.parametrize("mode", [0, 1, 2], ids=["Plain", "RSA", "AES"])
@pytest.mark.parametrize("gen", ["legacy", "v1", "v2"])
def test_raw_handshake(
    keys: Keys, gen: str, mode: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checklist 77/78: every generation in each mode (legacy with
    ``rsa_legacy=True``), then 4000 PINGs in one
    write (frames spanning blocks/records).  RSA mode decrypts 2 blocks per
    loop turn here, so the backlog path (reading paused) is exercised."""
    backlogged: list[bool] = []
    if mode == 1:
        monkeypatch.setattr(secure, "RSA_BATCH", 2)
        pump = secure.SecureProtocol._pump

        def counting_pump(self: secure.SecureProtocol) -> None:
            backlogged.append(self.backlog)
            pump(self)

        monkeypatch.setattr(secure.SecureProtocol, "_pump", counting_pump)

    async def main() -> None:
        async with rsa_server(keys, rsa_legacy=gen == "legacy") as srv:
            c = RawClient(keys)
            await c.open(srv.addresses[0])
            try:
                await c.handshake(gen=gen, mode=mode)
                await _registered(c)
                assert await c.ping()
                pings = b"".join(encode_request(i, Command.PING) for i in range(4000))
                c.send(pings)
                parser = Parser(requests=False)
                got = 0
                while got < 4000:
                    data = await c.recv()
                    assert data
                    got += sum(p.command == Command.PONG for p in parser.feed(data))
                name = ["Plain", "RSA", "AES"][mode]
                assert dict(srv.hub.secure.stats) == {f"{gen}/{name}": 1}
                assert (mode == 1) == any(backlogged)
            finally:
                c.close()

    run_on("asyncio", main)


def _refused(
    keys: Keys,
    caplog: pytest.LogCaptureFixture,
    script: Callable[[RawClient], Awaitable[None]],
    expect_log: str,
    **server_kw: Any,
) -> None:
    """Run ``script`` on a fresh connection; the server must close it and log
    ``expect_log``, while another (plain AES) connection keeps working."""

    async def main() -> None:
        async with rsa_server(keys, **server_kw) as srv:
            addr = srv.addresses[0]
            other = RawClient(keys)
            await other.open(addr)
            await other.handshake(gen="v2", mode=2)
            await _registered(other)
            c = RawClient(keys)
            await c.open(addr)
            try:
                await script(c)
                assert await c.closed(), "the server kept the connection"
            finally:
                c.close()
            assert await other.ping(), "another connection was disturbed"
            other.close()

    with caplog.at_level(logging.WARNING, LOG):
        run_on("asyncio", main)
    assert expect_log in caplog.text, caplog.text


@pytest.mark.parametrize("gen", ["v1", "v2"])
def test_wrong_client_proof(
    keys: Keys, caplog: pytest.LogCaptureFixture, gen: str
) -> None:
    async def script(c: RawClient) -> None:
        await c.handshake(gen=gen, mode=2, proof=b"\0" * 32)

    _refused(keys, caplog, script, "wrong client proof")


def test_mode_not_allowed(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    async def script(c: RawClient) -> None:
        await c.handshake(gen="v2", mode=0)

    _refused(keys, caplog, script, "mode Plain not allowed", rsa_modes="RSA,AES")


def test_bad_mode_byte(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    async def script(c: RawClient) -> None:
        c.send_block(c.fp)
        assert await c.recv_block() == c.server_fp
        c.send_block(b"\x07")

    _refused(keys, caplog, script, "bad mode block", rsa_legacy=True)


def test_legacy_refused_by_default(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 16.8: legacy is opt-in; the refusal names the flag."""

    async def script(c: RawClient) -> None:
        c.send_block(c.fp)

    _refused(
        keys, caplog, script, "legacy handshake refused (allow it with --rsa-legacy)"
    )
    assert "start the server with --rsa-legacy" in caplog.text


def test_undecryptable_block(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    async def script(c: RawClient) -> None:
        c.writer.write(b"\x01" * (c.server_key.key_size // 8))

    _refused(keys, caplog, script, "bad ciphertext")


def test_bad_first_block_length(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    async def script(c: RawClient) -> None:
        c.send_block(c.fp + b"x")

    _refused(keys, caplog, script, "first block of 33 bytes")


def test_v1_refused_when_off(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    async def script(c: RawClient) -> None:
        c.send_block(c.fp + os.urandom(16))

    _refused(keys, caplog, script, "v1 handshake refused", rsa_v1=False)


def test_oversized_record_refused_before_body(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """A record header over the limit closes at once: no body was sent."""

    async def script(c: RawClient) -> None:
        await c.handshake(gen="legacy", mode=2)
        c.writer.write(struct.pack(">Q", 64 * 1024 * 1024 + 1))

    # limit: max(64 MiB, max_frame + 64)
    _refused(
        keys,
        caplog,
        script,
        "AES record of 67108865 bytes",
        max_frame=4096,
        rsa_legacy=True,
    )


@pytest.mark.parametrize("gen", ["v1", "v2"])
def test_tampered_record_tag(
    keys: Keys, caplog: pytest.LogCaptureFixture, gen: str
) -> None:
    async def script(c: RawClient) -> None:
        await c.handshake(gen=gen, mode=2)
        rec = bytearray(c.record(encode_registration(ClientType.CLIENT)))
        rec[30] ^= 1  # one ciphertext bit
        c.writer.write(bytes(rec))

    _refused(keys, caplog, script, "bad AES record tag")


def test_short_v1_record(keys: Keys, caplog: pytest.LogCaptureFixture) -> None:
    async def script(c: RawClient) -> None:
        await c.handshake(gen="v2", mode=2)
        c.writer.write(struct.pack(">Q", 47) + b"\0" * 47)

    _refused(keys, caplog, script, "AES record of 47 bytes")


def test_plain_client_closed_at_once(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain client (aio without RSATransport) on an RSA server: closed as
    soon as its registration frame is seen, not after the registration
    timeout (the reference just waits for a full block)."""

    async def script(c: RawClient) -> None:
        c.writer.write(encode_registration(ClientType.CLIENT))

    _refused(keys, caplog, script, "plain Periodic client", registration_timeout=60.0)


def test_handshake_bounded_by_registration_timeout(keys: Keys) -> None:
    async def main() -> None:
        async with rsa_server(keys, registration_timeout=0.3) as srv:
            c = RawClient(keys)
            await c.open(srv.addresses[0])
            c.writer.write(b"\0" * 10)  # never a whole block
            assert await c.closed()
            c.close()

    run_on("asyncio", main)


def test_new_public_key_picked_up_without_restart(keys: Keys, tmp_path: Path) -> None:
    """The allowed-keys file is re-read when it changed (checked on a miss)."""
    allowed = tmp_path / "keys"
    allowed.mkdir()
    shutil.copy(keys.client_public, allowed / "client.pem")

    async def main() -> None:
        async with running_server(
            unix=False,
            rsa_private_path=keys.server_private,
            rsa_public_path=allowed,
        ) as srv:
            addr = srv.addresses[0]
            srv.hub.secure.keys.poll = 0.0
            c = RawClient(keys, keys.small_private)
            await c.open(addr)
            c.send_block(c.fp + os.urandom(16) + b"\x02")
            assert await c.closed()  # not allowed yet
            c.close()
            shutil.copy(keys.small_public, allowed / "small.pem")
            c = RawClient(keys, keys.small_private)
            await c.open(addr)
            await c.handshake(gen="v2", mode=1)
            await _registered(c)
            assert await c.ping()
            c.close()

    run_on("asyncio", main)


# -- configuration and keygen --------------------------------------------------------


def test_config_errors(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read private key"):
        SecureConfig.load(tmp_path / "none.pem", keys.allowed)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM key"):
        SecureConfig.load(junk, keys.allowed)
    with pytest.raises(KeyFileError, match="no RSA public key"):
        SecureConfig.load(keys.server_private, junk)
    with pytest.raises(KeyFileError, match="cannot read public keys"):
        SecureConfig.load(keys.server_private, tmp_path / "none.pem")
    with pytest.raises(ValueError, match="unknown RSA mode 'aes'"):
        parse_modes("aes")  # case-sensitive, as the reference
    assert parse_modes("AES, RSA") == parse_modes(["RSA", "AES"])
    # a directory of *.pem, a private key among them is skipped
    d = tmp_path / "dir"
    d.mkdir()
    shutil.copy(keys.allowed, d / "a.pem")
    shutil.copy(keys.server_private, d / "b.pem")
    (d / "c.txt").write_text("ignored")
    assert len(load_public_keys(d)) == 2


def test_server_start_fails_on_bad_key(keys: Keys, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(KeyFileError):
            async with running_server(
                unix=False,
                rsa_private_path=tmp_path / "missing.pem",
                rsa_public_path=keys.allowed,
            ):
                pass  # pragma: no cover

    run_on("asyncio", main)


def test_keygen_files(keys: Keys, tmp_path: Path) -> None:
    """PKCS#1 PEM as the reference writes; loads in aio-periodic's loaders;
    the private key is 0600; no overwrite without --force; size in bytes."""
    priv = Path(keys.server_private)
    assert priv.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n")
    assert (
        Path(keys.server_public)
        .read_bytes()
        .startswith(b"-----BEGIN RSA PUBLIC KEY-----\n")
    )
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    k = serialization.load_pem_private_key(priv.read_bytes(), password=None)
    assert isinstance(k, rsa.RSAPrivateKey) and k.key_size == 2048
    p = serialization.load_pem_public_key(Path(keys.small_public).read_bytes())
    assert isinstance(p, rsa.RSAPublicKey) and p.key_size == 1024

    runner = CliRunner()
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert runner.invoke(app, ["keygen", "x", "-s", "128"]).exit_code == 0
        before = Path("x_private_key.pem").read_bytes()
        res = runner.invoke(app, ["keygen", "x", "-s", "128"])
        assert res.exit_code == 1 and "exists" in res.output
        assert Path("x_private_key.pem").read_bytes() == before
        Path("y_public_key.pem").write_text("keep me")
        res = runner.invoke(app, ["keygen", "y", "-s", "128"])
        assert res.exit_code == 1
        assert not Path("y_private_key.pem").exists()
        assert Path("y_public_key.pem").read_text() == "keep me"
        res = runner.invoke(app, ["keygen", "x", "-s", "128", "--force"])
        assert res.exit_code == 0, res.output
        assert Path("x_private_key.pem").read_bytes() != before
        assert stat.S_IMODE(Path("x_private_key.pem").stat().st_mode) == 0o600
        assert runner.invoke(app, ["keygen", "z", "-s", "64"]).exit_code == 2
    finally:
        os.chdir(cwd)


def test_periodicd_flags_end_to_end(keys: Keys) -> None:
    """``periodic -d --rsa-private-path ... --rsa-mode AES --rsa-legacy`` in
    a subprocess: aio-periodic in AES mode is served, in RSA mode refused."""
    args = [
        "--rsa-legacy",
        "--loop",
        "asyncio",
        "--rsa-private-path",
        keys.server_private,
        "--rsa-public-path",
        keys.allowed,
        "--rsa-mode",
        "AES",
    ]
    with ServerProcess(args) as proc:

        async def main() -> None:
            async with aio_client(aio_rsa(proc.address, keys, AioMode.AES)) as c:
                assert await c.ping() is True
            c2 = RawClient(keys)
            await c2.open(proc.address)
            await c2.handshake(gen="legacy", mode=1)
            assert await c2.closed()
            c2.close()

        run_on("asyncio", main)
        assert "mode RSA not allowed" in proc.output()
