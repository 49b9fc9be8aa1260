"""Sans-I/O tests of the scheduler with a fake clock and fake connections.

Tests named ``test_NN_...`` cover item NN of the conformance checklist in
protocol.md section 8; the others cover the rest of sections 3-4.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from periodic_fast.codec import (
    Packet,
    Parser,
    decode_job,
    decode_job_list,
    decode_status,
    encode_job_list,
    encode_payload,
)
from periodic_fast.constants import Command as C
from periodic_fast.errors import (
    ProtocolError,
    TrailingBytes,
    TruncatedPayload,
    UnknownCommand,
)
from periodic_fast.job import FuncStat, Job, JobState
from periodic_fast.scheduler import Scheduler
from periodic_fast.store import StoreSnapshot
from periodic_fast.store.memory import MemoryStore

T0 = 1_700_000_000.0


class FakeConn:
    """Records the frames the scheduler sends, decoded."""

    def __init__(self, harness: Harness, cid: int, ctype: int) -> None:
        self.h = harness
        self.id = cid
        self.ctype = ctype
        self.parser = Parser(requests=False)
        self.frames: list[Packet] = []
        self.close_calls = 0
        self._msgid = 1000

    def send(self, data: bytes) -> None:
        self.frames.extend(self.parser.feed(data))

    def close(self) -> None:
        self.close_calls += 1

    def take(self) -> list[Packet]:
        out, self.frames = self.frames, []
        return out

    def req(self, command: int, *fields: Any, msgid: int | None = None) -> list[Packet]:
        """Send one request; return every frame this connection got since."""
        return self.raw(command, encode_payload(command, *fields), msgid=msgid)

    def raw(
        self, command: int, payload: bytes, msgid: int | None = None
    ) -> list[Packet]:
        if msgid is None:
            self._msgid += 1
            msgid = self._msgid
        self.h.s.handle(self.id, msgid, command, payload, self.h.now)
        return self.take()

    # worker helpers
    def can_do(self, *funcs: bytes) -> None:
        for f in funcs:
            assert cmds(self.req(C.CAN_DO, f)) == [C.SUCCESS]

    def grab(self, msgid: int) -> list[Packet]:
        return self.req(C.GRAB_JOB, msgid=msgid)

    def assigned(self, msgid: int) -> list[Packet]:
        return self.req(C.JOB_ASSIGNED, msgid=msgid)

    def done(self, func: bytes, name: bytes, result: bytes = b"") -> list[Packet]:
        return self.req(C.WORK_DONE, func, name, result)


class Harness:
    def __init__(
        self,
        now: float = T0,
        config: dict[str, int] | None = None,
        store: MemoryStore | None = None,
    ) -> None:
        self.now = now
        self.store = store if store is not None else MemoryStore()
        self.shutdowns = 0
        self.s = Scheduler(self.store, now, config=config, on_shutdown=self._shutdown)
        self._next = 1
        self.conns: list[FakeConn] = []

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def connect(self, ctype: int = 1) -> FakeConn:
        conn = FakeConn(self, self._next, ctype)
        self._next += 1
        self.s.connect(conn.id, ctype, None, conn.send, conn.close, self.now)
        self.conns.append(conn)
        return conn

    def client(self) -> FakeConn:
        return self.connect(1)

    def worker(self, *funcs: bytes, slots: Iterable[int] = ()) -> FakeConn:
        w = self.connect(2)
        w.can_do(*funcs)
        kept: list[Packet] = []
        for m in slots:  # keep assignments for the test to see
            kept += [p for p in w.grab(m) if p.command == C.JOB_ASSIGN]
        w.frames = kept
        return w

    def disconnect(self, conn: FakeConn) -> None:
        self.s.disconnect(conn.id, self.now)

    def advance(self, dt: float) -> None:
        """Move the clock forward second by second, ticking like the server."""
        end = self.now + dt
        while self.now + 1 <= end:
            self.now += 1
            self.s.tick(self.now)
        self.now = end
        self.s.tick(self.now)

    def status(self) -> dict[bytes, FuncStat]:
        return {st.func: st for st in self.s.status(self.now)}

    def submit(
        self, func: bytes, name: bytes, workload: bytes = b"", **kw: int
    ) -> None:
        c = self.client()
        assert cmds(c.req(C.SUBMIT_JOB, Job(func, name, workload, **kw))) == [C.SUCCESS]

    def dump(self) -> list[Job]:
        [p] = self.client().req(C.DUMP)
        assert p.command == C.DATA
        return decode_job_list(p.payload)


def cmds(frames: Iterable[Packet]) -> list[int]:
    return [p.command for p in frames]


def assigns(frames: Iterable[Packet]) -> list[tuple[int, Job]]:
    out = []
    for p in frames:
        if p.command == C.JOB_ASSIGN:
            out.append((p.msgid or 0, decode_job(p.payload)))
    return out


@pytest.fixture
def h() -> Harness:
    return Harness()


# -- framing-level items the scheduler owns -----------------------------------


def test_09_command_out_of_range_raises(h: Harness) -> None:
    c = h.client()
    with pytest.raises(UnknownCommand):
        h.s.handle(c.id, 1, 35, b"", h.now)


def test_10_unknown_is_echoed(h: Harness) -> None:
    c = h.client()
    [p] = c.req(C.UNKNOWN, msgid=77)
    assert (p.msgid, p.command, p.payload) == (77, C.UNKNOWN, b"")


def test_11_ping_with_payload_raises_trailing_bytes(h: Harness) -> None:
    c = h.client()
    with pytest.raises(TrailingBytes):
        c.raw(C.PING, b"x")


def test_12_keepalive_closes_idle_connections(h: Harness) -> None:
    idle = h.client()
    busy = h.worker(b"f")
    for _ in range(13):
        h.advance(10)
        busy.req(C.PING)
    assert idle.close_calls == 1 and busy.close_calls == 0
    assert h.s.connection_count == 1


def test_12_keepalive_closes_within_ten_seconds_after_the_limit(h: Harness) -> None:
    c = h.client()
    h.advance(120)
    assert c.close_calls == 0
    h.advance(10.5)
    assert c.close_calls == 1


def test_12_keepalive_zero_never_closes() -> None:
    h = Harness(config={"keepalive": 0})
    c = h.client()
    h.advance(1000)
    assert c.close_calls == 0


# -- basic commands -----------------------------------------------------------


@pytest.mark.parametrize("ctype", [1, 2, 3, 4])
def test_13_ping_pong_from_any_role(h: Harness, ctype: int) -> None:
    c = h.connect(ctype)
    [p] = c.req(C.PING, msgid=5)
    assert (p.msgid, p.command, p.payload) == (5, C.PONG, b"")


def test_14_submit_job_replies_success(h: Harness) -> None:
    c = h.client()
    [p] = c.req(C.SUBMIT_JOB, Job(b"echo", b"a1", b"hi"), msgid=2)
    assert (p.msgid, p.command, p.payload) == (2, C.SUCCESS, b"")


def test_15_sleep_replies_noop(h: Harness) -> None:
    w = h.worker()
    [p] = w.req(C.SLEEP, msgid=3)
    assert (p.msgid, p.command, p.payload) == (3, C.NOOP, b"")


def test_16_can_do_counts_once_per_connection(h: Harness) -> None:
    w = h.worker(b"echo")
    assert h.status()[b"echo"].workers == 1
    w.can_do(b"echo")
    assert h.status()[b"echo"].workers == 1


def test_17_worker_count_follows_connections(h: Harness) -> None:
    w1 = h.worker(b"echo")
    h.worker(b"echo")
    assert h.status()[b"echo"].workers == 2
    h.disconnect(w1)
    assert h.status()[b"echo"].workers == 1


def test_18_cant_do(h: Harness) -> None:
    w = h.worker(b"echo")
    assert cmds(w.req(C.CANT_DO, b"echo")) == [C.SUCCESS]
    assert h.status()[b"echo"].workers == 0
    assert cmds(w.req(C.CANT_DO, b"other")) == [C.SUCCESS]
    assert h.status()[b"echo"].workers == 0
    assert b"other" not in h.status()


def test_19_status_text_sorted_no_trailing_newline(h: Harness) -> None:
    h.worker(b"zeta", b"alpha")
    h.submit(b"mid", b"j")
    [p] = h.client().req(C.STATUS, msgid=9)
    assert p.command == C.DATA and p.msgid == 9
    t = int(h.now)
    assert p.payload == (
        b"alpha,1,0,0,0,%d\nmid,0,1,0,0,%d\nzeta,1,0,0,0,%d" % (t, t, t)
    )
    # the AIO parse: strip the DATA byte, split lines and columns
    text = (b"\x1e" + p.payload).decode().strip()
    assert [line.split(",")[0] for line in text.split("\n")] == ["alpha", "mid", "zeta"]
    assert decode_status(p.payload)[1] == FuncStat(b"mid", 0, 1, 0, 0, t)


def test_19_status_empty(h: Harness) -> None:
    [p] = h.client().req(C.STATUS)
    assert (p.command, p.payload) == (C.DATA, b"")


def test_20_status_counts_and_min_pending_sched_at(h: Harness) -> None:
    t = int(h.now)
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"run")  # assigned at once
    h.submit(b"f", b"later", sched_at=t + 50)
    h.submit(b"f", b"sooner", sched_at=t + 20)
    st = h.status()[b"f"]
    assert (st.jobs, st.processing, st.locked, st.sched_at) == (3, 1, 0, t + 20)
    w.done(b"f", b"run")
    h.client().req(C.REMOVE_JOB, b"f", b"later")
    h.client().req(C.REMOVE_JOB, b"f", b"sooner")
    h.advance(5)
    assert h.status()[b"f"].sched_at == int(h.now)  # none pending: now


def test_21_func_with_only_jobs_listed_with_zero_workers(h: Harness) -> None:
    h.submit(b"nobody", b"j")
    assert h.status()[b"nobody"] == FuncStat(b"nobody", 0, 1, 0, 0, int(h.now))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"timeout", 600),
        (b"assign-wait", 2),
        (b"keepalive", 120),
        (b"lock-timeout", 300),
        (b"max-batch-size", 500),
        (b"max-pool-size", 2),
        (b"run-job-aggressive", 0),
    ],
)
def test_22_config_defaults(h: Harness, key: bytes, value: int) -> None:
    [p] = h.client().req(C.CONFIG_GET, key)
    assert p.command == C.CONFIG and p.payload == value.to_bytes(4, "big")


def test_22_config_timeout_bytes(h: Harness) -> None:
    [p] = h.client().req(C.CONFIG_GET, b"timeout")
    assert bytes([p.command]) + p.payload == bytes.fromhex("1800000258")


def test_23_config_set_then_get(h: Harness) -> None:
    c = h.client()
    assert cmds(c.req(C.CONFIG_SET, b"timeout", 30)) == [C.SUCCESS]
    [p] = c.req(C.CONFIG_GET, b"timeout")
    assert int.from_bytes(p.payload, "big") == 30
    assert h.store.load().config == {"timeout": 30}  # persisted


def test_24_unknown_config_keys(h: Harness) -> None:
    c = h.client()
    [p] = c.req(C.CONFIG_GET, b"poll-interval")
    assert p.payload == b"\0\0\0\0"
    assert cmds(c.req(C.CONFIG_SET, b"poll-interval", 5)) == [C.SUCCESS]
    [p] = c.req(C.CONFIG_GET, b"poll-interval")
    assert p.payload == b"\0\0\0\0"
    assert h.store.load().config == {}


def test_25_dump_contains_every_state(h: Harness) -> None:
    t = int(h.now)
    w = h.worker(b"f", slots=[1, 2])
    h.submit(b"f", b"holder")
    h.submit(b"f", b"parked")
    w.assigned(1)
    w.assigned(2)
    assert w.req(C.ACQUIRE, b"L", 1, b"f", b"holder")[0].payload == b"\x01"
    assert w.req(C.ACQUIRE, b"L", 1, b"f", b"parked")[0].payload == b"\x00"
    h.submit(b"f", b"future", b"wl", sched_at=t + 100, count=2, timeout=7)
    [p] = h.client().req(C.DUMP)
    assert p.payload[:8] == (3).to_bytes(8, "big")
    jobs = {j.name: j for j in decode_job_list(p.payload)}
    assert set(jobs) == {b"holder", b"parked", b"future"}
    assert jobs[b"future"] == Job(b"f", b"future", b"wl", t + 100, 2, 7)
    assert h.s.job(b"f", b"parked") == (jobs[b"parked"], JobState.LOCKED)
    assert h.s.job(b"f", b"holder") == (jobs[b"holder"], JobState.RUNNING)


def test_26_load_of_a_dump_makes_everything_pending() -> None:
    h1 = Harness()
    w = h1.worker(b"f", slots=[1])
    h1.submit(b"f", b"a", b"1")
    w.assigned(1)
    h1.submit(b"g", b"b", b"2", sched_at=int(h1.now) + 30)
    blob = encode_job_list(h1.dump())

    h2 = Harness()
    assert cmds(h2.client().raw(C.LOAD, blob)) == [C.SUCCESS]
    assert sorted(j.name for j in h2.dump()) == [b"a", b"b"]
    assert {f: (st.jobs, st.processing) for f, st in h2.status().items()} == {
        b"f": (1, 0),
        b"g": (1, 0),
    }


def test_26_load_skips_running_handles(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", b"old")
    w.assigned(1)
    blob = encode_job_list([Job(b"f", b"a", b"new"), Job(b"f", b"b", b"x")])
    assert cmds(h.client().raw(C.LOAD, blob)) == [C.SUCCESS]
    assert h.s.job(b"f", b"a") == (
        Job(b"f", b"a", b"old", int(h.now)),
        JobState.RUNNING,
    )
    assert h.s.job(b"f", b"b") is not None


def test_26_load_registers_funcs_before_jobs(h: Harness) -> None:
    blob = encode_job_list([Job(b"x", b"1"), Job(b"y", b"2")])
    h.client().raw(C.LOAD, blob)
    assert set(h.store.load().funcs) == {b"x", b"y"}


def test_27_shutdown_no_reply_calls_hook(h: Harness) -> None:
    c = h.client()
    assert c.req(C.SHUTDOWN) == []
    assert h.shutdowns == 1


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        (C.GRAB_JOB, ()),
        (C.CAN_DO, (b"f",)),
        (C.BROADCAST, (b"f",)),
        (C.WORK_DONE, (b"f", b"a", b"r")),
        (C.SLEEP, ()),
        (C.WORK_FAIL, (b"f", b"a")),
        (C.SCHED_LATER, (b"f", b"a", 5, 1)),
        (C.CANT_DO, (b"f",)),
        (C.ACQUIRE, (b"L", 1, b"f", b"a")),
        (C.RELEASE, (b"L", b"f", b"a")),
        (C.WORK_DATA, (b"f", b"a", b"c")),
        (C.JOB_ASSIGNED, ()),
        (C.JOB_UNASSIGNED, ()),
    ],
)
def test_28_client_role_worker_commands_get_no_worker(
    h: Harness, command: int, fields: tuple[Any, ...]
) -> None:
    h.submit(b"f", b"a")
    before = (h.dump(), h.status())
    [p] = h.client().req(command, *fields, msgid=4)
    assert (p.msgid, p.command, p.payload) == (4, C.NO_WORKER, b"")
    assert (h.dump(), h.status()) == before


def test_28_rejected_malformed_payload_still_closes(h: Harness) -> None:
    with pytest.raises(ProtocolError):
        h.client().raw(C.WORK_DONE, b"\x05ab")


def test_29_worker_role_may_send_client_commands(h: Harness) -> None:
    w = h.worker(b"f")
    assert cmds(w.req(C.SUBMIT_JOB, Job(b"g", b"a"))) == [C.SUCCESS]
    [p] = w.req(C.STATUS)
    assert p.command == C.DATA and b"g,0,1,0,0," in p.payload
    w.grab(1)
    assert w.req(C.RUN_JOB, Job(b"f", b"r"), msgid=9)[0].command == C.JOB_ASSIGN


@pytest.mark.parametrize("command", [0, 5, 6, 10, 16, 24, 26, 29, 30])
def test_30_server_only_commands_ignored(h: Harness, command: int) -> None:
    fields: dict[int, tuple[Any, ...]] = {
        5: (Job(b"f", b"a"),),
        24: (7,),
        26: (1,),
        30: (b"data",),
    }
    c = h.client()
    assert c.req(command, *fields.get(command, ())) == []
    assert c.close_calls == 0
    assert h.s.connection_count == 1


def test_30_server_only_command_with_bad_payload_raises(h: Harness) -> None:
    with pytest.raises(TrailingBytes):
        h.client().raw(C.SUCCESS, b"x")


# -- job identity and life cycle ----------------------------------------------


def test_31_past_sched_at_clamped_to_now(h: Harness) -> None:
    h.submit(b"f", b"a", sched_at=5)
    [job] = h.dump()
    assert job.sched_at == int(h.now)


def test_32_resubmit_pending_replaces_and_latest_is_dispatched(h: Harness) -> None:
    t = int(h.now)
    h.submit(b"f", b"a", b"v1", sched_at=t + 10, count=1, timeout=5)
    h.submit(b"f", b"a", b"v2", sched_at=t + 3)
    assert h.dump() == [Job(b"f", b"a", b"v2", t + 3)]
    assert h.status()[b"f"].jobs == 1
    w = h.worker(b"f", slots=[1])
    h.advance(2)
    assert w.take() == []
    h.advance(1)
    [(m, job)] = assigns(w.take())
    assert (m, job.workload, job.count, job.timeout) == (1, b"v2", 0, 600)


def test_32_resubmit_due_job_waiting_for_a_slot_dispatches_latest(h: Harness) -> None:
    w = h.worker(b"f")
    h.submit(b"f", b"a", b"v1")
    h.submit(b"f", b"a", b"v2")
    [(_, job)] = assigns(w.grab(1))
    assert job.workload == b"v2"
    w.grab(2)
    assert assigns(w.take()) == []  # only one job


def test_32_resubmit_due_job_into_the_future_leaves_the_ready_queue(h: Harness) -> None:
    w = h.worker(b"f")
    h.submit(b"f", b"a", b"v1")
    h.submit(b"f", b"a", b"v2", sched_at=int(h.now) + 5)
    assert assigns(w.grab(1)) == []
    h.advance(5)
    [(_, job)] = assigns(w.take())
    assert job.workload == b"v2"


def test_32_resubmit_locked_job_replaces_it_as_pending(h: Harness) -> None:
    w = h.worker(b"f", slots=[1, 2])
    h.submit(b"f", b"a")
    h.submit(b"f", b"b")
    w.assigned(1)
    w.assigned(2)
    w.req(C.ACQUIRE, b"L", 1, b"f", b"b")
    w.req(C.ACQUIRE, b"L", 1, b"f", b"a")
    assert h.status()[b"f"].locked == 1
    h.submit(b"f", b"a", b"new")
    st = h.status()[b"f"]
    assert (st.locked, st.processing, st.jobs) == (0, 1, 2)
    [(_, job)] = assigns(w.grab(3))
    assert job.workload == b"new"


def test_33_resubmit_running_job_is_ignored(h: Harness) -> None:
    w = h.worker(b"f", slots=[1, 2])
    h.submit(b"f", b"a", b"v1")
    w.assigned(1)
    w.take()
    h.submit(b"f", b"a", b"v2")
    assert h.dump() == [Job(b"f", b"a", b"v1", int(h.now))]
    assert assigns(w.take()) == []
    assert h.s.job(b"f", b"a") == (h.dump()[0], JobState.RUNNING)


def test_34_after_done_same_name_runs_again(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    w.done(b"f", b"a")
    h.submit(b"f", b"a", b"again")
    [(_, job)] = assigns(w.grab(1))
    assert job.workload == b"again"


def test_35_future_job_assigned_at_its_time(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", sched_at=int(h.now) + 3)
    h.advance(2)
    assert w.take() == []
    assert h.s.next_wakeup() == int(h.now) + 1
    h.advance(1)
    assert len(assigns(w.take())) == 1


def test_36_job_waits_for_a_worker(h: Harness) -> None:
    h.submit(b"f", b"a")
    h.advance(5)
    assert h.status()[b"f"].jobs == 1
    w = h.worker(b"f")
    [(m, job)] = assigns(w.grab(4))
    assert (m, job.name) == (4, b"a")


def test_36_can_do_after_grab_dispatches(h: Harness) -> None:
    h.submit(b"f", b"a")
    w = h.connect(2)
    w.grab(4)
    frames = w.req(C.CAN_DO, b"f")
    assert cmds(frames) == [C.SUCCESS, C.JOB_ASSIGN]


def test_37_grab_job_replies_success_at_once(h: Harness) -> None:
    w = h.worker(b"f")
    [p] = w.grab(12)
    assert (p.msgid, p.command, p.payload) == (12, C.SUCCESS, b"")
    h.advance(30)
    assert w.take() == []  # never NO_JOB


def test_37_success_precedes_the_assignment(h: Harness) -> None:
    h.submit(b"f", b"a")
    w = h.worker(b"f")
    assert cmds(w.grab(1)) == [C.SUCCESS, C.JOB_ASSIGN]


def test_38_job_assign_carries_effective_timeout(h: Harness) -> None:
    w = h.worker(b"echo", slots=[7])
    h.submit(b"echo", b"a1", b"hi")
    [p] = w.take()
    assert (p.msgid, p.command) == (7, C.JOB_ASSIGN)
    t = int(h.now)
    assert p.payload == (
        b"\x04echo\x02a1\x00\x00\x00\x02hi"
        + t.to_bytes(8, "big")
        + b"\x02\x00\x00\x02\x58"
    )
    h.submit(b"echo", b"a2", timeout=9)
    [(_, job)] = assigns(w.grab(8))
    assert job.timeout == 9


def test_38_config_timeout_is_the_effective_default(h: Harness) -> None:
    h.client().req(C.CONFIG_SET, b"timeout", 45)
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    [(_, job)] = assigns(w.take())
    assert job.timeout == 45
    assert h.dump()[0].timeout == 0  # stored as submitted


def test_39_slot_used_once(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    h.submit(b"f", b"b")
    assert [m for m, _ in assigns(w.take())] == [1]
    w.assigned(1)
    h.advance(3)
    assert assigns(w.take()) == []
    assert [m for m, _ in assigns(w.grab(1))] == [1]


def test_40_repeated_grab_creates_one_slot(h: Harness) -> None:
    w = h.worker(b"f")
    for _ in range(3):
        assert cmds(w.grab(1)) == [C.SUCCESS]
    h.submit(b"f", b"a")
    h.submit(b"f", b"b")
    assert len(assigns(w.take())) == 1


def test_41_jobs_only_go_to_registered_funcs(h: Harness) -> None:
    other = h.worker(b"g", slots=[1])
    mine = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    assert assigns(other.take()) == []
    assert len(assigns(mine.take())) == 1


def test_42_job_assigned_confirms_without_reply(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.take()
    assert w.assigned(1) == []
    h.advance(5)
    assert w.close_calls == 0
    assert h.status()[b"f"].processing == 1


def test_43_job_unassigned_goes_to_another_worker(h: Harness) -> None:
    w1 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    assert len(assigns(w1.take())) == 1
    w2 = h.worker(b"f", slots=[2])
    assert w1.req(C.JOB_UNASSIGNED, msgid=1) == []
    [(m, job)] = assigns(w2.take())
    assert (m, job.name) == (2, b"a")
    w2.assigned(2)
    h.advance(5)
    assert w1.close_calls == 0 and h.s.connection_count == 3


def test_43_unassigned_job_keeps_its_place(h: Harness) -> None:
    w1 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    h.submit(b"f", b"b")
    w1.take()
    w1.req(C.JOB_UNASSIGNED, msgid=1)
    [(_, job)] = assigns(w1.grab(5))
    assert job.name == b"a"  # back at the front of the queue


def test_44_no_confirmation_closes_and_reassigns(h: Harness) -> None:
    w1 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w1.take()
    w2 = h.worker(b"f", slots=[2])
    h.advance(1.5)
    assert w1.close_calls == 0
    h.advance(0.6)
    assert w1.close_calls == 1
    [(m, job)] = assigns(w2.take())
    assert (m, job.name) == (2, b"a")
    assert h.status()[b"f"].workers == 1
    h.disconnect(w1)  # the server's follow-up call is a no-op
    assert h.status()[b"f"].workers == 1


def test_44_late_confirmation_after_close_is_ignored(h: Harness) -> None:
    w1 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    h.advance(3)
    assert w1.close_calls == 1
    w1.take()
    assert w1.assigned(1) == []  # connection already forgotten
    assert h.s.job(b"f", b"a") is not None
    assert h.status()[b"f"].processing == 0


def test_45_grab_on_unconfirmed_msgid_gets_success_but_no_slot(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    assert len(assigns(w.take())) == 1
    assert cmds(w.grab(1)) == [C.SUCCESS]
    h.submit(b"f", b"b")
    assert assigns(w.take()) == []  # msgid 1 is busy: no second job
    w.assigned(1)
    h.advance(5)
    assert w.close_calls == 0
    assert h.status()[b"f"].processing == 1
    [(m, job)] = assigns(w.grab(1))  # a real re-grab now works
    assert (m, job.name) == (1, b"b")


def test_46_work_done_deletes(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    [p] = w.done(b"f", b"a", b"result")
    assert p.command == C.SUCCESS
    assert h.status()[b"f"].jobs == 0
    assert h.dump() == []
    assert h.store.load().jobs == []


def test_47_work_done_for_pending_or_unknown_job(h: Harness) -> None:
    w = h.worker(b"f")
    h.submit(b"f", b"a", sched_at=int(h.now) + 100)
    assert cmds(w.done(b"f", b"a")) == [C.SUCCESS]
    assert h.dump() == []
    assert cmds(w.done(b"f", b"zzz")) == [C.SUCCESS]
    h.advance(101)
    assert assigns(w.grab(1)) == []


def test_48_work_fail_retries_after_one_second(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", count=3)
    w.assigned(1)
    w.take()
    assert cmds(w.req(C.WORK_FAIL, b"f", b"a")) == [C.SUCCESS]
    assert h.s.job(b"f", b"a")[1] == JobState.PENDING  # type: ignore[index]
    w.grab(1)
    assert assigns(w.take()) == []
    h.advance(1)
    [(m, job)] = assigns(w.take())
    assert (m, job.count) == (1, 3)


def test_48_work_fail_of_pending_job_does_nothing(h: Harness) -> None:
    w = h.worker(b"f")
    t = int(h.now)
    h.submit(b"f", b"a", sched_at=t + 50)
    assert cmds(w.req(C.WORK_FAIL, b"f", b"a")) == [C.SUCCESS]
    assert h.dump() == [Job(b"f", b"a", b"", t + 50)]


def test_49_sched_later(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", b"wl")
    w.assigned(1)
    w.take()
    t = int(h.now)
    assert cmds(w.req(C.SCHED_LATER, b"f", b"a", 5, 1)) == [C.SUCCESS]
    assert h.dump() == [Job(b"f", b"a", b"wl", t + 5, 1)]
    assert h.status()[b"f"].processing == 0
    w.grab(1)
    h.advance(4)
    assert assigns(w.take()) == []
    h.advance(1)
    [p] = [p for p in w.take() if p.command == C.JOB_ASSIGN]
    job = decode_job(p.payload)
    assert job.count == 1
    assert p.payload[-9] == 3  # version 3: count and timeout


def test_49_sched_later_step_is_signed(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", count=5)
    w.assigned(1)
    # AIO encodes the step unsigned: 0xFFFF arrives as -1
    payload = b"\x01f\x01a" + (0).to_bytes(8, "big") + b"\xff\xff"
    w.raw(C.SCHED_LATER, payload)
    assert h.dump()[0].count == 4


def test_50_timeout_fails_and_reassigns(h: Harness) -> None:
    w1 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", timeout=5)
    w1.assigned(1)
    w2 = h.worker(b"f", slots=[2])
    h.advance(5)
    assert assigns(w2.take()) == []
    h.advance(10)
    [(m, job)] = assigns(w2.take())
    assert (m, job.name) == (2, b"a")
    assert w1.close_calls == 0  # the worker is not told
    # its late WORK_DONE still deletes the job (quirk kept)
    w1.done(b"f", b"a")
    assert h.dump() == []


def test_50_timeout_uses_config_default(h: Harness) -> None:
    h.client().req(C.CONFIG_SET, b"timeout", 20)
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w.assigned(1)
    h.advance(19)
    assert h.status()[b"f"].processing == 1
    h.advance(12)
    assert h.status()[b"f"].processing == 0


def test_50_done_cancels_the_timeout(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", timeout=5)
    w.assigned(1)
    w.done(b"f", b"a")
    h.submit(b"f", b"a", sched_at=int(h.now) + 100)
    h.advance(20)
    assert h.s.job(b"f", b"a")[1] == JobState.PENDING  # type: ignore[index]
    assert h.dump()[0].sched_at == int(T0) + 100


def test_51_disconnect_requeues_running_job(h: Harness) -> None:
    w1 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w1.assigned(1)
    w2 = h.worker(b"f", slots=[2])
    h.disconnect(w1)
    assert h.status()[b"f"].workers == 1
    assert h.status()[b"f"].processing == 0
    assert assigns(w2.take()) == []
    h.advance(1)
    [(m, job)] = assigns(w2.take())
    assert (m, job.name) == (2, b"a")


def test_51_disconnect_with_unconfirmed_assignment_requeues_at_once(h: Harness) -> None:
    w1 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    w2 = h.worker(b"f", slots=[2])
    h.disconnect(w1)
    assert len(assigns(w2.take())) == 1


def test_51_disconnect_is_idempotent(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.disconnect(w)
    h.disconnect(w)
    assert h.status()[b"f"].workers == 0
    assert h.s.connection_count == 0


def test_52_remove_future_job(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", sched_at=int(h.now) + 2)
    assert cmds(h.client().req(C.REMOVE_JOB, b"f", b"a")) == [C.SUCCESS]
    assert h.status()[b"f"].jobs == 0
    h.advance(5)
    assert assigns(w.take()) == []
    assert cmds(h.client().req(C.REMOVE_JOB, b"f", b"nope")) == [C.SUCCESS]


def test_52_remove_due_job_waiting_for_a_slot(h: Harness) -> None:
    w = h.worker(b"f")
    h.submit(b"f", b"a")
    h.client().req(C.REMOVE_JOB, b"f", b"a")
    assert assigns(w.grab(1)) == []


def test_53_drop_func(h: Harness) -> None:
    h.submit(b"f", b"a")
    h.submit(b"f", b"b", sched_at=int(h.now) + 10)
    h.submit(b"g", b"c")
    assert cmds(h.client().req(C.DROP_FUNC, b"f")) == [C.SUCCESS]
    assert set(h.status()) == {b"g"}
    assert [j.func for j in h.dump()] == [b"g"]
    assert list(h.store.load().funcs) == [b"g"]
    h.advance(15)  # the cancelled wheel entry fires nothing


def test_53_drop_func_with_worker_is_a_noop(h: Harness) -> None:
    h.worker(b"f")
    h.submit(b"f", b"a", sched_at=int(h.now) + 10)
    assert cmds(h.client().req(C.DROP_FUNC, b"f")) == [C.SUCCESS]
    assert h.status()[b"f"].jobs == 1


def test_53_drop_func_of_submitted_only_func(h: Harness) -> None:
    # no STATUS in between: we drop anyway (the reference quirk is not kept)
    h.submit(b"f", b"a")
    h.client().req(C.DROP_FUNC, b"f")
    assert h.dump() == []


def test_54_broadcast(h: Harness) -> None:
    w1 = h.connect(2)
    w2 = h.connect(2)
    for w in (w1, w2):
        assert cmds(w.req(C.BROADCAST, b"b")) == [C.SUCCESS]
        w.grab(1)
    h.submit(b"b", b"x")
    assert [j.name for _, j in assigns(w1.take())] == [b"x"]
    assert [j.name for _, j in assigns(w2.take())] == [b"x"]
    w1.assigned(1)
    w2.assigned(1)
    assert h.status()[b"b"].processing == 1
    w1.done(b"b", b"x")
    assert h.dump() == []
    assert cmds(w2.done(b"b", b"x")) == [C.SUCCESS]


def test_54_broadcast_waits_for_a_free_slot(h: Harness) -> None:
    w = h.connect(2)
    w.req(C.BROADCAST, b"b")
    h.submit(b"b", b"x")
    assert len(assigns(w.grab(1))) == 1


def test_54_broadcast_partial_confirmation_stays_running(h: Harness) -> None:
    w1, w2 = h.connect(2), h.connect(2)
    for w in (w1, w2):
        w.req(C.BROADCAST, b"b")
        w.grab(1)
    h.submit(b"b", b"x")
    w1.assigned(1)
    w2.req(C.JOB_UNASSIGNED, msgid=1)
    assert h.status()[b"b"].processing == 1
    w2.grab(2)
    assert assigns(w2.take()) == []  # not re-sent


def test_54_broadcast_nobody_confirms_back_to_pending(h: Harness) -> None:
    w1, w2 = h.connect(2), h.connect(2)
    for w in (w1, w2):
        w.req(C.BROADCAST, b"b")
        w.grab(1)
    h.submit(b"b", b"x")
    w1.req(C.JOB_UNASSIGNED, msgid=1)
    assert h.status()[b"b"].processing == 1  # w2 may still confirm
    w2.req(C.JOB_UNASSIGNED, msgid=1)
    assert h.status()[b"b"].processing == 0
    assert len(assigns(w1.grab(3))) == 1


def test_54_can_do_after_broadcast_clears_the_flag(h: Harness) -> None:
    w1 = h.connect(2)
    w1.req(C.BROADCAST, b"b")
    w2 = h.worker(b"b")
    w1.grab(1)
    w2.grab(1)
    h.submit(b"b", b"x")
    assert len(assigns(w1.take())) + len(assigns(w2.take())) == 1


# -- RUN_JOB and streaming ----------------------------------------------------


def test_55_run_job_without_worker(h: Harness) -> None:
    c = h.client()
    [p] = c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    assert (p.msgid, p.command) == (3, C.NO_WORKER)
    assert h.dump() == []


def test_56_run_job_result(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    c = h.client()
    assert c.req(C.RUN_JOB, Job(b"f", b"a", timeout=10), msgid=3) == []
    w.assigned(1)
    w.done(b"f", b"a", b"x")
    [p] = c.take()
    assert (p.msgid, p.command, p.payload) == (3, C.DATA, b"x")
    assert h.dump() == []


def test_57_run_job_work_fail(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    w.assigned(1)
    w.req(C.WORK_FAIL, b"f", b"a")
    [p] = c.take()
    assert (p.msgid, p.payload) == (3, b"failed")
    assert h.dump() == []
    h.advance(3)
    assert assigns(w.grab(1)) == []


def test_58_run_job_sched_later(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    w.assigned(1)
    w.req(C.SCHED_LATER, b"f", b"a", 5, 1)
    [p] = c.take()
    assert (p.msgid, p.payload) == (3, b"failed")
    assert h.dump() == []


def test_59_run_job_removed(h: Harness) -> None:
    h.worker(b"f")
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    h.client().req(C.REMOVE_JOB, b"f", b"a")
    [p] = c.take()
    assert (p.msgid, p.payload) == (3, b"removed")


def test_60_run_job_expires(h: Harness) -> None:
    h.worker(b"f")  # registered, never grabs
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a", timeout=2), msgid=3)
    h.advance(1)
    assert c.take() == []
    h.advance(11)
    [p] = c.take()
    assert (p.msgid, p.payload) == (3, b"expired")
    assert h.dump() == []


def test_60_waiter_expiry_defaults_to_60s_and_is_overwritten(h: Harness) -> None:
    h.worker(b"f")
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)  # timeout 0: 60 s
    h.advance(50)
    c.req(C.RUN_JOB, Job(b"f", b"a", timeout=100), msgid=4)  # overwrites
    h.advance(60)
    assert c.take() == []
    h.advance(60)
    assert sorted((p.msgid, p.payload) for p in c.take()) == [
        (3, b"expired"),
        (4, b"expired"),
    ]


def test_61_run_job_for_running_handle_waits_for_that_run(h: Harness) -> None:
    w = h.worker(b"f", slots=[1, 2])
    h.submit(b"f", b"a", b"first")
    w.assigned(2)
    w.take()
    c = h.client()
    assert c.req(C.RUN_JOB, Job(b"f", b"a", b"second"), msgid=3) == []
    assert assigns(w.take()) == []
    assert h.dump()[0].workload == b"first"
    w.done(b"f", b"a", b"r")
    assert [(p.msgid, p.payload) for p in c.take()] == [(3, b"r")]


def test_61_several_run_job_callers_get_the_same_result(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    c1, c2 = h.client(), h.client()
    c1.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    c2.req(C.RUN_JOB, Job(b"f", b"a"), msgid=4)
    w.done(b"f", b"a", b"r")
    assert [(p.msgid, p.payload) for p in c1.take()] == [(3, b"r")]
    assert [(p.msgid, p.payload) for p in c2.take()] == [(4, b"r")]


def test_62_stream_chunks_then_eof_before_result(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    c = h.client()
    [p] = c.req(C.RECV_DATA, Job(b"f", b"a"), msgid=2)
    assert (p.msgid, p.command) == (2, C.SUCCESS)
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=1)
    w.assigned(1)
    assert cmds(w.req(C.WORK_DATA, b"f", b"a", b"c1")) == [C.SUCCESS]
    w.req(C.WORK_DATA, b"f", b"a", b"c2")
    w.done(b"f", b"a", b"result")
    assert [(p.msgid, p.command, p.payload) for p in c.take()] == [
        (2, C.DATA, b"c1"),
        (2, C.DATA, b"c2"),
        (2, C.DATA, b"EOF"),
        (1, C.DATA, b"result"),
    ]


def test_62_stream_without_run_job_ends_on_done(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    c = h.client()
    c.req(C.RECV_DATA, Job(b"f", b"a"), msgid=2)
    w.req(C.WORK_DATA, b"f", b"a", b"c")
    w.done(b"f", b"a")
    assert [p.payload for p in c.take()] == [b"c", b"EOF"]


def test_62_stream_eof_on_remove_and_expiry(h: Harness) -> None:
    h.worker(b"f")
    c = h.client()
    c.req(C.RECV_DATA, Job(b"f", b"a", timeout=3), msgid=2)
    h.submit(b"f", b"a")
    h.advance(13)
    assert [(p.msgid, p.payload) for p in c.take()] == [(2, b"EOF")]
    assert h.dump() == []  # expiry deletes the job (protocol.md 4.7)


def test_63_recv_data_without_worker(h: Harness) -> None:
    [p] = h.client().req(C.RECV_DATA, Job(b"f", b"a"), msgid=2)
    assert (p.msgid, p.command) == (2, C.NO_WORKER)


def test_64_work_data_without_listener(h: Harness) -> None:
    w = h.worker(b"f")
    [p] = w.req(C.WORK_DATA, b"f", b"nothing", b"chunk", msgid=6)
    assert (p.msgid, p.command) == (6, C.SUCCESS)


def test_waiters_on_a_closed_connection_are_skipped(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    h.disconnect(c)
    w.done(b"f", b"a", b"r")
    assert c.take() == []


def test_worker_disconnect_fails_run_job(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    c = h.client()
    c.req(C.RUN_JOB, Job(b"f", b"a"), msgid=3)
    w.assigned(1)
    h.disconnect(w)
    assert [(p.msgid, p.payload) for p in c.take()] == [(3, b"failed")]
    assert h.dump() == []


# -- locks --------------------------------------------------------------------


def _two_running(h: Harness) -> FakeConn:
    w = h.worker(b"f", slots=[1, 2])
    h.submit(b"f", b"h1")
    h.submit(b"f", b"h2")
    w.assigned(1)
    w.assigned(2)
    w.take()
    return w


def _acq(w: FakeConn, lock: bytes, count: int, name: bytes) -> int:
    [p] = w.req(C.ACQUIRE, lock, count, b"f", name)
    assert p.command == C.ACQUIRED
    return p.payload[0]


def test_65_acquire_and_refuse(h: Harness) -> None:
    w = _two_running(h)
    assert _acq(w, b"L", 1, b"h1") == 1
    assert _acq(w, b"L", 1, b"h2") == 0
    st = h.status()[b"f"]
    assert (st.locked, st.processing) == (1, 1)
    assert h.s.job(b"f", b"h2")[1] == JobState.LOCKED  # type: ignore[index]


def test_66_acquire_for_job_not_running(h: Harness) -> None:
    w = h.worker(b"f")
    h.submit(b"f", b"p", sched_at=int(h.now) + 100)
    assert _acq(w, b"L", 1, b"p") == 1
    assert _acq(w, b"L", 1, b"unknown") == 1
    # nothing recorded: a running job still gets the lock
    w2 = _two_running(h)
    assert _acq(w2, b"L", 1, b"h1") == 1


def test_67_reacquire(h: Harness) -> None:
    w = _two_running(h)
    assert _acq(w, b"L", 1, b"h1") == 1
    assert _acq(w, b"L", 1, b"h1") == 1
    assert _acq(w, b"L", 1, b"h2") == 0
    # h2 is parked now, still queued: refused (checklist 67; issue 16 item 6:
    # step 1 of 4.11 granted it without recording, a lock held by two)
    assert _acq(w, b"L", 2, b"h2") == 0
    # once it runs again (60 s sweep) while still queued: refused
    w.grab(3)
    h.advance(61)
    [(m, job)] = assigns(w.take())
    assert job.name == b"h2"
    w.assigned(m)
    assert _acq(w, b"L", 1, b"h2") == 0


def test_68_done_hands_the_lock_over(h: Harness) -> None:
    w = _two_running(h)
    _acq(w, b"L", 1, b"h1")
    _acq(w, b"L", 1, b"h2")
    assert assigns(w.grab(3)) == []
    [(m, job)] = assigns(w.done(b"f", b"h1"))  # no explicit RELEASE
    assert (m, job.name) == (3, b"h2")
    w.assigned(3)
    assert _acq(w, b"L", 1, b"h2") == 1
    assert h.status()[b"f"].locked == 0


@pytest.mark.parametrize("how", ["release", "fail", "sched_later"])
def test_68_other_releases_hand_the_lock_over(h: Harness, how: str) -> None:
    w = _two_running(h)
    _acq(w, b"L", 1, b"h1")
    _acq(w, b"L", 1, b"h2")
    if how == "release":
        assert cmds(w.req(C.RELEASE, b"L", b"f", b"h1")) == [C.SUCCESS]
    elif how == "fail":
        w.req(C.WORK_FAIL, b"f", b"h1")
    else:
        w.req(C.SCHED_LATER, b"f", b"h1", 100, 0)
    assert h.status()[b"f"].locked == 0
    [(_, job)] = assigns(w.grab(3))
    assert job.name == b"h2"


def test_68_timeout_and_disconnect_release(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"h1", timeout=5)
    w.assigned(1)
    assert _acq(w, b"L", 1, b"h1") == 1
    w2 = h.worker(b"f", slots=[1])
    h.submit(b"f", b"h2")
    w2.assigned(1)
    assert _acq(w2, b"L", 1, b"h2") == 0
    w3 = h.worker(b"f", slots=[1])
    h.advance(16)  # h1 times out: lock handed to h2
    names = [j.name for _, j in assigns(w3.take())]
    assert names[0] == b"h2"


def test_69_max_holders_grows(h: Harness) -> None:
    w = h.worker(b"f", slots=[1, 2, 3])
    for n in (b"a", b"b", b"c"):
        h.submit(b"f", n)
    for m in (1, 2, 3):
        w.assigned(m)
    assert _acq(w, b"L", 1, b"a") == 1
    assert _acq(w, b"L", 2, b"b") == 1
    assert _acq(w, b"L", 1, b"c") == 0  # max stays 2


def test_70_release_unknown_lock(h: Harness) -> None:
    w = h.worker(b"f")
    assert cmds(w.req(C.RELEASE, b"nolock", b"f", b"x")) == [C.SUCCESS]


def test_locked_sweep_repends_after_60s(h: Harness) -> None:
    w = _two_running(h)
    _acq(w, b"L", 1, b"h1")
    _acq(w, b"L", 1, b"h2")
    w.grab(3)
    h.advance(59)
    assert assigns(w.take()) == []
    h.advance(2)
    [(_, job)] = assigns(w.take())
    assert job.name == b"h2"
    w.assigned(3)
    assert _acq(w, b"L", 1, b"h2") == 0  # still queued: parked again
    assert h.status()[b"f"].locked == 1


def test_lock_timeout_purges_old_entries() -> None:
    h = Harness(config={"lock-timeout": 50, "timeout": 10_000})
    w = _two_running(h)
    _acq(w, b"L", 1, b"h1")
    _acq(w, b"L", 1, b"h2")
    h.advance(101)  # purge at 100 s: both entries are older than 50 s
    assert h.s._locks == {}
    assert h.s._hlocks == {}


def test_refused_job_worker_disconnect_keeps_it_locked(h: Harness) -> None:
    w = _two_running(h)
    _acq(w, b"L", 1, b"h1")
    _acq(w, b"L", 1, b"h2")
    h.disconnect(w)
    st = h.status()[b"f"]
    # h1 was running: retried; h2 stays locked until the 60 s sweep (4.8)
    assert (st.locked, st.processing) == (1, 0)


# -- assign-wait = 0 extension ------------------------------------------------


def test_79_assign_wait_zero_accepts_on_send() -> None:
    h = Harness(config={"assign-wait": 0})
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", timeout=5)
    assert len(assigns(w.take())) == 1
    h.advance(3)
    assert w.close_calls == 0
    assert h.status()[b"f"].processing == 1
    w.grab(1)  # GO re-grabs the same msgid: that is a new slot
    h.submit(b"f", b"b")
    assert len(assigns(w.take())) == 1
    w.done(b"f", b"a")
    h.advance(20)  # b times out (600 s default) only much later
    assert h.status()[b"f"].processing == 1


def test_79_assign_wait_zero_still_has_per_assignment_timeout() -> None:
    h = Harness(config={"assign-wait": 0})
    h.worker(b"f", slots=[1])
    h.submit(b"f", b"a", timeout=5)
    h.advance(16)
    assert h.status()[b"f"].processing == 0


# -- dispatch order and fairness ----------------------------------------------


def test_due_batch_dispatched_by_sched_at_then_name(h: Harness) -> None:
    t = int(h.now)
    for name, at in [(b"c", 5), (b"b", 5), (b"a", 6), (b"z", 3), (b"y", 4)]:
        h.submit(b"f", name, sched_at=t + at)
    h.now += 10
    h.s.tick(h.now)
    w = h.worker(b"f")
    got = []
    for m in range(1, 6):
        got += [j.name for _, j in assigns(w.grab(m))]
    assert got == [b"z", b"y", b"b", b"c", b"a"]


def test_slots_most_recent_first(h: Harness) -> None:
    w = h.worker(b"f", slots=[1, 2, 3])
    h.submit(b"f", b"a")
    h.submit(b"f", b"b")
    assert [m for m, _ in assigns(w.take())] == [3, 2]


def test_round_robin_over_connections(h: Harness) -> None:
    ws = [h.worker(b"f", slots=[1, 2]) for _ in range(3)]
    for i in range(6):
        h.submit(b"f", b"j%d" % i)
    per = [len(assigns(w.take())) for w in ws]
    assert per == [2, 2, 2]
    # after the first round each one got one before any got a second
    h2 = Harness()
    ws = [h2.worker(b"f", slots=[1, 2]) for _ in range(3)]
    order = []
    for i in range(3):
        h2.submit(b"f", b"j%d" % i)
        order += [k for k, w in enumerate(ws) if assigns(w.take())]
    assert sorted(order) == [0, 1, 2]


def test_cant_do_keeps_slots_but_stops_matching(h: Harness) -> None:
    w = h.worker(b"f", b"g", slots=[1])
    w.req(C.CANT_DO, b"f")
    h.submit(b"f", b"a")
    assert assigns(w.take()) == []
    h.submit(b"g", b"b")
    assert [j.name for _, j in assigns(w.take())] == [b"b"]


def test_grab_dispatches_across_funcs(h: Harness) -> None:
    w = h.worker(b"f", b"g")
    h.submit(b"g", b"x")
    h.submit(b"f", b"y")
    got = [j.name for _, j in assigns(w.grab(1))]
    got += [j.name for _, j in assigns(w.grab(2))]
    assert sorted(got) == [b"x", b"y"]


# -- malformed payloads -------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "payload", "exc"),
    [
        (C.SUBMIT_JOB, b"\x01f", TruncatedPayload),
        (C.SUBMIT_JOB, b"\x01f\x01a\0\0\0\0" + bytes(8) + b"\0" + b"x", TrailingBytes),
        (C.WORK_DONE, b"\x05ab", TruncatedPayload),
        (C.WORK_DONE, b"", TruncatedPayload),
        (C.WORK_FAIL, b"\x01f\x01ax", TrailingBytes),
        (C.SCHED_LATER, b"\x01f\x01a" + bytes(9), TruncatedPayload),
        (C.SCHED_LATER, b"\x01f\x01a" + bytes(11), TrailingBytes),
        (C.CAN_DO, b"\x03ab", TruncatedPayload),
        (C.CAN_DO, b"\x01ab", TrailingBytes),
        (C.GRAB_JOB, b"x", TrailingBytes),
        (C.JOB_ASSIGNED, b"x", TrailingBytes),
        (C.ACQUIRE, b"\x01L\x00", TruncatedPayload),
        (C.CONFIG_GET, b"", TruncatedPayload),
        (C.LOAD, (5).to_bytes(8, "big"), TruncatedPayload),
        (C.REMOVE_JOB, b"\x01f", TruncatedPayload),
        (C.STATUS, b"x", TrailingBytes),
    ],
)
def test_malformed_payload_raises(
    h: Harness, command: int, payload: bytes, exc: type[Exception]
) -> None:
    w = h.worker(b"f")
    with pytest.raises(exc):
        w.raw(command, payload)


def test_frames_for_unknown_connection_are_ignored(h: Harness) -> None:
    h.s.handle(999, 1, C.PING, b"", h.now)


# -- store and restart --------------------------------------------------------


def test_store_sees_every_state_change(h: Harness) -> None:
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"a")
    assert list(h.store.load().jobs) == [(Job(b"f", b"a", b"", int(h.now)), 1)]
    w.assigned(1)
    w.req(C.WORK_FAIL, b"f", b"a")
    [(job, state)] = h.store.load().jobs
    assert (job.sched_at, state) == (int(h.now) + 1, JobState.PENDING)
    assert list(h.store.load().funcs) == [b"f"]


def test_restart_resets_running_and_locked_to_pending() -> None:
    h1 = Harness()
    w = _two_running(h1)
    _acq(w, b"L", 1, b"h1")
    _acq(w, b"L", 1, b"h2")
    h1.client().req(C.CONFIG_SET, b"assign-wait", 7)
    h1.submit(b"g", b"later", sched_at=int(h1.now) + 30)
    states = {j.name: s for j, s in h1.store.load().jobs}
    assert states == {b"h1": 1, b"h2": 2, b"later": 0}

    h2 = Harness(now=h1.now + 5, store=h1.store)
    assert {j.name: s for j, s in h2.store.load().jobs} == {
        b"h1": 0,
        b"h2": 0,
        b"later": 0,
    }
    assert h2.s.get_config("assign-wait") == 7
    w2 = h2.worker(b"f", b"g", slots=[1, 2, 3])
    got = assigns(w2.take())
    assert sorted(j.name for _, j in got) == [b"h1", b"h2"]
    for m, _ in got:
        w2.assigned(m)
    h2.advance(25)
    assert [j.name for _, j in assigns(w2.take())] == [b"later"]


def test_constructor_config_overrides_store_and_rejects_unknown() -> None:
    store = MemoryStore()
    store.save_config("timeout", 99)
    assert Harness(store=store).s.get_config("timeout") == 99
    assert Harness(store=store, config={"timeout": 5}).s.get_config("timeout") == 5
    with pytest.raises(ValueError):
        Harness(config={"nope": 1})


# -- time ---------------------------------------------------------------------


def test_next_wakeup(h: Harness) -> None:
    assert h.s.next_wakeup() == h.now + 10  # the 10 s sweep
    h.submit(b"f", b"a", sched_at=int(h.now) + 4)
    assert h.s.next_wakeup() == int(h.now) + 4
    w = h.worker(b"f", slots=[1])
    h.submit(b"f", b"b")  # awaiting confirmation: assign-wait deadline
    assert h.s.next_wakeup() == h.now + 2
    w.assigned(1)
    assert h.s.next_wakeup() == int(h.now) + 4


def test_many_due_jobs_spread_over_ticks() -> None:
    h = Harness()
    t = int(h.now)
    for i in range(60_000):
        h.s._submit(Job(b"f", b"%05d" % i, b"", t + 1))
    h.now += 1
    h.s.tick(h.now)
    assert h.s.next_wakeup() <= h.now  # type: ignore[operator]
    h.s.tick(h.now)
    assert h.s._funcs[b"f"].n_ready == 60_000
    assert h.s._wheel.next_due() is None


# -- store ordering, restart order, identity, layering ------------------------


class RecordingStore(MemoryStore):
    """A memory store that logs its writes next to the frames sent."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    def save_job(self, job: Job, state: JobState) -> None:
        self.log.append(f"save {job.name.decode()} {int(state)}")
        super().save_job(job, state)

    def set_state(self, func: bytes, name: bytes, state: JobState) -> None:
        self.log.append(f"state {name.decode()} {int(state)}")
        super().set_state(func, name, state)

    def delete_job(self, func: bytes, name: bytes) -> None:
        self.log.append(f"delete {name.decode()}")
        super().delete_job(func, name)

    def delete_func_jobs(self, func: bytes) -> None:
        self.log.append(f"delete-func-jobs {func.decode()}")
        super().delete_func_jobs(func)

    def save_config(self, key: str, value: int) -> None:
        self.log.append(f"config {key}")
        super().save_config(key, value)


def test_replies_are_sent_after_the_store_call() -> None:
    log: list[str] = []
    store = RecordingStore(log)
    s = Scheduler(store, T0)

    def sender(tag: str) -> Any:
        def send(data: bytes) -> None:
            for p in Parser(requests=False).feed(data):
                log.append(f"{tag} {C(p.command).name}")

        return send

    s.connect(1, 1, None, sender("client"), lambda: None, T0)
    s.connect(2, 2, None, sender("worker"), lambda: None, T0)
    s.handle(2, 1, C.CAN_DO, encode_payload(C.CAN_DO, b"f"), T0)
    s.handle(2, 2, C.GRAB_JOB, b"", T0)
    log.clear()
    s.handle(1, 3, C.SUBMIT_JOB, encode_payload(C.SUBMIT_JOB, Job(b"f", b"a")), T0)
    assert log.index("save a 0") < log.index("client SUCCESS")
    assert log.index("state a 1") < log.index("worker JOB_ASSIGN")
    s.handle(2, 2, C.JOB_ASSIGNED, b"", T0)
    log.clear()
    s.handle(2, 4, C.WORK_DONE, encode_payload(C.WORK_DONE, b"f", b"a", b""), T0)
    assert log == ["delete a", "worker SUCCESS"]
    log.clear()
    s.handle(1, 5, C.CONFIG_SET, encode_payload(C.CONFIG_SET, b"timeout", 9), T0)
    assert log == ["config timeout", "client SUCCESS"]
    log.clear()
    s.handle(2, 6, C.CANT_DO, encode_payload(C.CANT_DO, b"f"), T0)
    s.handle(1, 7, C.DROP_FUNC, encode_payload(C.DROP_FUNC, b"f"), T0)
    assert log[-2:] == ["delete-func-jobs f", "client SUCCESS"]


def test_restart_dispatches_due_jobs_in_order() -> None:
    store = MemoryStore()
    t = int(T0)
    for name, at in [(b"c", 5), (b"a", 7), (b"b", 5), (b"d", 1)]:
        store.save_job(Job(b"f", name, b"", t - at), JobState.PENDING)
    h = Harness(store=store)
    w = h.worker(b"f")
    got = [j.name for m in range(1, 5) for _, j in assigns(w.grab(m))]
    assert got == [b"a", b"b", b"c", b"d"]


def test_restart_keeps_the_first_of_duplicate_names() -> None:
    """A store should not hold two jobs of one name; if its snapshot does,
    the first is kept (and gets the only record id)."""

    class DupStore(MemoryStore):
        def load(self) -> StoreSnapshot:
            jobs = [
                (Job(b"f", b"a", b"1", 5), JobState.PENDING),
                (Job(b"f", b"a", b"2", 6), JobState.PENDING),
                (Job(b"f", b"b", b"", 7), JobState.PENDING),
            ]
            return StoreSnapshot(jobs, [b"f"], {})

    s = Scheduler(DupStore(), T0)
    assert sorted(s.jobs()) == [Job(b"f", b"a", b"1", 5), Job(b"f", b"b", b"", 7)]
    assert len(s._jobs) == 2


def test_identity_is_accepted_and_kept(h: Harness) -> None:
    c = FakeConn(h, 50, 4)
    h.s.connect(50, 4, (b"worker-a", b"token"), c.send, c.close, h.now)
    assert cmds(c.req(C.CAN_DO, b"f")) == [C.SUCCESS]
    assert h.s._conns[50].identity == (b"worker-a", b"token")
    cl = FakeConn(h, 51, 3)
    h.s.connect(51, 3, (b"client-a", b"token"), cl.send, cl.close, h.now)
    assert cmds(cl.req(C.GRAB_JOB)) == [C.NO_WORKER]  # type 3 is a client


def test_introspection(h: Harness) -> None:
    h.submit(b"f", b"a", b"x")
    assert h.s.jobs() == [Job(b"f", b"a", b"x", int(h.now))]
    assert h.s.job(b"f", b"zz") is None
    assert h.s.get_config("nope") == 0


def test_scheduler_stays_sans_io() -> None:
    import subprocess
    import sys

    code = (
        "import sys, periodic_fast.scheduler, periodic_fast.store.memory\n"
        "bad = [m for m in ('asyncio', 'socket', 'selectors') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
