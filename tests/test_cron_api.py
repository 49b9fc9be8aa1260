"""Cron schedules end to end: the JSON API through AdminClient, an
aio-periodic 1.0.0 worker running a cron job, and the CLI, against a real
``python -m periodic_fast -d`` process."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import pytest
from aio_periodic import Client, Transport
from aio_periodic.job import Job as AioJob
from exec_helpers import server_fixtures
from test_cli import periodic
from test_interop_aio import aio_worker, close_aio, wait_until

from periodic_fast import cron
from periodic_fast.admin import AdminClient, AdminError

pytestmark = pytest.mark.timeout(120)

server, addr = server_fixtures()

YEARLY = "0 0 1 1 *"  # one fire a year: the next one is unambiguous


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_api_add_list_remove(addr: str) -> None:
    async def main() -> None:
        admin = AdminClient(addr)
        before = time.time()
        nxt = await admin.add_cron(
            "mail", "digest", "30 2 * * *", tz="Europe/Paris", missed="skip", args="x"
        )
        assert nxt == cron.next_fire("30 2 * * *", "Europe/Paris", before)
        [s] = await admin.cron_schedules("mail")
        assert {k: s[k] for k in ("func", "name", "cron", "tz", "missed")} == {
            "func": "mail",
            "name": "digest",
            "cron": "30 2 * * *",
            "tz": "Europe/Paris",
            "missed": "skip",
        }
        assert s["next_run"] == nxt and s["state"] == "pending"
        assert len(s["next_runs"]) == 5
        runs = [datetime.fromisoformat(r) for r in s["next_runs"]]
        assert runs[0].timestamp() == nxt
        assert all(r.utcoffset() is not None for r in runs)
        assert [(r.hour, r.minute) for r in runs[1:]] == [(2, 30)] * 4 or any(
            r.hour == 3
            for r in runs  # a spring-forward day among them
        )
        assert await admin.cron_schedules("nothing") == []
        ov = await admin.request("GET", "/api/overview")
        assert ov["totals"]["cron"] >= 1
        await admin.remove_cron("mail", "digest")
        assert await admin.cron_schedules("mail") == []
        with pytest.raises(AdminError) as err:
            await admin.remove_cron("mail", "digest")
        assert err.value.status == 404

    run(main())


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ({"name": "n", "cron": "* * * * *"}, "func is required"),
        ({"func": "f", "name": "n"}, "cron is required"),
        ({"func": "f", "name": "n", "cron": "61 * * * *"}, "Bad minute"),
        ({"func": "f", "name": "n", "cron": "* * * *"}, "five expected"),
        ({"func": "f", "name": "n", "cron": "@daily", "tz": "No/Where"}, "time zone"),
        ({"func": "f", "name": "n", "cron": "@daily", "missed": "all"}, "missed"),
        ({"func": "f", "name": "n", "cron": "@daily", "timeout": "9"}, "timeout"),
        ({"func": "f", "name": "n", "cron": "@daily", "timeout": -1}, "timeout"),
        ({"func": "f", "name": "n", "cron": 5}, "cron must be a string"),
        ({"func": "a,b", "name": "n", "cron": "@daily"}, "func name"),
        ({"func": "f" * 256, "name": "n", "cron": "@daily"}, "255 bytes"),
    ],
)
def test_api_bad_input_is_400(addr: str, body: dict[str, Any], why: str) -> None:
    async def main() -> None:
        admin = AdminClient(addr)
        with pytest.raises(AdminError, match=why) as err:
            await admin.request("POST", "/api/cron", body=body)
        assert err.value.status == 400
        assert await admin.cron_schedules() == [] or all(
            s["func"] != "f" for s in await admin.cron_schedules()
        )

    run(main())


def test_aio_worker_runs_a_cron_job_twice(addr: str) -> None:
    """A stock aio-periodic worker: after WORK_DONE the job is back, due at
    the next fire.  Cron is minute-resolution, so each run is made due now
    by a SUBMIT of the same name (which keeps the schedule)."""
    done: list[float] = []

    async def task(job: AioJob) -> str:
        done.append(time.time())
        return "ok"

    async def main() -> None:
        admin = AdminClient(addr)
        nxt = await admin.add_cron("aiocron", "tick", YEARLY, args="payload")
        assert nxt == cron.next_fire(YEARLY, "UTC", time.time())
        client = Client()
        await asyncio.wait_for(client.connect(Transport(addr)), 10)
        try:
            async with aio_worker(addr, {"aiocron": task}):
                for n in (1, 2):
                    await client.submit_job("aiocron", "tick", workload=b"payload")
                    await wait_until(lambda n=n: len(done) >= n, 20, f"run {n}")

                    async def back() -> bool:
                        [s] = await admin.cron_schedules("aiocron")
                        return bool(s["state"] == "pending")

                    await wait_until(back, 10, "the job back to pending")
                    [s] = await admin.cron_schedules("aiocron")
                    assert s["next_run"] == cron.next_fire(YEARLY, "UTC", done[-1])
                    st = await admin.request("GET", "/api/funcs/aiocron")
                    assert st["total_job"] == 1 and st["sched_at"] == s["next_run"]
        finally:
            await close_aio(client)
        await admin.remove_cron("aiocron", "tick")

    run(main())


def test_cli_submit_cron_list_remove(addr: str) -> None:
    r = periodic(
        "submit",
        "clif",
        "clin",
        "--cron",
        "*/5 * * * *",
        "--tz",
        "America/New_York",
        "--missed",
        "skip",
        "-w",
        "data",
        address=addr,
    )
    assert r.returncode == 0, r.stderr
    assert "next run at" in r.stdout
    r = periodic("cron", "list", "clif", "--json", address=addr)
    assert r.returncode == 0, r.stderr
    [s] = json.loads(r.stdout)
    assert (s["cron"], s["tz"], s["missed"]) == (
        "*/5 * * * *",
        "America/New_York",
        "skip",
    )
    r = periodic("cron", "list", address=addr)
    assert "clif" in r.stdout and "*/5 * * * *" in r.stdout
    assert periodic("cron", "remove", "clif", "clin", address=addr).returncode == 0
    r = periodic("cron", "remove", "clif", "clin", address=addr)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no cron" in r.stderr
    assert "no cron schedules" in periodic("cron", "list", "clif", address=addr).stdout


@pytest.mark.parametrize(
    ("args", "code", "why"),
    [
        (["--cron", "@daily", "--later", "5"], 2, "--later"),
        (["--cron", "@daily", "--missed", "never"], 2, "--missed"),
        (["--cron", "99 * * * *"], 1, "Bad minute"),
        (["--cron", "@daily", "--tz", "Atlantis/Capital"], 1, "time zone"),
    ],
)
def test_cli_bad_cron_usage(addr: str, args: list[str], code: int, why: str) -> None:
    r = periodic("submit", "f", "n", *args, address=addr)
    assert r.returncode == code
    assert why in r.stderr
    assert periodic("cron", "list", "f", address=addr).stdout.startswith("no cron")
