"""``work()``: serve until shutdown or a signal, shared by Worker and
WorkerCluster (L4, asyncio).

SIGHUP drains like SIGTERM: a worker started from an ssh session that
closes finishes its running jobs and says goodbye instead of dying in the
middle of them (a worker has nothing to reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterable


class SignalDrain:
    """Mixin: :meth:`work` starts, then serves until :meth:`shutdown` sets
    ``_stopped`` or one of ``signals`` starts a graceful drain.

    The class using it provides ``start(size)``, ``shutdown()`` and the two
    attributes below (``_stopped`` is created by ``start``).
    """

    _stopped: asyncio.Event | None
    _shutdown_task: asyncio.Task[None] | None

    async def start(self, size: int = 1) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def shutdown(self, timeout: float | None = None) -> None:  # pragma: no cover
        raise NotImplementedError

    async def work(
        self,
        size: int = 1,
        *,
        signals: Iterable[str] = ("SIGTERM", "SIGINT", "SIGHUP"),
    ) -> None:
        """Start (see :meth:`start`) and serve until :meth:`shutdown` or one of
        ``signals`` (which starts a graceful drain)."""
        loop = asyncio.get_running_loop()
        installed: list[int] = []
        for name in signals:
            signum = getattr(signal, name, None)
            if signum is None:  # no SIGHUP on Windows
                continue
            # not on Windows' loop, nor off the main thread: serve without
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, self._signal_shutdown)
                installed.append(signum)
        try:
            await self.start(size)
            assert self._stopped is not None
            await self._stopped.wait()
        finally:
            for signum in installed:
                loop.remove_signal_handler(signum)
            if self._shutdown_task is not None:
                await self._shutdown_task

    def _signal_shutdown(self) -> None:
        if self._shutdown_task is None:
            self._shutdown_task = asyncio.get_running_loop().create_task(
                self.shutdown()
            )
