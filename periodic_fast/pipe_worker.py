"""The pipe worker: jobs are fed to long-lived runner processes.

``periodic-run-pipe [OPTIONS] FUNC COMMAND [ARGS...]`` (cli-and-http.md 2.3).
``threads`` copies of the command run for the worker's whole life, so a job
costs a line on a pipe instead of a process start.  Runner line protocol:

1. A started runner prints one line (any text): it is ready (logged as
   ``Pipe Runner Ready: <line>``).  No line within ``ready_timeout`` seconds
   (0 = wait forever): the runner is killed and started again 1 s later.
2. Per job the worker writes ``<msgid> <payload>\\n`` to the runner's stdin:
   ``msgid`` a random unsigned 32-bit number in decimal, ``payload`` the job
   name (the workload with ``no_name``).  A payload holding a newline would
   break the framing: such a job is refused (a failure, see 4) and the pipe
   is left alone.
3. The runner answers with lines ``<msgid> <reply>``; ``reply`` starting with

   - ``WORKDATA``: the text after ``WORKDATA `` is streamed to the job's
     listeners, more lines follow;
   - ``WORKDONE``: done, the text after ``WORKDONE `` is the result;
   - ``WORKFAIL``: a failure;
   - anything else: done, the whole reply is the result.

   Lines that do not start with the current msgid and a space are copied to
   the worker's stdout (runner logs).
4. A failure is WORK_FAIL (the server's retry policy decides when it runs
   again), or WORK_DONE with ``skip_fail``.
5. One job per runner at a time; idle runners are taken in turn.  A runner
   that exits, closes stdout, or is killed (job ``timeout``, ``mem_limit``
   per runner) fails its in-flight job and is started again 1 s later.

No shell is involved; every runner leads its own process group, which is what
a kill (SIGTERM, SIGKILL 5 s later) and the memory check cover.  On shutdown
the runners' stdin is closed; those still alive 2 s later are killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shlex
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ._lines import LineTooLong, read_lines
from .errors import ClientError
from .exec_worker import WorkerOptions, serve_func, terminate, watch_memory
from .worker import Done, Fail, SchedLater, WorkerJob

__all__ = ["PipeRunner", "RunnerPool", "make_pipe_handler", "run_pipe_worker"]

logger = logging.getLogger(__name__)

_Outcome = Done | Fail | SchedLater

#: pause before a dead or never-ready runner is started again
RESTART_DELAY = 1.0
#: how long a runner may take to exit once its stdin is closed at shutdown
CLOSE_GRACE = 2.0
#: a runner line longer than this (no newline yet) is a broken runner
MAX_LINE = 64 << 20


def _log(message: str) -> None:
    # the CLI's log: one line on stderr, next to "Pipe Worker started."
    print(message, file=sys.stderr, flush=True)


def _echo(line: bytes) -> None:
    sys.stdout.buffer.write(line if line.endswith(b"\n") else line + b"\n")
    sys.stdout.flush()


class _Reply:
    """The in-flight job of a runner: its msgid prefix and reply lines
    (None: the runner is gone)."""

    __slots__ = ("lines", "prefix")

    def __init__(self, msgid: int) -> None:
        self.prefix = f"{msgid} ".encode()
        self.lines: asyncio.Queue[bytes | None] = asyncio.Queue()


class PipeRunner:
    """One runner process: start, ready line, read its stdout, one job at a time.

    :param index: its number, for log lines.
    :param argv: the command.
    :param ready_timeout: seconds to print the ready line (0: forever).
    :param mem_limit: bytes of RSS (process group) before it is killed; 0: off.
    """

    def __init__(
        self, index: int, argv: Sequence[str], ready_timeout: float, mem_limit: int
    ) -> None:
        self.index = index
        self.argv = list(argv)
        self.ready_timeout = ready_timeout
        self.mem_limit = mem_limit
        self.proc: asyncio.subprocess.Process | None = None
        #: ready and its stdout still open
        self.alive = False
        #: bumped per start: a pool entry of an earlier process is stale
        self.generation = 0
        self._reply: _Reply | None = None
        self._eof: asyncio.Event | None = None

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc is not None else None
        return f"<PipeRunner {self.index} pid={pid}>"

    async def start(self) -> bool:
        """Start the process and wait for its ready line; False (process
        killed) when it cannot start, exits, or is not ready in time."""
        self.alive = False
        self.generation += 1
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[bytes] = loop.create_future()
        self._eof = eof = asyncio.Event()
        try:
            self.proc = proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own group: killed as a whole
            )
        except OSError as exc:
            _log(f"Error: cannot start runner {self.argv[0]}: {exc}")
            eof.set()
            return False
        reader = loop.create_task(self._read(proc, ready, eof))
        reader.add_done_callback(_log_task_error)
        try:
            line = await asyncio.wait_for(
                asyncio.shield(ready), self.ready_timeout or None
            )
        except asyncio.TimeoutError:
            _log(
                f"Error: runner {self.index} not ready after "
                f"{self.ready_timeout:g} s, killed"
            )
            await self.kill()
            return False
        except EOFError:
            _log(f"Error: runner {self.index} exited before its ready line")
            await self.kill()
            return False
        _log(f"Pipe Runner Ready: {line.decode(errors='replace').rstrip()}")
        self.alive = True
        return True

    async def _read(
        self,
        proc: asyncio.subprocess.Process,
        ready: asyncio.Future[bytes],
        eof: asyncio.Event,
    ) -> None:
        """Split ``proc``'s stdout into lines: the first is the ready line,
        then replies to the current msgid go to the job, the rest to our
        stdout.  At EOF the runner is gone (``eof`` set)."""
        assert proc.stdout is not None
        try:
            async with contextlib.aclosing(read_lines(proc.stdout, MAX_LINE)) as lines:
                async for line in lines:
                    self._line(proc, line, ready)
        except LineTooLong:
            _log(f"Error: runner {self.index} wrote a line over {MAX_LINE} B")
        finally:
            if not ready.done():
                ready.set_exception(EOFError())
                ready.exception()  # retrieved here if nobody waits any more
            if self.proc is proc:  # not a reader left over from an earlier start
                self.alive = False
                if self._reply is not None:
                    self._reply.lines.put_nowait(None)
            eof.set()

    def _line(
        self,
        proc: asyncio.subprocess.Process,
        line: bytes,
        ready: asyncio.Future[bytes],
    ) -> None:
        reply = self._reply if self.proc is proc else None  # not a stale reader's
        if not ready.done():
            ready.set_result(line)
        elif reply is not None and line.startswith(reply.prefix):
            reply.lines.put_nowait(line[len(reply.prefix) :])
        else:
            _echo(line)

    async def serve(self) -> None:
        """Wait until the runner is gone: its stdout closed (exited, or
        crashed), or its memory over the limit (then it is killed)."""
        assert self.proc is not None and self._eof is not None
        eof = asyncio.get_running_loop().create_task(self._eof.wait())
        waiting: set[asyncio.Future[Any]] = {eof}
        if self.mem_limit:
            what = f"runner {self.index}"
            waiting.add(
                asyncio.get_running_loop().create_task(
                    watch_memory(self.proc, self.mem_limit, what)
                )
            )
        try:
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waiting:
                task.cancel()
            await asyncio.wait(waiting)
        await self.kill()

    async def kill(self) -> None:
        """Kill the runner's group (SIGTERM, then SIGKILL) and reap it."""
        self.alive = False
        if self.proc is not None:  # leader gone: what is left of its group
            await terminate(self.proc)

    async def close(self) -> None:
        """Close stdin (a runner reading it sees EOF and can exit on its own),
        then kill it if it is still there after :data:`CLOSE_GRACE` s."""
        self.alive = False
        proc = self.proc
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), CLOSE_GRACE)
        await self.kill()

    async def run(self, job: WorkerJob, payload: bytes) -> bytes | None:
        """Send one job, return its result; None for WORKFAIL or a runner that
        went away.  The caller bounds the time (and kills on a timeout)."""
        assert self.proc is not None and self.proc.stdin is not None
        reply = _Reply(random.getrandbits(32))
        self._reply = reply
        try:
            if not self.alive:
                return None
            try:
                self.proc.stdin.write(reply.prefix + payload + b"\n")
                await self.proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return None
            while True:
                line = await reply.lines.get()
                if line is None:
                    _log(f"Error: runner {self.index} gone during {job}")
                    return None
                body = line.rstrip(b"\r\n")
                head = body[:8]
                if head == b"WORKDATA":
                    try:
                        await job.data(body[9:])
                    except ClientError as exc:  # e.g. the connection dropped
                        logger.warning("WORKDATA of %s not sent: %s", job, exc)
                    continue
                if head == b"WORKDONE":
                    return body[9:]
                if head == b"WORKFAIL":
                    return None
                return body
        finally:
            self._reply = None


class RunnerPool:
    """``size`` runners, each kept alive by its own supervisor task; jobs take
    an idle ready runner (in turn) and give it back."""

    def __init__(
        self,
        argv: Sequence[str],
        size: int,
        *,
        ready_timeout: float = 10.0,
        mem_limit: int = 0,
    ) -> None:
        if not argv:
            raise ValueError("empty command")
        if size < 1:
            raise ValueError("need at least one runner")
        self.runners = [
            PipeRunner(i, argv, ready_timeout, mem_limit) for i in range(size)
        ]
        self._idle: asyncio.Queue[tuple[PipeRunner, int]] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    def start(self) -> None:
        """Start the supervisors (runners become ready in the background)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._supervise(r)) for r in self.runners]

    async def _supervise(self, runner: PipeRunner) -> None:
        while not self._closing:
            if await runner.start():
                self._idle.put_nowait((runner, runner.generation))
                await runner.serve()  # returns once the runner is gone
                if not self._closing:
                    code = runner.proc.returncode if runner.proc else None
                    _log(
                        f"Error: runner {runner.index} exited (status {code}), "
                        f"restarting in {RESTART_DELAY:g} s"
                    )
            await asyncio.sleep(RESTART_DELAY)

    async def acquire(self, timeout: float | None) -> tuple[PipeRunner, int] | None:
        """An idle, ready runner and its generation (for :meth:`release`);
        None when none is ready in ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                runner, gen = await asyncio.wait_for(self._idle.get(), left)
            except asyncio.TimeoutError:
                return None
            # skip a runner that died while idle, or an entry of its last life
            if runner.alive and runner.generation == gen:
                return runner, gen

    def release(self, runner: PipeRunner, gen: int) -> None:
        """Give a runner back; one that died or was restarted meanwhile is
        queued by its supervisor once ready again."""
        if runner.alive and runner.generation == gen and not self._closing:
            self._idle.put_nowait((runner, gen))

    async def close(self) -> None:
        """Stop the supervisors and the runners (bounded, see
        :meth:`PipeRunner.close`)."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        await asyncio.gather(*(r.close() for r in self.runners))


def make_pipe_handler(
    pool: RunnerPool, options: WorkerOptions | None = None
) -> Callable[[WorkerJob], Awaitable[_Outcome]]:
    """The async job handler that runs each job on a runner of ``pool``; of
    ``options`` it uses ``timeout``, ``no_name`` and the failure outcome."""
    opts = options if options is not None else WorkerOptions()
    failed, no_name, timeout = opts.failed, opts.no_name, opts.timeout

    async def handler(job: WorkerJob) -> _Outcome:
        payload = job.workload if no_name else job.name_bytes
        if b"\n" in payload:
            what = "workload" if no_name else "name"
            _log(
                f"Error: job {job.func}/{job.name!r} refused: its {what} holds "
                "a newline (it would break the runner's line framing)"
            )
            return failed()
        limit = timeout if timeout is not None else float(job.timeout or 0)
        # waiting for a ready runner is bounded by the limit too, but only
        # the run itself kills a runner (HS: the timeout is the command's)
        lease = await pool.acquire(limit or None)
        if lease is None:
            _log(f"Error: {job}: no runner ready in {limit:g} s")
            return failed()
        runner, gen = lease
        try:
            result = await asyncio.wait_for(runner.run(job, payload), limit or None)
        except asyncio.TimeoutError:
            _log(
                f"Error: {job} timed out after {limit:g} s, "
                f"runner {runner.index} killed"
            )
            await runner.kill()
            return failed()
        except BaseException:  # cancelled (drain timeout): its state is unknown
            await asyncio.shield(runner.kill())
            raise
        finally:
            pool.release(runner, gen)
        return failed() if result is None else Done(result)

    return handler


async def run_pipe_worker(
    address: str | Sequence[str],
    func: str,
    command: str | Sequence[str],
    options: WorkerOptions | None = None,
    *,
    ready_timeout: float = 10.0,
) -> None:
    """Serve ``func`` with ``options.threads`` runners of ``command`` until
    SIGTERM/SIGINT (graceful drain, then the runners are stopped).
    ``address``: one server, or several (``func`` served on every one; the
    runners are shared: at most ``options.threads`` jobs at once in all, see
    :func:`~periodic_fast.exec_worker.serve_func`); ``options``: see
    :class:`~periodic_fast.exec_worker.WorkerOptions` (None: the defaults);
    ``ready_timeout``: seconds a runner has for its ready line.

    :raises periodic_fast.errors.NotConnected: no server can be reached.
    :raises ValueError: an empty command.
    """
    opts = options if options is not None else WorkerOptions()
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    pool = RunnerPool(
        argv, opts.threads, ready_timeout=ready_timeout, mem_limit=opts.mem_limit
    )
    pool.start()
    try:
        await serve_func(
            address, func, make_pipe_handler(pool, opts), opts, "Pipe Worker started."
        )
    finally:
        await pool.close()


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("runner reader failed: %s", task.exception())
