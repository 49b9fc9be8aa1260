"""A synchronous wrapper of :class:`~periodic_fast.client.Client` for code
without asyncio::

    with SyncClient("tcp://127.0.0.1:5000") as c:
        c.submit_job("echo", "job-1", b"hi")
        print(c.run_job("echo", "job-2", b"hi"))

A private event loop runs in a daemon thread; each call is one coroutine on
it, so a ``SyncClient`` may be shared between threads (calls are pipelined on
one connection).  Methods and arguments are those of ``Client``;
``recv_job_data`` returns a list instead of an async iterator.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from types import TracebackType
from typing import Any, TypeVar

from ._address import BytesLike
from .client import Client
from .job import FuncStat, Job

__all__ = ["SyncClient"]

_T = TypeVar("_T")


class SyncClient:
    """Blocking client; see the module docstring.  Keyword arguments are
    those of :class:`~periodic_fast.client.Client`."""

    def __init__(self, address: str | None = None, **kwargs: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="periodic-sync", daemon=True
        )
        self._thread.start()
        self._client: Client = self._call(self._make(address, kwargs))
        self._closed = False

    @staticmethod
    async def _make(address: str | None, kwargs: dict[str, Any]) -> Client:
        return Client(address, **kwargs)

    def _call(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def connect(self) -> None:
        """Open the connection now."""
        self._call(self._client.connect())

    def close(self) -> None:
        """Close the connection and stop the private loop."""
        if self._closed:
            return
        self._closed = True
        try:
            self._call(self._client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self) -> bool:
        """See :meth:`Client.ping`."""
        return self._call(self._client.ping())

    def submit_job(self, func: BytesLike, name: BytesLike, *a: Any, **k: Any) -> bool:
        """See :meth:`Client.submit_job`."""
        return self._call(self._client.submit_job(func, name, *a, **k))

    def submit_many(self, jobs: Iterable[Job | tuple[Any, ...]], **k: Any) -> int:
        """See :meth:`Client.submit_many`."""
        return self._call(self._client.submit_many(list(jobs), **k))

    def run_job(self, func: BytesLike, name: BytesLike, *a: Any, **k: Any) -> bytes:
        """See :meth:`Client.run_job` (a ``stream`` callback runs on the
        client's loop thread)."""
        return self._call(self._client.run_job(func, name, *a, **k))

    def recv_job_data(
        self, func: BytesLike, name: BytesLike, timeout: float = 120
    ) -> list[bytes]:
        """All chunks streamed for the job until it ends."""

        async def collect() -> list[bytes]:
            return [c async for c in self._client.recv_job_data(func, name, timeout)]

        return self._call(collect())

    def remove_job(self, func: BytesLike, name: BytesLike) -> bool:
        """See :meth:`Client.remove_job`."""
        return self._call(self._client.remove_job(func, name))

    def drop_func(self, func: BytesLike) -> bool:
        """See :meth:`Client.drop_func`."""
        return self._call(self._client.drop_func(func))

    def status(self) -> dict[str, FuncStat]:
        """See :meth:`Client.status`."""
        return self._call(self._client.status())

    def config_get(self, key: BytesLike) -> int:
        """See :meth:`Client.config_get`."""
        return self._call(self._client.config_get(key))

    def config_set(self, key: BytesLike, value: int) -> bool:
        """See :meth:`Client.config_set`."""
        return self._call(self._client.config_set(key, value))

    def dump(self) -> list[Job]:
        """See :meth:`Client.dump`."""
        return self._call(self._client.dump())

    def dump_raw(self) -> bytes:
        """See :meth:`Client.dump_raw`."""
        return self._call(self._client.dump_raw())

    def load(self, jobs: Iterable[Job] | bytes) -> bool:
        """See :meth:`Client.load`."""
        return self._call(self._client.load(jobs))

    def shutdown(self) -> None:
        """See :meth:`Client.shutdown`."""
        self._call(self._client.shutdown())
