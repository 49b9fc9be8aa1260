"""One reading of an address for the server and the clients (issue 19).

A bare ``HOST:PORT`` is TCP on both sides (the server once made a socket
*file* named ``127.0.0.1:5005``), and anything ambiguous is refused with the
accepted forms instead of being taken for a file name.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from exec_helpers import env as _env

from periodic_fast._address import ACCEPTED_FORMS, parse_listen_address
from periodic_fast.client import parse_address as client_parse
from periodic_fast.server.app import parse_address as server_parse
from periodic_fast.testing import free_port, wait_listening

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("text", "server", "client"),
    [
        ("127.0.0.1:5005", ("tcp", "127.0.0.1", 5005), ("tcp", "127.0.0.1", 5005)),
        ("localhost:7", ("tcp", "localhost", 7), ("tcp", "localhost", 7)),
        ("[::1]:7", ("tcp", "::1", 7), ("tcp", "::1", 7)),
        (":5000", ("tcp", None, 5000), ("tcp", "127.0.0.1", 5000)),
        ("tcp://:5000", ("tcp", None, 5000), ("tcp", "127.0.0.1", 5000)),
        ("tcp://[::1]:5000", ("tcp", "::1", 5000), ("tcp", "::1", 5000)),
        ("unix:///tmp/x.sock", ("unix", "/tmp/x.sock", 0), None),
        ("/tmp/x.sock", ("unix", "/tmp/x.sock", 0), None),
        ("./127.0.0.1:5005", ("unix", "./127.0.0.1:5005", 0), None),
        ("periodic.sock", ("unix", "periodic.sock", 0), None),
    ],
)
def test_one_reading(text: str, server: tuple[str, object, int], client: Any) -> None:
    assert server_parse(text) == server == parse_listen_address(text)
    want = client or server
    assert client_parse(text) == want


@pytest.mark.parametrize(
    "text",
    [
        "http://127.0.0.1:5006",
        "https://h:1",
        "udp://h:1",
        "tcp://host",
        "tcp://h:port",
        "tcp://::1:5",
        "::1:5",
        "h:port",
        "h:70000",
        "unix://",
        "",
        "127.0.0.1",
        "localhost",
        "tcp://[]:5",
    ],
)
def test_ambiguous_refused_with_the_forms(text: str) -> None:
    for parse in (server_parse, client_parse):
        with pytest.raises(ValueError) as info:
            parse(text)
        assert ACCEPTED_FORMS in str(info.value)


def test_client_refuses_port_zero() -> None:
    assert server_parse("tcp://127.0.0.1:0").port == 0  # the server picks one
    with pytest.raises(ValueError):
        client_parse("tcp://127.0.0.1:0")


def _periodicd(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "periodic_fast", "-d", "-p", ":memory:", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(None),
        cwd=cwd,
    )


def test_bare_host_port_listens_on_tcp(tmp_path: Path) -> None:
    port = free_port()
    bare = f"127.0.0.1:{port}"
    proc = _periodicd(["-H", bare], tmp_path)
    try:
        assert wait_listening(f"tcp://{bare}", timeout=15), proc.stderr
        assert list(tmp_path.iterdir()) == []  # no socket file named like it
        r = subprocess.run(
            [sys.executable, "-m", "periodic_fast", "status"],
            capture_output=True,
            text=True,
            env=_env(bare),  # PERIODIC_PORT=127.0.0.1:PORT, read the same way
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
    finally:
        proc.terminate()
        proc.communicate(timeout=15)


def test_http_address_refused_at_start(tmp_path: Path) -> None:
    port = free_port()
    proc = _periodicd(["-H", f"http://127.0.0.1:{port}"], tmp_path)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "tcp://HOST:PORT" in err and "unix://PATH" in err, err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
    with socket.socket() as s:  # nothing listens there either
        s.settimeout(0.5)
        assert s.connect_ex(("127.0.0.1", port)) != 0
