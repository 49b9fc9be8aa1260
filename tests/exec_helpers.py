"""Subprocess helpers shared by the exec/pipe worker tests (the style of
test_cli.py: real ``python -m periodic_fast`` processes on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from periodic_fast.testing import ServerProcess

ROOT = str(Path(__file__).resolve().parent.parent)
_IDENTITY_ENV = ("PERIODIC_PORT", "PERIODIC_CLIENT_NAME", "PERIODIC_CLIENT_TOKEN")


def server_fixtures(*args: str) -> tuple[Any, Any]:
    """A module's ``server`` (one ``python -m periodic_fast -d ARGS`` for the
    whole module, on the default event loop) and ``addr`` (its address)
    fixtures; bind both at module level: ``server, addr = server_fixtures()``.
    A factory, not a conftest fixture: ``server`` is the in-process server
    elsewhere, and these modules keep their own process."""

    @pytest.fixture(scope="module")
    def server() -> Iterator[ServerProcess]:
        with ServerProcess(list(args)) as proc:
            yield proc

    @pytest.fixture
    def addr(server: ServerProcess) -> str:
        return server.address

    return server, addr


def env(
    address: str | None = None, extra: dict[str, str] | None = None
) -> dict[str, str]:
    """Our environment, this checkout first on the path, no stray address."""
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join(
        p for p in (ROOT, out.get("PYTHONPATH", "")) if p
    )
    for var in _IDENTITY_ENV:
        out.pop(var, None)
    if address is not None:
        out["PERIODIC_PORT"] = address
    out.update(extra or {})
    return out


def periodic(
    *args: str, address: str | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run ``periodic ARGS`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "periodic_fast", *args],
        capture_output=True,
        text=True,
        env=env(address),
        timeout=timeout,
    )


def spawn_periodic(*args: str, address: str) -> subprocess.Popen[bytes]:
    """Start ``periodic ARGS`` in the background (e.g. a waiting ``run``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "periodic_fast", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env(address),
    )


class Script:
    """One of the HS-style scripts by its entry point (``periodic_run_main``,
    ``periodic_run_pipe_main``; no installed script needed), stdout and
    stderr going to files so a test can read them while it runs."""

    def __init__(self, entry: str, *args: str, logdir: Path) -> None:
        code = f"from periodic_fast.cli_client import {entry} as m; m()"
        logdir.mkdir(parents=True, exist_ok=True)
        self._out = logdir / f"{entry}-{id(self)}.out"
        self._err = logdir / f"{entry}-{id(self)}.err"
        with self._out.open("wb") as out, self._err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code, *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=env(),
            )

    def out(self) -> str:
        """What it printed on stdout so far."""
        return self._out.read_text(errors="replace")

    def err(self) -> str:
        """What it printed on stderr so far."""
        return self._err.read_text(errors="replace")

    def wait(self, timeout: float = 30) -> int:
        """Wait for it to exit by itself; its status."""
        return self.proc.wait(timeout)

    def stop(self) -> int:
        """SIGTERM (graceful drain), SIGKILL if it is still there 20 s later."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def wait_for(pred: Callable[[], object], timeout: float = 15.0) -> None:
    """Poll ``pred`` every 0.1 s until true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


def status_json(address: str) -> dict[str, dict[str, int]]:
    """``periodic status --json`` keyed by func."""
    r = periodic("status", "--json", address=address)
    assert r.returncode == 0, r.stderr
    return {row["func"]: row for row in json.loads(r.stdout)}


def workers(address: str, func: str) -> int:
    """Registered workers of ``func``."""
    return status_json(address).get(func, {}).get("workers", 0)
