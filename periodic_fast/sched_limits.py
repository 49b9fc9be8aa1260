"""The scheduler's own limits: funcs, waiters, func names (docs/security.md).

What a peer may make the scheduler hold is bounded here, outside the hot
paths: a new func is checked once, when it is created
(:class:`FuncRefused` carries the reason), a waiter when it is added.  A
refusal is answered NO_WORKER (the protocol's generic refusal) and logged
through :class:`RefusalLog`, which keeps peer-caused lines few: at most one
line per kind every :data:`LOG_EVERY` seconds, with a count of those it
suppressed.  Time is passed in (sans-I/O).
"""

from __future__ import annotations

import logging
from typing import Final

__all__ = [
    "DEFAULT_MAX_FUNCS",
    "DEFAULT_MAX_WAITERS",
    "DEFAULT_MAX_WAITERS_PER_CONN",
    "LOG_EVERY",
    "FuncRefused",
    "RefusalLog",
    "bad_func_name",
    "check_limit",
]

log = logging.getLogger("periodic_fast.scheduler")

#: Known funcs at most (``max_funcs``; 0 = no limit).
DEFAULT_MAX_FUNCS: Final = 10_000
#: RUN_JOB + RECV_DATA waiters at most, all connections together.
DEFAULT_MAX_WAITERS: Final = 100_000
#: RUN_JOB + RECV_DATA waiters at most per connection.
DEFAULT_MAX_WAITERS_PER_CONN: Final = 10_000
#: Seconds between two log lines of one kind of refusal.
LOG_EVERY: Final = 10.0

# A func name with one of these bytes would forge or break STATUS lines
# (``func,workers,...`` joined by LF; AIO splits on ',' and strips CR).
_STATUS_BREAKERS: Final = (b",", b"\n", b"\r")


def bad_func_name(func: bytes) -> bool:
    """True when ``func`` must not become a func: it holds ``,``, LF or CR
    (protocol.md 4.3; docs/protocol.md section 9)."""
    return b"," in func or b"\n" in func or b"\r" in func


def check_limit(name: str, value: int) -> int:
    """``value`` if it is a valid limit (>= 0; 0 = no limit), else ValueError."""
    if value < 0:
        raise ValueError(f"{name} must be >= 0")
    return value


class FuncRefused(Exception):
    """A new func is refused: its name would break STATUS, or ``max_funcs``
    funcs are known.  ``full`` tells which (the HTTP API reports them apart)."""

    def __init__(self, message: str, full: bool) -> None:
        super().__init__(message)
        self.full = full


class RefusalLog:
    """Rate-limited warnings about refused peer requests."""

    __slots__ = ("_next", "_suppressed")

    def __init__(self) -> None:
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, kind: str, message: str, now: float) -> None:
        """Log ``message`` unless a ``kind`` line went out less than
        :data:`LOG_EVERY` seconds ago (then only count it)."""
        if now < self._next.get(kind, 0.0):
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._next[kind] = now + LOG_EVERY
        n = self._suppressed.pop(kind, 0)
        more = f" ({n} more {kind} refusal(s) not logged)" if n else ""
        # the message is ours; peer bytes in it are shown bounded (show())
        log.warning("refused: %s%s", message, more)
