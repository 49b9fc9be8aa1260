"""The dead set: paging, retry and delete (one, per func, all; bounded bulk
slices), its bound, DROP_FUNC, restarts on every store, and the JSON API
from AdminClient, the CLI and raw HTTP (rights with an auth file, bad
input); real aio-periodic 1.0.0 workers failing jobs fill it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aio_periodic import Client as AioClient
from aio_periodic import Transport
from aio_periodic.job import Job as AioJob
from aio_periodic.rsp import FailResponse
from test_interop_aio import aio_worker, close_aio, wait_until
from test_retry_policy import RHarness
from test_scheduler import FakeConn
from test_store import STORES

from periodic_fast import sched_retry
from periodic_fast.admin import AdminClient, AdminError
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.retry import RetryPolicy
from periodic_fast.scheduler import Scheduler
from periodic_fast.store import Store
from periodic_fast.testing import running_server

pytestmark = pytest.mark.timeout(120)

ONCE = RetryPolicy(max_attempts=1, backoff=1, factor=1, cap=1, jitter=0)


def bury(h: RHarness, w: FakeConn, func: bytes, *names: bytes) -> None:
    """Submit, run and fail each job once (dead at once under ONCE)."""
    for i, name in enumerate(names):
        h.submit(func, name, b"w-" + name)
        got = w.grab(100 + i)
        assert [p for p in got if p.command == C.JOB_ASSIGN], got
        w.assigned(100 + i)
        assert [p.command for p in w.req(C.WORK_FAIL, func, name)] == [C.SUCCESS]


@pytest.fixture
def h() -> RHarness:
    return RHarness(ONCE)


def keys(jobs: list[Any]) -> list[tuple[bytes, bytes]]:
    return [(d.job.func, d.job.name) for d in jobs]


# -- sans-I/O ---------------------------------------------------------------------


def test_paging_filters_and_totals(h: RHarness) -> None:
    w = h.worker(b"f", b"g")
    bury(h, w, b"g", b"x1", b"a2")
    bury(h, w, b"f", b"b", b"a1", b"a2", b"c")
    s = h.s
    page, nxt, total = s.dead_jobs(limit=4)
    assert total == 6 and nxt is not None
    assert keys(page) == [(b"f", b"a1"), (b"f", b"a2"), (b"f", b"b"), (b"f", b"c")]
    page2, nxt2, _ = s.dead_jobs(cursor=nxt, limit=4)
    assert keys(page2) == [(b"g", b"a2"), (b"g", b"x1")] and nxt2 is None
    page, _, total = s.dead_jobs(b"f", b"a")
    assert keys(page) == [(b"f", b"a1"), (b"f", b"a2")] and total == 2
    page, _, total = s.dead_jobs(None, b"a2")
    assert keys(page) == [(b"f", b"a2"), (b"g", b"a2")] and total == 2
    page, _, total = s.dead_jobs(b"g")
    assert keys(page) == [(b"g", b"a2"), (b"g", b"x1")] and total == 2
    assert s.dead_jobs(b"nope") == ([], None, 0)
    # a cursor that was deleted meanwhile still pages on
    s.delete_dead(b"f", b"c", h.now)
    page, _, _ = s.dead_jobs(cursor=(b"f", b"c"), limit=1)
    assert keys(page) == [(b"g", b"a2")]


def test_retry_one_brings_it_back_due_now(h: RHarness) -> None:
    w = h.worker(b"f")
    bury(h, w, b"f", b"a")
    h.advance(30)
    assert h.s.retry_dead(b"f", b"a", h.now) == (1, False)
    job, _ = h.s.job(b"f", b"a") or (None, None)
    assert job is not None and job.sched_at == int(h.now) and job.workload == b"w-a"
    assert h.s.dead_jobs()[2] == 0
    assert h.s.job_failure(b"f", b"a") is None  # attempts reset
    assert not (h.store.load().extras or {}).get("dead")
    assert h.s.retry_dead(b"f", b"a", h.now) == (0, False)  # gone from the set
    # dispatched like any due job
    got = w.grab(7)
    assert [p.command for p in got if p.command == C.JOB_ASSIGN] == [C.JOB_ASSIGN]


def test_bulk_retry_and_delete_go_in_bounded_slices(
    h: RHarness, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sched_retry, "BULK_SLICE", 2)
    w = h.worker(b"f", b"g")
    bury(h, w, b"f", b"1", b"2", b"3")
    bury(h, w, b"g", b"4", b"5")
    assert h.s.retry_dead(b"f", None, h.now) == (2, True)
    assert h.s.retry_dead(b"f", None, h.now) == (1, False)
    assert h.s.dead_jobs()[2] == 2
    assert h.s.delete_dead(None, None, h.now) == (2, False)
    assert h.s.dead_jobs()[2] == 0
    assert h.s.delete_dead(None, None, h.now) == (0, False)


def test_the_bound_evicts_the_oldest() -> None:
    h = RHarness(ONCE, max_dead=3)
    w = h.worker(b"f")
    for name in (b"a", b"b", b"c", b"d", b"e"):
        bury(h, w, b"f", name)
        h.advance(1)
    page, _, total = h.s.dead_jobs()
    assert keys(page) == [(b"f", b"c"), (b"f", b"d"), (b"f", b"e")] and total == 3
    c = h.s.counters()
    assert (c["dead"], c["dead_evicted"], c["dead_jobs"]) == (5, 2, 3)
    stored = (h.store.load().extras or {})["dead"]
    assert sorted(n for _, n, _ in stored) == [b"c", b"d", b"e"]
    with pytest.raises(ValueError):
        RHarness(ONCE, max_dead=0)


def test_drop_func_forgets_its_dead_jobs_and_attempts_not_its_policy() -> None:
    h = RHarness(ONCE)
    own = RetryPolicy(max_attempts=5)
    h.s.set_retry_policy(b"g", own, h.now)
    w = h.worker(b"f", b"g", slots=[])
    bury(h, w, b"f", b"a")
    h.submit(b"g", b"b")
    w.grab(50)
    w.assigned(50)
    w.req(C.WORK_FAIL, b"g", b"b")  # one failure of five: attempts kept
    bury(h, w, b"f", b"c")
    assert h.s.job_failure(b"g", b"b") is not None
    h.disconnect(w)
    c = h.client()
    assert [p.command for p in c.req(C.DROP_FUNC, b"f")] == [C.SUCCESS]
    assert h.s.dead_jobs()[2] == 0
    assert h.s.retry_policy(b"g") == own
    assert [p.command for p in c.req(C.DROP_FUNC, b"g")] == [C.SUCCESS]
    assert h.s.job_failure(b"g", b"b") is None
    extras = h.store.load().extras or {}
    assert not extras.get("dead") and not extras.get("attempt")
    assert [f for f, _, _ in extras["policy"]] == [b"g"]


@pytest.fixture(params=sorted(STORES))
def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[Store, Callable[[], Store]]]:
    store, reopen = STORES[request.param](tmp_path)
    opened = [store]

    def tracked_reopen() -> Store:
        opened.append(reopen())
        return opened[-1]

    yield store, tracked_reopen
    for each in opened:
        each.close()


def test_the_dead_set_survives_a_restart(
    pair: tuple[Store, Callable[[], Store]],
) -> None:
    store, reopen = pair
    now = 1_700_000_000.0
    s = Scheduler(store, now, retry_policy=ONCE, retry_random=lambda: 0.0)
    sent: list[bytes] = []
    s.connect(1, 2, None, sent.append, lambda: None, now)
    from periodic_fast.codec import encode_payload

    def req(cmd: int, *fields: Any, msgid: int = 1) -> None:
        s.handle(1, msgid, cmd, encode_payload(cmd, *fields), now)

    req(C.CAN_DO, b"f")
    s.set_retry_policy(b"f", RetryPolicy(max_attempts=2, backoff=60), now)
    for i, name in enumerate((b"a", b"b")):
        s.submit(Job(b"f", name, b"\x00\n" + name, int(now), 3, 9), now)
        req(C.GRAB_JOB, msgid=10 + i)
        req(C.JOB_ASSIGNED, msgid=10 + i)
        req(C.WORK_FAIL, b"f", name)
    # a: failed once more -> dead; b: one failure, still live
    req(C.GRAB_JOB, msgid=20)
    s.tick(now + 61)
    now += 61
    s.handle(1, 20, C.JOB_ASSIGNED, b"", now)
    s.handle(1, 21, C.WORK_FAIL, encode_payload(C.WORK_FAIL, b"f", b"a"), now)
    assert s.dead_jobs()[2] == 1
    store.flush()
    store2 = reopen()
    s2 = Scheduler(store2, now, retry_policy=ONCE)
    [d], _, _ = s2.dead_jobs()
    assert d.job == Job(b"f", b"a", b"\x00\na", d.job.sched_at, 3, 9)
    assert (d.failure.attempts, d.failure.reason) == (2, "fail")
    assert d.failure.worker == "conn 1"
    assert s2.retry_policy(b"f").max_attempts == 2
    info = s2.job_failure(b"f", b"b")
    assert info is not None and info["attempts"] == 1
    assert s2.retry_dead(b"f", b"a", now) == (1, False)
    store2.flush()
    s3 = Scheduler(reopen(), now)
    assert s3.dead_jobs()[2] == 0
    assert s3.job(b"f", b"a") is not None


# -- the JSON API -----------------------------------------------------------------


async def _bury_over_the_wire(address: str, names: list[str]) -> None:
    """A raw worker connection failing each job once (policy ONCE)."""
    from periodic_fast.client import Client
    from periodic_fast.worker import Worker

    failed: list[str] = []

    async def boom(job: Any) -> None:
        failed.append(job.name)
        raise RuntimeError("boom")

    async with Client(address) as c, Worker(address) as w:
        await w.add_func("f", boom)
        for name in names:
            await c.submit_job("f", name, b"args-" + name.encode())
        await w.start(2)
        for _ in range(200):
            if len(failed) >= len(names):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # the last WORK_FAIL reaches the server
    assert sorted(failed) == sorted(names)


async def test_admin_client_round_trip() -> None:
    async with running_server(unix=False, retry_policy=ONCE) as srv:
        addr = srv.addresses[0]
        admin = AdminClient(addr)
        got = await admin.retry_policies()
        assert got == {"default": ONCE.to_dict(), "funcs": {}}
        p = await admin.set_retry_policy("f", max_attempts=1, backoff=3)
        assert (p["max_attempts"], p["backoff"]) == (1, 3.0)
        ref = await admin.set_retry_policy("g", preset="reference")
        assert ref["max_attempts"] == 0 and ref["backoff"] == 1.0
        got = await admin.retry_policies()
        assert sorted(got["funcs"]) == ["f", "g"]
        await admin.reset_retry_policy("g")
        with pytest.raises(AdminError) as err:
            await admin.reset_retry_policy("g")
        assert err.value.status == 404
        await _bury_over_the_wire(addr, ["j1", "j2", "j3"])
        page = await admin.dead_jobs("f", limit=2)
        assert page["total"] == 3 and page["next"]
        assert [d["name"] for d in page["jobs"]] == ["j1", "j2"]
        d = page["jobs"][0]
        assert d["args_preview"] == "args-j1" and d["args_size"] == 7
        assert d["reason"] == "fail" and d["attempts"] == 1
        assert d["worker"].startswith("conn ")
        page2 = await admin.dead_jobs("f", cursor=page["next"], limit=2)
        assert [d["name"] for d in page2["jobs"]] == ["j3"] and page2["next"] is None
        # the job browser lists the same dead set, with its own cursors
        listed = await admin.list_jobs("f", state="dead", limit=2)
        assert [(j["name"], j["state"]) for j in listed["jobs"]] == [
            ("j1", "dead"),
            ("j2", "dead"),
        ]
        assert listed["jobs"][0]["attempts"] == 1 and listed["next"]
        rest = await admin.list_jobs("f", state="dead", cursor=listed["next"])
        assert [j["name"] for j in rest["jobs"]] == ["j3"] and rest["next"] is None
        assert await admin.retry_dead("f", "j1") == (1, False)
        assert await admin.delete_dead("f", "j2") == (1, False)
        with pytest.raises(AdminError) as err:
            await admin.delete_dead("f", "j2")
        assert err.value.status == 404
        assert await admin.delete_dead() == (1, False)
        assert (await admin.dead_jobs())["total"] == 0
        overview = await admin.request("GET", "/api/overview")
        assert overview["retry"]["funcs"]["f"]["max_attempts"] == 1
        assert overview["retry"]["dead"] == 3
        metrics = await _metrics(addr)
        assert "periodic_jobs_dead_total 3.0" in metrics
        assert "periodic_dead_jobs 0.0" in metrics


async def _metrics(addr: str) -> str:
    host, port = addr.removeprefix("tcp://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    head = f"GET /metrics HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n"
    writer.write(head.encode() + b"\r\n")
    data = await reader.read()
    writer.close()
    return data.decode()


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/api/retry", {"max_attempts": -1}, 400, "max_attempts"),
        ("POST", "/api/retry", {"func": "f", "jitter": 2}, 400, "jitter"),
        ("POST", "/api/retry", {"func": "f", "backoff": "x"}, 400, "number"),
        ("POST", "/api/retry", {"func": "f", "tries": 3}, 400, "unknown"),
        ("POST", "/api/retry", {"func": "a,b", "cap": 3}, 400, "func name"),
        ("POST", "/api/retry", {"func": 5}, 400, "func must be a string"),
        ("POST", "/api/retry", {"preset": "fast"}, 400, "preset"),
        ("DELETE", "/api/retry?func=nope", None, 404, "no retry policy"),
        ("POST", "/api/dead/retry", {}, 400, "all"),
        ("POST", "/api/dead/retry", {"name": "x"}, 400, "needs its func"),
        ("POST", "/api/dead/delete", {"all": "yes"}, 400, "true or false"),
        ("POST", "/api/dead/delete", {"all": True, "name": "x"}, 400, "func"),
        ("GET", "/api/dead?limit=501", None, 400, "limit"),
        ("GET", "/api/dead?cursor=%%%", None, 400, "cursor"),
    ],
)
async def test_bad_input_gets_400(
    method: str, path: str, body: Any, status: int, message: str
) -> None:
    async with running_server(unix=False) as srv:
        admin = AdminClient(srv.addresses[0])
        path, _, query = path.partition("?")
        q = dict(p.split("=", 1) for p in query.split("&")) if query else None
        with pytest.raises(AdminError) as err:
            await admin.request(method, path, query=q, body=body)
        assert err.value.status == status
        assert message in err.value.message


AUTH = b"""\
client  web     web-tok   f
admin   ops     ops-tok   -
"""


async def test_a_non_admin_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "auth"
    path.write_bytes(AUTH)
    async with running_server(unix=False, auth_file=path) as srv:
        addr = srv.addresses[0]
        web = AdminClient(addr, token="web-tok")
        for call in (
            web.retry_policies(),
            web.set_retry_policy("f", max_attempts=3),
            web.dead_jobs(),
            web.delete_dead(),
        ):
            with pytest.raises(AdminError) as err:
                await call
            assert err.value.status == 403
        ops = AdminClient(addr, token="ops-tok")
        assert (await ops.set_retry_policy("f", max_attempts=3))["max_attempts"] == 3
        with pytest.raises(AdminError) as err:
            await AdminClient(addr).retry_policies()
        assert err.value.status == 401


def periodic(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "periodic_fast", "-H", address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"},
    )


async def test_cli() -> None:
    async with running_server(unix=False, retry_policy=ONCE) as srv:
        addr = srv.addresses[0]

        async def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(periodic, addr, *args)

        r = await cli("retry", "set", "f", "--max-attempts", "1", "--backoff", "2")
        assert r.returncode == 0, r.stderr
        r = await cli("retry", "set", "--reference")
        assert r.returncode == 0, r.stderr
        r = await cli("retry", "show")
        assert r.returncode == 0 and "(default)" in r.stdout and "unlimited" in r.stdout
        assert any(line.startswith("f ") for line in r.stdout.splitlines())
        r = await cli("retry", "show", "--json")
        assert json.loads(r.stdout)["funcs"]["f"]["backoff"] == 2.0
        r = await cli("retry", "set", "f", "--jitter", "3")
        assert r.returncode == 2 and "jitter" in r.stderr  # typer's range check
        r = await cli("retry", "set", "f")
        assert r.returncode == 2 and "nothing to set" in r.stderr
        r = await cli("retry", "reset", "nope")
        assert r.returncode == 1
        assert r.stderr.count("\n") == 1 and "no retry policy" in r.stderr
        await _bury_over_the_wire(addr, ["a", "b", "c"])
        r = await cli("dead", "list", "--func", "f", "--limit", "2")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0].startswith("f\ta\t1 attempt(s)\tfail")
        assert "3 dead job(s); more: --cursor" in lines[-1]
        r = await cli("dead", "retry", "f", "a")
        assert (r.returncode, r.stdout.strip()) == (0, "1 job(s) retried")
        r = await cli("dead", "retry", "f")
        assert r.returncode == 2
        r = await cli("dead", "delete", "--all")
        assert (r.returncode, r.stdout.strip()) == (0, "2 job(s) deleted")
        r = await cli("dead", "list", "--json")
        assert json.loads(r.stdout) == {"jobs": [], "next": None, "total": 0}


# -- real aio-periodic 1.0.0 workers ----------------------------------------------


async def test_aio_workers_failing_jobs_end_in_the_dead_set() -> None:
    policy = RetryPolicy(max_attempts=3, backoff=1, factor=1, cap=1, jitter=0)
    async with running_server(unix=False, retry_policy=policy) as srv:
        addr = srv.addresses[0]
        runs: list[tuple[str, float]] = []

        async def always_fails(job: AioJob) -> Any:
            runs.append((job.name, time.time()))
            return FailResponse()

        client = AioClient()
        await asyncio.wait_for(client.connect(Transport(addr)), 10)
        try:
            async with aio_worker(addr, {"bad": always_fails}, size=2):
                for name in ("x", "y"):
                    assert await client.submit_job("bad", name, b"data") is True
                admin = AdminClient(addr)

                async def both_dead() -> bool:
                    return (await admin.dead_jobs("bad"))["total"] == 2

                await wait_until(both_dead, 40, "both jobs in the dead set")
        finally:
            await close_aio(client)
        assert sorted(n for n, _ in runs) == ["x"] * 3 + ["y"] * 3
        page = await admin.dead_jobs("bad")
        for d in page["jobs"]:
            assert (d["attempts"], d["reason"], d["args_size"]) == (3, "fail", 4)
        status = await admin.request("GET", "/api/funcs/bad")
        assert (status["total_job"], status["processing"]) == (0, 0)
        counters = (await admin.request("GET", "/api/overview"))["counters"]
        assert (counters["fail"], counters["retried"], counters["dead"]) == (6, 4, 2)
