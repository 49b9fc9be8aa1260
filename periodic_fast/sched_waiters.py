"""RUN_JOB result waiters and RECV_DATA stream waiters (protocol.md 4.7).

:class:`WaiterTable` is a mixin of :class:`~periodic_fast.sched_core.SchedulerCore`:
it adds, pops and drops the waiter entries of a job handle, within the
scheduler's limits (``max_waiters`` in all, ``max_waiters_per_conn``).  Its
state lives on the core (set up in ``SchedulerCore.__init__``).
"""

from __future__ import annotations

from typing import Final

from .sched_model import Conn, Waiters

__all__ = ["WaiterTable"]

_WAITER_DEFAULT: Final = 60  # result-waiter expiry when the job timeout is 0


class WaiterTable:
    """Waiter bookkeeping shared by the command handlers and job ends."""

    _waiters: dict[bytes, Waiters]
    _n_waiters: int  # waiter entries, all handles together
    _max_waiters: int
    _max_conn_waiters: int
    _mono: float

    def _add_waiter(
        self, key: bytes, conn: Conn, msgid: int, timeout: int, result: bool
    ) -> bool:
        """Add a RUN_JOB (``result``) or RECV_DATA waiter; False (nothing
        added) when ``max_waiters`` or ``max_waiters_per_conn`` is reached."""
        limit = self._max_conn_waiters
        if limit and conn.n_waits >= limit:
            return False
        limit = self._max_waiters
        if limit and self._n_waiters >= limit:
            return False
        w = self._waiters.get(key)
        if w is None:
            w = self._waiters[key] = Waiters()
        (w.results if result else w.streams).append((conn, msgid))
        self._n_waiters += 1
        waits = conn.waits
        waits[key] = waits.get(key, 0) + 1
        conn.n_waits += 1
        # every new waiter overwrites the expiry (protocol.md 4.7)
        w.expiry = self._mono + (timeout if timeout > 0 else _WAITER_DEFAULT)
        return True

    def _pop_waiters(self, key: bytes) -> Waiters | None:
        """The waiters of ``key``, forgotten (the job ended)."""
        w = self._waiters.pop(key, None)
        if w is not None:
            for entries in (w.results, w.streams):
                self._n_waiters -= len(entries)
                for c, _ in entries:
                    n = c.waits.pop(key, 0)
                    c.n_waits -= n
        return w

    def _drop_waiters(self, conn: Conn) -> None:
        """The connection is gone: its waiters go with it (protocol.md 4.8
        allows it), so a closed client holds nothing."""
        waiters = self._waiters
        for key, n in conn.waits.items():
            w = waiters.get(key)
            if w is None:  # pragma: no cover - popped entries leave conn.waits
                continue
            w.results = [e for e in w.results if e[0] is not conn]
            w.streams = [e for e in w.streams if e[0] is not conn]
            self._n_waiters -= n
            if not w.results and not w.streams:
                del waiters[key]
        conn.waits.clear()
        conn.n_waits = 0
        if not waiters:  # a dict keeps its peak size: let it go
            self._waiters = {}
