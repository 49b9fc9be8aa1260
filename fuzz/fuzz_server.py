"""atheris harness: the server's frame handling (fuzz/harness.py).

Each input is a script of connections opening, registering, sending valid,
mutated and random frames and raw bytes, closing, and time passing, played
against a real Scheduler and ServerProtocol objects over fake transports and
a fake loop: in-process, no sockets, deterministic.  The live codec twin is
used (``PERIODIC_FAST_NO_EXTENSIONS=1`` for the Python one).

    mkdir -p /tmp/corpus-server
    python fuzz/fuzz_server.py /tmp/corpus-server fuzz/corpus/server \\
        -runs=1000000 -max_len=512 -timeout=10 -rss_limit_mb=1024
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris  # type: ignore[import-untyped]  # noqa: E402

with atheris.instrument_imports(include=["periodic_fast", "fuzz"]):
    from fuzz.harness import check_server
    from periodic_fast.codec import IMPLEMENTATION


def test_one_input(data: bytes) -> None:
    """One fuzz input; an exception (AssertionError included) is a finding."""
    check_server(data)


def main() -> None:
    print(f"fuzz_server: codec twin {IMPLEMENTATION}", file=sys.stderr)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
