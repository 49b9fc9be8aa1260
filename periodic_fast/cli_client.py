"""Old home of the client and worker commands, kept so that existing scripts
and entry points (``periodic_fast.cli_client:periodic_run_main``, as in
``python -c "from periodic_fast.cli_client import periodic_run_main as m;
m()"``) keep working.

The commands now live in :mod:`periodic_fast.cli_jobs` (client tools) and
:mod:`periodic_fast.cli_worker` (``run``, ``periodic-run``,
``periodic-run-pipe``); their apps and entry points in :mod:`periodic_fast.cli`.
"""

from __future__ import annotations

from .cli import (
    config_app,
    periodic_run_app,
    periodic_run_main,
    periodic_run_pipe_app,
    periodic_run_pipe_main,
)
from .cli_worker import periodic_run, periodic_run_pipe

__all__ = [
    "config_app",
    "periodic_run",
    "periodic_run_app",
    "periodic_run_main",
    "periodic_run_pipe",
    "periodic_run_pipe_app",
    "periodic_run_pipe_main",
]
