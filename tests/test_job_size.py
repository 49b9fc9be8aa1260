"""Issue 17 item 6: every job the server accepts survives DUMP and LOAD.

The bound is one function, ``codec.load_frame_size``: the LOAD frame of the
job alone, counted with count and timeout present (a job gains a count
later).  A server with ``--max-frame 65536`` accepts the largest such job on
every path and it round-trips through ``periodic dump`` / ``periodic load``;
one byte more is refused up front, with NO_WORKER (binary SUBMIT_JOB,
RUN_JOB), a 400 naming the limit (HTTP POST), or a ValueError before
sending (the client), and the connection stays usable.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.parse
from pathlib import Path

import pytest
from exec_helpers import server_fixtures

from periodic_fast.client import Client
from periodic_fast.codec import (
    LOAD_FRAME_OVERHEAD,
    Parser,
    decode_job_list,
    encode_job,
    encode_job_list,
    encode_registration,
    encode_request,
    load_frame_size,
    oversize_job,
)
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from tests.test_cli_ux import periodic

FRAME = 65536
#: the largest workload of a job named ("f", "n") that the server accepts
LARGEST = FRAME - LOAD_FRAME_OVERHEAD - 2

server, addr = server_fixtures("--max-frame", str(FRAME), "--http-writes")


def _job(name: bytes, size: int, **kw: int) -> Job:
    return Job(b"f", name, b"w" * size, **kw)


@pytest.mark.parametrize(("count", "timeout"), [(0, 0), (3, 0), (0, 9), (5, 9)])
def test_the_bound_is_the_largest_load_frame(count: int, timeout: int) -> None:
    job = _job(b"n", 100, count=count, timeout=timeout)
    exact = 5 + len(encode_job_list([job]))  # msgid + command + the list
    assert load_frame_size(job) >= exact
    if count > 0 and timeout > 0:
        assert load_frame_size(job) == exact
    assert oversize_job(encode_job(job), exact + 8) == 0
    big = _job(b"n", LARGEST + 1, count=count, timeout=timeout)
    assert oversize_job(encode_job(big), FRAME) == load_frame_size(big) == FRAME + 1
    assert oversize_job(encode_job(_job(b"n", LARGEST)), FRAME) == 0


def _raw(address: str, command: int, payload: bytes) -> list[int]:
    """One request on a fresh binary connection: the reply commands, then
    PING's (the connection must still work)."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    parser = Parser(requests=False, registration=True)
    got: list[int] = []
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(encode_registration(1))
        s.sendall(encode_request(1, command, payload) + encode_request(2, C.PING))
        while len(got) < 3:  # registration reply, the answer, PONG
            data = s.recv(65536)
            assert data, "the server closed the connection"
            got += [p.command for p in parser.feed(data)]
    return got[1:]


def test_one_byte_over_is_refused_on_every_path(addr: str) -> None:
    big = _job(b"bg", LARGEST)  # name 2 bytes: 1 byte over
    assert load_frame_size(big) == FRAME + 1
    payload = encode_job(big)
    assert _raw(addr, C.SUBMIT_JOB, payload) == [C.NO_WORKER, C.PONG]
    assert _raw(addr, C.RUN_JOB, payload) == [C.NO_WORKER, C.PONG]
    # LOAD: the frame itself fits (count 0, timeout 0), the job might not
    assert _raw(addr, C.LOAD, encode_job_list([_job(b"n", LARGEST - 3)])) == [
        C.SUCCESS,
        C.PONG,
    ]
    # HTTP POST
    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    body = urllib.parse.urlencode({"name": "bg", "args": "w" * LARGEST}).encode()
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(
            b"POST /f HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert f"frame limit of {FRAME} bytes".encode() in reply

    async def client() -> None:
        async with Client(addr, max_frame=FRAME) as c:
            for call in (
                c.submit_job(b"f", b"bg", big.workload),
                c.run_job(b"f", b"bg", big.workload),
                c.submit_many([big]),
                c.load([big]),
            ):
                with pytest.raises(ValueError, match=f"frame limit of {FRAME} bytes"):
                    await call
            assert await c.ping()
            assert b"bg" not in [j.name for j in await c.dump()]

    asyncio.run(client())


def test_the_largest_job_round_trips(addr: str, tmp_path: Path) -> None:
    async def submit() -> None:
        async with Client(addr, max_frame=FRAME) as c:
            assert await c.drop_func(b"f") in (True, False)
            assert await c.submit_job(b"f", b"n", b"w" * LARGEST, 2**33, 5, 9)

    asyncio.run(submit())
    dump = tmp_path / "dump.db"
    r = periodic("dump", "-o", str(dump), address=addr)
    assert r.returncode == 0, r.stderr
    [job] = [j for j in decode_job_list(dump.read_bytes()) if j.func == b"f"]
    assert load_frame_size(job) == FRAME
    assert periodic("drop", "f", address=addr).returncode == 0
    r = periodic("load", "-i", str(dump), address=addr)
    assert r.returncode == 0, r.stderr

    async def check() -> list[Job]:
        async with Client(addr, max_frame=FRAME) as c:
            return [j for j in await c.dump() if j.func == b"f"]

    assert asyncio.run(check()) == [job]
