"""Client-side sharding over several independent servers.

:class:`ClientCluster` routes each job to one server by a consistent hash ring
keyed on the **job name**, exactly like aio-periodic's ``ClientCluster``
(protocol.md 6.4), so both clients send the same name to the same server.
aio-periodic builds its ring with ``uhashring.HashRing(nodes, hash_fn="ketama")``;
:class:`KetamaRing` is a dependency-free re-implementation of that ring:

* every node (its address string, in the order given) gets
  ``40 * n * weight // total_weight`` = 40 virtual nodes ``"<node>-<i>"``;
  each virtual node's MD5 digest gives 4 points (bytes 0-3, 4-7, 8-11, 12-15,
  each read little-endian); a later node wins a (vanishingly rare) collision;
* a key's point is the first 4 digest bytes of ``MD5(str(key))`` read
  little-endian; the owner is the first ring point strictly greater
  (``bisect_right``), wrapping to the first point.

``str(key)``: aio-periodic hashes the name as the Python object it was given
(a ``str`` normally); we hash names given as bytes by their UTF-8 text, so
``b"x"`` and ``"x"`` route alike.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from .client import BytesLike, Client, StreamCallback
from .job import FuncStat

__all__ = ["ClientCluster", "KetamaRing"]


class KetamaRing:
    """uhashring-compatible ketama ring over node names (see module doc)."""

    def __init__(self, nodes: Sequence[str], vnodes: int = 40, replicas: int = 4):
        if not nodes:
            raise ValueError("need at least one node")
        self.nodes = list(nodes)
        ring: dict[int, str] = {}
        n = len(self.nodes)
        per_node = (vnodes * n * 1) // n  # weight 1 each, as aio-periodic uses
        for node in self.nodes:
            for w in range(per_node):
                digest = hashlib.md5(f"{node}-{w}".encode()).digest()
                for r in range(replicas):
                    ring[int.from_bytes(digest[r * 4 : r * 4 + 4], "little")] = node
        self._keys = sorted(ring)
        self._ring = ring

    @staticmethod
    def hash_key(key: BytesLike) -> int:
        """The ring point of ``key``."""
        if not isinstance(key, str):
            key = bytes(key).decode(errors="replace")
        return int.from_bytes(hashlib.md5(key.encode()).digest()[:4], "little")

    def get_node(self, key: BytesLike) -> str:
        """The node that owns ``key``."""
        pos = bisect.bisect_right(self._keys, self.hash_key(key))
        if pos == len(self._keys):
            pos = 0
        return self._ring[self._keys[pos]]


class ClientCluster:
    """One :class:`Client` per server; jobs routed by name (see module doc).

    ``submit_job``, ``run_job``, ``remove_job`` and ``recv_job_data`` go to the
    server owning the job name; ``drop_func`` and ``ping`` go to all;
    ``status`` asks all and merges (workers, jobs, processing and locked summed,
    earliest ``sched_at`` kept).

    :param addresses: server addresses; the ring is keyed on these strings,
        so give them exactly as the aio-periodic side does.
    :param client_kwargs: passed to every :class:`Client`.
    """

    def __init__(self, addresses: Sequence[str], **client_kwargs: Any) -> None:
        self.addresses = list(addresses)
        self.ring = KetamaRing(self.addresses)
        self.clients = {a: Client(a, **client_kwargs) for a in self.addresses}

    def get(self, name: BytesLike) -> Client:
        """The client of the server that owns job ``name``."""
        return self.clients[self.ring.get_node(name)]

    async def connect(self) -> None:
        """Connect to every server."""
        await asyncio.gather(*(c.connect() for c in self.clients.values()))

    async def close(self) -> None:
        """Close every connection."""
        await asyncio.gather(*(c.close() for c in self.clients.values()))

    async def __aenter__(self) -> ClientCluster:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit_job(
        self, func: BytesLike, name: BytesLike, *args: Any, **kwargs: Any
    ) -> bool:
        """:meth:`Client.submit_job` on the owner of ``name``."""
        return await self.get(name).submit_job(func, name, *args, **kwargs)

    async def run_job(
        self,
        func: BytesLike,
        name: BytesLike,
        *args: Any,
        stream: StreamCallback | None = None,
        **kwargs: Any,
    ) -> bytes:
        """:meth:`Client.run_job` on the owner of ``name``."""
        return await self.get(name).run_job(func, name, *args, stream=stream, **kwargs)

    async def remove_job(self, func: BytesLike, name: BytesLike) -> bool:
        """:meth:`Client.remove_job` on the owner of ``name``."""
        return await self.get(name).remove_job(func, name)

    async def recv_job_data(
        self, func: BytesLike, name: BytesLike, timeout: float = 120
    ) -> AsyncIterator[bytes]:
        """:meth:`Client.recv_job_data` on the owner of ``name``."""
        async for chunk in self.get(name).recv_job_data(func, name, timeout):
            yield chunk

    async def drop_func(self, func: BytesLike) -> bool:
        """Drop ``func`` on every server; True when all answered SUCCESS."""
        res = await asyncio.gather(*(c.drop_func(func) for c in self.clients.values()))
        return all(res)

    async def ping(self) -> bool:
        """True when every server answered."""
        res = await asyncio.gather(*(c.ping() for c in self.clients.values()))
        return all(res)

    async def status(self) -> dict[str, FuncStat]:
        """Merged per-func statistics of all servers."""
        merged: dict[str, FuncStat] = {}
        for st in await asyncio.gather(*(c.status() for c in self.clients.values())):
            for func, s in st.items():
                m = merged.get(func)
                if m is None:
                    merged[func] = s
                else:
                    merged[func] = FuncStat(
                        m.func,
                        m.workers + s.workers,
                        m.jobs + s.jobs,
                        m.processing + s.processing,
                        m.locked + s.locked,
                        min(m.sched_at, s.sched_at),
                    )
        return merged
