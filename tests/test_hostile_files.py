"""Issue 16 item 13: files that hold secrets are private, and the operator is
told when they are not; a unix socket path another user got to first is
refused by the server and by our clients.

Every workload is inside the SQLite store and every token inside the auth
file: a file created world-readable hands both to any local user.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from periodic_fast.auth import AuthFile
from periodic_fast.client import Client
from periodic_fast.errors import NotConnected
from periodic_fast.job import Job, JobState
from periodic_fast.server import AddressInUse, Server
from periodic_fast.store import open_store
from periodic_fast.store.sqlite import SqliteStore
from periodic_fast.testing import running_server


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


# -- the shared socket path ------------------------------------------------------

NOBODY = 65534

needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a file to another user needs root",
)


def _foreign_socket(path: Path) -> socket.socket:
    """A listening socket at ``path`` whose file belongs to 'nobody', as if
    that user had created it first to collect the clients' tokens."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(8)
    os.chown(path, NOBODY, NOBODY)
    return sock


@needs_root
def test_server_refuses_a_socket_path_another_user_owns(tmp_path: Path) -> None:
    path = tmp_path / "periodic.sock"
    squatter = _foreign_socket(path)
    squatter.close()  # even a stale one: it is not ours to remove

    async def main() -> None:
        server = Server([f"unix://{path}"])
        with pytest.raises(AddressInUse, match=r"owned by uid 65534.*not by this"):
            await server.start()
        await server.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    assert os.lstat(path).st_uid == NOBODY  # left alone


def test_server_refuses_a_world_writable_directory_without_sticky_bit(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)

    async def main() -> None:
        server = Server([f"unix://{shared}/p.sock"])
        with pytest.raises(AddressInUse, match="no sticky bit"):
            await server.start()
        await server.stop()

    asyncio.run(asyncio.wait_for(main(), 10))
    shared.chmod(0o1777)  # with the sticky bit (like /tmp) it is accepted

    async def sticky() -> None:
        server = Server([f"unix://{shared}/p.sock"])
        await server.start()
        await server.stop()

    asyncio.run(asyncio.wait_for(sticky(), 10))


@needs_root
def test_client_refuses_a_socket_another_user_owns(tmp_path: Path) -> None:
    path = tmp_path / "periodic.sock"
    squatter = _foreign_socket(path)
    squatter.setblocking(False)

    async def main() -> None:
        client = Client(f"unix://{path}", reconnect=False)
        try:
            with pytest.raises(NotConnected, match=r"owned by uid 65534"):
                await client.connect()
        finally:
            await client.close()
        # nothing reached the squatter: no connection, so no registration
        with pytest.raises(BlockingIOError):
            squatter.accept()

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        squatter.close()


@needs_root
def test_client_refuses_a_symlink_to_another_users_socket(tmp_path: Path) -> None:
    target = tmp_path / "theirs.sock"
    squatter = _foreign_socket(target)
    link = tmp_path / "link.sock"
    link.symlink_to(target)

    async def main() -> None:
        client = Client(f"unix://{link}", reconnect=False)
        try:
            with pytest.raises(NotConnected, match="owned by uid 65534"):
                await client.connect()
        finally:
            await client.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 10))
    finally:
        squatter.close()


def test_client_and_server_accept_their_own_socket(tmp_path: Path) -> None:
    async def main() -> None:
        async with running_server(unix=True, tcp=False) as srv:
            (addr,) = srv.addresses
            async with Client(addr) as client:
                assert await client.ping()

    asyncio.run(asyncio.wait_for(main(), 20))
