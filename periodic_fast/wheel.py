"""The hierarchical timer wheel: the public switch over its two twins.

``IMPLEMENTATION`` says which twin is live: ``"cython"`` (``_wheel_c``) or
``"python"`` (``_wheel_py``, also forced by ``PERIODIC_FAST_NO_EXTENSIONS``).
The API and its semantics are documented in :mod:`periodic_fast._wheel_py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._compat import NO_EXTENSIONS

IMPLEMENTATION: Literal["cython", "python"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._wheel_py import (
        DEFAULT_CASCADE_CHUNK,
        LEVELS,
        MAX_JOB_ID,
        MAX_TIME,
        MIN_TIME,
        SLOTS,
        TimerWheel,
    )

    IMPLEMENTATION = "python"
else:
    try:
        from ._wheel_c import (
            DEFAULT_CASCADE_CHUNK,
            LEVELS,
            MAX_JOB_ID,
            MAX_TIME,
            MIN_TIME,
            SLOTS,
            TimerWheel,
        )

        IMPLEMENTATION = "cython"
    except ImportError:  # not built; tests/test_wheel_switch.py makes this loud
        from ._wheel_py import (
            DEFAULT_CASCADE_CHUNK,
            LEVELS,
            MAX_JOB_ID,
            MAX_TIME,
            MIN_TIME,
            SLOTS,
            TimerWheel,
        )

        IMPLEMENTATION = "python"

__all__ = [
    "DEFAULT_CASCADE_CHUNK",
    "IMPLEMENTATION",
    "LEVELS",
    "MAX_JOB_ID",
    "MAX_TIME",
    "MIN_TIME",
    "SLOTS",
    "TimerWheel",
]
