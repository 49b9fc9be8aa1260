"""Safe defaults (docs/security.md): the unix socket file is 0600 unless told
otherwise, ``tcp://:PORT`` listens on loopback only, and a TCP listener
beyond loopback without an auth file is warned about at start."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from periodic_fast.server.app import Server
from periodic_fast.testing import ServerProcess, free_port, wait_listening

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sockdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pf-def-"))  # short: AF_UNIX path limit
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _mode(path: Path) -> int:
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    return stat.S_IMODE(st.st_mode)


async def test_unix_socket_mode(sockdir: Path) -> None:
    old = os.umask(0)  # even a permissive umask gives 0600
    try:
        sock = sockdir / "a.sock"
        async with Server([f"unix://{sock}"]):
            assert _mode(sock) == 0o600
        assert not sock.exists()
        async with Server([f"unix://{sock}"], unix_mode=0o660):
            assert _mode(sock) == 0o660
            reader, writer = await asyncio.open_unix_connection(str(sock))
            writer.write(b"\x00REQ\x00\x00\x00\x01\xa5\x05\xdf\x1b\x01")  # type 1
            reply = await asyncio.wait_for(reader.readexactly(17), 5)
            assert reply[:4] == b"\x00RES"
            writer.close()
            await writer.wait_closed()
    finally:
        os.umask(old)
    with pytest.raises(ValueError, match="mode"):
        Server([f"unix://{sock}"], unix_mode=0o1777)


async def test_tcp_without_host_is_loopback(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="periodic_fast.server")
    port = free_port()
    async with Server([f"tcp://:{port}"]) as srv:
        assert srv.addresses == [f"tcp://127.0.0.1:{port}"]
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    assert "without --auth-file" not in caplog.text


def _external_ipv4() -> str | None:
    """A non-loopback IPv4 address of this host, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent
        except OSError:
            return None
        ip: str = s.getsockname()[0]
    return None if ip.startswith("127.") else ip


async def test_explicit_all_interfaces_still_works_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="periodic_fast.server")
    async with Server(["tcp://0.0.0.0:0"]) as srv:
        (addr,) = srv.addresses
        assert addr.startswith("tcp://0.0.0.0:")
        port = int(addr.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        ext = _external_ipv4()
        if ext is not None:  # reachable from outside loopback
            with socket.create_connection((ext, port), timeout=2):
                pass
    assert "without --auth-file" in caplog.text
    assert addr in caplog.text


async def test_no_warning_with_auth(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auth = tmp_path / "auth"
    auth.write_bytes(b"admin ops t -\n")
    caplog.set_level(logging.WARNING, logger="periodic_fast.server")
    async with Server(["tcp://0.0.0.0:0"], auth_file=auth):
        pass
    async with Server(["tcp://127.0.0.1:0"]):  # loopback without auth: fine
        pass
    assert "without --auth-file" not in caplog.text


def test_periodicd_unix_mode_and_loopback(sockdir: Path) -> None:
    sock = sockdir / "p.sock"
    port = free_port()
    with ServerProcess(
        ["-H", f"unix://{sock}", "--unix-mode", "0660"],
        address=f"tcp://:{port}",
    ) as proc:
        assert wait_listening(f"unix://{sock}")
        assert _mode(sock) == 0o660
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
        deadline = time.monotonic() + 10  # the line follows the last bind
        while f"tcp://127.0.0.1:{port}" not in proc.output():
            assert time.monotonic() < deadline, proc.output()
            time.sleep(0.05)


@pytest.mark.parametrize("mode", ["999", "0o1000", "rw", ""])
def test_periodicd_bad_unix_mode(mode: str) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "periodic_fast",
            "-d",
            "-p",
            ":memory:",
            "--unix-mode",
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2, r
    assert "--unix-mode" in r.stderr


def test_periodicd_bad_auth_file(tmp_path: Path) -> None:
    bad = tmp_path / "auth"
    bad.write_bytes(b"client a t\n")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "periodic_fast",
            "-d",
            "-p",
            ":memory:",
            "-H",
            f"tcp://127.0.0.1:{free_port()}",
            "--auth-file",
            str(bad),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1, r
    assert "line 1" in r.stderr
