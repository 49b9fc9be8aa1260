"""Who may ask what over HTTP: the Host check, bearer tokens, write guards.

:func:`host_allowed` keeps a browser from reading the server through a
rebound DNS name; :func:`check_identity` applies the auth file's rules
(docs/security.md) to a request as if it came from a client connection;
:func:`writes_allowed` gives HTTP writes the binary port's rules (auth on:
the identity's rights; off: loopback and unix peers, others only with
``--http-writes``); :func:`refuse_write` applies that and refuses a
browser's cross-site or cross-origin write; :func:`peer_claim` tells a
cluster node's request to another (it carries the cluster's secret in
:data:`PEER_HEADER`) from a client's.  Each answers with a refusal
(:class:`~.http_wire.Response`) or None; routing happens elsewhere.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Iterable

from ..auth import AuthRules, Identity, Role
from .http_wire import Request, Response, error_response, form_fields, text

__all__ = [
    "PEER_HEADER",
    "PROBES",
    "bearer_identity",
    "check_identity",
    "func_of",
    "host_allowed",
    "peer_claim",
    "refuse_write",
    "writes_allowed",
]

#: Paths anyone may ask for, auth or not: nothing secret there.
PROBES = (b"/healthz", b"/readyz", b"/favicon.ico")
#: The header of one cluster node's request to another: its value is the
#: cluster's secret (``store/cluster``; docs/cluster.md)
PEER_HEADER = b"x-periodic-cluster"


def peer_claim(req: Request, secret: bytes | None) -> bool | None:
    """Does ``req`` come from a node of this cluster?  None: it does not
    say so (no :data:`PEER_HEADER`, or this server is no cluster node:
    ``secret`` None); True: the header holds ``secret``; False: it holds
    something else (refuse it).  Compared in constant time."""
    claim = req.header(PEER_HEADER)
    if claim is None or secret is None or claim == b"1":
        return None  # "1": a node of an earlier release, which sent no secret
    return hmac.compare_digest(claim.strip(), secret)


def bearer_identity(rules: AuthRules, header: bytes | None) -> Identity | None:
    """The identity of an ``Authorization: Bearer <token>`` header, or None."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(b" ")
    token = token.strip()
    if scheme.lower() != b"bearer" or not token:
        return None
    return rules.authenticate_token(token)


def check_identity(rules: AuthRules, req: Request, path: bytes) -> Response | None:
    """Auth on: a refusal unless ``req`` carries the bearer token of an
    identity whose role and funcs allow it (``req.identity`` is set then)."""
    if path in PROBES:
        return None
    ident = bearer_identity(rules, req.header(b"authorization"))
    if ident is None:
        return error_response(
            401,
            "a valid 'Authorization: Bearer <token>' is required",
            headers=(("WWW-Authenticate", 'Bearer realm="periodic"'),),
        )
    req.identity = ident
    if not ident.may_connect_as(False):  # HTTP acts as a client connection
        return error_response(403, "this identity may not act as a client")
    if ident.role is Role.ADMIN:
        return None
    func = func_of(req, path)
    if func is None:  # admin-only: status page, overview, metrics
        return error_response(403, "this request needs the admin role")
    if func and not ident.func_allowed(func):
        return error_response(
            403, f"func {text(func)!r} is not allowed for this identity"
        )
    return None


def func_of(req: Request, path: bytes) -> bytes | None:
    """The func a non-admin request names: b"" when none (status list,
    OPTIONS), None when the request is for admins only."""
    method = req.method
    if method == "OPTIONS":
        return b""
    if method in ("GET", "HEAD"):
        if path in (b"/", b"/api/funcs", b"/api/funcs/"):
            return b""  # filtered by identity when listed
        if path.startswith(b"/api/funcs/"):
            return path[len(b"/api/funcs/") :]
        if path.startswith((b"/ui", b"/api/", b"/metrics")):
            return None
        return path[1:]  # GET /FUNC
    if path.startswith(b"/api/"):
        return None  # the job-feature API (retries, dead set, cron, jobs)
    if method == "POST":
        if path not in (b"", b"/"):
            return path[1:]
        return form_fields(req).get("func", b"") or None
    if method == "DELETE" and len(path) > 1:
        # dropping a func, like DROP_FUNC: for an identity whose funcs cover
        # it (it may remove each of its jobs already)
        return path[1:]
    return None  # the rest is for admins


def host_allowed(
    host: bytes | None,
    allowed: frozenset[str],
    addresses: Callable[[], Iterable[str]],
) -> bool:
    """Is ``host`` (a Host header) a name of this server: an IP literal,
    ``localhost``, one of ``allowed`` or the host of a bound ``tcp://``
    address (``addresses()``, asked only when the rest did not match)?"""
    if not host:
        return False
    value = host.decode("latin-1").strip().lower()
    if value.startswith("["):  # [v6]:port
        name = value[1 : value.find("]")] if "]" in value else ""
    else:
        name = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    name = name.rstrip(".")
    if not name:
        return False
    try:
        ipaddress.ip_address(name)
        return True  # an IP literal cannot be rebound
    except ValueError:
        pass
    if name == "localhost" or name.endswith(".localhost"):
        return True
    if name in allowed:
        return True
    for addr in addresses():
        if addr.startswith("tcp://"):
            bound = addr[6:].rsplit(":", 1)[0].strip("[]").lower()
            if bound == name:
                return True
    return False


def is_local_peer(peer: str) -> bool:
    """Is ``peer`` (``HOST:PORT``, ``unix:...``) on this machine: a unix
    socket or a loopback address (IPv4-mapped included)?"""
    if peer == "unix" or peer.startswith("unix:"):
        return True
    host = peer.rpartition(":")[0].strip("[]").split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def writes_allowed(
    req: Request, peer: str | None, auth_on: bool, switched_on: bool
) -> bool:
    """May a POST or DELETE from ``peer`` go on, as it would on the binary
    port?  With auth: when ``req`` carries an identity (its role and funcs
    were checked before routing; a probe path has none).  Without: a
    loopback or unix peer may, others only when the writes are
    ``switched_on`` (``--http-writes``).  ``peer`` None: unknown, not local."""
    if auth_on:
        return req.identity is not None
    return switched_on or (peer is not None and is_local_peer(peer))


def refuse_write(req: Request, writes: bool) -> Response | None:
    """403 unless ``writes`` (see :func:`writes_allowed`) and the request is
    not a browser's cross-site request (a page elsewhere posting to this
    server)."""
    if not writes:
        return error_response(
            403,
            "writes over HTTP from beyond this machine are off without"
            " --auth-file (start the server with --http-writes)",
        )
    if req.header(b"sec-fetch-site") == b"cross-site":
        return error_response(403, "cross-site write refused")
    origin = req.header(b"origin")
    if origin is not None:
        host = req.header(b"host") or b""
        if origin.split(b"://", 1)[-1].rstrip(b"/") != host:
            return error_response(403, "cross-origin write refused")
    return None
