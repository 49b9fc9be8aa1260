"""The exception tree shared by every layer (and by both codec twins).

Plain Python on purpose: the Cython twins import and raise these classes, so an
``except ProtocolError`` clause catches errors from either implementation.

The client side's errors (:class:`ClientError` and its subclasses, with
:class:`RSAHandshakeError`) live here too, so the client, the worker and the
RSA transport share them without importing each other; they stay importable
from :mod:`periodic_fast.client` and :mod:`periodic_fast.rsa_transport`.
"""

from __future__ import annotations

from .constants import Command

__all__ = [
    "BadMagic",
    "BadRegistration",
    "CRCMismatch",
    "ClientError",
    "ConnectionLost",
    "FrameTooLarge",
    "NoWorkerError",
    "NotConnected",
    "PeriodicError",
    "ProtocolError",
    "RSAHandshakeError",
    "RequestRejected",
    "RequestTimeout",
    "TrailingBytes",
    "TruncatedPayload",
    "UnknownCommand",
]


class PeriodicError(Exception):
    """Base class of every error raised by periodic_fast."""


class ProtocolError(PeriodicError):
    """The peer sent bytes that are not valid Periodic protocol.

    The only safe reaction is to close the connection: framing can no longer be
    trusted after any of these.
    """


class BadMagic(ProtocolError):
    """A frame did not start with ``\\0REQ`` / ``\\0RES`` where one was required."""


class CRCMismatch(ProtocolError):
    """The CRC-32 in the frame header does not match the body."""


class FrameTooLarge(ProtocolError):
    """The header announces a body larger than the configured frame limit.

    Raised from the 12-byte header alone, before any of the body is buffered.
    """

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"frame body of {length} bytes exceeds the limit of {limit}")
        self.length = length
        self.limit = limit


class UnknownCommand(ProtocolError):
    """The command byte is not one of the protocol's codes (0-34)."""


class TruncatedPayload(ProtocolError):
    """A payload ended before all of its fields could be read."""


class TrailingBytes(ProtocolError):
    """A payload had bytes left over after every field was read."""


class BadRegistration(ProtocolError):
    """The registration frame has an unknown client type or a malformed identity."""


# -- the client side ---------------------------------------------------------------


class ClientError(PeriodicError):
    """Base class of the errors a :class:`~periodic_fast.client.Client` or
    worker raises."""


class NotConnected(ClientError, ConnectionError):
    """The server could not be reached (connect refused, no such socket...)."""


class ConnectionLost(ClientError, ConnectionError):
    """The connection closed while the request was in flight."""


class RequestTimeout(ClientError, TimeoutError):
    """No reply within the request's timeout."""


class NoWorkerError(ClientError):
    """RUN_JOB / RECV_DATA: no worker has registered the func (or the server
    refused the request for lack of permission: same reply on the wire)."""


class RequestRejected(ClientError):
    """The server answered with an unexpected command (e.g. ``NO_WORKER`` for a
    request the identity may not make)."""

    def __init__(self, command: int, payload: bytes = b"") -> None:
        try:
            cname = Command(command).name
        except ValueError:
            cname = str(command)
        super().__init__(f"unexpected reply {cname}")
        self.command = command
        self.payload = payload


class RSAHandshakeError(NotConnected):
    """The RSA handshake failed: the server closed the connection during it
    (our key is not among its allowed keys, or it cannot read what we
    encrypted to its key), its fingerprint or proof is wrong, or it did not
    answer in time.  A :class:`NotConnected`, so reconnect loops retry it like
    a server that is down."""
