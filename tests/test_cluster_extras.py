"""A job's extras per partition in cluster mode (issue 18): retry attempts,
the dead set and cron schedules travel with their job's partition, and the
JSON API answers for the whole cluster through any node.

The first test drives two cluster stores against a real PostgreSQL: the
extras' ``part`` column (written, back-filled for a single server's rows),
their per-partition read, and fencing (a lost partition's extras writes are
refused with its job writes).  The second runs three ``periodicd --cluster``
processes on one throwaway PostgreSQL (the helpers of test_cluster_nodes and
test_cluster_view): a job failing past its attempts lands in the dead set
and is listed through every node; retried through another node it runs; a
cron schedule added through a node that does not own the job fires on its
owner and is still in force after a kill -9 of that owner; a job's failure
count goes on after a failover instead of restarting from 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_cluster_nodes import LEASE, _owners, _wait_balanced, _wait_for
from test_cluster_nodes import pg as pg_nodes  # noqa: F401  # the fixture
from test_cluster_store import P, _node, _tick
from test_cluster_store import pg as pg_store  # noqa: F401  # the fixture
from test_cluster_view import HttpNode

from periodic_fast.admin import AdminClient, AdminError
from periodic_fast.job import Job, JobState
from periodic_fast.store.cluster import FencedOut, partition_of
from periodic_fast.worker import Done, Fail, Worker, WorkerJob

PARTS = 256  # a new cluster's count (periodicd's default)


# -- the scheduler (sans-I/O) --------------------------------------------------------


def _in(parts: Any, part: int, n: int, tag: str) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        name = f"{tag}{i}".encode()
        i += 1
        if parts.part(b"f", name) == part:
            out.append(name)
    return out


def test_a_partitions_extras_come_and_go_with_it() -> None:
    from test_scheduler import T0, Harness

    from periodic_fast.sched_crontab import CronEntry
    from periodic_fast.sched_part_extras import add_crons, add_extras
    from periodic_fast.sched_parts import Partitions
    from periodic_fast.sched_retry import DeadJob, Failure

    h = Harness()
    parts = Partitions(h.s, 4)
    mine, other = 1, 2
    a_live, a_gone, dead, cron_live, cron_new = _in(parts, mine, 5, "m")
    far = _in(parts, other, 1, "o")[0]
    h.submit(b"f", a_live, sched_at=int(T0) + 600)
    h.submit(b"f", cron_live, sched_at=int(T0) + 30)
    fail = Failure(3, T0 - 5, None, "fail").encode()
    entry = CronEntry(b"f", cron_live, "* * * * *", "UTC", "once", b"", 0)
    rows = [
        ("attempt", b"f", a_live, fail),
        ("attempt", b"f", a_gone, fail),  # its job is gone: deleted later
        ("attempt", b"f", far, fail),  # not held here: ignored
        (
            "dead",
            b"f",
            dead,
            DeadJob(Job(b"f", dead), Failure(2, T0, None, "lost")).encode(),
        ),
        ("cron", b"f", cron_live, entry.encode()),
        ("cron", b"f", cron_new, entry._replace(name=cron_new).encode()),
    ]
    parts.begin([mine])
    crons = add_extras(h.s, parts.held, parts.part, rows, T0)
    assert [r[2] for r in crons if r[0] == "cron"] == [cron_live, cron_new]
    assert (h.s.job_failure(b"f", a_live) or {})["attempts"] == 3
    assert h.s.job_failure(b"f", far) is None
    assert [d.job.name for d in h.s.dead_jobs()[0]] == [dead]
    assert h.s.cron_count == 0  # schedules only once the jobs are in
    assert add_crons(h.s, parts.held, parts.part, crons, T0) == 2
    parts.finish([mine])
    assert {(i.func, i.name) for i in h.s.cron_schedules(None, T0)} == {
        (b"f", cron_live),
        (b"f", cron_new),  # its job re-submitted at the next fire
    }
    assert h.s.job_failure(b"f", a_gone) is None
    extras = h.store.load().extras or {}
    assert (b"f", a_gone) not in {(f, n) for f, n, _ in extras.get("attempt", [])}
    # unloaded: every extra of the partition leaves memory, none is deleted
    before = h.store.load().extras
    parts.unload([mine], T0)
    assert h.s.job_failure(b"f", a_live) is None
    assert h.s.dead_count == 0 and h.s.cron_count == 0
    assert h.store.load().extras == before


def test_retry_policies_stored_elsewhere_are_adopted() -> None:
    from test_scheduler import Harness

    from periodic_fast.retry import RetryPolicy
    from periodic_fast.sched_part_extras import PolicySync

    h = Harness()
    sync = PolicySync(h.s)
    p2 = json.dumps(RetryPolicy(max_attempts=2).to_dict()).encode()
    p9 = json.dumps(RetryPolicy(max_attempts=9).to_dict()).encode()
    assert sorted(sync.adopt({b"f": p2, b"": p9})) == [b"", b"f"]
    assert h.s.retry_policy(b"f").max_attempts == 2
    assert h.s.retry_policy(b"g").max_attempts == 9  # the default
    # set here, not stored yet: an unchanged stored value does not undo it
    h.s.set_retry_policy(b"f", RetryPolicy(max_attempts=5), h.now)
    assert sync.adopt({b"f": p2, b"": p9}) == []
    assert h.s.retry_policy(b"f").max_attempts == 5
    # reset elsewhere: the func follows the default, the default the operator's
    assert sorted(sync.adopt({})) == [b"", b"f"]
    assert h.s.retry_policy(b"f") == h.s.retry_policy(b"g") == RetryPolicy()
    assert sync.adopt({b"f": b"not json"}) == []  # unreadable: left alone


def test_batch_partitions_cover_a_jobs_extras() -> None:
    from periodic_fast.store._batch import Batch
    from periodic_fast.store.cluster import batch_partitions

    batch = Batch()
    batch.save_extra("attempt", b"f", b"a", b"{}")
    batch.delete_extra("dead", b"g", b"b")
    batch.save_extra("policy", b"f", b"", b"{}")  # func-wide: no partition
    want = {partition_of(b"f", b"a", 64), partition_of(b"g", b"b", 64)}
    assert batch_partitions(batch, 64) == want
    batch.delete_func_extras("cron", b"f")  # the node's own partitions
    assert batch_partitions(batch, 64, owned=[7]) == want | {7}
    assert batch_partitions(batch, 64) == set(range(64))


# -- the store ---------------------------------------------------------------------


def _extras(store: Any, parts: list[int]) -> set[tuple[str, bytes, bytes]]:
    async def go() -> list[tuple[str, bytes, bytes, bytes]]:
        return await store.partition_extras(parts)

    return {(k, f, n) for k, f, n, _ in asyncio.run(go())}


def _names(part: int, n: int) -> list[bytes]:
    out: list[bytes] = []
    i = 0
    while len(out) < n:
        name = b"x%d" % i
        i += 1
        if partition_of(b"f", name, P) == part:
            out.append(name)
    return out


def test_extras_are_partitioned_backfilled_and_fenced(
    pg_store: tuple[dict[str, Any], str],  # noqa: F811
) -> None:
    from periodic_fast.store.postgres import PostgresStore

    connect, prefix = pg_store
    lost, kept = 0, 1
    old = _names(kept, 2)
    single = PostgresStore(connect, prefix=prefix)  # a single server's rows
    for name in old:
        single.save_job(Job(b"f", name), JobState.PENDING)
        single.save_extra("attempt", b"f", name, b"{}")
    single.save_extra("policy", b"f", b"", b"{}")  # func-wide: no partition
    single.close()
    a = _node(connect, prefix, "a")
    b = None
    try:
        _tick(a)  # a holds everything
        assert _extras(a, [kept]) == {("attempt", b"f", n) for n in old}  # filled
        assert _extras(a, [p for p in range(P) if p != kept]) == set()
        b = _node(connect, prefix, "b")

        async def steal() -> None:
            import asyncpg

            conn = await asyncpg.connect(**connect)
            try:
                await conn.execute(
                    f"UPDATE {prefix}cluster_parts SET owner = 'b', epoch = epoch + 1,"
                    " lease_until = now() + interval '1 hour' WHERE part = $1",
                    lost,
                )
            finally:
                await conn.close()

        asyncio.run(steal())
        lost_names, kept_names = _names(lost, 2), _names(kept, 2)
        # extras only (no job write): the fence still covers their partitions
        for name in lost_names + kept_names:
            a.save_extra("dead", b"f", name, b"{}\n")
        fired = threading.Event()
        errors: list[BaseException | None] = []

        def barrier(error: BaseException | None) -> None:
            errors.append(error)
            fired.set()

        a.on_durable(barrier)
        assert fired.wait(10)
        assert isinstance(errors[0], FencedOut) and errors[0].parts == [lost]
        a.flush(10)  # the retry commits the kept partition's extras
        got = _extras(a, [lost, kept])
        assert {n for k, _, n in got if k == "dead"} == set(kept_names)
        # the new owner reads what is its own (nothing of a's refused write)
        assert _extras(b, [lost]) == set()
        # a's func drop deletes only its own partitions' job extras (b's row
        # stays)

        async def b_writes() -> None:
            import asyncpg

            conn = await asyncpg.connect(**connect)
            try:
                await conn.execute(
                    f"INSERT INTO {prefix}extras (kind, func, name, value, part)"
                    " VALUES ('dead', 'f', $1, '', $2)",
                    lost_names[0],
                    lost,
                )
            finally:
                await conn.close()

        asyncio.run(b_writes())
        a.delete_func_extras("dead", b"f")
        a.flush(10)
        assert {n for k, _, n in _extras(a, [lost, kept]) if k == "dead"} == {
            lost_names[0]
        }
        # a node's start-up load: the func-wide extras only
        loaded = {k: v for k, v in (a.load().extras or {}).items() if v}
        assert loaded == {"policy": [(b"f", b"", b"{}")]}
    finally:
        a.close()
        if b is not None:
            b.close()


# -- three real nodes --------------------------------------------------------------


class Outcomes:
    """A worker handler per func: ``fail`` names fail, the rest are done;
    every run recorded as (name, node address), and when it came."""

    def __init__(self) -> None:
        self.fail: set[str] = set()
        self.runs: list[tuple[str, str]] = []
        self.when: list[float] = []

    async def handler(self, job: WorkerJob) -> Any:
        self.runs.append((job.name, job.worker.address))
        self.when.append(time.time())
        return Fail() if job.name in self.fail else Done(b"ok")

    def ran(self, name: str) -> int:
        return sum(1 for n, _ in self.runs if n == name)


async def _owned_by(db: Any, prefix: str, node: str, func: bytes, tag: str) -> str:
    """A job name of ``func`` whose partition ``node`` owns now."""
    rows = await db.fetch(
        f"SELECT part FROM {prefix}cluster_parts WHERE owner = $1", node
    )
    mine = {r[0] for r in rows}
    i = 0
    while partition_of(func, f"{tag}{i}".encode(), PARTS) not in mine:
        i += 1
    return f"{tag}{i}"


async def _attempts(db: Any, prefix: str, func: bytes, name: str) -> int:
    raw = await db.fetchval(
        f"SELECT value FROM {prefix}extras WHERE kind = 'attempt'"
        " AND func = $1 AND name = $2",
        func,
        name.encode(),
    )
    return 0 if raw is None else int(json.loads(raw)["attempts"])


@contextlib.asynccontextmanager
async def _three_nodes(
    uri: str, prefix: str, tmp_path: Path, out: Outcomes, publish: str | None = None
) -> AsyncIterator[tuple[Any, list[HttpNode], list[AdminClient]]]:
    """Three HTTP-enabled nodes sharing the partitions, a worker on each
    for funcs fd, fa and fc (``out`` runs the jobs): ``(db, nodes, admins)``.
    ``publish``: the host the nodes publish (see :class:`HttpNode`)."""
    import asyncpg

    from periodic_fast.store.postgres import parse_postgres_uri

    connect, _ = parse_postgres_uri(uri)
    db = await asyncpg.connect(**connect)
    nodes = [HttpNode(uri, f"n{i}", tmp_path / f"n{i}.log", publish) for i in range(3)]
    admins = [AdminClient(n.address, timeout=3 * LEASE + 10) for n in nodes]
    workers: list[Worker] = []
    try:
        for n in nodes:
            n.wait_listening()

        await _wait_balanced(db, prefix, ["n0", "n1", "n2"])
        await asyncio.sleep(LEASE / 2)  # routes: one more tick everywhere
        for n in nodes:  # a worker on every node (each hands out its own jobs)
            w = Worker(n.address)
            for func in ("fd", "fa", "fc"):
                await w.add_func(func, out.handler)
            await w.start(4)
            workers.append(w)
        yield db, nodes, admins
    finally:
        for w in workers:
            await w.close()
        for n in nodes:
            n.stop()
        await db.close()


async def test_three_nodes_dead_set_cron_and_attempts(
    pg_nodes: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    uri, prefix = pg_nodes
    out = Outcomes()
    async with _three_nodes(uri, prefix, tmp_path, out) as (db, nodes, admins):
        # a retry policy set through n0 is in force on every node
        await admins[0].set_retry_policy("fd", max_attempts=2, backoff=1, jitter=0)
        await admins[0].set_retry_policy(
            "fa", max_attempts=0, backoff=1, factor=1, jitter=0
        )

        async def policy_everywhere() -> bool:
            for a in admins:
                funcs = (await a.retry_policies())["funcs"]
                if funcs.get("fd", {}).get("max_attempts") != 2 or "fa" not in funcs:
                    return False
            return True

        await _wait_for(policy_everywhere, 4 * LEASE, "the policy on every node")

        # -- the dead set: a job of n2 fails twice, listed through every node
        dname = await _owned_by(db, prefix, "n2", b"fd", "d")
        others = [f"o{i}" for i in range(6)]  # on every node, by the hash
        for name in [dname, *others]:
            out.fail.add(name)
            code, _ = await asyncio.to_thread(
                nodes[0].send, "POST", "/fd", name=name, sched_at="0"
            )
            assert code == 200
        every = sorted([dname, *others])

        async def listed_everywhere() -> bool:
            for a in admins:
                page = await a.dead_jobs("fd")
                if [j["name"] for j in page["jobs"]] != every:
                    return False
            return True

        await _wait_for(listed_everywhere, 20, "the dead jobs listed by every node")
        page = await admins[1].dead_jobs()
        assert page["total"] == 7 and {j["attempts"] for j in page["jobs"]} == {2}
        assert out.ran(dname) == 2
        # pages of 3 through n2: every dead job once, in order
        seen: list[str] = []
        cursor = None
        while True:
            page = await admins[2].dead_jobs(cursor=cursor, limit=3)
            assert len(page["jobs"]) <= 3
            seen += [j["name"] for j in page["jobs"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert seen == every
        # the job browser's dead listing too
        listed = await admins[0].list_jobs("fd", state="dead", limit=100)
        assert [j["name"] for j in listed["jobs"]] == every
        # and its pending jobs, held on every node, paged through n1
        due = str(int(time.time()) + 3600)
        pending = sorted(f"p{i:02d}" for i in range(10))
        for name in pending:
            code, _ = await asyncio.to_thread(
                nodes[2].send, "POST", "/fp", name=name, sched_at=due
            )
            assert code == 200
        names: list[str] = []
        cursor = None
        while True:
            got = await admins[1].list_jobs(
                "fp", state="pending", cursor=cursor, limit=4
            )
            assert len(got["jobs"]) <= 4
            names += [j["name"] for j in got["jobs"]]
            if (cursor := got["next"]) is None:
                break
        assert names == pending
        with_err = None
        try:
            await admins[1].list_jobs("nothing")
        except AdminError as exc:
            with_err = exc
        assert with_err is not None and with_err.status == 404
        # retried through n1 (not its owner): it runs, and works this time
        out.fail.discard(dname)
        assert await admins[1].retry_dead("fd", dname) == (1, False)

        async def ran_again() -> bool:
            return out.ran(dname) == 3 and (await admins[0].dead_jobs())["total"] == 6

        await _wait_for(ran_again, 20, "the retried dead job's run")
        # a bulk delete goes to every node
        assert await admins[1].delete_dead("fd") == (6, False)
        assert (await admins[2].dead_jobs())["total"] == 0
        with_err = None
        try:
            await admins[0].retry_dead("fd", dname)
        except AdminError as exc:
            with_err = exc
        assert with_err is not None and with_err.status == 404

        # -- cron: added through n0 for a job of n1, fired on n1
        cname = await _owned_by(db, prefix, "n1", b"fc", "c")
        await admins[0].add_cron("fc", cname, "* * * * *")
        scheds = await admins[2].cron_schedules()
        assert [(s["func"], s["name"]) for s in scheds] == [("fc", cname)]
        first = scheds[0]["next_run"]
        await admins[2].run_now("fc", cname)  # through n2: a fire now

        async def fired(count: int) -> bool:
            if out.ran(cname) < count:
                return False
            scheds = await admins[0].cron_schedules()
            return bool(scheds) and scheds[0]["state"] == "pending"

        await _wait_for(lambda: fired(1), 20, "the cron job's first run")
        assert [a for n, a in out.runs if n == cname] == [nodes[1].address]
        scheds = await admins[0].cron_schedules()
        assert scheds[0]["next_run"] >= first  # back at its next fire

        # -- a failing job of n1 counts its failures
        aname = await _owned_by(db, prefix, "n1", b"fa", "a")
        out.fail.add(aname)
        code, _ = await asyncio.to_thread(
            nodes[2].send, "POST", "/fa", name=aname, sched_at="0"
        )
        assert code == 200

        async def failed_twice() -> bool:
            return await _attempts(db, prefix, b"fa", aname) >= 2

        await _wait_for(failed_twice, 30, "two failures of the job")

        # -- kill -9 of n1: its partitions, schedules and counts move
        ran_at_kill = out.ran(aname)
        nodes[1].stop()
        before = await _attempts(db, prefix, b"fa", aname)  # n1 writes no more
        # n1 is still listed live until its lease runs out: a listing
        # through n0 says which node did not answer
        try:
            await admins[0].dead_jobs()
            silent = None
        except AdminError as exc:
            silent = exc
        assert silent is not None and silent.status == 503
        assert "n1" in silent.message, silent.message

        async def n1_gone() -> bool:
            owners = await _owners(db, prefix)
            return "n1" not in owners and sum(owners.values()) == 256

        await _wait_for(n1_gone, LEASE + 10, "n1's partitions taken over")
        live = [admins[0], admins[2]]

        async def schedule_back() -> bool:
            try:
                scheds = await live[1].cron_schedules()
            except AdminError:  # n1 still counted live for a heartbeat
                return False
            return [(s["func"], s["name"]) for s in scheds] == [("fc", cname)]

        await _wait_for(schedule_back, 4 * LEASE, "the schedule on its new owner")
        runs = out.ran(cname)
        await live[0].run_now("fc", cname)
        await _wait_for(lambda: fired(runs + 1), 20, "the cron job's run after kill")
        # still scheduled (a job without its schedule is deleted when done)
        scheds = await live[1].cron_schedules()
        assert scheds and scheds[0]["next_run"] > time.time()
        job = await live[0].job("fc", cname)
        assert job["cron"]["cron"] == "* * * * *"

        async def counted_on() -> bool:
            return await _attempts(db, prefix, b"fa", aname) > before

        await _wait_for(counted_on, 30, "a failure counted by the new owner")
        # restarted from 0 the count would be at most the failures seen
        # since the kill; going on it is ahead by n1's (``before`` >= 2; at
        # most one run in flight at the kill went uncounted)
        now_count = await _attempts(db, prefix, b"fa", aname)
        since = out.ran(aname) - ran_at_kill
        assert now_count > since and now_count >= before + max(1, since - 1)
        detail = await live[1].job("fa", aname)
        assert detail["last_failed_at"] is not None


@pytest.mark.slow
async def test_cron_fires_on_time_on_the_node_that_took_it_over(
    pg_nodes: tuple[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    """The schedule's own fire (no run-now) after a kill -9 of its owner:
    at the next minute boundary, on the node that took its partition over
    (at most a minute plus the failover)."""
    uri, prefix = pg_nodes
    out = Outcomes()
    async with _three_nodes(uri, prefix, tmp_path, out) as (db, nodes, admins):
        cname = await _owned_by(db, prefix, "n1", b"fc", "t")
        while not 5 < time.time() % 60 < 40:  # no fire of n1 before the kill
            await asyncio.sleep(0.5)
        await admins[2].add_cron("fc", cname, "* * * * *")
        listed = [s for s in await admins[0].cron_schedules() if s["name"] == cname]
        assert len(listed) == 1  # on its owner, listed through any node
        nodes[1].stop()
        killed = time.time()

        await _wait_for(lambda: _fired(out, cname), 75 + 3 * LEASE, "a fire")
        assert out.when[0] > killed
        assert all(a != nodes[1].address for _, a in out.runs)
        assert out.when[0] % 60 < 15  # at the minute (generous)


async def _fired(out: Outcomes, name: str) -> bool:
    return out.ran(name) >= 1
