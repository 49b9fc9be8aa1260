"""Replies wait for the store: the server's durability barrier (issue 5).

A :class:`GateStore` is a memory store that says it is deferred and fires its
``on_durable`` callbacks only when the test opens the gate (from another
thread, as a real writer thread does), optionally with an error.  Nothing a
peer sees may be ahead of the "disk".
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from test_server import Raw, Runner, dump, pick, submit_frame
from test_server import run as run  # noqa: F401  (the loop fixture)

from periodic_fast import codec
from periodic_fast.constants import ClientType, Command
from periodic_fast.job import Job
from periodic_fast.store.memory import MemoryStore
from periodic_fast.testing import running_server

SHORT = 0.2  # how long "nothing arrives" is watched


class GateStore(MemoryStore):
    """A deferred memory store whose barriers the test releases."""

    __slots__ = ("_lock", "_waiting", "writes")
    deferred = True  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._waiting: list[Callable[[BaseException | None], None]] = []
        self.writes = 0

    def save_job(self, job, state):  # type: ignore[no-untyped-def]
        self.writes += 1
        super().save_job(job, state)

    def on_durable(self, callback: Callable[[BaseException | None], None]) -> None:
        with self._lock:
            self._waiting.append(callback)

    def pending(self) -> int:
        with self._lock:
            return len(self._waiting)

    def open(self, error: BaseException | None = None) -> None:
        """Fire every waiting callback from a foreign thread, in order."""
        with self._lock:
            waiting, self._waiting = self._waiting, []

        def fire() -> None:
            for cb in waiting:
                cb(error)

        t = threading.Thread(target=fire)
        t.start()
        t.join()


async def _nothing(conn: Raw) -> None:
    """Assert that no frame arrives for a moment."""
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.recv(), SHORT)


async def _open_until(store: GateStore, conn: Raw) -> codec.Packet:
    """Open the gate until a frame arrives (registration and replies may
    ride on separate barriers)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        store.open()
        try:
            return await asyncio.wait_for(conn.recv(), 0.05)
        except asyncio.TimeoutError:
            continue
    raise AssertionError("no frame after opening the gate")


async def _registered(store: GateStore, address: str, ctype: int) -> Raw:
    conn = await Raw.open(address)
    conn.send(codec.encode_registration(ctype))
    reply = await _open_until(store, conn)
    assert reply.msgid is None
    return conn


def test_success_waits_for_the_commit(run: Runner[None]) -> None:
    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            conn = await _registered(store, pick(srv, "tcp"), ClientType.CLIENT)
            conn.send(submit_frame(7, b"f", b"a"))
            await _nothing(conn)  # the job is applied, the reply is held
            assert store.writes == 1
            assert store.pending() >= 1
            store.open()
            reply = await conn.recv()
            assert (reply.msgid, reply.command) == (7, Command.SUCCESS)
            await conn.close()

    run(main())


def test_failed_commit_turns_success_into_refusal(run: Runner[None]) -> None:
    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            conn = await _registered(store, pick(srv, "unix"), ClientType.CLIENT)
            conn.send(submit_frame(1, b"f", b"a") + submit_frame(2, b"f", b"b"))
            await _nothing(conn)
            store.open(OSError(28, "No space left on device"))
            got = [await conn.recv(), await conn.recv()]
            assert [(p.msgid, p.command) for p in got] == [
                (1, Command.NO_WORKER),
                (2, Command.NO_WORKER),
            ]
            # the server keeps serving: the next commit succeeds
            conn.send(submit_frame(3, b"f", b"c"))
            reply = await _open_until(store, conn)
            assert (reply.msgid, reply.command) == (3, Command.SUCCESS)
            await conn.close()

    run(main())


def test_turns_release_in_order(run: Runner[None]) -> None:
    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            conn = await _registered(store, pick(srv, "tcp"), ClientType.CLIENT)
            for msgid in range(1, 6):  # one loop turn each
                conn.send(submit_frame(msgid, b"f", b"j%d" % msgid))
                await asyncio.sleep(0.02)
            waiting = store._waiting
            assert len(waiting) >= 2
            # fire the later barriers first: output must still come in order
            later = waiting[1:]
            first = waiting[0]
            store._waiting = []
            for cb in reversed(later):
                threading.Thread(target=cb, args=(None,)).start()
            await _nothing(conn)
            first(None)  # from the loop thread: synchronous path
            ids = [(await conn.recv()).msgid for _ in range(5)]
            assert ids == [1, 2, 3, 4, 5]
            await conn.close()

    run(main())


async def _idle_worker(store: GateStore, address: str, grabs: int = 1) -> Raw:
    """A worker of func ``f`` with ``grabs`` grab slots (msgids 2, 3, ...),
    every setup reply received."""
    worker = await _registered(store, address, ClientType.WORKER)
    worker.send(codec.encode_request(1, Command.CAN_DO, b"\x01f"))
    for msgid in range(2, 2 + grabs):
        worker.send(codec.encode_request(msgid, Command.GRAB_JOB))
    for _ in range(1 + grabs):  # the CAN_DO and GRAB_JOB replies
        assert (await _open_until(store, worker)).command == Command.SUCCESS
    return worker


@pytest.mark.parametrize("fail", [False, True])
def test_job_assign_leaves_before_the_submit_commit(
    run: Runner[None], fail: bool
) -> None:
    """A JOB_ASSIGN is a push, not a confirmation: it leaves at once, while
    the SUBMIT's SUCCESS waits for the commit.  The worker's WORK_DONE reply
    waits for a later barrier, so it never arrives before the SUBMIT's
    verdict; a failed commit refuses both (and the store converges on the
    retry: the job is gone, as the scheduler has it)."""

    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            worker = await _idle_worker(store, pick(srv, "tcp"))
            client = await _registered(store, pick(srv, "tcp"), ClientType.CLIENT)
            job = Job(b"f", b"now", b"", 0)
            client.send(
                codec.encode_request(3, Command.SUBMIT_JOB, codec.encode_job(job))
            )
            assign = await asyncio.wait_for(worker.recv(), 5)  # gate still shut
            assert (assign.msgid, assign.command) == (2, Command.JOB_ASSIGN)
            assert codec.decode_job(assign.payload).name == b"now"
            await _nothing(client)  # the SUBMIT is not committed yet
            flen = assign.payload[0]
            handle = assign.payload[: 2 + flen + assign.payload[1 + flen]]
            worker.send(codec.encode_request(2, Command.JOB_ASSIGNED))
            worker.send(codec.encode_request(9, Command.WORK_DONE, handle))
            await _nothing(worker)  # the done is held like any reply
            await _nothing(client)
            store.open(OSError(5, "I/O error") if fail else None)
            verdict = Command.NO_WORKER if fail else Command.SUCCESS
            assert (await client.recv()).command == verdict
            assert (await _open_until(store, worker)).command == verdict
            assert not srv.scheduler.jobs()  # done: gone, as in the store
            assert not list(store.load().jobs)
            await worker.close()
            await client.close()

    run(main())


def test_grab_output_leaves_before_the_commit(run: Runner[None]) -> None:
    """A GRAB_JOB confirms no stored change: its SUCCESS and the JOB_ASSIGN
    of a job that is ready (its SUBMIT not committed yet) leave at once."""

    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            worker = await _registered(store, pick(srv, "tcp"), ClientType.WORKER)
            worker.send(codec.encode_request(1, Command.CAN_DO, b"\x01f"))
            assert (await _open_until(store, worker)).command == Command.SUCCESS
            client = await _registered(store, pick(srv, "unix"), ClientType.CLIENT)
            ready = Job(b"f", b"ready", b"", 0)
            client.send(
                codec.encode_request(3, Command.SUBMIT_JOB, codec.encode_job(ready))
            )
            await _nothing(client)  # held: the gate is shut
            worker.send(codec.encode_request(6, Command.GRAB_JOB))
            got = [await asyncio.wait_for(worker.recv(), 5) for _ in range(2)]
            assert [(p.msgid, p.command) for p in got] == [
                (6, Command.SUCCESS),
                (6, Command.JOB_ASSIGN),
            ]
            store.open()
            assert (await client.recv()).command == Command.SUCCESS
            await worker.close()
            await client.close()

    run(main())


async def _ready_job_and_worker(store: GateStore, srv: object) -> tuple[Raw, Raw]:
    """A committed job of ``f`` due now, then a worker of ``f`` (no grab
    slot yet) with every setup reply received: nothing of it is held."""
    client = await _registered(store, pick(srv, "unix"), ClientType.CLIENT)
    ready = Job(b"f", b"ready", b"", 0)  # due now, no worker yet
    client.send(codec.encode_request(3, Command.SUBMIT_JOB, codec.encode_job(ready)))
    assert (await _open_until(store, client)).command == Command.SUCCESS
    worker = await _registered(store, pick(srv, "tcp"), ClientType.WORKER)
    worker.send(codec.encode_request(1, Command.CAN_DO, b"\x01f"))
    assert (await _open_until(store, worker)).command == Command.SUCCESS
    return client, worker


def test_job_assign_overtakes_a_held_reply(run: Runner[None]) -> None:
    """A JOB_ASSIGN (and the GRAB_JOB reply) queued behind a held reply of
    the same connection (here the reply to WORK_DONE, sent in one write
    with the GRAB_JOB) leaves at once: they confirm nothing stored, and
    peers match replies by msgid.  The held reply follows the commit."""

    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            client, worker = await _ready_job_and_worker(store, srv)
            unknown = b"\x01f\x07missing"  # WORK_DONE of no job: SUCCESS
            worker.send(
                codec.encode_request(5, Command.WORK_DONE, unknown)
                + codec.encode_request(6, Command.GRAB_JOB)
            )
            got = [await asyncio.wait_for(worker.recv(), 5) for _ in range(2)]
            assert [(p.msgid, p.command) for p in got] == [
                (6, Command.SUCCESS),  # GRAB_JOB
                (6, Command.JOB_ASSIGN),
            ]
            await _nothing(worker)  # the WORK_DONE reply waits for the commit
            reply = await _open_until(store, worker)
            assert (reply.msgid, reply.command) == (5, Command.SUCCESS)
            await worker.close()
            await client.close()

    run(main())


def test_slow_commit_does_not_close_a_confirming_worker(run: Runner[None]) -> None:
    """A commit slower than assign-wait must not look like a worker that
    never confirms: its JOB_ASSIGN is not held behind the commit, so the
    worker confirms in time and keeps its job and its connection (under
    load, PostgreSQL commits of over 2 s used to close healthy workers)."""

    async def main() -> None:
        store = GateStore()
        async with running_server(store=store, config={"assign-wait": 1}) as srv:
            client, worker = await _ready_job_and_worker(store, srv)
            # a held reply first, then the grab; the gate stays shut
            unknown = b"\x01f\x07missing"
            worker.send(
                codec.encode_request(5, Command.WORK_DONE, unknown)
                + codec.encode_request(6, Command.GRAB_JOB)
            )
            got = [await asyncio.wait_for(worker.recv(), 5) for _ in range(2)]
            assign = got[1]
            assert (assign.msgid, assign.command) == (6, Command.JOB_ASSIGN)
            worker.send(codec.encode_request(6, Command.JOB_ASSIGNED))
            await asyncio.sleep(1.6)  # the commit takes longer than assign-wait
            assert store.pending() >= 1  # still not committed
            flen = assign.payload[0]
            handle = assign.payload[: 2 + flen + assign.payload[1 + flen]]
            worker.send(codec.encode_request(7, Command.WORK_DONE, handle))
            got = [await _open_until(store, worker) for _ in range(2)]
            assert [(p.msgid, p.command) for p in got] == [
                (5, Command.SUCCESS),
                (7, Command.SUCCESS),
            ]
            assert not srv.scheduler.jobs()  # done by the same worker
            await worker.close()
            await client.close()

    run(main())


def test_registration_reply_comes_first(run: Runner[None]) -> None:
    """A worker that sends its registration, CAN_DO and GRAB_JOB in one
    write gets the registration reply first: the GRAB_JOB reply may leave
    before the commit, the connection id may not be overtaken."""

    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            worker = await Raw.open(pick(srv, "tcp"))
            worker.send(
                codec.encode_registration(ClientType.WORKER)
                + codec.encode_request(1, Command.CAN_DO, b"\x01f")
                + codec.encode_request(2, Command.GRAB_JOB)
            )
            first = await asyncio.wait_for(worker.recv(), 5)  # gate shut
            assert first.msgid is None  # the registration reply
            grab = await asyncio.wait_for(worker.recv(), 5)
            assert (grab.msgid, grab.command) == (2, Command.SUCCESS)
            await _nothing(worker)  # the CAN_DO reply waits for the commit
            reply = await _open_until(store, worker)
            assert (reply.msgid, reply.command) == (1, Command.SUCCESS)
            await worker.close()

    run(main())


def test_close_waits_for_held_output(run: Runner[None]) -> None:
    """A connection closed by the server (here: shutdown) still gets the
    replies that were waiting for the commit, and only after it."""

    async def main() -> None:
        store = GateStore()
        async with running_server(store=store) as srv:
            conn = await _registered(store, pick(srv, "tcp"), ClientType.CLIENT)
            conn.send(submit_frame(9, b"f", b"a"))
            await asyncio.sleep(0.05)
            srv.hub.close_all()
            await _nothing(conn)
            store.open()
            got = await conn.closed()
            packets = codec.Parser(requests=False).feed(got)
            assert [(p.msgid, p.command) for p in packets] == [(9, Command.SUCCESS)]

    run(main())


def test_memory_store_replies_at_once(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server() as srv:
            conn = await Raw.open(pick(srv, "tcp"))
            await conn.register()
            conn.send(submit_frame(1, b"f", b"a"))
            reply = await conn.recv()
            assert (reply.msgid, reply.command) == (1, Command.SUCCESS)
            assert not srv.hub.holding
            assert [j.name for j in await dump(conn, 2)] == [b"a"]
            await conn.close()

    run(main())
