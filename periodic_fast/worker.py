"""The asyncio worker of the Periodic protocol.

::

    worker = Worker("tcp://127.0.0.1:5000")

    @worker.func("echo")
    async def echo(job: WorkerJob) -> bytes:
        return job.workload            # return value = WORK_DONE with that data

    @worker.func("resize")
    def resize(job: WorkerJob) -> None:  # plain functions run in a thread pool
        ...

    @worker.broadcast("reload")
    async def reload(job: WorkerJob) -> None: ...

    await worker.work(size=8)  # until SIGTERM/SIGINT/SIGHUP or worker.shutdown()

How it talks to the server (protocol.md 3.3, 4.5): ``size`` grab slots, one
msgid each, are offered with GRAB_JOB; a JOB_ASSIGN on a free slot is
confirmed at once with JOB_ASSIGNED and the handler runs; a JOB_ASSIGN the
worker cannot take (draining, unknown func, busy slot) is refused with
JOB_UNASSIGNED so the server hands it to someone else.  When the handler ends,
its outcome (WORK_DONE / WORK_FAIL / SCHED_LATER) and the slot's next
GRAB_JOB leave in the same write.

Outcome of a handler, unless it already called ``job.done()``, ``job.fail()``
or ``job.sched_later()``: a returned value means done with that data (bytes
as is, ``str`` as UTF-8, ``None`` as empty, anything else as JSON); a returned
:class:`Done`, :class:`Fail` or :class:`SchedLater` does what it says; an
exception means fail.

Graceful drain (:meth:`Worker.shutdown`, also on SIGTERM/SIGINT in
:meth:`Worker.work`): CANT_DO every func, refuse new assignments, let running
jobs finish (bounded), close.  After a connection loss the worker reconnects,
re-registers its funcs and re-offers its free slots; jobs that were running
finish locally but their outcome is lost (the server already failed them).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar, overload

from ._address import BytesLike, to_bytes
from ._connection import Connection, _Protocol, _Sink
from ._drain import SignalDrain
from .codec import Packet, decode_payload, encode_payload
from .constants import ClientType, Command
from .errors import ClientError, RequestRejected
from .job import Job

__all__ = [
    "Done",
    "Fail",
    "FinishedError",
    "Handler",
    "SchedLater",
    "Worker",
    "WorkerJob",
]

logger = logging.getLogger(__name__)

#: A job handler: ``async def h(job)`` or a plain ``def h(job)`` (thread pool).
Handler = Callable[["WorkerJob"], Any]
_H = TypeVar("_H", bound=Callable[..., Any])


class Done:
    """Handler return value: WORK_DONE with ``data``."""

    __slots__ = ("data",)

    def __init__(self, data: Any = b"") -> None:
        self.data = data


class Fail:
    """Handler return value: WORK_FAIL (the server retries in 1 s)."""

    __slots__ = ()


class SchedLater:
    """Handler return value: run again in ``delay`` seconds, adding ``step``
    to the job's run counter."""

    __slots__ = ("delay", "step")

    def __init__(self, delay: int, step: int = 0) -> None:
        self.delay = delay
        self.step = step


class FinishedError(ClientError):
    """done / fail / sched_later called on a job that already has an outcome."""


def _result_bytes(value: Any) -> bytes:
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return to_bytes(value)
    return json.dumps(value).encode()


class WorkerJob:
    """The job a handler receives, with the calls a handler may make.

    ``func``, ``name`` are text (UTF-8, undecodable bytes replaced);
    ``func_bytes``, ``name_bytes``, ``workload`` are the raw bytes.
    """

    __slots__ = ("_worker", "finished", "job", "lock_refused")

    def __init__(self, worker: Worker, job: Job) -> None:
        self._worker = worker
        self.job = job
        #: an outcome was sent (or a lock was refused)
        self.finished = False
        #: ACQUIRE was refused: the server parked the job, nothing is sent
        self.lock_refused = False

    # fields ---------------------------------------------------------------------
    @property
    def worker(self) -> Worker:
        """The worker (connection) the job came from; its ``address`` says
        which server, e.g. under a :class:`~periodic_fast.cluster.WorkerCluster`."""
        return self._worker

    @property
    def func(self) -> str:
        """The func name."""
        return self.job.func.decode(errors="replace")

    @property
    def func_name(self) -> str:
        """Alias of :attr:`func` (aio-periodic's name)."""
        return self.func

    @property
    def name(self) -> str:
        """The job name."""
        return self.job.name.decode(errors="replace")

    @property
    def func_bytes(self) -> bytes:
        """The func name as sent."""
        return self.job.func

    @property
    def name_bytes(self) -> bytes:
        """The job name as sent."""
        return self.job.name

    @property
    def workload(self) -> bytes:
        """The workload bytes."""
        return self.job.workload

    @property
    def workload_json(self) -> Any:
        """The workload parsed as JSON."""
        return json.loads(self.job.workload)

    @property
    def sched_at(self) -> int:
        """When the job was due (epoch seconds)."""
        return self.job.sched_at

    @property
    def count(self) -> int:
        """The run counter (grown by ``sched_later(..., step)``)."""
        return self.job.count

    @property
    def timeout(self) -> int:
        """The effective run timeout the server applies (seconds)."""
        return self.job.timeout

    def __repr__(self) -> str:
        return f"<WorkerJob {self.func}/{self.name}>"

    # outcomes -------------------------------------------------------------------
    def _finish(self) -> None:
        if self.finished:
            raise FinishedError(f"{self!r} is already finished")
        self.finished = True

    async def done(self, data: Any = b"") -> bool:
        """WORK_DONE with ``data`` (bytes, str, None or JSON-able)."""
        self._finish()
        payload = encode_payload(
            Command.WORK_DONE, self.job.func, self.job.name, _result_bytes(data)
        )
        return await self._worker._simple(Command.WORK_DONE, payload)

    async def fail(self) -> bool:
        """WORK_FAIL: the server retries the job in 1 s (a RUN_JOB caller gets
        ``failed``)."""
        self._finish()
        payload = encode_payload(Command.WORK_FAIL, self.job.func, self.job.name)
        return await self._worker._simple(Command.WORK_FAIL, payload)

    async def sched_later(self, delay: int, step: int = 0) -> bool:
        """SCHED_LATER: run again in ``delay`` seconds; ``step`` is added to
        the run counter."""
        self._finish()
        payload = encode_payload(
            Command.SCHED_LATER, self.job.func, self.job.name, int(delay), int(step)
        )
        return await self._worker._simple(Command.SCHED_LATER, payload)

    async def data(self, chunk: Any) -> bool:
        """WORK_DATA: stream a chunk to RECV_DATA / ``run_job(stream=)``
        listeners."""
        payload = encode_payload(
            Command.WORK_DATA, self.job.func, self.job.name, _result_bytes(chunk)
        )
        return await self._worker._simple(Command.WORK_DATA, payload)

    work_data = data

    async def acquire(self, lock: BytesLike, count: int = 1) -> bool:
        """ACQUIRE a named counting lock for this job.

        False means refused: the server parked the job until the lock is free
        and will dispatch it again; the handler must stop without an outcome
        (the job is marked finished here, so returning is enough).
        """
        payload = encode_payload(
            Command.ACQUIRE, to_bytes(lock), int(count), self.job.func, self.job.name
        )
        pkt = await self._worker._request(Command.ACQUIRE, payload)
        if pkt.command != Command.ACQUIRED:
            raise RequestRejected(pkt.command, pkt.payload)
        (granted,) = decode_payload(Command.ACQUIRED, pkt.payload)
        if not granted:
            self.finished = True
            self.lock_refused = True
        return bool(granted)

    async def release(self, lock: BytesLike) -> bool:
        """RELEASE a lock (locks are also released automatically when the job
        is done, failed or rescheduled)."""
        payload = encode_payload(
            Command.RELEASE, to_bytes(lock), self.job.func, self.job.name
        )
        return await self._worker._simple(Command.RELEASE, payload)

    async def with_lock(
        self,
        lock: BytesLike,
        count: int,
        task: Callable[[], Any],
        release: bool = False,
    ) -> Any:
        """Run ``task()`` (sync or async) while holding ``lock``; return its
        result, or None without running it when the lock is refused."""
        if not await self.acquire(lock, count):
            return None
        try:
            ret = task()
            if inspect.isawaitable(ret):
                ret = await ret
            return ret
        finally:
            if release:
                await self.release(lock)


class _Func:
    __slots__ = ("broadcast", "handler", "is_async")

    def __init__(self, handler: Handler, broadcast: bool) -> None:
        self.handler = handler
        self.broadcast = broadcast
        call = type(handler).__call__ if not inspect.isfunction(handler) else None
        self.is_async = inspect.iscoroutinefunction(handler) or (
            call is not None and inspect.iscoroutinefunction(call)
        )


class _Slot(_Sink):
    """One grab slot: a msgid offered with GRAB_JOB."""

    __slots__ = ("busy", "msgid", "worker")

    def __init__(self, worker: Worker, msgid: int) -> None:
        self.worker = worker
        self.msgid = msgid
        self.busy = False

    def feed(self, packet: Packet) -> None:
        cmd = packet.command
        if cmd == Command.JOB_ASSIGN:
            self.worker._assign(self, packet)
        elif cmd != Command.SUCCESS:
            logger.warning("GRAB_JOB answered with %s", Command(cmd).name)


class Worker(SignalDrain, Connection):
    """Asyncio Periodic worker (see the module docstring).

    :param address: server address (see :class:`~periodic_fast.client.Client`).
    :param threads: size of the thread pool for plain (non-async) handlers;
        default: the ``size`` given to :meth:`work`.
    :param drain_timeout: how long :meth:`shutdown` waits for running jobs.
    Other keyword arguments as for :class:`~periodic_fast.client.Connection`.
    """

    _client_type = ClientType.WORKER

    def __init__(
        self,
        address: str | None = None,
        *,
        threads: int | None = None,
        drain_timeout: float = 30.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(address, **kwargs)
        self._funcs: dict[bytes, _Func] = {}
        self._slots: list[_Slot] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        self._draining = False
        self._started = False
        self._stopped: asyncio.Event | None = None
        self._shutdown_task: asyncio.Task[None] | None = None
        self.drain_timeout = drain_timeout

    async def __aenter__(self) -> Worker:
        await self.connect()
        return self

    # registration -------------------------------------------------------------
    @property
    def funcs(self) -> list[str]:
        """The registered func names."""
        return [f.decode(errors="replace") for f in self._funcs]

    @property
    def running(self) -> int:
        """Jobs running now."""
        return sum(1 for s in self._slots if s.busy)

    async def add_func(
        self, func: BytesLike, handler: Handler, *, broadcast: bool = False
    ) -> bool:
        """Register ``handler`` for ``func`` (CAN_DO, or BROADCAST: every
        connected worker gets each job).  Sent now when connected, else on
        connect; True when the server accepted it (or it will be sent later)."""
        key = to_bytes(func)
        self._funcs[key] = _Func(handler, broadcast)
        if self.connected and not self._draining:
            return await self._register(key, broadcast)
        return True

    @overload
    def broadcast(
        self, func: BytesLike | None = None, handler: None = None
    ) -> Callable[[_H], _H]: ...

    @overload
    def broadcast(self, func: BytesLike, handler: Handler) -> Awaitable[bool]: ...

    def broadcast(
        self, func: BytesLike | None = None, handler: Handler | None = None
    ) -> Callable[[_H], _H] | Awaitable[bool]:
        """Register a broadcast func: ``@worker.broadcast("name")`` as a
        decorator, or ``await worker.broadcast("name", handler)`` (aio-periodic's
        form)."""
        if handler is None:
            return self.func(func, broadcast=True)
        if func is None:
            raise TypeError("broadcast(func, handler) needs a func name")
        return self.add_func(func, handler, broadcast=True)

    async def remove_func(self, func: BytesLike) -> bool:
        """Unregister a func (CANT_DO)."""
        key = to_bytes(func)
        self._funcs.pop(key, None)
        if self.connected:
            return await self._simple(
                Command.CANT_DO, encode_payload(Command.CANT_DO, key)
            )
        return True

    def func(
        self, name: BytesLike | None = None, *, broadcast: bool = False
    ) -> Callable[[_H], _H]:
        """Decorator: register the function as the handler of ``name``
        (default: the function's ``__name__``).  Registration is sent on the
        next connect, or scheduled now when already connected."""

        def deco(handler: _H) -> _H:
            key = to_bytes(name if name is not None else handler.__name__)
            self._funcs[key] = _Func(handler, broadcast)
            if self.connected and not self._draining:
                task = asyncio.get_running_loop().create_task(
                    self._register(key, broadcast)
                )
                task.add_done_callback(_log_task_error)
            return handler

        return deco

    async def _register(self, func: bytes, broadcast: bool) -> bool:
        cmd = Command.BROADCAST if broadcast else Command.CAN_DO
        return await self._simple(cmd, encode_payload(cmd, func))

    async def _simple(self, command: int, payload: bytes) -> bool:
        pkt = await self._request(command, payload)
        return pkt.command == Command.SUCCESS

    # connection hooks -------------------------------------------------------------
    async def _on_connected(self) -> None:
        if self._draining:
            return
        if self._funcs:
            await asyncio.gather(
                *(self._register(f, spec.broadcast) for f, spec in self._funcs.items())
            )
        if self._started:
            for slot in self._slots:
                if not slot.busy:
                    self._grab(slot)

    def _grab(self, slot: _Slot) -> None:
        proto = self._proto
        if proto is not None and proto.transport is not None and not self._draining:
            proto.send(slot.msgid, Command.GRAB_JOB)

    # running jobs ---------------------------------------------------------------
    async def start(self, size: int = 1) -> None:
        """Connect, register the funcs and offer ``size`` grab slots; return at
        once (jobs run in the background until :meth:`shutdown`)."""
        if size < 1:
            raise ValueError("size must be >= 1")
        if self._threads is None:
            self._threads = size
        self._stopped = asyncio.Event()
        self._draining = False
        for _ in range(size - len(self._slots)):
            slot = _Slot(self, self._next_msgid())
            self._waiters[slot.msgid] = slot
            self._slots.append(slot)
        self._started = True
        if self.connected:
            for slot in self._slots:
                if not slot.busy:
                    self._grab(slot)
        else:
            await self.connect()

    def _assign(self, slot: _Slot, pkt: Packet) -> None:
        proto = self._proto
        if proto is None:
            return
        (job,) = decode_payload(Command.JOB_ASSIGN, pkt.payload)
        spec = self._funcs.get(job.func)
        if self._draining or slot.busy or spec is None:
            proto.send(slot.msgid, Command.JOB_UNASSIGNED)
            if spec is None and not self._draining:
                self._send_nowait(
                    Command.CANT_DO, encode_payload(Command.CANT_DO, job.func)
                )
            if not slot.busy:
                self._grab(slot)
            return
        proto.send(slot.msgid, Command.JOB_ASSIGNED)
        slot.busy = True
        task = asyncio.get_running_loop().create_task(
            self._run(slot, WorkerJob(self, job), spec, proto)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, slot: _Slot, wjob: WorkerJob, spec: _Func, proto: _Protocol
    ) -> None:
        command = Command.WORK_DONE
        payload = b""
        job = wjob.job
        try:
            try:
                if spec.is_async:
                    ret = await spec.handler(wjob)
                else:
                    ret = await asyncio.get_running_loop().run_in_executor(
                        self._get_executor(), spec.handler, wjob
                    )
                    if inspect.isawaitable(ret):
                        ret = await ret
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("handler of %s/%s failed", wjob.func, wjob.name)
                ret = Fail()
            if wjob.finished:
                return
            wjob.finished = True
            if isinstance(ret, Fail):
                command = Command.WORK_FAIL
                payload = encode_payload(command, job.func, job.name)
            elif isinstance(ret, SchedLater):
                command = Command.SCHED_LATER
                payload = encode_payload(
                    command, job.func, job.name, int(ret.delay), int(ret.step)
                )
            else:
                data = ret.data if isinstance(ret, Done) else ret
                payload = encode_payload(
                    command, job.func, job.name, _result_bytes(data)
                )
        finally:
            slot.busy = False
            if payload and proto is self._proto and proto.transport is not None:
                # outcome and the slot's next GRAB_JOB leave in one write
                fut = self._start(proto, command, payload, self.timeout)
                self._grab(slot)
                with contextlib.suppress(ClientError):
                    await fut
            else:
                self._grab(slot)

    def _get_executor(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self._threads or 4, thread_name_prefix="periodic-worker"
            )
        return self._executor

    # stopping -------------------------------------------------------------------
    async def shutdown(self, timeout: float | None = None) -> None:
        """Graceful drain: CANT_DO every func, refuse new assignments, wait up
        to ``timeout`` (default ``drain_timeout``) for running jobs, close."""
        if timeout is None:
            timeout = self.drain_timeout
        self._draining = True
        if self.connected:
            with contextlib.suppress(ClientError):
                await asyncio.gather(
                    *(
                        self._simple(
                            Command.CANT_DO, encode_payload(Command.CANT_DO, f)
                        )
                        for f in self._funcs
                    )
                )
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)
        await self.close()

    async def close(self) -> None:
        """Close at once (running jobs are cancelled; the server fails them)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=1.0)
        await super().close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._started = False
        if self._stopped is not None:
            self._stopped.set()


def _log_task_error(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.warning("func registration failed: %s", task.exception())
