"""The RSA/AES transport on the client side: options and errors.

Pass an :class:`RSAConfig` as ``rsa=`` to :class:`~periodic_fast.client.Client`,
:class:`~periodic_fast.worker.Worker`, :class:`~periodic_fast.sync.SyncClient`
or the clusters, and every connection they open starts with the handshake of
protocol.md 5.4 before the registration frame::

    rsa = RSAConfig("client_private_key.pem", "server_public_key.pem", mode="AES")
    async with Client("tcp://host:5000", rsa=rsa) as c:
        await c.ping()

The client speaks the **v2** handshake by default (both sides prove they hold
their private keys over the whole transcript, mode and session key included;
AES records carry a sequenced HMAC tag with keys per direction): a periodic_fast
server serves it.  ``handshake="v1"`` talks to the reference server 1.2.9.1
(whose v1 lets a relay swap the mode and session key), ``handshake="legacy"``
to servers that only know aio-periodic 1.0.0's generation (no client proof at
all).  docs/transport.md says what each protects.

This module needs nothing beyond the standard library: the crypto lives in
:mod:`periodic_fast._rsa_client`, loaded (with ``cryptography``, the ``rsa``
extra) when a connection object is built with ``rsa=``.
:class:`RSAHandshakeError` is defined in :mod:`periodic_fast.errors` (a
:class:`~periodic_fast.errors.NotConnected`) and re-exported here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from .errors import RSAHandshakeError

if TYPE_CHECKING:
    from ._rsa_client import ClientKeys

__all__ = [
    "DEFAULT_PUBLIC_PATH",
    "HANDSHAKES",
    "MODES",
    "RSAConfig",
    "RSAHandshakeError",
    "RSAHandshakeName",
    "RSAModeName",
    "RSAUnavailable",
]

#: A stream mode's name.
RSAModeName = Literal["Plain", "RSA", "AES"]

#: A handshake generation's name.
RSAHandshakeName = Literal["v2", "v1", "legacy"]

#: Stream modes a client may pick (names as the reference spells them).
MODES = ("Plain", "RSA", "AES")
#: Handshake generations a client may speak, newest (the default) first.
HANDSHAKES = ("v2", "v1", "legacy")
#: Where the server's public key is looked for by default (cli-and-http.md 4.2).
DEFAULT_PUBLIC_PATH = "public_key.pem"


class RSAUnavailable(ImportError):
    """``rsa=`` was given but the ``cryptography`` package is missing."""


@dataclass(frozen=True)
class RSAConfig:
    """How a client connects through the RSA/AES transport.

    :param private_key_path: our RSA private key (PEM, unencrypted); the
        server must list its public key.
    :param server_public_key_path: the server's public key (PEM file, or a
        directory whose ``*.pem`` files are read; the first key found is the
        one used).
    :param mode: ``"AES"`` (default), ``"RSA"`` or ``"Plain"``
        (case-sensitive): how the stream travels after the handshake.
    :param handshake: ``"v2"`` (default: periodic_fast servers; the whole
        transcript is bound), ``"v1"`` (the reference server 1.2.9.1) or
        ``"legacy"`` (aio-periodic 1.0.0: no proofs, AES records without
        tag; periodic_fast servers refuse it unless started with
        ``--rsa-legacy``).
    :raises ValueError: an unknown mode or handshake.

    The key files are read once per config object, on the first
    :meth:`load` (the connection objects call it when they are built), and
    shared by every connection made with it: loading a private key costs
    tens of milliseconds.
    """

    private_key_path: str | os.PathLike[str]
    server_public_key_path: str | os.PathLike[str] = DEFAULT_PUBLIC_PATH
    mode: RSAModeName = "AES"
    handshake: RSAHandshakeName = "v2"
    _keys: ClientKeys | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown RSA mode {self.mode!r} (Plain, RSA or AES)")
        if self.handshake not in HANDSHAKES:
            raise ValueError(
                f"unknown RSA handshake {self.handshake!r} (v2, v1 or legacy)"
            )
        if not os.fspath(self.private_key_path):
            raise ValueError("RSA transport: no private key path")

    def load(self) -> ClientKeys:
        """Read both keys (once; later calls return the same keys).

        :raises RSAUnavailable: ``cryptography`` is not installed.
        :raises periodic_fast._rsa_common.KeyFileError: (a ValueError) a key
            file is missing, unreadable or not an RSA key.
        """
        if self._keys is not None:
            return self._keys
        try:
            from ._rsa_client import ClientKeys  # noqa: PLC0415  # optional dep
        except ImportError as exc:
            if not (exc.name or "").startswith("cryptography"):
                raise
            raise RSAUnavailable(
                "the RSA transport needs the 'cryptography' package "
                "(pip install 'periodic-fast[rsa]')"
            ) from exc
        keys = ClientKeys.load(
            self.private_key_path,
            self.server_public_key_path,
            mode=self.mode,
            generation=self.handshake,
        )
        object.__setattr__(self, "_keys", keys)  # frozen: the one cached field
        return keys
