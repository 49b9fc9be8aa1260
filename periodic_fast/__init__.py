"""periodic_fast: a fast, durable Periodic server with its client and worker.

Importing the package stays cheap and asyncio-free: ``Client``, ``Worker``,
``SyncClient``, ``ClientCluster`` and ``WorkerCluster`` are loaded on first
use (module ``__getattr__``), so the codec and the timer wheel can be used
without pulling in the networking layers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "periodic_fast.client",
    "ClientCluster": "periodic_fast.cluster",
    "SyncClient": "periodic_fast.sync",
    "Worker": "periodic_fast.worker",
    "WorkerCluster": "periodic_fast.cluster",
}

if TYPE_CHECKING:  # pragma: no cover
    from .client import Client as Client
    from .cluster import ClientCluster as ClientCluster
    from .cluster import WorkerCluster as WorkerCluster
    from .sync import SyncClient as SyncClient
    from .worker import Worker as Worker


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'periodic_fast' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "Client",
    "ClientCluster",
    "SyncClient",
    "Worker",
    "WorkerCluster",
    "__version__",
]
