"""Client sub-commands of ``periodic`` (cli-and-http.md 1.3, 4.4, 6.1).

Registered onto :data:`periodic_fast.cli.app` by :func:`register`.  The
global ``-H/--host`` (fallback ``$PERIODIC_PORT``, then
``unix:///tmp/periodic.sock``) is parsed by the app's callback; so are
``--client-name`` / ``--client-token`` (fallback ``$PERIODIC_CLIENT_NAME`` /
``$PERIODIC_CLIENT_TOKEN``), the identity every sub-command and the exec
worker register with (types 3 and 4) on servers with an auth file.

Both original syntaxes work where they do not clash:

* ``submit -f F -n N --args W -t T --sched_later S`` (Go) and
  ``submit F N -w DATA --later S --timeout T`` (HS); ``-w @FILE`` reads a file;
* ``remove -f F -n N`` / ``remove F N [N...]``, ``drop -f F`` / ``drop F...``;
* ``dump FILE`` / ``dump -o FILE``, ``load FILE`` / ``load -i FILE`` (the file
  is the DUMP job-list bytes, protocol.md 2.3);
* ``run -f F --exec CMD`` is the exec worker (:mod:`periodic_fast.exec_worker`),
  ``run F N`` runs a job synchronously and prints its result.

Exit status: 0 on success; 1 with a one-line ``Error: ...`` on stderr when the
server cannot be reached, refuses, or a job fails; 2 for bad usage.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import typer

if TYPE_CHECKING:
    from .client import Client
    from .job import Job
    from .rsa_transport import RSAConfig, RSAModeName

__all__ = ["register"]

_T = TypeVar("_T")
NAME_ENV = "PERIODIC_CLIENT_NAME"
TOKEN_ENV = "PERIODIC_CLIENT_TOKEN"
RSA_PRIVATE_ENV = "PERIODIC_RSA_PRIVATE_PATH"
RSA_PUBLIC_ENV = "PERIODIC_RSA_PUBLIC_PATH"
RSA_MODE_ENV = "PERIODIC_RSA_MODE"
_FAILED_RESULTS = (b"failed", b"expired", b"removed")


# Exec-worker options shared by ``periodic run -f F --exec CMD`` and
# ``periodic-run`` (typer declares options per command; these are declared once).
BroadcastOpt = Annotated[
    bool, typer.Option("--broadcast", help="Exec worker: register a broadcast func.")
]
NoNameOpt = Annotated[
    bool, typer.Option("--no-name", help="Exec worker: do not append the job name.")
]
RetrySecsOpt = Annotated[
    int,
    typer.Option(
        "--retry-secs", help="Exec worker: on failure, run again in S s.", min=0
    ),
]
SkipFailOpt = Annotated[
    bool, typer.Option("--skip-fail", help="Exec worker: report failures as done.")
]
LockNameOpt = Annotated[
    str | None, typer.Option("--lock-name", help="Exec worker: hold this lock per job.")
]
LockCountOpt = Annotated[
    int, typer.Option("--lock-count", help="Exec worker: holders of that lock.", min=1)
]
WorkDataOpt = Annotated[
    bool,
    typer.Option(
        "--work-data",
        help="Exec worker: stream stdout lines 'WORKDATA text' to listeners; "
        "'WORKDONE text' sets the result.",
    ),
]


def _mem_limit(value: str | int) -> int:
    from .exec_worker import parse_size  # noqa: PLC0415  # CLI starts fast

    if isinstance(value, int):  # the default is passed through the parser too
        return value
    try:
        return parse_size(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


MemLimitOpt = Annotated[
    int,
    typer.Option(
        "--mem-limit",
        metavar="SIZE",
        parser=_mem_limit,
        help="Exec worker: kill the command (its process group) when its RSS "
        "exceeds SIZE bytes (k/m/g suffix, 1024-based; 0: off); a failure.",
    ),
]


# The RSA/AES transport options every client tool shares (cli-and-http.md 4.2);
# the env fallbacks are applied by _rsa so that an empty variable counts as unset.
RsaPrivateOpt = Annotated[
    str | None,
    typer.Option(
        "--rsa-private-path",
        help="Own RSA private key (PEM); connect through the RSA/AES transport "
        f"(default: ${RSA_PRIVATE_ENV}; off when empty).",
        show_default=False,
    ),
]
RsaPublicOpt = Annotated[
    str | None,
    typer.Option(
        "--rsa-public-path",
        help="The server's RSA public key, file or directory "
        f"(default: ${RSA_PUBLIC_ENV}, else public_key.pem).",
        show_default=False,
    ),
]
RsaModeOpt = Annotated[
    str | None,
    typer.Option(
        "--rsa-mode",
        help=f"Plain, RSA or AES (default: ${RSA_MODE_ENV}, else AES).",
        show_default=False,
    ),
]


def client_obj(
    addresses: list[str],
    client_name: str | None,
    client_token: str | None,
    rsa_private_path: str | None,
    rsa_public_path: str | None,
    rsa_mode: str | None,
) -> dict[str, Any]:
    """The ``ctx.obj`` of a client tool: its global options, read back by
    :func:`_address`, :func:`_identity` and :func:`_rsa` (empty = unset)."""
    return {
        "addresses": addresses,
        "client_name": client_name or None,
        "client_token": client_token or None,
        "rsa_private_path": rsa_private_path or None,
        "rsa_public_path": rsa_public_path or None,
        "rsa_mode": rsa_mode or None,
    }


def _die(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def _address(ctx: typer.Context) -> str:
    obj = ctx.obj or {}
    addrs = obj.get("addresses") or []
    from .client import resolve_address  # noqa: PLC0415  # CLI starts fast

    return str(addrs[0]) if addrs else resolve_address()


def _identity(ctx: typer.Context) -> tuple[str | None, str | None]:
    """``--client-name`` / ``--client-token`` (global options), else
    ``$PERIODIC_CLIENT_NAME`` / ``$PERIODIC_CLIENT_TOKEN`` (an empty variable
    counts as unset), each on its own; both or neither must result."""
    obj = ctx.find_root().obj or {}
    name = obj.get("client_name") or os.environ.get(NAME_ENV) or None
    token = obj.get("client_token") or os.environ.get(TOKEN_ENV) or None
    if (name is None) != (token is None):
        _die(
            "--client-name and --client-token must be provided together "
            f"(or ${NAME_ENV} and ${TOKEN_ENV})"
        )
    return name, token


def _rsa(ctx: typer.Context) -> RSAConfig | None:
    """The RSA/AES transport options (global flags, else ``$PERIODIC_RSA_*``;
    an empty variable counts as unset) as a config with its keys read, or
    None when no private key is given.  A bad mode (even with the transport
    off), a missing or bad key file, or no ``cryptography``: one line, exit 1."""
    from .rsa_transport import (  # noqa: PLC0415  # CLI starts fast
        DEFAULT_PUBLIC_PATH,
        MODES,
        RSAConfig,
        RSAUnavailable,
    )

    obj = ctx.find_root().obj or {}
    mode = obj.get("rsa_mode") or os.environ.get(RSA_MODE_ENV) or "AES"
    if mode not in MODES:
        _die(
            f"unknown RSA mode {mode!r} (--rsa-mode or ${RSA_MODE_ENV}: "
            "Plain, RSA or AES)"
        )
    private = obj.get("rsa_private_path") or os.environ.get(RSA_PRIVATE_ENV)
    if not private:
        return None
    public = (
        obj.get("rsa_public_path")
        or os.environ.get(RSA_PUBLIC_ENV)
        or DEFAULT_PUBLIC_PATH
    )
    try:
        config = RSAConfig(private, public, mode=cast("RSAModeName", mode))
        config.load()  # errors now, as one line; the client reuses the keys
    except (ValueError, RSAUnavailable) as exc:
        _die(str(exc))
    return config


def _with_client(
    ctx: typer.Context,
    body: Callable[[Client], Awaitable[_T]],
    *,
    timeout: float = 10.0,
    max_frame: int | None = None,
) -> _T:
    """Connect, run ``body(client)``, close; any error -> one line, exit 1.
    ``max_frame`` raises the client's cap on a reply frame (DUMP)."""
    from .client import Client, ClientError  # noqa: PLC0415
    from .errors import PeriodicError  # noqa: PLC0415

    address = _address(ctx)
    try:
        name, token = _identity(ctx)
        client = Client(
            address,
            reconnect=False,
            timeout=timeout,
            name=name,
            token=token,
            rsa=_rsa(ctx),
            **({} if max_frame is None else {"max_frame": max_frame}),
        )
    except ValueError as exc:
        _die(str(exc))

    async def main() -> _T:
        try:
            await client.connect()
            return await body(client)
        finally:
            await client.close()

    try:
        return asyncio.run(main())
    except ClientError as exc:
        _die(str(exc) or type(exc).__name__)
    except (PeriodicError, OSError) as exc:
        _die(f"{address}: {exc}")


def _read_workload(value: str | None) -> bytes:
    if not value:
        return b""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            _die(f"cannot read workload file {value[1:]}: {exc.strerror}")
    return value.encode()


def _pick(
    positional: str | None, option: str | None, what: str, ctx: typer.Context
) -> str:
    value = option if option is not None else positional
    if not value:
        typer.echo(ctx.get_help(), err=True)
        _die(f"missing {what}", 2)
    return value


# -- commands ----------------------------------------------------------------------


def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """Show per-func statistics (workers, jobs, processing, locked, next run)."""
    stats = _with_client(ctx, lambda c: c.status_list())
    if as_json:
        rows = [
            {
                "func": s.func.decode(errors="replace"),
                "workers": s.workers,
                "jobs": s.jobs,
                "processing": s.processing,
                "locked": s.locked,
                "sched_at": s.sched_at,
            }
            for s in stats
        ]
        typer.echo(json.dumps(rows))
        return
    table = [["FUNCTIONS", "WORKERS", "JOBS", "PROCESSING", "LOCKED", "SCHEDAT"]]
    for s in stats:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.sched_at))
        table.append(
            [
                s.func.decode(errors="replace"),
                str(s.workers),
                str(s.jobs),
                str(s.processing),
                str(s.locked),
                when,
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        typer.echo(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )


def submit(
    ctx: typer.Context,
    func_arg: Annotated[str | None, typer.Argument(metavar="[FUNC]")] = None,
    name_arg: Annotated[str | None, typer.Argument(metavar="[NAME]")] = None,
    func: Annotated[str | None, typer.Option("-f", "--func", help="Func.")] = None,
    name: Annotated[str | None, typer.Option("-n", "--name", help="Job name.")] = None,
    workload: Annotated[
        str | None,
        typer.Option("-w", "--workload", "--args", help="Workload, or @FILE."),
    ] = None,
    later: Annotated[
        int,
        typer.Option(
            "--later", "--sched_later", "--sched-later", help="Delay in seconds.", min=0
        ),
    ] = 0,
    timeout: Annotated[
        int,
        typer.Option("-t", "--timeout", help="Run timeout (s, 0: server's).", min=0),
    ] = 0,
) -> None:
    """Submit a job: ``submit F N`` or ``submit -f F -n N``."""
    f = _pick(func_arg, func, "FUNC (-f)", ctx)
    n = _pick(name_arg, name, "NAME (-n)", ctx)
    data = _read_workload(workload)
    sched_at = int(time.time()) + later if later else 0
    ok = _with_client(ctx, lambda c: c.submit_job(f, n, data, sched_at, 0, timeout))
    if not ok:
        _die("server refused the job")


def remove(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None, typer.Argument(metavar="[FUNC NAME...]", show_default=False)
    ] = None,
    func: Annotated[str | None, typer.Option("-f", "--func", help="Func.")] = None,
    name: Annotated[str | None, typer.Option("-n", "--name", help="Job name.")] = None,
) -> None:
    """Remove jobs: ``remove F N [N...]`` or ``remove -f F -n N``."""
    rest = list(args or [])
    f = func if func is not None else (rest.pop(0) if rest else None)
    names = ([name] if name is not None else []) + rest
    if not f or not names:
        typer.echo(ctx.get_help(), err=True)
        _die("need FUNC and at least one NAME", 2)

    async def body(c: Client) -> bool:
        return all([await c.remove_job(f, n) for n in names])

    if not _with_client(ctx, body):
        _die("server refused the request")


def drop(
    ctx: typer.Context,
    funcs: Annotated[
        list[str] | None, typer.Argument(metavar="[FUNC...]", show_default=False)
    ] = None,
    func: Annotated[str | None, typer.Option("-f", "--func", help="Func.")] = None,
) -> None:
    """Drop funcs and their jobs (only funcs with no worker): ``drop F...``."""
    names = ([func] if func else []) + list(funcs or [])
    if not names:
        typer.echo(ctx.get_help(), err=True)
        _die("need at least one FUNC", 2)

    async def body(c: Client) -> bool:
        return all([await c.drop_func(f) for f in names])

    if not _with_client(ctx, body):
        _die("server refused the request")


def dump(
    ctx: typer.Context,
    file_arg: Annotated[str | None, typer.Argument(metavar="[FILE]")] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Output file (dump.db).")
    ] = None,
) -> None:
    """Write every job to FILE (the DUMP job list; default dump.db)."""
    path = Path(output or file_arg or "dump.db")
    # one DATA frame holds every job (~45 B each): past ~1.5M jobs it is larger
    # than the default 64 MiB cap, so accept any size the u32 length allows
    data = _with_client(ctx, lambda c: c.dump_raw(timeout=600), max_frame=2**32 - 1)
    try:
        path.write_bytes(data)
    except OSError as exc:
        _die(f"failed to write dump file {path}: {exc.strerror}")


def load(
    ctx: typer.Context,
    file_arg: Annotated[str | None, typer.Argument(metavar="[FILE]")] = None,
    input_: Annotated[
        str | None, typer.Option("-i", "--input", help="Input file (dump.db).")
    ] = None,
) -> None:
    """Load the jobs of a dump FILE (default dump.db; ours/HS or Go-2016)."""
    from .codec import decode_job_list  # noqa: PLC0415
    from .errors import ProtocolError  # noqa: PLC0415

    path = Path(input_ or file_arg or "dump.db")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        _die(f"failed to read dump file {path}: {exc.strerror}")
    try:
        jobs = _go_dump_jobs(raw) if raw[4:6] == b'{"' else decode_job_list(raw)
    except (ProtocolError, ValueError) as exc:
        _die(f"invalid dump file {path}: {exc}")
    if not _with_client(ctx, lambda c: c.load(jobs, timeout=60)):
        _die("server refused the load")


def _go_dump_jobs(raw: bytes) -> list[Job]:
    """Jobs of a Go-2016 dump: frames of a 4-byte big-endian length and the
    JSON ``{"jobs": [...]}`` (cli-and-http.md 1.5).  Each job keeps func,
    name, workload, sched_at and timeout; ids and states are dropped (the
    server stores every loaded job as pending, as the Go server did).

    :raises ValueError: a truncated frame, bad JSON or a bad job object.
    """
    from .job import Job  # noqa: PLC0415

    jobs: list[Job] = []
    pos = 0
    while pos < len(raw):
        if len(raw) - pos < 4:
            raise ValueError(f"truncated frame header at byte {pos}")
        size = int.from_bytes(raw[pos : pos + 4], "big")
        body = raw[pos + 4 : pos + 4 + size]
        if len(body) != size:
            raise ValueError(f"frame at byte {pos} wants {size} bytes")
        pos += 4 + size
        try:
            doc = json.loads(body)
            items = doc["jobs"] or []
            for item in items:
                func = str(item["func"]).encode()
                name = str(item["name"]).encode()
                if not func or not name:
                    continue  # the Go server skipped these too
                sched_at = int(item.get("sched_at") or 0)
                timeout = int(item.get("timeout") or 0)
                if not -(2**63) <= sched_at < 2**63 or not 0 <= timeout < 2**31:
                    raise ValueError(f"sched_at or timeout out of range in {item}")
                if len(func) > 255 or len(name) > 255:
                    raise ValueError(f"func or name longer than 255 bytes in {item}")
                workload = str(item.get("workload") or "").encode()
                jobs.append(Job(func, name, workload, sched_at, 0, timeout))
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"bad job object in a JSON frame: {exc!r}") from None
    return jobs


def recv(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(help="Func.")],
    name: Annotated[str, typer.Argument(help="Job name.")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Max wait per chunk (s).", min=0.1)
    ] = 120.0,
) -> None:
    """Print the data a worker streams for a job until it ends."""

    async def body(c: Client) -> None:
        async for chunk in c.recv_job_data(func, name, timeout):
            sys.stdout.buffer.write(chunk + b"\n")
            sys.stdout.flush()

    _with_client(ctx, body, timeout=timeout)


def ping(ctx: typer.Context) -> None:
    """Exit 0 when the server answers (health check)."""
    if not _with_client(ctx, lambda c: c.ping(), timeout=5.0):
        _die("no PONG")


def shutdown(ctx: typer.Context) -> None:
    """Stop the server."""
    _with_client(ctx, lambda c: c.shutdown())


def run(
    ctx: typer.Context,
    func_arg: Annotated[str | None, typer.Argument(metavar="[FUNC]")] = None,
    name_arg: Annotated[str | None, typer.Argument(metavar="[NAME]")] = None,
    func: Annotated[
        str | None, typer.Option("-f", "--func", help="Func to serve (worker).")
    ] = None,
    exec_: Annotated[
        str | None,
        typer.Option("--exec", "-e", help="Command per job (worker mode)."),
    ] = None,
    workload: Annotated[
        str | None, typer.Option("-w", "--workload", help="Workload, or @FILE.")
    ] = None,
    timeout: Annotated[
        int | None,
        typer.Option(
            "-t",
            "--timeout",
            help="Job run: job timeout (default 10). Worker: kill the command "
            "after S s (default: the job's timeout; 0: never).",
            min=0,
        ),
    ] = None,
    thread: Annotated[
        int, typer.Option("--thread", "-n", help="Worker: concurrent jobs.", min=1)
    ] = 1,
    broadcast: BroadcastOpt = False,
    no_name: NoNameOpt = False,
    retry_secs: RetrySecsOpt = 0,
    skip_fail: SkipFailOpt = False,
    lock_name: LockNameOpt = None,
    lock_count: LockCountOpt = 1,
    work_data: WorkDataOpt = False,
    mem_limit: MemLimitOpt = 0,
    data_flag: Annotated[
        bool,
        typer.Option(
            "--data", help="Worker: stdout is the result (always the case here)."
        ),
    ] = False,
) -> None:
    """``run -f F --exec CMD``: exec worker (job name appended, workload on
    stdin, last stdout line SCHED_LATER N / FAIL / DONE decides).
    ``run F N``: run a job now, print its result."""
    if func is not None or exec_ is not None:
        if func is None or not exec_:
            _die("worker mode needs both -f FUNC and --exec CMD", 2)
        _exec_worker(ctx, func, exec_, work_data=work_data)
        return
    f = _pick(func_arg, None, "FUNC", ctx)
    n = _pick(name_arg, None, "NAME", ctx)
    data = _read_workload(workload)
    job_timeout = timeout or 10

    def chunk(data: bytes) -> None:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()

    result = _with_client(
        ctx,
        lambda c: c.run_job(f, n, data, timeout=job_timeout, stream=chunk),
        timeout=job_timeout + 5.0,
    )
    if result in _FAILED_RESULTS:
        _die(f"job {f}/{n} {result.decode()}")
    sys.stdout.buffer.write(result)
    if result and not result.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


def _exec_worker(
    ctx: typer.Context,
    func: str,
    command: str | list[str],
    *,
    pipe: bool = False,
    work_data: bool = False,
    ready_timeout: float = 10.0,
) -> None:
    """Run the exec worker (``pipe``: the pipe worker, ``ready_timeout``)
    until it drains.  The shared options come from the command's own
    parameters (``run``, ``periodic-run`` and ``periodic-run-pipe`` name them
    alike: ``thread``, ``timeout``, ``no_name``, ...), the address, identity
    and RSA options from the global ones (or :func:`_hs_context`)."""
    from .client import ClientError  # noqa: PLC0415
    from .exec_worker import WorkerOptions, run_exec_worker  # noqa: PLC0415
    from .pipe_worker import run_pipe_worker  # noqa: PLC0415

    address = _address(ctx)
    name, token = _identity(ctx)
    p = ctx.params
    options = WorkerOptions(
        threads=p["thread"],
        timeout=p["timeout"],
        no_name=p["no_name"],
        broadcast=p["broadcast"],
        retry_secs=p["retry_secs"],
        skip_fail=p["skip_fail"],
        lock_name=p["lock_name"],
        lock_count=p["lock_count"],
        mem_limit=p["mem_limit"],
        name=name,
        token=token,
        rsa=_rsa(ctx),
    )
    try:
        asyncio.run(
            run_pipe_worker(
                address, func, command, options, ready_timeout=ready_timeout
            )
            if pipe
            else run_exec_worker(address, func, command, options, work_data=work_data)
        )
    except ClientError as exc:
        _die(str(exc))
    except ValueError as exc:
        _die(str(exc), 2)
    except KeyboardInterrupt:  # pragma: no cover - signal handler drains first
        raise typer.Exit(130) from None


config_app = typer.Typer(
    name="config",
    help="Read or write server config keys.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@config_app.command("get")
def config_get(
    ctx: typer.Context, key: Annotated[str, typer.Argument(help="Config key.")]
) -> None:
    """Print the value of KEY (unknown keys read 0)."""
    typer.echo(str(_with_client(ctx, lambda c: c.config_get(key))))


@config_app.command("set")
def config_set(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="Config key.")],
    value: Annotated[int, typer.Argument(help="Integer value.", min=0)],
) -> None:
    """Set KEY to VALUE."""
    if not _with_client(ctx, lambda c: c.config_set(key, value)):
        _die("server refused the request")


def register(app: typer.Typer) -> None:
    """Add the client sub-commands to ``app`` (the ``periodic`` app)."""
    for fn in (status, submit, remove, drop, dump, load, recv, ping, shutdown, run):
        app.command(fn.__name__)(fn)
    app.add_typer(config_app, name="config")


# -- periodic-run (the HS exec worker's own command line) ---------------------------

# options of the HS tools' own command lines (periodic-run, periodic-run-pipe)
HostOpt = Annotated[
    str | None,
    typer.Option(
        "-H",
        "--host",
        help="Server address (default: $PERIODIC_PORT, else "
        "unix:///tmp/periodic.sock).",
        show_default=False,
    ),
]
ClientNameOpt = Annotated[
    str | None,
    typer.Option(
        "--client-name",
        help="Identity (default: $PERIODIC_CLIENT_NAME).",
        show_default=False,
    ),
]
ClientTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--client-token",
        help="Its token (default: $PERIODIC_CLIENT_TOKEN).",
        show_default=False,
    ),
]


def _hs_context(ctx: typer.Context) -> None:
    """Put an HS tool's own -H / identity / RSA options (its parameters
    ``host``, ``client_name``, ...) where ``_address``, ``_identity`` and
    ``_rsa`` find the global ones of ``periodic``."""
    from .client import resolve_address  # noqa: PLC0415

    p = ctx.params
    ctx.obj = client_obj(
        [resolve_address(p["host"])],
        p["client_name"],
        p["client_token"],
        p["rsa_private_path"],
        p["rsa_public_path"],
        p["rsa_mode"],
    )


periodic_run_app = typer.Typer(
    name="periodic-run",
    add_completion=False,
    context_settings={
        "help_option_names": ["-h", "--help"],
        # options end at FUNC: everything after COMMAND belongs to it
        "allow_interspersed_args": False,
    },
    help="Exec worker, HS syntax: periodic-run [OPTIONS] FUNC COMMAND [ARGS...].",
)


@periodic_run_app.command()
def periodic_run(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC", help="Func to serve.")],
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND [ARGS...]",
            help="Run per job, job name appended, workload on stdin.",
        ),
    ],
    host: HostOpt = None,
    thread: Annotated[
        int,
        typer.Option("--thread", help="Concurrent jobs.", min=1, envvar="THREAD"),
    ] = 1,
    timeout: Annotated[
        int | None,
        typer.Option(
            "--timeout",
            help="Kill the command after S s (default: the job's timeout; 0: never).",
            min=0,
        ),
    ] = None,
    broadcast: BroadcastOpt = False,
    no_name: NoNameOpt = False,
    retry_secs: RetrySecsOpt = 0,
    skip_fail: SkipFailOpt = False,
    lock_name: LockNameOpt = None,
    lock_count: LockCountOpt = 1,
    work_data: WorkDataOpt = False,
    mem_limit: MemLimitOpt = 0,
    data: Annotated[
        bool, typer.Option("--data", help="stdout is the result (always the case).")
    ] = False,
    client_name: ClientNameOpt = None,
    client_token: ClientTokenOpt = None,
    rsa_private_path: RsaPrivateOpt = None,
    rsa_public_path: RsaPublicOpt = None,
    rsa_mode: RsaModeOpt = None,
) -> None:
    """Serve FUNC: run COMMAND [ARGS...] for each job (as ``periodic run -f
    FUNC --exec ...``; the last stdout line SCHED_LATER N / FAIL / DONE and the
    exit status decide the outcome)."""
    _hs_context(ctx)
    _exec_worker(ctx, func, list(command), work_data=work_data)


def periodic_run_main() -> None:
    """Entry point of a ``periodic-run`` script (HS syntax)."""
    from .cli import _run  # noqa: PLC0415  # one-line usage errors, exit 2

    _run(periodic_run_app, "periodic-run")


# -- periodic-run-pipe (persistent runners fed over a pipe) -----------------------

periodic_run_pipe_app = typer.Typer(
    name="periodic-run-pipe",
    add_completion=False,
    context_settings={
        "help_option_names": ["-h", "--help"],
        "allow_interspersed_args": False,
    },
    help="Pipe worker: periodic-run-pipe [OPTIONS] FUNC COMMAND [ARGS...].",
)


@periodic_run_pipe_app.command()
def periodic_run_pipe(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC", help="Func to serve.")],
    command: Annotated[
        list[str],
        typer.Argument(
            metavar="COMMAND [ARGS...]",
            help="The runner: started --thread times, fed '<msgid> <name>' "
            "lines, answers '<msgid> <result>'.",
        ),
    ],
    host: HostOpt = None,
    thread: Annotated[
        int,
        typer.Option("--thread", help="Runner processes.", min=1, envvar="THREAD"),
    ] = 1,
    ready_timeout: Annotated[
        float,
        typer.Option(
            "--ready-timeout",
            help="Seconds a started runner has to print its ready line "
            "(0: forever); else it is killed and started again.",
            min=0,
        ),
    ] = 10.0,
    timeout: Annotated[
        int | None,
        typer.Option(
            "--timeout",
            help="Fail a job after S s and kill its runner (default: the job's "
            "timeout; 0: never).",
            min=0,
        ),
    ] = None,
    broadcast: BroadcastOpt = False,
    no_name: Annotated[
        bool,
        typer.Option("--no-name", help="Send the workload instead of the job name."),
    ] = False,
    retry_secs: RetrySecsOpt = 0,
    skip_fail: SkipFailOpt = False,
    lock_name: LockNameOpt = None,
    lock_count: LockCountOpt = 1,
    mem_limit: MemLimitOpt = 0,
    client_name: ClientNameOpt = None,
    client_token: ClientTokenOpt = None,
    rsa_private_path: RsaPrivateOpt = None,
    rsa_public_path: RsaPublicOpt = None,
    rsa_mode: RsaModeOpt = None,
) -> None:
    """Serve FUNC with --thread long-lived COMMAND [ARGS...] runners, one job
    per runner at a time over its stdin/stdout (see docs/usage.md 6)."""
    _hs_context(ctx)
    _exec_worker(ctx, func, list(command), pipe=True, ready_timeout=ready_timeout)


def periodic_run_pipe_main() -> None:
    """Entry point of the ``periodic-run-pipe`` script."""
    from .cli import _run  # noqa: PLC0415  # one-line usage errors, exit 2

    _run(periodic_run_pipe_app, "periodic-run-pipe")
