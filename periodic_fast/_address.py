"""Server addresses (one parser for the server and the clients) and
text-to-bytes on the client side.

Accepted forms: ``tcp://HOST:PORT``, ``tcp://[V6]:PORT``, ``tcp://:PORT``,
a bare ``HOST:PORT`` or ``[V6]:PORT`` (TCP, like aio-periodic),
``unix://PATH``, or a bare path (a unix socket; with a ``/`` when it has a
``:``, e.g. ``./a:b``).  Anything else is refused with the list of these
forms rather than guessed: a ``-H http://127.0.0.1:5006`` once made a socket
*file* of that name.  The default comes from ``$PERIODIC_PORT``.

:func:`parse_address` is the client's reading (an empty host means the
local host), :func:`parse_listen_address` the server's (an empty host stays
None: the server binds loopback; port 0 picks a free port).  Pure functions
(no asyncio).  Re-exported by :mod:`periodic_fast.client` and
:mod:`periodic_fast.server.app`, the public import paths.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Literal, NamedTuple, TypeAlias

from .constants import ADDRESS_ENV, DEFAULT_ADDRESS

__all__ = [
    "ACCEPTED_FORMS",
    "Address",
    "BytesLike",
    "ListenAddress",
    "parse_address",
    "parse_listen_address",
    "resolve_address",
    "to_bytes",
]

#: Bytes-like or text; text is encoded as UTF-8 on the wire.
BytesLike: TypeAlias = "bytes | bytearray | memoryview | str"

#: What an address may look like, quoted by every refusal.
ACCEPTED_FORMS = (
    "tcp://HOST:PORT, tcp://[IPV6]:PORT, tcp://:PORT, HOST:PORT, "
    "unix://PATH or a socket path (./NAME when it has a ':')"
)


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


class ListenAddress(NamedTuple):
    """A parsed listen address: ``("tcp", host, port)`` or ``("unix", path, 0)``.

    ``host`` is ``None`` for ``tcp://:PORT``: the server binds it to the
    loopback address (a safe default; the reference binds every interface),
    a client connects to the local host.
    """

    scheme: Literal["tcp", "unix"]
    host: str | None
    port: int


def resolve_address(address: str | None = None) -> str:
    """``address``, else ``$PERIODIC_PORT``, else ``unix:///tmp/periodic.sock``.

    An empty environment variable counts as unset.
    """
    if address:
        return address
    return os.environ.get(ADDRESS_ENV) or DEFAULT_ADDRESS


def _refuse(address: str, why: str) -> ValueError:
    return ValueError(f"{why} {address!r} (use {ACCEPTED_FORMS})")


def _tcp(address: str, rest: str) -> ListenAddress:
    host, sep, port_s = rest.rpartition(":")
    if not sep or not port_s.isdigit() or int(port_s) > 65535:
        raise _refuse(address, "bad tcp address")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise _refuse(address, "bad tcp address")
    elif ":" in host:  # an IPv6 host must be bracketed: where is the port?
        raise _refuse(address, "ambiguous tcp address")
    return ListenAddress("tcp", host or None, int(port_s))


def _is_host(word: str) -> bool:
    """A host name someone forgot the port of (not a socket file name)."""
    if word.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(word)
    except ValueError:
        return False
    return True


def parse_listen_address(address: str) -> ListenAddress:
    """The server's reading of ``address`` (see the module docstring).

    :raises ValueError: for anything else, naming the accepted forms.
    """
    scheme, sep, rest = address.partition("://")
    if sep:
        if scheme == "tcp":
            return _tcp(address, rest)
        if scheme == "unix":
            if not rest:
                raise _refuse(address, "bad unix address")
            return ListenAddress("unix", rest, 0)
        raise _refuse(address, "unsupported address")
    if not address:
        raise _refuse(address, "empty address")
    if "/" in address:  # a path, whatever else it holds
        return ListenAddress("unix", address, 0)
    if ":" in address:  # bare HOST:PORT is TCP, as for aio-periodic
        return _tcp(address, address)
    if _is_host(address):
        raise _refuse(address, "a host without a port:")
    return ListenAddress("unix", address, 0)  # a socket file here


def parse_address(address: str) -> Address:
    """The client's reading of ``address``: as :func:`parse_listen_address`,
    an empty host is the local host and port 0 is refused.

    :raises ValueError: for anything else, naming the accepted forms.
    """
    scheme, host, port = parse_listen_address(address)
    if scheme == "tcp" and port == 0:
        raise _refuse(address, "port 0 in")
    return Address(scheme, host or "127.0.0.1", port)


def to_bytes(value: BytesLike) -> bytes:
    """Text as UTF-8, any bytes-like as ``bytes``."""
    if isinstance(value, str):
        return value.encode()
    return bytes(value)
