"""redis-server and gearmand on free loopback ports, in temporary directories.

Both are started in the foreground as our children, stopped with SIGTERM
(SIGKILL after a bounded wait) and leave nothing behind: redis runs with
``save ""`` and ``appendonly no`` (the one dump W4 asks for is written in the
temporary directory and deleted with it), gearmand with its builtin in-memory
queue and no log file.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import TypeVar

from .common import free_port


def which(binary: str) -> str | None:
    """Path of ``binary`` on PATH or in the sbin directories (Debian puts
    gearmand in /usr/sbin, which a non-login PATH may lack)."""
    found = shutil.which(binary)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        p = os.path.join(d, binary)
        if os.access(p, os.X_OK):
            return p
    return None


def version_of(argv: list[str]) -> str:
    """First line of ``argv`` (a --version call), or "" when it fails."""
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else ""


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"not listening on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


_S = TypeVar("_S", bound="_LoopbackServer")


class _LoopbackServer:
    """A server binary run as our child on ``127.0.0.1:<free port>`` with a
    temporary directory; subclasses give :meth:`argv`."""

    prefix = "pf-server-"

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=self.prefix)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """Process id of the running server."""
        assert self.proc is not None
        return self.proc.pid

    def argv(self) -> list[str]:
        """The command line."""
        raise NotImplementedError

    def start(self: _S, timeout: float = 15.0) -> _S:
        """Start and wait until it accepts connections."""
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_port(self.port, self.proc, timeout)
        return self

    def stop(self) -> None:
        """SIGTERM (SIGKILL after a bounded wait)."""
        _stop(self.proc)

    def close(self) -> None:
        """Stop and delete the temporary directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class RedisServer(_LoopbackServer):
    """``redis-server`` on ``127.0.0.1:<free port>`` without persistence
    (with ``save ""`` it writes no dump on the way out)."""

    prefix = "pf-redis-"

    def argv(self) -> list[str]:
        """The command line (documented defaults, loopback, no persistence)."""
        return [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.dir,
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip


class Gearmand(_LoopbackServer):
    """``gearmand`` on ``127.0.0.1:<free port>``, builtin (memory) queue."""

    prefix = "pf-gearmand-"

    def argv(self) -> list[str]:
        """The command line (defaults except address, log and pid file)."""
        return [
            self.binary,
            "--listen", "127.0.0.1",
            "--port", str(self.port),
            "--log-file", "none",
            "--pid-file", os.path.join(self.dir, "gearmand.pid"),
            "--queue-type", "builtin",
        ]  # fmt: skip

    def admin(self, command: str, timeout: float = 10.0) -> list[str]:
        """One text admin command (``status``, ``workers``); its lines."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(command.encode() + b"\n")
            buf = b""
            while not buf.endswith(b".\n"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        return [x for x in buf.decode().splitlines() if x and x != "."]

    def queued(self, func: str) -> tuple[int, int, int]:
        """(total, running, available workers) of ``func`` from ``status``."""
        for line in self.admin("status"):
            parts = line.split("\t")
            if parts[0] == func and len(parts) >= 4:
                return int(parts[1]), int(parts[2]), int(parts[3])
        return 0, 0, 0
