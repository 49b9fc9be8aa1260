"""Which build is running: the version and the live twin of each
accelerated unit (compiled or pure Python), for ``--version``, the
start-up log line, ``/metrics`` and the status page.

L1: it reads the ``IMPLEMENTATION`` of :mod:`.codec`, :mod:`.wheel` and
:mod:`.rec`; loading them is what decides, so it is asked, not guessed.
"""

from __future__ import annotations

import functools
import platform

from . import __version__, codec, rec, wheel
from ._compat import NO_EXTENSIONS

__all__ = ["build_info", "build_line", "fallback_warning"]

#: The accelerated units, in the order they are shown.
UNITS = ("codec", "wheel", "rec")


@functools.cache
def build_info() -> dict[str, str]:
    """``{"version", "codec", "wheel", "rec", "python"}``, e.g. ``codec:
    "cython"`` or ``"python"``; the same all the process long (cached)."""
    return {
        "version": __version__,
        "codec": codec.IMPLEMENTATION,
        "wheel": wheel.IMPLEMENTATION,
        "rec": rec.IMPLEMENTATION,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
    }


def build_line() -> str:
    """One line, e.g. ``periodic_fast 0.1.0 (codec: cython, wheel: cython,
    rec: cython; CPython 3.11.7)``."""
    info = build_info()
    twins = ", ".join(f"{unit}: {info[unit]}" for unit in UNITS)
    return f"periodic_fast {info['version']} ({twins}; {info['python']})"


def fallback_warning() -> str | None:
    """A warning when pure-Python twins run that nobody asked for (an sdist
    installed without a compiler, a build that failed to load), else None."""
    info = build_info()
    slow = [unit for unit in UNITS if info[unit] != "cython"]
    if not slow or NO_EXTENSIONS:
        return None
    return (
        f"the compiled {', '.join(slow)} did not load: running the pure-Python "
        "twins, several times slower (install a wheel, or build with a C "
        "compiler and Cython; PERIODIC_FAST_NO_EXTENSIONS=1 asks for this "
        "and silences this line)"
    )
