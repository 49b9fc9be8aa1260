"""What both ends of the RSA/AES transport (protocol.md 5.4) share.

Keys (loading, fingerprints), the handshake constants and proofs of the
three generations, the stream ciphers that run once the handshake is done
(:class:`StreamCipher`: RSA-OAEP blocks or AES-CTR records, with the v1 HMAC
tag or the v2 per-direction keys and sequenced tag) and the transport face
an inner protocol writes plaintext to (:class:`SecureTransport`).

Generation v2 is ours (docs/transport.md): the hello is
``client_fp || nonce || 0x02``; both proofs are HMAC-SHA-256 keyed with a
secret only the holder of a private key can have decrypted (the server's
with the client's nonce, the client's with the server's challenge) over the
whole transcript: both fingerprints, nonce, challenge and, for the client,
the chosen mode and session key.  A relay can therefore swap no block
without the proof failing.  The stream keys are derived per direction from
the session key and the transcript, and every AES record's tag covers its
sequence number, so records cannot be replayed, reordered or reflected.

The server side (:mod:`periodic_fast.server.secure`) and the client side
(:mod:`periodic_fast._rsa_client`) build their handshakes on these; neither
imports the other.  This module needs ``cryptography`` (the ``rsa`` extra);
only the modules that are loaded once the transport is wanted import it.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import os
import re
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import PeriodicError

__all__ = [
    "AES_CHUNK",
    "MAX_RECORD",
    "OAEP",
    "BadStream",
    "KeyFileError",
    "RSAMode",
    "SecureTransport",
    "StreamCipher",
    "client_proof",
    "fingerprint",
    "generation_of",
    "load_private_key",
    "load_public_keys",
    "parse_modes",
    "server_proof",
    "v2_client_proof",
    "v2_server_proof",
    "v2_transcript",
]

#: OAEP(SHA-256) overhead: a ``k``-byte block carries at most ``k - 66`` bytes.
OAEP_OVERHEAD = 66
#: Largest AES record (everything after the length field) we accept: the
#: reference's limit.
MAX_RECORD = 64 * 1024 * 1024
#: Plaintext bytes per AES record we send.
AES_CHUNK = 256 * 1024
FP_SIZE = 32
NONCE_SIZE = 16
IV_SIZE = 16
TAG_SIZE = 32
SESSION_KEY_SIZE = 32
SERVER_DOMAIN = b"metro-rsa-server-v1"
CLIENT_DOMAIN = b"metro-rsa-client-v1"
#: v2: the last byte of the hello (``client_fp || nonce || V2_MARK``, 49
#: bytes: neither legacy's 32 nor v1's 48, so the reference refuses it).
V2_MARK = b"\x02"
V2_DOMAIN = b"periodic-fast-rsa-v2"
#: The handshake generations, oldest first.
GENERATIONS = ("legacy", "v1", "v2")

OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_U64 = struct.Struct(">Q")
_PEM_BLOCK = re.compile(
    rb"-----BEGIN ([A-Z ]+)-----\r?\n.*?-----END \1-----", re.DOTALL
)


class RSAMode(enum.IntEnum):
    """The byte a client sends to pick the stream mode after the handshake."""

    Plain = 0
    RSA = 1
    AES = 2


class KeyFileError(PeriodicError, ValueError):
    """A key file is missing, unreadable, not PEM or not RSA."""


class BadStream(Exception):
    """The peer broke the transport protocol: close the connection."""


def parse_modes(value: str | Iterable[str]) -> frozenset[RSAMode]:
    """``"Plain,RSA,AES"`` (or a list of names) -> the set of modes.

    Names are the reference's, case-sensitive; raises :class:`ValueError`
    on an unknown or empty list.
    """
    names = value.split(",") if isinstance(value, str) else list(value)
    out: set[RSAMode] = set()
    for raw in names:
        name = raw.strip()
        if name not in RSAMode.__members__:
            raise ValueError(f"unknown RSA mode {name!r} (Plain, RSA or AES)")
        out.add(RSAMode[name])
    if not out:
        raise ValueError("no RSA mode allowed")
    return frozenset(out)


def fingerprint(key: rsa.RSAPublicKey) -> bytes:
    """SHA-256 of the DER PKCS#1 ``RSAPublicKey`` (modulus, exponent)."""
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    return hashlib.sha256(der).digest()


def server_proof(nonce: bytes, server_fp: bytes) -> bytes:
    """v1: what the server sends to show it read the client's nonce."""
    return hashlib.sha256(SERVER_DOMAIN + nonce + server_fp).digest()


def client_proof(challenge: bytes, client_fp: bytes) -> bytes:
    """v1: what the client sends to show it read the server's challenge."""
    return hashlib.sha256(CLIENT_DOMAIN + challenge + client_fp).digest()


def generation_of(hello: bytes) -> str | None:
    """The generation a decrypted first block speaks (None: none)."""
    size = len(hello)
    if size == FP_SIZE:
        return "legacy"
    if size == FP_SIZE + NONCE_SIZE:
        return "v1"
    if size == FP_SIZE + NONCE_SIZE + 1 and hello[-1:] == V2_MARK:
        return "v2"
    return None


def v2_transcript(
    client_fp: bytes, nonce: bytes, server_fp: bytes, challenge: bytes
) -> bytes:
    """v2: what both proofs and the stream keys cover (every field has a
    fixed size, so the concatenation is unambiguous)."""
    return V2_DOMAIN + client_fp + nonce + server_fp + challenge


def v2_server_proof(nonce: bytes, transcript: bytes) -> bytes:
    """v2: the server read our nonce (only its private key decrypts it) and
    answers this very hello with this challenge."""
    return hmac.new(nonce, b"server" + transcript, hashlib.sha256).digest()


def v2_client_proof(
    challenge: bytes, transcript: bytes, mode: RSAMode, session: bytes
) -> bytes:
    """v2: the client read the challenge (only its private key decrypts it)
    and chose this mode and session key: a relay cannot swap either."""
    msg = b"client" + transcript + bytes((mode,)) + session
    return hmac.new(challenge, msg, hashlib.sha256).digest()


def _v2_key(session: bytes, transcript: bytes, label: bytes) -> bytes:
    return hmac.new(session, label + transcript, hashlib.sha256).digest()


def load_private_key(path: str | os.PathLike[str]) -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key from a PEM file (PKCS#1 or PKCS#8)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise KeyFileError(
            f"cannot read private key {os.fspath(path)!r}: {exc}"
        ) from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(
            f"{os.fspath(path)}: not an unencrypted PEM key: {exc}"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyFileError(f"{os.fspath(path)}: not an RSA key")
    if key.key_size < 1024:
        raise KeyFileError(
            f"{os.fspath(path)}: RSA key too small ({key.key_size} bits)"
        )
    return key


def _public_keys_in(data: bytes, where: str) -> list[rsa.RSAPublicKey]:
    keys: list[rsa.RSAPublicKey] = []
    for match in _PEM_BLOCK.finditer(data):
        if match.group(1) not in (b"RSA PUBLIC KEY", b"PUBLIC KEY"):
            continue  # e.g. a private key kept in the same directory
        try:
            key = serialization.load_pem_public_key(match.group(0))
        except ValueError as exc:
            raise KeyFileError(f"{where}: bad public key: {exc}") from None
        if not isinstance(key, rsa.RSAPublicKey):
            raise KeyFileError(f"{where}: not an RSA public key")
        keys.append(key)
    return keys


def load_public_keys(path: str | os.PathLike[str]) -> list[rsa.RSAPublicKey]:
    """Every RSA public key in a PEM file (several blocks allowed) or in the
    ``*.pem`` files of a directory, as the reference reads them."""
    p = Path(path)
    try:
        if p.is_dir():
            keys: list[rsa.RSAPublicKey] = []
            for f in sorted(p.glob("*.pem")):
                if f.is_file():
                    keys.extend(_public_keys_in(f.read_bytes(), str(f)))
            return keys
        return _public_keys_in(p.read_bytes(), str(p))
    except OSError as exc:
        raise KeyFileError(
            f"cannot read public keys {os.fspath(path)!r}: {exc}"
        ) from None


class StreamCipher:
    """One direction pair of an open connection in ``RSA`` or ``AES`` mode.

    :param own_key: our private key (RSA mode: what the peer's blocks are
        encrypted to).
    :param peer_key: the peer's public key (RSA mode: what we encrypt to).
    :param session: the AES session key (AES mode).
    :param generation: ``"legacy"`` (AES records without tag), ``"v1"``
        (tag keyed with the session key) or ``"v2"`` (keys per direction
        derived from ``session`` and ``transcript``; the tag covers the
        record's sequence number).
    :param transcript: v2: :func:`v2_transcript` of the handshake.
    :param server: v2: we are the server (picks the direction keys).
    :param max_record: largest AES record accepted (bytes after the length).
    """

    def __init__(
        self,
        mode: RSAMode,
        *,
        own_key: rsa.RSAPrivateKey,
        peer_key: rsa.RSAPublicKey,
        session: bytes = b"",
        generation: str = "v1",
        transcript: bytes = b"",
        server: bool = False,
        max_record: int = MAX_RECORD,
    ) -> None:
        if mode == RSAMode.AES and len(session) != SESSION_KEY_SIZE:
            raise ValueError("AES mode needs a 32-byte session key")
        if generation not in GENERATIONS:
            raise ValueError(f"unknown handshake generation {generation!r}")
        self.mode = mode
        self.own_key = own_key
        self.peer_key = peer_key
        #: bytes of one RSA block to us
        self.block = own_key.key_size // 8
        #: plaintext bytes per RSA block to the peer
        self.step = peer_key.key_size // 8 - OAEP_OVERHEAD
        self.session = session
        self.generation = generation
        self.tagged = generation != "legacy"
        self.max_record = max_record
        # AES keys: (encryption, tag) of what we send and of what we receive
        self._send = self._recv = (session, session)
        #: v2: sequence numbers of the next record sent / received
        self.sequenced = generation == "v2"
        self.sent = self.received = 0
        if self.sequenced and mode == RSAMode.AES:
            if not transcript:
                raise ValueError("v2 needs the handshake transcript")
            c2s = (
                _v2_key(session, transcript, b"c2s enc"),
                _v2_key(session, transcript, b"c2s mac"),
            )
            s2c = (
                _v2_key(session, transcript, b"s2c enc"),
                _v2_key(session, transcript, b"s2c mac"),
            )
            self._send, self._recv = (s2c, c2s) if server else (c2s, s2c)

    def encrypt(self, data: bytes) -> list[bytes]:
        """Plaintext stream bytes -> the wire chunks (RSA blocks, or AES
        records of at most :data:`AES_CHUNK` plaintext bytes)."""
        view = memoryview(data)
        out: list[bytes] = []
        if self.mode == RSAMode.RSA:
            key = self.peer_key
            step = self.step
            for pos in range(0, len(data), step):
                out.append(key.encrypt(bytes(view[pos : pos + step]), OAEP))
            return out
        enc_key, mac_key = self._send
        tag = TAG_SIZE if self.tagged else 0
        sequenced = self.sequenced
        for pos in range(0, len(data), AES_CHUNK):
            iv = os.urandom(IV_SIZE)
            enc = Cipher(algorithms.AES(enc_key), modes.CTR(iv)).encryptor()
            ct = enc.update(view[pos : pos + AES_CHUNK]) + enc.finalize()
            out.append(_U64.pack(IV_SIZE + len(ct) + tag))
            out.append(iv)
            out.append(ct)
            if sequenced:
                mac = hmac.new(mac_key, _U64.pack(self.sent) + iv, hashlib.sha256)
                mac.update(ct)
                self.sent += 1
                out.append(mac.digest())
            elif tag:
                out.append(hmac.new(mac_key, iv + ct, hashlib.sha256).digest())
        return out

    def decrypt(self, buf: bytearray, max_blocks: int = 0) -> bytes:
        """The whole blocks / records at the head of ``buf`` -> plaintext
        (consumed from ``buf``; a partial one stays).  RSA mode: at most
        ``max_blocks`` blocks when it is not 0.

        :raises BadStream: an AES record length out of bounds (checked
            before the record is buffered) or a bad tag.
        :raises ValueError: an RSA block that does not decrypt.
        """
        out: list[bytes] = []
        if self.mode == RSAMode.RSA:
            k = self.block
            count = len(buf) // k
            if max_blocks:
                count = min(count, max_blocks)
            n = count * k
            decrypt = self.own_key.decrypt
            for pos in range(0, n, k):
                out.append(decrypt(bytes(buf[pos : pos + k]), OAEP))
            del buf[:n]
            return b"".join(out)
        tagged = self.tagged
        sequenced = self.sequenced
        key, mac_key = self._recv
        low = IV_SIZE + TAG_SIZE if tagged else IV_SIZE
        high = self.max_record
        pos = 0
        end = len(buf)
        while end - pos >= 8:
            (size,) = _U64.unpack_from(buf, pos)
            if not low <= size <= high:  # before buffering the record
                raise BadStream(f"AES record of {size} bytes (allowed {low}-{high})")
            if end - pos - 8 < size:
                break
            start = pos + 8
            pos = start + size
            iv = bytes(buf[start : start + IV_SIZE])
            if tagged:
                ct = bytes(buf[start + IV_SIZE : pos - TAG_SIZE])
                if sequenced:
                    head = _U64.pack(self.received) + iv
                    self.received += 1
                else:
                    head = iv
                mac = hmac.new(mac_key, head, hashlib.sha256)
                mac.update(ct)
                if not hmac.compare_digest(
                    mac.digest(), bytes(buf[pos - TAG_SIZE : pos])
                ):
                    raise BadStream("bad AES record tag")
            else:
                ct = bytes(buf[start + IV_SIZE : pos])
            dec = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
            out.append(dec.update(ct) + dec.finalize())
        if pos:
            del buf[:pos]
        return b"".join(out)


class SecureOwner(Protocol):
    """What :class:`SecureTransport` needs from the protocol that owns it."""

    inner_paused: bool

    @property
    def mode(self) -> RSAMode | None: ...

    @property
    def generation(self) -> str | None: ...

    @property
    def backlog(self) -> bool: ...

    def encrypt(self, data: bytes) -> list[bytes]: ...


class SecureTransport(asyncio.Transport):
    """The transport an inner protocol sees: ``write`` encrypts."""

    def __init__(self, raw: asyncio.Transport, secure: SecureOwner) -> None:
        super().__init__()
        self._raw = raw
        self._secure = secure

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            return
        chunks = self._secure.encrypt(bytes(data))
        if not chunks:
            return
        if len(chunks) == 1:
            self._raw.write(chunks[0])
        else:
            self._raw.write(b"".join(chunks))

    def writelines(
        self, list_of_data: Iterable[bytes | bytearray | memoryview]
    ) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        raise NotImplementedError("the RSA transport cannot half-close")

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self._raw.close()

    def abort(self) -> None:
        self._raw.abort()

    def is_closing(self) -> bool:
        return self._raw.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """The socket's extra info, plus ``rsa_mode`` (an :class:`RSAMode`,
        None before the handshake) and ``rsa_generation``."""
        if name == "rsa_mode":
            return self._secure.mode
        if name == "rsa_generation":
            return self._secure.generation
        return self._raw.get_extra_info(name, default)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._raw.get_write_buffer_limits()

    def set_write_buffer_limits(
        self, high: int | None = None, low: int | None = None
    ) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def pause_reading(self) -> None:
        self._secure.inner_paused = True
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._secure.inner_paused = False
        if not self._secure.backlog:
            self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        raise NotImplementedError("the RSA transport keeps its protocol")

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._raw.get_protocol()
