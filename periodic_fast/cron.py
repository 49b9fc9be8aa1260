"""Cron expressions and time zones: validation and fire times (pure).

A schedule is a five-field cron expression (minute, hour, day of month,
month, day of week) read in an IANA time zone.  The expressions are
evaluated by ``cronsim``, which follows Debian's (Vixie) cron, DST quirks
included (docs/cron.md):

* a fixed-time job (neither minute nor hour starts with ``*``) whose local
  time does not exist on the day the clocks go forward runs at the first
  minute that exists after it (02:30 -> 03:00 in Europe/Paris);
* a fixed-time job whose local time happens twice on the day the clocks go
  back runs once, at the first occurrence;
* a job with ``*`` in the minute or hour field runs on elapsed time: in a
  repeated hour it runs in both occurrences, in a skipped hour not at all.

Nothing here reads a clock: every function takes the instant it counts
from (epoch seconds).  Errors are :class:`CronError` (a ``ValueError``) with
a message meant for the user.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from functools import lru_cache
from typing import Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

__all__ = [
    "ALIASES",
    "MAX_EXPR",
    "MAX_TZ",
    "CronError",
    "CronRefused",
    "check",
    "check_tz",
    "iso",
    "next_fire",
    "next_fires",
    "normalize",
]

#: the longest expression and time-zone name accepted (before parsing)
MAX_EXPR: Final = 200
MAX_TZ: Final = 64

#: the ``@`` shortcuts and what they stand for
ALIASES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_FIELDS: Final = "minute hour day-of-month month day-of-week"
# epoch seconds a datetime can hold with room for 50 years of search
_LOW: Final = -62_135_596_800 + 86_400  # 0001-01-02
_HIGH: Final = 253_402_300_799 - 51 * 366 * 86_400  # 50 years before 9999-12-31
_SPACES: Final = re.compile(r"\s+")
_CHARS: Final = re.compile(r"[0-9A-Za-z*/,\-#@ ]*")


class CronError(ValueError):
    """A bad cron expression or time zone, or one that never fires."""


class CronRefused(Exception):
    """A schedule the server's limits refuse (the HTTP API answers 409)."""


def normalize(expr: str) -> str:
    """``expr`` with its whitespace collapsed and an ``@`` alias expanded.

    Raises :class:`CronError` for anything but five fields (a seconds
    field, ``@reboot`` and other non-standard forms are refused)."""
    if not isinstance(expr, str):
        raise CronError("the cron expression must be a string")
    if len(expr) > MAX_EXPR:
        raise CronError(f"cron expression longer than {MAX_EXPR} characters")
    text = _SPACES.sub(" ", expr.strip())
    if not text:
        raise CronError("empty cron expression")
    if text.startswith("@"):
        alias = ALIASES.get(text.lower())
        if alias is None:
            known = ", ".join(ALIASES)
            raise CronError(f"unknown cron shortcut {text!r} (known: {known})")
        return alias
    if _CHARS.fullmatch(text) is None:
        raise CronError(f"cron expression {text!r} holds a character cron does not use")
    fields = text.split(" ")
    if len(fields) != 5:
        raise CronError(
            f"cron expression {text!r} has {len(fields)} fields; five expected "
            f"({_FIELDS})"
        )
    return text


@lru_cache(maxsize=256)
def check_tz(name: str) -> ZoneInfo:
    """The time zone ``name`` (IANA, e.g. ``Europe/Paris``, or ``UTC``).

    Raises :class:`CronError` for an unknown or malformed name."""
    if not isinstance(name, str) or not name:
        raise CronError("the time zone must be a non-empty string")
    if len(name) > MAX_TZ:
        raise CronError(f"time zone name longer than {MAX_TZ} characters")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise CronError(
            f"unknown time zone {name!r} (an IANA name like Europe/Paris)"
        ) from None


def check(expr: str, tz: str) -> str:
    """Validate ``expr`` and ``tz`` together; the normalized expression.

    Refuses an expression that cannot fire at all (``0 0 30 2 *``)."""
    text = normalize(expr)
    zone = check_tz(tz)
    try:
        CronSim(text, datetime(2000, 1, 1, tzinfo=zone))
    except CronSimError as exc:
        raise CronError(f"bad cron expression {text!r}: {exc}") from None
    except (ValueError, IndexError):  # cronsim's edge cases ("5/", "L" alone)
        raise CronError(f"bad cron expression {text!r}") from None
    return text


def next_fire(expr: str, tz: str, after: float) -> int:
    """The first fire time of ``expr`` in ``tz`` strictly after ``after``
    (epoch seconds), as whole epoch seconds."""
    return next_fires(expr, tz, after, 1)[0]


def next_fires(expr: str, tz: str, after: float, k: int) -> list[int]:
    """The next ``k`` fire times strictly after ``after``, ascending.

    Raises :class:`CronError` for a bad expression or zone, or when it does
    not fire within 50 years (``0 0 31 4 *`` never does)."""
    text = check(expr, tz)
    zone = check_tz(tz)
    if not _LOW <= after <= _HIGH or math.isnan(after):
        raise CronError("time out of range")
    start = math.floor(after)
    try:
        it = CronSim(text, datetime.fromtimestamp(start, zone))
        out: list[int] = []
        last = start
        while len(out) < k:
            t = int(next(it).timestamp())
            # A fixed-time job in the repeated hour after a fall-back: the
            # wall time maps to its first occurrence, which may be behind us.
            if t > last:
                out.append(t)
                last = t
    except StopIteration:
        raise CronError(
            f"cron expression {text!r} does not fire within 50 years"
        ) from None
    except (OverflowError, ValueError):
        raise CronError("time out of range") from None
    return out


def iso(epoch: int, tz: str) -> str:
    """``epoch`` as ISO-8601 local time in ``tz``, with its UTC offset."""
    zone = check_tz(tz)
    return datetime.fromtimestamp(epoch, timezone.utc).astimezone(zone).isoformat()
