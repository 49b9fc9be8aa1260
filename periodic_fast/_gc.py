"""One way to keep the cyclic garbage collector out of bulk loads.

Loading a big store builds millions of objects at once. Every automatic GC
pass in the meantime rescans everything built so far, which roughly doubles a
load's time. Refcounting still frees what is dropped while the GC is paused.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["gc_paused"]


@contextlib.contextmanager
def gc_paused(*, freeze: bool = False) -> Iterator[None]:
    """Disable the cyclic GC for the block, then restore its previous state.

    With ``freeze=True`` every object alive when the block ends (normally or
    not) is moved to the permanent generation first (:func:`gc.freeze`), so
    later passes skip the long-lived objects the block built.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_enabled:
            gc.enable()
