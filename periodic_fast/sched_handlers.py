"""The command handlers: one method per request command (protocol.md 3).

Each handler takes ``(conn, msgid, payload)``: it decodes the payload (a
malformed one raises a :class:`~periodic_fast.errors.ProtocolError` and the
server closes the connection), applies the command through the state
machine of :class:`~periodic_fast.sched_core.SchedulerCore` and replies
through ``conn.send``; ``self._now`` (wall) and ``self._mono`` (monotonic)
are the times of the frame.  The hot ones
(SUBMIT_JOB, GRAB_JOB, JOB_ASSIGNED, WORK_DONE) use specific decoders and
inline their bookkeeping.  :meth:`CommandHandlers._handler_table` lists them
by code; the role and auth rules wrap them into per-connection tables
(:mod:`periodic_fast.sched_rules`).
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Callable
from typing import Final

from .auth import Role
from .codec import (
    LOAD_FRAME_OVERHEAD,
    decode_job,
    decode_job_list,
    decode_payload,
    encode_job_list,
    encode_response,
    encode_status,
    load_frame_size,
    oversize_job,
)
from .constants import DEFAULT_MAX_FRAME, RESULT_FAILED
from .errors import TrailingBytes, TruncatedPayload
from .job import Job
from .sched_bulk import BulkWork
from .sched_cron import CronCore
from .sched_limits import FuncRefused, bad_func_name
from .sched_model import RUNNING, Conn, Handler
from .sched_wire import (
    ACQUIRE,
    ACQUIRED,
    BROADCAST,
    CAN_DO,
    CANT_DO,
    CONFIG,
    CONFIG_GET,
    CONFIG_SET,
    DATA,
    DROP_FUNC,
    DUMP,
    GRAB_JOB,
    I32_MAX,
    I32_MIN,
    I64_MAX,
    JOB_ASSIGNED,
    JOB_UNASSIGNED,
    LOAD,
    NO_WORKER,
    NOOP,
    PING,
    PONG,
    RECV_DATA,
    RELEASE,
    REMOVE_JOB,
    RUN_JOB,
    SCHED_LATER,
    SHUTDOWN,
    SLEEP,
    STATUS,
    SUBMIT_JOB,
    SUCCESS,
    UNKNOWN,
    WORK_DATA,
    WORK_DONE,
    WORK_FAIL,
    exact_handle,
    handle_end,
    handle_key,
    show,
    show_key,
    str8,
)
from .store import Store

__all__ = ["CommandHandlers"]

_SCHED_LATER_TAIL: Final = struct.Struct(">qh")
_U32: Final = struct.Struct(">I")
_GRANTED: Final = b"\x01"
_REFUSED: Final = b"\x00"


class CommandHandlers(CronCore):
    """The request handlers on top of the state machine.

    :param on_shutdown: called (with no reply sent) when a client sends
        SHUTDOWN; the other parameters are :class:`SchedulerCore`'s.
    """

    def __init__(
        self,
        store: Store,
        now: float,
        config: dict[str, int],
        on_shutdown: Callable[[], None] | None,
        mono: float | None = None,
    ) -> None:
        super().__init__(store, now, config, mono)
        self._on_shutdown = on_shutdown
        self._set_max_frame(DEFAULT_MAX_FRAME)
        # big DUMP and LOAD requests, a slice per tick (sched_bulk)
        self._bulk = BulkWork(
            self._jobs,
            self._funcs,
            lambda: self._reaper.left,
            self._table_for,
            self._kill_for,
            self._load_check,
            self._load_one,
            lambda conn, msgid: conn.send(encode_response(msgid, SUCCESS)),
            lambda job: load_frame_size(job) > self._max_frame,
            lambda conn, msgid, why: self._refuse(conn, msgid, "size", why),
        )

    def _table_for(self, conn: Conn) -> list[Handler]:
        """``conn``'s dispatch table (the Scheduler builds them)."""
        raise NotImplementedError  # pragma: no cover - Scheduler overrides it

    def _kill_for(self, conn: Conn, why: str) -> None:
        """Close ``conn`` for what it sent (logged, rate-limited)."""
        self._refused("bulk", f"connection {conn.id} closed: {why}")
        self._kill(conn)

    def _set_max_frame(self, max_frame: int) -> None:
        """Refuse jobs that would not fit a LOAD frame under ``max_frame``."""
        self._max_frame = max_frame
        # a job payload up to this size fits for sure (no decode to check)
        self._job_cap = max_frame - LOAD_FRAME_OVERHEAD + 15

    def _oversize(self, conn: Conn, msgid: int, payload: bytes) -> bool:
        """A job near the frame limit: True (refused, NO_WORKER and a log
        line) when it could not be DUMPed and LOADed back (issue 17.6)."""
        size = oversize_job(payload, self._max_frame)
        if not size:
            return False
        self._refuse(
            conn,
            msgid,
            "size",
            f"a job that needs a LOAD frame of {size} bytes, over the frame "
            f"limit of {self._max_frame} bytes",
        )
        return True

    def _handler_table(self) -> dict[int, Handler]:
        """Command code -> handler, for every command the server acts on
        (the others are decoded and ignored, :mod:`periodic_fast.sched_rules`)."""
        return {
            GRAB_JOB: self._h_grab_job,
            SCHED_LATER: self._h_sched_later,
            WORK_DONE: self._h_work_done,
            WORK_FAIL: self._h_work_fail,
            CAN_DO: self._h_can_do,
            CANT_DO: self._h_cant_do,
            PING: self._h_ping,
            SLEEP: self._h_sleep,
            UNKNOWN: self._h_unknown,
            SUBMIT_JOB: self._h_submit_job,
            STATUS: self._h_status,
            DROP_FUNC: self._h_drop_func,
            REMOVE_JOB: self._h_remove_job,
            DUMP: self._h_dump,
            LOAD: self._h_load,
            SHUTDOWN: self._h_shutdown,
            BROADCAST: self._h_broadcast,
            CONFIG_GET: self._h_config_get,
            CONFIG_SET: self._h_config_set,
            RUN_JOB: self._h_run_job,
            ACQUIRE: self._h_acquire,
            RELEASE: self._h_release,
            RECV_DATA: self._h_recv_data,
            WORK_DATA: self._h_work_data,
            JOB_ASSIGNED: self._h_job_assigned,
            JOB_UNASSIGNED: self._h_job_unassigned,
        }

    # -- client commands ------------------------------------------------------

    def _h_ping(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("PING carries no payload")
        conn.send(encode_response(msgid, PONG))

    def _h_sleep(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("SLEEP carries no payload")
        conn.send(encode_response(msgid, NOOP))

    def _h_unknown(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("UNKNOWN carries no payload")
        conn.send(encode_response(msgid, UNKNOWN))

    def _h_submit_job(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if len(payload) > self._job_cap and self._oversize(conn, msgid, payload):
            return
        try:
            self._submit(decode_job(payload))
        except FuncRefused as exc:  # a new func only: not the hot path
            self._refuse(conn, msgid, "func", str(exc))
            return
        conn.send(encode_response(msgid, SUCCESS))

    def _refuse(self, conn: Conn, msgid: int, kind: str, why: str) -> None:
        """NO_WORKER for a request beyond a limit, and a (rate-limited) log line."""
        self._refused(kind, f"connection {conn.id}: {why}")
        conn.send(encode_response(msgid, NO_WORKER))

    def _h_run_job(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if len(payload) > self._job_cap and self._oversize(conn, msgid, payload):
            return
        job = decode_job(payload)
        fs = self._funcs.get(job.func)
        if fs is None or not fs.workers:
            conn.send(encode_response(msgid, NO_WORKER))
            return
        key = payload[: 2 + len(job.func) + len(job.name)]
        if not self._add_waiter(key, conn, msgid, job.timeout, True):
            self._refuse(conn, msgid, "waiter", "RUN_JOB beyond the waiter limits")
            return
        # a running handle is not resubmitted: the caller waits for that run
        self._submit(job)

    def _h_recv_data(self, conn: Conn, msgid: int, payload: bytes) -> None:
        job = decode_job(payload)
        fs = self._funcs.get(job.func)
        if fs is None or not fs.workers:
            conn.send(encode_response(msgid, NO_WORKER))
            return
        key = payload[: 2 + len(job.func) + len(job.name)]
        if not self._add_waiter(key, conn, msgid, job.timeout, False):
            self._refuse(conn, msgid, "waiter", "RECV_DATA beyond the waiter limits")
            return
        conn.send(encode_response(msgid, SUCCESS))

    def _h_status(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("STATUS carries no payload")
        conn.send(encode_response(msgid, DATA, encode_status(self.status(self._now))))

    def _h_drop_func(self, conn: Conn, msgid: int, payload: bytes) -> None:
        func = str8(payload)
        if bad_func_name(func):  # no such func can exist: say so
            self._refuse(conn, msgid, "func", f"DROP_FUNC of {show(func)!r}")
            return
        self._drop_func(func)
        conn.send(encode_response(msgid, SUCCESS))

    def _h_remove_job(self, conn: Conn, msgid: int, payload: bytes) -> None:
        key = exact_handle(payload)
        self._remove(key)
        conn.send(encode_response(msgid, SUCCESS))

    def _h_dump(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("DUMP carries no payload")
        if len(self._jobs) > self._bulk.dump_slice:  # a slice per tick
            self._bulk.dump(conn, msgid)
            return
        data = encode_job_list(self.jobs())
        conn.send(encode_response(msgid, DATA, data))

    def _h_load(self, conn: Conn, msgid: int, payload: bytes) -> None:
        sized = len(payload) > self._job_cap  # a job that might not load back
        if int.from_bytes(payload[:8], "big") > self._bulk.load_slice:
            self._bulk.load(conn, msgid, payload, sized)  # a slice per tick
            return
        jobs = decode_job_list(payload)
        if sized:
            cap = self._max_frame
            if any(load_frame_size(job) > cap for job in jobs):
                self._refuse(conn, msgid, "size", "LOAD of a job over the frame limit")
                return
        if self._load_check(conn, msgid, jobs):
            for job in jobs:
                self._submit(job)
            conn.send(encode_response(msgid, SUCCESS))

    def _load_check(self, conn: Conn, msgid: int, jobs: list[Job]) -> bool:
        """A decoded LOAD: refused as a whole (NO_WORKER sent, False) when a
        new func may not be created; else every func is created first
        (protocol.md 3.2) and True."""
        funcs = self._funcs
        new = {job.func: None for job in jobs if job.func not in funcs}
        try:  # refused as a whole: every new func is checked first
            for func in new:
                self._check_new_func(func)
            if self._max_funcs and len(funcs) + len(new) > self._max_funcs:
                raise FuncRefused(f"LOAD of {len(new)} new funcs (max_funcs)", True)
        except FuncRefused as exc:
            self._refuse(conn, msgid, "func", str(exc))
            return False
        for func in new:
            self._func(func, check=False)
        return True

    def _load_one(self, job: Job) -> None:
        """One job of a sliced LOAD: its func was checked and created at the
        start, but another peer may have dropped it since."""
        if job.func not in self._funcs:
            self._func(job.func, check=False)
        self._submit(job)

    def _h_shutdown(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("SHUTDOWN carries no payload")
        if self._on_shutdown is not None:
            self._on_shutdown()  # no reply (protocol.md 3.2)

    def _h_config_get(self, conn: Conn, msgid: int, payload: bytes) -> None:
        key = str8(payload).decode("latin-1")
        value = self._config.get(key, 0)
        conn.send(encode_response(msgid, CONFIG, _U32.pack(value & 0xFFFFFFFF)))

    def _h_config_set(self, conn: Conn, msgid: int, payload: bytes) -> None:
        raw_key, value = decode_payload(CONFIG_SET, payload)
        # unknown keys: ignored, still SUCCESS (the reference's rule,
        # protocol.md 4.14); ``periodic config set`` refuses them itself
        self.set_config(raw_key.decode("latin-1"), value)
        conn.send(encode_response(msgid, SUCCESS))

    def set_config(self, key: str, value: int) -> bool:
        """Set config ``key`` (applied now, saved in the store), as
        CONFIG_SET does; False, and nothing done, for an unknown key."""
        if key not in self._config:
            return False
        self._config[key] = value
        self._apply_config()
        self._store.save_config(key, value)
        self._stats.event(self._now, "config", f"{key} set to {value}")
        return True

    def adopt_config(self, key: str, value: int) -> bool:
        """Apply config ``key`` that another cluster node set and stored:
        as :meth:`set_config` but not saved again (a late save could undo a
        newer change); False, nothing done, for an unknown key or the
        value already in force."""
        if self._config.get(key, value) == value:
            return False
        self._config[key] = value
        self._apply_config()
        self._stats.event(self._now, "config", f"{key} set to {value} (cluster)")
        return True

    # worker commands ---------------------------------------------------------

    # -- worker commands ------------------------------------------------------

    def _h_can_do(self, conn: Conn, msgid: int, payload: bytes) -> None:
        self._h_register(conn, msgid, str8(payload), False)

    def _h_broadcast(self, conn: Conn, msgid: int, payload: bytes) -> None:
        self._h_register(conn, msgid, str8(payload), True)

    def _h_register(self, conn: Conn, msgid: int, func: bytes, broadcast: bool) -> None:
        try:
            self._register(conn, func, broadcast)
        except FuncRefused as exc:
            self._refuse(conn, msgid, "func", str(exc))
            return
        conn.send(encode_response(msgid, SUCCESS))
        self._pump_conn(conn)

    def _h_cant_do(self, conn: Conn, msgid: int, payload: bytes) -> None:
        fs = conn.funcs.pop(str8(payload), None)
        if fs is not None:
            fs.workers -= 1
            fs.avail.pop(conn, None)
        conn.send(encode_response(msgid, SUCCESS))

    def _h_grab_job(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("GRAB_JOB carries no payload")
        slots = conn.slots
        # duplicates are ignored (AIO re-sends); a msgid awaiting confirmation
        # gets no slot (protocol.md 4.5 rule 6)
        new = msgid not in slots and msgid not in conn.unconfirmed
        if new:
            slots[msgid] = None
        conn.send(encode_response(msgid, SUCCESS))
        if new and len(slots) == 1:
            # 0 -> 1 free slot: the conn re-enters every func's avail set
            for fs in conn.funcs.values():
                fs.avail[conn] = None
                if fs.n_ready:
                    self._pump(fs)
                    if not slots:
                        break

    def _h_job_assigned(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("JOB_ASSIGNED carries no payload")
        a = conn.unconfirmed.pop(msgid, None)
        if a is not None:
            a.waiting = False
            if a.epoch == a.rec.epoch:
                self._confirm(a)
            # confirmations mostly come in order: keep the deque short so
            # resolved assignments do not pile up (and age in the GC) until tick
            awaiting = self._awaiting
            while awaiting and not awaiting[0].waiting:
                awaiting.popleft()

    def _h_job_unassigned(self, conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("JOB_UNASSIGNED carries no payload")
        a = conn.unconfirmed.pop(msgid, None)
        if a is not None:
            a.waiting = False
            self._unassign(a)

    def _h_work_done(self, conn: Conn, msgid: int, payload: bytes) -> None:
        end = handle_end(payload)
        key = payload[:end]
        a = conn.running.pop(key, None)
        if a is not None:
            aid = a.aid
            if aid >= 0:  # _cancel_deadline, inlined
                self._deadlines.cancel(aid)
                self._aslots[aid] = None
                self._afree.append(aid)
                a.aid = -1
            h = self._runtime  # Histogram.observe, inlined (hot path)
            v = self._mono - a.at
            h.counts[bisect_left(h.bounds, v)] += 1
            h.sum += v
        # delete whatever the state, whoever holds it (quirk kept, 3.3)
        rec = self._lookup(key)
        if rec is not None:
            self._funcs[rec.func].n_done += 1
            self._series.done(rec.func, self._now)
            if self._crons and self._cron_done(rec):
                rec = None  # a cron job: kept, due at its next fire
        if self._waiters or self._hlocks:
            self._finish(key, rec, payload[end:])
        elif rec is not None:
            self._delete(rec)
        conn.send(encode_response(msgid, SUCCESS))

    def _h_work_fail(self, conn: Conn, msgid: int, payload: bytes) -> None:
        key = exact_handle(payload)
        a = conn.running.pop(key, None)
        if a is not None:
            self._cancel_deadline(a)
            self._end_assignment(a)
            self._runtime.observe(self._mono - a.at)
        rec = self._lookup(key)
        if rec is not None:
            self._funcs[rec.func].n_fail += 1
            self._series.failed(rec.func, self._now)
            self._stats.event(
                self._now, "fail", f"{show_key(key)} failed (connection {conn.id})"
            )
        self._fail(key, rec, "fail", conn)
        conn.send(encode_response(msgid, SUCCESS))

    def _h_sched_later(self, conn: Conn, msgid: int, payload: bytes) -> None:
        end = handle_end(payload)
        if len(payload) - end != 10:
            if len(payload) - end < 10:
                raise TruncatedPayload("SCHED_LATER payload too short")
            raise TrailingBytes("trailing bytes after SCHED_LATER")
        delay, step = _SCHED_LATER_TAIL.unpack_from(payload, end)
        key = payload[:end]
        a = conn.running.pop(key, None)
        if a is not None:
            self._cancel_deadline(a)
            self._end_assignment(a)
            self._runtime.observe(self._mono - a.at)
        if self._hlocks and key in self._hlocks:
            self._lock_table.release_all(key, self._mono)
        rec = self._lookup(key)
        if rec is not None:
            self._funcs[rec.func].n_later += 1
        w = self._waiters.get(key)
        if w is not None and w.results:
            self._finish(key, rec, RESULT_FAILED)
        elif rec is not None and rec.state == RUNNING:
            now = self._now
            t = int(now)
            # "delay seconds later" is at least that long after this report:
            # counted from the next whole second when now has a fraction
            when = t + delay
            if delay > 0 and now > t:
                when += 1
            if when < t:
                when = t
            elif when > I64_MAX:
                when = I64_MAX
            count = rec.count + step
            if count > I32_MAX:
                count = I32_MAX
            elif count < I32_MIN:
                count = I32_MIN
            self._requeue(rec, when, count)
        conn.send(encode_response(msgid, SUCCESS))

    def _h_work_data(self, conn: Conn, msgid: int, payload: bytes) -> None:
        end = handle_end(payload)
        w = self._waiters.get(payload[:end])
        if w is not None and w.streams:
            chunk = payload[end:]
            for c, m in w.streams:
                if c.alive:
                    c.send(encode_response(m, DATA, chunk))
        conn.send(encode_response(msgid, SUCCESS))

    def _h_acquire(self, conn: Conn, msgid: int, payload: bytes) -> None:
        lock, count, func, name = decode_payload(ACQUIRE, payload)
        ident = conn.auth  # with auth, only admins may widen a lock
        widen = ident is None or ident.role is Role.ADMIN
        key = handle_key(func, name)
        granted = self._lock_table.acquire(lock, count, key, self._mono, widen)
        if granted is None:  # cluster mode: the global count decides, later
            remote = self._lock_table.remote
            assert remote is not None

            def reply(ok: bool) -> None:
                if conn.alive:
                    answer = _GRANTED if ok else _REFUSED
                    conn.send(encode_response(msgid, ACQUIRED, answer))

            remote.ask(lock, count, key, widen, reply)
            return
        conn.send(encode_response(msgid, ACQUIRED, _GRANTED if granted else _REFUSED))

    def _h_release(self, conn: Conn, msgid: int, payload: bytes) -> None:
        lock, func, name = decode_payload(RELEASE, payload)
        self._lock_table.release(lock, handle_key(func, name), self._mono)
        conn.send(encode_response(msgid, SUCCESS))
