"""``python -m periodic_fast``: the ``periodic`` command (``-d`` runs the server)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    main()
