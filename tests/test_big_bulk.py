"""Issue 17 item 1: DUMP and LOAD of many jobs run in bounded slices (sans-I/O).

A big DUMP or LOAD gets no reply in its own turn; other connections are
answered between its slices; the DUMP reply is byte for byte the frame the
one-turn path sends; a LOAD is refused as a whole or answered SUCCESS after
its last job; the connection's later requests wait for it, in order.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from periodic_fast.codec import (
    decode_job_list,
    encode_job_list,
    encode_payload,
    encode_response,
)
from periodic_fast.constants import Command as C
from periodic_fast.job import Job
from periodic_fast.sched_bulk import _job_end
from periodic_fast.store.sqlite import SqliteStore
from tests.test_scheduler import T0, Harness, cmds

N = 3000
SLICE = 256


@pytest.fixture(params=["memory", "sqlite"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    if request.param == "memory":
        h = Harness()
    else:
        store = SqliteStore(tmp_path / "s.db")
        request.addfinalizer(store.close)
        h = Harness(store=store)  # type: ignore[arg-type]
    bulk = h.s._bulk  # white box: small slices
    bulk.dump_slice = bulk.load_slice = SLICE
    bulk.crc_slice = 4096
    return h


def _jobs(n: int, func: bytes = b"f", workload: bytes = b"w") -> list[Job]:
    # sched_at in the future: LOAD and SUBMIT keep it as given
    return [
        Job(func, b"%05d" % i, workload + b"%d" % i, int(T0) + 100 + i % 7)
        for i in range(n)
    ]


def _fill(h: Harness, jobs: list[Job]) -> None:
    c = h.client()
    for job in jobs:
        assert cmds(c.req(C.SUBMIT_JOB, job)) == [C.SUCCESS]


def _run(h: Harness) -> int:
    """Tick until the bulk work is done; the number of ticks."""
    n = 0
    while h.s._bulk.busy:
        h.s.tick(h.now)
        n += 1
        assert n < 100_000
    return n


def _key(job: Job) -> tuple[bytes, bytes]:
    return job.func, job.name


def test_dump_in_slices_answers_others_and_equals_the_one_turn_reply(
    h: Harness,
) -> None:
    jobs = _jobs(N) + _jobs(N // 3, b"g")
    _fill(h, jobs)
    expected = h.s.jobs()  # what the one-turn path encodes, in its order
    c, other = h.client(), h.client()
    assert c.req(C.DUMP, msgid=7) == []  # no reply in its own turn
    assert h.s.next_wakeup() == pytest.approx(h.now)  # the server ticks at once
    h.s.tick(h.now)
    assert c.take() == []
    assert cmds(other.req(C.PING)) == [C.PONG]  # between two slices
    ticks = _run(h)
    assert ticks >= len(jobs) // SLICE  # in slices
    [reply] = c.take()
    assert reply.msgid == 7 and reply.command == C.DATA
    got = decode_job_list(reply.payload)
    assert sorted(got, key=_key) == sorted(expected, key=_key)
    # the frame itself (CRC included) is the one the one-turn path sends
    frame = encode_response(7, C.DATA, encode_job_list(got))
    assert encode_response(7, C.DATA, reply.payload) == frame


def test_dump_during_changes_holds_every_job_that_existed_throughout(
    h: Harness,
) -> None:
    jobs = _jobs(N)
    _fill(h, jobs)
    c, other = h.client(), h.client()
    assert c.req(C.DUMP) == []
    h.s.tick(h.now)  # the first slice is encoded
    removed = {jobs[i].name for i in range(0, N, 10)}
    for name in removed:
        assert cmds(other.req(C.REMOVE_JOB, b"f", name)) == [C.SUCCESS]
    changed = Job(b"f", jobs[N - 1].name, b"new", int(T0) + 500)
    assert cmds(other.req(C.SUBMIT_JOB, changed)) == [C.SUCCESS]
    assert cmds(other.req(C.SUBMIT_JOB, Job(b"f", b"new-one"))) == [C.SUCCESS]
    _run(h)
    [reply] = c.take()
    got = {job.name: job for job in decode_job_list(reply.payload)}
    assert len(got) == len(decode_job_list(reply.payload))  # each once
    throughout = {job.name for job in jobs} - removed
    assert throughout <= set(got)
    # a record that was removed before its slice is left out (the first
    # slice's were encoded before the removals)
    assert not (removed - {job.name for job in jobs[:SLICE]}) & set(got)
    assert got[changed.name].workload == b"new"  # its slice came later


def test_dump_leaves_out_a_dropped_func_still_being_reaped(h: Harness) -> None:
    _fill(h, _jobs(N) + _jobs(N, b"g"))
    h.s._reaper.slice = 10  # the drop outlives the dump
    c = h.client()
    assert cmds(c.req(C.DROP_FUNC, b"g")) == [C.SUCCESS]
    assert h.s.reaping == N
    assert c.req(C.DUMP) == []
    _run(h)
    assert h.s.reaping > 0
    [reply] = c.take()
    got = decode_job_list(reply.payload)
    assert {job.func for job in got} == {b"f"}
    assert len(got) == N


def test_load_in_slices_then_dump_round_trip(h: Harness) -> None:
    jobs = _jobs(N) + _jobs(100, b"g")
    c, other = h.client(), h.client()
    assert c.raw(C.LOAD, encode_job_list(jobs), msgid=9) == []
    h.s.tick(h.now)
    assert cmds(other.req(C.PING)) == [C.PONG]
    assert cmds(other.req(C.SUBMIT_JOB, Job(b"h", b"x"))) == [C.SUCCESS]
    assert c.take() == []
    ticks = _run(h)
    assert ticks >= 2 * len(jobs) // SLICE  # decoded, then submitted, in slices
    [reply] = c.take()
    assert (reply.msgid, reply.command) == (9, C.SUCCESS)
    st = h.status()
    assert (st[b"f"].jobs, st[b"g"].jobs, st[b"h"].jobs) == (N, 100, 1)
    assert c.req(C.DUMP, msgid=10) == []
    _run(h)
    [dump] = c.take()
    got = [j for j in decode_job_list(dump.payload) if j.func != b"h"]
    assert sorted(got, key=_key) == sorted(jobs, key=_key)


def test_requests_behind_a_load_wait_for_it_in_order(h: Harness) -> None:
    jobs = _jobs(N)
    c = h.client()
    assert c.raw(C.LOAD, encode_job_list(jobs), msgid=1) == []
    # the same connection: a newer version of a loaded job, then a DUMP
    newer = Job(b"f", jobs[-1].name, b"newer", int(T0) + 900)
    assert c.raw(C.SUBMIT_JOB, encode_payload(C.SUBMIT_JOB, newer), msgid=2) == []
    assert c.raw(C.PING, b"", msgid=3) == []
    assert c.raw(C.DUMP, b"", msgid=4) == []
    _run(h)
    out = c.take()
    assert [(p.msgid, p.command) for p in out] == [
        (1, C.SUCCESS),
        (2, C.SUCCESS),
        (3, C.PONG),
        (4, C.DATA),
    ]
    got = {j.name: j for j in decode_job_list(out[3].payload)}
    assert len(got) == N
    assert got[newer.name].workload == b"newer"  # the SUBMIT came after
    # the connection's table is its own again
    assert cmds(c.req(C.PING)) == [C.PONG]


def test_load_refused_as_a_whole(h: Harness) -> None:
    jobs = _jobs(N)
    jobs[-1] = Job(b"bad,func", b"x")  # found by the last slice only
    c = h.client()
    assert c.raw(C.LOAD, encode_job_list(jobs)) == []
    _run(h)
    assert cmds(c.take()) == [C.NO_WORKER]
    assert h.status() == {}  # nothing stored, no func created


def test_malformed_load_closes_the_connection(h: Harness) -> None:
    c = h.client()
    data = encode_job_list(_jobs(N))
    assert c.raw(C.LOAD, data[:-3]) == []  # the last job is cut
    _run(h)
    assert c.take() == []
    assert c.close_calls == 1
    c2 = h.client()
    assert c2.raw(C.LOAD, data + b"xx") == []  # trailing bytes
    _run(h)
    assert c2.close_calls == 1
    c3 = h.client()
    with pytest.raises(Exception, match="announces"):  # a count it cannot hold
        c3.raw(C.LOAD, data[:8] + data[8:100])


def test_load_of_a_closed_connection_stops(h: Harness) -> None:
    c = h.client()
    assert c.raw(C.LOAD, encode_job_list(_jobs(N))) == []
    h.s.tick(h.now)
    h.s.disconnect(c.id, h.now)
    _run(h)
    assert h.status().get(b"f") is None or h.status()[b"f"].jobs < N


def test_small_requests_stay_in_their_turn(h: Harness) -> None:
    c = h.client()
    jobs = _jobs(SLICE)
    assert cmds(c.raw(C.LOAD, encode_job_list(jobs))) == [C.SUCCESS]
    [reply] = c.req(C.DUMP)
    assert sorted(decode_job_list(reply.payload), key=_key) == jobs
    assert not h.s._bulk.busy


def test_job_end_agrees_with_the_codec() -> None:
    for count, timeout in [(0, 0), (3, 0), (0, 9), (3, 9)]:
        job = Job(b"f" * 7, b"n" * 200, b"w" * 70000, 5)
        job = job._replace(count=count, timeout=timeout)
        data = encode_job_list([job, job])
        assert _job_end(data, 8) == 8 + (len(data) - 8) // 2


def test_a_backlog_over_the_limit_closes_the_connection(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """BACKLOG_MAX: requests pipelined behind a running LOAD wait up to the
    limit; one more closes that connection, and no one else is affected."""
    monkeypatch.setattr("periodic_fast.sched_bulk.BACKLOG_MAX", 3)
    c = h.client()
    assert c.raw(C.LOAD, encode_job_list(_jobs(N)), msgid=1) == []
    for msgid in (2, 3, 4):  # queued behind the LOAD, up to the limit
        assert c.raw(C.PING, b"", msgid=msgid) == []
    assert c.close_calls == 0
    assert c.raw(C.PING, b"", msgid=5) == []  # one over: closed
    assert c.close_calls == 1
    _run(h)
    assert c.take() == []  # a closed connection is answered nothing
    other = h.client()
    assert cmds(other.req(C.PING)) == [C.PONG]
