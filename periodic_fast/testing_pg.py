"""A throwaway PostgreSQL cluster for tests and benchmarks.

:class:`PostgresCluster` runs ``initdb`` and ``pg_ctl start`` into a fresh
temporary directory, listens on a unix socket in that directory (and, when
asked, on a free ``127.0.0.1`` port), creates one database and gives its URI.
``stop()`` (or leaving the ``with`` block) shuts the server down and deletes
every file.  The server binaries come from Debian's ``postgresql`` package
(``/usr/lib/postgresql/<version>/bin``), from ``$PERIODIC_FAST_PG_BIN``, or
from ``PATH``; when none is found :class:`PostgresUnavailable` says so.

``initdb`` and ``postgres`` refuse to run as root.  Under root (CI) the
cluster runs as the ``postgres`` user instead (created when the package did
not create it), through ``runuser``; the temporary directory is handed to
that user.

Example::

    with PostgresCluster() as pg:
        store = open_store(pg.uri)
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from .testing import free_port

__all__ = [
    "PostgresCluster",
    "PostgresCommandError",
    "PostgresUnavailable",
    "find_pg_bindir",
]

#: overrides the search for the directory holding initdb, pg_ctl and postgres
BIN_ENV = "PERIODIC_FAST_PG_BIN"
_TOOLS = ("initdb", "pg_ctl", "postgres")
_OS_USER = "postgres"  # who runs the server when we are root
_SUPERUSER = "postgres"  # the cluster's superuser role


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server binaries are missing, or the cluster could not be
    created or started."""


class PostgresCommandError(RuntimeError):
    """An SQL command run with :meth:`PostgresCluster.psql` failed."""


def _has_tools(bindir: Path) -> bool:
    return all(os.access(bindir / tool, os.X_OK) for tool in _TOOLS)


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.name)) or (0,)


def find_pg_bindir() -> Path:
    """The directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks at ``$PERIODIC_FAST_PG_BIN``, then the newest
    ``/usr/lib/postgresql/*/bin`` (Debian keeps the server tools there, off
    ``PATH``), then ``PATH`` (following symlinks, so a ``pg_ctl`` linked into
    ``/usr/local/bin`` finds its siblings).  Raises
    :class:`PostgresUnavailable` naming what was searched.
    """
    env = os.environ.get(BIN_ENV)
    if env:
        if _has_tools(Path(env)):
            return Path(env)
        raise PostgresUnavailable(f"${BIN_ENV}={env} lacks one of {', '.join(_TOOLS)}")
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        for verdir in sorted(root.iterdir(), key=_version_key, reverse=True):
            if _has_tools(verdir / "bin"):
                return verdir / "bin"
    found = shutil.which("pg_ctl")
    if found:
        bindir = Path(found).resolve().parent
        if _has_tools(bindir):
            return bindir
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in "
        f"${BIN_ENV}, /usr/lib/postgresql/*/bin or PATH; "
        "install them with `apt-get install postgresql`"
    )


def _ensure_os_user() -> None:
    """Create the ``postgres`` system user when it does not exist (root only)."""
    import pwd  # noqa: PLC0415 - POSIX only, needed only under root

    try:
        pwd.getpwnam(_OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", _OS_USER],
            check=True,
            capture_output=True,
        )


class PostgresCluster:
    """A PostgreSQL server in a temporary directory, for tests and benchmarks.

    :param dbname: the database created at start (owned by the superuser
        ``postgres``; local connections need no password).
    :param tcp: also listen on ``127.0.0.1`` on a free port (``uri_tcp``).
    :param fsync: ``False`` turns fsync off (faster tests; never for figures
        that claim durability).
    :param settings: extra ``postgresql.conf`` settings (``-c name=value``).
    :param bindir: the server binaries (default: :func:`find_pg_bindir`).
    """

    def __init__(
        self,
        *,
        dbname: str = "periodic",
        tcp: bool = False,
        fsync: bool = True,
        settings: dict[str, str] | None = None,
        bindir: Path | str | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", dbname):
            raise ValueError(f"dbname {dbname!r}: use letters, digits and _")
        self.bindir = Path(bindir) if bindir is not None else find_pg_bindir()
        if not _has_tools(self.bindir):
            raise PostgresUnavailable(f"{self.bindir} lacks one of {', '.join(_TOOLS)}")
        self.dbname = dbname
        self.tcp = tcp
        self.fsync = fsync
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self.port = free_port() if tcp else 5432  # the socket dir is private
        self.as_user = os.geteuid() == 0
        self.tmpdir: Path | None = None
        self._running = False

    # paths and URIs ----------------------------------------------------------
    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self._dir / "data"

    @property
    def sockdir(self) -> Path:
        """The directory holding the unix socket ``.s.PGSQL.<port>``."""
        return self._dir

    @property
    def logfile(self) -> Path:
        """The server's log file."""
        return self._dir / "server.log"

    @property
    def uri(self) -> str:
        """``postgresql://`` URI of the database over the unix socket."""
        return f"postgresql://{_SUPERUSER}@/{self.dbname}?host={self.sockdir}&port={self.port}"

    @property
    def uri_tcp(self) -> str:
        """``postgresql://`` URI over TCP (needs ``tcp=True``)."""
        if not self.tcp:
            raise RuntimeError("the cluster was started without tcp=True")
        return f"postgresql://{_SUPERUSER}@127.0.0.1:{self.port}/{self.dbname}"

    @property
    def running(self) -> bool:
        """True between a successful start and stop."""
        return self._running

    @property
    def _dir(self) -> Path:
        if self.tmpdir is None:
            raise RuntimeError("the cluster is not set up (call start())")
        return self.tmpdir

    # life cycle --------------------------------------------------------------
    def _run(self, argv: Sequence[str], timeout: float) -> str:
        cmd = list(argv)
        if self.as_user:
            cmd = ["runuser", "-u", _OS_USER, "--", *cmd]
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                cwd=self._dir,
                check=False,
            )
        except FileNotFoundError as exc:
            raise PostgresUnavailable(f"cannot run {cmd[0]}: {exc}") from exc
        out = (proc.stdout + proc.stderr).decode(errors="replace")
        if proc.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = self.logfile.read_text(errors="replace")[-4000:]
            raise PostgresUnavailable(
                f"{' '.join(cmd)} exited with {proc.returncode}:\n{out}\n{log}"
            )
        return out

    def start(self) -> PostgresCluster:
        """Create the cluster (first call) and start the server; create the
        database on the first start.  Returns ``self``."""
        if self._running:
            return self
        first = self.tmpdir is None
        if first:
            # short path: a unix socket path is limited to ~107 bytes
            self.tmpdir = Path(tempfile.mkdtemp(prefix="pf-pg-"))
            atexit.register(self._atexit)
            if self.as_user:
                _ensure_os_user()
                shutil.chown(self._dir, _OS_USER, _OS_USER)
            self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    _SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",  # a throwaway cluster: skip initdb's fsyncs
                ],
                timeout=120,
            )
        opts = [
            f"-k {self.sockdir}",
            f"-p {self.port}",
            "-c listen_addresses=" + ("127.0.0.1" if self.tcp else "''"),
            "-c fsync=" + ("on" if self.fsync else "off"),
        ]
        opts += [f"-c {k}={v}" for k, v in self.settings.items()]
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-o",
                " ".join(opts),
                "start",
            ],
            timeout=self.start_timeout + 10,
        )
        self._running = True
        if first:
            try:
                self.psql(f"CREATE DATABASE {self.dbname}", dbname="postgres")
            except PostgresCommandError as exc:
                raise PostgresUnavailable(str(exc)) from exc
        return self

    def psql(self, sql: str, *, dbname: str | None = None) -> str:
        """Run one SQL command with ``psql`` (unaligned, tuples only);
        return its output.  Raises :class:`PostgresCommandError` on error."""
        psql = self.bindir / "psql"
        if not os.access(psql, os.X_OK):
            psql = Path(shutil.which("psql") or "psql")
        argv = [
            str(psql),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self.sockdir),
            "-p",
            str(self.port),
            "-U",
            _SUPERUSER,
            "-d",
            dbname or self.dbname,
            "-c",
            sql,
        ]
        proc = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise PostgresCommandError(
                f"psql {sql!r}: {proc.stderr.decode(errors='replace').strip()}"
            )
        return proc.stdout.decode()

    def stop_server(self, *, mode: str = "fast") -> None:
        """Stop the server but keep the data (``start()`` brings it back).
        ``mode`` is pg_ctl's: ``smart``, ``fast`` or ``immediate`` (a crash)."""
        if not self._running:
            return
        self._running = False
        self._run(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-m",
                mode,
                "-w",
                "stop",
            ],
            timeout=60,
        )

    def restart(self) -> PostgresCluster:
        """Stop the server (fast) and start it again on the same socket."""
        self.stop_server()
        return self.start()

    def stop(self) -> None:
        """Stop the server and delete the whole temporary directory."""
        tmp = self.tmpdir
        if tmp is None:
            return
        try:
            if self._running:
                try:
                    self.stop_server(mode="fast")
                except (PostgresUnavailable, subprocess.TimeoutExpired):
                    self._kill_postmaster()
        finally:
            self.tmpdir = None
            shutil.rmtree(tmp, ignore_errors=True)
            atexit.unregister(self._atexit)

    def _kill_postmaster(self) -> None:
        # last resort when pg_ctl could not stop it: SIGKILL by the pid file
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGQUIT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)

    def _atexit(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()

    def __enter__(self) -> PostgresCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
