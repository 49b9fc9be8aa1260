"""Side-by-side codec figures for docs/benchmarks.md.

Runs both twins in one process, takes the median of several repeats of each
scenario and prints a Markdown table with the c/py ratio.

    .venv/bin/python bench/codec_report.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import gc
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from types import ModuleType

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from periodic_fast import _codec_py  # noqa: E402
from periodic_fast.job import Job  # noqa: E402

SMALL = _codec_py.encode_request(
    2, 13, _codec_py.encode_job(Job(b"echo", b"a1", b"hi"))
)  # 40 bytes
FRAMES = 10_000
SMALL_STREAM = SMALL * FRAMES
CHUNKS = [SMALL_STREAM[i : i + 1500] for i in range(0, len(SMALL_STREAM), 1500)]
BIG = _codec_py.encode_request(1, 30, bytes(range(256)) * 256)  # 64 KiB payload
BIG_FRAMES = 64
BIG_STREAM = BIG * BIG_FRAMES
ENCODES = 10_000
PAYLOAD = SMALL[17:]


def scenarios(m: ModuleType) -> list[tuple[str, str, float, Callable[[], object]]]:
    """(name, unit, units per call, callable)."""
    Parser = m.Parser
    enc_req, enc_res, enc_into = (
        m.encode_request,
        m.encode_response,
        m.encode_response_into,
    )
    decode = m.decode_payload

    def parse_small() -> object:
        return Parser().feed(SMALL_STREAM)

    def parse_chunked() -> object:
        p = Parser()
        return [p.feed(c) for c in CHUNKS]

    def parse_big() -> object:
        return Parser().feed(BIG_STREAM)

    def encode_request() -> None:
        for i in range(ENCODES):
            enc_req(i, 13, PAYLOAD)

    def encode_response() -> None:
        for i in range(ENCODES):
            enc_res(i, 16)

    def encode_into() -> None:
        out = bytearray()
        for i in range(ENCODES):
            enc_into(out, i, 16)

    def decode_submit() -> None:
        for _ in range(ENCODES):
            decode(13, PAYLOAD)

    return [
        (
            "parse 40 B SUBMIT_JOB frames, one 400 KB feed",
            "frames/s",
            FRAMES,
            parse_small,
        ),
        ("parse 40 B frames, 1500 B chunks", "frames/s", FRAMES, parse_chunked),
        (
            "parse 64 KiB-payload frames, one 4 MiB feed",
            "MB/s",
            len(BIG_STREAM) / 1e6,
            parse_big,
        ),
        ("encode_request (23 B payload)", "frames/s", ENCODES, encode_request),
        ("encode_response (empty payload)", "frames/s", ENCODES, encode_response),
        ("encode_response_into one bytearray", "frames/s", ENCODES, encode_into),
        ("decode_payload(SUBMIT_JOB)", "payloads/s", ENCODES, decode_submit),
    ]


def measure(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds per call; each sample is one call after a warm-up."""
    fn()
    samples = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def fmt(rate: float, unit: str) -> str:
    if unit == "MB/s":
        return f"{rate:,.0f} MB/s"
    return f"{rate / 1e6:,.2f} M {unit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    twins = {"py": _codec_py, "c": importlib.import_module("periodic_fast._codec_c")}
    # see bench_codec.py: put glibc's malloc thresholds in their steady state
    warm = bytearray(2 * len(BIG_STREAM))
    del warm
    rows = []
    per_twin = {k: scenarios(m) for k, m in twins.items()}
    for i, (name, unit, units, _) in enumerate(per_twin["c"]):
        rates = {}
        for k in ("py", "c"):  # interleaved, same process
            rates[k] = units / measure(per_twin[k][i][3], args.repeats)
        rows.append(
            (
                name,
                fmt(rates["c"], unit),
                fmt(rates["py"], unit),
                rates["c"] / rates["py"],
            )
        )
    print(f"median of {args.repeats} repeats per cell\n")
    print("| scenario | c | py | c/py |")
    print("|---|---:|---:|---:|")
    for name, c, p, r in rows:
        print(f"| {name} | {c} | {p} | {r:.1f}x |")


if __name__ == "__main__":
    main()
