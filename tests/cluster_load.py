"""Load, records and checks for the cluster fault-injection suite (issue 18).

:class:`Load` drives real ``periodicd --cluster`` nodes the way an
application would and records everything the checks need:

* **clients** submit jobs at a steady rate through every live node in turn
  (forwarding reaches the owner); a job is *acknowledged* when SUBMIT_JOB
  answered SUCCESS.  A submission that failed or timed out is retried under
  a **new** name (the first may have landed: its name is only "maybe").
* **workers** (:class:`~periodic_fast.cluster.WorkerCluster`, connected to
  every node) run each job :data:`RUNS` times: a run records the job name,
  the job's run counter, the node that assigned it and the moment the
  assignment arrived, works a little, then answers ``SCHED_LATER`` with a
  random step (the run's token) or, on the last run, ``WORK_DONE``.  The
  counter of run ``i`` is ``i * STEP`` plus the random parts of the earlier
  steps, so the counter names the run (its index is ``count // STEP``) and
  says which completion produced it.
* :class:`Ownership` polls ``cluster_parts`` (owner, epoch) every 100 ms, so a
  repeated run can be matched to a partition that changed hands.

:func:`check` turns the records into the must-show of issue 18: no
acknowledged job lost; no run with two completions that both took effect;
repeated runs only of jobs that were running on the faulty node (or whose
partition was handed over at a rebalance, when the scenario has one); the
faulty node's last JOB_ASSIGN within one lease of the fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from periodic_fast.client import Client
from periodic_fast.cluster import WorkerCluster
from periodic_fast.store.cluster import partition_of
from periodic_fast.worker import WorkerJob

FUNC = b"f"
RUNS = 3  # runs per job: RUNS - 1 SCHED_LATERs, then WORK_DONE
STEP = 10_000  # a run's index is count // STEP (a step adds STEP + a token < 1000)
SLOTS = 8  # grab slots per node


@dataclass
class Run:
    """One JOB_ASSIGN a worker received and what it answered."""

    name: str
    count: int
    node: str  # the address of the node that assigned it
    t: float  # monotonic: the assignment arrived (the handler started)
    end: float = 0.0
    outcome: str = ""  # "later", "done" or "error: ..."
    step: int = 0  # SCHED_LATER's step (STEP + the run's token)

    @property
    def index(self) -> int:
        return self.count // STEP


@dataclass
class Fault:
    """A fault injected into ``node`` at ``t`` (monotonic); ``recovered``:
    when it was resumed / reconnected (None: never)."""

    kind: str  # "kill", "freeze", "cut", "leave"
    node: str  # address
    node_id: str
    t: float
    recovered: float | None = None


class Ownership:
    """``cluster_parts`` snapshots every ``period`` s: ``(t0, t1, {part:
    (owner, epoch)})`` with the monotonic times before and after the read.
    ``db``: a connection of its own (asyncpg runs one query at a time)."""

    def __init__(self, db: Any, prefix: str, period: float = 0.1) -> None:
        self.db = db
        self.prefix = prefix
        self.period = period
        self.snaps: list[tuple[float, float, dict[int, tuple[str | None, int]]]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def _run(self) -> None:
        sql = f"SELECT part, owner, epoch FROM {self.prefix}cluster_parts"
        while True:
            t0 = time.monotonic()
            rows = await self.db.fetch(sql)
            t1 = time.monotonic()
            self.snaps.append((t0, t1, {r[0]: (r[1], r[2]) for r in rows}))
            await asyncio.sleep(self.period)

    def at(self, t: float) -> dict[int, tuple[str | None, int]]:
        """The last snapshot read entirely before ``t`` (empty if none)."""
        best: dict[int, tuple[str | None, int]] = {}
        for _t0, t1, snap in self.snaps:
            if t1 > t:
                break
            best = snap
        return best

    def moved(self, part: int, ta: float, tb: float) -> bool:
        """True when ``part``'s epoch changed between ``ta`` and ``tb`` (a
        new owner took it; unknown counts as moved)."""
        before = self.at(ta).get(part)
        after = next((s.get(part) for t0, _t1, s in self.snaps if t0 >= tb), None)
        if before is None or after is None:
            return True
        return before[1] != after[1]

    def reacquired(self, node_id: str, t: float) -> float:
        """A lower bound of when ``node_id`` next acquired a partition after
        ``t`` (an epoch newer than at ``t`` with it as owner); inf if never."""
        base = self.at(t)
        prev_t0 = t
        for t0, _t1, snap in self.snaps:
            if t0 < t:
                continue
            if any(
                owner == node_id and epoch > base.get(p, (None, -1))[1]
                for p, (owner, epoch) in snap.items()
            ):
                return prev_t0
            prev_t0 = t0
        return float("inf")


@dataclass
class Load:
    """Clients and workers on a set of node addresses (see the module doc)."""

    addresses: list[str]
    rate: float = 30.0  # submissions per second
    work: tuple[float, float] = (0.05, 0.3)  # seconds a run takes
    delay: int = 1  # SCHED_LATER delay (s)
    client_timeout: float = 8.0
    seed: int = 18
    acked: dict[str, float] = field(default_factory=dict)  # name -> when
    maybe: set[str] = field(default_factory=set)  # failed or timed out
    runs: list[Run] = field(default_factory=list)
    workers: list[WorkerCluster] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.live = list(self.addresses)  # where submissions go
        self._rng = random.Random(self.seed)
        self._names = itertools.count()
        self._clients: dict[str, Client] = {}
        self._rr = itertools.count()
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._feeder: asyncio.Task[None] | None = None

    # workers ------------------------------------------------------------------------

    async def handler(self, job: WorkerJob) -> None:
        run = Run(job.name, job.count, job.worker.address, time.monotonic())
        self.runs.append(run)
        await asyncio.sleep(self._rng.uniform(*self.work))
        try:
            if run.index >= RUNS - 1:
                await job.done(b"ok")
                run.outcome = "done"
            else:
                run.step = STEP + self._rng.randint(1, 999)
                await job.sched_later(self.delay, run.step)
                run.outcome = "later"
        except Exception as exc:  # the node went away: the outcome is lost
            run.outcome = f"error: {exc!r}"
        run.end = time.monotonic()

    async def add_workers(self, addresses: list[str]) -> None:
        """Workers (SLOTS slots each) on ``addresses``."""
        w = WorkerCluster(addresses, reconnect_delay=0.2)
        await w.add_func(FUNC, self.handler)
        await w.start(SLOTS)
        self.workers.append(w)

    # clients ------------------------------------------------------------------------

    def start(self) -> None:
        """Start submitting (``rate`` per second) until :meth:`stop`."""
        self._feeder = asyncio.get_running_loop().create_task(self._feed())

    async def stop(self) -> None:
        """Stop submitting; wait for the submissions in flight."""
        self._stop.set()
        if self._feeder is not None:
            await self._feeder
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def close(self) -> None:
        await self.stop()
        for c in self._clients.values():
            with contextlib.suppress(Exception):
                await c.close()
        for w in self.workers:
            with contextlib.suppress(Exception):
                await w.close()

    async def _feed(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in itertools.count():
            if self._stop.is_set():
                return
            task = loop.create_task(self._submit())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(max(0.0, start + (i + 1) / self.rate - loop.time()))

    def _client(self, address: str) -> Client:
        # one per node, shared; a request (re)connects on demand
        c = self._clients.get(address)
        if c is None:
            c = self._clients[address] = Client(address, timeout=self.client_timeout)
        return c

    async def _submit(self) -> None:
        """Submit one job; on a failure try another node under a new name."""
        for _attempt in range(20):
            name = f"j{next(self._names)}"
            live = self.live
            address = live[next(self._rr) % len(live)]
            try:
                client = self._client(address)
                ok = await client.submit_job(FUNC, name, b"w", int(time.time()))
            except Exception:  # the node is down or did not answer in time
                ok = False
            if ok:
                self.acked[name] = time.monotonic()
                return
            self.maybe.add(name)
            await asyncio.sleep(0.05)


# -- the checks ----------------------------------------------------------------------


def check(
    load: Load,
    faults: list[Fault],
    own: Ownership,
    lease: float,
    partitions: int,
    *,
    rebalance_after: float | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """The must-show (module doc) as a list of problems (empty: all hold)
    and figures for the report.  ``rebalance_after``: from then on a
    partition may be handed over between healthy nodes (a node joined or a
    faulty one came back), so a run repeated because its partition moved is
    allowed too."""
    problems: list[str] = []
    by_name: dict[str, list[Run]] = defaultdict(list)
    for r in load.runs:
        by_name[r.name].append(r)

    # 1. no acknowledged job lost: every run index, ending with a WORK_DONE
    for name in load.acked:
        runs = by_name.get(name, [])
        indices = {r.index for r in runs}
        if indices != set(range(RUNS)) or not any(r.outcome == "done" for r in runs):
            problems.append(f"acknowledged job {name} lost: runs {sorted(indices)}")

    # 2. no run with two completions that took effect: the counters seen form
    # one chain 0 -> +step -> +step, each link the step of a completion of
    # the run before it
    for name, runs in by_name.items():
        counts = sorted({r.count for r in runs})
        if [c // STEP for c in counts] != list(range(len(counts))):
            problems.append(f"{name}: run counters {counts} (two completions of a run)")
            continue
        for prev, nxt in itertools.pairwise(counts):
            steps = {r.step for r in runs if r.count == prev and r.outcome == "later"}
            steps |= {r.step for r in runs if r.count == prev and r.step}
            if nxt - prev not in steps:
                problems.append(
                    f"{name}: counter {nxt} follows {prev} by no completion of it"
                )

    # 3. repeated runs only of jobs running on the faulty node (or, after a
    # rebalance, whose partition was handed over while they ran)
    faulty = {f.node: f for f in faults}
    repeats = {"faulty node": 0, "handover": 0}
    for name, runs in by_name.items():
        groups: dict[int, list[Run]] = defaultdict(list)
        for r in runs:
            groups[r.count].append(r)
        for same in groups.values():
            if len(same) < 2:
                continue
            same.sort(key=lambda r: r.t)
            first = same[0]
            part = partition_of(FUNC, name.encode(), partitions)
            for again in same[1:]:
                f = faulty.get(first.node)
                if f is not None and first.t <= f.t + lease <= again.t + lease:
                    repeats["faulty node"] += 1
                elif (
                    rebalance_after is not None
                    and again.t >= rebalance_after
                    and own.moved(part, first.t, again.t)
                ):
                    repeats["handover"] += 1
                else:
                    problems.append(
                        f"{name} count {first.count} ran twice: on {first.node} at"
                        f" {first.t:.2f}, again on {again.node} at {again.t:.2f}"
                    )

    # 4. the faulty node stops dispatching within one lease of the fault
    # (until it legitimately acquires partitions again)
    stops: dict[str, float | None] = {}
    for f in faults:
        back = own.reacquired(f.node_id, f.t)
        mine = [r.t for r in load.runs if r.node == f.node and f.t <= r.t < back]
        # the last JOB_ASSIGN it sent after the fault (None: not one)
        stops[f.kind] = round(max(mine) - f.t, 3) if mine else None
        late = [t - f.t for t in mine if t > f.t + lease]
        if late:
            problems.append(
                f"{f.kind}: {f.node_id} dispatched {len(late)} job(s) more than one"
                f" lease after the fault (first {min(late):.2f} s after)"
            )
    figures = {
        "acknowledged": len(load.acked),
        "maybe": len(load.maybe),
        "runs": len(load.runs),
        "repeats": repeats,
        "last_assign_after_fault_s": stops,
    }
    return problems, figures
