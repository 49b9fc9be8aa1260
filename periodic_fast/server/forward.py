"""Forwarding in cluster mode (issue 18, docs/cluster.md): any node answers
any client.

A node holds only its partitions' jobs.  A request about a job of another
partition (SUBMIT_JOB, REMOVE_JOB, RUN_JOB, RECV_DATA) reaches
:meth:`Forwarder.forward` (through :class:`~periodic_fast.sched_parts.Partitions`'s
hook); it is sent, unchanged, to the partition's owner over the binary
protocol, and the owner's reply frames are relayed to the client under the
client's msgid.  So a SUCCESS still means the owner committed the change (it
answers after its commit), and no node ever writes another node's rows.

* **Routes.**  Each node publishes its listen address in its
  ``cluster_nodes`` row; every heartbeat reads part -> owner address
  (:attr:`~periodic_fast.store.cluster.Tick.routes`).  A partition this
  node owns but is still loading is sent to this node's own address (the
  request waits its turn like any forwarded one, then is handled here).
* **Links.**  A small pool of client connections per peer (``pool``,
  default 2), opened on first use and again after a loss; the link of a
  request is chosen by its partition, so two requests about one job keep
  their order at the owner.  Links register as an authenticated client
  named :data:`PEER_NAME` (token from ``$PERIODIC_CLUSTER_TOKEN``, ``-`` by
  default): a node never forwards a request that came from a peer again (a
  second hop could bounce while routes are stale); it answers NO_WORKER and
  the origin retries.  With auth on, that identity must be in the auth file.
  A node with the RSA/AES transport (``--rsa-private-path``) opens its links
  through it too (:func:`link_keys`): the v2 handshake with this node's own
  key pair (a cluster's nodes share one, and list its public key among the
  allowed ones), AES when the node allows it; the peer identity registers
  inside the encrypted stream.
* **Retries.**  A refusal (NO_WORKER: the owner changed, or is loading), a
  lost link or an unknown owner is retried with a short back-off for up to
  ``patience`` seconds (default: one lease plus one second, the longest a
  handover takes), re-reading the routes each time; then the client gets
  NO_WORKER.  A RUN_JOB whose link is lost is sent again to the new owner
  (it waits for the same job: the handle is the same); a RECV_DATA stream
  whose link is lost ends with ``EOF``.
* **Spanning requests.**  DUMP is answered from one repeatable-read read
  of the jobs table (``snapshot``: the store's committed state, every
  partition); without it, or when that read fails, every live node is
  asked for its partitions' jobs and the lists are joined (not one
  snapshot: a job that moves meanwhile may be missing or twice).
  DROP_FUNC goes to every live node (each drops its partitions' jobs);
  SUCCESS when every node answered SUCCESS.  LOAD is split by partition and
  each piece sent to its owner; SUCCESS when every piece was loaded (a
  failed LOAD may have loaded some pieces: LOAD is an upsert, so the client
  may send it again).

Layer L4 (server): asyncio, the codec and the scheduler-side
:class:`~periodic_fast.sched_parts.Partitions`; the framing is the codec's,
not the client module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from .._address import parse_address
from ..codec import (
    Parser,
    decode_job_list,
    encode_job_list,
    encode_registration,
    encode_request,
    encode_response,
)
from ..constants import DEFAULT_MAX_FRAME, ClientType, Command
from ..errors import ClientError, ProtocolError

if TYPE_CHECKING:
    from .._rsa_client import ClientKeys
    from ..job import Job
    from ..sched_model import Conn
    from ..sched_parts import Partitions
    from .secure import SecureConfig

__all__ = ["PEER_NAME", "Forwarder", "link_keys"]

log = logging.getLogger("periodic_fast.server.forward")

#: the identity a forwarding link registers with
PEER_NAME = b"periodic-cluster-peer"
_SUBMIT = int(Command.SUBMIT_JOB)
_RUN = int(Command.RUN_JOB)
_RECV = int(Command.RECV_DATA)
_LOAD = int(Command.LOAD)
_DROP = int(Command.DROP_FUNC)
_DUMP = int(Command.DUMP)
_NO_WORKER = int(Command.NO_WORKER)
_SUCCESS = int(Command.SUCCESS)
_DATA = int(Command.DATA)
_LOST = -1  # the pseudo command a pending request gets when its link goes
_SENT_LOST = -2  # an attempt whose request left but whose link went
_EOF = b"EOF"

#: a frame handler: ``(command, payload)`` -> True when it was the last
FrameSink = Callable[[int, bytes], bool]


def peer_token() -> bytes:
    """The forwarding links' token (``$PERIODIC_CLUSTER_TOKEN``, else ``-``)."""
    return os.environ.get("PERIODIC_CLUSTER_TOKEN", "-").encode()


def link_keys(secure: SecureConfig) -> ClientKeys:
    """The client keys of a node's forwarding links when it runs the RSA/AES
    transport: its own private key, and its own public key as the peer's
    (the nodes of a cluster share one key pair); AES when the node allows
    it, else RSA, else Plain; the v2 handshake."""
    from .._rsa_client import ClientKeys  # noqa: PLC0415  # needs cryptography
    from .._rsa_common import RSAMode  # noqa: PLC0415

    mode = next(
        (m for m in (RSAMode.AES, RSAMode.RSA, RSAMode.Plain) if m in secure.modes),
        RSAMode.AES,
    )
    if secure.keys.get(secure.fingerprint) is None:
        log.warning(
            "forwarding links authenticate with this node's own RSA key, which"
            " is not among the allowed public keys (--rsa-public-path): the"
            " peers will refuse them; list it there on every node"
        )
    return ClientKeys(
        secure.private_key,
        secure.private_key.public_key(),
        mode=mode,
        generation="v2",
        server_key_path="(this node's own key: every node shares one key pair)",
    )


class _Link(asyncio.Protocol):
    """One client connection to a peer node, multiplexed by msgid."""

    def __init__(self, address: str, max_frame: int) -> None:
        self.address = address
        self._parser = Parser(requests=False, registration=True, max_frame=max_frame)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, FrameSink] = {}
        self._msgid = 0
        self.closed = False
        self.registered: asyncio.Future[None] = (
            asyncio.get_running_loop().create_future()
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.write(  # type: ignore[attr-defined]
            encode_registration(ClientType.AUTH_CLIENT, PEER_NAME, peer_token())
        )

    def data_received(self, data: bytes) -> None:
        try:
            packets = self._parser.feed(data)
        except ProtocolError as exc:
            log.warning("forward link to %s: %s", self.address, exc)
            self.close()
            return
        pending = self._pending
        for pkt in packets:
            if pkt.msgid is None:  # the registration reply
                if not self.registered.done():
                    self.registered.set_result(None)
                continue
            sink = pending.get(pkt.msgid)
            if sink is not None and sink(pkt.command, pkt.payload):
                pending.pop(pkt.msgid, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        if not self.registered.done():
            self.registered.set_exception(ConnectionError(f"{self.address}: closed"))
            self.registered.exception()  # retrieved: no "never retrieved" log
        pending, self._pending = self._pending, {}
        for sink in pending.values():
            sink(_LOST, b"")

    def request(self, command: int, payload: bytes, sink: FrameSink) -> None:
        """Send one request; its reply frames go to ``sink``."""
        transport = self._transport
        if transport is None or self.closed:
            sink(_LOST, b"")
            return
        self._msgid = msgid = (self._msgid + 1) & 0xFFFFFFFF
        self._pending[msgid] = sink
        transport.write(encode_request(msgid, command, payload))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.abort()


class Forwarder:
    """A cluster node's forwarding (see the module doc).

    :param parts: the node's :class:`~periodic_fast.sched_parts.Partitions`.
    :param name: the server's name, for log lines.
    :param own: this node's published address (None before it listens).
    :param route: part -> the address of the node to send its requests to
        (this node's own for a partition it owns), or None when unknown.
    :param members: the published addresses of every live node (this one
        included).
    :param patience: seconds a request waits for an owner to answer.
    :param pool: links per peer.
    :param max_frame: the largest reply frame accepted from a peer.
    """

    def __init__(
        self,
        parts: Partitions,
        *,
        name: str,
        route: Callable[[int], str | None],
        members: Callable[[], list[str]],
        patience: float,
        pool: int = 2,
        max_frame: int = DEFAULT_MAX_FRAME,
        mono: Callable[[], float] = time.monotonic,
        keys: ClientKeys | None = None,
        snapshot: Callable[[], Awaitable[bytes]] | None = None,
    ) -> None:
        if pool < 1:
            raise ValueError("pool must be >= 1")
        self._parts = parts
        self.name = name
        self._route = route
        self._members = members
        self.patience = patience
        self._pool = pool
        self._max_frame = max_frame
        self._mono = mono
        self._keys = keys  # the RSA/AES transport of the links (None: plain)
        self._snapshot = snapshot  # DUMP from one read of the store
        self._links: dict[tuple[str, int], _Link] = {}
        self._opening: dict[tuple[str, int], asyncio.Task[_Link]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: requests forwarded, relayed back, given up (NO_WORKER after
        #: ``patience``): for tests and metrics
        self.forwarded = 0
        self.relayed = 0
        self.gave_up = 0

    def install(self) -> None:
        """Take over the partitions' forward, span and peer hooks."""
        parts = self._parts
        parts.forward = self.forward
        parts.span = self.span
        parts.peer = is_peer

    # -- the hooks (inside the scheduler's handle: no blocking) ----------------------

    def forward(
        self, conn: Conn, msgid: int, command: int, payload: bytes, part: int
    ) -> None:
        """A request about a job of ``part`` (not ready here): forwarded."""
        if self._closed:
            conn.send(encode_response(msgid, _NO_WORKER))
            return
        self.forwarded += 1
        self._spawn(self._one(conn, msgid, command, payload, part))

    def span(self, conn: Conn, msgid: int, command: int, payload: bytes) -> None:
        """LOAD or DROP_FUNC: this node's share here (from a peer), else to
        every owner.  A malformed LOAD raises here (the connection closes)."""
        if is_peer(conn) or self._closed:
            self._parts.run_local(conn, msgid, command, payload)
            return
        if command == _LOAD:
            jobs = decode_job_list(payload)  # ProtocolError: dropped, as plain
            self._spawn(self._load(conn, msgid, jobs))
        elif command == _DUMP:
            if payload:  # as plain: a DUMP carries nothing (closes the conn)
                self._parts.run_local(conn, msgid, command, payload)
                return
            self._spawn(self._dump(conn, msgid))
        else:
            self._spawn(self._drop(conn, msgid, payload))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- one request ------------------------------------------------------------------

    async def _one(
        self, conn: Conn, msgid: int, command: int, payload: bytes, part: int
    ) -> None:
        def relay(cmd: int, data: bytes) -> None:
            conn.send(encode_response(msgid, cmd, data))

        outcome = await self._until_answered(part, command, payload, relay)
        if outcome is None:
            self.gave_up += 1
            relay(_NO_WORKER, b"")
        else:
            self.relayed += 1

    async def _until_answered(
        self,
        part: int,
        command: int,
        payload: bytes,
        relay: Callable[[int, bytes], None],
    ) -> int | None:
        """Send until an owner answers anything but NO_WORKER (relayed, with
        what follows, to ``relay``); its first command, or None when no owner
        answered within the patience."""
        deadline = self._mono() + self.patience
        delay = 0.02
        while not self._closed:
            address = self._route(part)
            if address is not None:
                first = await self._exchange(address, part, command, payload, relay)
                if first == _SENT_LOST:  # the owner went: its successor's turn
                    deadline = max(deadline, self._mono() + self.patience)
                elif first is not None and first != _NO_WORKER:
                    return first
            if self._mono() >= deadline:
                return None
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)
        return None

    async def _exchange(
        self,
        address: str,
        part: int,
        command: int,
        payload: bytes,
        relay: Callable[[int, bytes], None],
    ) -> int | None:
        """One attempt: the first reply's command (NO_WORKER: not relayed),
        None when no link could be opened, ``_SENT_LOST`` when the link went
        before any reply."""
        try:
            link = await self._link(address, part)
        except (OSError, ValueError, asyncio.TimeoutError, ClientError) as exc:
            # ClientError: an RSA handshake refused (retried like a refusal)
            log.debug("forward link to %s: %r", address, exc)
            return None
        loop = asyncio.get_running_loop()
        first: asyncio.Future[int | None] = loop.create_future()
        stream = command == _RECV

        def sink(cmd: int, data: bytes) -> bool:
            if not first.done():
                if cmd == _LOST:
                    first.set_result(_SENT_LOST)
                    return True
                first.set_result(cmd)
                if cmd == _NO_WORKER:
                    return True
                relay(cmd, data)
                return not stream
            if cmd == _LOST:  # mid-stream: the stream ends here
                relay(_DATA, _EOF)
                return True
            relay(cmd, data)
            return cmd == _DATA and data == _EOF

        link.request(command, payload, sink)
        return await first

    async def _link(self, address: str, part: int) -> _Link:
        key = (address, part % self._pool)
        link = self._links.get(key)
        if link is not None and not link.closed:
            return link
        opening = self._opening.get(key)
        if opening is None:
            opening = asyncio.get_running_loop().create_task(self._open(address))
            self._opening[key] = opening
            try:
                link = await asyncio.shield(opening)
            finally:
                self._opening.pop(key, None)
            self._links[key] = link
            return link
        return await asyncio.shield(opening)

    async def _open(self, address: str) -> _Link:
        loop = asyncio.get_running_loop()
        addr = parse_address(address)
        link = _Link(address, self._max_frame)
        outer: asyncio.Protocol = link
        secure = None
        if self._keys is not None:  # the handshake first; the link after it
            outer = secure = self._keys.protocol(link, address)
        if addr.scheme == "tcp":
            connect = loop.create_connection(lambda: outer, addr.host, addr.port)
        else:
            connect = loop.create_unix_connection(lambda: outer, addr.host)
        await asyncio.wait_for(connect, self.patience)
        if secure is not None:  # closes the connection when it fails
            await secure.wait_ready(self.patience)
        try:
            await asyncio.wait_for(asyncio.shield(link.registered), self.patience)
        except BaseException:
            link.close()
            raise
        return link

    # -- spanning requests -------------------------------------------------------------

    async def _load(self, conn: Conn, msgid: int, jobs: list[Job]) -> None:
        """LOAD split by partition, one piece per partition to its owner."""
        part = self._parts.part
        pieces: dict[int, list[Job]] = {}
        for job in jobs:
            pieces.setdefault(part(job.func, job.name), []).append(job)

        async def piece(p: int, chunk: list[Job]) -> bool:
            first = await self._until_answered(
                p, _LOAD, encode_job_list(chunk), _ignore
            )
            return first == _SUCCESS

        results = await asyncio.gather(*(piece(p, c) for p, c in pieces.items()))
        ok = all(results)
        if not ok:
            self.gave_up += 1
            log.warning(
                "%s: LOAD of %d job(s): %d of %d partition(s) not loaded",
                self.name,
                len(jobs),
                results.count(False),
                len(results),
            )
        conn.send(encode_response(msgid, _SUCCESS if ok else _NO_WORKER))

    async def _drop(self, conn: Conn, msgid: int, payload: bytes) -> None:
        """DROP_FUNC on every live node; SUCCESS when each answered SUCCESS."""
        ok = await self.drop_everywhere(payload)
        conn.send(encode_response(msgid, _SUCCESS if ok else _NO_WORKER))

    async def drop_everywhere(self, payload: bytes) -> bool:
        """DROP_FUNC (``payload``: its ``str8 func``) on every live node;
        True when each answered SUCCESS (also the HTTP API's func drop)."""

        async def one(address: str) -> bool:
            deadline = self._mono() + self.patience
            while not self._closed:
                first = await self._exchange(address, 0, _DROP, payload, _ignore)
                if first is not None and first != _SENT_LOST:
                    return first == _SUCCESS
                if self._mono() >= deadline or address not in self._members():
                    return address not in self._members()  # gone: its share moved
                await asyncio.sleep(0.1)
            return False

        members = self._members()
        results = await asyncio.gather(*(one(a) for a in members)) if members else []
        return bool(members) and all(results)

    async def _dump(self, conn: Conn, msgid: int) -> None:
        """DUMP from one snapshot of the store; gathered when that fails."""
        if self._snapshot is not None:
            try:
                data = await self._snapshot()
            except Exception as exc:  # PostgreSQL away: the nodes' memory
                log.warning(
                    "%s: DUMP snapshot failed (%r); gathering it from every node",
                    self.name,
                    exc,
                )
            else:
                conn.send(encode_response(msgid, _DATA, data))
                return
        await self._gather_dump(conn, msgid)

    async def _gather_dump(self, conn: Conn, msgid: int) -> None:
        """DUMP gathered from every live node (each its own partitions), the
        job lists joined into one.  Not one snapshot: a job moving between
        nodes meanwhile may be missing or twice (docs/cluster.md)."""
        lists: dict[str, bytes] = {}

        async def one(address: str) -> bool:
            deadline = self._mono() + self.patience
            while not self._closed:

                def keep(cmd: int, data: bytes) -> None:
                    if cmd == _DATA:
                        lists[address] = data

                first = await self._exchange(address, 0, _DUMP, b"", keep)
                if first == _DATA:
                    return True
                if self._mono() >= deadline or address not in self._members():
                    return address not in self._members()
                await asyncio.sleep(0.1)
            return False

        members = self._members()
        results = await asyncio.gather(*(one(a) for a in members))
        if not members or not all(results):
            self.gave_up += 1
            conn.send(encode_response(msgid, _NO_WORKER))
            return
        count = sum(int.from_bytes(d[:8], "big") for d in lists.values())
        body = b"".join(d[8:] for d in lists.values())
        conn.send(encode_response(msgid, _DATA, count.to_bytes(8, "big") + body))

    # -- for the HTTP API (server/cluster_http) ----------------------------------------

    async def ask(self, command: int, payload: bytes, part: int) -> int | None:
        """Send one request about a job of ``part`` to its owner, retried as
        a forwarded one; the owner's reply command (SUCCESS after its
        commit), or None when no owner answered within the patience."""
        if self._closed:
            return None
        self.forwarded += 1
        first = await self._until_answered(part, command, payload, _ignore)
        if first is None:
            self.gave_up += 1
        else:
            self.relayed += 1
        return first

    # -- shutdown ---------------------------------------------------------------------

    async def close(self) -> None:
        """Stop forwarding: pending requests get NO_WORKER, links close."""
        self._closed = True
        for link in self._links.values():
            link.close()
        self._links.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _ignore(command: int, payload: bytes) -> None:
    """A relay for replies only counted (LOAD pieces, DROP_FUNC per node)."""


def is_peer(conn: Conn) -> bool:
    """True for a connection of another node's forwarder."""
    ident = conn.identity
    return ident is not None and ident[0] == PEER_NAME
