"""The worker commands: ``periodic run`` and the HS tools' command lines.

* ``periodic run -f F --exec CMD`` is the exec worker
  (:mod:`periodic_fast.exec_worker`), ``periodic run F N`` runs a job
  synchronously and prints its result;
* ``periodic-run [OPTIONS] FUNC COMMAND [ARGS...]`` is the exec worker in the
  HS syntax (options end at FUNC; the rest belongs to the command);
* ``periodic-run-pipe [OPTIONS] FUNC COMMAND [ARGS...]`` feeds jobs to
  long-lived runners over a pipe (:mod:`periodic_fast.pipe_worker`).

The HS tools take the connection options themselves (``-H``, the identity,
the RSA options, each with its environment fallback); ``periodic run`` takes
the global ones of ``periodic``.  :mod:`periodic_fast.cli` builds the apps.

Exit status: 0 on success; 1 with a one-line ``Error: ...`` on stderr when the
server cannot be reached, refuses, or a job fails; 2 for bad usage.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from .cli_common import (
    MAX_TIMEOUT,
    THREAD_ENV,
    ClientOptions,
    HsClientNameOpt,
    HsClientTokenOpt,
    HsHostOpt,
    RsaModeOpt,
    RsaPrivateOpt,
    RsaPublicOpt,
    VersionOpt,
    client_options,
    die,
    pick,
    read_workload,
    rsa_config,
    split_addresses,
    usage_error,
    with_client,
)

__all__ = [
    "BroadcastOpt",
    "LockCountOpt",
    "LockNameOpt",
    "MemLimitOpt",
    "NoNameOpt",
    "RetrySecsOpt",
    "SkipFailOpt",
    "WorkDataOpt",
    "periodic_run",
    "periodic_run_pipe",
    "run",
]

_FAILED_RESULTS = (b"failed", b"expired", b"removed")


# Exec-worker options shared by ``periodic run -f F --exec CMD``, ``periodic-run``
# and (most) ``periodic-run-pipe``: typer declares options per command, these once.
BroadcastOpt = Annotated[
    bool, typer.Option("--broadcast", help="Exec worker: register a broadcast func.")
]
NoNameOpt = Annotated[
    bool, typer.Option("--no-name", help="Exec worker: do not append the job name.")
]
RetrySecsOpt = Annotated[
    int,
    typer.Option(
        "--retry-secs",
        help="Deprecated, no effect: a failure is WORK_FAIL and the server's "
        "retry policy sets the delay (periodic retry set FUNC --backoff S "
        "--factor 1).",
        min=0,
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


def run(
    ctx: typer.Context,
    func_arg: Annotated[str | None, typer.Argument(metavar="FUNC")] = None,
    name_arg: Annotated[str | None, typer.Argument(metavar="NAME")] = None,
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
            max=MAX_TIMEOUT,
        ),
    ] = None,
    thread: Annotated[
        int,
        typer.Option(
            "--thread", "-n", help="Worker: jobs at once (over all -H servers).", min=1
        ),
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
    """Run an exec worker, or one job.

    run -f F --exec CMD: exec worker (job name appended, workload on stdin,
    last stdout line SCHED_LATER N / FAIL / DONE decides).  run F N: run a
    job now, print its result."""
    if func is not None or exec_ is not None:
        if func is None or not exec_:
            usage_error(ctx, "worker mode needs both -f FUNC and --exec CMD")
        _exec_worker(ctx, client_options(ctx), func, exec_, work_data=work_data)
        return
    f = pick(func_arg, None, "FUNC", ctx)
    n = pick(name_arg, None, "NAME", ctx)
    data = read_workload(workload)
    job_timeout = timeout or 10

    def chunk(data: bytes) -> None:
        sys.stdout.buffer.write(data + b"\n")
        sys.stdout.flush()

    result = with_client(
        ctx,
        lambda c: c.run_job(f, n, data, timeout=job_timeout, stream=chunk),
        timeout=job_timeout + 5.0,
    )
    if result in _FAILED_RESULTS:
        die(f"job {f}/{n} {result.decode()}")
    sys.stdout.buffer.write(result)
    if result and not result.endswith(b"\n"):
        sys.stdout.buffer.write(b"\n")
    sys.stdout.flush()


def _exec_worker(
    ctx: typer.Context,
    client: ClientOptions,
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
    and RSA options from ``client``."""
    import shlex  # noqa: PLC0415

    from .client import ClientError  # noqa: PLC0415
    from .exec_worker import (  # noqa: PLC0415
        WorkerOptions,
        check_command,
        run_exec_worker,
    )
    from .pipe_worker import run_pipe_worker  # noqa: PLC0415

    argv = shlex.split(command) if isinstance(command, str) else command
    try:  # a typo is one line now, not a failed job every second
        if argv:  # empty: the worker's own error, exit 2
            check_command(argv[0])
    except ValueError as exc:
        die(str(exc))
    name, token = client.identity()
    p = ctx.params
    if p["retry_secs"]:  # issue 20: failures are counted by the server now
        typer.echo(
            "Warning: --retry-secs no longer delays failed jobs: they are "
            "reported as WORK_FAIL and the server's retry policy decides; "
            f"e.g. periodic retry set FUNC --backoff {p['retry_secs']} --factor 1",
            err=True,
        )
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
        rsa=rsa_config(client),
    )
    # several addresses: func served on every one, --thread jobs at once in all
    addresses = client.all_addresses()
    try:
        asyncio.run(
            run_pipe_worker(
                addresses, func, command, options, ready_timeout=ready_timeout
            )
            if pipe
            else run_exec_worker(addresses, func, command, options, work_data=work_data)
        )
    except ClientError as exc:
        die(str(exc))
    except ValueError as exc:
        die(str(exc), 2)
    except KeyboardInterrupt:  # pragma: no cover - signal handler drains first
        raise typer.Exit(130) from None


def _hs_options(ctx: typer.Context) -> ClientOptions:
    """An HS tool's own -H / identity / RSA options (its parameters ``host``,
    ``client_name``, ...), the global ones of ``periodic`` elsewhere.  ``-H``
    (or ``$PERIODIC_PORT``) may be a comma list: the worker serves them all."""
    p = ctx.params
    return ClientOptions.of(
        split_addresses(p["host"] or None),
        p["client_name"],
        p["client_token"],
        p["rsa_private_path"],
        p["rsa_public_path"],
        p["rsa_mode"],
    )


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
    host: HsHostOpt = None,
    thread: Annotated[
        int,
        typer.Option(
            "--thread",
            help="Jobs at once (over all -H servers).",
            min=1,
            envvar=THREAD_ENV,
        ),
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
    client_name: HsClientNameOpt = None,
    client_token: HsClientTokenOpt = None,
    rsa_private_path: RsaPrivateOpt = None,
    rsa_public_path: RsaPublicOpt = None,
    rsa_mode: RsaModeOpt = None,
    version: VersionOpt = False,
) -> None:
    """Serve FUNC: run COMMAND [ARGS...] for each job (as periodic run -f
    FUNC --exec ...; the last stdout line SCHED_LATER N / FAIL / DONE and the
    exit status decide the outcome)."""
    _exec_worker(ctx, _hs_options(ctx), func, list(command), work_data=work_data)


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
    host: HsHostOpt = None,
    thread: Annotated[
        int,
        typer.Option("--thread", help="Runner processes.", min=1, envvar=THREAD_ENV),
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
    client_name: HsClientNameOpt = None,
    client_token: HsClientTokenOpt = None,
    rsa_private_path: RsaPrivateOpt = None,
    rsa_public_path: RsaPublicOpt = None,
    rsa_mode: RsaModeOpt = None,
    version: VersionOpt = False,
) -> None:
    """Serve FUNC with --thread long-lived COMMAND [ARGS...] runners, one job
    per runner at a time over its stdin/stdout (see docs/usage.md 6)."""
    _exec_worker(
        ctx,
        _hs_options(ctx),
        func,
        list(command),
        pipe=True,
        ready_timeout=ready_timeout,
    )
