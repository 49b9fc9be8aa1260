"""Issue 17 item 2, with a real server process: a big DROP_FUNC holds no one up.

A server over a SQLite store of 200,000 jobs drops their func; its records
are freed a slice per loop turn (a small slice here, so the reaping lasts
long enough to be seen).  Meanwhile PING and SUBMIT on other connections are
answered while the ``periodic_jobs_reaping`` gauge still counts records
(ordering, not wall time), and SIGTERM stops the server mid-reap.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from periodic_fast.client import Client
from periodic_fast.job import Job, JobState
from periodic_fast.store.sqlite import SqliteStore

JOBS = 200_000
SLICE = 100  # ~2,000 loop turns of reaping: seconds, not milliseconds

_CHILD = """
import sys
from periodic_fast.sched_reap import Reaper
from periodic_fast.server.app import Server, run
Reaper.__init__.__defaults__ = (int(sys.argv[3]),)  # the test's small slice
srv = Server([f"tcp://127.0.0.1:{sys.argv[2]}"], store=sys.argv[1])
sys.exit(run(srv))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _reaping(port: int) -> int:
    """The ``periodic_jobs_reaping`` gauge from GET /metrics."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    for line in data.split(b"\n"):
        if line.startswith(b"periodic_jobs_reaping "):
            return int(float(line.split()[1]))
    raise AssertionError("no periodic_jobs_reaping in /metrics")


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bigdrop") / "jobs.db"
    store = SqliteStore(path)
    try:
        for i in range(JOBS):
            store.save_job(Job(b"big", b"%08d" % i, b"w", 2**33 + i), JobState.PENDING)
    finally:
        store.close()
    return path


def _start(path: Path, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    db = tmp / "copy.db"
    db.write_bytes(path.read_bytes())
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(db), str(port), str(SLICE)],
        env=env,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    if proc.stderr:
        proc.stderr.close()


def test_ping_and_submit_are_answered_during_a_big_drop(
    filled: Path, tmp_path: Path
) -> None:
    proc, port = _start(filled, tmp_path)

    async def go() -> tuple[int, int, int]:
        addr = f"tcp://127.0.0.1:{port}"
        async with Client(addr) as a, Client(addr) as b:
            assert (await a.status())["big"].jobs == JOBS
            assert await a.drop_func(b"big")
            assert "big" not in await a.status()  # gone at once
            assert await b.ping()
            after_ping = _reaping(port)
            assert await b.submit_job(b"other", b"x")
            after_submit = _reaping(port)
            pings = 0
            while _reaping(port):
                assert await b.ping()
                pings += 1
            return after_ping, after_submit, pings

    try:
        after_ping, after_submit, pings = asyncio.run(go())
        # answered while the dropped func's records were still being freed
        assert 0 < after_ping <= JOBS
        assert 0 < after_submit <= after_ping
        assert pings > 0
    finally:
        _stop(proc)


def test_sigterm_stops_the_server_during_a_big_drop(
    filled: Path, tmp_path: Path
) -> None:
    proc, port = _start(filled, tmp_path)
    try:

        async def drop() -> None:
            async with Client(f"tcp://127.0.0.1:{port}") as a:
                assert await a.drop_func(b"big")

        asyncio.run(drop())
        assert _reaping(port) > 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0  # within 5 s, without waiting for the reap
    finally:
        _stop(proc)
