"""The stores side by side, in one run: durable submits/s, full life cycles/s,
DUMP/LOAD of many jobs, and start-up time with many stored jobs.

Every store in :data:`STORES` gets its own server process (``python -m
periodic_fast -d -p URI ...``); the scenarios of ``bench/e2e.py`` (separate
load generator processes, raw frames, pipelined) run against each server in
turn, round after round, so a noisy moment hits every store alike.  Figures
are medians of the rounds.

``submit``
    SUCCESS replies/s.  With a durable store a SUCCESS leaves only after the
    commit covering the job (the server holds replies behind the store's
    barrier), so this is acknowledged *durable* submits/s.
``lifecycle``
    Full life cycles/s (submit, JOB_ASSIGN, JOB_ASSIGNED, WORK_DONE acked).
    Closed loop: the rate is bounded by jobs in flight (``--workers`` x
    ``--slots``) over the time one cycle takes, which for a strict store
    includes the fsync of the commits.
``dumpload``
    ``--dump-jobs`` jobs sent with LOAD (the client splits them into frames of
    10,000), then one DUMP of all of them; seconds for each.
``startup``
    A store pre-filled with ``--startup-sizes`` jobs (due in the future,
    10 funcs); seconds from starting the server process to the first STATUS
    answered, and the server's CPU seconds (user+sys) and resident memory at
    that moment (CPU time is much less inflated by a busy machine).

Stores: ``memory``, ``sqlite-strict``, ``sqlite-relaxed``, ``postgres-strict``,
``postgres-relaxed`` (each a throwaway cluster from Debian's postgresql
package with fsync on; relaxed = ``synchronous_commit=off``; skipped with the
reason when the binaries are missing).  Add one by adding an entry to
:data:`STORES`: a name -> factory(tmpdir) returning the server's extra
arguments (``-p URI``, ``--durability ...``) and a cleanup callable.

``--baseline DIR`` runs every store a second time on the ``periodic_fast``
of another checkout (``DIR``, e.g. ``/work/main``: its servers get
``PYTHONPATH=DIR``), as ``NAME@base``, in the same rounds, so a change is
measured side by side with what it changes (``*_vs_base`` in the summary;
the two take turns at running first).

Example::

    .venv/bin/python bench/bench_store.py --rounds 3 --json stores.json
    .venv/bin/python bench/bench_store.py --scenarios startup \
        --startup-sizes 1000000,10000000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import e2e  # noqa: E402  (bench/e2e.py: the load generator)

from periodic_fast.client import Client  # noqa: E402
from periodic_fast.codec import decode_job_list  # noqa: E402
from periodic_fast.job import Job, JobState  # noqa: E402
from periodic_fast.store import open_store  # noqa: E402
from periodic_fast.testing import ServerProcess  # noqa: E402

#: factory(tmpdir) -> (server arguments, cleanup)
StoreFactory = Callable[[Path], tuple[list[str], Callable[[], None]]]


def _nothing() -> None:
    pass


def _memory(tmp: Path) -> tuple[list[str], Callable[[], None]]:
    return ["-p", ":memory:"], _nothing


def _sqlite(mode: str) -> StoreFactory:
    def factory(tmp: Path) -> tuple[list[str], Callable[[], None]]:
        path = tmp / f"sqlite-{mode}-{time.monotonic_ns()}.db"
        return ["-p", f"file://{path}", "--durability", mode], _nothing

    return factory


def _postgres(mode: str) -> StoreFactory:
    def factory(tmp: Path) -> tuple[list[str], Callable[[], None]]:
        from periodic_fast.testing_pg import PostgresCluster

        cluster = PostgresCluster(fsync=True).start()  # fsync on: real durability
        prefix = f"b{time.monotonic_ns() % 10**9}_"
        uri = f"{cluster.uri}&prefix={prefix}"
        return ["-p", uri, "--durability", mode], cluster.stop

    return factory


STORES: dict[str, StoreFactory] = {
    "memory": _memory,
    "sqlite-strict": _sqlite("strict"),
    "sqlite-relaxed": _sqlite("relaxed"),
    "postgres-strict": _postgres("strict"),
    "postgres-relaxed": _postgres("relaxed"),  # synchronous_commit=off
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--stores", default=",".join(STORES), help="comma-separated")
    p.add_argument("--scenarios", default="submit,lifecycle,dumpload,startup")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds")
    p.add_argument("--jobs", type=int, default=100_000, help="jobs per e2e run")
    p.add_argument("--slots", type=int, default=32, help="grab slots per worker")
    p.add_argument("--workers", type=int, default=4, help="worker connections")
    p.add_argument("--dump-jobs", type=int, default=1_000_000)
    p.add_argument("--startup-sizes", default="1000000")
    p.add_argument("--startup-rounds", type=int, default=3)
    p.add_argument("--tmp", default="", help="directory for the database files")
    p.add_argument("--json", default="", help="write the report here")
    p.add_argument(
        "--baseline",
        default="",
        help="checkout whose periodic_fast also serves each store, as NAME@base",
    )
    return p.parse_args(argv)


def _e2e_args(args: argparse.Namespace) -> argparse.Namespace:
    ns = e2e.parse_args([])
    ns.jobs = args.jobs
    ns.slots = args.slots
    ns.workers = args.workers
    ns.duration = 300.0
    return ns


def _load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def _rss_mib(pid: int) -> float:
    """Resident memory of a process (MiB, from /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _cpu_seconds(pid: int) -> float:
    """user + sys CPU seconds of a process (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _check_code(proc: ServerProcess, where: str | None) -> None:
    """With ``where``: the server's compiled modules come from that checkout
    (a baseline run must not measure this checkout's code by mistake)."""
    if not where or proc.pid is None:
        return
    with open(f"/proc/{proc.pid}/maps") as f:
        libs = {line.split()[-1] for line in f if "periodic_fast" in line}
    libs = {lib for lib in libs if lib.endswith(".so")}
    wrong = [lib for lib in libs if not lib.startswith(where + os.sep)]
    if wrong:
        raise RuntimeError(f"baseline server runs {wrong[0]}, not code from {where}")


# -- scenarios -----------------------------------------------------------------


def dumpload(address: str, n: int) -> dict[str, float]:
    """LOAD ``n`` jobs, DUMP them all; seconds of each, checked."""
    now = int(time.time())
    jobs = [
        Job(b"dl%d" % (i % 10), b"job-%09d" % i, b"payload-%d" % i, now + 10**6 + i)
        for i in range(n)
    ]

    async def run() -> dict[str, float]:
        async with Client(address, timeout=600) as c:
            t0 = time.perf_counter()
            assert await c.load(jobs), "LOAD refused"
            t1 = time.perf_counter()
            raw = await c.dump_raw()
            t2 = time.perf_counter()
            for i in range(10):
                await c.drop_func(b"dl%d" % i)
        got = len(decode_job_list(raw))
        assert got == n, f"DUMP returned {got} of {n} jobs"
        return {"load_s": t1 - t0, "dump_s": t2 - t1, "dump_mib": len(raw) / 2**20}

    return asyncio.run(asyncio.wait_for(run(), 1800))


def fill(server_args: list[str], n: int) -> None:
    """Write ``n`` future jobs (10 funcs) through the store API."""
    uri = server_args[server_args.index("-p") + 1]
    store = open_store(uri, durability="relaxed")
    now = int(time.time())
    try:
        for func in range(10):
            store.save_func(b"start%d" % func)
        for i in range(n):
            store.save_job(
                Job(
                    b"start%d" % (i % 10), b"job-%09d" % i, b"w%d" % i, now + 10**6 + i
                ),
                JobState.PENDING,
            )
            if i % 200_000 == 199_999:
                store.flush()
        store.flush()
    finally:
        store.close()


def startup(server_args: list[str], rounds: int) -> dict[str, Any]:
    """Start the server ``rounds`` times; time to the first STATUS answered."""
    walls: list[float] = []
    cpus: list[float] = []
    rss: list[float] = []
    jobs = 0
    for _ in range(rounds):
        proc = ServerProcess([*server_args, "--log", "warning"], start_timeout=1800)
        t0 = time.perf_counter()
        proc.start()

        async def status(address: str) -> int:
            async with Client(address, timeout=600) as c:
                return sum(s.jobs for s in (await c.status_list()))

        jobs = asyncio.run(status(proc.address))
        walls.append(time.perf_counter() - t0)
        assert proc.pid is not None
        cpus.append(_cpu_seconds(proc.pid))
        rss.append(_rss_mib(proc.pid))
        proc.stop(600)
    return {
        "jobs": jobs,
        "wall_s": statistics.median(walls),
        "wall_all": walls,
        "cpu_s": statistics.median(cpus),
        "cpu_all": cpus,
        "rss_mib": statistics.median(rss),
    }


# -- driver --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [s for s in args.stores.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    tmp = Path(args.tmp or tempfile.mkdtemp(prefix="pf-bench-store-"))
    tmp.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "machine": e2e.machine_facts(e2e.implementations()),
        "args": vars(args),
        "load_before": _load(),
        "stores": {},
        "skipped": {},
    }
    print(f"# {report['machine']}; load {report['load_before']}", flush=True)
    servers: dict[str, ServerProcess] = {}
    cleanups: list[Callable[[], None]] = []
    store_args: dict[str, list[str]] = {}
    store_env: dict[str, dict[str, str]] = {}
    variants = [(n, "") for n in names]
    if args.baseline:
        base = os.path.abspath(args.baseline)
        report["baseline"] = base
        # ``python -m`` puts the working directory first on sys.path: out of
        # any checkout, so PYTHONPATH decides which periodic_fast a server runs
        os.chdir(tmp)
        variants += [(f"{n}@base", base) for n in names]
    try:
        for name, base in variants:
            try:
                extra, cleanup = STORES[name.removesuffix("@base")](tmp)
            except Exception as exc:  # e.g. no PostgreSQL binaries
                report["skipped"][name] = str(exc)
                print(f"# {name}: skipped ({exc})", flush=True)
                continue
            cleanups.append(cleanup)
            store_args[name] = extra
            store_env[name] = {"PYTHONPATH": base} if base else {}
            report["stores"][name] = {"args": extra}
        # interleaved: a store and its baseline one after the other
        live = sorted(store_args, key=lambda n: names.index(n.removesuffix("@base")))
        e2e_scen = [s for s in scenarios if s in ("submit", "lifecycle")]
        if e2e_scen or "dumpload" in scenarios:
            for name in live:
                servers[name] = ServerProcess(
                    [*store_args[name], "--log", "warning"],
                    env=store_env[name],
                    start_timeout=300,
                ).start()
                _check_code(servers[name], store_env[name].get("PYTHONPATH"))
            ns = _e2e_args(args)
            for scen in e2e_scen:  # warm-up, unmeasured
                for name in live:
                    e2e.run_once(ns, servers[name].address, scen, "warm", 10_000)
            for rnd in range(args.rounds):
                # a store and its baseline take turns at going first
                order = sorted(
                    live,
                    key=lambda n: (
                        names.index(n.removesuffix("@base")),
                        n.endswith("@base") == (rnd % 2 == 0),
                    ),
                )
                for scen in e2e_scen:
                    for name in order:
                        r = e2e.run_once(
                            ns, servers[name].address, scen, str(rnd), args.jobs
                        )
                        runs = report["stores"][name].setdefault(scen, [])
                        runs.append(r)
                        print(f"{scen} {name} round {rnd}: {e2e.fmt(r)}", flush=True)
            if "dumpload" in scenarios:
                for name in live:
                    r = dumpload(servers[name].address, args.dump_jobs)
                    report["stores"][name]["dumpload"] = r
                    print(f"dumpload {name}: {r}", flush=True)
            for proc in servers.values():
                proc.stop(600)
            servers.clear()
        if "startup" in scenarios:
            for size in [int(s) for s in args.startup_sizes.split(",") if s]:
                for name in live:
                    if name == "memory" or name.endswith("@base"):
                        continue  # nothing survives a restart / e2e only
                    extra, cleanup = STORES[name](tmp)
                    cleanups.append(cleanup)
                    t0 = time.perf_counter()
                    fill(extra, size)
                    filled = time.perf_counter() - t0
                    r = startup(extra, args.startup_rounds)
                    r["fill_s"] = filled
                    report["stores"][name].setdefault("startup", {})[size] = r
                    print(f"startup {name} {size:,} jobs: {r}", flush=True)
    finally:
        for proc in servers.values():
            with contextlib.suppress(Exception):
                proc.kill()
        for cleanup in cleanups:
            with contextlib.suppress(Exception):
                cleanup()
        if not args.tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    report["load_after"] = _load()
    summary = summarize(report)
    report["summary"] = summary
    print(json.dumps(summary, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    return 0


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Medians per store and scenario, and ratios to the memory store."""
    out: dict[str, Any] = {}
    for name, data in report["stores"].items():
        row: dict[str, Any] = {}
        for scen, key in (
            ("submit", "submits_per_s"),
            ("lifecycle", "lifecycles_per_s"),
        ):
            if scen in data:
                row[key] = statistics.median(r[key] for r in data[scen])
                row[key + "_all"] = [round(r[key]) for r in data[scen]]
        if "dumpload" in data:
            row["dumpload"] = data["dumpload"]
        if "startup" in data:
            row["startup"] = {
                size: {k: v for k, v in r.items() if not k.endswith("_all")}
                for size, r in data["startup"].items()
            }
        out[name] = row
    for name, row in out.items():
        suffix = "@base" if name.endswith("@base") else ""
        memory = out.get("memory" + suffix, {})
        before = {} if suffix else out.get(name + "@base", {})
        for key in ("submits_per_s", "lifecycles_per_s"):
            if key in row and memory.get(key):
                row[key + "_vs_memory"] = round(row[key] / memory[key], 3)
            if key in row and before.get(key):
                row[key + "_vs_base"] = round(row[key] / before[key], 3)
                # per round: the two ran one after the other
                pairs = zip(row[key + "_all"], before[key + "_all"], strict=True)
                row[key + "_vs_base_rounds"] = [round(a / b, 2) for a, b in pairs if b]
    return out


if __name__ == "__main__":
    sys.exit(main())
