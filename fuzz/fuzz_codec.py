"""atheris harness: the codec Parser and payload decoders (fuzz/harness.py).

By default each input goes through the Python twin *and* the C twin, which
must agree (the Python twin is instrumented and guides the search; the
Cython twin is not instrumented but sees every input).  With
``PERIODIC_FAST_NO_EXTENSIONS=1`` only the Python twin runs.

    mkdir -p /tmp/corpus-codec
    python fuzz/fuzz_codec.py /tmp/corpus-codec fuzz/corpus/codec \\
        -runs=1000000 -max_len=512 -timeout=10 -rss_limit_mb=1024

(docs/fuzzing.md: the recorded runs; libFuzzer writes new inputs into the
first directory, so keep the committed seeds in the second.)
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import atheris  # type: ignore[import-untyped]  # noqa: E402

with atheris.instrument_imports(include=["periodic_fast", "fuzz"]):
    from fuzz.harness import check_codec_parity
    from periodic_fast import _codec_py
    from periodic_fast._compat import NO_EXTENSIONS

C_TWIN: ModuleType | None = (
    None if NO_EXTENSIONS else importlib.import_module("periodic_fast._codec_c")
)


def test_one_input(data: bytes) -> None:
    """One fuzz input; an exception (AssertionError included) is a finding."""
    check_codec_parity(_codec_py, C_TWIN, data)


def main() -> None:
    twins = "python" if C_TWIN is None else "python + cython (compared)"
    print(f"fuzz_codec: twins {twins}", file=sys.stderr)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
