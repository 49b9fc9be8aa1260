"""Cluster mode (issue 18) on one machine: throughput, lateness, CPU,
failover time and memory with 1, 2 and 3 ``periodicd --cluster`` nodes on
one throwaway PostgreSQL (fsync off: these are CPU figures, not durability
figures).

``lifecycle``
    ``--jobs`` due jobs; one load process holds a client and a worker
    connection (``--slots`` grab slots) per node; each job is submitted to
    the node that owns its partition (a partition-aware client: no
    forwarding hop), and every JOB_ASSIGN is answered with JOB_ASSIGNED +
    WORK_DONE + GRAB_JOB.  Rate = jobs / (last WORK_DONE SUCCESS - first
    submit).  CPU per lifecycle = the nodes' user+system CPU over the run
    (``/proc/<pid>/stat``) / jobs, and the same for PostgreSQL's processes:
    two cores cannot show scaling in wall time, the CPU a lifecycle costs
    each part can.
``lateness``
    ``--jobs`` jobs with ``sched_at`` spread over ``--late-spread`` whole
    seconds at least ``--late-lead`` s ahead; lateness = the load process
    reads JOB_ASSIGN - ``sched_at`` (ms), p50 / p99.
``failover``
    3 nodes (lease ``--lease`` and 5 s); 50 due jobs owned by one node, whose
    workers are connected to the other two only, so they wait; that node is
    killed (``kill -9``) right after they are acknowledged; failover = the
    first JOB_ASSIGN of one of them by a surviving node - the kill.
``memory``
    ``--mem-jobs`` jobs (due in a day) LOADed through one node (split by
    partition to their owners); each node's RSS (``/proc/<pid>/status``)
    before and after, per job it holds.

Medians of ``--runs`` runs.  Example (the figures in docs/benchmarks.md)::

    PYTHONPATH=. .venv/bin/python bench/bench_cluster.py --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import e2e  # noqa: E402  # the raw-frame load generator's connections

from periodic_fast.job import Job  # noqa: E402
from periodic_fast.store.cluster import fair_shares, partition_of  # noqa: E402
from periodic_fast.testing_pg import PostgresCluster  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
_CHILD = "from periodic_fast.cli import periodicd_main; periodicd_main()"
TICK = os.sysconf("SC_CLK_TCK")


# -- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Node:
    """One ``periodicd --cluster`` subprocess."""

    def __init__(self, uri: str, node_id: str, lease: float, log: Path) -> None:
        self.id = node_id
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._log = log.open("wb")
        argv = [sys.executable, "-c", _CHILD, "--cluster", "--node-id", node_id]
        argv += ["--lease-time", str(lease), "-H", self.address, "-p", uri]
        argv += ["--no-http", "--log", "warning"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(argv, env=env, stderr=self._log)  # noqa: S603
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"node {node_id} did not start") from None
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)
        self._log.close()


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of ``pids`` (every thread)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pg_pids(pg: PostgresCluster) -> list[int]:
    """The postmaster and its children (backends, writer, WAL, ...)."""
    master = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    pids = [master]
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == master:
                pids.append(int(d.name))
    return pids


def sql(uri: str, query: str, *args: Any) -> list[Any]:
    """One query on a fresh connection (no loop left running: we fork)."""
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    async def run() -> list[Any]:
        connect, _ = parse_postgres_uri(uri)
        conn = await asyncpg.connect(**connect)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


class Cluster:
    """``n`` nodes on a fresh prefix, balanced."""

    def __init__(
        self, pg: PostgresCluster, n: int, lease: float, tmp: Path, tag: str
    ) -> None:
        self.prefix = f"bc_{tag}_"
        sep = "&" if "?" in pg.uri else "?"
        self.uri = f"{pg.uri}{sep}prefix={self.prefix}"
        self.nodes = [
            Node(self.uri, f"n{i}", lease, tmp / f"{tag}-n{i}.log") for i in range(n)
        ]
        self.partitions = 0
        self.owner: dict[int, str] = {}  # part -> address
        self.wait_balanced([x.id for x in self.nodes], 20 + 5 * lease)
        time.sleep(lease / 2)  # routes and loads settle

    def wait_balanced(self, ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        p = self.prefix
        while True:
            rows = sql(
                self.uri,
                f"SELECT c.part, c.owner, n.address FROM {p}cluster_parts c JOIN"
                f" {p}cluster_nodes n ON n.node = c.owner WHERE c.lease_until > now()",
            )
            owners = Counter(r[1] for r in rows)
            if rows:
                self.partitions = len(
                    sql(self.uri, f"SELECT part FROM {p}cluster_parts")
                )
            # every node its fair share (not a step of the rebalancing)
            fair = fair_shares(ids, self.partitions) if self.partitions else {}
            if rows and owners == Counter(fair) and all(r[2] for r in rows):
                self.owner = {r[0]: r[2] for r in rows}
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not balanced: {owners}")
            time.sleep(0.1)

    def route(self, func: bytes, names: list[bytes]) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {x.address: [] for x in self.nodes}
        for name in names:
            out[self.owner[partition_of(func, name, self.partitions)]].append(name)
        return out

    def stop(self) -> None:
        for x in self.nodes:
            x.stop(signal.SIGTERM)


# -- the load process -----------------------------------------------------------------


def load_proc(
    args: argparse.Namespace,
    func: bytes,
    routed: dict[str, list[tuple[bytes, int]]],
    ready: Any,
    go: Any,
    results: Any,
) -> None:
    """Per node: a worker connection and a client connection submitting the
    jobs that node owns; returns the timings."""
    late = any(at for jobs in routed.values() for _n, at in jobs[:1])

    async def main() -> dict[str, Any]:
        workers = [
            await e2e.open_conn(a, lambda: e2e.WorkerConn(func, args.slots, late))
            for a in routed
        ]
        subs = []
        chunks = []
        total = sum(len(j) for j in routed.values())
        for address, jobs in routed.items():
            conn = await e2e.open_conn(address, lambda: e2e.SubmitConn(args.pipeline))
            conn.total = len(jobs)
            if not jobs:
                conn.all_acked.set()
            subs.append(conn)
            mine = []
            for start in range(0, len(jobs), args.batch):
                buf = bytearray()
                part = jobs[start : start + args.batch]
                for i, (name, at) in enumerate(part, start):
                    e2e.encode_request_into(
                        buf,
                        i % e2e.CTRL_BASE + 1,
                        e2e.SUBMIT_JOB,
                        e2e.encode_job(Job(func, name, b"", at)),
                    )
                mine.append((bytes(buf), len(part)))
            chunks.append(mine)
        await asyncio.sleep(0.3)  # CAN_DO and GRAB_JOB answered
        ready.release()
        await asyncio.get_running_loop().run_in_executor(None, go.wait)
        t0 = time.time()
        await asyncio.gather(
            *(c.send_all(ch, args.duration) for c, ch in zip(subs, chunks, strict=True))
        )
        deadline = time.monotonic() + args.duration
        while sum(w.done for w in workers) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        res = {
            "t0": t0,
            "done": sum(w.done for w in workers),
            "last_done": max(w.last_done for w in workers),
            "lateness": [x for w in workers for x in w.lateness],
            "faults": [f for c in [*subs, *workers] for f in c.faults][:5],
        }
        for c in [*subs, *workers]:
            c.transport.close()
        return res

    loop = e2e.new_loop("uvloop")
    try:
        results.put(loop.run_until_complete(main()))
    finally:
        loop.close()


def one_run(
    args: argparse.Namespace, pg: PostgresCluster, cl: Cluster, scenario: str, tag: str
) -> dict[str, Any]:
    func = f"{scenario}-{tag}".encode()
    names = [b"j%07d" % i for i in range(args.jobs)]
    ats = [0] * len(names)
    if scenario == "lateness":
        base = int(time.time() + args.late_lead) + 1
        ats = [base + i % args.late_spread for i in range(len(names))]
    at_of = dict(zip(names, ats, strict=True))
    routed = {a: [(n, at_of[n]) for n in ns] for a, ns in cl.route(func, names).items()}
    ctx = mp.get_context("fork")
    ready, go, results = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=load_proc, args=(args, func, routed, ready, go, results))
    proc.start()
    try:
        if not ready.acquire(timeout=60):
            raise RuntimeError("the load process did not get ready")
        nodes = [x.proc.pid for x in cl.nodes]
        pgs = pg_pids(pg)
        c0, p0 = cpu_s(nodes), cpu_s(pgs)
        go.set()
        res = results.get(timeout=args.duration + 60)
        c1, p1 = cpu_s(nodes), cpu_s(pg_pids(pg))
    finally:
        go.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
    span = res["last_done"] - res["t0"]
    out = {
        "done": res["done"],
        "faults": res["faults"],
        "rate": res["done"] / span if span > 0 else 0.0,
        "node_cpu_us": (c1 - c0) / max(1, res["done"]) * 1e6,
        "pg_cpu_us": (p1 - p0) / max(1, res["done"]) * 1e6,
    }
    if scenario == "lateness":  # spread over seconds: only the lateness counts
        lat = sorted(x * 1000 for x in res["lateness"])
        out = {
            "done": res["done"],
            "faults": res["faults"],
            "p50_ms": e2e.percentiles(lat).get("p50", 0.0),
            "p99_ms": e2e.percentiles(lat).get("p99", 0.0),
        }
    return out


# -- failover and memory --------------------------------------------------------------


async def failover_once(cl: Cluster, lease: float) -> float:
    """Seconds from kill -9 of n0 to the first JOB_ASSIGN of one of its due
    jobs by a survivor."""
    from periodic_fast.client import Client
    from periodic_fast.cluster import WorkerCluster
    from periodic_fast.worker import WorkerJob

    victim = cl.nodes[0]
    survivors = [x.address for x in cl.nodes[1:]]
    names = [
        n
        for n in (f"fo{i}".encode() for i in range(5000))
        if cl.owner[partition_of(b"fo", n, cl.partitions)] == victim.address
    ][:50]
    first: asyncio.Future[float] = asyncio.get_running_loop().create_future()

    async def handler(job: WorkerJob) -> None:
        if not first.done():
            first.set_result(time.monotonic())

    workers = WorkerCluster(survivors, reconnect_delay=0.2)
    await workers.add_func("fo", handler)
    await workers.start(8)
    client = Client(victim.address, timeout=10)
    try:
        # due now, but no worker on the victim: they wait for the failover
        assert all(
            await asyncio.gather(*(client.submit_job(b"fo", n, b"", 0) for n in names))
        )
        killed = time.monotonic()
        victim.stop(signal.SIGKILL)
        return await asyncio.wait_for(first, 3 * lease + 20) - killed
    finally:
        await client.close()
        await workers.close()


async def load_jobs(address: str, n: int) -> None:
    from periodic_fast.client import Client

    at = int(time.time()) + 86_400
    async with Client(address, timeout=120) as c:
        for start in range(0, n, 10_000):
            jobs = [
                Job(b"mem", b"m%07d" % i, b"x" * 16, at)
                for i in range(start, min(n, start + 10_000))
            ]
            assert await c.load(jobs)


def memory_once(cl: Cluster, n: int) -> dict[str, Any]:
    before = {x.id: rss_mb(x.proc.pid) for x in cl.nodes}
    asyncio.run(load_jobs(cl.nodes[0].address, n))
    time.sleep(1.0)
    after = {x.id: rss_mb(x.proc.pid) for x in cl.nodes}
    held = {
        r[0]: r[1]
        for r in sql(
            cl.uri,
            f"SELECT p.owner, count(*) FROM {cl.prefix}jobs j JOIN"
            f" {cl.prefix}cluster_parts p ON p.part = j.part GROUP BY p.owner",
        )
    }
    return {
        x: {
            "rss_mb": round(after[x], 1),
            "jobs": held.get(x, 0),
            "bytes_per_job": round(
                (after[x] - before[x]) * 2**20 / max(1, held.get(x, 0))
            ),
        }
        for x in after
    }


# -- main -----------------------------------------------------------------------------


def med(xs: list[float]) -> float:
    return round(statistics.median(xs), 2) if xs else 0.0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--jobs", type=int, default=20_000)
    p.add_argument("--mem-jobs", type=int, default=100_000)
    p.add_argument("--nodes", default="1,2,3")
    p.add_argument("--lease", type=float, default=2.0)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--pipeline", type=int, default=4096)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--late-spread", type=int, default=5)
    p.add_argument("--late-lead", type=float, default=2.0)
    p.add_argument("--parts", default="lifecycle,lateness,failover,memory")
    p.add_argument("--json", default="")
    p.add_argument("--pg-log", default="", help="copy PostgreSQL's log here")
    args = p.parse_args()
    parts = args.parts.split(",")
    report: dict[str, Any] = {"load_before": os.getloadavg()}
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-cluster-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    with PostgresCluster(fsync=False) as pg:
        try:
            run_all(args, parts, pg, tmp, report)
        finally:
            if args.pg_log:
                Path(args.pg_log).write_bytes(pg.logfile.read_bytes())
    report["load_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def run_all(
    args: argparse.Namespace,
    parts: list[str],
    pg: PostgresCluster,
    tmp: Path,
    report: dict[str, Any],
) -> None:
    if True:
        for n in [int(x) for x in args.nodes.split(",")]:
            if not {"lifecycle", "lateness"} & set(parts):
                break
            cl = Cluster(pg, n, args.lease, tmp, f"l{n}")
            try:
                one_run(args, pg, cl, "lifecycle", "warm")  # not measured
                row: dict[str, Any] = {}
                for scenario in ("lifecycle", "lateness"):
                    if scenario not in parts:
                        continue
                    runs = [
                        one_run(args, pg, cl, scenario, f"{n}-{i}")
                        for i in range(args.runs)
                    ]
                    for r in runs:
                        assert r["done"] == args.jobs and not r["faults"], r
                    row[scenario] = {
                        k: med([r[k] for r in runs])
                        for k in runs[0]
                        if isinstance(runs[0][k], float)
                    }
                report[f"nodes={n}"] = row
                print(n, json.dumps(row), flush=True)
            finally:
                cl.stop()
        if "failover" in parts:
            for lease in sorted({args.lease, 5.0}):
                took = []
                for i in range(args.runs):
                    cl = Cluster(pg, 3, lease, tmp, f"f{int(lease)}{i}")
                    try:
                        took.append(asyncio.run(failover_once(cl, lease)))
                    finally:
                        cl.stop()
                report[f"failover lease={lease}"] = {
                    "median_s": med(took),
                    "runs": [round(t, 2) for t in took],
                }
                print("failover", lease, took, flush=True)
        if "memory" in parts:
            for n in [int(x) for x in args.nodes.split(",")]:
                cl = Cluster(pg, n, args.lease, tmp, f"m{n}")
                try:
                    report[f"memory nodes={n}"] = memory_once(cl, args.mem_jobs)
                    print("memory", n, report[f"memory nodes={n}"], flush=True)
                finally:
                    cl.stop()


if __name__ == "__main__":
    sys.exit(main())
