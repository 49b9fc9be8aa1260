"""End-to-end load generator for a Periodic server on loopback.

Three scenarios, each run ``--runs`` times after one warm-up run, reported as
the median (and min/max) of the runs:

``submit``
    ``--submitters`` client connections (one process each) pipeline
    ``--jobs`` SUBMIT_JOB requests in total (at most ``--pipeline`` unanswered
    per connection) for a func nobody works on.  Rate = SUCCESS replies per
    second, from the first send to the last reply.  The func is dropped after
    each run.
``lifecycle``
    ``--workers`` worker connections (spread over ``--worker-procs``
    processes), each holding ``--slots`` grab slots, answer every JOB_ASSIGN
    with JOB_ASSIGNED + WORK_DONE + GRAB_JOB in one write.  The submitters
    pipeline ``--jobs`` due jobs.  Rate = jobs / (last WORK_DONE reply - first
    submit): full life cycles (submit, assign, confirm, done) per second.
``lateness``
    The same workers; the submitters send ``--late-jobs`` jobs whose
    ``sched_at`` is spread over ``--late-spread`` whole seconds starting at
    least ``--late-lead`` seconds ahead.  Lateness = time the worker process
    receives JOB_ASSIGN - ``sched_at`` (ms); p50 / p99 / max.

The server is started as a subprocess (``python -m periodic_fast -d -H
tcp://127.0.0.1:PORT -p STORE``) unless ``--address`` points at a running one.
Every knob is a flag and an environment variable ``PF_E2E_<FLAG>`` (flags
win), e.g. ``PF_E2E_JOBS=200000``.  Load generator processes use uvloop when
it is installed.  Only loopback / unix addresses make sense: this floods the
server.

Example::

    .venv/bin/python bench/e2e.py --runs 5 --json e2e.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from periodic_fast.codec import (
    Parser,
    encode_job,
    encode_registration,
    encode_request,
    encode_request_into,
)
from periodic_fast.constants import ClientType, Command
from periodic_fast.job import Job

SUBMIT_JOB = int(Command.SUBMIT_JOB)
SUCCESS = int(Command.SUCCESS)
JOB_ASSIGN = int(Command.JOB_ASSIGN)
GRAB_JOB = int(Command.GRAB_JOB)
JOB_ASSIGNED = int(Command.JOB_ASSIGNED)
WORK_DONE = int(Command.WORK_DONE)
CAN_DO = int(Command.CAN_DO)
CTRL_BASE = 0x10000000

# -- knobs ---------------------------------------------------------------------

KNOBS: list[tuple[str, type, Any, str]] = [
    ("address", str, "", "server address; empty: start a server subprocess"),
    ("store", str, ":memory:", "store URI of the started server (-p)"),
    ("server_args", str, "", "extra arguments for the started server"),
    ("scenarios", str, "submit,lifecycle,lateness", "comma-separated scenarios"),
    ("jobs", int, 200_000, "jobs per submit / lifecycle run"),
    ("submitters", int, 2, "client connections (one process each)"),
    ("workers", int, 4, "worker connections"),
    ("worker_procs", int, 1, "processes hosting the worker connections"),
    ("slots", int, 32, "grab slots per worker connection"),
    ("pipeline", int, 8192, "unanswered requests allowed per connection"),
    ("batch", int, 512, "requests per write"),
    ("duration", float, 60.0, "upper bound of one run (s); a run over it fails"),
    ("runs", int, 3, "measured runs per scenario (median reported)"),
    ("warmup_jobs", int, 20_000, "jobs of the unmeasured warm-up run"),
    ("late_jobs", int, 5000, "jobs of one lateness run"),
    ("late_spread", int, 5, "whole seconds the lateness jobs are spread over"),
    ("late_lead", float, 2.0, "minimum lead of the first sched_at (s)"),
    ("loop", str, "uvloop", "load generator loop: uvloop or asyncio"),
    ("json", str, "", "write the report as JSON to this file"),
]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for name, typ, default, helptext in KNOBS:
        env = "PF_E2E_" + name.upper()
        raw = os.environ.get(env)
        value = typ(raw) if raw not in (None, "") else default
        p.add_argument(
            "--" + name.replace("_", "-"),
            type=typ,
            default=value,
            help=f"{helptext} (env {env})",
        )
    return p.parse_args(argv)


# -- wire helpers (load generator side) -----------------------------------------


def new_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            return asyncio.new_event_loop()
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


async def open_conn(address: str, factory: Callable[[], asyncio.Protocol]) -> Any:
    loop = asyncio.get_running_loop()
    if address.startswith("tcp://"):
        host, _, port = address[6:].rpartition(":")
        _, proto = await loop.create_connection(factory, host.strip("[]"), int(port))
    else:
        path = address.partition("://")[2] if "://" in address else address
        _, proto = await loop.create_unix_connection(factory, path)
    return proto


class Conn(asyncio.Protocol):
    client_type = int(ClientType.CLIENT)

    def __init__(self) -> None:
        self.parser = Parser(requests=False, registration=True)
        self.transport: Any = None
        self.faults: list[str] = []
        self.out = bytearray()
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.out += encode_registration(self.client_type)
        self.on_connected()
        transport.write(bytes(self.out))
        self.out.clear()

    def on_connected(self) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.parser.feed(data)
        except Exception as exc:
            self.faults.append(f"bad frame: {exc!r}")
            self.transport.abort()
            return
        now = time.time()
        for p in packets:
            if p.msgid is not None:
                self.on_packet(p.msgid, p.command, p.payload, now)
        if self.out:
            self.transport.write(bytes(self.out))
            self.out.clear()

    def on_packet(self, msgid: int, command: int, payload: bytes, now: float) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class SubmitConn(Conn):
    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window
        self.outstanding = 0
        self.acked = 0
        self.last_ack = 0.0
        self.room = asyncio.Event()
        self.all_acked = asyncio.Event()
        self.total = -1

    def on_packet(self, msgid: int, command: int, payload: bytes, now: float) -> None:
        if command != SUCCESS or payload:
            self.faults.append(f"submit reply {command} {payload[:40]!r}")
        else:
            self.acked += 1
        self.outstanding -= 1
        self.last_ack = now
        if self.outstanding <= self.window // 2:
            self.room.set()
        if self.acked == self.total:
            self.all_acked.set()

    async def send_all(self, chunks: list[tuple[bytes, int]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for frames, n in chunks:
            while self.outstanding + n > self.window:
                self.room.clear()
                await asyncio.wait_for(self.room.wait(), deadline - time.monotonic())
            self.outstanding += n
            self.transport.write(frames)
        await asyncio.wait_for(self.all_acked.wait(), deadline - time.monotonic())


class WorkerConn(Conn):
    client_type = int(ClientType.WORKER)

    def __init__(self, func: bytes, slots: int, late: bool) -> None:
        super().__init__()
        self.func = func
        self.slots = slots
        self.ctrl = CTRL_BASE
        self.done = 0
        self.assigned = 0
        self.last_done = 0.0
        self.late = late
        self.lateness: list[float] = []

    def on_connected(self) -> None:
        self.ctrl += 1
        payload = bytes((len(self.func),)) + self.func
        encode_request_into(self.out, self.ctrl, CAN_DO, payload)
        for m in range(1, self.slots + 1):
            encode_request_into(self.out, m, GRAB_JOB)

    def on_packet(self, msgid: int, command: int, payload: bytes, now: float) -> None:
        if command == JOB_ASSIGN:
            self.assigned += 1
            flen = payload[0]
            nlen = payload[1 + flen]
            hlen = 2 + flen + nlen
            if self.late:
                wl = int.from_bytes(payload[hlen : hlen + 4], "big")
                at = hlen + 4 + wl
                sched_at = int.from_bytes(payload[at : at + 8], "big", signed=True)
                self.lateness.append(now - sched_at)
            out = self.out
            self.ctrl += 1
            encode_request_into(out, msgid, JOB_ASSIGNED)
            encode_request_into(out, self.ctrl, WORK_DONE, payload[:hlen])
            encode_request_into(out, msgid, GRAB_JOB)
        elif command == SUCCESS and not payload:
            if msgid > CTRL_BASE + 1:  # a WORK_DONE
                self.done += 1
                self.last_done = now
        else:
            self.faults.append(f"worker got {command} {payload[:40]!r}")


# -- load generator processes ------------------------------------------------------


def submitter_proc(
    args: argparse.Namespace,
    address: str,
    func: bytes,
    names: list[bytes],
    sched_ats: list[int] | None,
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """One client connection: pipeline SUBMIT_JOB for ``names``."""
    # pre-encode outside the measured window
    chunks: list[tuple[bytes, int]] = []
    for start in range(0, len(names), args.batch):
        buf = bytearray()
        part = names[start : start + args.batch]
        for i, name in enumerate(part, start):
            at = sched_ats[i] if sched_ats is not None else 0
            msgid = i % CTRL_BASE + 1
            encode_request_into(
                buf, msgid, SUBMIT_JOB, encode_job(Job(func, name, b"", at))
            )
        chunks.append((bytes(buf), len(part)))

    async def main() -> dict[str, Any]:
        conn: SubmitConn = await open_conn(address, lambda: SubmitConn(args.pipeline))
        conn.total = len(names)
        ready.release()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        t0 = time.time()
        try:
            await conn.send_all(chunks, args.duration)
        except asyncio.TimeoutError:
            conn.faults.append(f"timeout: {conn.acked}/{len(names)} acked")
        res = {
            "t0": t0,
            "t1": conn.last_ack,
            "acked": conn.acked,
            "faults": conn.faults[:5],
        }
        conn.transport.close()
        return res

    loop = new_loop(args.loop)
    try:
        results.put(("submitter", loop.run_until_complete(main())))
    finally:
        loop.close()


def worker_proc(
    args: argparse.Namespace,
    address: str,
    func: bytes,
    nconns: int,
    late: bool,
    counter: Any,
    ready: Any,
    stop: Any,
    results: Any,
) -> None:
    """``nconns`` worker connections; count WORK_DONE replies until ``stop``."""

    async def main() -> dict[str, Any]:
        conns: list[WorkerConn] = []
        for _ in range(nconns):
            conns.append(
                await open_conn(address, lambda: WorkerConn(func, args.slots, late))
            )
        await asyncio.sleep(0.2)  # CAN_DO and GRAB_JOB answered
        ready.release()
        while not stop.is_set():
            counter.value = sum(c.done for c in conns)
            await asyncio.sleep(0.005)
        res = {
            "done": sum(c.done for c in conns),
            "assigned": sum(c.assigned for c in conns),
            "last_done": max(c.last_done for c in conns),
            "lateness": [x for c in conns for x in c.lateness],
            "faults": [f for c in conns for f in c.faults][:5],
        }
        for c in conns:
            c.transport.close()
        return res

    loop = new_loop(args.loop)
    try:
        results.put(("worker", loop.run_until_complete(main())))
    finally:
        loop.close()


# -- coordinator ----------------------------------------------------------------------


def control(address: str, command: int, payload: bytes = b"") -> tuple[int, bytes]:
    """One blocking request on a fresh client connection."""
    if address.startswith("tcp://"):
        host, _, port = address[6:].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(30)
        sock.connect(address.partition("://")[2] if "://" in address else address)
    with sock:
        sock.sendall(encode_registration(1) + encode_request(1, command, payload))
        parser = Parser(requests=False, registration=True)
        while True:
            data = sock.recv(1 << 20)
            if not data:
                raise ConnectionError("server closed the control connection")
            for p in parser.feed(data):
                if p.msgid == 1:
                    return p.command, p.payload


def split(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i::n] for i in range(n)]


def run_once(
    args: argparse.Namespace,
    address: str,
    scenario: str,
    tag: str,
    njobs: int,
) -> dict[str, Any]:
    """One run of ``scenario``; returns its measurements."""
    ctx = mp.get_context("fork")
    func = f"e2e-{scenario}-{tag}".encode()
    names = [b"j%08d" % i for i in range(njobs)]
    sched_ats: list[int] | None = None
    if scenario == "lateness":
        base = int(time.time() + args.late_lead) + 1
        sched_ats = [base + i % args.late_spread for i in range(njobs)]
    results = ctx.Queue()
    ready = ctx.Semaphore(0)
    go = ctx.Event()
    stop = ctx.Event()
    procs: list[Any] = []
    counters: list[Any] = []
    with_workers = scenario != "submit"
    if with_workers:
        nprocs = max(1, min(args.worker_procs, args.workers))
        for share in split(list(range(args.workers)), nprocs):
            c = ctx.Value("q", 0, lock=False)
            counters.append(c)
            procs.append(
                ctx.Process(
                    target=worker_proc,
                    args=(
                        args,
                        address,
                        func,
                        len(share),
                        scenario == "lateness",
                        c,
                        ready,
                        stop,
                        results,
                    ),
                )
            )
    nsub = max(1, args.submitters)
    for i in range(nsub):
        part = names[i::nsub]
        ats = sched_ats[i::nsub] if sched_ats is not None else None
        procs.append(
            ctx.Process(
                target=submitter_proc,
                args=(args, address, func, part, ats, ready, go, results),
            )
        )
    for p in procs:
        p.start()
    try:
        for _ in procs:
            if not ready.acquire(timeout=60):
                raise RuntimeError("a load generator process did not get ready")
        t_go = time.time()
        go.set()
        deadline = (
            time.monotonic()
            + args.duration
            + (args.late_lead + args.late_spread + 2 if scenario == "lateness" else 0)
        )
        subs: list[dict[str, Any]] = []
        while len(subs) < nsub:
            kind, res = results.get(timeout=max(1.0, deadline - time.monotonic() + 5))
            assert kind == "submitter"
            subs.append(res)
        timed_out = False
        if with_workers:
            while sum(c.value for c in counters) < njobs:
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.005)
        stop.set()
        works = [results.get(timeout=30)[1] for _ in counters]
    finally:
        stop.set()
        go.set()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
    faults = [f for r in subs + works for f in r["faults"]]
    t0 = min(r["t0"] for r in subs)
    acked = sum(r["acked"] for r in subs)
    out: dict[str, Any] = {
        "scenario": scenario,
        "jobs": njobs,
        "acked": acked,
        "faults": faults[:5],
        "submit_s": max(r["t1"] for r in subs) - t0,
        "go_lag_s": t0 - t_go,
    }
    out["submits_per_s"] = acked / out["submit_s"] if out["submit_s"] > 0 else 0.0
    if with_workers:
        done = sum(r["done"] for r in works)
        t_end = max(r["last_done"] for r in works)
        out["done"] = done
        out["assigned"] = sum(r["assigned"] for r in works)
        out["timed_out"] = timed_out
        out["lifecycle_s"] = t_end - t0
        out["lifecycles_per_s"] = done / out["lifecycle_s"] if t_end > t0 else 0.0
        if scenario == "lateness":
            lat = sorted(x * 1000.0 for r in works for x in r["lateness"])
            out["lateness_ms"] = percentiles(lat)
            out["early"] = sum(1 for x in lat if x < 0)
    if scenario == "submit" or (with_workers and out.get("done", 0) < njobs):
        control(address, int(Command.DROP_FUNC), bytes((len(func),)) + func)
    return out


def percentiles(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {}

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]

    return {"p50": q(0.50), "p99": q(0.99), "max": xs[-1], "min": xs[0], "n": len(xs)}


def machine_facts(server_impl: dict[str, str]) -> dict[str, Any]:
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        from importlib.metadata import version

        uv = version("uvloop")
    except Exception:  # PackageNotFoundError
        uv = "not installed"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.abspath(__file__)),
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "uvloop": uv,
        "commit": commit,
        **server_impl,
    }


def implementations() -> dict[str, str]:
    code = (
        "import periodic_fast.codec as c, periodic_fast.wheel as w;"
        "print(c.IMPLEMENTATION, w.IMPLEMENTATION)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    ).stdout.split()
    return {"codec": out[0] if out else "?", "wheel": out[1] if len(out) > 1 else "?"}


def summarize(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    vals = [r[key] for r in runs]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = None
    address = args.address
    if not address:
        from periodic_fast.testing import ServerProcess

        extra = args.server_args.split() if args.server_args else []
        server = ServerProcess(["-p", args.store, "--log", "warning", *extra])
        server.start()
        address = server.address
    facts = machine_facts(implementations())
    report: dict[str, Any] = {"args": vars(args), "address": address, "machine": facts}
    print(f"# server {address} (pid {server.pid if server else '?'}); {facts}")
    try:
        for scenario in [s for s in args.scenarios.split(",") if s]:
            njobs = args.late_jobs if scenario == "lateness" else args.jobs
            warm = min(args.warmup_jobs, njobs) if scenario != "lateness" else njobs
            w = run_once(args, address, scenario, "warmup", warm)
            print(f"{scenario} warm-up: {fmt(w)}")
            runs = []
            for i in range(args.runs):
                r = run_once(args, address, scenario, str(i), njobs)
                print(f"{scenario} run {i}: {fmt(r)}")
                runs.append(r)
            summary: dict[str, Any] = {"runs": runs}
            summary["submits_per_s"] = summarize(runs, "submits_per_s")
            if scenario != "submit":
                summary["lifecycles_per_s"] = summarize(runs, "lifecycles_per_s")
            if scenario == "lateness":
                for k in ("p50", "p99", "max"):
                    summary[f"lateness_{k}_ms"] = statistics.median(
                        r["lateness_ms"].get(k, float("nan")) for r in runs
                    )
            report[scenario] = summary
            print(
                f"== {scenario}: "
                + json.dumps(
                    {k: v for k, v in summary.items() if k != "runs"}, default=str
                )
            )
    finally:
        if server is not None:
            server.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


def fmt(r: dict[str, Any]) -> str:
    parts = [f"acked {r['acked']}/{r['jobs']}", f"{r['submits_per_s']:,.0f} submits/s"]
    if "lifecycles_per_s" in r:
        parts.append(f"done {r['done']} {r['lifecycles_per_s']:,.0f} lifecycles/s")
    if "lateness_ms" in r:
        lm = r["lateness_ms"]
        fmt_l = "lateness ms p50 {p50:.1f} p99 {p99:.1f} max {max:.1f} min {min:.1f}"
        parts.append(fmt_l.format(**lm) if lm else "no lateness samples")
    if r["faults"]:
        parts.append(f"FAULTS {r['faults']}")
    if r.get("timed_out"):
        parts.append("TIMED OUT")
    return "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
