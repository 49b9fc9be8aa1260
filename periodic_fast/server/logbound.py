"""Log lines a peer causes: bounded in size and in rate.

A peer chooses its registration name, its first bytes, its malformed
requests, and how fast it reconnects after a refusal.  Logged as they come,
a few 4 MiB names grew the log by 48 MiB, and one client in a reconnect loop
wrote 2,315 warning lines a second (issue 16.5).  So every server log line
that carries peer bytes goes through :func:`clip` (at most
:data:`MAX_LINE_TEXT` characters, with a marker saying how much was cut),
and every line a peer can repeat at will goes through a :class:`Throttle`:
a token bucket per message kind, then one "suppressed K similar messages"
line once that kind may log again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

from ..constants import DEFAULT_PEER_LOG_RATE

__all__ = [
    "DEFAULT_PEER_LOG_RATE",
    "MAX_LINE_TEXT",
    "MAX_PEER_TEXT",
    "Throttle",
    "clip",
    "peer_text",
]

#: Characters of one peer-provided value (a name, a request target) logged.
MAX_PEER_TEXT: Final = 64
#: Characters of a whole reason that may embed peer values.
MAX_LINE_TEXT: Final = 200
# message kinds tracked at once; more share one bucket (kinds come from our
# code, but a reason's prefix could hold peer bytes: keep the table bounded)
_MAX_KINDS: Final = 64


def clip(text: str, limit: int = MAX_LINE_TEXT) -> str:
    """``text`` cut to ``limit`` characters, with a marker when cut."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}...(+{len(text) - limit} chars)"


def peer_text(value: bytes | str, limit: int = MAX_PEER_TEXT) -> str:
    """A peer-provided value for a log line: its repr, cut to ``limit``
    characters of the value (the repr of 4 MiB of bytes is 16 MiB)."""
    shown = repr(value[:limit])
    if len(value) > limit:
        return f"{shown}...(+{len(value) - limit})"
    return shown


class Throttle:
    """A token bucket per message kind in front of a logger.

    :param logger: where the lines go.
    :param rate: lines per second per kind after the burst (0: no limit).
    :param burst: lines a kind may log at once (default: 4 s of ``rate``).
    :param clock: monotonic seconds (tests inject one).
    """

    __slots__ = ("_buckets", "_clock", "_logger", "burst", "rate")

    def __init__(
        self,
        logger: logging.Logger,
        rate: float = DEFAULT_PEER_LOG_RATE,
        burst: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.rate = rate
        self.burst = max(1.0, 4 * rate if burst is None else burst)
        self._clock = clock
        # kind -> [tokens, last refill, suppressed count]
        self._buckets: dict[str, list[float]] = {}

    def log(self, level: int, kind: str, msg: str, *args: object) -> None:
        """``logger.log(level, msg, *args)`` unless ``kind`` spent its tokens."""
        logger = self._logger
        if not logger.isEnabledFor(level):
            return
        if self.rate <= 0:
            logger.log(level, msg, *args)
            return
        buckets = self._buckets
        bucket = buckets.get(kind)
        now = self._clock()
        if bucket is None:
            if len(buckets) >= _MAX_KINDS:
                kind = "other"
                bucket = buckets.get(kind)
            if bucket is None:
                bucket = buckets[kind] = [self.burst, now, 0.0]
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            bucket[2] += 1
            return
        bucket[0] = tokens - 1.0
        if bucket[2]:
            logger.log(
                level, "suppressed %d similar messages (%s)", int(bucket[2]), kind
            )
            bucket[2] = 0.0
        logger.log(level, msg, *args)

    def warning(self, kind: str, msg: str, *args: object) -> None:
        """:meth:`log` at WARNING."""
        self.log(logging.WARNING, kind, msg, *args)

    def info(self, kind: str, msg: str, *args: object) -> None:
        """:meth:`log` at INFO."""
        self.log(logging.INFO, kind, msg, *args)
