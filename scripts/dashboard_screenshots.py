"""Render the dashboard with some activity and save PNGs into docs/img/.

    python scripts/dashboard_screenshots.py [--out docs/img]

Starts a server in this process (memory store), gives it an hour of
*synthetic* per-minute history (fed through the same SeriesBook calls the
scheduler makes, with past times: a real hour would take an hour), then real
activity: jobs submitted, a worker that finishes most and fails some, a
retry policy that sends a flaky func's jobs to the dead set.  Headless
Chromium (tests/cdp_browser.py, the DevTools protocol over a pipe) opens
each tab and saves ``dashboard-overview.png``, ``dashboard-jobs.png``,
``dashboard-dead.png`` and ``dashboard-schedules.png``.  Needs chromium.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout; cdp_browser

from cdp_browser import Browser  # noqa: E402

from periodic_fast.admin import AdminClient, AdminError  # noqa: E402
from periodic_fast.client import Client  # noqa: E402
from periodic_fast.testing import running_server  # noqa: E402
from periodic_fast.worker import Fail, Worker, WorkerJob  # noqa: E402

FUNCS = ("email-send", "resize-image", "report-daily", "webhook-flaky")


def _history(book: Any, now: float) -> None:
    """An hour of plausible per-minute activity, oldest first."""
    rnd = random.Random(20)
    start = (int(now) // 60 - 59) * 60
    for minute in range(59):  # the running minute stays for real activity
        t0 = start + minute * 60
        wave = 1.2 + 0.6 * math.sin(minute / 9)
        for func, base, fail_p, late in (
            (b"email-send", 40, 0.01, 0.05),
            (b"resize-image", 12, 0.04, 0.4),
            (b"report-daily", 2 if minute % 15 == 0 else 0, 0.0, 3.0),
            (b"webhook-flaky", 8, 0.3, 1.2),
        ):
            n = int(base * wave * rnd.uniform(0.6, 1.2))
            for i in range(n):
                t = t0 + i * 59.0 / max(n, 1)
                book.late(
                    func,
                    late * rnd.expovariate(1.0) * (3 if minute in (31, 32) else 1),
                    t,
                )
                if rnd.random() < fail_p:
                    book.failed(func, t + 0.5)
                else:
                    book.done(func, t + 0.5)


async def _activity(address: str) -> None:
    """Real jobs: a worker runs some, fails flaky ones into the dead set."""
    async with AdminClient(address) as admin:
        with contextlib.suppress(AdminError):  # a server without the retry API
            await admin.set_retry_policy("webhook-flaky", max_attempts=1)
        with contextlib.suppress(AdminError):  # a server without the cron API
            # asked first: a POST to an unknown /api/ path would submit a job
            # of the func "api/cron" (the reference's POST /FUNC)
            await admin.request("GET", "/api/cron")
            body = {"func": "report-daily", "name": "nightly", "cron": "30 2 * * *"}
            await admin.request(
                "POST", "/api/cron", body={**body, "tz": "Europe/Paris"}
            )
            body = {"func": "email-send", "name": "digest", "cron": "0 9 * * mon-fri"}
            await admin.request("POST", "/api/cron", body=body)
    async with Client(address) as client:
        later = int(time.time()) + 3600
        for i in range(1, 9):
            await client.submit_job(
                "email-send",
                f"welcome-{i:03d}",
                b'{"to": "user%d@example.com"}' % i,
                sched_at=later + i * 60,
            )
        await client.submit_job("report-daily", "sales", b"", sched_at=later + 86400)
        for i in range(1, 4):
            await client.submit_job("webhook-flaky", f"order-{i}", b'{"order": %d}' % i)
        for i in range(1, 6):
            await client.submit_job("resize-image", f"photo-{i}.jpg", b"800x600")
    worker = Worker(address)

    @worker.func("webhook-flaky")
    async def flaky(job: WorkerJob) -> Fail:
        return Fail()

    @worker.func("resize-image")
    async def resize(job: WorkerJob) -> bytes:
        return b"ok"

    await worker.start(size=4)
    await asyncio.sleep(1.5)
    await worker.shutdown(timeout=2)


def _shoot(url: str, out: Path) -> list[Path]:
    saved = []
    with Browser(width=1360, height=940) as b:
        b.open(url + "/ui#overview")
        b.wait("document.querySelectorAll('#charts .chart-card').length >= 3")
        b.wait("+document.body.dataset.refreshes >= 1")
        saved.append(out / "dashboard-overview.png")
        b.screenshot(saved[-1])

        b.js("location.hash = '#jobs'")
        b.js(
            "(() => { const f = document.getElementById('jobs-form');"
            " f.func.value = 'email-send'; f.prefix.value = 'welcome-';"
            " f.requestSubmit(); })()"
        )
        b.wait("document.querySelectorAll('#jobs tbody tr').length > 0")
        b.js("document.querySelector('#jobs tbody tr:nth-child(2) a').click()")
        b.wait("!!document.getElementById('job-fields')")
        saved.append(out / "dashboard-jobs.png")
        b.screenshot(saved[-1])

        b.js("location.hash = '#dead'")
        b.wait("!!document.querySelector('#dead tbody tr, #dead-result .notice')")
        saved.append(out / "dashboard-dead.png")
        b.screenshot(saved[-1])

        b.js("location.hash = '#schedules'")
        b.wait("!!document.querySelector('#retry, #retry-result .notice')")
        b.wait(
            "!!document.querySelector('#cron, #cron-result .notice, #cron-result p')"
        )
        saved.append(out / "dashboard-schedules.png")
        b.screenshot(saved[-1])
    return saved


async def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    async with running_server(unix=False, name="periodicd-demo") as srv:
        address = srv.addresses[0]
        _history(srv.scheduler._series, time.time())  # noqa: SLF001 - synthetic past
        await _activity(address)
        host_port = address.split("://", 1)[1]
        for path in await asyncio.to_thread(_shoot, f"http://{host_port}", out):
            print(path)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    asyncio.run(main(parser.parse_args().out))
