"""Smoke check of an installed periodic_fast: the compiled twins are in use and
``periodicd`` starts and answers a PING.

Run it with the interpreter of the environment under test, from a directory
outside the source tree (else the checkout could shadow the install)::

    python scripts/smoke_wheel.py

cibuildwheel runs it on every wheel it builds (``test-command`` in
pyproject.toml) and ``tests/test_wheel_install.py`` on the repaired Linux wheel
in a venv with no compiler.  Stdlib only, besides the package itself.  Prints
the package and twin paths, the ``--version`` line, then ``smoke ok``; exits
non-zero on any failure.
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import periodic_fast
import periodic_fast.codec
import periodic_fast.rec
import periodic_fast.wheel

TWINS = ("_codec_c", "_wheel_c", "_rec_c")
BIN = pathlib.Path(sys.executable).parent


def check_twins() -> None:
    """Fail unless codec, wheel and rec run their Cython twins."""
    print(periodic_fast.__file__)
    for unit in (periodic_fast.codec, periodic_fast.wheel, periodic_fast.rec):
        if unit.IMPLEMENTATION != "cython":
            sys.exit(f"{unit.__name__}.IMPLEMENTATION is {unit.IMPLEMENTATION!r}")
    for twin in TWINS:
        module = __import__(f"periodic_fast.{twin}", fromlist=["_"])
        print(module.__file__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "periodic"), *args], capture_output=True, text=True, timeout=30
    )


def check_server() -> None:
    """Start ``periodicd`` on a loopback port with a memory store, PING it,
    stop it with SIGTERM and expect a clean exit."""
    address = f"tcp://127.0.0.1:{_free_port()}"
    server = subprocess.Popen(
        [str(BIN / "periodicd"), "-H", address, "-p", ":memory:"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        ping = _cli("-H", address, "ping")
        while ping.returncode != 0 and time.monotonic() < deadline:
            if server.poll() is not None:
                err = server.communicate()[1]
                sys.exit(f"periodicd exited {server.returncode}: {err[-2000:]}")
            time.sleep(0.2)
            ping = _cli("-H", address, "ping")
        if not ping.stdout.startswith(f"pong from {address}"):
            sys.exit(f"no PONG: {ping.stdout}{ping.stderr}")
        print(ping.stdout.strip())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate()
    if server.returncode != 0:
        sys.exit(f"periodicd exited {server.returncode}: {err[-2000:]}")


def main() -> None:
    os.environ.setdefault("PERIODIC_PATH", ":memory:")
    check_twins()
    version = _cli("--version").stdout.strip()
    print(version)
    if "codec: cython, wheel: cython, rec: cython" not in version:
        sys.exit(f"periodic --version: {version!r}")
    check_server()
    print("smoke ok")


if __name__ == "__main__":
    main()
