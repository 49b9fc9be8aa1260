"""``periodicd --log-format json`` (issue 19): one JSON object per line with
the stable keys ``time``, ``level``, ``logger``, ``event``; a record's
``extra=`` fields (func, conn, peer) become keys of their own.  Plain text
stays the default."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest

from periodic_fast.cli_server import _setup_logging
from periodic_fast.client import Client
from periodic_fast.testing import ServerProcess

pytestmark = pytest.mark.timeout(120)

_KEYS = {"time", "level", "logger", "event"}


def _ping(address: str) -> None:
    async def main() -> None:
        async with Client(address, reconnect=False, timeout=10) as client:
            await client.ping()

    asyncio.run(main())


def _wait_for(text: str, proc: ServerProcess, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.output() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert text in proc.output(), proc.output()


def test_every_line_of_a_server_run_is_json(tmp_path: Path) -> None:
    """Start (build line, store, listening), a client, SIGHUP, stop: every
    line parses, has the stable keys, a parseable ISO time and a level."""
    proc = ServerProcess(
        ["-p", f"file://{tmp_path / 'j.db'}", "--log-format", "json", "--log", "debug"]
    )
    with proc:
        _ping(proc.address)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGHUP)
        _wait_for("SIGHUP: reloaded", proc)
        assert proc.stop() == 0
        output = proc.output()
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) >= 4, output
    for line in lines:
        record = json.loads(line)  # every line, not only most
        assert _KEYS <= record.keys(), line
        datetime.fromisoformat(record["time"])
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        assert record["logger"].startswith("periodic_fast")
        assert record["server"] == "periodicd"
    events = [json.loads(line)["event"] for line in lines]
    assert any("listening on" in e for e in events)
    assert any("json format" in e for e in events)  # the reload kept the format


def test_text_stays_the_default(tmp_path: Path) -> None:
    with ServerProcess(["-p", ":memory:"]) as proc:
        _wait_for("listening on", proc)
        line = next(x for x in proc.output().splitlines() if "listening on" in x)
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
        assert " periodicd INFO periodic_fast.server: " in line


def test_extra_fields_become_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    try:
        _setup_logging("info", "srv", "json")
        logging.getLogger("periodic_fast.server").warning(
            "peer %s refused", "x", extra={"func": "f1", "conn": 7, "peer": "1.2.3.4"}
        )
        try:
            raise ValueError("boom")
        except ValueError:
            logging.getLogger("periodic_fast.server").exception("failed")
    finally:
        logging.basicConfig(force=True, handlers=[logging.NullHandler()])
    first, second = (json.loads(x) for x in stream.getvalue().splitlines()[:2])
    assert first["event"] == "peer x refused" and first["level"] == "WARNING"
    assert (first["func"], first["conn"], first["peer"]) == ("f1", 7, "1.2.3.4")
    assert second["event"] == "failed" and "boom" in second["exc_info"]
