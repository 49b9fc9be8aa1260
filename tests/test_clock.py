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
        self.c.s.handle(self.id, msgid, command, payload, self.c.wall, self.c.mono)
        return self.take()

    def assigns(self) -> list[Job]:
        return [decode_job(p.payload) for p in self.take() if p.command == C.JOB_ASSIGN]


class Clocks:
    """A scheduler driven by a wall clock and a monotonic clock."""

    def __init__(self, config: dict[str, int] | None = None) -> None:
        self.wall = T0
        self.mono = M0
        self.store = MemoryStore()
        self.s = Scheduler(self.store, self.wall, config=config, mono=self.mono)
        self._next = 1

    def connect(self, ctype: int) -> Conn:
        conn = Conn(self, self._next, ctype)
        self._next += 1
        self.s.connect(
            conn.id, ctype, None, conn.send, conn.close, self.wall, self.mono
        )
        return conn

    def worker(self, func: bytes, slots: int = 1) -> Conn:
        w = self.connect(2)
        w.req(C.CAN_DO, func)
        for m in range(1, slots + 1):
            w.req(C.GRAB_JOB, msgid=m)
        return w

    def tick(self) -> None:
        self.s.tick(self.wall, self.mono)

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


# -- item 1: deadlines on the monotonic clock, sched_at on the wall clock ---------

HOUR = 3600.0


def running_jobs(c: Clocks, n: int, timeout: int = 60) -> Conn:
    """``n`` jobs of func f running (confirmed) on one worker."""
    w = c.worker(b"f", slots=n)
    cl = c.connect(1)
    for i in range(n):
        cl.req(C.SUBMIT_JOB, Job(b"f", b"j%d" % i, timeout=timeout))
    got = w.assigns()
    assert len(got) == n
    for m in range(1, n + 1):
        w.req(C.JOB_ASSIGNED, msgid=m)
    return w


def processing(c: Clocks) -> int:
    [st] = c.s.status(c.wall)
    return st.processing


def test_wall_step_forward_redispatches_nothing() -> None:
    c = Clocks()
    w = running_jobs(c, 10)
    other = c.worker(b"f", slots=10)  # would get any job sent again
    c.advance(5)
    c.step_wall(HOUR)
    c.advance(10)  # a fast sweep (keepalive) and a few ticks after the step
    assert w.closed == 0 and other.closed == 0
    assert other.assigns() == []
    assert processing(c) == 10
    assert c.s.connection_count == 3
    w.req(C.WORK_DONE, b"f", b"j0", b"")
    assert processing(c) == 9


def test_wall_step_forward_keeps_unconfirmed_assignments() -> None:
    c = Clocks(config={"assign-wait": 5})
    w = c.worker(b"f")
    c.connect(1).req(C.SUBMIT_JOB, Job(b"f", b"a"))
    assert len(w.assigns()) == 1
    c.step_wall(HOUR)
    c.advance(1)
    assert w.closed == 0
    w.req(C.JOB_ASSIGNED, msgid=1)
    assert processing(c) == 1


def test_timeouts_and_keepalive_still_run_on_the_monotonic_clock() -> None:
    c = Clocks(config={"keepalive": 30})
    w = running_jobs(c, 1, timeout=5)
    c.step_wall(-HOUR)  # a wall clock stepping back extends nothing
    idle = c.connect(1)
    other = c.worker(b"f")
    c.advance(7)
    assert [j.name for j in other.assigns()] == [b"j0"]  # w's run timed out
    c.advance(40)
    assert w.closed == 1 and idle.closed == 1  # idle for 30 s


def test_wall_step_keeps_lock_holders() -> None:
    c = Clocks()
    w = c.worker(b"f", slots=2)
    cl = c.connect(1)
    cl.req(C.SUBMIT_JOB, Job(b"f", b"a"))
    cl.req(C.SUBMIT_JOB, Job(b"f", b"b"))
    assert len(w.assigns()) == 2
    w.req(C.JOB_ASSIGNED, msgid=1)
    w.req(C.JOB_ASSIGNED, msgid=2)
    w.req(C.ACQUIRE, b"L", 1, b"f", b"a")
    w.req(C.ACQUIRE, b"L", 1, b"f", b"b")  # refused: b is locked
    [st] = c.s.status(c.wall)
    assert (st.processing, st.locked) == (1, 1)
    c.advance(1)
    c.step_wall(HOUR)
    for _ in range(5):
        c.advance(1)
    [lk] = c.s.locks()
    assert [e[1] for e in lk.holders] == [b"a"]
    assert [e[1] for e in lk.waiting] == [b"b"]
    # shown in wall time: held for the 6 s that passed, not for an hour
    assert c.wall - 7 < lk.holders[0][2] <= c.wall
    [st] = c.s.status(c.wall)
    assert (st.processing, st.locked) == (1, 1)


def test_wall_step_keeps_result_waiters() -> None:
    c = Clocks()
    c.worker(b"f")
    cl = c.connect(1)
    cl.req(C.RUN_JOB, Job(b"f", b"a", timeout=60), msgid=7)
    c.step_wall(HOUR)
    c.advance(11)  # a fast sweep expires waiters
    assert [p.command for p in cl.take()] == []
    [job] = c.s.jobs()
    assert job.name == b"a"


def test_jobs_due_after_a_backward_step_run_when_the_wall_clock_reaches_them() -> None:
    c = Clocks()
    w = c.worker(b"f", slots=3)
    cl = c.connect(1)
    c.advance(2)
    before = int(c.wall)
    # due before the step's target: the wall clock reaches it an hour later
    cl.req(C.SUBMIT_JOB, Job(b"f", b"old", sched_at=before + 10))
    c.step_wall(-HOUR)
    cl.req(C.SUBMIT_JOB, Job(b"f", b"new", sched_at=int(c.wall) + 5))
    c.advance(4.5)
    assert w.assigns() == []
    c.advance(1)
    assert [j.name for j in w.assigns()] == [b"new"]
    # a retry after a failure: one second later on the stepped-back clock
    w.req(C.JOB_ASSIGNED, msgid=3)
    w.req(C.WORK_FAIL, b"f", b"new")
    w.req(C.GRAB_JOB, msgid=4)
    c.advance(1.5)
    assert [j.name for j in w.assigns()] == [b"new"]
    w.req(C.JOB_ASSIGNED, msgid=4)
    w.req(C.SCHED_LATER, b"f", b"new", 3, 0)
    w.req(C.GRAB_JOB, msgid=5)
    c.advance(2)
    assert w.assigns() == []
    c.advance(2)
    assert [j.name for j in w.assigns()] == [b"new"]
    w.req(C.JOB_ASSIGNED, msgid=5)
    c.advance(60)
    assert w.assigns() == []  # "old" waits for its wall time
    c.wall = before + 10 - 0.5  # the wall clock catches up
    c.tick()
    assert w.assigns() == []
    c.advance(1)
    assert [j.name for j in w.assigns()] == [b"old"]
    assert w.closed == 0


def test_backward_step_reschedule_and_removal() -> None:
    c = Clocks()
    w = c.worker(b"f", slots=2)
    cl = c.connect(1)
    c.advance(2)
    c.step_wall(-HOUR)
    t = int(c.wall)
    cl.req(C.SUBMIT_JOB, Job(b"f", b"a", sched_at=t + 5))
    cl.req(C.SUBMIT_JOB, Job(b"f", b"a", sched_at=t + 3))  # moved earlier
    cl.req(C.SUBMIT_JOB, Job(b"f", b"b", sched_at=t + 3))
    cl.req(C.REMOVE_JOB, b"f", b"b")
    cl.req(C.SUBMIT_JOB, Job(b"f", b"c", sched_at=t + HOUR_I + 100))  # the wheel
    c.advance(3.5)
    assert [j.name for j in w.assigns()] == [b"a"]
    c.advance(5)
    assert w.assigns() == []  # no second "a", no removed "b"
    assert sorted(j.name for j in c.s.jobs()) == [b"a", b"c"]
    # the next wake-up comes from the monotonic clock, not an hour away
    nxt = c.s.next_wakeup()
    assert nxt is not None and c.mono < nxt <= c.mono + 10


HOUR_I = int(HOUR)


def test_next_wakeup_is_monotonic() -> None:
    c = Clocks()
    c.worker(b"f")
    c.connect(1).req(C.SUBMIT_JOB, Job(b"f", b"a", sched_at=int(T0) + 4))
    assert c.s.next_wakeup() == M0 + 4


def test_a_scheduler_built_without_mono_moves_onto_the_first_one() -> None:
    """A custom server factory builds ``Scheduler(store, now)``: the server's
    monotonic times that follow must not expire everything at once."""
    c = Clocks()
    c.s = Scheduler(c.store, c.wall)  # no mono: anchored on the first call
    w = running_jobs(c, 1, timeout=30)
    c.advance(20)
    assert processing(c) == 1 and w.closed == 0
    assert c.s.next_wakeup() is not None
    c.advance(15)
    assert processing(c) == 0  # timed out after 30 s, on the monotonic clock
