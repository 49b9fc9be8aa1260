"""A real server process whose wall clock steps (issue 17 item 1).

The server runs under libfaketime (Debian's ``libfaketime``; scripts/test.sh
installs it): ``FAKETIME_TIMESTAMP_FILE`` names a file holding the offset
(``+0``, ``+3600s``, ``-3600s``) that every ``time.time()`` of the server
reads (``FAKETIME_NO_CACHE``), while ``FAKETIME_DONT_FAKE_MONOTONIC`` leaves
``time.monotonic()`` alone, as an NTP step does.  The test itself runs on the
real clock and speaks raw frames.  Skipped when libfaketime is missing,
except under ``CI=true``, where it fails.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from periodic_fast.codec import (
    Packet,
    Parser,
    decode_job,
    decode_status,
    encode_payload,
    encode_registration,
    encode_request,
)
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.testing import ServerProcess

_LIBS = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
]
LIB = next((p for p in _LIBS if os.path.exists(p)), None)


@pytest.fixture
def faketime(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    if LIB is None:
        if os.environ.get("CI") == "true":
            pytest.fail(
                "libfaketime is required under CI=true (apt-get install libfaketime)"
            )
        pytest.skip("libfaketime is not installed (apt-get install libfaketime)")
    offset = tmp_path / "offset"
    offset.write_text("+0\n")
    env = {
        "LD_PRELOAD": LIB,
        "FAKETIME_TIMESTAMP_FILE": str(offset),
        "FAKETIME_NO_CACHE": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    with ServerProcess(env=env) as proc:
        yield proc, offset


class Peer:
    """A blocking raw-frame connection (client or worker)."""

    def __init__(self, address: str, client_type: int) -> None:
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.parser = Parser(requests=False, registration=True)
        self.frames: list[Packet] = []
        self.msgid = 100
        self.sock.sendall(encode_registration(client_type))
        assert self.read(1.0)  # the registration reply

    def send(self, command: int, *fields: object, msgid: int | None = None) -> int:
        if msgid is None:
            self.msgid += 1
            msgid = self.msgid
        self.sock.sendall(
            encode_request(msgid, command, encode_payload(command, *fields))
        )
        return msgid

    def read(self, wait: float) -> list[Packet]:
        """Frames that arrive within ``wait`` seconds (EOFError when closed)."""
        end = time.monotonic() + wait
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                raise EOFError("connection closed by the server")
            self.frames += self.parser.feed(data)
        out, self.frames = self.frames, []
        return out

    def request(self, command: int, *fields: object) -> Packet:
        m = self.send(command, *fields)
        end = time.monotonic() + 5
        while time.monotonic() < end:
            self.frames += self.read(0.05)
            for p in self.frames:
                if p.msgid == m:
                    self.frames.remove(p)
                    return p
        raise AssertionError(f"no reply to command {command}")

    def close(self) -> None:
        self.sock.close()


def assigned(frames: list[Packet]) -> list[bytes]:
    return [decode_job(p.payload).name for p in frames if p.command == C.JOB_ASSIGN]


def test_wall_clock_step_forward(faketime: tuple[ServerProcess, Path]) -> None:
    proc, offset = faketime
    w = Peer(proc.address, 2)
    other = Peer(proc.address, 2)
    client = Peer(proc.address, 1)
    try:
        w.request(C.CAN_DO, b"f")
        for m in range(1, 11):
            w.send(C.GRAB_JOB, msgid=m)
        for i in range(10):
            assert (
                client.request(C.SUBMIT_JOB, Job(b"f", b"j%d" % i, timeout=60)).command
                == C.SUCCESS
            )
        got: list[Packet] = []
        end = time.monotonic() + 5
        while len(assigned(got)) < 10 and time.monotonic() < end:
            got += w.read(0.1)
        assert len(assigned(got)) == 10
        for p in got:
            if p.command == C.JOB_ASSIGN:
                w.send(C.JOB_ASSIGNED, msgid=p.msgid)
        other.request(C.CAN_DO, b"f")
        for m in range(1, 11):
            other.send(C.GRAB_JOB, msgid=m)
        offset.write_text("+3600s\n")  # the NTP step
        again = other.read(2.5)  # several timer turns, a keepalive sweep
        assert assigned(again) == []
        assert w.request(C.PING).command == C.PONG  # not closed as idle
        assert client.request(C.PING).command == C.PONG
        [st] = decode_status(client.request(C.STATUS).payload)
        assert st.processing == 10
    finally:
        for p in (w, other, client):
            p.close()


def test_wall_clock_step_back(faketime: tuple[ServerProcess, Path]) -> None:
    proc, offset = faketime
    w = Peer(proc.address, 2)
    client = Peer(proc.address, 1)
    try:
        w.request(C.CAN_DO, b"f")
        time.sleep(1.2)  # the server's timer has ticked on the real time
        offset.write_text("-3600s\n")
        time.sleep(1.2)
        due = int(time.time() - 3600) + 2  # 1-2 s after now, on the server's clock
        assert (
            client.request(C.SUBMIT_JOB, Job(b"f", b"a", sched_at=due)).command
            == C.SUCCESS
        )
        w.send(C.GRAB_JOB, msgid=1)
        got: list[Packet] = []
        end = time.monotonic() + 4  # not an hour
        while not assigned(got) and time.monotonic() < end:
            got += w.read(0.1)
        assert assigned(got) == [b"a"]
    finally:
        w.close()
        client.close()
