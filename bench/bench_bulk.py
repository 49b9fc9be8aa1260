"""PING latency during a big DUMP and a big one-frame LOAD (issue 17 item 1).

Starts ``periodic_fast.server.app`` (default slices) over a SQLite store of
``--jobs`` jobs, then: a DUMP while another connection PINGs (one at a time,
2 ms pauses), a LOAD of ``--jobs`` new jobs in one frame the same way, and a
SIGTERM sent during a second such LOAD (seconds to exit).  Prints one JSON
line with the medians and maxima and the load average.

    PYTHONHASHSEED=0 .venv/bin/python bench/bench_bulk.py --jobs 1000000 \
        [--root CHECKOUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import sys
from periodic_fast.server.app import Server, run
srv = Server([f"tcp://127.0.0.1:{sys.argv[2]}"], store=sys.argv[1])
sys.exit(run(srv))
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fill(path: Path, n: int) -> None:
    from periodic_fast.job import Job, JobState
    from periodic_fast.store.sqlite import SqliteStore

    store = SqliteStore(path)
    try:
        for i in range(n):
            store.save_job(
                Job(b"big", b"%08d" % i, b"w" * 20, 2**33 + i), JobState.PENDING
            )
    finally:
        store.close()


def _start(root: str, db: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _port()
    env = {**os.environ, "PYTHONPATH": root}
    cmd = [sys.executable, "-c", _CHILD, str(db), str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=root)  # -c puts the cwd first
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.05)


def _stats(xs: list[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in xs]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2) if ms else None,
        "max_ms": round(max(ms), 2) if ms else None,
    }


async def _pinging(b: Any, task: asyncio.Future[Any], lat: list[float]) -> None:
    """PING on the connected client ``b`` until ``task`` is done."""
    while not task.done():
        t = time.perf_counter()
        await b.ping()
        lat.append(time.perf_counter() - t)
        await asyncio.sleep(0.002)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--root", default=str(ROOT))
    args = p.parse_args(argv)
    sys.path.insert(0, args.root)
    from periodic_fast.client import Client
    from periodic_fast.codec import encode_job_list
    from periodic_fast.constants import Command
    from periodic_fast.job import Job

    tmp = Path(tempfile.mkdtemp(prefix="bigbulk-"))
    db = tmp / "jobs.db"
    _fill(db, args.jobs)
    new = [Job(b"new", b"%08d" % i, b"x" * 20, 2**33 + i) for i in range(args.jobs)]
    frame = encode_job_list(new)
    out: dict[str, Any] = {"jobs": args.jobs}
    proc, port = _start(args.root, db)

    async def go() -> None:
        addr = f"tcp://127.0.0.1:{port}"
        # both connected first: a turn that holds the loop shows as a PING
        async with Client(addr, max_frame=1 << 30) as a, Client(addr) as b:
            lat: list[float] = []
            t = time.perf_counter()
            dump = asyncio.ensure_future(a.dump_raw(timeout=600))
            await _pinging(b, dump, lat)
            out["dump_s"] = round(time.perf_counter() - t, 3)
            out["dump_ping"] = _stats(lat)
            lat = []
            t = time.perf_counter()
            load = asyncio.ensure_future(a._request(Command.LOAD, frame, 600))
            await _pinging(b, load, lat)
            out["load_s"] = round(time.perf_counter() - t, 3)
            out["load_ping"] = _stats(lat)
            assert load.result().command == Command.SUCCESS

    try:
        asyncio.run(go())
    finally:
        proc.kill()
        proc.wait()
    proc, port = _start(args.root, db)

    async def term() -> None:
        async with Client(f"tcp://127.0.0.1:{port}", max_frame=1 << 30) as a:
            again = [j._replace(func=b"again") for j in new]
            load = asyncio.ensure_future(
                a._request(Command.LOAD, encode_job_list(again), 600)
            )
            await asyncio.sleep(1.0)
            out["load_done_at_sigterm"] = load.done()  # False: still running
            t = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            await asyncio.get_running_loop().run_in_executor(None, proc.wait)
            out["sigterm_exit_s"] = round(time.perf_counter() - t, 3)
            load.cancel()

    try:
        asyncio.run(term())
    except Exception as exc:  # the connection closes under the LOAD
        out.setdefault("sigterm_note", repr(exc))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    out["load"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
