"""Retry policies: how long a failed job waits before its next attempt.

A :class:`RetryPolicy` holds five numbers (docs/retries.md):

* ``max_attempts``: failures after which the job goes to the dead set
  (0 = retry for ever, the reference's behaviour);
* ``backoff``: the first delay in seconds (after the first failure);
* ``factor``: each further delay is the previous one times ``factor``;
* ``cap``: no base delay is longer than this (seconds);
* ``jitter``: 0..1, the delay is stretched by up to that fraction, at random.

The base delay of retry ``n`` (``n = 1`` after the first failure) is
``min(cap, backoff * factor ** (n - 1))``; jitter only ever *adds* to it,
``base * (1 + jitter * u)`` with ``u`` uniform in [0, 1), so a retry never
comes before its base delay.  Pure computation: no clock, and the random
source is handed in (tests pass a fixed one).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Final

__all__ = [
    "DEFAULT_MAX_DEAD",
    "DEFAULT_POLICY",
    "MAX_ATTEMPTS_LIMIT",
    "MAX_DELAY",
    "POLICY_FIELDS",
    "REFERENCE_POLICY",
    "RetryPolicy",
    "parse_policy_string",
]

#: dead jobs a server keeps at most by default (the oldest is evicted beyond)
DEFAULT_MAX_DEAD: Final = 100_000
#: the largest ``max_attempts`` accepted
MAX_ATTEMPTS_LIMIT: Final = 1_000_000
#: the largest ``backoff`` or ``cap`` accepted: one year in seconds
MAX_DELAY: Final = 366 * 86400.0
_MAX_FACTOR: Final = 1000.0

#: the field names, in the API's order
POLICY_FIELDS: Final = ("max_attempts", "backoff", "factor", "cap", "jitter")


@dataclass(frozen=True)
class RetryPolicy:
    """One func's retry policy (or the server default); validated on creation.

    :raises ValueError: a value out of its range (the message names it).
    """

    max_attempts: int = 25
    backoff: float = 1.0
    factor: float = 2.0
    cap: float = 6 * 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        n = self.max_attempts
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError("max_attempts must be an integer")
        if not 0 <= n <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"max_attempts must be 0 (unlimited) to {MAX_ATTEMPTS_LIMIT}"
            )
        for name, low, high in (
            ("backoff", 0.0, MAX_DELAY),
            ("factor", 1.0, _MAX_FACTOR),
            ("cap", 0.0, MAX_DELAY),
            ("jitter", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number")
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{name} must be {low:g} to {high:g}, not {value!r}")
            object.__setattr__(self, name, float(value))

    def base_delay(self, n: int) -> float:
        """The delay before retry ``n`` (1 = after the first failure), jitter
        left out: ``min(cap, backoff * factor ** (n - 1))``."""
        backoff, factor, cap = self.backoff, self.factor, self.cap
        if n <= 1 or factor == 1.0 or backoff == 0.0:
            return min(cap, backoff)
        # compare in log space: factor ** (n - 1) overflows a float quickly
        if cap <= backoff or (n - 1) * math.log(factor) >= math.log(cap / backoff):
            return cap
        return backoff * factor ** (n - 1)

    def delay(self, n: int, rng: Callable[[], float]) -> float:
        """The delay before retry ``n`` with jitter: ``base * (1 + jitter * u)``,
        ``u = rng()`` in [0, 1), so never shorter than :meth:`base_delay`."""
        base = self.base_delay(n)
        if self.jitter:
            u = rng()
            if 0.0 < u < 1.0:  # a bad random source adds nothing
                base *= 1.0 + self.jitter * u
        return base

    def exhausted(self, attempts: int) -> bool:
        """True when ``attempts`` failures use up the policy (to the dead set)."""
        return 0 < self.max_attempts <= attempts

    def to_dict(self) -> dict[str, Any]:
        """The API's form: a dict of the five fields."""
        return asdict(self)

    @classmethod
    def from_dict(
        cls, fields: Mapping[str, Any], base: RetryPolicy | None = None
    ) -> RetryPolicy:
        """A policy from the API's fields; missing ones come from ``base`` (or
        the defaults).  Unknown keys are refused.

        :raises ValueError: unknown key or value out of range."""
        unknown = sorted(set(fields) - set(POLICY_FIELDS))
        if unknown:
            raise ValueError(f"unknown policy field(s): {', '.join(unknown)}")
        return replace(base or cls(), **dict(fields))


#: The reference server's behaviour: retry one second later, for ever.
REFERENCE_POLICY: Final = RetryPolicy(
    max_attempts=0, backoff=1.0, factor=1.0, cap=1.0, jitter=0.0
)
#: The server default (docs/retries.md explains the choice).
DEFAULT_POLICY: Final = RetryPolicy()


def parse_policy_string(text: str, base: RetryPolicy = DEFAULT_POLICY) -> RetryPolicy:
    """``"reference"``, ``"default"`` or ``"max_attempts=10,backoff=5,..."``
    (missing fields from ``base``); the form of ``periodicd --retry-policy``.

    :raises ValueError: a bad item or value."""
    text = text.strip()
    if text == "reference":
        return REFERENCE_POLICY
    if text in ("default", ""):
        return base
    fields: dict[str, Any] = {}
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"bad retry policy item {item!r} (want key=value)")
        try:
            fields[key] = int(raw) if key == "max_attempts" else float(raw)
        except ValueError:
            raise ValueError(f"bad number in retry policy item {item!r}") from None
    return RetryPolicy.from_dict(fields, base)
