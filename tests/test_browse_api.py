"""The job browser end to end: the JSON API, AdminClient and ``periodic jobs``
against a real server process; bad input; rights with an auth file."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from periodic_fast.admin import AdminClient, AdminError
from periodic_fast.client import Client
from periodic_fast.testing import ServerProcess

pytestmark = pytest.mark.timeout(120)

AUTH = b"""\
client  web     web-tok   -
admin   ops     ops-tok   -
"""


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess() as proc:
        yield proc


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


async def _fill(address: str, func: str, n: int, at: int) -> None:
    async with Client(address) as c:
        for i in range(n):
            await c.submit_job(func, f"job-{i:04d}", f"a{i}".encode(), sched_at=at)


def cli(
    address: str, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    extra = ["--client-name", "x", "--client-token", token] if token else []
    return subprocess.run(
        [sys.executable, "-m", "periodic_fast", "-H", address, *extra, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_list_show_act_through_admin_client(server: ServerProcess) -> None:
    far = int(time.time()) + 3600

    async def main() -> None:
        await _fill(server.address, "api", 30, far)
        admin = AdminClient(server.address)
        page = await admin.list_jobs("api", state="pending", limit=10)
        assert [j["name"] for j in page["jobs"]] == [f"job-{i:04d}" for i in range(10)]
        assert page["jobs"][0] == {
            "func": "api",
            "name": "job-0000",
            "state": "pending",
            "sched_at": far,
            "count": 0,
            "timeout": 0,
            "attempts": 0,
            "args_size": 2,
        }
        names = []
        cursor = None
        while True:
            page = await admin.list_jobs("api", limit=7, cursor=cursor)
            names += [j["name"] for j in page["jobs"]]
            cursor = page["next"]
            if cursor is None:
                break
        assert names == [f"job-{i:04d}" for i in range(30)]
        page = await admin.list_jobs("api", prefix="job-002")
        assert len(page["jobs"]) == 10 and page["next"] is None
        page = await admin.list_jobs("api", due_to=far - 1)
        assert page == {"jobs": [], "next": None}
        assert (await admin.list_jobs("api", state="dead"))["jobs"] == []
        assert (await admin.list_jobs("api", state="running"))["jobs"] == []
        job = await admin.job("api", "job-0003")
        assert job["args_preview"] == "a3" and job["last_failed_at"] is None
        assert job["cron"] is None and job["last_worker"] is None
        # reschedule, run-now, delete
        await admin.reschedule("api", "job-0001", far + 60)
        assert (await admin.job("api", "job-0001"))["sched_at"] == far + 60
        await admin.run_now("api", "job-0002")
        assert (await admin.job("api", "job-0002"))["sched_at"] <= time.time() + 1
        await admin.delete_job("api", "job-0004")
        with pytest.raises(AdminError) as err:
            await admin.job("api", "job-0004")
        assert err.value.status == 404
        for call in (
            admin.run_now("api", "nope"),
            admin.reschedule("api", "nope", far),
            admin.delete_job("api", "nope"),
        ):
            with pytest.raises(AdminError) as err:
                await call
            assert err.value.status == 404

    run(main())


def test_run_now_dispatches_and_a_running_job_is_409(server: ServerProcess) -> None:
    far = int(time.time()) + 3600

    async def main() -> None:
        admin = AdminClient(server.address)
        async with Client(server.address) as c:
            await c.submit_job("live", "j1", sched_at=far)
        from periodic_fast.worker import Worker

        got: asyncio.Queue[str] = asyncio.Queue()
        release = asyncio.Event()

        async def handler(job):  # type: ignore[no-untyped-def]
            await got.put(job.name)
            await release.wait()
            return b"ok"

        worker = Worker(server.address)
        await worker.connect()
        await worker.add_func("live", handler)
        await worker.start(1)
        try:
            await asyncio.sleep(0.3)
            assert got.empty()
            await admin.run_now("live", "j1")
            assert await asyncio.wait_for(got.get(), 10) == "j1"
            page = await admin.list_jobs("live", state="running")
            assert [j["name"] for j in page["jobs"]] == ["j1"]
            assert page["jobs"][0]["state"] == "running"
            with pytest.raises(AdminError) as err:
                await admin.run_now("live", "j1")
            assert err.value.status == 409
            with pytest.raises(AdminError) as err:
                await admin.reschedule("live", "j1", far)
            assert err.value.status == 409
        finally:
            release.set()
            await worker.shutdown(5)
            await worker.close()

    run(main())


def test_bad_input_is_400(server: ServerProcess) -> None:
    async def main() -> None:
        await _fill(server.address, "bad", 3, int(time.time()) + 60)
        admin = AdminClient(server.address)
        cases = [
            ("GET", "/api/jobs", {}, None, "func is required"),
            ("GET", "/api/jobs", {"func": "bad", "state": "zombie"}, None, "state"),
            ("GET", "/api/jobs", {"func": "bad", "limit": "0"}, None, "limit"),
            ("GET", "/api/jobs", {"func": "bad", "limit": "501"}, None, "limit"),
            ("GET", "/api/jobs", {"func": "bad", "limit": "x"}, None, "limit"),
            ("GET", "/api/jobs", {"func": "bad", "cursor": "!!"}, None, "cursor"),
            ("GET", "/api/jobs", {"func": "bad", "due_from": "soon"}, None, "due_from"),
            ("GET", "/api/job", {"func": "bad"}, None, "name is required"),
            (
                "POST",
                "/api/job/reschedule",
                None,
                {"func": "bad", "name": "job-0000"},
                "sched_at",
            ),
            ("POST", "/api/job/run-now", None, {"func": "bad"}, "name"),
            ("POST", "/api/job/delete", None, {"name": "x"}, "func"),
        ]
        for method, path, query, body, needle in cases:
            with pytest.raises(AdminError) as err:
                await admin.request(method, path, query=query, body=body)
            assert err.value.status == 400, (path, query, body)
            assert needle in err.value.message, (needle, err.value.message)
        with pytest.raises(AdminError) as err:
            await admin.list_jobs("no-such-func")
        assert err.value.status == 404

    run(main())


def test_cli(server: ServerProcess) -> None:
    addr = server.address
    far = int(time.time()) + 7200
    run(_fill(addr, "cli", 12, far))
    out = cli(addr, "jobs", "list", "cli", "--limit", "5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == [
        "NAME",
        "STATE",
        "SCHEDAT",
        "COUNT",
        "TIMEOUT",
        "ATTEMPTS",
        "ARGS",
    ]
    assert [ln.split()[0] for ln in lines[1:]] == [f"job-{i:04d}" for i in range(5)]
    assert "--cursor" in out.stderr
    cursor = out.stderr.split("--cursor", 1)[1].split()[0]
    out = cli(addr, "jobs", "list", "cli", "--cursor", cursor, "--json")
    page = json.loads(out.stdout)
    assert [j["name"] for j in page["jobs"]] == [f"job-{i:04d}" for i in range(5, 12)]
    out = cli(addr, "jobs", "show", "cli", "job-0001")
    assert out.returncode == 0 and "args_preview" in out.stdout and "a1" in out.stdout
    assert (
        cli(addr, "jobs", "reschedule", "cli", "job-0001", "--in", "100").returncode
        == 0
    )
    job = json.loads(cli(addr, "jobs", "show", "cli", "job-0001", "--json").stdout)
    assert abs(job["sched_at"] - (time.time() + 100)) < 5
    iso = "2040-01-01T00:00:00+00:00"
    assert (
        cli(addr, "jobs", "reschedule", "cli", "job-0001", "--at", iso).returncode == 0
    )
    job = json.loads(cli(addr, "jobs", "show", "cli", "job-0001", "--json").stdout)
    assert job["sched_at"] == 2208988800
    assert cli(addr, "jobs", "run-now", "cli", "job-0002").returncode == 0
    assert cli(addr, "jobs", "delete", "cli", "job-0003").returncode == 0
    out = cli(addr, "jobs", "show", "cli", "job-0003")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "404" in out.stderr
    out = cli(addr, "jobs", "list", "cli", "--state", "zombie")
    assert out.returncode == 2 and "--state" in out.stderr
    out = cli(addr, "jobs", "list", "cli", "--due-from", "whenever")
    assert out.returncode == 2 and "--due-from" in out.stderr
    out = cli(addr, "jobs", "reschedule", "cli", "job-0001")
    assert out.returncode == 2


def test_auth_needs_the_admin_role(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_bytes(AUTH)
    with ServerProcess(["--auth-file", str(auth)]) as proc:

        async def main() -> None:
            admin = AdminClient(proc.address, token="ops-tok")
            web = AdminClient(proc.address, token="web-tok")
            anon = AdminClient(proc.address)
            assert (await admin.list_jobs("nothing", state="dead"))["jobs"] == []
            for who, status in ((web, 403), (anon, 401)):
                with pytest.raises(AdminError) as err:
                    await who.list_jobs("nothing", state="dead")
                assert err.value.status == status
                with pytest.raises(AdminError) as err:
                    await who.delete_job("f", "n")
                assert err.value.status == status

        run(main())
        out = cli(proc.address, "jobs", "list", "x", "--state", "dead", token="web-tok")
        assert out.returncode == 1 and "403" in out.stderr
