"""Command line: ``periodicd`` (the server) and ``periodic`` (``-d`` serves).

``periodicd`` takes the reference server's flags where they apply
(cli-and-http.md 4.3): ``-H/--host`` (repeatable or comma-separated),
``-p/--path`` (default: a SQLite file, docs/storage.md), ``--log``,
``--name``, ``--auth-file``, plus ``--durability`` and the config keys
``--timeout``, ``--assign-wait``, ``--keepalive``, ``--lock-timeout`` and our
``--max-frame``, ``--registration-timeout``, ``--max-output``, ``--loop``,
``--unix-mode``, ``--max-connections``, ``--max-jobs-per-func``; the RSA/AES
transport: ``--rsa-private-path``, ``--rsa-public-path``, ``--rsa-mode``,
``--no-rsa-legacy`` (docs/transport.md); HTTP on the same listeners:
``--http-writes``, ``--no-http`` (docs/http.md).

``periodic -d [same options]`` starts the same server; the client
sub-commands of ``periodic`` hang off :data:`app` (the callback keeps the
global options in ``ctx.obj``).  Server code is imported inside the commands
so the CLI starts fast.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer
from typer.exceptions import Abort, TyperException

from .cli_client import RsaModeOpt as ClientRsaModeOpt
from .cli_client import RsaPrivateOpt as ClientRsaPrivateOpt
from .cli_client import RsaPublicOpt as ClientRsaPublicOpt
from .cli_client import client_obj
from .constants import ADDRESS_ENV, DEFAULT_ADDRESS, DEFAULT_MAX_FRAME

__all__ = ["app", "main", "periodicd_app", "periodicd_main"]

PATH_ENV = "PERIODIC_PATH"
_CONTEXT = {"help_option_names": ["-h", "--help"]}
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
    "alert": logging.CRITICAL,
    "emergency": logging.CRITICAL,
}

# -- shared options ------------------------------------------------------------

HostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-H",
        "--host",
        help=(
            "Listen address: tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT, "
            "unix://PATH or PATH. Repeat or comma-separate for several. "
            f"Default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS}."
        ),
        show_default=False,
    ),
]
PathOpt = Annotated[
    str | None,
    typer.Option(
        "-p",
        "--path",
        help=(
            f"Store URI: file://PATH (SQLite), postgres://..., :memory: (default:"
            f" ${PATH_ENV}, else a SQLite file under $XDG_DATA_HOME or"
            " ~/.local/share: periodic_fast/periodic.db)."
        ),
        show_default=False,
    ),
]
DurabilityOpt = Annotated[
    str,
    typer.Option(
        "--durability",
        help=(
            "strict: a reply waits until its change is on disk (fsync), nothing"
            " acknowledged is lost even on power loss; relaxed: a power loss may"
            " lose the last commits, a crash of the server loses nothing."
        ),
        metavar="strict|relaxed",
    ),
]
LogOpt = Annotated[
    str,
    typer.Option(
        "--log", help="Log level: debug, info, notice, warning, error, critical."
    ),
]
NameOpt = Annotated[str, typer.Option("--name", help="Server name used in logs.")]
TimeoutOpt = Annotated[
    int | None,
    typer.Option("--timeout", help="Config key timeout (s, default 600).", min=0),
]
AssignWaitOpt = Annotated[
    int | None,
    typer.Option("--assign-wait", help="Config key assign-wait (s, default 2).", min=0),
]
KeepaliveOpt = Annotated[
    int | None,
    typer.Option("--keepalive", help="Config key keepalive (s, default 120).", min=0),
]
LockTimeoutOpt = Annotated[
    int | None,
    typer.Option(
        "--lock-timeout", help="Config key lock-timeout (s, default 300).", min=0
    ),
]
MaxFrameOpt = Annotated[
    int,
    typer.Option("--max-frame", help="Largest request frame body (bytes).", min=16),
]
RegTimeoutOpt = Annotated[
    float,
    typer.Option(
        "--registration-timeout",
        help="Seconds a connection may take to register (0: no limit).",
        min=0,
    ),
]
MaxOutputOpt = Annotated[
    int,
    typer.Option(
        "--max-output",
        help="Unread output (bytes) after which a peer is dropped.",
        min=1024,
    ),
]
LoopOpt = Annotated[
    str,
    typer.Option(
        "--loop", help="Event loop: auto (uvloop if installed), asyncio, uvloop."
    ),
]
AuthFileOpt = Annotated[
    str | None,
    typer.Option(
        "--auth-file",
        help=(
            "Auth file: '<role> <name> <token> <func1,func2>' per line; "
            "reloaded when it changes (docs/security.md)."
        ),
        show_default=False,
    ),
]
UnixModeOpt = Annotated[
    str,
    typer.Option("--unix-mode", help="Permissions of the unix socket file (octal)."),
]
MaxConnectionsOpt = Annotated[
    int,
    typer.Option(
        "--max-connections",
        help="Open connections allowed at once; extra ones are closed (0: no limit).",
        min=0,
    ),
]
MaxJobsPerFuncOpt = Annotated[
    int,
    typer.Option(
        "--max-jobs-per-func",
        help="Stored jobs per func; submissions beyond get NO_WORKER (0: no limit).",
        min=0,
    ),
]
HttpWritesOpt = Annotated[
    bool,
    typer.Option(
        "--http-writes",
        help="Let HTTP submit, remove and drop (POST, DELETE); else they get 403.",
    ),
]
NoHttpOpt = Annotated[
    bool,
    typer.Option(
        "--no-http",
        help="Do not answer HTTP (status page, metrics, curl API) on the listeners.",
    ),
]
HttpHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--http-host",
        help=(
            "A DNS name HTTP clients may use in the Host header with "
            "--auth-file (IP addresses, localhost and this machine's name "
            "always pass); repeatable."
        ),
        show_default=False,
    ),
]


RsaPrivateOpt = Annotated[
    str | None,
    typer.Option(
        "--rsa-private-path",
        help="Server RSA private key (PEM): every connection must then start "
        "with the RSA/AES handshake (docs/transport.md).",
        show_default=False,
    ),
]
RsaPublicOpt = Annotated[
    str,
    typer.Option(
        "--rsa-public-path",
        help="Allowed client public keys: a PEM file or a directory of *.pem.",
    ),
]
RsaModeOpt = Annotated[
    str,
    typer.Option(
        "--rsa-mode",
        help="Stream modes clients may choose, comma-separated: Plain, RSA, AES.",
    ),
]
RsaLegacyOpt = Annotated[
    bool,
    typer.Option(
        "--rsa-legacy/--no-rsa-legacy",
        help="Serve aio-periodic 1.0.0's legacy handshake (no proof that the "
        "client holds its private key).",
    ),
]


def _unix_mode(value: str) -> int:
    """Parse an octal mode such as ``0600``, ``660`` or ``0o660``."""
    digits = value[2:] if value.lower().startswith("0o") else value
    if not digits or any(c not in "01234567" for c in digits) or int(digits, 8) > 0o777:
        raise typer.BadParameter(
            f"{value!r} is not an octal mode like 0600", param_hint="--unix-mode"
        )
    return int(digits, 8)


# reference flags that have no effect here, accepted so scripts keep working
_NoopOpt = Annotated[int | None, typer.Option(hidden=True)]


def _addresses(hosts: list[str] | None) -> list[str]:
    out: list[str] = []
    for h in hosts or ():
        out.extend(a.strip() for a in h.split(",") if a.strip())
    if not out:
        env = os.environ.get(ADDRESS_ENV, "")
        out = [a.strip() for a in env.split(",") if a.strip()] or [DEFAULT_ADDRESS]
    return out


def _setup_logging(level: str, name: str) -> None:
    lvl = _LEVELS.get(level.lower())
    if lvl is None:
        raise typer.BadParameter(
            f"unknown level {level!r} (one of {', '.join(_LEVELS)})",
            param_hint="--log",
        )
    logging.basicConfig(
        level=lvl,
        stream=sys.stderr,
        format=f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s",
    )


def _serve(
    *,
    host: list[str] | None,
    path: str | None,
    durability: str = "strict",
    log: str,
    name: str,
    config: dict[str, int | None],
    max_frame: int,
    registration_timeout: float,
    max_output: int,
    loop: str,
    auth_file: str | None = None,
    unix_mode: str = "0600",
    max_connections: int = 0,
    max_jobs_per_func: int = 0,
    rsa: tuple[str | None, str, str, bool] = (None, "public_keys.pem", "", True),
    http_writes: bool = False,
    no_http: bool = False,
    http_hosts: list[str] | None = None,
) -> int:
    from .server.app import Server, run  # noqa: PLC0415  # keep CLI start fast

    _setup_logging(log, name)
    if loop not in ("auto", "asyncio", "uvloop"):
        raise typer.BadParameter(f"unknown loop {loop!r}", param_hint="--loop")
    mode = _unix_mode(unix_mode)
    if durability not in ("strict", "relaxed"):
        raise typer.BadParameter(
            f"{durability!r} (expected strict or relaxed)", param_hint="--durability"
        )
    store = path or os.environ.get(PATH_ENV) or _default_store(name)
    try:
        server = Server(
            _addresses(host),
            store=store,
            durability=durability,
            config={k: v for k, v in config.items() if v is not None} or None,
            max_frame=max_frame,
            registration_timeout=registration_timeout,
            max_output=max_output,
            name=name,
            auth_file=auth_file,
            unix_mode=mode,
            max_connections=max_connections,
            max_jobs_per_func=max_jobs_per_func,
            rsa_private_path=rsa[0],
            rsa_public_path=rsa[1],
            rsa_modes=rsa[2] or "Plain,RSA,AES",
            rsa_legacy=rsa[3],
            http=not no_http,
            http_writes=http_writes,
            http_options={"allowed_hosts": http_hosts} if http_hosts else None,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--host") from None
    return run(server, loop=loop)  # type: ignore[arg-type]


def _default_store(name: str) -> str:
    """The store of a server started without ``-p``: a SQLite file at the
    default path (directory created), announced in the log."""
    from .store.sqlite import prepare_default_path  # noqa: PLC0415

    try:
        path = prepare_default_path()
    except OSError as exc:
        raise typer.BadParameter(
            f"cannot create the default store directory: {exc}", param_hint="--path"
        ) from None
    logging.getLogger("periodic_fast.server").info(
        "%s: keeping jobs in %s (default store; -p to choose another)", name, path
    )
    return f"file://{path}"


# -- periodicd -----------------------------------------------------------------

periodicd_app = typer.Typer(
    name="periodicd",
    add_completion=False,
    context_settings=_CONTEXT,
    help="The Periodic job server.",
)


@periodicd_app.command()
def periodicd(
    host: HostOpt = None,
    path: PathOpt = None,
    durability: DurabilityOpt = "strict",
    log: LogOpt = "info",
    name: NameOpt = "periodicd",
    timeout: TimeoutOpt = None,
    assign_wait: AssignWaitOpt = None,
    keepalive: KeepaliveOpt = None,
    lock_timeout: LockTimeoutOpt = None,
    max_frame: MaxFrameOpt = DEFAULT_MAX_FRAME,
    registration_timeout: RegTimeoutOpt = 30.0,
    max_output: MaxOutputOpt = 64 * 1024 * 1024,
    loop: LoopOpt = "auto",
    auth_file: AuthFileOpt = None,
    unix_mode: UnixModeOpt = "0600",
    max_connections: MaxConnectionsOpt = 0,
    max_jobs_per_func: MaxJobsPerFuncOpt = 0,
    rsa_private_path: RsaPrivateOpt = None,
    rsa_public_path: RsaPublicOpt = "public_keys.pem",
    rsa_mode: RsaModeOpt = "Plain,RSA,AES",
    rsa_legacy: RsaLegacyOpt = True,
    http_writes: HttpWritesOpt = False,
    no_http: NoHttpOpt = False,
    http_host: HttpHostOpt = None,
    push_task_size: _NoopOpt = None,
    sched_task_size: _NoopOpt = None,
    max_cache_size: _NoopOpt = None,
) -> None:
    """Run the Periodic server until SIGTERM, SIGINT or a SHUTDOWN request."""
    code = _serve(
        host=host,
        path=path,
        durability=durability,
        log=log,
        name=name,
        config={
            "timeout": timeout,
            "assign-wait": assign_wait,
            "keepalive": keepalive,
            "lock-timeout": lock_timeout,
        },
        max_frame=max_frame,
        registration_timeout=registration_timeout,
        max_output=max_output,
        loop=loop,
        auth_file=auth_file,
        unix_mode=unix_mode,
        max_connections=max_connections,
        max_jobs_per_func=max_jobs_per_func,
        rsa=(rsa_private_path, rsa_public_path, rsa_mode, rsa_legacy),
        http_writes=http_writes,
        no_http=no_http,
        http_hosts=http_host,
    )
    raise typer.Exit(code)


def _run(
    application: typer.Typer, prog_name: str, args: list[str] | None = None
) -> None:
    """Run a typer app; a usage error becomes one line on stderr, exit 2.

    Click's standalone mode prints a usage block and a boxed message; scripts
    and health checks want one line they can log, and the exit status.
    """
    try:
        code = application(args=args, prog_name=prog_name, standalone_mode=False)
    except TyperException as exc:  # usage errors and the like (click's, vendored)
        ctx = getattr(exc, "ctx", None)
        hint = f" (try '{ctx.command_path} -h')" if ctx is not None else ""
        print(f"Error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Abort:
        print("Error: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def periodicd_main() -> None:
    """Entry point of the ``periodicd`` script."""
    _run(periodicd_app, "periodicd")


# -- periodic ------------------------------------------------------------------

app = typer.Typer(
    name="periodic",
    add_completion=False,
    context_settings=_CONTEXT,
    help="Periodic: -d runs the server; sub-commands talk to one.",
)


@app.callback(invoke_without_command=True)
def periodic(
    ctx: typer.Context,
    daemon: Annotated[
        bool,
        typer.Option(
            "-d",
            "--daemon",
            help="Run the server (foreground); takes every periodicd option.",
        ),
    ] = False,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "-H",
            "--host",
            help=f"Server address (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS}).",
            show_default=False,
        ),
    ] = None,
    client_name: Annotated[
        str | None,
        typer.Option(
            "--client-name",
            help="Identity for servers with an auth file "
            "(default: $PERIODIC_CLIENT_NAME); needs --client-token.",
            show_default=False,
        ),
    ] = None,
    client_token: Annotated[
        str | None,
        typer.Option(
            "--client-token",
            help="Token of that identity (default: $PERIODIC_CLIENT_TOKEN).",
            show_default=False,
        ),
    ] = None,
    rsa_private_path: ClientRsaPrivateOpt = None,
    rsa_public_path: ClientRsaPublicOpt = None,
    rsa_mode: ClientRsaModeOpt = None,
) -> None:
    """Periodic job server and client tool."""
    if daemon:  # only reached through --help paths; main() forwards -d
        raise typer.Exit(periodicd_main_args([]))
    # read back by cli_client's _address, _identity and _rsa
    ctx.obj = client_obj(
        _addresses(host),
        client_name,
        client_token,
        rsa_private_path,
        rsa_public_path,
        rsa_mode,
    )
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


def periodicd_main_args(args: list[str]) -> int:
    """Run ``periodicd`` with ``args``; return its exit status."""
    try:
        _run(periodicd_app, "periodic -d", args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


# global options of ``periodic`` that take a value (the next word)
_VALUE_FLAGS = (
    "-H",
    "--host",
    "--client-name",
    "--client-token",
    "--rsa-private-path",
    "--rsa-public-path",
    "--rsa-mode",
)


def _daemon_args(argv: list[str]) -> list[str] | None:
    """``periodic [-H A] -d [server options]`` -> the periodicd arguments, or
    None when ``-d``/``--daemon`` is not among the global options."""
    for i, arg in enumerate(argv):
        if arg in ("-d", "--daemon"):
            return argv[:i] + argv[i + 1 :]
        if not arg.startswith("-") and (i == 0 or argv[i - 1] not in _VALUE_FLAGS):
            return None  # a sub-command name: its own options follow
    return None


def main() -> None:
    """Entry point of the ``periodic`` script and ``python -m periodic_fast``.

    ``periodic -d ...`` is ``periodicd ...``: the server options are declared
    once, on :func:`periodicd`.
    """
    daemon = _daemon_args(sys.argv[1:])
    if daemon is not None:
        _run(periodicd_app, "periodic -d", daemon)
    _run(app, "periodic")


# client sub-commands (status, submit, run, ...) live in cli_client.py
from .cli_client import register as _register_client_commands  # noqa: E402

_register_client_commands(app)

from .cli_keygen import register as _register_keygen  # noqa: E402

_register_keygen(app)
