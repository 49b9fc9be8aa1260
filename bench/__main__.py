"""``python -m bench``: the benchmark suite (see bench/suite/cli.py)."""

from __future__ import annotations

import sys

from bench.suite.cli import main

if __name__ == "__main__":
    sys.exit(main())
