"""The asyncio side of the server (layer L4): listeners, connections, the timer.

:class:`Server` (in :mod:`.app`) is the entry point; :mod:`.protocol` holds the
per-connection :class:`asyncio.Protocol` and the hub that batches output.
"""

from __future__ import annotations

from .app import AddressInUse, Server, parse_address, run
from .protocol import SchedulerLike, ServerProtocol

__all__ = [
    "AddressInUse",
    "SchedulerLike",
    "Server",
    "ServerProtocol",
    "parse_address",
    "run",
]
