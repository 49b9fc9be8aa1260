"""``periodicd`` (and ``periodic -d``): the server command and its options.

Takes the reference server's flags where they apply (cli-and-http.md 4.3):
``-H/--host`` (repeatable or comma-separated; fallback ``$PERIODIC_PORT``),
``-p/--path`` (fallback ``$PERIODIC_PATH``, else a SQLite file,
docs/storage.md), ``--log``, ``--name``, ``--auth-file``, plus
``--durability`` and the config keys ``--timeout``, ``--assign-wait``,
``--keepalive``, ``--lock-timeout`` and our ``--max-frame``,
``--registration-timeout``, ``--max-output``, ``--loop``, ``--unix-mode``,
``--max-connections``, ``--max-jobs-per-func``; the RSA/AES transport:
``--rsa-private-path``, ``--rsa-public-path``, ``--rsa-mode``,
``--rsa-legacy``, ``--no-rsa-v1`` (docs/transport.md); HTTP on the same listeners:
``--http-writes``, ``--no-http``, ``--http-host`` (docs/http.md); ``--pidfile``;
``--log-format text|json``; ``--config FILE`` (TOML, a key per option,
:mod:`.cli_config`) and ``--print-config``.  SIGHUP reloads the auth file,
the log settings and, from the config file, the config keys
(:mod:`.server.daemon`).

:func:`periodicd` is the command; :mod:`periodic_fast.cli` puts it on the
``periodicd`` app.  Server code is imported inside it so the CLI starts fast.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, TypeAlias

import typer

from .cli_common import VersionOpt, build_info, die, split_addresses
from .cli_config import (
    CONFIG_ENV,
    Check,
    ConfigFileError,
    ConfigReloader,
    load_file,
    render,
    settings,
)
from .constants import (
    ADDRESS_ENV,
    CONFIG_DEFAULTS,
    DEFAULT_ADDRESS,
    DEFAULT_MAX_FRAME,
    DEFAULT_MAX_REGISTRATION,
    DEFAULT_PEER_LOG_RATE,
)
from .retry import DEFAULT_MAX_DEAD, RetryPolicy, parse_policy_string
from .sched_limits import (
    DEFAULT_MAX_FUNCS,
    DEFAULT_MAX_WAITERS,
    DEFAULT_MAX_WAITERS_PER_CONN,
)

if TYPE_CHECKING:  # pragma: no cover
    from .job import Job, JobState
    from .server.app import LoadProgress, Server

    _Stored: TypeAlias = tuple[Job, JobState]

__all__ = ["PATH_ENV", "periodicd"]

PATH_ENV = "PERIODIC_PATH"
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
_LOG_FORMATS = ("text", "json")
#: the scheduler's config keys among the options (SIGHUP applies them)
_RUNTIME_KEYS = ("timeout", "assign-wait", "keepalive", "lock-timeout")

# -- options ------------------------------------------------------------

HostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-H",
        "--host",
        help=(
            "Listen address: tcp://HOST:PORT, tcp://:PORT, tcp://[::1]:PORT, "
            "HOST:PORT (TCP), unix://PATH or a socket path. Repeat or "
            "comma-separate for several. "
            f"Default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS}."
        ),
        show_default=False,
        envvar=ADDRESS_ENV,
        show_envvar=False,
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
        envvar=PATH_ENV,
        show_envvar=False,
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
LogFormatOpt = Annotated[
    str,
    typer.Option(
        "--log-format",
        help="Log lines as text, or json: one object per line (time, level,"
        " logger, event and the record's extra fields).",
        metavar="text|json",
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
    int | None,
    typer.Option(
        "--max-connections",
        help="Open connections allowed at once; extra ones are closed (default:"
        " 10000, or the open-file limit less 320 if lower; 0: no limit).",
        min=0,
        show_default=False,
    ),
]
MaxRegistrationOpt = Annotated[
    int,
    typer.Option(
        "--max-registration",
        help="Largest registration frame body in bytes, checked from its header.",
        min=1,
    ),
]
PeerLogRateOpt = Annotated[
    float,
    typer.Option(
        "--peer-log-rate",
        help="Log lines per second, per kind, that peers may cause (0: no limit).",
        min=0.0,
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
MaxFuncsOpt = Annotated[
    int,
    typer.Option(
        "--max-funcs",
        help="Known funcs; new ones beyond get NO_WORKER once the idle ones "
        "are forgotten (0: no limit).",
        min=0,
    ),
]
RetryPolicyOpt = Annotated[
    str | None,
    typer.Option(
        "--retry-policy",
        help="Default retry policy: 'reference' (1 s, for ever), 'default', or "
        "max_attempts=N,backoff=S,factor=F,cap=S,jitter=J (missing: the "
        "built-in default's; docs/retries.md).  One set through the HTTP API "
        "wins.",
    ),
]
MaxDeadOpt = Annotated[
    int,
    typer.Option(
        "--max-dead",
        help="Jobs kept in the dead set; the oldest is evicted beyond.",
        min=1,
    ),
]
MaxWaitersOpt = Annotated[
    int,
    typer.Option(
        "--max-waiters",
        help="RUN_JOB/RECV_DATA waiters, all connections together; beyond: "
        "NO_WORKER (0: no limit).",
        min=0,
    ),
]
MaxWaitersPerConnOpt = Annotated[
    int,
    typer.Option(
        "--max-waiters-per-conn",
        help="RUN_JOB/RECV_DATA waiters per connection (0: no limit).",
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


# cluster mode (issue 18, docs/cluster.md)
ClusterOpt = Annotated[
    bool,
    typer.Option(
        "--cluster",
        help="Run as one node of a cluster: every node on the same"
        " -p postgres://... and prefix shares the jobs (docs/cluster.md).",
    ),
]
LeaseTimeOpt = Annotated[
    float,
    typer.Option(
        "--lease-time",
        help="Cluster mode: seconds a node's partitions stay its own without"
        " a heartbeat (a killed node's jobs move after about this long).",
        min=0.5,
    ),
]
NodeIdOpt = Annotated[
    str | None,
    typer.Option(
        "--node-id",
        help="Cluster mode: this node's id, unique in the cluster"
        " (default: host name/first listen address).",
        show_default=False,
    ),
]
PidfileOpt = Annotated[
    str | None,
    typer.Option(
        "--pidfile",
        help="Write the process id to this file at start, remove it at stop;"
        " refuse to start while it names a running process.",
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
        help="Also serve aio-periodic 1.0.0's legacy handshake (no proof that "
        "the client holds its private key: anyone who knows an allowed public "
        "key gets in).",
    ),
]
RsaV1Opt = Annotated[
    bool,
    typer.Option(
        "--rsa-v1/--no-rsa-v1",
        help="Serve the reference's v1 handshake (a relay can swap its mode "
        "and session key); v2 is always served.",
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


def _choice(key: str, allowed: Iterable[str]) -> Check:
    """A check that a value is one of ``allowed``."""
    names = tuple(allowed)

    def check(value: object) -> None:
        if str(value).lower() not in names:
            raise ValueError(f"{value!r} is not one of {', '.join(names)}")

    check.__name__ = f"check_{key}"
    return check


#: config-file checks of the values the options take as plain strings
_CHECKS: dict[str, Check] = {
    "durability": _choice("durability", ("strict", "relaxed")),
    "loop": _choice("loop", ("auto", "asyncio", "uvloop")),
    "log": _choice("log", _LEVELS),
    "log-format": _choice("log-format", _LOG_FORMATS),
    "unix-mode": lambda v: _unix_mode(str(v)),
    "retry-policy": lambda v: parse_policy_string(str(v)),
}


def _retry_policy(text: str | None) -> RetryPolicy | None:
    """``--retry-policy``'s value; a bad one is a usage error."""
    if text is None:
        return None
    try:
        return parse_policy_string(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--retry-policy") from None


def _load_config(ctx: typer.Context, value: str | None) -> str | None:
    """Eager ``--config``: the file's settings become the defaults of the
    options not given as flags or environment (precedence: click's)."""
    if value and not ctx.resilient_parsing:
        try:
            loaded = load_file(ctx, value, _CHECKS)
        except ConfigFileError as exc:
            die(str(exc), 2)
        ctx.default_map = {**(ctx.default_map or {}), **loaded}
    return value


ConfigOpt = Annotated[
    str | None,
    typer.Option(
        "--config",
        help="TOML file of settings, a key per option (its long name without"
        f" dashes); flags and environment win over it. Default: ${CONFIG_ENV}.",
        callback=_load_config,
        is_eager=True,
        show_default=False,
        envvar=CONFIG_ENV,
        show_envvar=False,
    ),
]
PrintConfigOpt = Annotated[
    bool,
    typer.Option(
        "--print-config",
        help="Print the effective settings as TOML, each with its source"
        " (flag, env, file, default), and exit.",
    ),
]

# reference flags that have no effect here, accepted so scripts keep working
_NoopOpt = Annotated[int | None, typer.Option(hidden=True)]


def _setup_logging(level: str, name: str, fmt: str = "text") -> str:
    """Root logger to stderr at ``level``, as text or JSON lines; what was
    set (the SIGHUP reload runs it again with the config file's values)."""
    lvl = _LEVELS.get(level.lower())
    if lvl is None:
        raise typer.BadParameter(
            f"unknown level {level!r} (one of {', '.join(_LEVELS)})",
            param_hint="--log",
        )
    if fmt not in _LOG_FORMATS:
        raise typer.BadParameter(
            f"{fmt!r} (expected text or json)", param_hint="--log-format"
        )
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_json_formatter(name))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {name} %(levelname)s %(name)s: %(message)s")
        )
    logging.basicConfig(level=lvl, handlers=[handler], force=True)
    return f"log level {level.lower()}, {fmt} format"


def _json_formatter(name: str) -> logging.Formatter:
    """One JSON object per line (python-json-logger): ``time`` (ISO 8601,
    UTC), ``level``, ``logger``, ``event`` (the message), ``server``, and
    any ``extra=`` fields of the record (func, conn, peer...)."""
    from pythonjsonlogger.json import JsonFormatter  # noqa: PLC0415  # when asked

    return JsonFormatter(
        "{levelname}{name}{message}",
        style="{",
        rename_fields={"levelname": "level", "name": "logger", "message": "event"},
        timestamp="time",
        static_fields={"server": name},
    )


def _reload_hook(
    server: Server, reloader: ConfigReloader | None, log: str, fmt: str, name: str
) -> Callable[[], str]:
    """What SIGHUP runs besides the auth file: the config file's changed
    settings (the scheduler's config keys applied, the log settings
    re-applied, the others named as needing a restart), then the logging."""
    state = {"log": log, "log-format": fmt}
    slog = logging.getLogger("periodic_fast.server")

    def hook() -> str:
        done: list[str] = []
        changed: dict[str, tuple[Any, Any]] = {}
        if reloader is not None:
            try:
                changed = reloader.reread()
            except ConfigFileError as exc:  # keep serving with what is in force
                slog.error("%s: SIGHUP: %s (settings kept)", name, exc)
                done.append(f"config file {reloader.path} (error, settings kept)")
            else:
                done.append(f"config file {reloader.path} ({len(changed)} changed)")
        for key, (old, new) in changed.items():
            if key in _RUNTIME_KEYS:
                value = CONFIG_DEFAULTS[key] if new is None else int(new)
                server.scheduler.set_config(key, value)
                done.append(f"{key} {'default' if old is None else old} -> {value}")
            elif key in state:
                state[key] = str(new)
            else:
                done.append(f"{key} changed: takes effect at the next start")
        done.append(_setup_logging(state["log"], name, state["log-format"]))
        return "; ".join(done)

    return hook


def _serve(
    *,
    host: list[str] | None,
    path: str | None,
    durability: str = "strict",
    log: str,
    name: str,
    config: dict[str, int | None],
    log_format: str = "text",
    reloader: ConfigReloader | None = None,
    max_frame: int,
    registration_timeout: float,
    max_output: int,
    loop: str,
    auth_file: str | None = None,
    unix_mode: str = "0600",
    max_connections: int | None = None,
    max_registration: int = DEFAULT_MAX_REGISTRATION,
    peer_log_rate: float = DEFAULT_PEER_LOG_RATE,
    max_jobs_per_func: int = 0,
    limits: tuple[int, int, int] = (
        DEFAULT_MAX_FUNCS,
        DEFAULT_MAX_WAITERS,
        DEFAULT_MAX_WAITERS_PER_CONN,
    ),
    retry: tuple[RetryPolicy | None, int] = (None, DEFAULT_MAX_DEAD),
    rsa: tuple[str | None, str, str, bool, bool] = (
        None,
        "public_keys.pem",
        "",
        False,
        True,
    ),
    http_writes: bool = False,
    no_http: bool = False,
    http_hosts: list[str] | None = None,
    pidfile: str | None = None,
    cluster: tuple[bool, float, str | None] = (False, 5.0, None),
) -> int:
    from ._build import fallback_warning  # noqa: PLC0415  # loads the twins
    from .server.app import Server, run  # noqa: PLC0415  # keep CLI start fast

    _setup_logging(log, name, log_format)
    # which build runs: the first question about a slow or odd server
    slog = logging.getLogger("periodic_fast.server")
    slog.info("%s: %s", name, build_info())
    fallback = fallback_warning()
    if fallback is not None:  # an sdist installed without a compiler
        slog.warning("%s: %s", name, fallback)
    if loop not in ("auto", "asyncio", "uvloop"):
        raise typer.BadParameter(f"unknown loop {loop!r}", param_hint="--loop")
    mode = _unix_mode(unix_mode)
    if durability not in ("strict", "relaxed"):
        raise typer.BadParameter(
            f"{durability!r} (expected strict or relaxed)", param_hint="--durability"
        )
    store = path or _default_store(name)
    _check_driver(store)
    cluster_options = None
    if cluster[0]:
        from .server.cluster_node import ClusterOptions  # noqa: PLC0415

        if not store.removeprefix("cache+").startswith(("postgres:", "postgresql:")):
            raise typer.BadParameter(
                "needs a PostgreSQL store shared by every node"
                f" (-p 'postgres://host/db?prefix=name_'), not {store!r};"
                " see docs/cluster.md",
                param_hint="--cluster",
            )
        lease = cluster[1]
        cluster_options = ClusterOptions(
            node=cluster[2], lease_time=lease, margin=min(1.0, lease / 5)
        )
    try:
        server = Server(
            split_addresses(host),
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
            max_registration=max_registration,
            peer_log_rate=peer_log_rate,
            max_jobs_per_func=max_jobs_per_func,
            max_funcs=limits[0],
            max_waiters=limits[1],
            max_waiters_per_conn=limits[2],
            retry_policy=retry[0],
            max_dead=retry[1],
            rsa_private_path=rsa[0],
            rsa_public_path=rsa[1],
            rsa_modes=rsa[2] or "Plain,RSA,AES",
            rsa_legacy=rsa[3],
            rsa_v1=rsa[4],
            http=not no_http,
            http_writes=http_writes,
            http_options={"allowed_hosts": http_hosts} if http_hosts else None,
            load_progress=None if cluster_options else _load_progress(),
            cluster=cluster_options,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--host") from None
    server.on_reload.append(_reload_hook(server, reloader, log, log_format, name))
    return run(server, loop=loop, pidfile=pidfile)  # type: ignore[arg-type]


def _load_progress() -> LoadProgress | None:
    """On a terminal (stderr is a tty), a rich progress line while the
    stored jobs load at start: a million take seconds.  Elsewhere (a log
    file, journald) None: no bars in logs."""
    if not sys.stderr.isatty():
        return None
    try:
        from rich.console import Console  # noqa: PLC0415  # only on a terminal
        from rich.progress import (  # noqa: PLC0415
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:  # pragma: no cover - typer brings rich
        return None

    def progress(jobs: Iterable[_Stored]) -> Iterator[_Stored]:
        columns = (
            SpinnerColumn(),
            TextColumn("loading stored jobs: {task.completed:,}"),
            TimeElapsedColumn(),
        )
        console = Console(stderr=True)
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task("load", total=None)
            n = 0
            for item in jobs:
                yield item
                n += 1
                if not n & 0x3FFF:  # every 16384 jobs: the bar costs nothing
                    bar.update(task, completed=n)
            bar.update(task, completed=n)

    return progress


def _check_driver(store: str) -> None:
    """A PostgreSQL URI without asyncpg installed: one line naming the extra
    that brings it, before anything starts (not a traceback from the store)."""
    if not store.removeprefix("cache+").startswith(("postgres:", "postgresql:")):
        return
    try:
        importlib.import_module("asyncpg")
    except ImportError:
        die(
            "a postgres:// store needs the asyncpg package: "
            "pip install 'periodic-fast[postgres]'"
        )


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


def periodicd(
    ctx: typer.Context,
    host: HostOpt = None,
    path: PathOpt = None,
    durability: DurabilityOpt = "strict",
    log: LogOpt = "info",
    log_format: LogFormatOpt = "text",
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
    max_connections: MaxConnectionsOpt = None,
    max_registration: MaxRegistrationOpt = DEFAULT_MAX_REGISTRATION,
    peer_log_rate: PeerLogRateOpt = DEFAULT_PEER_LOG_RATE,
    max_jobs_per_func: MaxJobsPerFuncOpt = 0,
    max_funcs: MaxFuncsOpt = DEFAULT_MAX_FUNCS,
    max_waiters: MaxWaitersOpt = DEFAULT_MAX_WAITERS,
    max_waiters_per_conn: MaxWaitersPerConnOpt = DEFAULT_MAX_WAITERS_PER_CONN,
    retry_policy: RetryPolicyOpt = None,
    max_dead: MaxDeadOpt = DEFAULT_MAX_DEAD,
    rsa_private_path: RsaPrivateOpt = None,
    rsa_public_path: RsaPublicOpt = "public_keys.pem",
    rsa_mode: RsaModeOpt = "Plain,RSA,AES",
    rsa_legacy: RsaLegacyOpt = False,
    rsa_v1: RsaV1Opt = True,
    http_writes: HttpWritesOpt = False,
    no_http: NoHttpOpt = False,
    http_host: HttpHostOpt = None,
    pidfile: PidfileOpt = None,
    cluster: ClusterOpt = False,
    lease_time: LeaseTimeOpt = 5.0,
    node_id: NodeIdOpt = None,
    config_file: ConfigOpt = None,
    print_config: PrintConfigOpt = False,
    version: VersionOpt = False,
    push_task_size: _NoopOpt = None,
    sched_task_size: _NoopOpt = None,
    max_cache_size: _NoopOpt = None,
) -> None:
    """Run the Periodic server until SIGTERM, SIGINT or a SHUTDOWN request
    (SIGHUP reloads the auth file, the log settings and the config file's
    config keys)."""
    if print_config:
        typer.echo(render(settings(ctx)))
        raise typer.Exit(0)
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
        log_format=log_format,
        reloader=ConfigReloader(ctx, config_file, _CHECKS) if config_file else None,
        max_frame=max_frame,
        registration_timeout=registration_timeout,
        max_output=max_output,
        loop=loop,
        auth_file=auth_file,
        unix_mode=unix_mode,
        max_connections=max_connections,
        max_registration=max_registration,
        peer_log_rate=peer_log_rate,
        max_jobs_per_func=max_jobs_per_func,
        limits=(max_funcs, max_waiters, max_waiters_per_conn),
        retry=(_retry_policy(retry_policy), max_dead),
        rsa=(rsa_private_path, rsa_public_path, rsa_mode, rsa_legacy, rsa_v1),
        http_writes=http_writes,
        no_http=no_http,
        http_hosts=http_host,
        pidfile=pidfile,
        cluster=(cluster, lease_time, node_id),
    )
    raise typer.Exit(code)
