"""The exec worker: every job of a func runs a shell-less command.

``periodic run -f FUNC --exec CMD`` (cli-and-http.md 2.1, 2.2, 6.3).  Per job:

1. ``CMD`` is split like a shell would (``shlex``) without running a shell;
   the job name is appended as the last argument (unless ``no_name``).
2. The workload is written to the command's stdin, which is then closed.
   stderr is inherited; stdout is captured.
3. The command is killed (SIGTERM, then SIGKILL 5 s later) after ``timeout``
   seconds; ``None`` uses the job's timeout as the server sent it, 0 never.
4. Outcome, first match wins:

   =============================================  ============================
   condition                                      sent to the server
   =============================================  ============================
   could not start, killed, or exit status != 0   WORK_FAIL (``skip_fail``:
                                                  WORK_DONE); the server's retry
                                                  policy decides when it runs
                                                  again (docs/retries.md)
   last non-empty stdout line ``FAIL``            WORK_FAIL (same options)
   last line ``SCHED_LATER N`` / ``SCHEDLATER N``  SCHED_LATER N (N > 0; else done)
   last line ``DONE``, or anything else           WORK_DONE
   =============================================  ============================

   The result sent with WORK_DONE (what a ``run_job`` caller gets) is stdout
   without a directive last line.  Non-directive stdout is echoed to the
   worker's own stdout, so ``periodic run -f ls5 --exec ./ls5.sh`` shows what
   the script printed.

Unlike the Go original, an unterminated last line is honoured, a bare
``SCHEDLATER`` does not crash, and both spellings of the directive work.

With ``work_data`` (HS ``--work-data``) stdout is read while the command runs:
a line starting with ``WORKDATA`` streams the text after ``WORKDATA `` to the
job's listeners at once (WORK_DATA: ``periodic run F N``, ``recv``,
``run_job(stream=)``); a line starting with ``WORKDONE`` sets the result to
the text after ``WORKDONE ``.  Neither kind of line is part of the echoed
output or of the directive check above; the exit status still decides
success.  (Unlike HS, other lines do not end the parsing, and a command that
prints only ``WORKDATA`` lines does not hang the job.)

With ``mem_limit`` (HS ``--mem-limit``, bytes, 0 = off) the resident memory
of the command's process group is read from ``/proc`` about once a second;
over the limit the group is killed like on a timeout and the job counts as
failed.  HS compares ``ps`` RSS (KiB) with the limit in bytes, so its real
threshold is 1024x the stated one; we deliberately enforce the stated size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._lines import read_lines
from .errors import ClientError
from .worker import Done, Fail, SchedLater, Worker, WorkerJob

if TYPE_CHECKING:
    from .rsa_transport import RSAConfig

__all__ = [
    "WorkerOptions",
    "check_command",
    "format_size",
    "group_rss",
    "make_handler",
    "make_worker",
    "parse_output",
    "parse_size",
    "run_exec_worker",
    "serve_func",
]

logger = logging.getLogger(__name__)

_Outcome = Done | Fail | SchedLater


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """What the exec and the pipe worker share (``periodic run -f F --exec``,
    ``periodic-run``, ``periodic-run-pipe``): connection and identity, how the
    func is registered, the limits of a job and what a failure sends.

    :param threads: concurrent jobs (the pipe worker: runner processes too).
    :param timeout: seconds before a job's command (pipe: its runner) is
        killed; None: the job's timeout as the server sent it; 0: never.
    :param no_name: exec: do not append the job name to the command; pipe:
        send the workload instead of the name.
    :param broadcast: register the func as a broadcast func.
    :param retry_secs: kept for compatibility, no effect: a failure is
        WORK_FAIL, so the server counts it and its retry policy decides the
        delay (``periodic retry set FUNC --backoff S --factor 1``); it was
        SCHED_LATER, which the server could not count as a failure.
    :param skip_fail: a failure is WORK_DONE with an empty result.
    :param lock_name: run every job holding this lock (``lock_count`` slots).
    :param lock_count: how many jobs may hold ``lock_name`` at once.
    :param mem_limit: bytes of RSS of a command's (pipe: runner's) process
        group before it is killed; 0: off.
    :param name: the identity (``--client-name``), None for none.
    :param token: its token.
    :param rsa: connect through the RSA/AES transport.
    """

    threads: int = 1
    timeout: float | None = None
    no_name: bool = False
    broadcast: bool = False
    retry_secs: int = 0
    skip_fail: bool = False
    lock_name: str | None = None
    lock_count: int = 1
    mem_limit: int = 0
    name: str | None = None
    token: str | None = None
    rsa: RSAConfig | None = None

    def failed(self) -> _Outcome:
        """What a failed job sends: WORK_DONE with ``skip_fail``, else
        WORK_FAIL (the server's retry policy decides what follows)."""
        if self.skip_fail:
            return Done(b"")
        return Fail()


def parse_output(stdout: bytes, returncode: int | None) -> tuple[str, bytes, int]:
    """Decide the outcome from the command's stdout and exit status.

    Returns ``(kind, result, delay)`` with kind ``"done"``, ``"fail"`` or
    ``"sched_later"``; ``result`` is stdout without a directive last line.
    """
    lines = stdout.splitlines(keepends=True)
    idx = len(lines) - 1
    while idx >= 0 and not lines[idx].strip():
        idx -= 1
    directive = lines[idx].strip() if idx >= 0 else b""
    word, _, arg = directive.partition(b" ")
    kind = "done"
    delay = 0
    is_directive = False
    if word in (b"SCHED_LATER", b"SCHEDLATER"):
        is_directive = True
        try:
            delay = int(arg.strip() or b"0")
        except ValueError:
            delay = 0
        kind = "sched_later" if delay > 0 else "done"
    elif directive == b"FAIL":
        is_directive = True
        kind = "fail"
    elif directive == b"DONE":
        is_directive = True
    result = b"".join(lines[:idx]) if is_directive else stdout
    if returncode != 0:
        kind = "fail"
    return kind, result, delay


_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([kmg]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``--mem-limit`` SIZE in bytes: a number, optionally with a ``k``,
    ``m`` or ``g`` suffix (either case, 1024-based); decimals are allowed.

    :raises ValueError: anything else (negative numbers included).
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"bad size {text!r} (want e.g. 512k, 1.5m, 2G or 0)")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def format_size(size: int) -> str:
    """``size`` bytes for a log line (``52.4 MiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def group_rss(pgid: int) -> int | None:
    """Resident memory in bytes of every process in group ``pgid``, read from
    ``/proc/PID/stat`` (no ``ps`` subprocess); None without ``/proc``.

    One pass over ``/proc``: a command's children (``sh -c`` running the real
    program, a pipeline) count too, which the leader's own RSS would miss.
    """
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    total = 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        # fields after "(comm)": state ppid pgrp ... rss is field 24 overall
        fields = stat[stat.rfind(b")") + 2 :].split()
        try:
            if int(fields[2]) == pgid:
                total += int(fields[21]) * _PAGE_SIZE
        except (IndexError, ValueError):
            continue
    return total


async def watch_memory(
    proc: asyncio.subprocess.Process, limit: int, what: str, interval: float = 1.0
) -> int:
    """Return (with one log line) once the RSS of ``proc``'s process group
    exceeds ``limit`` bytes, checked every ``interval`` s; the caller kills.
    Never returns without ``/proc`` (the limit is then not enforced)."""
    while True:
        await asyncio.sleep(interval)
        rss = group_rss(proc.pid)
        if rss is None:
            logger.warning("no /proc: --mem-limit is not enforced")
            await asyncio.Event().wait()  # cancelled with the command
        elif rss > limit and proc.returncode is None:
            print(
                f"Error: {what} killed: memory {format_size(rss)} over "
                f"--mem-limit {format_size(limit)}",
                file=sys.stderr,
                flush=True,
            )
            return rss


def check_command(program: str) -> None:
    """Refuse a command that cannot start: a path (it has a ``/``) must be an
    executable file, a bare name must be found on ``$PATH``.  Checked once at
    start, so that a typo is one error rather than a failed job a second.

    :raises ValueError: with the reason, naming ``program``.
    """
    if "/" not in program:
        if shutil.which(program) is None:
            raise ValueError(f"cannot run {program}: not found on $PATH")
        return
    if not os.path.exists(program):
        raise ValueError(f"cannot run {program}: no such file")
    if os.path.isdir(program) or not os.access(program, os.X_OK):
        raise ValueError(f"cannot run {program}: not an executable file")


async def terminate(proc: asyncio.subprocess.Process, grace: float = 5.0) -> None:
    """SIGTERM the process group, SIGKILL what is left ``grace`` s later
    (children that hold a pipe open included), then reap."""
    _kill_group(proc, signal.SIGTERM)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), grace)
    _kill_group(proc, signal.SIGKILL)
    await proc.wait()


_STREAM_PREFIX = b"WORKDATA"
_RESULT_PREFIX = b"WORKDONE"


async def _communicate_lines(
    proc: asyncio.subprocess.Process,
    stdin: bytes,
    on_line: Callable[[bytes], Awaitable[bool]],
) -> bytes:
    """Feed ``stdin``, hand every stdout line (with its newline; a final
    unterminated line too) to ``on_line`` as it arrives, wait for the exit.
    Returns the lines ``on_line`` did not consume (it returns True for those
    it did)."""
    assert proc.stdin is not None and proc.stdout is not None

    async def feed() -> None:
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            if stdin:
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

    feeder = asyncio.get_running_loop().create_task(feed())
    kept = bytearray()
    try:
        async with contextlib.aclosing(read_lines(proc.stdout)) as lines:
            async for line in lines:
                if not await on_line(line):
                    kept += line
        await proc.wait()
    finally:
        if not feeder.done():
            feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
    return bytes(kept)


async def _run_command(
    argv: Sequence[str],
    stdin: bytes,
    timeout: float | None,
    on_line: Callable[[bytes], Awaitable[bool]] | None = None,
    mem_limit: int = 0,
) -> tuple[bytes, int | None]:
    """Run one command; returns (stdout, exit status or None when killed).

    With ``on_line``, stdout lines are handed over as they arrive and only
    those it does not consume are returned.  ``mem_limit`` > 0: killed when
    its process group's RSS exceeds that many bytes.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: killed as a whole
        )
    except OSError as exc:
        logger.error("cannot start %s: %s", argv[0], exc)
        print(f"Error: cannot start {argv[0]}: {exc}", file=sys.stderr)
        return b"", None

    async def communicate() -> bytes:
        if on_line is None:
            return (await proc.communicate(stdin))[0]
        return await _communicate_lines(proc, stdin, on_line)

    loop = asyncio.get_running_loop()
    work = loop.create_task(communicate())
    watcher = (
        loop.create_task(watch_memory(proc, mem_limit, argv[0])) if mem_limit else None
    )
    waiting: set[asyncio.Future[Any]] = {work} if watcher is None else {work, watcher}
    try:
        done, _ = await asyncio.wait(
            waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if work in done:
            return work.result(), proc.returncode
        if watcher is None or watcher not in done:
            print(f"Error: {argv[0]} killed after {timeout:g} s", file=sys.stderr)
        # over time or memory: the group goes, the job fails
        await terminate(proc)
        return b"", None
    except BaseException:  # cancelled (drain timeout, close) or on_line failed
        _kill_group(proc, signal.SIGKILL)
        raise
    finally:
        tasks = [t for t in (work, watcher) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)  # quick: both end at their next await
        for task in tasks:
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning


def _kill_group(proc: asyncio.subprocess.Process, sig: int) -> None:
    """Signal the command's process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)


def make_handler(
    command: Sequence[str],
    options: WorkerOptions | None = None,
    *,
    echo: bool = True,
    work_data: bool = False,
) -> Callable[[WorkerJob], Awaitable[_Outcome]]:
    """The async job handler that runs ``command`` (see the module doc);
    of ``options`` it uses ``timeout``, ``no_name``, ``mem_limit`` and the
    failure outcome.  ``echo``: copy the result to our stdout."""
    opts = options if options is not None else WorkerOptions()

    async def handler(job: WorkerJob) -> _Outcome:
        argv = list(command) if opts.no_name else [*command, job.name]
        limit = opts.timeout if opts.timeout is not None else float(job.timeout or 0)
        final: list[bytes] = []

        async def on_line(line: bytes) -> bool:
            head = line[:8]
            if head == _STREAM_PREFIX:
                try:
                    await job.data(line[9:].rstrip(b"\r\n"))
                except ClientError as exc:  # e.g. the connection dropped
                    logger.warning("WORKDATA of %s not sent: %s", job, exc)
                return True
            if head == _RESULT_PREFIX:
                final.append(line[9:].rstrip(b"\r\n"))
                return True
            return False

        out, code = await _run_command(
            argv,
            job.workload,
            limit or None,
            on_line if work_data else None,
            opts.mem_limit,
        )
        kind, result, delay = parse_output(out, code)
        if echo and result:
            sys.stdout.buffer.write(result)
            if not result.endswith(b"\n"):
                sys.stdout.buffer.write(b"\n")
            sys.stdout.flush()
        if final:
            result = final[-1]
        if kind == "fail":
            return opts.failed()
        if kind == "sched_later":
            return SchedLater(delay)
        return Done(result)

    return handler


def _registered_handler(
    handler: Callable[[WorkerJob], Awaitable[_Outcome]], options: WorkerOptions
) -> Callable[[WorkerJob], Awaitable[Any]]:
    """``handler``, run under ``options.lock_name`` when that is set."""
    lock_name, lock_count = options.lock_name, options.lock_count
    if not lock_name:
        return handler

    async def locked(job: WorkerJob) -> Any:
        return await job.with_lock(lock_name, lock_count, lambda: handler(job))

    return locked


async def make_worker(
    address: str,
    func: str,
    handler: Callable[[WorkerJob], Awaitable[_Outcome]],
    options: WorkerOptions,
) -> Worker:
    """A :class:`Worker` for ``address`` with the identity and transport of
    ``options``, ``func`` registered (``broadcast``; under ``lock_name``
    when set) to ``handler``; not connected yet."""
    worker = Worker(address, name=options.name, token=options.token, rsa=options.rsa)
    await worker.add_func(
        func, _registered_handler(handler, options), broadcast=options.broadcast
    )
    return worker


def _addresses(address: str | Sequence[str]) -> list[str]:
    addresses = [address] if isinstance(address, str) else list(address)
    if not addresses:
        raise ValueError("no server address")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"an address is given twice: {', '.join(addresses)}")
    return addresses


async def serve_func(
    address: str | Sequence[str],
    func: str,
    handler: Callable[[WorkerJob], Awaitable[_Outcome]],
    options: WorkerOptions,
    started: str = "Worker started.",
) -> None:
    """Serve ``func`` with ``handler`` until SIGTERM/SIGINT/SIGHUP (graceful
    drain of every connection), printing ``started`` once connected.

    One address: one :class:`Worker` with ``options.threads`` slots.  Several
    (the nodes of a ``periodicd --cluster``, or independent servers): a
    :class:`~periodic_fast.cluster.WorkerCluster` registers ``func`` on every
    one of them, each connection reconnecting on its own (a line on stderr
    per server connected, lost or retried), and ``options.threads`` is the
    number of jobs the process runs at once over all of them.

    :raises periodic_fast.errors.NotConnected: no server can be reached.
    :raises ValueError: no address, or one given twice.
    """
    addresses = _addresses(address)
    if len(addresses) == 1:  # the plain worker: its slots are the budget
        worker = await make_worker(addresses[0], func, handler, options)
        await worker.connect()
        print(started, file=sys.stderr, flush=True)
        await worker.work(options.threads)
        return
    from ._shared_slots import stderr_line  # noqa: PLC0415
    from .cluster import WorkerCluster  # noqa: PLC0415

    cluster = WorkerCluster(
        addresses,
        shared_slots=True,
        announce=stderr_line,
        name=options.name,
        token=options.token,
        rsa=options.rsa,
    )
    await cluster.add_func(
        func, _registered_handler(handler, options), broadcast=options.broadcast
    )
    await cluster.connect()
    print(
        f"{started[:-1]} on {len(addresses)} servers, at most {options.threads} "
        "job(s) at once over all of them.",
        file=sys.stderr,
        flush=True,
    )
    await cluster.work(options.threads)


async def run_exec_worker(
    address: str | Sequence[str],
    func: str,
    command: str | Sequence[str],
    options: WorkerOptions | None = None,
    *,
    work_data: bool = False,
) -> None:
    """Serve ``func`` with ``command`` until SIGTERM/SIGINT (graceful drain).
    ``address``: one server, or several (see :func:`serve_func`: ``func`` is
    served on every one, ``options.threads`` jobs at once in all);
    ``options``: see :class:`WorkerOptions` (None: the defaults);
    ``work_data``: stream ``WORKDATA`` lines as they come (module doc).

    :raises periodic_fast.errors.NotConnected: no server can be reached.
    :raises ValueError: an empty command, or one that cannot start
        (:func:`check_command`).
    """
    opts = options if options is not None else WorkerOptions()
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if not argv:
        raise ValueError("empty command")
    check_command(argv[0])
    handler = make_handler(argv, opts, work_data=work_data)
    await serve_func(address, func, handler, opts)
