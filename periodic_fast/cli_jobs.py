"""The client sub-commands of ``periodic`` (cli-and-http.md 1.3, 4.4, 6.1).

``status``, ``submit``, ``remove``, ``drop``, ``dump``, ``load``, ``recv``,
``ping``, ``shutdown`` and ``config get|set``; :mod:`periodic_fast.cli` puts
them on the ``periodic`` app, whose callback parses the connection options
(:class:`~periodic_fast.cli_common.ClientOptions`).  ``run`` lives in
:mod:`periodic_fast.cli_worker`.

Both original syntaxes work where they do not clash:

* ``submit -f F -n N --args W -t T --sched_later S`` (Go) and
  ``submit F N -w DATA --later S --timeout T`` (HS); ``-w @FILE`` reads a file;
* ``remove -f F -n N`` / ``remove F N [N...]``, ``drop -f F`` / ``drop F...``;
* ``dump FILE`` / ``dump -o FILE``, ``load FILE`` / ``load -i FILE`` (the file
  is the DUMP job-list bytes, protocol.md 2.3; ``load`` also reads Go-2016
  dumps).

Exit status: 0 on success; 1 with a one-line ``Error: ...`` on stderr when the
server cannot be reached or refuses; 2 for bad usage.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .cli_common import (
    MAX_LATER,
    MAX_TIMEOUT,
    client_options,
    die,
    pick,
    read_workload,
    usage_error,
    with_client,
)
from .cli_cron import MISSED_HELP, submit_cron
from .constants import CONFIG_DEFAULTS

if TYPE_CHECKING:
    from rich.progress import Progress

    from .client import Client
    from .job import Job

__all__ = [
    "backup",
    "config_get",
    "config_set",
    "drop",
    "dump",
    "load",
    "ping",
    "recv",
    "remove",
    "shutdown",
    "status",
    "submit",
]

_FuncOpt = Annotated[
    str | None, typer.Option("-f", "--func", metavar="FUNC", help="Func.")
]
_NameOpt = Annotated[
    str | None, typer.Option("-n", "--name", metavar="NAME", help="Job name.")
]


def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """Show per-func workers, jobs, processing, locked and next run."""
    stats = with_client(ctx, lambda c: c.status_list())
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
    func_arg: Annotated[str | None, typer.Argument(metavar="FUNC")] = None,
    name_arg: Annotated[str | None, typer.Argument(metavar="NAME")] = None,
    func: _FuncOpt = None,
    name: _NameOpt = None,
    workload: Annotated[
        str | None,
        typer.Option("-w", "--workload", "--args", help="Workload, or @FILE."),
    ] = None,
    later: Annotated[
        int,
        typer.Option(
            "--later",
            "--sched_later",
            "--sched-later",
            help="Delay in seconds.",
            min=0,
            max=MAX_LATER,
        ),
    ] = 0,
    timeout: Annotated[
        int,
        typer.Option(
            "-t",
            "--timeout",
            help="Run timeout (s, 0: server's).",
            min=0,
            max=MAX_TIMEOUT,
        ),
    ] = 0,
    cron: Annotated[
        str | None,
        typer.Option(
            "--cron", metavar="EXPR", help="Run at every fire (docs/cron.md)."
        ),
    ] = None,
    tz: Annotated[
        str, typer.Option("--tz", help="Time zone of --cron (IANA name).")
    ] = "UTC",
    missed: Annotated[
        str,
        typer.Option(
            "--missed", metavar="once|skip", help="With --cron: " + MISSED_HELP
        ),
    ] = "once",
) -> None:
    """Submit a job: submit F N, or submit -f F -n N.

    With --cron the job recurs: the server re-runs it at every fire."""
    f = pick(func_arg, func, "FUNC (-f)", ctx)
    n = pick(name_arg, name, "NAME (-n)", ctx)
    data = read_workload(workload)
    if cron is not None:  # a schedule: through the JSON API (cli_cron)
        if later:
            usage_error(ctx, "--cron sets the run times: no --later/--sched-later")
        if missed not in ("once", "skip"):
            usage_error(ctx, f"--missed must be 'once' or 'skip', not {missed!r}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            usage_error(ctx, "with --cron the workload must be UTF-8 text")
        submit_cron(ctx, f, n, cron, tz=tz, missed=missed, args=text, timeout=timeout)
        return
    sched_at = int(time.time()) + later if later else 0
    ok = with_client(ctx, lambda c: c.submit_job(f, n, data, sched_at, 0, timeout))
    if not ok:
        die("server refused the job")


def remove(
    ctx: typer.Context,
    args: Annotated[
        list[str] | None, typer.Argument(metavar="FUNC NAME...", show_default=False)
    ] = None,
    func: _FuncOpt = None,
    name: _NameOpt = None,
) -> None:
    """Remove jobs: remove F N [N...], or remove -f F -n N."""
    rest = list(args or [])
    f = func if func is not None else (rest.pop(0) if rest else None)
    names = ([name] if name is not None else []) + rest
    if not f or not names:
        usage_error(ctx, "need FUNC and at least one NAME")

    async def body(c: Client) -> bool:
        return all([await c.remove_job(f, n) for n in names])

    if not with_client(ctx, body):
        die("server refused the request")


def drop(
    ctx: typer.Context,
    funcs: Annotated[
        list[str] | None, typer.Argument(metavar="FUNC...", show_default=False)
    ] = None,
    func: _FuncOpt = None,
) -> None:
    """Drop funcs with no worker, and their jobs: drop F [F...]."""
    names = ([func] if func else []) + list(funcs or [])
    if not names:
        usage_error(ctx, "need at least one FUNC")

    async def body(c: Client) -> bool:
        return all([await c.drop_func(f) for f in names])

    if not with_client(ctx, body):
        die("server refused the request")


def dump(
    ctx: typer.Context,
    file_arg: Annotated[str | None, typer.Argument(metavar="FILE")] = None,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="Output file (dump.db).")
    ] = None,
) -> None:
    """Write every job to FILE (the DUMP job list; default dump.db)."""
    path = Path(output or file_arg or "dump.db")
    with _progress() as bar:
        if bar is not None:
            bar.add_task(f"dumping to {path.name}", total=None)
        # one DATA frame holds every job (~45 B each): past ~1.5M jobs it is
        # larger than the default 64 MiB cap: accept any size a u32 allows
        data = with_client(ctx, lambda c: c.dump_raw(timeout=600), max_frame=2**32 - 1)
        try:
            path.write_bytes(data)
        except OSError as exc:
            die(f"failed to write dump file {path}: {exc.strerror}")


def backup(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(metavar="FILE", help="Where to write.")],
) -> None:
    """Back up the server's store to FILE.

    A SQLite store gives a SQLite file (SQLite's online backup, made by the
    server), the others the DUMP job list; restore: docs/storage.md."""
    path = Path(file)
    with _progress() as bar:
        if bar is not None:
            bar.add_task(f"backing up to {path.name}", total=None)
        data, kind = _sqlite_backup(ctx)
        if data is None:  # another store, or no HTTP (RSA transport, --no-http)
            data = with_client(
                ctx, lambda c: c.dump_raw(timeout=600), max_frame=2**32 - 1
            )
        tmp = path.with_name(f".{path.name}.part")
        try:
            tmp.write_bytes(data)
            tmp.replace(path)  # never a half-written backup under FILE
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            die(f"failed to write backup file {path}: {exc.strerror}")
    typer.echo(f"backup: {len(data):,} bytes ({kind}) written to {path}")


def _sqlite_backup(ctx: typer.Context) -> tuple[bytes | None, str]:
    """``POST /api/backup`` on the server's address: the SQLite copy, or
    ``(None, "DUMP job list")`` when the store or the listener has none.
    A refusal (auth, 403): one line, exit 1."""
    import http.client  # noqa: PLC0415  # CLI starts fast
    import socket  # noqa: PLC0415

    from ._address import parse_address  # noqa: PLC0415

    options = client_options(ctx)
    dump = (None, "DUMP job list")
    try:
        addr = parse_address(options.address)
    except ValueError as exc:
        die(str(exc))
    conn: http.client.HTTPConnection
    if addr.scheme == "unix":
        conn = http.client.HTTPConnection("localhost", timeout=600)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(600)
        try:
            sock.connect(addr.host)
        except OSError as exc:
            sock.close()
            die(f"{options.address}: {exc.strerror or exc}")
        conn.sock = sock
    else:
        conn = http.client.HTTPConnection(addr.host, addr.port, timeout=600)
    headers = {"Content-Length": "0"}
    if options.token:
        headers["Authorization"] = f"Bearer {options.token}"
    try:
        conn.request("POST", "/api/backup", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
    except (OSError, http.client.HTTPException):
        return dump  # not HTTP on this listener: the binary DUMP still works
    finally:
        conn.close()
    if resp.status == 200:
        return body, "SQLite"
    try:
        answer = json.loads(body)
    except ValueError:
        answer = {}
    if resp.status == 409 and answer.get("format") == "dump" or resp.status == 404:
        return dump
    die(f"backup refused: {answer.get('err') or resp.reason} (HTTP {resp.status})")


def load(
    ctx: typer.Context,
    file_arg: Annotated[str | None, typer.Argument(metavar="FILE")] = None,
    input_: Annotated[
        str | None, typer.Option("-i", "--input", help="Input file (dump.db).")
    ] = None,
) -> None:
    """Load the jobs of a dump FILE (ours, HS or Go-2016; dump.db)."""
    from .codec import decode_job_list  # noqa: PLC0415
    from .errors import ProtocolError  # noqa: PLC0415

    path = Path(input_ or file_arg or "dump.db")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        die(f"failed to read dump file {path}: {exc.strerror}")
    try:
        jobs = _go_dump_jobs(raw) if raw[4:6] == b'{"' else decode_job_list(raw)
    except (ProtocolError, ValueError) as exc:
        die(f"invalid dump file {path}: {exc}")
    with _progress() as bar:
        task = bar.add_task(f"loading {path.name}", total=len(jobs)) if bar else None

        def advance(done: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, completed=done)

        ok = with_client(ctx, lambda c: c.load(jobs, timeout=60, progress=advance))
    if not ok:
        die("server refused the load")


@contextlib.contextmanager
def _progress() -> Iterator[Progress | None]:
    """A rich progress display on stderr when it is a terminal, else None:
    a dump or load of a million jobs takes seconds, and a script's log
    should not fill with bars."""
    if not sys.stderr.isatty():
        yield None
        return
    try:
        from rich.console import Console  # noqa: PLC0415  # only on a terminal
        from rich.progress import Progress  # noqa: PLC0415
    except ImportError:  # pragma: no cover - typer brings rich
        yield None
        return
    with Progress(console=Console(stderr=True), transient=True) as bar:
        yield bar


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
    func: Annotated[str, typer.Argument(metavar="FUNC", help="Func.")],
    name: Annotated[str, typer.Argument(metavar="NAME", help="Job name.")],
    timeout: Annotated[
        float, typer.Option("--timeout", help="Max wait per chunk (s).", min=0.1)
    ] = 120.0,
) -> None:
    """Print the data a worker streams for a job until it ends."""

    async def body(c: Client) -> None:
        async for chunk in c.recv_job_data(func, name, timeout):
            sys.stdout.buffer.write(chunk + b"\n")
            sys.stdout.flush()

    with_client(ctx, body, timeout=timeout)


def ping(ctx: typer.Context) -> None:
    """Print the round trip and exit 0 when the server answers."""

    async def body(c: Client) -> tuple[float | None, str]:
        start = time.perf_counter()  # connected already: the PING alone
        ok = await c.ping()
        return (time.perf_counter() - start if ok else None), c.address

    took, address = with_client(ctx, body, timeout=5.0)  # the one that answered
    if took is None:
        die("no PONG")
    typer.echo(f"pong from {address} in {took * 1000:.1f} ms")


def shutdown(ctx: typer.Context) -> None:
    """Stop the server."""
    with_client(ctx, lambda c: c.shutdown())


def config_get(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY", help="Config key.")],
) -> None:
    """Print the value of KEY (unknown keys read 0)."""
    typer.echo(str(with_client(ctx, lambda c: c.config_get(key))))


def config_set(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(metavar="KEY", help="Config key.")],
    value: Annotated[
        int,
        typer.Argument(metavar="VALUE", help="Integer value.", min=0, max=2**32 - 1),
    ],
) -> None:
    """Set KEY to VALUE (one of the server's keys)."""
    # the server answers SUCCESS to any key and ignores unknown ones
    if key not in CONFIG_DEFAULTS:
        die(f"unknown config key {key!r} (known: {', '.join(CONFIG_DEFAULTS)})", 2)
    if not with_client(ctx, lambda c: c.config_set(key, value)):
        die("server refused the request")
