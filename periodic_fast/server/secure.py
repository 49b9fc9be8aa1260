"""The optional RSA/AES transport, server side (protocol.md 5.4).

When the server has a private key, every connection starts with an RSA-OAEP
handshake before the Periodic registration frame.  :class:`SecureProtocol`
sits between the socket and the unchanged
:class:`~periodic_fast.server.protocol.ServerProtocol`: it runs the
handshake, decrypts what the peer sends and hands the plaintext on, and gives
the inner protocol a transport whose ``write`` encrypts.  Keys, proofs, the
stream ciphers and that transport are shared with the client side
(:mod:`periodic_fast._rsa_common`).

Three handshake generations exist; the first decrypted block tells them
apart (docs/transport.md has what each protects):

* **legacy** (aio-periodic 1.0.0's ``RSATransport``): the client sends its key
  fingerprint (32 bytes), the server answers with its own, the client sends
  the mode and, for AES, the session key.  The client never proves it holds
  its private key: anyone who knows an allowed *public* key gets in.  Off
  unless ``legacy=True`` (``periodicd --rsa-legacy``); a refused legacy hello
  logs a warning naming that flag (at most once a minute).
* **v1** (reference 1.2.9.1): fingerprint + 16-byte nonce; the server answers
  with its fingerprint, a proof over the nonce and a challenge; the client
  answers with a proof over the challenge.  AES records carry an HMAC tag.
  The mode and session key are not covered by the proof: a relay can swap
  them and be served as the client.  On unless ``v1=False``.
* **v2** (ours; our client's default): fingerprint + nonce + ``0x02``; the
  same blocks as v1 but both proofs are keyed with the peer's secret and
  cover the whole transcript, the client's proof (sent last) also its mode
  and session key; AES keys per direction, sequenced tags.

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
import hmac
import logging
import os
import struct
import time
import zlib
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric import rsa

from .._rsa_common import (
    AES_CHUNK,
    FP_SIZE,
    IV_SIZE,
    MAX_RECORD,
    NONCE_SIZE,
    OAEP,
    OAEP_OVERHEAD,
    SESSION_KEY_SIZE,
    TAG_SIZE,
    BadStream,
    KeyFileError,
    RSAMode,
    SecureTransport,
    StreamCipher,
    client_proof,
    fingerprint,
    generation_of,
    load_private_key,
    load_public_keys,
    parse_modes,
    server_proof,
    v2_client_proof,
    v2_server_proof,
    v2_transcript,
)
from ..constants import MAGIC_REQUEST, MAGIC_RESPONSE

__all__ = [
    "AES_CHUNK",
    "MAX_RECORD",
    "InnerProtocol",
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

#: RSA mode: blocks decrypted per loop turn (~1 ms each for 2048 bits), so
#: one peer's burst cannot stall the other connections for long.
RSA_BATCH = 32
_HEADER = struct.Struct(">4sII")  # magic, length, crc of a Periodic frame
#: The flag (and ``Server`` keyword) that lets the legacy handshake in.
LEGACY_FLAG = "--rsa-legacy"
#: Seconds between two "legacy refused" warnings (one scanner must not
#: flood the log).
REFUSAL_LOG_EVERY = 60.0


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
        does not prove that the client holds its private key (default off).
    :param v1: serve the v1 handshake (the reference's clients), whose
        mode and session key a relay can swap (default on).
    :param max_record: largest AES record accepted (bytes after the length).
    """

    def __init__(
        self,
        private_key: rsa.RSAPrivateKey,
        keys: KeyRing,
        *,
        modes: Iterable[RSAMode] = tuple(RSAMode),
        legacy: bool = False,
        v1: bool = True,
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
        self.v1 = v1
        self._legacy_warned = -REFUSAL_LOG_EVERY  # monotonic time of the last one
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
        legacy: bool = False,
        v1: bool = True,
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
            key,
            ring,
            modes=parse_modes(modes),
            legacy=legacy,
            v1=v1,
            max_record=max_record,
        )

    def decrypt(self, block: bytes) -> bytes:
        """One OAEP block to us -> its plaintext (ValueError if bad)."""
        return self.private_key.decrypt(block, OAEP)

    def legacy_refused(self, peer: str) -> None:
        """Log, at most once per :data:`REFUSAL_LOG_EVERY` s, that a legacy
        hello was refused and which flag would let it in."""
        now = time.monotonic()
        if now - self._legacy_warned < REFUSAL_LOG_EVERY:
            return
        self._legacy_warned = now
        log.warning(
            "%s: legacy RSA handshake (aio-periodic 1.0.0) refused: it does not "
            "authenticate the client; start the server with %s (Server("
            "rsa_legacy=True)) to serve it (this warning: at most once per %gs)",
            peer,
            LEGACY_FLAG,
            REFUSAL_LOG_EVERY,
        )


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


class InnerProtocol(Protocol):
    """What :class:`SecureProtocol` needs of the protocol it wraps (the
    binary side's :class:`~.protocol.ServerProtocol`)."""

    @property
    def peer(self) -> str:
        """Printable peer address, for logs."""
        ...

    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def data_received(self, data: bytes) -> None: ...

    def eof_received(self) -> bool | None: ...

    def connection_lost(self, exc: Exception | None) -> None: ...

    def pause_writing(self) -> None: ...

    def resume_writing(self) -> None: ...

    def drop(self, reason: str | None, *, abort: bool = False) -> None:
        """Close the connection (``reason`` is logged)."""
        ...


class SecureProtocol(asyncio.Protocol):
    """Wraps one connection's protocol in the RSA/AES transport.

    ``inner`` is connected at once (so connection limits and the registration
    timeout -- which then also bounds the handshake -- work as for plain
    connections) but receives bytes only after the handshake.
    """

    def __init__(self, inner: InnerProtocol, config: SecureConfig) -> None:
        self._inner = inner
        self._cfg = config
        self._raw: asyncio.Transport | None = None
        self._face: SecureTransport | None = None
        self._buf = bytearray()
        self._state = _HELLO
        self._gen = ""  # "legacy", "v1" or "v2" once the hello is read
        self._challenge = b""
        self._transcript = b""  # v2
        self._client_fp = b""
        self._peer_key: rsa.RSAPublicKey | None = None
        self._peer_block = 0
        self._mode = RSAMode.Plain
        self._session = b""
        self._cipher: StreamCipher | None = None  # RSA and AES modes, once open
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
        """``"legacy"``, ``"v1"`` or ``"v2"`` once the first block is read."""
        return self._gen or None

    # -- asyncio callbacks ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        self._raw = raw
        self._loop = asyncio.get_running_loop()
        self._face = SecureTransport(raw, self)
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
        except BadStream as exc:
            self._fail(str(exc))
            return
        except ValueError as exc:  # cryptography: undecryptable block
            self._fail(f"bad ciphertext ({exc.__class__.__name__})")
            return
        except Exception:  # a bug here must not take the loop's logger down
            log.exception("%s: rsa transport error", self._inner.peer)
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
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._dead = True
        self._buf.clear()
        self._inner.connection_lost(exc)
        # the face transport points back here: break that cycle now, the
        # daemon's GC tuning would keep both (and the inner protocol) for ages
        self._face = None
        self._raw = None
        self._cipher = None

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
        self._raw.write(self._peer_key.encrypt(data, OAEP))

    def _handshake(self) -> bytes:
        """Advance the handshake over the buffered bytes; returns the
        plaintext stream bytes that followed it (Plain mode only)."""
        cfg = self._cfg
        while self._state != _OPEN:
            if self._state == _HELLO and _plain_frame(self._buf):
                raise BadStream("plain Periodic client on an RSA-only server")
            msg = self._block()
            if msg is None:
                return b""
            state = self._state
            v2 = self._gen == "v2"
            # v1: proof, mode[, key]; v2 and legacy: mode[, key][, proof (v2)]
            if state == _HELLO:
                self._hello(msg)
            elif state == _PROOF:
                self._check_proof(msg)
                self._state = _OPEN if v2 else _MODE
            elif state == _MODE:
                if len(msg) != 1 or msg[0] not in RSAMode._value2member_map_:
                    raise BadStream(f"bad mode block {msg[:8].hex()}")
                mode = RSAMode(msg[0])
                if mode not in cfg.modes:
                    raise BadStream(f"mode {mode.name} not allowed")
                self._mode = mode
                done = _PROOF if v2 else _OPEN
                self._state = _KEY if mode == RSAMode.AES else done
            else:  # _KEY
                if len(msg) != SESSION_KEY_SIZE:
                    raise BadStream(f"session key of {len(msg)} bytes")
                self._session = msg
                self._state = _PROOF if v2 else _OPEN
        if self._mode != RSAMode.Plain:
            assert self._peer_key is not None
            self._cipher = StreamCipher(
                self._mode,
                own_key=cfg.private_key,
                peer_key=self._peer_key,
                session=self._session,
                generation=self._gen,
                transcript=self._transcript,
                server=True,
                max_record=cfg.max_record,
            )
        self._cfg.stats[f"{self._gen}/{self._mode.name}"] += 1
        log.debug(
            "%s: rsa handshake done (%s, %s)",
            self._inner.peer,
            self._gen,
            self._mode.name,
        )
        if self._mode == RSAMode.Plain:
            rest = bytes(self._buf)
            self._buf.clear()
            return rest
        return b""

    def _check_proof(self, msg: bytes) -> None:
        """The client's proof: v1 over the challenge; v2 keyed with it over
        the transcript, the mode and the session key read before it."""
        if self._gen == "v2":
            expect = v2_client_proof(
                self._challenge, self._transcript, self._mode, self._session
            )
        else:
            expect = client_proof(self._challenge, self._client_fp)
        if not hmac.compare_digest(msg, expect):
            raise BadStream("wrong client proof")

    def _hello(self, msg: bytes) -> None:
        cfg = self._cfg
        gen = generation_of(msg)
        if gen is None:
            raise BadStream(f"first block of {len(msg)} bytes (want 32, 48 or 49)")
        if gen == "legacy" and not cfg.legacy:
            cfg.legacy_refused(self._inner.peer)
            raise BadStream(f"legacy handshake refused (allow it with {LEGACY_FLAG})")
        if gen == "v1" and not cfg.v1:
            raise BadStream("v1 handshake refused (v2 only)")
        self._gen = gen
        fp = msg[:FP_SIZE]
        key = cfg.keys.get(fp)
        if key is None:
            raise BadStream(f"unknown client key {fp[:8].hex()}...")
        self._client_fp = fp
        self._peer_key = key
        self._peer_block = key.key_size // 8
        if self._peer_block - OAEP_OVERHEAD < FP_SIZE:  # pragma: no cover
            raise BadStream("client key too small")
        self._send_block(cfg.fingerprint)
        if gen == "legacy":
            self._state = _MODE
            return
        nonce = msg[FP_SIZE : FP_SIZE + NONCE_SIZE]
        challenge = self._challenge = os.urandom(NONCE_SIZE)
        if gen == "v2":
            self._transcript = v2_transcript(fp, nonce, cfg.fingerprint, challenge)
            self._send_block(v2_server_proof(nonce, self._transcript))
            self._state = _MODE
        else:
            self._send_block(server_proof(nonce, cfg.fingerprint))
            self._state = _PROOF
        self._send_block(challenge)

    def _decrypt_stream(self) -> bytes:
        """Every whole block / record in the buffer -> plaintext (RSA mode:
        at most :data:`RSA_BATCH` blocks)."""
        assert self._cipher is not None
        return self._cipher.decrypt(self._buf, RSA_BATCH)

    # -- output --------------------------------------------------------------------

    def encrypt(self, data: bytes) -> list[bytes]:
        """Plaintext stream bytes to the peer -> the wire chunks."""
        if self._state != _OPEN:
            return []  # nothing may leave before the handshake (never happens)
        if self._cipher is None:  # Plain
            return [data]
        return self._cipher.encrypt(data)
