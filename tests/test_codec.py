"""The wire codec on both twins: protocol.md's worked examples, round trips of
every command, streaming.  Every test takes the ``codec_impl`` fixture."""

from __future__ import annotations

import random
from types import ModuleType

import pytest

from periodic_fast.constants import MAX_COMMAND, Command
from periodic_fast.job import FuncStat, Job


def h(text: str) -> bytes:
    """Hex as written in protocol.md: spaces and ``|`` are ignored."""
    return bytes.fromhex(text.replace("|", " "))


# -- protocol.md section 1.3 / 1.4 / 2.1 worked examples ---------------------------

REG_WORKER = h("00 52 45 51 | 00 00 00 01 | 3c 0c 8e a1 | 02")
REG_CLIENT = h("00 52 45 51 | 00 00 00 01 | a5 05 df 1b | 01")
REG_REPLY = h("00 52 45 53 | 00 00 00 05 | 72 bf 0f 7a | 1e 12 34 56 78")
PING_1 = h("00 52 45 51 | 00 00 00 05 | a6 e5 7e f8 | 00 00 00 01 09")
PONG_1 = h("00 52 45 53 | 00 00 00 05 | 3f ec 2f 42 | 00 00 00 01 0a")
SUBMIT = h(
    "00 52 45 51 | 00 00 00 1c | 24 fe 54 56 | 00 00 00 02 0d 04 65 63 68 6f 02 61 31"
    "00 00 00 02 68 69 00 00 00 00 00 00 00 00 00"
)
SUBMIT_JOB = Job(b"echo", b"a1", b"hi", 0)
JOB_ASSIGN = h(
    "00 52 45 53 | 00 00 00 20 | 09 7f 9b 76 | 00 00 00 07 05"
    "04 65 63 68 6f | 02 61 31 | 00 00 00 02 68 69 | 00 00 00 00 65 53 f1 00 | 02"
    "| 00 00 02 58"
)
ASSIGN_JOB = Job(b"echo", b"a1", b"hi", 1700000000, 0, 600)
IDENTITY = h(
    "03 | 00 00 00 00 00 00 00 08 | 63 6c 69 65 6e 74 2d 61 | 00 00 00 00 00 00 00 07"
    "| 74 6f 6b 65 6e 2d 61"
)


def test_registration_vectors(codec_impl: ModuleType) -> None:
    assert codec_impl.encode_registration(2) == REG_WORKER
    assert codec_impl.encode_registration(1) == REG_CLIENT
    assert codec_impl.encode_registration_reply(0x12345678) == REG_REPLY
    for frame, ctype in ((REG_WORKER, 2), (REG_CLIENT, 1)):
        parser = codec_impl.Parser(registration=True)
        (pkt,) = parser.feed(frame)
        assert (pkt.msgid, pkt.command, pkt.payload) == (None, ctype, b"")
    parser = codec_impl.Parser(requests=False, registration=True)
    (pkt,) = parser.feed(REG_REPLY)
    assert (pkt.msgid, pkt.command, pkt.payload) == (None, 30, h("12345678"))


def test_ping_pong_vectors(codec_impl: ModuleType) -> None:
    assert codec_impl.encode_request(1, Command.PING) == PING_1
    assert codec_impl.encode_response(1, Command.PONG) == PONG_1
    (pkt,) = codec_impl.Parser().feed(PING_1)
    assert pkt == codec_impl.Packet(1, 9, b"")
    (pkt,) = codec_impl.Parser(requests=False).feed(PONG_1)
    assert pkt == codec_impl.Packet(1, 10, b"")


def test_submit_job_vector(codec_impl: ModuleType) -> None:
    payload = codec_impl.encode_job(SUBMIT_JOB)
    assert codec_impl.encode_request(2, Command.SUBMIT_JOB, payload) == SUBMIT
    assert codec_impl.encode_payload(13, SUBMIT_JOB) == payload
    (pkt,) = codec_impl.Parser().feed(SUBMIT)
    assert (pkt.msgid, pkt.command) == (2, 13)
    assert codec_impl.decode_payload(pkt.command, pkt.payload) == (SUBMIT_JOB,)


def test_job_assign_vector(codec_impl: ModuleType) -> None:
    payload = codec_impl.encode_job(ASSIGN_JOB)
    assert codec_impl.encode_response(7, Command.JOB_ASSIGN, payload) == JOB_ASSIGN
    (pkt,) = codec_impl.Parser(requests=False).feed(JOB_ASSIGN)
    assert (pkt.msgid, pkt.command) == (7, 5)
    assert codec_impl.decode_job(pkt.payload) == ASSIGN_JOB


def test_identity_vector(codec_impl: ModuleType) -> None:
    assert codec_impl.encode_identity(b"client-a", b"token-a") == IDENTITY[1:]
    assert codec_impl.decode_identity(IDENTITY[1:]) == (b"client-a", b"token-a")
    frame = codec_impl.encode_registration(3, b"client-a", b"token-a")
    assert frame[12:] == IDENTITY
    (pkt,) = codec_impl.Parser(registration=True).feed(frame)
    assert (pkt.msgid, pkt.command, pkt.payload) == (None, 3, IDENTITY[1:])


def test_encode_into_appends(codec_impl: ModuleType) -> None:
    out = bytearray(b"xy")
    codec_impl.encode_request_into(out, 1, 9)
    codec_impl.encode_response_into(out, 1, 10)
    assert bytes(out) == b"xy" + PING_1 + PONG_1
    out = bytearray()
    codec_impl.encode_request_into(out, 2, 13, memoryview(SUBMIT[17:]))
    assert bytes(out) == SUBMIT


# -- payloads ------------------------------------------------------------------------

JOB = Job(b"f", b"n", b"w" * 300, 1700000000, 3, 60)

FIELDS: dict[int, tuple[object, ...]] = {
    2: (b"func", b"name", -5, -2),
    3: (b"func", b"name", b"result bytes"),
    4: (b"func", b"name"),
    5: (JOB,),
    7: (b"func",),
    8: (b"",),
    13: (Job(b"f", b"n"),),
    15: (b"x" * 255,),
    17: (b"func", b"name"),
    19: ([JOB, Job(b"a", b"b", b"", 0, 0, 5), Job(b"c", b"d", b"", 0, 7, 0)],),
    21: (b"bcast",),
    22: (b"timeout",),
    23: (b"timeout", 0xFFFFFFFF),
    24: (600,),
    25: (Job(b"f", b"n", b"", 0, 0, 10),),
    26: (1,),
    27: (b"lock", 3, b"func", b"name"),
    28: (b"lock", b"func", b"name"),
    30: (b"\x00\x01 any bytes",),
    31: (Job(b"f", b"n"),),
    32: (b"func", b"name", b"chunk"),
}


@pytest.mark.parametrize("command", range(MAX_COMMAND + 1))
def test_every_command_round_trips(codec_impl: ModuleType, command: int) -> None:
    fields = FIELDS.get(command, ())
    payload = codec_impl.encode_payload(command, *fields)
    assert codec_impl.decode_payload(command, payload) == fields
    frame = codec_impl.encode_request(0xFFFFFFFF, command, payload)
    (pkt,) = codec_impl.Parser().feed(frame)
    assert (pkt.msgid, pkt.command, pkt.payload) == (0xFFFFFFFF, command, payload)


@pytest.mark.parametrize(
    ("count", "timeout", "version"), [(0, 0, 0), (4, 0, 1), (0, 9, 2), (4, 9, 3)]
)
def test_job_versions(
    codec_impl: ModuleType, count: int, timeout: int, version: int
) -> None:
    job = Job(b"func", b"name", b"load", -1, count, timeout)
    data = codec_impl.encode_job(job)
    assert data[5 + 5 + 4 + 4 + 8] == version
    assert len(data) == 27 + 4 * bin(version).count("1")
    assert codec_impl.decode_job(data) == job


def test_negative_count_and_timeout_mean_version_0(codec_impl: ModuleType) -> None:
    data = codec_impl.encode_job(Job(b"f", b"n", b"", 0, -1, -1))
    assert data[-1] == 0
    assert codec_impl.decode_job(data) == Job(b"f", b"n")


@pytest.mark.parametrize("version", [0, 4, 7, 0x80, 0xFF])
def test_unknown_version_decodes_as_0(codec_impl: ModuleType, version: int) -> None:
    data = codec_impl.encode_job(Job(b"f", b"n", b"w", 5))[:-1] + bytes([version])
    assert codec_impl.decode_job(data) == Job(b"f", b"n", b"w", 5, 0, 0)


def test_handles(codec_impl: ModuleType) -> None:
    for func, name in ((b"", b""), (b"f", b"n"), (b"x" * 255, b"y" * 255)):
        data = codec_impl.encode_handle(func, name)
        assert data == Job(func, name).handle
        assert codec_impl.decode_handle(data) == (func, name)
        assert codec_impl.decode_handle(bytearray(data)) == (func, name)


def test_status_text(codec_impl: ModuleType) -> None:
    stats = [
        FuncStat(b"zeta", 1, 2, 3, 4, 1700000000),
        FuncStat(b"a,b", 0, 0, 0, 0, 5),
        FuncStat(b"echo", 1, 0, 0, 0, 1700000000),
    ]
    text = codec_impl.encode_status(stats)
    assert text == b"a,b,0,0,0,0,5\necho,1,0,0,0,1700000000\nzeta,1,2,3,4,1700000000"
    assert codec_impl.decode_status(text) == sorted(stats)
    assert codec_impl.encode_status([]) == b""
    assert codec_impl.decode_status(b"") == []
    assert codec_impl.decode_status(b"echo,1,0,0,0,1700000000\n") == [stats[2]]


def test_job_list(codec_impl: ModuleType) -> None:
    jobs = [Job(b"f%d" % i, b"n", b"w" * i, i, i % 3, i % 2) for i in range(50)]
    data = codec_impl.encode_job_list(jobs)
    assert data[:8] == (50).to_bytes(8, "big")
    assert codec_impl.decode_job_list(data) == jobs
    assert codec_impl.encode_job_list(iter(jobs)) == data  # any iterable
    assert codec_impl.encode_job_list([]) == bytes(8)
    assert codec_impl.decode_job_list(bytes(8)) == []
    # DUMP reply / LOAD request
    assert codec_impl.decode_payload(19, data) == (jobs,)
    assert codec_impl.decode_payload(30, data) == (data,)


def test_packet_semantics(codec_impl: ModuleType) -> None:
    p = codec_impl.Packet(1, 9, b"x")
    assert p == codec_impl.Packet(1, 9, b"x")
    assert p != codec_impl.Packet(2, 9, b"x")
    assert p != codec_impl.Packet(None, 9, b"x")
    assert codec_impl.Packet(None, 1, b"") != codec_impl.Packet(0, 1, b"")
    assert hash(p) == hash((1, 9, b"x"))
    assert len({p, codec_impl.Packet(1, 9, b"x")}) == 1
    assert repr(p) == "Packet(msgid=1, command=9, payload=b'x')"
    assert (p == (1, 9, b"x")) is False


# -- streaming -----------------------------------------------------------------------


def _stream(codec_impl: ModuleType, n: int, seed: int = 1) -> tuple[bytes, list]:
    rnd = random.Random(seed)
    frames = []
    expect = []
    for _ in range(n):
        command = rnd.choice([1, 3, 9, 13, 30, 32])
        payload = rnd.randbytes(rnd.choice([0, 1, 20, 200, 3000]))
        msgid = rnd.getrandbits(32)
        frames.append(codec_impl.encode_request(msgid, command, payload))
        expect.append((msgid, command, payload))
    return b"".join(frames), expect


def _triples(packets: list) -> list:
    return [(p.msgid, p.command, p.payload) for p in packets]


def test_one_byte_at_a_time(codec_impl: ModuleType) -> None:
    stream, expect = _stream(codec_impl, 40)
    parser = codec_impl.Parser()
    got = []
    for i in range(len(stream)):
        got += parser.feed(stream[i : i + 1])
    assert _triples(got) == expect
    assert parser.buffered == 0


@pytest.mark.parametrize("seed", range(5))
def test_random_chunks(codec_impl: ModuleType, seed: int) -> None:
    stream, expect = _stream(codec_impl, 300, seed)
    rnd = random.Random(seed)
    parser = codec_impl.Parser()
    got = []
    pos = 0
    while pos < len(stream):
        size = rnd.choice([1, 2, 7, 12, 17, 100, 4096, 65536])
        chunk = stream[pos : pos + size]
        got += parser.feed(rnd.choice([bytes, bytearray, memoryview])(chunk))
        pos += size
    assert _triples(got) == expect
    assert parser.buffered == 0


def test_megabytes_of_frames(codec_impl: ModuleType) -> None:
    frame = SUBMIT
    count = 2_000_000 // len(frame)
    big = frame * count + PING_1
    packets = codec_impl.Parser().feed(big)
    assert len(packets) == count + 1
    assert packets[0] == packets[count - 1]
    assert packets[-1].command == 9
    assert len(big) > 1_000_000


def test_partial_frame_kept_across_feeds(codec_impl: ModuleType) -> None:
    parser = codec_impl.Parser()
    assert parser.feed(SUBMIT[:5]) == []
    assert parser.buffered == 5
    assert parser.feed(SUBMIT[5:12]) == []
    assert parser.buffered == 12
    assert parser.feed(SUBMIT[12:-1]) == []
    assert parser.buffered == len(SUBMIT) - 1
    (pkt,) = parser.feed(SUBMIT[-1:] + PING_1[:3])
    assert pkt.command == 13
    assert parser.buffered == 3
    (pkt,) = parser.feed(PING_1[3:])
    assert pkt.command == 9
    assert parser.buffered == 0


def test_registration_then_pipelined_requests(codec_impl: ModuleType) -> None:
    chunk = REG_WORKER + codec_impl.encode_request(1, 7, b"\x04echo") + PING_1
    parser = codec_impl.Parser(registration=True)
    packets = parser.feed(chunk + SUBMIT[:20])
    assert _triples(packets) == [(None, 2, b""), (1, 7, b"\x04echo"), (1, 9, b"")]
    (pkt,) = parser.feed(SUBMIT[20:])
    assert pkt.msgid == 2
    # a second registration-looking frame is an ordinary (bad) frame now
    assert parser.feed(REG_CLIENT[:-1]) == []


def test_resync_skips_garbage_and_accepts_either_magic(
    codec_impl: ModuleType,
) -> None:
    garbage = b"\x00RE\x00R\x00\x00REX junk \x00"
    stream = garbage + PING_1 + b"zz" + PONG_1 + b"\x00R"
    parser = codec_impl.Parser(resync=True)
    packets = parser.feed(stream)
    assert _triples(packets) == [(1, 9, b""), (1, 10, b"")]
    assert parser.buffered == 2
    # the kept bytes were the start of a magic
    (pkt,) = parser.feed(PING_1[2:])
    assert pkt.command == 9
    # same result one byte at a time
    parser = codec_impl.Parser(resync=True)
    got = []
    for i in range(len(stream)):
        got += parser.feed(stream[i : i + 1])
    assert _triples(got) == [(1, 9, b""), (1, 10, b"")]


def test_resync_keeps_at_most_three_bytes_of_garbage(codec_impl: ModuleType) -> None:
    parser = codec_impl.Parser(resync=True)
    assert parser.feed(b"x" * 1000) == []
    assert parser.buffered == 3
    assert parser.feed(b"y") == []
    assert parser.buffered == 3


def test_response_side_parser(codec_impl: ModuleType) -> None:
    stream = REG_REPLY + PONG_1 + JOB_ASSIGN
    parser = codec_impl.Parser(requests=False, registration=True)
    packets = parser.feed(stream)
    assert _triples(packets)[:2] == [(None, 30, h("12345678")), (1, 10, b"")]
    assert codec_impl.decode_payload(5, packets[2].payload) == (ASSIGN_JOB,)


def test_zero_max_frame_and_exact_limit(codec_impl: ModuleType) -> None:
    parser = codec_impl.Parser(max_frame=len(SUBMIT) - 12)
    assert len(parser.feed(SUBMIT * 3)) == 3
    with pytest.raises(ValueError):
        codec_impl.Parser(max_frame=-1)
