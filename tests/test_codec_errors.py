"""Bad input on both twins: one test per error class, the `.packets` attribute,
the spent parser, and random garbage that must end in ProtocolError only."""

from __future__ import annotations

import random
import struct
import tracemalloc
import zlib
from types import ModuleType

import pytest

from periodic_fast.errors import (
    BadMagic,
    BadRegistration,
    CRCMismatch,
    FrameTooLarge,
    ProtocolError,
    TrailingBytes,
    TruncatedPayload,
    UnknownCommand,
)
from periodic_fast.job import Job

PING = bytes.fromhex("0052455100000005a6e57ef80000000109")


def frame(body: bytes, magic: bytes = b"\x00REQ", crc: int | None = None) -> bytes:
    if crc is None:
        crc = zlib.crc32(body)
    return magic + struct.pack(">II", len(body), crc) + body


# -- framing -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"\x00RES" + PING[4:], b"GET / HTTP/1.1\r\n", b"X", b"\x00RX", b"\x00\x00"]
)
def test_bad_magic_strict(codec_impl: ModuleType, data: bytes) -> None:
    parser = codec_impl.Parser()
    with pytest.raises(BadMagic):
        parser.feed(data)


def test_bad_magic_on_response_side(codec_impl: ModuleType) -> None:
    with pytest.raises(BadMagic):
        codec_impl.Parser(requests=False).feed(PING)


def test_bad_magic_after_a_good_frame(codec_impl: ModuleType) -> None:
    parser = codec_impl.Parser()
    with pytest.raises(BadMagic) as info:
        parser.feed(PING + b"\x01" + PING)
    assert [p.command for p in info.value.packets] == [9]


def test_crc_mismatch(codec_impl: ModuleType) -> None:
    bad = PING[:-1] + b"\x0a"
    with pytest.raises(CRCMismatch):
        codec_impl.Parser().feed(bad)
    with pytest.raises(CRCMismatch):
        codec_impl.Parser(resync=True).feed(b"junk" + bad)


@pytest.mark.parametrize("command", [35, 36, 100, 255])
def test_unknown_command(codec_impl: ModuleType, command: int) -> None:
    data = codec_impl.encode_request(1, command)
    with pytest.raises(UnknownCommand):
        codec_impl.Parser().feed(data)
    with pytest.raises(UnknownCommand):
        codec_impl.decode_payload(command, b"")
    with pytest.raises(UnknownCommand):
        codec_impl.encode_payload(command)
    with pytest.raises(UnknownCommand):
        codec_impl.decode_payload(-1, b"")


@pytest.mark.parametrize("size", [0, 1, 4])
def test_body_without_command(codec_impl: ModuleType, size: int) -> None:
    with pytest.raises(TruncatedPayload):
        codec_impl.Parser().feed(frame(b"\x00" * size))


def test_frame_too_large_from_the_header_alone(codec_impl: ModuleType) -> None:
    header = b"\x00REQ" + struct.pack(">II", 0xFFFFFFFF, 0)  # 4 GiB body
    parser = codec_impl.Parser()
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge) as info:
            parser.feed(header)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert info.value.length == 0xFFFFFFFF
    assert info.value.limit == 64 * 1024 * 1024
    assert parser.buffered == 0


def test_frame_too_large_header_split_across_feeds(codec_impl: ModuleType) -> None:
    header = b"\x00REQ" + struct.pack(">II", 1 << 31, 0)
    parser = codec_impl.Parser()
    assert parser.feed(header[:7]) == []
    with pytest.raises(FrameTooLarge):
        parser.feed(header[7:])


def test_configurable_max_frame(codec_impl: ModuleType) -> None:
    data = codec_impl.encode_request(1, 30, b"x" * 100)
    assert len(codec_impl.Parser(max_frame=105).feed(data)) == 1
    with pytest.raises(FrameTooLarge) as info:
        codec_impl.Parser(max_frame=104).feed(data[:12])
    assert (info.value.length, info.value.limit) == (105, 104)
    with pytest.raises(FrameTooLarge):
        codec_impl.Parser(max_frame=0).feed(PING)


# -- registration --------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x05",
        b"\x00",
        b"\x01\x00",
        b"\x02extra",
        b"\x03",
        b"\x03" + bytes(8),
        b"\x04" + struct.pack(">q", -1) + bytes(8),
        b"\x03" + struct.pack(">q", 3) + b"ab" + bytes(8),
        b"\x03" + struct.pack(">q", 1) + b"a" + struct.pack(">q", 0) + b"!",
    ],
)
def test_bad_registration(codec_impl: ModuleType, body: bytes) -> None:
    parser = codec_impl.Parser(registration=True)
    with pytest.raises(BadRegistration):
        parser.feed(frame(body) + PING)


@pytest.mark.parametrize("body", [b"\x1e\x00\x00\x00", b"\x1d\x00\x00\x00\x01", b""])
def test_bad_registration_reply(codec_impl: ModuleType, body: bytes) -> None:
    parser = codec_impl.Parser(requests=False, registration=True)
    with pytest.raises(BadRegistration):
        parser.feed(frame(body, b"\x00RES"))


def test_registration_crc_is_checked_first(codec_impl: ModuleType) -> None:
    with pytest.raises(CRCMismatch):
        codec_impl.Parser(registration=True).feed(frame(b"\x09", crc=1))


def test_malformed_identity_decoder(codec_impl: ModuleType) -> None:
    for data in (b"", bytes(7), bytes(8), bytes(16) + b"x", struct.pack(">q", -5)):
        with pytest.raises(BadRegistration):
            codec_impl.decode_identity(data)
    assert codec_impl.decode_identity(bytes(16)) == (b"", b"")


# -- the spent parser ----------------------------------------------------------------


def test_packets_attribute_and_spent_parser(codec_impl: ModuleType) -> None:
    parser = codec_impl.Parser()
    with pytest.raises(CRCMismatch) as info:
        parser.feed(PING + PING + PING[:-1] + b"\xff" + PING)
    assert [p.msgid for p in info.value.packets] == [1, 1]
    assert parser.buffered == 0
    for _ in range(3):
        with pytest.raises(CRCMismatch) as again:
            parser.feed(PING)
        assert again.value is info.value


def test_packets_attribute_empty_when_first_frame_fails(
    codec_impl: ModuleType,
) -> None:
    with pytest.raises(UnknownCommand) as info:
        codec_impl.Parser().feed(codec_impl.encode_request(1, 99))
    assert info.value.packets == []


def test_packets_attribute_with_buffered_start(codec_impl: ModuleType) -> None:
    parser = codec_impl.Parser()
    assert parser.feed(PING[:10]) == []
    with pytest.raises(BadMagic) as info:
        parser.feed(PING[10:] + PING + b"BAD!")
    assert len(info.value.packets) == 2


# -- payload decoders ----------------------------------------------------------------

GOOD = {
    2: (b"f", b"n", 1, 2),
    3: (b"f", b"n", b"r"),
    4: (b"f", b"n"),
    5: (Job(b"f", b"n", b"w", 1, 2, 3),),
    7: (b"f",),
    17: (b"f", b"n"),
    19: ([Job(b"f", b"n")],),
    23: (b"k", 5),
    24: (5,),
    26: (1,),
    27: (b"l", 2, b"f", b"n"),
    28: (b"l", b"f", b"n"),
}
# commands whose last field is `rest` accept any trailing bytes
REST = {3, 30, 32}


@pytest.mark.parametrize("command", sorted(GOOD))
def test_truncated_payloads(codec_impl: ModuleType, command: int) -> None:
    payload = codec_impl.encode_payload(command, *GOOD[command])
    # WORK_DONE ends with `rest`: only a cut inside the handle is truncated
    stop = len(codec_impl.encode_handle(b"f", b"n")) if command == 3 else len(payload)
    for cut in range(stop):
        with pytest.raises(TruncatedPayload):
            codec_impl.decode_payload(command, payload[:cut])


@pytest.mark.parametrize("command", sorted(set(GOOD) - REST) + [0, 9, 14, 33])
def test_trailing_bytes(codec_impl: ModuleType, command: int) -> None:
    payload = codec_impl.encode_payload(command, *GOOD.get(command, ()))
    with pytest.raises(TrailingBytes):
        codec_impl.decode_payload(command, payload + b"\x00")


def test_helper_decoders_truncated_and_trailing(codec_impl: ModuleType) -> None:
    job = codec_impl.encode_job(Job(b"f", b"n", b"w", 1, 2, 3))
    handle = codec_impl.encode_handle(b"f", b"n")
    jobs = codec_impl.encode_job_list([Job(b"f", b"n")] * 3)
    for decode, data in (
        (codec_impl.decode_job, job),
        (codec_impl.decode_handle, handle),
        (codec_impl.decode_job_list, jobs),
    ):
        for cut in range(len(data)):
            with pytest.raises(TruncatedPayload):
                decode(data[:cut])
        with pytest.raises(TrailingBytes):
            decode(data + b"!")


def test_job_list_count_larger_than_payload(codec_impl: ModuleType) -> None:
    with pytest.raises(TruncatedPayload):
        codec_impl.decode_job_list(b"\xff" * 8 + bytes(100))


def test_bad_status_lines(codec_impl: ModuleType) -> None:
    for data in (b"echo,1,2", b"echo,1,2,3,4,x", b"a\nb,1,1,1,1,1"):
        with pytest.raises(TruncatedPayload):
            codec_impl.decode_status(data)


# -- encoders: ValueError for fields that do not fit --------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.encode_request(-1, 9),
        lambda c: c.encode_request(1 << 32, 9),
        lambda c: c.encode_response(1, 256),
        lambda c: c.encode_response(1, -1),
        lambda c: c.encode_request_into(bytearray(), 1 << 40, 9),
        lambda c: c.encode_registration(5),
        lambda c: c.encode_registration(1, b"n", b"t"),
        lambda c: c.encode_registration(3),
        lambda c: c.encode_registration_reply(-1),
        lambda c: c.encode_registration_reply(1 << 32),
        lambda c: c.encode_handle(b"x" * 256, b""),
        lambda c: c.encode_job(Job(b"f", b"x" * 256)),
        lambda c: c.encode_job(Job(b"f", b"n", b"", 1 << 63)),
        lambda c: c.encode_job(Job(b"f", b"n", b"", 0, 1 << 31)),
        lambda c: c.encode_job(Job(b"f", b"n", b"", 0, 0, -(1 << 31) - 1)),
        lambda c: c.encode_payload(2, b"f", b"n", 0, 1 << 15),
        lambda c: c.encode_payload(2, b"f", b"n", 1 << 64, 0),
        lambda c: c.encode_payload(23, b"k", -1),
        lambda c: c.encode_payload(24, 1 << 32),
        lambda c: c.encode_payload(26, 256),
        lambda c: c.encode_payload(27, b"l", -(1 << 15) - 1, b"f", b"n"),
        lambda c: c.encode_payload(9, b"unexpected"),
        lambda c: c.encode_payload(13),
    ],
)
def test_encoders_raise_value_error(codec_impl: ModuleType, call) -> None:  # type: ignore[no-untyped-def]
    out = bytearray(b"keep")
    with pytest.raises(ValueError):
        call(codec_impl)
    assert out == b"keep"


def test_failed_encode_into_leaves_out_untouched(codec_impl: ModuleType) -> None:
    out = bytearray(b"keep")
    with pytest.raises(ValueError):
        codec_impl.encode_response_into(out, 1, 300, b"payload")
    assert out == b"keep"


# -- random garbage ------------------------------------------------------------------


def _garbage(seed: int) -> bytes:
    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(1 << 20))
    # sprinkle magics so resync mode finds frame starts (with random headers)
    for _ in range(2000):
        pos = rnd.randrange(len(data) - 4)
        data[pos : pos + 4] = rnd.choice([b"\x00REQ", b"\x00RES"])
    return bytes(data)


@pytest.mark.parametrize("resync", [False, True])
@pytest.mark.parametrize("registration", [False, True])
def test_random_bytes_raise_only_protocol_errors(
    codec_impl: ModuleType, resync: bool, registration: bool
) -> None:
    data = _garbage(int(resync) * 2 + int(registration))
    rnd = random.Random(7)
    parser = codec_impl.Parser(resync=resync, registration=registration)
    pos = 0
    feeds = 0
    error: ProtocolError | None = None
    while pos < len(data):  # bounded: every feed consumes >= 1 byte
        size = rnd.choice([1, 3, 12, 100, 1500, 65536])
        try:
            parser.feed(data[pos : pos + size])
        except ProtocolError as exc:
            error = exc
            break
        pos += size
        feeds += 1
    if error is not None:
        with pytest.raises(type(error)):
            parser.feed(b"more")
    else:
        assert resync  # strict mode cannot swallow a megabyte of garbage
        assert parser.buffered <= 64 * 1024 * 1024 + 12
