"""The asyncio side of the server (layer L4): listeners, connections, the timer.

:class:`Server` (in :mod:`.app`) is the entry point; :mod:`.protocol` holds the
per-connection :class:`asyncio.Protocol` and the hub that batches output;
:mod:`.views` declares what they use of the scheduler.  The HTTP side
(:mod:`.http` and the ``http_*`` modules) is loaded when the server starts.
"""

from __future__ import annotations

from .app import AddressInUse, Server, parse_address, run
from .protocol import ServerProtocol
from .views import SchedulerLike, SchedulerView

__all__ = [
    "AddressInUse",
    "SchedulerLike",
    "SchedulerView",
    "Server",
    "ServerProtocol",
    "parse_address",
    "run",
]
