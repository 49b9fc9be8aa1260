"""Write the seed corpora fuzz/corpus/codec, fuzz/corpus/server and
fuzz/corpus/http.

Codec seeds: every valid frame of ``harness.SEED_FRAMES`` (one per command,
both directions, and the registrations) behind a few option/cut prefixes,
alone and in pairs.  Server seeds: ``harness.seed_server_inputs()``.  HTTP
seeds: ``harness_http.seed_http_inputs()``.

    python fuzz/make_corpus.py
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from fuzz.harness import SEED_FRAMES, seed_server_inputs  # noqa: E402
from fuzz.harness_http import seed_http_inputs  # noqa: E402


def _write(d: Path, items: list[bytes]) -> int:
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        old.unlink()
    for data in items:
        (d / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return len(set(items))


def main() -> None:
    codec: list[bytes] = []
    for i, frame in enumerate(SEED_FRAMES):
        flags = (0b00111, 0b00101, 0b01110, 0b11001)[i % 4]  # options, see harness
        codec.append(bytes([flags, 0]) + frame)
        codec.append(bytes([flags | 2, 3]) + SEED_FRAMES[0] + frame + frame)
    n = _write(HERE / "corpus" / "codec", codec)
    m = _write(HERE / "corpus" / "server", seed_server_inputs())
    k = _write(HERE / "corpus" / "http", seed_http_inputs())
    print(f"{n} codec seeds, {m} server seeds, {k} http seeds")


if __name__ == "__main__":
    main()
