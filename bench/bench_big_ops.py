"""Big operations on a real server (issue 17, "Must show").

``restart``
    A SQLite store pre-filled with ``--restart-jobs`` future jobs (10 funcs);
    the server is started on it: seconds from exec to the first PONG, peak
    RSS (``VmHWM``) and the RSS once serving (after a STATUS and a short
    idle pause), and their ratio.
``inproc``
    In-process start-up on the ``--restart-db`` file (filled if missing):
    CPU seconds of ``Scheduler(SqliteStore(path))`` in a fresh interpreter
    running the code of ``--root``, then STATUS (median of 7 calls, ms);
    ``--twin python`` runs the pure-Python twins.
``status``
    STATUS over ``--status-jobs`` future jobs in 10 funcs
    (``Scheduler(MemoryStore)``, in-process, the code of ``--root``): median
    of 7 calls in the steady state and of 7 calls each after dispatching 100
    jobs (ms); ``--twin`` as above.
``drop``
    A SQLite store with ``--drop-jobs`` jobs of one func; while DROP_FUNC of
    that func runs (until the ``periodic_jobs_reaping`` gauge is 0; a server
    without the gauge: until the DROP reply), one connection PINGs and
    another SUBMITs, one request at a time: latency of each (median, max),
    of the DROP reply, and the whole drop.

Every figure comes with the load average (the machine is shared).  The
server runs the code of ``--root`` (default: this checkout), so a baseline
checkout can be measured with the same script::

    PYTHONHASHSEED=0 .venv/bin/python bench/bench_big_ops.py --scenarios restart \\
        --restart-jobs 10000000
    PYTHONHASHSEED=0 .venv/bin/python bench/bench_big_ops.py --scenarios drop \\
        --drop-jobs 1000000 [--root /path/to/baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from periodic_fast.client import Client
from periodic_fast.codec import Parser, encode_registration, encode_request
from periodic_fast.constants import Command
from periodic_fast.job import Job, JobState
from periodic_fast.store import open_store

ROOT = Path(__file__).resolve().parent.parent


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    """user + sys CPU seconds of a process (the machine is shared: wall time
    depends on the load, this much less)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fill(path: Path, n: int, funcs: int) -> float:
    """Write ``n`` future jobs over ``funcs`` funcs; seconds taken."""
    t0 = time.perf_counter()
    store = open_store(f"file://{path}", durability="relaxed")
    now = int(time.time())
    try:
        for i in range(n):
            job = Job(b"f%d" % (i % funcs), b"job-%09d" % i, b"w", now + 10**6 + i)
            store.save_job(job, JobState.PENDING)
            if i % 200_000 == 199_999:
                store.flush()
        store.flush()
    finally:
        store.close()
    return time.perf_counter() - t0


def _ping_once(port: int) -> bool:
    """Register, PING, wait for PONG (a fresh connection); False if refused."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=600) as s:
            s.sendall(encode_registration(1) + encode_request(1, Command.PING))
            parser = Parser(requests=False, registration=True)
            while True:
                data = s.recv(4096)
                if not data:
                    return False
                for p in parser.feed(data):
                    if p.command == Command.PONG:
                        return True
    except OSError:
        return False


def start(path: Path, root: Path) -> tuple[subprocess.Popen[bytes], int, float]:
    """Start periodicd on ``path``; return it, its port and the seconds from
    exec to the first PONG."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "periodic_fast", "-d", "-H"]
    argv += [f"tcp://127.0.0.1:{port}", "-p", f"file://{path}", "--log", "warning"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, cwd=root)
    while not _ping_once(port):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        time.sleep(0.01)
    return proc, port, time.perf_counter() - t0


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def restart(tmp: Path, n: int, root: Path, db: str = "") -> dict[str, Any]:
    path = Path(db) if db else tmp / "restart.db"
    filled = 0.0 if db and path.exists() else fill(path, n, 10)
    proc, port, first_pong = start(path, root)
    try:
        peak_at_pong = _status_kib(proc.pid, "VmHWM")
        cpu_at_pong = _cpu_s(proc.pid)

        async def status() -> int:
            async with Client(f"tcp://127.0.0.1:{port}", timeout=600) as c:
                return sum(s.jobs for s in await c.status_list())

        jobs = asyncio.run(status())
        time.sleep(3)  # idle: the steady state
        steady = _status_kib(proc.pid, "VmRSS")
        peak = _status_kib(proc.pid, "VmHWM")
    finally:
        stop(proc)
    return {
        "jobs": jobs,
        "fill_s": round(filled, 1),
        "first_pong_s": round(first_pong, 2),
        "cpu_to_first_pong_s": round(cpu_at_pong, 2),
        "peak_mib": round(peak / 1024),
        "peak_at_first_pong_mib": round(peak_at_pong / 1024),
        "steady_mib": round(steady / 1024),
        "peak_over_steady": round(peak / steady, 3),
        "load": _load(),
    }


_INPROC = """
import gc, json, statistics, sys, time
gc.disable()
from periodic_fast.rec import IMPLEMENTATION
from periodic_fast.scheduler import Scheduler
from periodic_fast.store.sqlite import SqliteStore
t = time.process_time()
s = Scheduler(SqliteStore(sys.argv[1]), time.time())
load = time.process_time() - t
xs = []
for _ in range(7):
    t = time.perf_counter()
    n = sum(st.jobs for st in s.status(time.time()))
    xs.append(time.perf_counter() - t)
print(json.dumps({"twin": IMPLEMENTATION, "jobs": n, "load_cpu_s": round(load, 2),
    "status_ms": round(statistics.median(xs) * 1000, 3)}))
"""

_STATUS = """
import gc, json, statistics, sys, time
gc.disable()
from periodic_fast.job import Job
from periodic_fast.rec import IMPLEMENTATION
from periodic_fast.scheduler import Scheduler
from periodic_fast.codec import encode_payload
from periodic_fast.constants import Command as C
from periodic_fast.store.memory import MemoryStore
n, now = int(sys.argv[1]), 1_700_000_000
s = Scheduler(MemoryStore(), now, config={"assign-wait": 0})
for i in range(n):
    s._submit(Job(b"f%d" % (i % 10), b"j%09d" % i, b"", now + 10 + i // 10))
def med():
    xs = []
    for _ in range(7):
        t = time.perf_counter()
        s.status(now)
        xs.append(time.perf_counter() - t)
    return round(statistics.median(xs) * 1000, 3)
steady = med()
sent = []
s.connect(1, 2, None, sent.append, lambda: None, now)
s.handle(1, 1, C.CAN_DO, encode_payload(C.CAN_DO, b"f0"), now)
for m in range(100):
    s.handle(1, 100 + m, C.GRAB_JOB, b"", now)
s.tick(now + 10 + 100)  # 100 of f0's jobs due and dispatched
print(json.dumps({"twin": IMPLEMENTATION, "jobs": n, "steady_ms": steady,
    "after_100_dispatched_ms": med(), "frames_sent": len(sent)}))
"""


def inproc(code: str, arg: str, root: Path, twin: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}
    if twin == "python":
        env["PERIODIC_FAST_NO_EXTENSIONS"] = "1"
    out = subprocess.run(
        [sys.executable, "-c", code, arg],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {**json.loads(out.splitlines()[-1]), "load": _load()}


async def _reaping(port: int) -> int | None:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    data = await r.read()
    w.close()
    for line in data.split(b"\n"):
        if line.startswith(b"periodic_jobs_reaping "):
            return int(float(line.split()[1]))
    return None


def _ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median_ms": round(statistics.median(values) * 1000, 2),
        "max_ms": round(max(values) * 1000, 2),
    }


def drop(tmp: Path, n: int, root: Path) -> dict[str, Any]:
    path = tmp / "drop.db"
    fill(path, n, 1)
    proc, port, _ = start(path, root)
    addr = f"tcp://127.0.0.1:{port}"

    async def run() -> dict[str, Any]:
        async with (
            Client(addr, timeout=600) as a,
            Client(addr, timeout=600) as b,
            Client(addr, timeout=600) as c,
        ):
            assert await b.ping()
            pings: list[float] = []
            submits: list[float] = []
            done = asyncio.Event()

            async def pinger() -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    await b.ping()
                    pings.append(time.perf_counter() - t)
                    await asyncio.sleep(0.002)

            async def submitter() -> None:
                i = 0
                while not done.is_set():
                    t = time.perf_counter()
                    await c.submit_job(b"other", b"s%d" % i)
                    submits.append(time.perf_counter() - t)
                    i += 1
                    await asyncio.sleep(0.002)

            tasks = [asyncio.create_task(pinger()), asyncio.create_task(submitter())]
            await asyncio.sleep(1.0)  # the same requests without a drop
            idle = {"ping": _ms(pings), "submit_ack": _ms(submits)}
            pings.clear()
            submits.clear()
            t0 = time.perf_counter()
            assert await a.drop_func(b"f0")
            reply = time.perf_counter() - t0
            while (await _reaping(port)) or 0:
                await asyncio.sleep(0.05)
            total = time.perf_counter() - t0
            done.set()
            await asyncio.gather(*tasks)
            return {
                "jobs": n,
                "drop_reply_s": round(reply, 3),
                "drop_total_s": round(total, 3),
                "ping": _ms(pings),
                "submit_ack": _ms(submits),
                "without_drop": idle,
                "load": _load(),
            }

    try:
        return asyncio.run(run())
    finally:
        stop(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenarios", default="restart,drop")
    p.add_argument("--restart-jobs", type=int, default=1_000_000)
    p.add_argument("--drop-jobs", type=int, default=1_000_000)
    p.add_argument("--status-jobs", type=int, default=1_000_000)
    p.add_argument("--twin", choices=("cython", "python"), default="cython")
    p.add_argument("--root", default=str(ROOT), help="checkout the server runs")
    p.add_argument("--tmp", default="", help="directory for the database files")
    p.add_argument(
        "--restart-db", default="", help="restart: this file (filled if missing, kept)"
    )
    p.add_argument("--json", default="", help="write the report here")
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="bigops-", dir=args.tmp or None))
    report: dict[str, Any] = {"root": str(root)}
    try:
        for name in args.scenarios.split(","):
            if name == "restart":
                report["restart"] = restart(
                    tmp, args.restart_jobs, root, args.restart_db
                )
            elif name == "inproc":
                path = Path(args.restart_db or tmp / "inproc.db")
                if not path.exists():
                    fill(path, args.restart_jobs, 10)
                report[name] = inproc(_INPROC, str(path), root, args.twin)
            elif name == "status":
                arg = str(args.status_jobs)
                report[name] = inproc(_STATUS, arg, root, args.twin)
            elif name == "drop":
                report["drop"] = drop(tmp, args.drop_jobs, root)
            else:
                raise SystemExit(f"unknown scenario {name!r}")
            print(name, json.dumps(report[name]), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
