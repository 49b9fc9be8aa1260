"""Issue 16 item 13: files that hold secrets are private, and the operator is
told when they are not.

Every workload is inside the SQLite store and every token inside the auth
file: a file created world-readable hands both to any local user.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from periodic_fast.auth import AuthFile
from periodic_fast.job import Job, JobState
from periodic_fast.store import open_store
from periodic_fast.store.sqlite import SqliteStore


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common default umask: new files are world-readable unless the
    code asks otherwise."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _others_can_read(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o077)


def test_new_sqlite_store_files_are_private(tmp_path: Path, loose_umask: None) -> None:
    db = tmp_path / "jobs.db"
    store = open_store(f"file://{db}")
    try:
        store.save_job(Job(b"f", b"secret", b"workload", 2**33), JobState.PENDING)
        store.flush()
        wal = Path(f"{db}-wal")
        assert wal.exists()  # the WAL holds the workload before a checkpoint
        assert not _others_can_read(db)
        assert not _others_can_read(wal)
    finally:
        store.close()


def test_readable_existing_store_is_kept_but_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "shared.db"
    SqliteStore(db).close()
    db.chmod(0o644)  # the operator's choice: the mode stays as it is
    with caplog.at_level(logging.WARNING, logger="periodic_fast.store"):
        SqliteStore(db).close()
    assert stat.S_IMODE(db.stat().st_mode) == 0o644
    assert any("readable by other users" in r.getMessage() for r in caplog.records)


def _auth_file(path: Path, mode: int) -> Path:
    path.write_bytes(b"client web web-tok email\n")
    path.chmod(mode)
    return path


def test_readable_auth_file_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _auth_file(tmp_path / "auth", 0o644)
    with caplog.at_level(logging.WARNING, logger="periodic_fast.auth"):
        AuthFile(path)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "chmod 600" in warning.getMessage() and str(path) in warning.getMessage()


def test_private_auth_file_is_accepted_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _auth_file(tmp_path / "auth", 0o600)
    with caplog.at_level(logging.WARNING, logger="periodic_fast.auth"):
        AuthFile(path)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
