"""The dashboard in a real browser: headless Chromium driven through the
DevTools protocol (tests/cdp_browser.py) against a real ``periodicd``.

Covered: the charts of the last hour (inline SVG from /api/series, numbers
on hover), the live refresh and its pause on a hidden tab, no resource from
elsewhere, clear messages when an API route answers 404 or 403, the job
browser (search by prefix, pagination, a job's details, run now, delete;
the browse feature's /api/jobs) and the dead set (retry a dead job and see
it run; the retry feature's /api/dead).  A test whose API is not on this
server yet is skipped with the reason.  Skipped without Chromium, except
under ``CI=true``.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from cdp_browser import CHROMIUM, Browser
from test_http_browser import _Worker

from periodic_fast.constants import Command
from periodic_fast.server.app import parse_address
from periodic_fast.testing import ServerProcess

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="module")
def proc() -> Iterator[ServerProcess]:
    if CHROMIUM is None:
        if CI:
            pytest.fail("chromium is required under CI=true (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian package: chromium)")
    with ServerProcess(["-p", ":memory:", "--name", "dash"]) as server:
        yield server


@pytest.fixture
def browser() -> Iterator[Browser]:
    with Browser() as b:
        b.js("1")  # the page target answers
        yield b


def _base(proc: ServerProcess) -> str:
    addr = parse_address(proc.address)
    return f"http://{addr.host}:{addr.port}"


def _http(
    proc: ServerProcess, method: str, path: str, body: Any = None, form: str = ""
) -> tuple[int, Any]:
    addr = parse_address(proc.address)
    conn = http.client.HTTPConnection(addr.host, addr.port, timeout=10)
    try:
        headers = {"Accept": "application/json"}
        data: bytes | None = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif form:
            data = form.encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, (json.loads(raw) if raw.strip() else None)
    finally:
        conn.close()


def _submit(proc: ServerProcess, func: str, name: str, extra: str = "") -> None:
    status, ans = _http(proc, "POST", "/" + quote(func), form=f"name={name}{extra}")
    assert status == 200, ans


def _needs(proc: ServerProcess, path: str, feature: str) -> None:
    """Skip unless ``GET path`` is a route of this server (the feature is
    built by another part of issue 20)."""
    status, ans = _http(proc, "GET", path)
    # an unknown route falls through to GET /FUNC: "unknown func 'api/...'"
    if status == 404 and f"'{path[1:].split('?')[0]}'" in str(ans):
        pytest.skip(f"{path} is not on this server yet ({feature})")


def _serve(worker: _Worker, msgid: int, result: int = Command.WORK_DONE) -> str:
    """Grab one job and answer it with ``result``; the job's name."""
    from periodic_fast import codec

    worker.request(msgid, Command.GRAB_JOB)
    assign = worker.until(Command.JOB_ASSIGN)
    job = codec.decode_job(assign.payload)
    worker.request(assign.msgid or msgid, Command.JOB_ASSIGNED)
    handle = bytes([len(job.func)]) + job.func + bytes([len(job.name)]) + job.name
    worker.request(msgid + 1000, result, handle)
    worker.until(Command.SUCCESS)
    return job.name.decode()


# -- the overview: charts, live refresh --------------------------------------------


def test_charts_live_refresh_and_pause(proc: ServerProcess, browser: Browser) -> None:
    for i in range(4):
        _submit(proc, "resize", f"photo-{i}", "&args=800x600")
    worker = _Worker(proc.address)
    try:
        worker.request(1, Command.CAN_DO, b"\x06resize")
        names = [_serve(worker, 10 + i) for i in range(3)]
        _serve(worker, 20, Command.WORK_FAIL)
    finally:
        worker.close()
    assert len(set(names)) == 3

    browser.open(_base(proc) + "/ui")
    card = "#charts .chart-card[data-func='resize']"
    browser.wait(f'!!document.querySelector("{card}")')
    done = browser.js(
        f"""(() => {{
        const c = document.querySelector("{card} .chart.done");
        return {{label: c.querySelector("svg").getAttribute("aria-label"),
                 hits: c.querySelectorAll("rect.hit").length,
                 bars: c.querySelectorAll("rect.bar").length,
                 last: c.querySelector("rect.hit:last-of-type title").textContent,
                 now: c.querySelector(".cap b").textContent}};
    }})()"""
    )
    assert done["hits"] == 60  # one hover target per minute
    assert done["bars"] == 1  # one minute with activity
    assert "total 3" in done["label"]
    assert done["last"].endswith("3 done / min")  # the number on hover
    assert done["now"] == "3"
    svg = f'document.querySelector("{card} .chart.failed svg")'
    failed = browser.js(svg + ".getAttribute('aria-label')")
    assert "total 1" in failed
    late = browser.js(f'document.querySelector("{card} .chart.late title").textContent')
    assert late.startswith("lateness, last hour: max")

    # the overview fragment refreshes without a reload, and pauses when hidden
    state = "document.getElementById('refresh-state').textContent"
    browser.wait("+document.body.dataset.refreshes >= 2")
    assert browser.js(state).startswith("live")
    hide = (
        "Object.defineProperty(document, 'hidden',"
        " {configurable: true, get: () => %s});"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    browser.js(hide % "true")
    paused = browser.js("+document.body.dataset.refreshes")
    time.sleep(4.5)  # two refresh periods
    assert browser.js("+document.body.dataset.refreshes") == paused
    assert "paused" in browser.js(state)
    browser.js(hide % "false")
    browser.wait(f"+document.body.dataset.refreshes > {paused}")

    # nothing was loaded from elsewhere (the page works offline)
    origins = browser.js(
        "[location.href, ...performance.getEntriesByType('resource').map(e => e.name)]"
        ".map(u => new URL(u).origin)"
    )
    assert set(origins) == {_base(proc)}


def test_missing_or_refused_routes_leave_a_message(
    proc: ServerProcess, browser: Browser
) -> None:
    browser.fake("/api/dead", 404, {"err": "unknown func 'api/dead'"})
    browser.fake("/api/retry", 404, {"err": "unknown func 'api/retry'"})
    browser.fake("/api/cron", 403, {"err": "this request needs the admin role"})
    browser.open(_base(proc) + "/ui#dead")
    msg = browser.wait(
        "document.querySelector('#dead-result .notice')?.textContent", timeout=10
    )
    assert "not available on this server" in msg
    browser.open(_base(proc) + "/ui#schedules")
    browser.wait("!!document.querySelector('#cron-result .notice')")
    notes = browser.js(
        "[...document.querySelectorAll('#tab-schedules .notice')]"
        ".map(n => [n.dataset.status, n.className, n.textContent])"
    )
    assert [n[0] for n in notes] == ["404", "403"]
    assert "bad" in notes[1][1] and "needs the admin role" in notes[1][2]
    # the rest of the page still works
    browser.js("location.hash = '#overview'")
    browser.wait("!!document.querySelector('#funcs')")


# -- the job browser (needs /api/jobs) ----------------------------------------------


def test_job_browser_search_open_run_delete(
    proc: ServerProcess, browser: Browser
) -> None:
    _needs(proc, "/api/jobs?func=x", "the job browser's API")
    later = int(time.time()) + 3600
    for name in ("welcome-a", "welcome-b", "welcome-c", "weekly", "other"):
        _submit(proc, "mail", name, f"&sched_at={later}&args=hello%20{name}")
    browser.open(_base(proc) + "/ui#jobs")
    browser.js(
        "(() => { const f = document.getElementById('jobs-form');"
        " f.func.value = 'mail'; f.prefix.value = 'welcome-';"
        " f.requestSubmit(); })()"
    )
    browser.wait("document.querySelectorAll('#jobs tbody tr').length === 3")
    names = browser.js(
        "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.name)"
    )
    assert sorted(names) == ["welcome-a", "welcome-b", "welcome-c"]

    # a row's details
    browser.js("document.querySelector('#jobs tr[data-name=\"welcome-b\"] a').click()")
    field = "document.querySelector('#job-fields dd[data-field=\"{}\"]')?.textContent"
    assert browser.wait(field.format("name")) == "welcome-b"
    assert browser.js(field.format("state")) == "pending"
    assert "hello welcome-b" in browser.js(
        "document.querySelector('#job-detail pre.args').textContent"
    )

    # run now: due at once
    browser.js(
        'document.querySelector(\'#jobs tr[data-name="welcome-b"]'
        ' button[data-act="run-now"]\').click()'
    )
    for _ in range(50):
        status, job = _http(proc, "GET", "/api/job?func=mail&name=welcome-b")
        if status == 200 and job["sched_at"] <= time.time() + 1:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"run now did not move the job: {job}")

    # delete (the page asks first; the browser accepts)
    browser.js(
        'document.querySelector(\'#jobs tr[data-name="welcome-c"]'
        ' button[data-act="delete"]\').click()'
    )
    browser.wait("document.querySelectorAll('#jobs tbody tr').length === 2")
    assert any("welcome-c" in d for d in browser.dialogs)
    assert _http(proc, "GET", "/api/job?func=mail&name=welcome-c")[0] == 404

    # pagination: a page of one row has a next page
    browser.js("periodicDashboard.loadJobs('')")  # the form's own params
    status, ans = _http(proc, "GET", "/api/jobs?func=mail&prefix=welcome-&limit=1")
    assert status == 200 and ans["next"]


# -- the dead set (needs /api/dead and /api/retry) ------------------------------------


def test_dead_job_retried_from_the_page_runs(
    proc: ServerProcess, browser: Browser
) -> None:
    _needs(proc, "/api/dead", "the retry feature's dead set")
    status, ans = _http(
        proc, "POST", "/api/retry", {"func": "flaky", "max_attempts": 1}
    )
    assert status == 200, ans
    _submit(proc, "flaky", "job-1", "&args=boom")
    worker = _Worker(proc.address)
    try:
        worker.request(1, Command.CAN_DO, b"\x05flaky")
        assert _serve(worker, 10, Command.WORK_FAIL) == "job-1"
        for _ in range(50):
            dead = _http(proc, "GET", "/api/dead?func=flaky")[1]
            if dead["jobs"]:
                break
            time.sleep(0.1)
        assert [d["name"] for d in dead["jobs"]] == ["job-1"]

        browser.open(_base(proc) + "/ui#dead")
        row = "#dead tr[data-func='flaky'][data-name='job-1']"
        browser.wait(f'!!document.querySelector("{row}")')
        assert browser.js("document.getElementById('dead-total').textContent") == "1"
        browser.js(f'document.querySelector("{row} button[data-act=retry]").click()')
        # the job runs again: the worker gets it and finishes it
        assert _serve(worker, 30) == "job-1"
        browser.wait("!!document.querySelector('#dead-result p.muted')")  # empty now
    finally:
        worker.close()
    assert _http(proc, "GET", "/api/dead?func=flaky")[1]["total"] == 0
    series = _http(proc, "GET", "/api/series?func=flaky")[1]["funcs"]["flaky"]
    assert sum(series["done"]) == 1 and sum(series["failed"]) == 1


# -- cron schedules (needs /api/cron) ------------------------------------------------


def test_cron_schedules_show_their_next_runs(
    proc: ServerProcess, browser: Browser
) -> None:
    """A schedule made through the API appears in the Retry & cron tab with
    its expression, zone and next runs (the server's, not the page's)."""
    _needs(proc, "/api/cron", "cron")
    status, ans = _http(
        proc,
        "POST",
        "/api/cron",
        body={
            "func": "report",
            "name": "nightly",
            "cron": "30 2 * * *",
            "tz": "Europe/Paris",
        },
    )
    assert status == 200, ans
    _, listed = _http(proc, "GET", "/api/cron")
    runs = listed["schedules"][0]["next_runs"]
    browser.open(_base(proc) + "/ui#schedules")
    browser.wait(
        "!!document.querySelector('#cron tr[data-name=\"nightly\"]')", timeout=10
    )
    cells = browser.js(
        "[...document.querySelectorAll('#cron tr[data-name=\"nightly\"] td')]"
        ".map(td => td.textContent)"
    )
    assert cells[:5] == ["report", "nightly", "30 2 * * *", "Europe/Paris", "once"]
    shown = browser.js(
        "[...document.querySelectorAll('#cron tr[data-name=\"nightly\"] li')]"
        ".map(li => li.textContent)"
    )
    assert shown == runs and all("02:30:00+0" in r for r in runs)
