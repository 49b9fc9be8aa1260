"""A TCP proxy a test can cut, for fault injection (issue 18).

:class:`TcpProxy` listens on ``127.0.0.1`` (a free port) and relays every
connection to an upstream: a unix socket path (the throwaway PostgreSQL's
``.s.PGSQL.<port>``) or a ``(host, port)``.  It runs its own asyncio loop in
a daemon thread, so a test that blocks its own loop (or ``time.sleep``\\s)
does not stall the relayed traffic.

* :meth:`TcpProxy.cut` closes every relayed connection (both sides, at once)
  and from then on accepts new connections only to close them: the process
  behind it sees its PostgreSQL connections drop and every reconnect fail,
  as when a network partition is noticed (a reset, not a silent hang).
* :meth:`TcpProxy.blackhole` keeps the connections open but stops relaying
  bytes in both directions and holds new connections unanswered: a silent
  partition (the peer's writes hang until its own timeouts fire).
* :meth:`TcpProxy.restore` relays again (held bytes and connections go
  through after a blackhole; after a cut, new connections work).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["TcpProxy"]

_T = TypeVar("_T")
_CHUNK = 1 << 16


class TcpProxy:
    """See the module doc.

    :param upstream: a unix socket path, or ``(host, port)``.
    """

    def __init__(self, upstream: str | tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self.state = "open"  # "open", "cut" or "blackhole"
        self.accepted = 0  # connections accepted (for the test's checks)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._open = asyncio.Event()  # set while relaying (on the proxy loop)

    # -- control (any thread but the proxy's) -----------------------------------------

    def start(self) -> TcpProxy:
        """Start listening; returns ``self`` (``port`` is set)."""
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Close every relayed connection and refuse new ones."""
        self._call(self._set("cut"))

    def blackhole(self) -> None:
        """Stop relaying bytes (connections stay open, new ones hang)."""
        self._call(self._set("blackhole"))

    def restore(self) -> None:
        """Relay again."""
        self._call(self._set("open"))

    def close(self) -> None:
        """Stop listening, close everything, stop the thread."""
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()

    @property
    def connections(self) -> int:
        """Relayed connections currently open."""
        return len(self._pairs)

    def _call(self, coro: Awaitable[_T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    # -- on the proxy's loop ----------------------------------------------------------

    async def _start(self) -> None:
        self._open.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _set(self, state: str) -> None:
        self.state = state
        if state == "open":
            self._open.set()
            return
        self._open.clear()
        if state == "cut":
            for pair in list(self._pairs):
                for w in pair:
                    _abort(w)
            self._pairs.clear()

    async def _close(self) -> None:
        await self._set("cut")
        if self._server is not None:
            self._server.close()
        me = asyncio.current_task()
        tasks = [t for t in asyncio.all_tasks() if t is not me]
        for t in tasks:  # relays and held accepts
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        if self.state == "cut":
            _abort(writer)
            return
        await self._open.wait()  # a blackhole holds new connections too
        if self.state == "cut":
            _abort(writer)
            return
        try:
            if isinstance(self.upstream, str):
                up_r, up_w = await asyncio.open_unix_connection(self.upstream)
            else:
                up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            return
        pair = (writer, up_w)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pump(reader, up_w, pair, lambda: pair in self._pairs),
                self._pump(up_r, writer, pair, lambda: pair in self._pairs),
            )
        finally:
            for w in pair:
                _abort(w)

    async def _pump(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        alive: Callable[[], bool],
    ) -> None:
        try:
            while alive():
                data = await src.read(_CHUNK)
                if not data:
                    break
                await self._open.wait()  # a blackhole holds the bytes here
                if not alive():
                    break
                dst.write(data)
                await dst.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            # one side closed: close both (as a TCP peer would see it)
            if pair in self._pairs:
                self._pairs.discard(pair)
                for w in pair:
                    _abort(w)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once, without waiting for buffered bytes (a reset)."""
    with contextlib.suppress(Exception):
        writer.transport.abort()
