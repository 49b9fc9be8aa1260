"""Soak: mixed hostile traffic against a server for N minutes (issue 16).

Starts ``periodicd`` in a subprocess (loopback TCP, memory store, an auth
file, otherwise default limits) and, from threads of this process, runs at
once until the time is up:

* partial frames: a registered connection sends 6 MiB of an 8 MiB frame,
  then closes;
* big registrations: 6 MiB of an 8 MiB registration frame, then close;
* pipelined DUMPs not read: 40 DUMPs of 300 1-KB jobs on a connection with a
  tiny receive buffer, held 2 s, closed;
* fan-out: 100 RECV_DATA waiters on a connection that does not read, one
  WORK_DATA of 64 KiB to them, both closed;
* HTTP partial bodies: 600 KB of a 1 MB POST body, then close;
* slowloris HTTP: 16 connections trickling one header line a second;
* refused names: registrations with an unknown 64 KiB name and SUBMIT_JOBs
  of a func name with ``,`` and a newline, in a loop;
* normal traffic: a Client submitting jobs that a Worker runs.

Every second it samples the server's RSS (``/proc/PID/status``) and the
round trip of a PING on a connection of its own, and at the end prints the
maximum RSS, the PING p50/p99/max and PASS or FAIL against the bounds
(``--rss-bound`` MiB, ``--p99-bound`` ms).  The exit status is 0 on PASS.

    python bench/soak.py --minutes 30        # docs/security.md: the recorded run
    python bench/soak.py --seconds 10        # CI smoke (tests/test_soak_smoke.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.hostile_memory import (  # noqa: E402
    _HEADER,
    MIB,
    connect,
    request,
    rss_mib,
)
from periodic_fast.client import Client  # noqa: E402
from periodic_fast.codec import encode_registration  # noqa: E402
from periodic_fast.constants import ClientType, Command  # noqa: E402
from periodic_fast.testing import ServerProcess  # noqa: E402
from periodic_fast.worker import Worker, WorkerJob  # noqa: E402

AUTH = b"admin soak soak-tok *\nworker w w-tok work\n"
ADMIN = (b"soak", b"soak-tok")
HTTP_HEAD = b"Host: 127.0.0.1\r\nAuthorization: Bearer soak-tok\r\n"


def registered(address: str, rcvbuf: int = 0, ctype: int = 3) -> socket.socket:
    """A connection registered as the admin identity (type 3) or worker."""
    s = connect(address, rcvbuf)
    ident = ADMIN if ctype == ClientType.AUTH_CLIENT else (b"w", b"w-tok")
    s.sendall(encode_registration(ctype, *ident))
    got = b""
    while len(got) < 17:
        chunk = s.recv(17 - len(got))
        if not chunk:
            raise ConnectionError("closed at registration")
        got += chunk
    return s


def fill(address: str) -> None:
    """300 1-KB jobs of a func nobody works on: what the DUMPs carry."""
    s = registered(address)
    s.sendall(
        b"".join(
            request(s, i + 1, Command.SUBMIT_JOB, (b"idle", b"%d" % i, b"a" * 1024, 0))
            for i in range(300)
        )
    )
    got = 0
    while got < 300 * 17:
        got += len(s.recv(65536))
    s.close()


# -- attacks: each is one round; the runner repeats it until the end ------------


def partial_frame(address: str) -> None:
    s = registered(address)
    s.sendall(_HEADER.pack(b"\x00REQ", 8 * MIB, 0) + b"x" * (6 * MIB))
    s.close()


def big_registration(address: str) -> None:
    s = connect(address)
    with contextlib.suppress(OSError):  # refused from the header
        s.sendall(_HEADER.pack(b"\x00REQ", 8 * MIB, 0) + b"x" * (6 * MIB))
    s.close()


def dump_pipeline(address: str) -> None:
    s = registered(address, rcvbuf=4096)
    s.sendall(b"".join(request(s, i + 1, Command.DUMP) for i in range(40)))
    time.sleep(2.0)
    s.close()


def fanout(address: str) -> None:
    worker = registered(address, ctype=ClientType.AUTH_WORKER)
    worker.sendall(request(worker, 1, Command.CAN_DO, b"work"))
    client = registered(address, rcvbuf=4096)
    client.sendall(
        b"".join(
            request(client, i + 1, Command.RECV_DATA, (b"work", b"fan", b"", 0, 0, 0))
            for i in range(100)
        )
    )
    time.sleep(0.3)
    worker.sendall(request(worker, 2, Command.WORK_DATA, b"work", b"fan", b"d" * 65536))
    time.sleep(0.5)
    worker.close()
    client.close()


def http_partial(address: str) -> None:
    s = connect(address)
    s.sendall(
        b"POST /work HTTP/1.1\r\n" + HTTP_HEAD + b"Content-Length: 1000000\r\n\r\n"
        b"name=x&workload=" + b"a" * 600_000
    )
    s.close()


def refused_names(address: str) -> None:
    s = connect(address)
    s.sendall(encode_registration(ClientType.AUTH_CLIENT, b"n" * 65536, b"bad"))
    with contextlib.suppress(OSError):
        s.recv(64)
    s.close()
    s = registered(address)
    bad = b"bad,func\n" + b"x" * 200  # (a func name is at most 255 bytes)
    s.sendall(
        b"".join(
            request(s, i + 1, Command.SUBMIT_JOB, (bad, b"j", b"", 0, 0, 0))
            for i in range(20)
        )
    )
    time.sleep(0.1)
    s.close()


ROUNDS: dict[str, tuple[Callable[[str], None], float]] = {
    # name: (one round, pause between rounds in seconds)
    "partial-frame": (partial_frame, 0.5),
    "big-registration": (big_registration, 0.5),
    "dump-pipeline": (dump_pipeline, 0.5),
    "fanout": (fanout, 0.5),
    "http-partial": (http_partial, 0.2),
    "refused-names": (refused_names, 0.1),
}


class Soak:
    """The attack threads, the normal traffic, the sampler."""

    def __init__(self, address: str, pid: int, seconds: float) -> None:
        self.address = address
        self.pid = pid
        self.deadline = time.monotonic() + seconds
        self.rounds: dict[str, int] = dict.fromkeys([*ROUNDS, "slowloris"], 0)
        self.jobs_done = 0
        self.rss: list[float] = []
        self.pings: list[float] = []  # ms

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def attack(self, name: str) -> None:
        body, pause = ROUNDS[name]
        while self.running():
            with contextlib.suppress(OSError):
                body(self.address)
                self.rounds[name] += 1
            time.sleep(pause)

    def slowloris(self) -> None:
        conns: list[socket.socket] = []
        while self.running():
            while len(conns) < 16:
                with contextlib.suppress(OSError):
                    s = connect(self.address)
                    s.sendall(b"GET / HTTP/1.1\r\n")
                    conns.append(s)
                    self.rounds["slowloris"] += 1
            for s in list(conns):
                try:
                    s.sendall(b"X-Slow: 1\r\n")
                except OSError:  # the read timeout closed it (408)
                    conns.remove(s)
                    s.close()
            time.sleep(1.0)
        for s in conns:
            s.close()

    def normal(self) -> None:
        asyncio.run(self._normal())

    async def _normal(self) -> None:
        worker = Worker(self.address, name="w", token="w-tok")

        @worker.func("work")
        async def work(job: WorkerJob) -> bytes:
            self.jobs_done += 1
            return job.workload

        task = asyncio.create_task(worker.work(size=4))
        async with Client(self.address, name="soak", token="soak-tok") as client:
            n = 0
            while self.running():
                n += 1
                with contextlib.suppress(Exception):
                    await client.submit_job("work", f"job-{n % 1000}", b"w" * 100)
                await asyncio.sleep(0.01)
        await worker.shutdown()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10)

    def sample(self) -> None:
        s = registered(self.address)
        s.settimeout(5)
        msgid = 0
        while self.running():
            msgid += 1
            start = time.perf_counter()
            try:
                s.sendall(request(s, msgid, Command.PING))
                got = b""
                while len(got) < 17:
                    chunk = s.recv(17 - len(got))
                    if not chunk:
                        raise ConnectionError("closed")
                    got += chunk
                self.pings.append((time.perf_counter() - start) * 1000)
            except OSError:
                self.pings.append(5000.0)
                s.close()
                s = registered(self.address)
                s.settimeout(5)
            self.rss.append(rss_mib(self.pid))
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - start)))
        s.close()

    def run(self) -> None:
        threads = [
            threading.Thread(target=self.attack, args=(n,), daemon=True) for n in ROUNDS
        ]
        threads += [
            threading.Thread(target=f, daemon=True)
            for f in (self.slowloris, self.normal)
        ]
        for t in threads:
            t.start()
        self.sample()
        for t in threads:
            t.join(30)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=0.0)
    ap.add_argument("--seconds", type=float, default=0.0)
    ap.add_argument("--rss-bound", type=float, default=128.0, help="MiB")
    ap.add_argument("--p99-bound", type=float, default=50.0, help="ms")
    args = ap.parse_args(argv)
    seconds = args.minutes * 60 + args.seconds or 60.0
    with tempfile.TemporaryDirectory() as tmp:
        auth = Path(tmp) / "auth"
        auth.write_bytes(AUTH)
        os.chmod(auth, 0o600)
        with ServerProcess(["--auth-file", str(auth)]) as srv:
            assert srv.pid is not None
            time.sleep(0.5)
            fill(srv.address)
            start_rss = rss_mib(srv.pid)
            soak = Soak(srv.address, srv.pid, seconds)
            soak.run()
            end_rss = rss_mib(srv.pid)
            log_bytes = len(srv.output())
    peak = max(soak.rss)
    p50, p99 = statistics.median(soak.pings), pct(soak.pings, 0.99)
    ok = peak <= args.rss_bound and p99 <= args.p99_bound and soak.jobs_done > 0
    print(f"soak: {seconds:.0f} s, {len(soak.pings)} samples")
    print("rounds: " + ", ".join(f"{k} {v}" for k, v in soak.rounds.items()))
    print(f"normal jobs done: {soak.jobs_done}; server log {log_bytes} bytes")
    print(
        f"server RSS MiB: start {start_rss:.1f}, max {peak:.1f}, end {end_rss:.1f} "
        f"(bound {args.rss_bound:.0f})"
    )
    print(
        f"PING ms: p50 {p50:.2f}, p99 {p99:.2f}, max {max(soak.pings):.2f} "
        f"(p99 bound {args.p99_bound:.0f})"
    )
    # RSS and PING by quarter: a leak shows as a rising RSS, a stall as one
    # quarter's p99
    q = max(1, len(soak.rss) // 4)
    for i in range(0, len(soak.rss), q):
        rss, pings = soak.rss[i : i + q], soak.pings[i : i + q]
        print(
            f"  samples {i}-{i + len(rss) - 1}: RSS max {max(rss):.1f} MiB, "
            f"PING p99 {pct(pings, 0.99):.2f} ms"
        )
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
