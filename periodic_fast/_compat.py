"""Interpreter and environment facts, read once.

``PERIODIC_FAST_NO_EXTENSIONS`` (any non-empty value) forces the pure-Python
twins of every accelerated unit; so does a non-CPython interpreter. This is the
only place the variable is read at import time (``setup.py`` reads it at build
time).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Final

IS_CPYTHON: Final[bool] = platform.python_implementation() == "CPython"

NO_EXTENSIONS: Final[bool] = bool(os.environ.get("PERIODIC_FAST_NO_EXTENSIONS")) or (
    not IS_CPYTHON
)

PY_VERSION: Final = sys.version_info[:2]

__all__ = ["IS_CPYTHON", "NO_EXTENSIONS", "PY_VERSION"]
