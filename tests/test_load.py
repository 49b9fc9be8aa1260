"""Correctness under load, with raw-codec clients (no aio-periodic).

* ``test_every_job_runs_exactly_once``: 100,000 jobs submitted pipelined over
  two client connections, 8 worker connections holding 16 grab slots each;
  every JOB_ASSIGN is answered with JOB_ASSIGNED, WORK_DONE and a re-GRAB.
  Every job is assigned exactly once, only to a slot the worker had offered
  and not used since, every reply is the expected one, and the store is empty
  at the end.
* ``test_jobs_survive_disconnecting_workers``: as above, but some workers stop
  working and close their connection while holding confirmed assignments, and
  fresh workers join.  At-least-once: every job is completed and the store ends
  empty; a job may run twice only if a worker went away holding it.

The server is the in-process one of :func:`periodic_fast.testing.running_server`
on 127.0.0.1, sharing the event loop with the clients; each test runs on the
stock asyncio loop and on uvloop.  Time bounds are deadlines, never timing
assertions.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import importlib.util
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from periodic_fast.codec import (
    Parser,
    decode_job_list,
    decode_status,
    encode_job,
    encode_registration,
    encode_request,
    encode_request_into,
)
from periodic_fast.constants import ClientType, Command
from periodic_fast.errors import ProtocolError
from periodic_fast.job import Job
from periodic_fast.server.app import new_event_loop
from periodic_fast.testing import running_server

pytestmark = pytest.mark.timeout(90)

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
LOOPS = [
    "asyncio",
    pytest.param(
        "uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop")
    ),
]


def run_on(kind: str, check: Callable[[], Awaitable[None]], timeout: float) -> None:
    """Run ``check()`` on a fresh loop of ``kind`` (server and clients share it);
    bounded by ``timeout`` (pytest-timeout cannot interrupt loop callbacks)."""
    loop = new_event_loop(kind)  # type: ignore[arg-type]
    try:
        loop.run_until_complete(asyncio.wait_for(check(), timeout))
    finally:
        pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            loop.run_until_complete(asyncio.wait(pending, timeout=5))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


FUNC = b"load"
CTRL_BASE = 0x10000000  # msgids of control requests; slots use 1..nslots

SUBMIT_JOB = int(Command.SUBMIT_JOB)
SUCCESS = int(Command.SUCCESS)
JOB_ASSIGN = int(Command.JOB_ASSIGN)
GRAB_JOB = int(Command.GRAB_JOB)
JOB_ASSIGNED = int(Command.JOB_ASSIGNED)
WORK_DONE = int(Command.WORK_DONE)


class Tracker:
    """Everything every worker saw, across connections."""

    def __init__(self) -> None:
        self.assigned: collections.Counter[bytes] = collections.Counter()
        self.done: set[bytes] = set()  # WORK_DONE answered with SUCCESS
        self.abandoned: collections.Counter[bytes] = collections.Counter()
        self.faults: list[str] = []
        self.progress = asyncio.Event()

    def fault(self, what: str) -> None:
        self.faults.append(what)
        self.progress.set()


class RawConn(asyncio.Protocol):
    """One registered connection speaking raw frames; subclasses react."""

    client_type = int(ClientType.CLIENT)

    def __init__(self, tracker: Tracker, label: str) -> None:
        self.tracker = tracker
        self.label = label
        self.parser = Parser(requests=False, registration=True)
        self.transport: asyncio.Transport | None = None
        self.out = bytearray()
        self.conn_id: bytes | None = None
        self.expected_close = False
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: no subclass
        self.out += encode_registration(self.client_type)
        self.on_connected()
        self.flush()

    def on_connected(self) -> None:
        pass

    def flush(self) -> None:
        if self.out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(bytes(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        try:
            packets = self.parser.feed(data)
        except ProtocolError as exc:
            self.tracker.fault(f"{self.label}: bad frame from the server: {exc!r}")
            assert self.transport is not None
            self.transport.abort()
            return
        for p in packets:
            if p.msgid is None:
                if self.conn_id is not None:
                    self.tracker.fault(f"{self.label}: second registration reply")
                self.conn_id = p.payload
                continue
            if self.conn_id is None:
                self.tracker.fault(f"{self.label}: frame before the registration")
            self.on_packet(p.msgid, p.command, p.payload)
        self.flush()

    def on_packet(self, msgid: int, command: int, payload: bytes) -> None:
        raise NotImplementedError

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.expected_close:
            self.tracker.fault(f"{self.label}: connection lost ({exc!r})")
        if not self.lost.done():
            self.lost.set_result(None)


class Submitter(RawConn):
    """Pipelines SUBMIT_JOB frames; every reply must be exactly SUCCESS."""

    def __init__(self, tracker: Tracker, label: str) -> None:
        super().__init__(tracker, label)
        self.outstanding: set[int] = set()
        self.acked = 0
        self.room = asyncio.Event()
        self.window = 0

    def on_packet(self, msgid: int, command: int, payload: bytes) -> None:
        try:
            self.outstanding.remove(msgid)
        except KeyError:
            self.tracker.fault(f"{self.label}: reply to unknown msgid {msgid}")
            return
        if command != SUCCESS or payload:
            self.tracker.fault(f"{self.label}: submit got {command} {payload!r}")
            return
        self.acked += 1
        if len(self.outstanding) <= self.window // 2:
            self.room.set()

    async def submit_all(
        self, names: list[bytes], *, window: int = 8192, batch: int = 1024
    ) -> None:
        """Submit ``names`` with at most ``window`` unanswered requests."""
        assert self.transport is not None
        self.window = window
        for start in range(0, len(names), batch):
            while len(self.outstanding) + batch > window:
                self.room.clear()
                await asyncio.wait_for(self.room.wait(), 30)
            buf = bytearray()
            for i, name in enumerate(names[start : start + batch], start + 1):
                encode_request_into(buf, i, SUBMIT_JOB, encode_job(Job(FUNC, name)))
                self.outstanding.add(i)
            self.transport.write(bytes(buf))
            await asyncio.sleep(0)  # let replies in


class Admin(RawConn):
    """One request at a time (STATUS, DUMP)."""

    def __init__(self, tracker: Tracker, label: str) -> None:
        super().__init__(tracker, label)
        self.waiters: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.next_id = 1

    def on_packet(self, msgid: int, command: int, payload: bytes) -> None:
        fut = self.waiters.pop(msgid, None)
        if fut is None:
            self.tracker.fault(f"{self.label}: unexpected {command} on {msgid}")
        elif not fut.done():
            fut.set_result((command, payload))

    async def request(self, command: int, payload: bytes = b"") -> tuple[int, bytes]:
        assert self.transport is not None
        msgid = self.next_id
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiters[msgid] = fut
        self.transport.write(encode_request(msgid, command, payload))
        return await asyncio.wait_for(fut, 10)

    async def func_stat(self) -> tuple[int, int, int, int] | None:
        """``(workers, jobs, processing, locked)`` of FUNC, or None."""
        command, payload = await self.request(int(Command.STATUS))
        assert command == int(Command.DATA), (command, payload)
        for st in decode_status(payload):
            if st.func == FUNC:
                return st.workers, st.jobs, st.processing, st.locked
        return None

    async def dump(self) -> list[Job]:
        command, payload = await self.request(int(Command.DUMP))
        assert command == int(Command.DATA), (command, payload)
        return list(decode_job_list(payload))


class RawWorker(RawConn):
    """CAN_DO FUNC, ``nslots`` grab slots; runs every job at once.

    Per JOB_ASSIGN on slot ``m``: JOB_ASSIGNED(m), WORK_DONE(handle), GRAB_JOB(m),
    all in the same write.  With ``die_after`` set, from that many assignments
    on it only confirms (holds the jobs, no WORK_DONE, no re-grab) and closes
    its connection shortly after (``abort`` chooses RST over FIN).
    """

    client_type = int(ClientType.WORKER)

    def __init__(
        self,
        tracker: Tracker,
        label: str,
        nslots: int,
        *,
        die_after: int | None = None,
        abort: bool = False,
        on_gone: Callable[[RawWorker], None] | None = None,
    ) -> None:
        super().__init__(tracker, label)
        self.nslots = nslots
        self.free: set[int] = set()
        self.ctrl = CTRL_BASE
        self.pending_done: dict[int, bytes] = {}  # WORK_DONE msgid -> name
        self.pending_ctrl: set[int] = set()  # CAN_DO
        self.held: set[bytes] = set()  # assigned here, WORK_DONE not acked
        self.n_assigned = 0
        self.die_after = die_after
        self.abort = abort
        self.dying = False
        self.on_gone = on_gone

    def on_connected(self) -> None:
        self.ctrl += 1
        self.pending_ctrl.add(self.ctrl)
        encode_request_into(
            self.out, self.ctrl, int(Command.CAN_DO), bytes((4,)) + FUNC
        )
        for m in range(1, self.nslots + 1):
            encode_request_into(self.out, m, GRAB_JOB)
            self.free.add(m)

    def on_packet(self, msgid: int, command: int, payload: bytes) -> None:
        tr = self.tracker
        if command == JOB_ASSIGN:
            if msgid not in self.free:
                tr.fault(f"{self.label}: JOB_ASSIGN on msgid {msgid}, not a free slot")
            self.free.discard(msgid)
            flen = payload[0]
            nlen = payload[1 + flen]
            if payload[1 : 1 + flen] != FUNC:
                tr.fault(f"{self.label}: JOB_ASSIGN of another func {payload!r}")
            name = payload[2 + flen : 2 + flen + nlen]
            handle = payload[: 2 + flen + nlen]
            tr.assigned[name] += 1
            self.held.add(name)
            self.n_assigned += 1
            out = self.out
            encode_request_into(out, msgid, JOB_ASSIGNED)
            if self.die_after is not None and self.n_assigned >= self.die_after:
                if not self.dying:
                    self.dying = True
                    asyncio.get_running_loop().call_later(0.05, self.die)
                return
            self.ctrl += 1
            self.pending_done[self.ctrl] = name
            encode_request_into(out, self.ctrl, WORK_DONE, handle)
            encode_request_into(out, msgid, GRAB_JOB)
            self.free.add(msgid)
            return
        if command != SUCCESS or payload:
            tr.fault(f"{self.label}: got {command} {payload!r} on {msgid}")
            return
        if msgid <= self.nslots:
            return  # GRAB_JOB acknowledged
        done = self.pending_done.pop(msgid, None)
        if done is not None:
            self.held.discard(done)
            tr.done.add(done)
            tr.progress.set()
        elif msgid in self.pending_ctrl:
            self.pending_ctrl.discard(msgid)
        else:
            tr.fault(f"{self.label}: SUCCESS on unknown msgid {msgid}")

    def die(self) -> None:
        """Go away holding jobs (the mid-job disconnect)."""
        self.expected_close = True
        assert self.transport is not None
        self.flush()
        if self.abort:
            self.transport.abort()
        else:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for name in self.held:  # maybe done, maybe not: the server decides
            self.tracker.abandoned[name] += 1
        self.held.clear()
        super().connection_lost(exc)
        self.tracker.progress.set()
        if self.on_gone is not None:
            self.on_gone(self)


async def connect(
    address: str, factory: Callable[[], RawConn]
) -> tuple[asyncio.Transport, Any]:
    loop = asyncio.get_running_loop()
    assert address.startswith("tcp://")
    host, _, port = address[6:].rpartition(":")
    return await loop.create_connection(factory, host, int(port))


async def close_all(conns: list[RawConn]) -> None:
    for c in conns:
        c.expected_close = True
        if c.transport is not None:
            c.transport.close()
    await asyncio.wait_for(asyncio.gather(*(c.lost for c in conns)), 10)


async def wait_for_progress(
    tracker: Tracker, done: Callable[[], bool], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if tracker.faults:
            pytest.fail(f"faults while waiting for {what}: {tracker.faults[:10]}")
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        tracker.progress.clear()
        try:
            await asyncio.wait_for(tracker.progress.wait(), min(left, 0.5))
        except asyncio.TimeoutError:
            pass


async def wait_store_empty(admin: Admin, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        st = await admin.func_stat()
        if st is not None and st[1:] == (0, 0, 0):
            break
        if time.monotonic() >= deadline:
            pytest.fail(f"STATUS still shows jobs after {timeout} s: {st}")
        await asyncio.sleep(0.2)
    assert await admin.dump() == []


async def check_every_job_runs_exactly_once() -> None:
    n_jobs, n_workers, n_slots = 100_000, 8, 16
    names = [b"j%06d" % i for i in range(n_jobs)]
    tr = Tracker()
    async with running_server(tcp=True, unix=False) as srv:
        address = srv.addresses[0]
        conns: list[RawConn] = []
        workers: list[RawWorker] = []
        for i in range(n_workers):
            _, w = await connect(
                address, functools.partial(RawWorker, tr, f"w{i}", n_slots)
            )
            workers.append(w)
        subs: list[Submitter] = []
        for i in range(2):
            _, s = await connect(address, functools.partial(Submitter, tr, f"s{i}"))
            subs.append(s)
        _, admin = await connect(address, lambda: Admin(tr, "admin"))
        conns += [*workers, *subs, admin]

        t0 = time.monotonic()
        await asyncio.gather(
            subs[0].submit_all(names[0::2]), subs[1].submit_all(names[1::2])
        )
        await wait_for_progress(
            tr, lambda: len(tr.done) == n_jobs, 60, "every job to be done"
        )
        elapsed = time.monotonic() - t0

        assert not tr.faults, tr.faults[:10]
        assert sum(s.acked for s in subs) == n_jobs
        assert all(not s.outstanding for s in subs)
        assert len(tr.assigned) == n_jobs, "some jobs were never assigned"
        dups = [n for n, c in tr.assigned.items() if c != 1]
        assert not dups, f"{len(dups)} jobs assigned more than once: {dups[:10]}"
        assert tr.done == set(names)
        assert not tr.abandoned
        assert all(not w.held and not w.pending_done for w in workers)
        assert await admin.func_stat() == (n_workers, 0, 0, 0)
        await wait_store_empty(admin, 5)
        assert not tr.faults, tr.faults[:10]
        print(f"\n{n_jobs} jobs in {elapsed:.1f} s ({n_jobs / elapsed:,.0f}/s)")
        await close_all(conns)


async def check_jobs_survive_disconnecting_workers() -> None:
    n_jobs, n_slots = 30_000, 16
    names = [b"d%06d" % i for i in range(n_jobs)]
    all_names = set(names)
    tr = Tracker()
    async with running_server(tcp=True, unix=False) as srv:
        address = srv.addresses[0]
        workers: list[RawWorker] = []
        joins: list[asyncio.Task[Any]] = []
        dead: list[RawWorker] = []
        stopping = False

        async def add_worker(die_after: int | None, abort: bool) -> None:
            label = f"w{len(workers)}" + ("-dies" if die_after else "")
            _, w = await connect(
                address,
                lambda: RawWorker(
                    tr, label, n_slots, die_after=die_after, abort=abort, on_gone=gone
                ),
            )
            workers.append(w)

        def gone(w: RawWorker) -> None:
            if stopping:
                return
            dead.append(w)
            # a new worker joins; the first four newcomers walk away too
            die_after = 500 if len(dead) <= 4 else None
            joins.append(asyncio.ensure_future(add_worker(die_after, len(dead) > 2)))

        # four of the first eight walk away holding jobs: two close (FIN),
        # two abort (RST); the others and later newcomers finish the work
        plan = [None, 300, None, 1000, None, 1500, None, 2000]
        for i, die_after in enumerate(plan):
            await add_worker(die_after, i in (5, 7))
        _, sub = await connect(address, lambda: Submitter(tr, "sub"))
        _, admin = await connect(address, lambda: Admin(tr, "admin"))

        await sub.submit_all(names)
        await wait_for_progress(
            tr,
            lambda: tr.done | set(tr.abandoned) >= all_names,
            60,
            "every job to be done or held by a departed worker",
        )
        # abandoned jobs are retried 1 s after their worker left
        await wait_store_empty(admin, 20)
        await wait_for_progress(
            tr, lambda: tr.done >= all_names - set(tr.abandoned), 5, "acks"
        )
        stopping = True
        await asyncio.gather(*joins)

        assert not tr.faults, tr.faults[:10]
        assert sub.acked == n_jobs
        assert len(dead) >= 4, f"only {len(dead)} workers went away"
        assert tr.abandoned, "no worker held a job when it went away"
        assert set(tr.assigned) == all_names
        # at-least-once: every job acknowledged done, or held by a worker that
        # went away (its last WORK_DONE may have reached the server first);
        # the store is empty, so every job was finished by some WORK_DONE
        assert tr.done | set(tr.abandoned) == all_names
        # a second run only for the jobs a departing worker held
        for name, count in tr.assigned.items():
            assert count <= 1 + tr.abandoned[name], (name, count, tr.abandoned[name])
        print(
            f"\n{len(dead)} workers went away holding {sum(tr.abandoned.values())} "
            f"jobs; {sum(tr.assigned.values()) - n_jobs} re-runs"
        )
        await close_all([w for w in workers if w not in dead] + [sub, admin])


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_every_job_runs_exactly_once(loop_kind: str) -> None:
    run_on(loop_kind, check_every_job_runs_exactly_once, 75)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_jobs_survive_disconnecting_workers(loop_kind: str) -> None:
    run_on(loop_kind, check_jobs_survive_disconnecting_workers, 75)
