"""The RSA/AES transport, client side (protocol.md 5.4): the handshake.

:class:`ClientSecureProtocol` sits between the socket and the client's own
protocol (:class:`periodic_fast._connection._Protocol`), as
:class:`periodic_fast.server.secure.SecureProtocol` does on the server.  On
connect it sends the first block at once; when the server's answer checks out
it sends the rest of the handshake, then hands the inner protocol a transport
whose ``write`` encrypts and from then on decrypts what arrives.  The
connection's opener awaits :meth:`ClientSecureProtocol.wait_ready` before it
sends the registration frame.

v2 (default): ``client_fp || nonce || 0x02`` -> the server's fingerprint,
its proof (keyed with our nonce, over the transcript) and a challenge -> the
mode, (AES) the session key, and our proof (keyed with the challenge, over
the transcript, mode and session key).  v1: ``client_fp || nonce`` -> the
server's fingerprint, its proof over our nonce and a challenge -> our proof
over the challenge, the mode and (AES) the session key.  Legacy:
``client_fp`` -> the server's fingerprint -> mode and session key.  Every
message is one OAEP block to the recipient's key.

Imported only when a connection is built with ``rsa=``: it needs
``cryptography``.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from ._rsa_common import (
    FP_SIZE,
    NONCE_SIZE,
    OAEP,
    OAEP_OVERHEAD,
    SESSION_KEY_SIZE,
    V2_MARK,
    BadStream,
    KeyFileError,
    RSAMode,
    SecureTransport,
    StreamCipher,
    client_proof,
    fingerprint,
    load_private_key,
    load_public_keys,
    server_proof,
    v2_client_proof,
    v2_server_proof,
    v2_transcript,
)
from .errors import RSAHandshakeError

__all__ = ["ClientKeys", "ClientSecureProtocol"]

logger = logging.getLogger("periodic_fast.client")


class ClientKeys:
    """A client's keys and choices, loaded once and shared by every
    connection (and reconnect) of a client object."""

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey,
        server_key: rsa.RSAPublicKey,
        *,
        mode: RSAMode = RSAMode.AES,
        generation: str = "v2",
        server_key_path: str = "",
    ) -> None:
        if server_key.key_size // 8 - OAEP_OVERHEAD < FP_SIZE + NONCE_SIZE + 1:
            raise KeyFileError(f"{server_key_path}: server key too small")
        self.private_key = private_key
        self.fingerprint = fingerprint(private_key.public_key())
        self.server_key = server_key
        self.server_fingerprint = fingerprint(server_key)
        self.server_key_path = server_key_path
        self.mode = mode
        #: ``"v2"``, ``"v1"`` or ``"legacy"``
        self.generation = generation
        #: bytes of one block to us
        self.block = private_key.key_size // 8

    @classmethod
    def load(
        cls,
        private_key_path: str | os.PathLike[str],
        server_public_key_path: str | os.PathLike[str],
        *,
        mode: str = "AES",
        generation: str = "v2",
    ) -> ClientKeys:
        """Read the key files (raises :class:`KeyFileError`); ``mode`` is a
        stream mode's name (``Plain``, ``RSA``, ``AES``).  The fields of an
        :class:`~periodic_fast.rsa_transport.RSAConfig` come in one by one, so
        this module never imports the one that imports it."""
        private = load_private_key(private_key_path)
        where = os.fspath(server_public_key_path)
        keys = load_public_keys(where)
        if not keys:
            raise KeyFileError(f"no RSA public key in {where!r}")
        return cls(
            private,
            keys[0],
            mode=RSAMode[mode],
            generation=generation,
            server_key_path=where,
        )

    def protocol(self, inner: Any, address: str) -> ClientSecureProtocol:
        """A handshake protocol wrapping ``inner`` for one connection."""
        return ClientSecureProtocol(inner, self, address)


class ClientSecureProtocol(asyncio.Protocol):
    """Runs the client half of the handshake, then encrypts and decrypts.

    ``inner`` gets ``connection_made`` (with the encrypting transport) only
    once the handshake is done, so nothing it writes can leave in clear.
    """

    def __init__(self, inner: Any, keys: ClientKeys, address: str) -> None:
        self._inner = inner
        self._keys = keys
        self._address = address
        self._raw: asyncio.Transport | None = None
        self._buf = bytearray()
        self._nonce = os.urandom(NONCE_SIZE)
        self._open = False
        self._cipher: StreamCipher | None = None
        self._dead = False
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.inner_paused = False  # the inner protocol paused reading

    # -- what SecureTransport asks ---------------------------------------------------

    @property
    def mode(self) -> RSAMode | None:
        """The stream mode once the handshake is done (None before)."""
        return self._keys.mode if self._open else None

    @property
    def generation(self) -> str | None:
        """``"v2"``, ``"v1"`` or ``"legacy"``."""
        return self._keys.generation

    @property
    def backlog(self) -> bool:
        """Always False: a client decrypts all it has at once (a burst only
        delays itself)."""
        return False

    def encrypt(self, data: bytes) -> list[bytes]:
        """Plaintext stream bytes to the server -> the wire chunks."""
        if not self._open:
            return []  # the inner protocol is not connected before (never happens)
        if self._cipher is None:  # Plain
            return [data]
        return self._cipher.encrypt(data)

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        self._raw = raw
        keys = self._keys
        gen = keys.generation
        hello = keys.fingerprint
        if gen != "legacy":
            hello += self._nonce + (V2_MARK if gen == "v2" else b"")
        raw.write(keys.server_key.encrypt(hello, OAEP))

    def data_received(self, data: bytes) -> None:
        if self._dead:
            return
        if self._open and self._cipher is None:  # Plain
            self._inner.data_received(data)
            return
        self._buf += data
        try:
            plain = b"" if self._open else self._handshake()
            if self._open and self._cipher is not None and self._buf:
                plain += self._cipher.decrypt(self._buf)
        except BadStream as exc:
            self._fail(str(exc))
            return
        except ValueError as exc:  # cryptography: a block that does not decrypt
            self._fail(f"bad ciphertext from the server ({exc.__class__.__name__})")
            return
        if plain and not self._dead:
            self._inner.data_received(plain)

    def eof_received(self) -> bool | None:
        return None  # close: the transport cannot half-close

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        self._buf.clear()
        if not self._ready.done():
            self._ready.set_exception(
                RSAHandshakeError(
                    f"{self._address} closed the connection during the RSA "
                    "handshake (is our public key among its allowed keys, is "
                    f"{self._keys.server_key_path!r} its key, is its RSA "
                    f"transport on, does it serve the {self._keys.generation} "
                    "handshake?)"
                )
            )
        # the inner protocol may never have been connected: it ignores that
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- the handshake ---------------------------------------------------------------

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the handshake to finish.

        :raises RSAHandshakeError: it failed or took over ``timeout`` s (the
            connection is closed then).
        """
        try:
            # not shielded: a timeout or a cancelled caller cancels _ready, so
            # a later connection_lost finds it done (no orphan exception)
            await asyncio.wait_for(self._ready, timeout)
        except asyncio.TimeoutError:
            self._abort()
            raise RSAHandshakeError(
                f"no RSA handshake reply from {self._address} within "
                f"{timeout:g} s (is the server's RSA transport on?)"
            ) from None
        except BaseException:  # failed, or the caller was cancelled
            self._abort()
            raise

    def _abort(self) -> None:
        """Drop a connection whose handshake did not finish: nobody else
        owns it yet."""
        self._dead = True
        if self._raw is not None:
            self._raw.abort()

    def _fail(self, reason: str) -> None:
        self._dead = True
        self._buf.clear()
        if not self._ready.done():
            self._ready.set_exception(
                RSAHandshakeError(f"{self._address}: RSA handshake: {reason}")
            )
        else:
            logger.warning("%s: closing: rsa transport: %s", self._address, reason)
        if self._raw is not None:
            self._raw.abort()

    def _handshake(self) -> bytes:
        """Read the server's answer once it is all there and send the rest
        of the handshake; returns stream bytes that followed (Plain)."""
        keys = self._keys
        gen = keys.generation
        k = keys.block
        count = 1 if gen == "legacy" else 3  # fingerprint[, proof, challenge]
        buf = self._buf
        if len(buf) < count * k:
            return b""
        decrypt = keys.private_key.decrypt
        msgs = [decrypt(bytes(buf[i * k : (i + 1) * k]), OAEP) for i in range(count)]
        del buf[: count * k]
        if not hmac.compare_digest(msgs[0], keys.server_fingerprint):
            raise BadStream(
                f"the server's key is not the one in {keys.server_key_path!r}"
            )
        mode = keys.mode
        session = os.urandom(SESSION_KEY_SIZE) if mode == RSAMode.AES else b""
        out: list[bytes] = []
        transcript = b""
        if gen != "legacy":
            challenge = msgs[2]
            if len(challenge) != NONCE_SIZE:
                raise BadStream(f"challenge of {len(challenge)} bytes")
            if gen == "v2":
                transcript = v2_transcript(
                    keys.fingerprint, self._nonce, keys.server_fingerprint, challenge
                )
                expect = v2_server_proof(self._nonce, transcript)
            else:
                expect = server_proof(self._nonce, keys.server_fingerprint)
            if not hmac.compare_digest(msgs[1], expect):
                raise BadStream("wrong server proof")
            if gen == "v1":
                out.append(client_proof(challenge, keys.fingerprint))
        out.append(bytes((mode,)))
        if session:
            out.append(session)
        if gen == "v2":  # last: it covers the mode and session key
            out.append(v2_client_proof(challenge, transcript, mode, session))
        assert self._raw is not None
        encrypt = keys.server_key.encrypt
        self._raw.write(b"".join(encrypt(m, OAEP) for m in out))
        if mode != RSAMode.Plain:
            self._cipher = StreamCipher(
                mode,
                own_key=keys.private_key,
                peer_key=keys.server_key,
                session=session,
                generation=gen,
                transcript=transcript,
            )
        self._open = True
        self._inner.connection_made(SecureTransport(self._raw, self))
        self._ready.set_result(None)
        if self._cipher is None and buf:
            rest = bytes(buf)
            buf.clear()
            return rest
        return b""
