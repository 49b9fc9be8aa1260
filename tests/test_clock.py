"""Time in the scheduler: SCHED_LATER rounding (issue 17 item 4) and the two
clocks, wall and monotonic (issue 17 item 1).

The sans-I/O tests drive a :class:`Scheduler` with a fake wall clock and a
fake monotonic clock that can be stepped apart, the way an NTP step moves
``time.time()`` but not ``time.monotonic()``.
"""

from __future__ import annotations

from typing import Any

from periodic_fast.codec import Packet, Parser, decode_job, encode_payload
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.scheduler import Scheduler
from periodic_fast.store.memory import MemoryStore

T0 = 1_700_000_000.0
M0 = 5_000.0  # a monotonic clock starts anywhere


class Conn:
    """A fake connection: records the frames the scheduler sends it."""

    def __init__(self, clocks: Clocks, cid: int, ctype: int) -> None:
        self.c = clocks
        self.id = cid
        self.parser = Parser(requests=False)
        self.frames: list[Packet] = []
        self.closed = 0
        self._msgid = 1000

    def send(self, data: bytes) -> None:
        self.frames.extend(self.parser.feed(data))

    def close(self) -> None:
        self.closed += 1

    def take(self) -> list[Packet]:
        out, self.frames = self.frames, []
        return out

    def req(self, command: int, *fields: Any, msgid: int | None = None) -> list[Packet]:
        if msgid is None:
            self._msgid += 1
            msgid = self._msgid
        payload = encode_payload(command, *fields)
        self.c.s.handle(self.id, msgid, command, payload, self.c.wall)
        return self.take()

    def assigns(self) -> list[Job]:
        return [decode_job(p.payload) for p in self.take() if p.command == C.JOB_ASSIGN]


class Clocks:
    """A scheduler driven by a wall clock and a monotonic clock."""

    def __init__(self, config: dict[str, int] | None = None) -> None:
        self.wall = T0
        self.mono = M0
        self.store = MemoryStore()
        self.s = Scheduler(self.store, self.wall, config=config)
        self._next = 1

    def connect(self, ctype: int) -> Conn:
        conn = Conn(self, self._next, ctype)
        self._next += 1
        self.s.connect(
            conn.id, ctype, None, conn.send, conn.close, self.wall
        )
        return conn

    def worker(self, func: bytes, slots: int = 1) -> Conn:
        w = self.connect(2)
        w.req(C.CAN_DO, func)
        for m in range(1, slots + 1):
            w.req(C.GRAB_JOB, msgid=m)
        return w

    def tick(self) -> None:
        self.s.tick(self.wall)

    def advance(self, dt: float) -> None:
        """Both clocks move forward together, ticking every second."""
        end = self.mono + dt
        while self.mono + 1 <= end:
            self.wall += 1
            self.mono += 1
            self.tick()
        self.wall += end - self.mono
        self.mono = end
        self.tick()

    def step_wall(self, dt: float) -> None:
        """An NTP step: the wall clock jumps, the monotonic one does not."""
        self.wall += dt
        self.tick()


# -- item 4: SCHED_LATER N means at least N seconds later ------------------------


def test_sched_later_is_at_least_the_delay_after_the_report() -> None:
    c = Clocks()
    w = c.worker(b"f")
    cl = c.connect(1)
    cl.req(C.SUBMIT_JOB, Job(b"f", b"a"))
    [job] = w.assigns()
    w.req(C.JOB_ASSIGNED, msgid=1)
    c.advance(0.96)  # the report comes late in its second
    reported = c.wall
    w.req(C.GRAB_JOB, msgid=2)
    w.req(C.SCHED_LATER, b"f", b"a", 2, 0)
    [stored] = c.s.jobs()
    assert stored.sched_at >= reported + 2
    c.advance(1.04)  # 2 s counted from the report's whole second
    assert w.assigns() == []
    c.advance(0.9)  # 1.94 s after the report
    assert w.assigns() == []
    c.advance(0.1)  # 2.04 s after the report
    assert [j.name for j in w.assigns()] == [b"a"]


def test_sched_later_on_a_whole_second_is_exact() -> None:
    c = Clocks()
    w = c.worker(b"f")
    c.connect(1).req(C.SUBMIT_JOB, Job(b"f", b"a"))
    w.assigns()
    w.req(C.JOB_ASSIGNED, msgid=1)
    w.req(C.SCHED_LATER, b"f", b"a", 2, 0)
    [stored] = c.s.jobs()
    assert stored.sched_at == int(T0) + 2


def test_sched_later_zero_or_negative_is_due_now() -> None:
    c = Clocks()
    w = c.worker(b"f")
    c.connect(1).req(C.SUBMIT_JOB, Job(b"f", b"a"))
    w.assigns()
    w.req(C.JOB_ASSIGNED, msgid=1)
    c.advance(0.5)
    w.req(C.SCHED_LATER, b"f", b"a", 0, 0)
    [stored] = c.s.jobs()
    assert stored.sched_at == int(c.wall)
