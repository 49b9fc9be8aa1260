"""Codec micro-benchmarks on both twins (ids ``[c]`` / ``[py]``).

Run: ``.venv/bin/python -m pytest bench/bench_codec.py --benchmark-only``
(pytest-benchmark; the same functions run under pytest-codspeed).
``extra_info`` carries the derived rate (frames/s or MB/s) per round.
"""

from __future__ import annotations

from types import ModuleType

import pytest

from periodic_fast import _codec_py
from periodic_fast.job import Job

# ~40-byte SUBMIT_JOB frame (protocol.md 1.3 example: 40 bytes on the wire)
SMALL = _codec_py.encode_request(
    2, 13, _codec_py.encode_job(Job(b"echo", b"a1", b"hi"))
)
FRAMES = 10_000
SMALL_STREAM = SMALL * FRAMES
BIG = _codec_py.encode_request(1, 30, bytes(range(256)) * 256)  # 64 KiB payload
BIG_FRAMES = 64
BIG_STREAM = BIG * BIG_FRAMES
ENCODES = 1_000
PAYLOAD = SMALL[17:]

# glibc raises its mmap/trim thresholds after the first large block is freed; until
# then every round re-faults freshly trimmed heap pages for the 64 KiB payloads,
# which swamps the codec's own cost (measured: ~1.8x on this VM).  Free one large
# block up front so both twins run in a long-lived process's steady state.
_WARM = bytearray(2 * len(BIG_STREAM))
del _WARM


@pytest.mark.benchmark(group="parse-small")
def test_parse_small_frames(benchmark, codec_impl: ModuleType) -> None:  # type: ignore[no-untyped-def]
    Parser = codec_impl.Parser

    def run() -> int:
        return len(Parser().feed(SMALL_STREAM))

    assert benchmark(run) == FRAMES
    benchmark.extra_info["frames_per_s"] = FRAMES / benchmark.stats.stats.median


@pytest.mark.benchmark(group="parse-small-chunked")
def test_parse_small_frames_in_1500_byte_chunks(
    benchmark, codec_impl: ModuleType
) -> None:  # type: ignore[no-untyped-def]
    chunks = [SMALL_STREAM[i : i + 1500] for i in range(0, len(SMALL_STREAM), 1500)]
    Parser = codec_impl.Parser

    def run() -> int:
        parser = Parser()
        return sum(len(parser.feed(chunk)) for chunk in chunks)

    assert benchmark(run) == FRAMES
    benchmark.extra_info["frames_per_s"] = FRAMES / benchmark.stats.stats.median


@pytest.mark.benchmark(group="parse-64k")
def test_parse_64k_frames(benchmark, codec_impl: ModuleType) -> None:  # type: ignore[no-untyped-def]
    Parser = codec_impl.Parser

    def run() -> int:
        return len(Parser().feed(BIG_STREAM))

    assert benchmark(run) == BIG_FRAMES
    benchmark.extra_info["MB_per_s"] = (
        len(BIG_STREAM) / benchmark.stats.stats.median / 1e6
    )


@pytest.mark.benchmark(group="encode-request")
def test_encode_request(benchmark, codec_impl: ModuleType) -> None:  # type: ignore[no-untyped-def]
    encode = codec_impl.encode_request

    def run() -> None:
        for i in range(ENCODES):
            encode(i, 13, PAYLOAD)

    benchmark(run)
    benchmark.extra_info["frames_per_s"] = ENCODES / benchmark.stats.stats.median


@pytest.mark.benchmark(group="encode-response")
def test_encode_response(benchmark, codec_impl: ModuleType) -> None:  # type: ignore[no-untyped-def]
    encode = codec_impl.encode_response

    def run() -> None:
        for i in range(ENCODES):
            encode(i, 16)

    benchmark(run)
    benchmark.extra_info["frames_per_s"] = ENCODES / benchmark.stats.stats.median


@pytest.mark.benchmark(group="encode-response-into")
def test_encode_response_into(benchmark, codec_impl: ModuleType) -> None:  # type: ignore[no-untyped-def]
    encode_into = codec_impl.encode_response_into

    def run() -> None:
        out = bytearray()
        for i in range(ENCODES):
            encode_into(out, i, 16)

    benchmark(run)
    benchmark.extra_info["frames_per_s"] = ENCODES / benchmark.stats.stats.median


@pytest.mark.benchmark(group="decode-job")
def test_decode_submit_payload(benchmark, codec_impl: ModuleType) -> None:  # type: ignore[no-untyped-def]
    decode = codec_impl.decode_payload

    def run() -> None:
        for _ in range(ENCODES):
            decode(13, PAYLOAD)

    benchmark(run)
    benchmark.extra_info["payloads_per_s"] = ENCODES / benchmark.stats.stats.median
