"""Helpers to run a Periodic server in tests (ours and users' worker tests).

* :func:`running_server`: an ``async with`` that starts a :class:`Server`
  in-process, on ``127.0.0.1`` port 0 and/or a unix socket in a temporary
  directory, and yields it (``.addresses``, ``.scheduler``).
* :class:`ServerProcess`: runs ``python -m periodic_fast -d`` (or ``periodicd``)
  in a subprocess on a free port; start / stop (SIGTERM) / kill / restart, for
  restart and crash tests.

Example::

    async with running_server() as srv:
        client = Client(srv.addresses[0])
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from .server.app import SchedulerFactory, Server, parse_address
from .store import Store

__all__ = ["ServerProcess", "free_port", "running_server", "wait_listening"]


@contextlib.asynccontextmanager
async def running_server(
    *,
    tcp: bool = True,
    unix: bool = True,
    store: str | Store = ":memory:",
    config: Mapping[str, int] | None = None,
    scheduler_factory: SchedulerFactory | None = None,
    **server_kwargs: Any,
) -> AsyncIterator[Server]:
    """Start a :class:`Server` on the running loop; stop it on exit.

    Listens on ``tcp://127.0.0.1:0`` (when ``tcp``) and on a socket in a fresh
    temporary directory (when ``unix``); ``server.addresses`` lists the real
    addresses, TCP first.  ``store`` is a store URI or a
    :class:`~periodic_fast.store.Store` instance (which the caller closes).
    Extra keyword arguments go to :class:`Server`
    (e.g. ``clock=`` a movable clock; then ``server.poke()`` runs its timer).
    """
    if not (tcp or unix):
        raise ValueError("need tcp, unix or both")
    tmpdir = tempfile.mkdtemp(prefix="pf-")  # short: AF_UNIX paths are limited
    addrs: list[str] = []
    if tcp:
        addrs.append("tcp://127.0.0.1:0")
    if unix:
        addrs.append(f"unix://{tmpdir}/periodic.sock")
    server = Server(
        addrs,
        store=store,
        config=config,
        scheduler_factory=scheduler_factory,
        **server_kwargs,
    )
    try:
        await server.start()
        try:
            yield server
        finally:
            await server.stop()
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(address: str, timeout: float = 10.0) -> bool:
    """Poll until something accepts connections on ``address`` (bounded)."""
    addr = parse_address(address)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if addr.scheme == "tcp":
                socket.create_connection(
                    (addr.host or "127.0.0.1", addr.port), timeout=1.0
                ).close()
            else:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.settimeout(1.0)
                    s.connect(str(addr.host))
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _names_store(args: Sequence[str]) -> bool:
    """True when ``args`` contain a store option (``-p X``, ``--path=X``)."""
    return any(
        a in ("-p", "--path") or a.startswith("--path=") or a.startswith("-p")
        for a in args
    )


class ServerProcess:
    """A server in a subprocess, for restart and crash tests.

    :param args: extra command-line options (e.g. ``["-p", "file://x.db"]``).
        Without a store option (``-p``/``--path``, or ``PERIODIC_PATH`` in
        ``env``) the server runs on ``-p :memory:``, never on the user's
        default database file.
    :param address: listen address; default ``tcp://127.0.0.1:<free port>``.
    :param command: ``"module"`` runs ``python -m periodic_fast -d``;
        ``"periodicd"`` runs the ``periodicd`` script next to the interpreter
        (falling back to ``python -c`` calling the same entry point).
    :param env: extra environment variables.

    Output (stdout and stderr) goes to a log file; :meth:`output` reads it.
    Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        address: str | None = None,
        command: str = "module",
        env: Mapping[str, str] | None = None,
        start_timeout: float = 15.0,
    ) -> None:
        self.address = address or f"tcp://127.0.0.1:{free_port()}"
        self.args = list(args)
        self.command = command
        self.env = dict(env or {})
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._logdir = tempfile.mkdtemp(prefix="pf-proc-")
        self._log_path = os.path.join(self._logdir, "server.log")
        self._log: IO[bytes] | None = None

    def argv(self) -> list[str]:
        """The command line the process is started with."""
        opts = ["-H", self.address, *self.args]
        if not _names_store(self.args) and "PERIODIC_PATH" not in self.env:
            opts += ["-p", ":memory:"]  # not the user's default database
        if self.command == "periodicd":
            script = Path(sys.executable).with_name("periodicd")
            if script.exists():
                return [str(script), *opts]
            code = "import sys; from periodic_fast.cli import periodicd_main as m; "
            code += "sys.argv[0] = 'periodicd'; m()"
            return [sys.executable, "-c", code, *opts]
        return [sys.executable, "-m", "periodic_fast", "-d", *opts]

    @property
    def pid(self) -> int | None:
        """The process id, while running."""
        return self.proc.pid if self.proc is not None else None

    def start(self) -> ServerProcess:
        """Start the process and wait until it accepts connections."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("already running")
        env = dict(os.environ)
        root = _package_root()
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (root, env.get("PYTHONPATH", "")) if p
        )
        env.update(self.env)
        self._log = open(self._log_path, "ab")  # kept open for the child
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()  # no file left open behind a failed start
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{self.output()}"
                )
            if wait_listening(self.address, timeout=0.2):
                return self
        self.kill()
        raise TimeoutError(f"server did not listen on {self.address}:\n{self.output()}")

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the process to exit; return its exit code."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        self._close_log()
        return code

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait (bounded; SIGKILL after ``timeout``); return the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                return self.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        return self.wait(timeout)

    def kill(self) -> int:
        """SIGKILL (a crash); return the exit code."""
        proc = self.proc
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.kill()
        return self.wait()

    def restart(self, *, crash: bool = False) -> ServerProcess:
        """Stop (or kill, when ``crash``) and start again on the same address."""
        if crash:
            self.kill()
        else:
            self.stop()
        return self.start()

    def output(self) -> str:
        """Everything the process wrote so far."""
        try:
            return Path(self._log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.kill()
        else:
            self.stop()
        shutil.rmtree(self._logdir, ignore_errors=True)
