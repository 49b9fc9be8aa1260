"""periodic_fast: a fast, durable Periodic server with its client and worker.

Importing the package stays cheap and asyncio-free: ``Client`` and ``Worker``
are loaded on first use (module ``__getattr__``), so the codec and the timer
wheel can be used without pulling in the networking layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "periodic_fast.client",
    "Worker": "periodic_fast.worker",
}

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client as Client
    from .worker import Worker as Worker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'periodic_fast' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = ["Client", "Worker", "__version__"]
