"""Issue 16 item 8: the RSA transport's defaults and the v2 handshake.

* legacy (aio-periodic 1.0.0, no client proof) is refused by default, with a
  warning naming ``--rsa-legacy`` at most once a minute, and served with it;
* a man in the middle relays a real client's hello, the server's answer and
  the client's proof, swaps in its own mode and session key, and talks to
  the server as that client: served under v1 (the reference's generation,
  kept for its clients), refused under v2 (our Client's default);
* our Client speaks v2 by default;
* v2 AES records are sequenced: a replayed record is refused (v1 takes it).

The key pairs, servers and spec-level client come from tests/test_rsa.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import struct
from typing import Any

import pytest

pytest.importorskip("cryptography")

import test_rsa  # noqa: E402
from aio_periodic.transport import RSAMode as AioMode  # noqa: E402
from cryptography.hazmat.primitives.ciphers import (  # noqa: E402
    Cipher,
    algorithms,
    modes,
)
from test_interop_aio import run_on  # noqa: E402
from test_rsa import (  # noqa: E402
    LOG,
    OAEP,
    Keys,
    RawClient,
    _refused,
    _registered,
    aio_client,
    aio_rsa,
    rsa_server,
)

from periodic_fast.client import Client  # noqa: E402
from periodic_fast.codec import Parser, encode_registration, encode_request  # noqa: E402
from periodic_fast.constants import ClientType, Command  # noqa: E402
from periodic_fast.rsa_transport import RSAConfig, RSAHandshakeName  # noqa: E402
from periodic_fast.server import secure  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(90)]

keys = test_rsa.keys


# -- legacy is opt-in ------------------------------------------------------------------


def test_aio_legacy_refused_by_default_then_served_with_the_flag(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    """aio-periodic 1.0.0's RSATransport: closed by a default server, with
    one warning naming --rsa-legacy for two attempts (rate-limited); served
    by a server started with ``rsa_legacy=True``."""

    async def main() -> None:
        async with rsa_server(keys) as srv:
            (addr,) = srv.addresses
            for _ in range(2):
                with pytest.raises((asyncio.IncompleteReadError, ConnectionError)):
                    await asyncio.wait_for(aio_rsa(addr, keys, AioMode.AES).get(), 10)
            assert srv.hub.secure.stats["refused"] == 2
        async with rsa_server(keys, rsa_legacy=True) as srv:
            (addr,) = srv.addresses
            async with aio_client(aio_rsa(addr, keys, AioMode.AES)) as c:
                assert await c.ping() is True
            assert srv.hub.secure.stats["legacy/AES"] == 1

    with caplog.at_level(logging.WARNING, LOG):
        run_on("asyncio", main)
    warnings = [r for r in caplog.records if "start the server with" in r.message]
    assert len(warnings) == 1, caplog.text
    assert "--rsa-legacy" in warnings[0].message
    assert "rsa_legacy=True" in warnings[0].message


def test_legacy_warning_again_after_the_interval(
    keys: Keys, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secure, "REFUSAL_LOG_EVERY", 0.0)

    async def script(c: RawClient) -> None:
        c.send_block(c.fp)

    _refused(keys, caplog, script, "legacy handshake refused")
    _refused(keys, caplog, script, "legacy handshake refused")
    assert caplog.text.count("start the server with --rsa-legacy") == 2


# -- our client speaks v2 --------------------------------------------------------------


def test_client_defaults_to_v2(keys: Keys) -> None:
    assert RSAConfig(keys.client_private).handshake == "v2"

    async def main() -> None:
        async with rsa_server(keys) as srv:
            (addr,) = srv.addresses
            cfg = RSAConfig(keys.client_private, keys.server_public)
            async with Client(addr, rsa=cfg) as c:
                assert await c.ping() is True
            assert dict(srv.hub.secure.stats) == {"v2/AES": 1}

    run_on("asyncio", main)


def test_v2_only_server_refuses_v1(keys: Keys) -> None:
    """``rsa_v1=False``: the reference's generation is refused, v2 served."""

    async def main() -> None:
        async with rsa_server(keys, rsa_v1=False) as srv:
            (addr,) = srv.addresses
            v1 = RSAConfig(keys.client_private, keys.server_public, handshake="v1")
            with pytest.raises(ConnectionError):
                async with Client(addr, rsa=v1, timeout=5) as c:
                    await c.ping()
            v2 = RSAConfig(keys.client_private, keys.server_public)
            async with Client(addr, rsa=v2) as c:
                assert await c.ping() is True

    run_on("asyncio", main)


# -- the relay attack ------------------------------------------------------------------


class Relay:
    """A man in the middle that knows only public keys.

    It relays the client's hello and the server's answer, then, of the
    client's next three blocks (a proof, the mode and the session key, in
    the generation's order), keeps the one at ``proof_at`` and swaps the
    other two for its own mode (AES) and session key.  It then sends the
    registration frame and a PING as AES records (v1 format) under its own
    key; :attr:`served` is True when a PONG comes back.
    """

    def __init__(self, server: str, keys: Keys, proof_at: int) -> None:
        self.server = server
        self.proof_at = proof_at
        rc = RawClient(keys)  # for the public keys and the block sizes only
        self.server_key = rc.server_key
        self.k_server = rc.server_key.key_size // 8
        self.k_client = rc.k_own
        self.session = os.urandom(32)
        self.served = False
        self.done = asyncio.Event()

    async def handle(
        self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter
    ) -> None:
        host, port = self.server[len("tcp://") :].rsplit(":", 1)
        s_reader, s_writer = await asyncio.open_connection(host, int(port))
        try:
            s_writer.write(await c_reader.readexactly(self.k_server))  # hello
            c_writer.write(await s_reader.readexactly(3 * self.k_client))
            blocks = [await c_reader.readexactly(self.k_server) for _ in range(3)]
            ours = iter([b"\x02", self.session])
            swapped = [
                blk if i == self.proof_at else self.server_key.encrypt(next(ours), OAEP)
                for i, blk in enumerate(blocks)
            ]
            s_writer.write(b"".join(swapped))
            frames = encode_registration(ClientType.CLIENT) + encode_request(
                1, Command.PING
            )
            s_writer.write(self._record(frames))
            self.served = await self._pong(s_reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            s_writer.close()
            c_writer.close()
            self.done.set()

    def _record(self, data: bytes) -> bytes:
        iv = os.urandom(16)
        enc = Cipher(algorithms.AES(self.session), modes.CTR(iv)).encryptor()
        ct = enc.update(data) + enc.finalize()
        tag = hmac.new(self.session, iv + ct, hashlib.sha256).digest()
        return struct.pack(">Q", 16 + len(ct) + 32) + iv + ct + tag

    async def _pong(self, reader: asyncio.StreamReader) -> bool:
        parser = Parser(requests=False, registration=True)
        got: list[Any] = []
        while not any(getattr(p, "command", None) == Command.PONG for p in got):
            (size,) = struct.unpack(">Q", await reader.readexactly(8))
            body = await reader.readexactly(size)
            iv, ct = body[:16], body[16:-32]
            dec = Cipher(algorithms.AES(self.session), modes.CTR(iv)).decryptor()
            got += parser.feed(dec.update(ct) + dec.finalize())
        return True


async def _attack(
    keys: Keys, handshake: RSAHandshakeName | None, proof_at: int
) -> bool:
    """One relayed connection of a real client (``handshake`` None: our
    Client's default); True when the relay got served as that client."""
    async with rsa_server(keys) as srv:
        relay = Relay(srv.addresses[0], keys, proof_at)
        proxy = await asyncio.start_server(relay.handle, "127.0.0.1", 0)
        port = proxy.sockets[0].getsockname()[1]
        cfg = RSAConfig(keys.client_private, keys.server_public)
        if handshake is not None:
            cfg = RSAConfig(
                cfg.private_key_path, keys.server_public, handshake=handshake
            )

        async def victim() -> None:
            async with Client(f"tcp://127.0.0.1:{port}", rsa=cfg, timeout=5) as c:
                await c.ping()

        task = asyncio.create_task(victim())
        try:
            await asyncio.wait_for(relay.done.wait(), 20)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            proxy.close()
            with contextlib.suppress(Exception):
                await proxy.wait_closed()
        return relay.served


def test_relay_swapping_mode_and_session_key_served_under_v1(keys: Keys) -> None:
    """The weakness v2 fixes, shown on the reference's v1 (served for its
    clients): the proof does not cover the blocks that follow it."""
    assert run_attack(keys, "v1", 0)


@pytest.mark.parametrize("proof_at", [0, 1, 2])
def test_relay_attack_refused_for_our_default_client(
    keys: Keys, caplog: pytest.LogCaptureFixture, proof_at: int
) -> None:
    """Our Client's default (v2): whichever block the relay keeps as the
    proof, the server refuses it; it never serves the relay."""
    with caplog.at_level(logging.WARNING, LOG):
        assert not run_attack(keys, None, proof_at)
    # v2's own layout (mode, key, proof): the proof no longer matches
    expect = "wrong client proof" if proof_at == 2 else "rsa transport:"
    assert expect in caplog.text, caplog.text


def run_attack(keys: Keys, handshake: RSAHandshakeName | None, proof_at: int) -> bool:
    out: list[bool] = []

    async def main() -> None:
        out.append(await _attack(keys, handshake, proof_at))

    run_on("asyncio", main, timeout=60)
    return out[0]


# -- v2 records are sequenced ----------------------------------------------------------


def test_replayed_record_refused_under_v2(
    keys: Keys, caplog: pytest.LogCaptureFixture
) -> None:
    async def script(c: RawClient) -> None:
        await c.handshake(gen="v2", mode=2)
        await _registered(c)
        rec = c.record(encode_request(1, Command.PING))
        c.writer.write(rec + rec)  # the same record again

    _refused(keys, caplog, script, "bad AES record tag")


def test_replayed_record_taken_under_v1(keys: Keys) -> None:
    """What v2's sequence numbers prevent (docs/transport.md): v1 runs a
    replayed record's frames twice."""

    async def main() -> None:
        async with rsa_server(keys) as srv:
            c = RawClient(keys)
            await c.open(srv.addresses[0])
            await c.handshake(gen="v1", mode=2)
            await _registered(c)
            rec = c.record(encode_request(9, Command.PING))
            c.writer.write(rec + rec)
            parser = Parser(requests=False)
            pongs = 0
            while pongs < 2:
                data = await c.recv()
                assert data
                pongs += sum(p.command == Command.PONG for p in parser.feed(data))
            c.close()

    run_on("asyncio", main)
