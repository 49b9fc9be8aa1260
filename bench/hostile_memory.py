"""Server RSS under the hostile-peer attacks of issue 16 items 1-3, bounded.

Starts one server subprocess per attack (memory store, ``--max-output 8 MiB``
so that the output caps show at this scale), reads its RSS from
``/proc/PID/status`` before the attack, while the attacking connections are
open (``during``) and after they closed (``after``), and prints one line per
attack.  Every attack is a small version of the one in the issue:

* ``partial-frames`` (1): 8 registered connections each send 7 MiB of an
  8 MiB frame, then close;
* ``http-partial`` (1): 40 HTTP connections each send 900 KB of a 1 MB body,
  then close;
* ``unregistered`` (2): 8 connections each send 7 MiB of an 8 MiB
  registration frame and stay open;
* ``fanout`` (3): one WORK_DATA of 256 KiB to 200 RECV_DATA waiters of one
  client that does not read;
* ``dump-pipeline`` (3): 100 pipelined DUMPs of 1,000 1-KB jobs, unread;
* ``http-pipeline`` (3): 300 pipelined ``GET /`` (status of 400 funcs), unread;
* ``waiters`` (4): one client sends 100,000 RECV_DATA for jobs of a func
  whose worker does not grab (each a waiter with a lifetime the client
  picks), then leaves (the worker stays);
* ``funcs`` (10): one worker sends CAN_DO for 20,000 new funcs, then leaves.

    python bench/hostile_memory.py [--only NAME ...]

Run from the checkout whose server is measured (its package is imported).
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
import zlib
from collections.abc import Callable

from periodic_fast.codec import encode_payload, encode_request
from periodic_fast.constants import Command
from periodic_fast.testing import ServerProcess

MIB = 1024 * 1024
_HEADER = struct.Struct(">4sII")


def rss_mib(pid: int) -> float:
    """Resident set size of ``pid`` in MiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def frame(body: bytes) -> bytes:
    return _HEADER.pack(b"\x00REQ", len(body), zlib.crc32(body)) + body


def connect(address: str, rcvbuf: int = 0) -> socket.socket:
    host, port = address[6:].rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:  # the server's output backs up at once
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.connect((host, int(port)))
    s.settimeout(10)
    return s


def register(s: socket.socket, ctype: int = 1) -> None:
    s.sendall(frame(bytes([ctype])))
    got = b""
    while len(got) < 17:
        chunk = s.recv(17 - len(got))
        if not chunk:
            raise ConnectionError("closed at registration")
        got += chunk


def request(s: socket.socket, msgid: int, command: int, *fields: object) -> bytes:
    return encode_request(msgid, command, encode_payload(command, *fields))


def ping(address: str) -> None:
    """One PING round trip: the server has handled everything before it."""
    s = connect(address)
    register(s)
    s.sendall(request(s, 1, Command.PING))
    s.recv(64)
    s.close()


def submit(address: str, jobs: list[tuple[bytes, bytes, bytes]]) -> None:
    s = connect(address)
    register(s)
    s.sendall(
        b"".join(
            request(s, i + 1, Command.SUBMIT_JOB, (f, n, a, 0, 0, 0))
            for i, (f, n, a) in enumerate(jobs)
        )
    )
    need = len(jobs) * 17
    got = 0
    while got < need:
        got += len(s.recv(65536))
    s.close()


# -- the attacks: each returns the sockets to close after "during" ------------


def partial_frames(address: str) -> list[socket.socket]:
    out = []
    for _ in range(8):
        s = connect(address)
        register(s)
        s.sendall(_HEADER.pack(b"\x00REQ", 8 * MIB, 0) + b"x" * (7 * MIB))
        out.append(s)
    return out


def http_partial(address: str) -> list[socket.socket]:
    out = []
    for _ in range(40):
        s = connect(address)
        s.sendall(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000\r\n\r\n"
            + b"a" * 900_000
        )
        out.append(s)
    return out


def unregistered(address: str) -> list[socket.socket]:
    out = []
    for _ in range(8):
        s = connect(address)
        try:
            s.sendall(_HEADER.pack(b"\x00REQ", 8 * MIB, 0) + b"x" * (7 * MIB))
        except OSError:
            pass  # refused from the header: the point
        out.append(s)
    return out


def fanout(address: str) -> list[socket.socket]:
    worker = connect(address)
    register(worker, 2)
    worker.sendall(request(worker, 1, Command.CAN_DO, b"f"))
    submit(address, [(b"f", b"j", b"")])
    client = connect(address, rcvbuf=4096)
    register(client)
    client.sendall(
        b"".join(
            request(client, i + 1, Command.RECV_DATA, (b"f", b"j", b"", 0, 0, 0))
            for i in range(200)
        )
    )
    time.sleep(0.3)
    worker.sendall(request(worker, 2, Command.WORK_DATA, b"f", b"j", b"d" * 256 * 1024))
    return [worker, client]


def dump_pipeline(address: str) -> list[socket.socket]:
    submit(address, [(b"d", b"%d" % i, b"a" * 1024) for i in range(1000)])
    s = connect(address, rcvbuf=4096)
    register(s)
    s.sendall(b"".join(request(s, i + 1, Command.DUMP) for i in range(100)))
    return [s]


def http_pipeline(address: str) -> list[socket.socket]:
    submit(address, [(b"func-%04d" % i, b"j", b"") for i in range(400)])
    s = connect(address, rcvbuf=4096)
    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 300)
    return [s]


#: connections an attack needs until the end of "after" (closed last)
KEEP: list[socket.socket] = []


def waiters(address: str) -> list[socket.socket]:
    worker = connect(address)  # RECV_DATA needs a worker for the func
    register(worker, 2)
    worker.sendall(request(worker, 1, Command.CAN_DO, b"w"))
    KEEP.append(worker)
    time.sleep(0.2)
    s = connect(address)
    register(s)
    for start in range(0, 100_000, 10_000):
        s.sendall(
            b"".join(
                request(s, i + 1, Command.RECV_DATA, (b"w", b"%d" % i, b"", 0, 0, 0))
                for i in range(start, start + 10_000)
            )
        )
    time.sleep(3.0)  # let the server work through them
    return [s]


def funcs(address: str) -> list[socket.socket]:
    s = connect(address)
    register(s, 2)
    s.sendall(
        b"".join(
            request(s, i + 1, Command.CAN_DO, b"func-%05d" % i) for i in range(20_000)
        )
    )
    time.sleep(2.0)
    return [s]


ATTACKS: dict[str, Callable[[str], list[socket.socket]]] = {
    "partial-frames": partial_frames,
    "http-partial": http_partial,
    "unregistered": unregistered,
    "fanout": fanout,
    "dump-pipeline": dump_pipeline,
    "http-pipeline": http_pipeline,
    "waiters": waiters,
    "funcs": funcs,
}


def measure(name: str) -> tuple[float, float, float]:
    """(before, during, after) RSS in MiB for one attack on a fresh server."""
    with ServerProcess(["--max-output", str(8 * MIB)]) as srv:
        assert srv.pid is not None
        ping(srv.address)
        time.sleep(0.3)
        before = rss_mib(srv.pid)
        socks = ATTACKS[name](srv.address)
        time.sleep(1.0)
        ping(srv.address)
        during = rss_mib(srv.pid)
        for s in socks:
            s.close()
        time.sleep(0.5)
        for _ in range(20):  # later traffic, as in the issue
            ping(srv.address)
        after = rss_mib(srv.pid)
        for s in KEEP:
            s.close()
        KEEP.clear()
    return before, during, after


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(ATTACKS))
    args = ap.parse_args()
    print(f"{'attack':16} {'before':>8} {'during':>8} {'after':>8}  (RSS MiB)")
    for name in args.only or ATTACKS:
        before, during, after = measure(name)
        print(f"{name:16} {before:8.1f} {during:8.1f} {after:8.1f}", flush=True)


if __name__ == "__main__":
    main()
