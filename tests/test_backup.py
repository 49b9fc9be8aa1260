"""``periodic backup FILE`` (issue 19): a consistent copy of a running
server's store while writes go on; SQLite's online backup for a SQLite
store (made by the server, which holds the file locked), the DUMP job list
for the others; both restore into a new server with the jobs there."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from exec_helpers import env

from periodic_fast.client import Client
from periodic_fast.testing import ServerProcess

pytestmark = pytest.mark.timeout(180)

_FAR = 4_000_000_000  # scheduled far ahead: nothing runs, nothing leaves
_JOBS = 3000


def _periodic(address: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "periodic_fast", "-H", address, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
        check=False,
    )


def _fill(address: str, func: str, n: int) -> None:
    async def main() -> None:
        async with Client(address, reconnect=False, timeout=30) as client:
            jobs = [(func, f"job-{i}", b"w" * 40, _FAR) for i in range(n)]
            assert await client.submit_many(jobs) == n

    asyncio.run(main())


def _count(address: str) -> dict[str, int]:
    async def main() -> dict[str, int]:
        async with Client(address, reconnect=False, timeout=30) as client:
            return {str(f): s.jobs for f, s in (await client.status()).items()}

    return asyncio.run(main())


class _Writer(threading.Thread):
    """Submits jobs one by one until stopped: the backup runs under load."""

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self.address = address
        self.done = 0
        self.stop = threading.Event()

    def run(self) -> None:
        async def main() -> None:
            async with Client(self.address, reconnect=False, timeout=30) as client:
                deadline = time.monotonic() + 60
                while not self.stop.is_set() and time.monotonic() < deadline:
                    await client.submit_job("live", f"j{self.done}", b"", _FAR)
                    self.done += 1

        asyncio.run(main())


def _backup_under_load(address: str, target: Path) -> tuple[int, int, str]:
    writer = _Writer(address)
    writer.start()
    while writer.done < 50:
        time.sleep(0.01)
    before = writer.done
    result = _periodic(address, "backup", str(target))
    after = writer.done
    writer.stop.set()
    writer.join(30)
    assert result.returncode == 0, result.stderr
    assert after > before  # writes went on while the copy was made
    return before, after, result.stdout


def test_sqlite_backup_while_writing_restores(tmp_path: Path) -> None:
    store = tmp_path / "live.db"
    target = tmp_path / "backup.db"
    with ServerProcess(["-p", f"file://{store}"]) as proc:
        _fill(proc.address, "batch", _JOBS)
        before, after, out = _backup_under_load(proc.address, target)
        assert "SQLite" in out and str(target) in out
        # a real SQLite file, intact, while the server still holds the original
        db = sqlite3.connect(target)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        assert proc.stop() == 0
    # restore: the copy is the store of a new server (docs/storage.md)
    with ServerProcess(["-p", f"file://{target}"]) as restored:
        counts = _count(restored.address)
        assert counts["batch"] == _JOBS
        # every submit acknowledged before the backup started is in it (a
        # consistent copy taken at one commit; later ones may or may not be)
        assert before <= counts["live"] <= after + 1
        assert restored.stop() == 0


def test_memory_store_backup_is_a_dump(tmp_path: Path) -> None:
    target = tmp_path / "backup.dump"
    with ServerProcess(["-p", ":memory:"]) as proc:
        _fill(proc.address, "batch", _JOBS)
        before, _, out = _backup_under_load(proc.address, target)
        assert "DUMP" in out
        assert proc.stop() == 0
    with ServerProcess(["-p", ":memory:"]) as fresh:
        loaded = _periodic(fresh.address, "load", str(target))
        assert loaded.returncode == 0, loaded.stderr
        counts = _count(fresh.address)
        assert counts["batch"] == _JOBS and counts["live"] >= before
        assert fresh.stop() == 0


def test_backup_needs_admin_with_auth(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("admin ops ops-tok -\nclient app app-tok -\n")
    auth.chmod(0o600)
    target = tmp_path / "b.db"
    args = ["-p", f"file://{tmp_path / 's.db'}", "--auth-file", str(auth)]
    with ServerProcess(args) as proc:
        base = ["--client-name", "app", "--client-token", "app-tok"]
        refused = _periodic(proc.address, *base, "backup", str(target))
        assert refused.returncode == 1 and not target.exists()
        assert refused.stderr.count("\n") == 1 and "HTTP 403" in refused.stderr
        admin = ["--client-name", "ops", "--client-token", "ops-tok"]
        ok = _periodic(proc.address, *admin, "backup", str(target))
        assert ok.returncode == 0, ok.stderr
        assert "SQLite" in ok.stdout
        assert proc.stop() == 0
