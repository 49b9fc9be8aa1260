"""Differential tests: hypothesis feeds the same input to both codec twins.

Both must return identical bytes and identical results, or raise the same
exception class (with the same message).  About 10,000 cases per run.

These tests need the compiled twin.  With ``PERIODIC_FAST_NO_EXTENSIONS`` set
(or ``--no-c-extensions``) they skip; otherwise a missing ``_codec_c`` is an
error, never a skip, so a broken build cannot pass silently.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from periodic_fast import _codec_py as py
from periodic_fast._compat import NO_EXTENSIONS
from periodic_fast.constants import MAX_COMMAND
from periodic_fast.job import FuncStat, Job

if NO_EXTENSIONS:
    pytest.skip("C extensions disabled", allow_module_level=True)

pytestmark = pytest.mark.c_extension

SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large],
}


@pytest.fixture(scope="module")
def c(request: pytest.FixtureRequest) -> ModuleType:
    if request.config.getoption("--no-c-extensions"):
        pytest.skip("C extensions disabled")
    return importlib.import_module("periodic_fast._codec_c")  # must import


def _norm(value: Any) -> Any:
    """Make results of both twins comparable (Packet classes differ)."""
    if isinstance(value, list):
        return [_norm(v) for v in value]
    if hasattr(value, "payload") and hasattr(value, "msgid"):
        return ("Packet", value.msgid, value.command, value.payload)
    return value


def outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    try:
        result = fn(*args)
    except Exception as exc:  # noqa: BLE001 - compared between twins
        return ("raised", type(exc), str(exc), _norm(getattr(exc, "packets", None)))
    return ("ok", _norm(result))


def same(c: ModuleType, name: str, *args: Any) -> tuple[Any, ...]:
    got_py = outcome(getattr(py, name), *args)
    got_c = outcome(getattr(c, name), *args)
    assert got_c == got_py, (name, args)
    return got_py


# -- strategies ----------------------------------------------------------------------

names = st.binary(max_size=20) | st.binary(min_size=250, max_size=260)
i16 = st.integers(-(1 << 15) - 2, (1 << 15) + 1)
i32 = st.integers(-(1 << 31) - 2, (1 << 31) + 1) | st.integers(-3, 3)
i64 = st.integers(-(1 << 63) - 2, (1 << 63) + 1) | st.integers(-3, 3)
u32 = st.integers(-2, (1 << 32) + 1)
jobs = st.builds(Job, names, names, st.binary(max_size=64), i64, i32 | st.just(0), i32)


def fields_for(command: int) -> st.SearchStrategy[tuple[Any, ...]]:
    if command in (5, 13, 25, 31):
        return st.tuples(jobs)
    if command in (7, 8, 15, 21, 22):
        return st.tuples(names)
    if command == 2:
        return st.tuples(names, names, i64, i16)
    if command in (3, 32):
        return st.tuples(names, names, st.binary(max_size=40))
    if command in (4, 17):
        return st.tuples(names, names)
    if command == 19:
        return st.tuples(st.lists(jobs, max_size=4))
    if command == 23:
        return st.tuples(names, u32)
    if command == 24:
        return st.tuples(u32)
    if command == 26:
        return st.tuples(st.integers(-2, 258))
    if command == 27:
        return st.tuples(names, i16, names, names)
    if command == 28:
        return st.tuples(names, names, names)
    if command == 30:
        return st.tuples(st.binary(max_size=40))
    return st.just(())


commands = st.integers(0, MAX_COMMAND)
any_fields = commands.flatmap(lambda c: st.tuples(st.just(c), fields_for(c)))


# -- field tuples --------------------------------------------------------------------


@settings(max_examples=3000, **SETTINGS)
@given(any_fields, st.integers(0, 5))
def test_encode_decode_payload(
    c: ModuleType, cf: tuple[int, tuple], extra: int
) -> None:
    command, fields = cf
    if extra == 5:  # wrong arity
        fields = (*fields, b"x")
    res = same(c, "encode_payload", command, *fields)
    if res[0] == "ok":
        same(c, "decode_payload", command, res[1])


@settings(max_examples=1000, **SETTINGS)
@given(jobs, st.lists(jobs, max_size=5), names, names)
def test_job_helpers(
    c: ModuleType, job: Job, job_list: list, a: bytes, b: bytes
) -> None:
    res = same(c, "encode_job", job)
    if res[0] == "ok":
        same(c, "decode_job", res[1])
    res = same(c, "encode_job_list", job_list)
    if res[0] == "ok":
        same(c, "decode_job_list", res[1])
    res = same(c, "encode_handle", a, b)
    if res[0] == "ok":
        same(c, "decode_handle", res[1])
    res = same(c, "encode_identity", a, b)
    same(c, "decode_identity", res[1])


stats = st.builds(
    FuncStat,
    st.binary(max_size=10),
    st.integers(0, 10**12),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(0, 99),
    st.integers(-(10**10), 10**10),
)


@settings(max_examples=500, **SETTINGS)
@given(st.lists(stats, max_size=5), st.binary(max_size=60))
def test_status(c: ModuleType, stat_list: list, junk: bytes) -> None:
    res = same(c, "encode_status", stat_list)
    same(c, "decode_status", res[1])
    same(c, "decode_status", junk)


# -- garbage into the decoders -------------------------------------------------------


@settings(max_examples=2000, **SETTINGS)
@given(st.integers(-2, 40), st.binary(max_size=80))
def test_decode_garbage(c: ModuleType, command: int, data: bytes) -> None:
    same(c, "decode_payload", command, data)
    same(c, "decode_job", data)
    same(c, "decode_job_list", data)
    same(c, "decode_handle", data)
    same(c, "decode_identity", data)


# -- frames and streams --------------------------------------------------------------

msgids = st.integers(-1, (1 << 32)) | st.integers(0, 300)
wire_commands = st.integers(-1, 256) | commands


@settings(max_examples=1500, **SETTINGS)
@given(msgids, wire_commands, st.binary(max_size=100), st.integers(-1, 5))
def test_encode_frames(
    c: ModuleType, msgid: int, command: int, payload: bytes, ctype: int
) -> None:
    same(c, "encode_request", msgid, command, payload)
    same(c, "encode_response", msgid, command, bytearray(payload))
    same(c, "encode_registration_reply", msgid)
    out_py, out_c = bytearray(b"?"), bytearray(b"?")
    assert outcome(py.encode_request_into, out_py, msgid, command, payload) == outcome(
        c.encode_request_into, out_c, msgid, command, payload
    )
    assert out_py == out_c
    same(c, "encode_registration", ctype)
    same(c, "encode_registration", ctype, payload[:5], payload[5:])


def _frame(draw: st.DrawFn, requests: bool) -> bytes:
    kind = draw(st.integers(0, 9))
    magic = b"\x00REQ" if requests else b"\x00RES"
    if kind == 0:  # raw garbage
        return draw(st.binary(max_size=30))
    if kind == 1:  # a bare or partial magic / the other magic
        return draw(
            st.sampled_from([b"\x00", b"\x00R", b"\x00RE", b"\x00REQ", b"\x00RES"])
        )
    if kind == 2:  # registration-ish frame
        ctype = draw(st.integers(0, 6))
        body = bytes([ctype]) + draw(st.binary(max_size=20))
        if draw(st.booleans()):
            body = bytes([ctype]) + py.encode_identity(b"n", b"t")
        return py._HEADER.pack(magic, len(body), py.zlib.crc32(body)) + body
    msgid = draw(st.integers(0, (1 << 32) - 1))
    command = draw(st.integers(0, 40))
    payload = draw(st.binary(max_size=60))
    data = bytearray(
        (py.encode_request if requests else py.encode_response)(msgid, command, payload)
    )
    if kind == 3 and data:  # flip one byte
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] ^= draw(st.integers(1, 255))
    if kind == 4:  # huge announced length
        data[4:8] = draw(st.integers(0, (1 << 32) - 1)).to_bytes(4, "big")
    return bytes(data)


@st.composite
def streams(draw: st.DrawFn) -> tuple[dict, bytes, list[int]]:
    opts = {
        "requests": draw(st.booleans()),
        "registration": draw(st.booleans()),
        "resync": draw(st.booleans()),
        "max_frame": draw(st.sampled_from([0, 5, 20, 64, 200] + [1 << 26] * 5)),
    }
    parts = draw(st.lists(st.builds(lambda: None), max_size=12))
    data = b"".join(_frame(draw, opts["requests"]) for _ in parts)
    if opts["registration"] and draw(st.integers(0, 4)):  # mostly a valid one
        if opts["requests"]:
            reg = py.encode_registration(draw(st.integers(1, 2)))
        else:
            reg = py.encode_registration_reply(draw(st.integers(0, (1 << 32) - 1)))
        data = reg + data
    cuts = draw(st.lists(st.integers(1, 64), max_size=40))
    return opts, data, cuts


def _run(codec: ModuleType, opts: dict, data: bytes, cuts: list[int]) -> list:
    """Feed `data` in chunks; record every feed's packets or error, and buffered."""
    parser = codec.Parser(**opts)
    log: list = []
    pos = 0
    sizes = [*cuts, len(data)]
    for size in sizes:
        chunk = data[pos : pos + size]
        pos += size
        log.append(outcome(parser.feed, chunk))
        log.append(parser.buffered)
        if pos >= len(data):
            break
    log.append(outcome(parser.feed, b""))  # a spent parser raises again
    return log


@settings(max_examples=2000, **SETTINGS)
@given(streams())
def test_streams_in_random_chunks(c: ModuleType, stream: tuple) -> None:
    opts, data, cuts = stream
    assert _run(c, opts, data, cuts) == _run(py, opts, data, cuts)


@settings(max_examples=200, **SETTINGS)
@given(streams(), st.integers(1, 7))
def test_streams_byte_by_byte_match_one_feed(
    c: ModuleType, stream: tuple, step: int
) -> None:
    opts, data, _ = stream
    assert _run(c, opts, data, [step] * len(data)) == _run(
        py, opts, data, [step] * len(data)
    )
