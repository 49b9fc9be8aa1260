"""The exception tree shared by every layer (and by both codec twins).

Plain Python on purpose: the Cython twins import and raise these classes, so an
``except ProtocolError`` clause catches errors from either implementation.
"""

from __future__ import annotations

__all__ = [
    "BadMagic",
    "BadRegistration",
    "CRCMismatch",
    "FrameTooLarge",
    "PeriodicError",
    "ProtocolError",
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
