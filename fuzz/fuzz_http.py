"""atheris harness: the server's HTTP side (fuzz/harness_http.py).

Each input is an option byte (HTTP parser, writes, auth, TCP or unix peer,
body cap) and a script of raw bytes sent on up to four connections,
half-closes, drops and time passing, played against a real ServerProtocol
that sniffs HTTP and hands over to a real HttpApp, over fake transports and a
fake loop: in-process, no sockets, deterministic.  The live codec and wheel
twins are used (``PERIODIC_FAST_NO_EXTENSIONS=1`` for the Python ones).

    mkdir -p /tmp/corpus-http
    python fuzz/fuzz_http.py /tmp/corpus-http fuzz/corpus/http \\
        -runs=1000000 -max_len=512 -timeout=10 -rss_limit_mb=1024
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris  # type: ignore[import-untyped]  # noqa: E402

with atheris.instrument_imports(include=["periodic_fast", "fuzz", "h11"]):
    from fuzz.harness_http import check_http
    from periodic_fast.codec import IMPLEMENTATION


def test_one_input(data: bytes) -> None:
    """One fuzz input; an exception (AssertionError included) is a finding."""
    check_http(data)


def main() -> None:
    print(f"fuzz_http: codec twin {IMPLEMENTATION}", file=sys.stderr)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
