"""The optional RSA/AES transport, server side (protocol.md 5.4).

When the server has a private key, every connection starts with an RSA-OAEP
handshake before the Periodic registration frame.  :class:`SecureProtocol`
sits between the socket and the unchanged
:class:`~periodic_fast.server.protocol.ServerProtocol`: it runs the
handshake, decrypts what the peer sends and hands the plaintext on, and gives
the inner protocol a transport (:class:`_SecureTransport`) whose ``write``
encrypts.

Two handshake generations exist; the length of the first decrypted block
tells them apart:

* **legacy** (aio-periodic 1.0.0's ``RSATransport``): the client sends its key
  fingerprint (32 bytes), the server answers with its own, the client sends
  the mode and, for AES, the session key.  The client never proves it holds
  its private key: anyone who knows an allowed *public* key gets in.  Refuse
  it with ``legacy=False`` when the clients can speak v1.
* **v1** (reference 1.2.9.1): fingerprint + 16-byte nonce; the server answers
  with its fingerprint, a proof over the nonce and a challenge; the client
  answers with a proof over the challenge.  AES records carry an HMAC tag.

After the handshake the stream is, per direction:

* ``Plain``: raw bytes;
* ``RSA``: OAEP blocks of the recipient's key size ``k``, each carrying at
  most ``k - 66`` plaintext bytes (we cut large writes into blocks);
* ``AES``: records ``u64 len | iv(16) | AES-256-CTR(data) [| HMAC-SHA-256]``,
  ``len`` counting everything after itself; large writes are cut into
  records of at most :data:`AES_CHUNK` plaintext bytes.

Anything wrong (undecryptable block, unknown fingerprint, bad proof, a mode
the server does not allow, a record length out of bounds -- checked before the
record is buffered -- or a bad tag) closes that connection only, with one log
line.  A peer that talks plain Periodic to an RSA server is recognised by
its first frame and closed at once (the reference waits for a full block).

Costs: the crypto runs on the event loop.  A handshake is one or two private
key operations (~1-2 ms for a 2048-bit key); AES costs little; RSA mode costs
one private-key operation per ``k`` bytes received and is meant for small
legacy setups only.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import hmac
import logging
import os
import re
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..constants import MAGIC_REQUEST, MAGIC_RESPONSE
from ..errors import PeriodicError

__all__ = [
    "AES_CHUNK",
    "MAX_RECORD",
    "KeyFileError",
    "KeyRing",
    "RSAMode",
    "SecureConfig",
    "SecureProtocol",
    "fingerprint",
    "load_private_key",
    "load_public_keys",
    "parse_modes",
]

log = logging.getLogger("periodic_fast.server")

#: OAEP(SHA-256) overhead: a ``k``-byte block carries at most ``k - 66`` bytes.
OAEP_OVERHEAD = 66
#: Largest AES record (everything after the length field) we accept: the
#: reference's limit.
MAX_RECORD = 64 * 1024 * 1024
#: RSA mode: blocks decrypted per loop turn (~1 ms each for 2048 bits), so
#: one peer's burst cannot stall the other connections for long.
RSA_BATCH = 32
#: Plaintext bytes per AES record we send.
AES_CHUNK = 256 * 1024
FP_SIZE = 32
NONCE_SIZE = 16
IV_SIZE = 16
TAG_SIZE = 32
SESSION_KEY_SIZE = 32
SERVER_DOMAIN = b"metro-rsa-server-v1"
CLIENT_DOMAIN = b"metro-rsa-client-v1"

_OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
_U64 = struct.Struct(">Q")
_HEADER = struct.Struct(">4sII")  # magic, length, crc of a Periodic frame
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


class KeyRing:
    """The allowed client keys by fingerprint, re-read when the file changes.

    A lookup that misses re-reads the keys if the file (or directory) changed
    since the last read, at most once per ``poll`` seconds; a file that cannot
    be read any more keeps the keys already loaded (and logs why).
    """

    def __init__(self, path: str | os.PathLike[str], *, poll: float = 1.0) -> None:
        self.path = Path(path)
        self.poll = poll
        self._stamp = self._mtimes()
        self._keys = {fingerprint(k): k for k in load_public_keys(path)}
        self._checked = time.monotonic()

    def __len__(self) -> int:
        return len(self._keys)

    def _mtimes(self) -> tuple[tuple[str, int], ...]:
        p = self.path
        try:
            if p.is_dir():
                files = [p, *sorted(p.glob("*.pem"))]
                return tuple((str(f), f.stat().st_mtime_ns) for f in files)
            return ((str(p), p.stat().st_mtime_ns),)
        except OSError:
            return ()

    def get(self, fp: bytes) -> rsa.RSAPublicKey | None:
        """The allowed key with fingerprint ``fp``, or None."""
        key = self._keys.get(fp)
        if key is not None:
            return key
        now = time.monotonic()
        if now - self._checked >= self.poll:
            self._checked = now
            stamp = self._mtimes()
            if stamp and stamp != self._stamp:
                try:
                    keys = load_public_keys(self.path)
                except KeyFileError as exc:
                    log.error(
                        "public keys not reloaded (keeping the old ones): %s", exc
                    )
                else:
                    self._keys = {fingerprint(k): k for k in keys}
                    log.info("reloaded %d allowed public key(s)", len(keys))
                self._stamp = stamp
        return self._keys.get(fp)


class SecureConfig:
    """What every secured connection of a server shares.

    :param private_key: the server's RSA key.
    :param keys: the allowed client public keys.
    :param modes: stream modes clients may choose (default: all three).
    :param legacy: serve the legacy handshake (aio-periodic 1.0.0), which
        does not prove that the client holds its private key.
    :param max_record: largest AES record accepted (bytes after the length).
    """

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey,
        keys: KeyRing,
        *,
        modes: Iterable[RSAMode] = tuple(RSAMode),
        legacy: bool = True,
        max_record: int = MAX_RECORD,
    ) -> None:
        self.private_key = private_key
        self.block = private_key.key_size // 8  # bytes of one block to us
        self.fingerprint = fingerprint(private_key.public_key())
        self.keys = keys
        self.modes = frozenset(modes)
        if not self.modes:
            raise ValueError("no RSA mode allowed")
        self.legacy = legacy
        if max_record < IV_SIZE + TAG_SIZE + 1:
            raise ValueError("max_record too small")
        self.max_record = max_record
        #: handshakes done, by ``"legacy/AES"``-style key, and ``"refused"``
        self.stats: Counter[str] = Counter()

    @classmethod
    def load(
        cls,
        private_path: str | os.PathLike[str],
        public_path: str | os.PathLike[str],
        *,
        modes: str | Iterable[str] = "Plain,RSA,AES",
        legacy: bool = True,
        max_record: int = MAX_RECORD,
    ) -> SecureConfig:
        """Read the keys (raises :class:`KeyFileError`) and build the config.

        No allowed public key at all is an error: nobody could connect.
        """
        key = load_private_key(private_path)
        ring = KeyRing(public_path)
        if not len(ring):
            raise KeyFileError(f"no RSA public key in {os.fspath(public_path)!r}")
        return cls(
            key, ring, modes=parse_modes(modes), legacy=legacy, max_record=max_record
        )

    def decrypt(self, block: bytes) -> bytes:
        """One OAEP block to us -> its plaintext (ValueError if bad)."""
        return self.private_key.decrypt(block, _OAEP)


class _BadStream(Exception):
    """The peer broke the transport protocol: close the connection."""


# handshake states
_HELLO, _PROOF, _MODE, _KEY, _OPEN = range(5)


def _plain_frame(head: bytes | bytearray) -> bool:
    """True when ``head`` starts with a whole small Periodic frame (a plain
    client on an RSA server; a random OAEP block never passes the CRC)."""
    if len(head) < 12 or bytes(head[:4]) not in (MAGIC_REQUEST, MAGIC_RESPONSE):
        return False
    size: int
    crc: int
    _, size, crc = _HEADER.unpack_from(head)
    return bool(
        size <= 4096
        and len(head) >= 12 + size
        and (zlib.crc32(head[12 : 12 + size]) == crc)
    )


class SecureProtocol(asyncio.Protocol):
    """Wraps one connection's protocol in the RSA/AES transport.

    ``inner`` is connected at once (so connection limits and the registration
    timeout -- which then also bounds the handshake -- work as for plain
    connections) but receives bytes only after the handshake.
    """

    def __init__(self, inner: Any, config: SecureConfig) -> None:
        self._inner = inner
        self._cfg = config
        self._raw: asyncio.Transport | None = None
        self._face: _SecureTransport | None = None
        self._buf = bytearray()
        self._state = _HELLO
        self._v1 = False
        self._challenge = b""
        self._client_fp = b""
        self._peer_key: rsa.RSAPublicKey | None = None
        self._peer_block = 0
        self._mode = RSAMode.Plain
        self._session = b""
        self._dead = False
        # RSA mode: blocks left for a later loop turn (reading paused meanwhile)
        self._backlog = False
        self.inner_paused = False  # the inner protocol paused reading
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def mode(self) -> RSAMode | None:
        """The stream mode once the handshake is done (None before)."""
        return self._mode if self._state == _OPEN else None

    @property
    def generation(self) -> str | None:
        """``"legacy"`` or ``"v1"`` once the first block is read."""
        if self._state == _HELLO:
            return None
        return "v1" if self._v1 else "legacy"

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        self._raw = raw
        self._loop = asyncio.get_running_loop()
        self._face = _SecureTransport(raw, self)
        self._inner.connection_made(self._face)

    def data_received(self, data: bytes) -> None:
        raw = self._raw
        if self._dead or raw is None or raw.is_closing():
            return
        if self._state == _OPEN and self._mode == RSAMode.Plain:
            self._inner.data_received(data)
            return
        self._buf += data
        self._pump()

    def _pump(self) -> None:
        """Decrypt what is buffered (RSA mode: a bounded batch of blocks per
        loop turn, reading paused until the backlog is gone)."""
        raw = self._raw
        if self._dead or raw is None:
            return
        buf = self._buf
        try:
            plain = self._handshake() if self._state != _OPEN else b""
            if self._state == _OPEN and buf:
                plain += self._decrypt_stream()
        except _BadStream as exc:
            self._fail(str(exc))
            return
        except ValueError as exc:  # cryptography: undecryptable block
            self._fail(f"bad ciphertext ({exc.__class__.__name__})")
            return
        except Exception:  # a bug here must not take the loop's logger down
            log.exception("%s: rsa transport error", getattr(self._inner, "peer", "?"))
            self._fail("internal error")
            return
        if plain and not self._dead:
            self._inner.data_received(plain)
        if self._dead or raw.is_closing():
            return
        if self._mode == RSAMode.RSA and len(buf) >= self._cfg.block:
            if not self._backlog:
                self._backlog = True
                with contextlib.suppress(RuntimeError):
                    raw.pause_reading()
            assert self._loop is not None
            self._loop.call_soon(self._pump)
        elif self._backlog:
            self._backlog = False
            if not self.inner_paused:
                with contextlib.suppress(RuntimeError):
                    raw.resume_reading()

    @property
    def backlog(self) -> bool:
        """True while RSA blocks wait for a later loop turn."""
        return self._backlog

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        self._buf.clear()
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    # -- input ---------------------------------------------------------------------

    def _fail(self, reason: str) -> None:
        self._cfg.stats["refused"] += 1
        self._dead = True
        self._buf.clear()
        self._inner.drop(f"rsa transport: {reason}", abort=True)

    def _block(self) -> bytes | None:
        """The next whole OAEP block to us, decrypted, or None (need more)."""
        k = self._cfg.block
        buf = self._buf
        if len(buf) < k:
            return None
        block = bytes(buf[:k])
        del buf[:k]
        return self._cfg.decrypt(block)

    def _send_block(self, data: bytes) -> None:
        assert self._peer_key is not None and self._raw is not None
        self._raw.write(self._peer_key.encrypt(data, _OAEP))

    def _handshake(self) -> bytes:
        """Advance the handshake over the buffered bytes; returns the
        plaintext stream bytes that followed it (Plain mode only)."""
        cfg = self._cfg
        while self._state != _OPEN:
            if self._state == _HELLO and _plain_frame(self._buf):
                raise _BadStream("plain Periodic client on an RSA-only server")
            msg = self._block()
            if msg is None:
                return b""
            state = self._state
            if state == _HELLO:
                self._hello(msg)
            elif state == _PROOF:
                expect = hashlib.sha256(
                    CLIENT_DOMAIN + self._challenge + self._client_fp
                ).digest()
                if not hmac.compare_digest(msg, expect):
                    raise _BadStream("wrong client proof")
                self._state = _MODE
            elif state == _MODE:
                if len(msg) != 1 or msg[0] not in RSAMode._value2member_map_:
                    raise _BadStream(f"bad mode block {msg[:8].hex()}")
                mode = RSAMode(msg[0])
                if mode not in cfg.modes:
                    raise _BadStream(f"mode {mode.name} not allowed")
                self._mode = mode
                self._state = _KEY if mode == RSAMode.AES else _OPEN
            else:  # _KEY
                if len(msg) != SESSION_KEY_SIZE:
                    raise _BadStream(f"session key of {len(msg)} bytes")
                self._session = msg
                self._state = _OPEN
        self._cfg.stats[f"{self.generation}/{self._mode.name}"] += 1
        log.debug(
            "%s: rsa handshake done (%s, %s)",
            getattr(self._inner, "peer", "?"),
            "v1" if self._v1 else "legacy",
            self._mode.name,
        )
        if self._mode == RSAMode.Plain:
            rest = bytes(self._buf)
            self._buf.clear()
            return rest
        return b""

    def _hello(self, msg: bytes) -> None:
        cfg = self._cfg
        if len(msg) == FP_SIZE:
            if not cfg.legacy:
                raise _BadStream("legacy handshake refused (v1 only)")
            self._v1 = False
        elif len(msg) == FP_SIZE + NONCE_SIZE:
            self._v1 = True
        else:
            raise _BadStream(f"first block of {len(msg)} bytes (want 32 or 48)")
        fp = msg[:FP_SIZE]
        key = cfg.keys.get(fp)
        if key is None:
            raise _BadStream(f"unknown client key {fp[:8].hex()}...")
        self._client_fp = fp
        self._peer_key = key
        self._peer_block = key.key_size // 8
        if self._peer_block - OAEP_OVERHEAD < FP_SIZE:  # pragma: no cover
            raise _BadStream("client key too small")
        self._send_block(cfg.fingerprint)
        if self._v1:
            nonce = msg[FP_SIZE:]
            self._challenge = os.urandom(NONCE_SIZE)
            self._send_block(
                hashlib.sha256(SERVER_DOMAIN + nonce + cfg.fingerprint).digest()
            )
            self._send_block(self._challenge)
            self._state = _PROOF
        else:
            self._state = _MODE

    def _decrypt_stream(self) -> bytes:
        """Every whole block / record in the buffer -> plaintext."""
        buf = self._buf
        out: list[bytes] = []
        if self._mode == RSAMode.RSA:
            k = self._cfg.block
            decrypt = self._cfg.decrypt
            n = min(len(buf) // k, RSA_BATCH) * k
            for pos in range(0, n, k):
                out.append(decrypt(bytes(buf[pos : pos + k])))
            del buf[:n]
            return b"".join(out)
        # AES records
        v1 = self._v1
        key = self._session
        low = IV_SIZE + TAG_SIZE if v1 else IV_SIZE
        high = self._cfg.max_record
        pos = 0
        end = len(buf)
        while end - pos >= 8:
            (size,) = _U64.unpack_from(buf, pos)
            if not low <= size <= high:  # before buffering the record
                raise _BadStream(f"AES record of {size} bytes (allowed {low}-{high})")
            if end - pos - 8 < size:
                break
            start = pos + 8
            pos = start + size
            iv = bytes(buf[start : start + IV_SIZE])
            if v1:
                ct = bytes(buf[start + IV_SIZE : pos - TAG_SIZE])
                mac = hmac.new(key, iv + ct, hashlib.sha256).digest()
                if not hmac.compare_digest(mac, bytes(buf[pos - TAG_SIZE : pos])):
                    raise _BadStream("bad AES record tag")
            else:
                ct = bytes(buf[start + IV_SIZE : pos])
            dec = Cipher(algorithms.AES(key), modes.CTR(iv)).decryptor()
            out.append(dec.update(ct) + dec.finalize())
        if pos:
            del buf[:pos]
        return b"".join(out)

    # -- output --------------------------------------------------------------------

    def encrypt(self, data: bytes) -> list[bytes]:
        """Plaintext stream bytes to the peer -> the wire chunks."""
        if self._state != _OPEN:
            return []  # nothing may leave before the handshake (never happens)
        mode = self._mode
        if mode == RSAMode.Plain:
            return [data]
        key = self._peer_key
        assert key is not None
        view = memoryview(data)
        out: list[bytes] = []
        if mode == RSAMode.RSA:
            step = self._peer_block - OAEP_OVERHEAD
            for pos in range(0, len(data), step):
                out.append(key.encrypt(bytes(view[pos : pos + step]), _OAEP))
            return out
        session = self._session
        tag = TAG_SIZE if self._v1 else 0
        for pos in range(0, len(data), AES_CHUNK):
            iv = os.urandom(IV_SIZE)
            enc = Cipher(algorithms.AES(session), modes.CTR(iv)).encryptor()
            ct = enc.update(view[pos : pos + AES_CHUNK]) + enc.finalize()
            out.append(_U64.pack(IV_SIZE + len(ct) + tag))
            out.append(iv)
            out.append(ct)
            if tag:
                out.append(hmac.new(session, iv + ct, hashlib.sha256).digest())
        return out


class _SecureTransport(asyncio.Transport):
    """The transport the inner protocol sees: ``write`` encrypts."""

    def __init__(self, raw: asyncio.Transport, secure: SecureProtocol) -> None:
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
