"""Server addresses and text-to-bytes on the client side.

``tcp://HOST:PORT``, ``tcp://[V6]:PORT``, ``unix://PATH``, a bare ``HOST:PORT``
or a bare path; the default comes from ``$PERIODIC_PORT``.  Pure functions
(no asyncio), apart from the connection machinery that uses them.  Re-exported
by :mod:`periodic_fast.client`, the public import path.
"""

from __future__ import annotations

import os
from typing import NamedTuple, TypeAlias

from .constants import ADDRESS_ENV, DEFAULT_ADDRESS

__all__ = ["Address", "BytesLike", "parse_address", "resolve_address", "to_bytes"]

#: Bytes-like or text; text is encoded as UTF-8 on the wire.
BytesLike: TypeAlias = "bytes | bytearray | memoryview | str"


class Address(NamedTuple):
    """A parsed address: ``("tcp", host, port)`` or ``("unix", path, 0)``."""

    scheme: str
    host: str
    port: int

    def __str__(self) -> str:
        if self.scheme == "unix":
            return f"unix://{self.host}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


def resolve_address(address: str | None = None) -> str:
    """``address``, else ``$PERIODIC_PORT``, else ``unix:///tmp/periodic.sock``.

    An empty environment variable counts as unset.
    """
    if address:
        return address
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def parse_address(address: str) -> Address:
    """Parse ``tcp://HOST:PORT``, ``tcp://[V6]:PORT``, ``unix://PATH``, a bare
    ``HOST:PORT`` (TCP, like aio-periodic) or a bare path (unix socket).

    :raises ValueError: for anything else.
    """
    if address.startswith("tcp://") or (
        "://" not in address and "/" not in address and ":" in address
    ):
        rest = address[6:] if address.startswith("tcp://") else address
        host, sep, port_s = rest.rpartition(":")
        if not sep or not port_s.isdigit() or not 0 < int(port_s) <= 65535:
            raise ValueError(f"bad tcp address {address!r} (want tcp://HOST:PORT)")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        return Address("tcp", host or "127.0.0.1", int(port_s))
    if address.startswith("unix://"):
        path = address[7:]
    elif "://" in address:
        raise ValueError(f"unsupported address {address!r} (tcp:// or unix://)")
    else:
        path = address
    if not path:
        raise ValueError(f"bad unix address {address!r}")
    return Address("unix", path, 0)


def to_bytes(value: BytesLike) -> bytes:
    """Text as UTF-8, any bytes-like as ``bytes``."""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)
