"""Interpreter and environment facts, read once.

``PERIODIC_FAST_NO_EXTENSIONS`` (any non-empty value) forces the pure-Python
twins of every accelerated unit; so does a non-CPython interpreter. This is the
only place the variable is read at import time (``setup.py`` reads it at build
time).
"""

from __future__ import annotations

import os
import sys
from typing import Final

# not platform.python_implementation(): on 3.10 ``platform`` imports
# subprocess and with it selectors, which the sans-I/O layers must not load
IS_CPYTHON: Final[bool] = sys.implementation.name == "cpython"

NO_EXTENSIONS: Final[bool] = bool(os.environ.get("PERIODIC_FAST_NO_EXTENSIONS")) or (
    not IS_CPYTHON
)

PY_VERSION: Final = sys.version_info[:2]

__all__ = ["IS_CPYTHON", "NO_EXTENSIONS", "PY_VERSION"]
