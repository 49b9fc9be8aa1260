"""The scheduler's per-job record and name table: the switch over the twins.

``IMPLEMENTATION`` says which twin is live: ``"cython"`` (``_rec_c``) or
``"python"`` (``_rec_py``, also forced by ``PERIODIC_FAST_NO_EXTENSIONS``).
The API and its semantics are documented in :mod:`periodic_fast._rec_py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._compat import NO_EXTENSIONS

IMPLEMENTATION: Literal["cython", "python"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._rec_py import EPOCH_MASK, JobRec, NameTable

    IMPLEMENTATION = "python"
else:
    try:
        from ._rec_c import EPOCH_MASK, JobRec, NameTable

        IMPLEMENTATION = "cython"
    except ImportError:  # not built; tests/test_rec.py makes this loud
        from ._rec_py import EPOCH_MASK, JobRec, NameTable

        IMPLEMENTATION = "python"

__all__ = ["EPOCH_MASK", "IMPLEMENTATION", "JobRec", "NameTable"]
