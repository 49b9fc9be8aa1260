"""The scheduler's job state machine and dispatch (protocol.md section 4).

:class:`SchedulerCore` owns the state: job records, funcs with their ready
queues, connections with their grab slots and assignments, the two timer
wheels, waiters and the lock table.  It implements what every way in
(command handlers, the HTTP API, the timer) shares: submitting, placing,
dispatching, re-queueing and ending jobs, and a connection's clean-up.  It
reads no clock and sends bytes only through each connection's ``send``.
:class:`~periodic_fast.scheduler.Scheduler` builds on it.

Two times are handed in with every call (docs/architecture.md, the seam):
``self._now``, the wall clock, is compared with ``sched_at`` only (when a job
is due, lateness); ``self._mono``, a monotonic clock, times every deadline and
age (assign-wait, run timeouts, keepalive, waiter expiry, lock entries, sweep
cadence), so a wall-clock step neither expires nor extends any of them.

A wall clock that steps back: the job wheel's time never moves back (a job
added at or before it would be "late", due at the wheel's time, i.e. late by
the step).  While the wall clock is behind the wheel (``t <= _wheel_t``), a
job due in between goes to ``_behind``, a heap by ``(sched_at, seq)``, whose
head :meth:`_due_behind` moves to ready once the wall clock reaches it.
Entries are not cancelled: one is live only while its record is still in
that epoch and placed (``where == IN_WHEEL``; every re-placement starts a new
epoch).  Jobs already in the wheel were due after the wheel's time, so they
still fire when the wall clock reaches their ``sched_at``.

Data layout (persistence-and-scale.md section 3)

* Jobs live in :class:`~periodic_fast.rec.JobRec` records (a Cython class
  with C fields, or its pure-Python twin) that hold the job's fields
  themselves (no ``Job`` tuple is kept; one is built where a whole job is
  needed: JOB_ASSIGN, DUMP, durable stores).  They are indexed two ways: by
  name in their func's ``jobs`` :class:`~periodic_fast.rec.NameTable` (a
  *handle*, ``str8(func) + str8(name)``, is split to look one up; no per-job
  handle bytes are kept) and by a dense integer id (free-list allocated) that
  the :class:`~periodic_fast.wheel.TimerWheel` holds.  A record's func bytes
  are its func's own ``name``.  A store with ``keeps_records``
  (MemoryStore) is handed the record itself and shares its per-func tables
  as the index, so a scheduled job costs the record, its name bytes, one
  table slot, an id slot and its wheel entry.  Future jobs sit in the wheel;
  due ones bypass it and go to their func's ready deque.
* Each func keeps a ready deque (dispatch order: ascending ``(sched_at, name)``
  within each due batch, FIFO across batches) and ``avail``, an ordered set of
  the connections that registered it and may have a free grab slot.  Dispatch
  takes the first of ``avail`` and moves it to the end (round robin).
  Invariant after every operation: for each func, ready is empty or no
  connection in ``avail`` has a free slot.
* Removal from a ready deque is lazy: a record is live there only while
  ``where == READY``; stale entries are skipped when popped (and compacted
  when they outnumber the live ones).
* Every JOB_ASSIGN creates an :class:`~periodic_fast.sched_model.Assign`.
  Unconfirmed ones wait in a FIFO deque ordered by their assign-wait
  deadline; confirmed ones live in the connection's running set and in a
  second wheel keyed by a dense assignment id (the per-assignment timeout,
  4.7).  ``epoch`` ties an assignment to one run of a job: it changes
  whenever the job goes back to pending, so late events about an old run are
  ignored.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from heapq import heappop, heappush
from itertools import count as _counter
from typing import Any, Literal

from .codec import encode_job, encode_response
from .constants import RESULT_FAILED, RESULT_REMOVED, STREAM_EOF
from .job import FuncStat, Job, JobState
from .rec import JobRec, NameTable
from .sched_crontab import CronTab
from .sched_limits import FuncRefused, RefusalLog, bad_func_name
from .sched_load import rebuild
from .sched_locks import LockTable
from .sched_model import (
    DEAD,
    IN_WHEEL,
    LOCKED,
    NOWHERE,
    PENDING,
    READY,
    RUNNING,
    Assign,
    Conn,
    Func,
    Waiters,
)
from .sched_reap import Reaper
from .sched_series import SeriesBook
from .sched_stats import SchedulerStats, StatusView
from .sched_waiters import WaiterTable
from .sched_wire import DATA, JOB_ASSIGN, show, show_key
from .store import RecordStore, Store, StoreSnapshot
from .wheel import TimerWheel

__all__ = ["SchedulerCore"]


# NamedTuple's generated __new__ costs ~400 ns; tuple.__new__ ~120 ns.
_new = tuple.__new__


def _due_order(rec: JobRec) -> tuple[int, bytes]:
    return rec.sched_at, rec.name


class SchedulerCore(WaiterTable):
    """Job states, funcs, grab slots, dispatch, waiters and locks; no I/O.

    :param store: persistence driver (already loaded by the caller, who
        then calls :meth:`_rebuild` with the snapshot).
    :param now: current wall-clock time (``time.time()``).
    :param config: every config value (defaults, stored, operator's).
    :param mono: current monotonic time (``time.monotonic()``); None: ``now``
        (one clock drives both, as in tests that move a single fake clock).

    Not thread-safe: the server's event loop is the only caller.
    """

    def __init__(
        self,
        store: Store,
        now: float,
        config: dict[str, int],
        mono: float | None = None,
    ) -> None:
        self._store = store
        # A store that keeps the scheduler's records (MemoryStore) is handed
        # the record itself, and its per-func name tables are the funcs' own
        # index: no second per-job object or slot.  Others get a fresh Job
        # (they encode or copy it at once).
        self._keeps_recs = store.keeps_records
        self._save_job: Callable[[Any, JobState], None] = store.save_job
        self._name_table: Callable[[bytes], NameTable] | None = (
            store.name_table
            if self._keeps_recs and isinstance(store, RecordStore)
            else None
        )
        self._now = now
        self._mono = now if mono is None else mono
        self._config = config
        self._timeout = 0
        self._assign_wait = 0.0
        self._keepalive = 0
        self._lock_timeout = 0
        self._apply_config()

        t = int(now)
        self._jobs: list[JobRec | None] = []  # id -> record
        self._free: list[int] = []  # free ids (LIFO keeps ids dense)
        self._funcs: dict[bytes, Func] = {}
        self._conns: dict[int, Conn] = {}
        self._wheel = TimerWheel(t)  # future pending jobs, by job id (wall)
        # records of dropped funcs, freed a slice per tick (sched_reap)
        self._reaper = Reaper(self._jobs, self._free, self._wheel.cancel)
        self._wheel_t = t  # the job wheel's time: the largest wall second ticked
        # due at or before _wheel_t while the wall clock is behind it
        self._behind: list[tuple[int, int, JobRec, int]] = []
        self._behind_seq = _counter()
        # confirmed assignments, by assignment id (monotonic seconds)
        self._deadlines = TimerWheel(int(self._mono))
        self._aslots: list[Assign | None] = []  # assignment id -> assignment
        self._afree: list[int] = []
        self._awaiting: deque[Assign] = deque()  # by assign-wait deadline
        self._waiters: dict[bytes, Waiters] = {}
        self._attempts: dict[bytes, dict[bytes, Any]] = {}  # sched_retry: failures
        self._lock_table = LockTable(self._lookup, self._park, self._unpark)
        # bound once: job ends test ``_hlocks`` before calling into the table
        self._locks = self._lock_table.locks
        self._hlocks = self._lock_table.held  # handle -> locks held/awaited
        self._stats = SchedulerStats(now)
        # limits (0 = none; the Scheduler sets them) and their refusal log
        self._max_funcs = 0
        self._max_waiters = 0
        self._max_conn_waiters = 0
        self._n_waiters = 0  # waiter entries, all handles together
        self._idle_scan_at = 0.0  # no idle-func scan before this time
        self._refusals = RefusalLog()
        self._crons = CronTab(store)  # cron schedules (sched_cron)
        self._late = self._stats.lateness  # bound once: hot paths
        self._runtime = self._stats.runtime
        self._series = SeriesBook()  # the dashboard's last hour per func
        #: cluster mode: STATUS and the HTTP func views answer from here (the
        #: cluster's totals); None: this scheduler's own figures
        self.status_view: StatusView | None = None

    # -- start-up -------------------------------------------------------------

    def _rebuild(self, snap: StoreSnapshot, t: int) -> None:
        """Start-up: index every stored job (:func:`~periodic_fast.sched_load.
        rebuild`); future ones go into the wheel, due ones into their func's
        ready queue in (sched_at, name) order; running and locked jobs become
        pending (protocol.md 4.16)."""
        for func in snap.funcs:
            self._func(func, persist=False, check=False)
        due = rebuild(
            snap,
            t,
            funcs=self._funcs,
            new_func=self._loaded_func,
            recs=self._jobs,
            wheel_add=self._wheel.add,
            store=self._store,
            shared=self._name_table is not None,
        )
        if due:
            self._make_ready(due)  # sorted by (sched_at, name) per func

    def _loaded_func(self, func: bytes) -> Func:
        return self._func(func, check=False)

    # -- config ---------------------------------------------------------------

    def _apply_config(self) -> None:
        cfg = self._config
        # a u32 on the wire, but JOB_ASSIGN carries it in the job's i32 field
        self._timeout = min(cfg["timeout"], 0x7FFFFFFF)
        self._assign_wait = float(cfg["assign-wait"])
        self._keepalive = cfg["keepalive"]
        self._lock_timeout = cfg["lock-timeout"]

    # -- reads ----------------------------------------------------------------

    def status(self, now: float) -> list[FuncStat]:
        """One :class:`FuncStat` per known func, sorted by func (protocol.md
        2.4); from :attr:`status_view` when one is set."""
        if self.status_view is not None:
            return self.status_view.status(now)
        return self.local_status(now)

    def local_status(self, now: float) -> list[FuncStat]:
        """This scheduler's own STATUS lines (never the cluster's)."""
        t = int(now)
        return [self._stat(self._funcs[name], t) for name in sorted(self._funcs)]

    def func_stat(self, func: bytes, now: float) -> FuncStat | None:
        """The STATUS line of one func, or None when it is unknown (from
        :attr:`status_view` when one is set)."""
        if self.status_view is not None:
            return self.status_view.func_stat(func, now)
        fs = self._funcs.get(func)
        return None if fs is None else self._stat(fs, int(now))

    @staticmethod
    def _stat(fs: Func, t: int) -> FuncStat:
        # the table's earliest-pending heap (rec): O(1) in the steady state,
        # kept exact by the note() calls of _place and _repend_now
        at = fs.jobs.earliest()
        return FuncStat(
            fs.name,
            fs.workers,
            len(fs.jobs),
            fs.n_running,
            fs.n_locked,
            t if at is None else at,
        )

    def has_func(self, func: bytes) -> bool:
        """Whether ``func`` is known: O(1) (``func_stat`` scans its jobs)."""
        return func in self._funcs

    def job(self, func: bytes, name: bytes) -> tuple[Job, JobState] | None:
        """The stored job ``(func, name)`` with its state, or None."""
        fs = self._funcs.get(func)
        rec = None if fs is None else fs.jobs.get(name)
        if rec is None:
            return None
        return rec.job, JobState(rec.state)

    def jobs(self) -> list[Job]:
        """Every stored job, any state (what DUMP returns)."""
        return [rec.job for fs in self._funcs.values() for rec in fs.jobs]

    # -- funcs ----------------------------------------------------------------

    def _func(self, name: bytes, persist: bool = True, check: bool = True) -> Func:
        """The func record, created (and persisted as known) on first use.

        A new func is checked (unless loaded from the store): a name that
        would break STATUS, or one func beyond ``max_funcs``, raises
        :class:`FuncRefused` (nothing changed)."""
        fs = self._funcs.get(name)
        if fs is None:
            if check:
                self._check_new_func(name)
            table = self._name_table
            jobs = NameTable() if table is None else table(name)
            fs = self._funcs[name] = Func(name, jobs)
            if persist:
                self._store.save_func(name)
        return fs

    def _check_new_func(self, name: bytes) -> None:
        if bad_func_name(name):
            raise FuncRefused(f"func name {show(name)!r} holds ',', LF or CR", False)
        limit = self._max_funcs
        if limit and len(self._funcs) >= limit and not self._forget_idle():
            raise FuncRefused(f"{limit} funcs known (max_funcs)", True)

    def _forget_idle(self) -> bool:
        """At the func cap: forget every func with no job and no worker
        (docs/protocol.md section 9); True if room was made.  A scan that
        freed nothing is not repeated for a second (it costs O(funcs))."""
        now = self._now
        if now < self._idle_scan_at:
            return False
        idle = [n for n, fs in self._funcs.items() if not fs.workers and not fs.jobs]
        for name in idle:
            self._retire(self._funcs.pop(name))
        if not idle:
            self._idle_scan_at = now + 1.0
            return False
        self._stats.event(now, "drop", f"{len(idle)} idle func(s) forgotten")
        return True

    def _refused(self, kind: str, message: str) -> None:
        """Count and log (rate-limited) a refused peer request."""
        self._refusals.refused(kind, message, self._now)

    def _register(self, conn: Conn, func: bytes, broadcast: bool) -> None:
        if func in conn.funcs:
            return  # a second registration on one connection is a no-op
        fs = self._func(func)
        conn.funcs[func] = fs
        fs.workers += 1
        fs.broadcast = broadcast
        if conn.slots:
            fs.avail[conn] = None

    def _pump_conn(self, conn: Conn) -> None:
        """After a registration: dispatch to the conn's free slots."""
        if conn.slots:
            for fs in conn.funcs.values():
                if fs.n_ready and fs.avail:
                    self._pump(fs)
                    if not conn.slots:
                        break

    # -- jobs -----------------------------------------------------------------

    def _lookup(self, key: bytes) -> JobRec | None:
        """The record of a well-formed job handle, or None."""
        n = key[0]
        fs = self._funcs.get(key[1 : 1 + n])
        return None if fs is None else fs.jobs.get(key[2 + n :])

    def _submit(self, job: Job) -> None:
        """SUBMIT_JOB / LOAD / RUN_JOB (protocol.md 4.3)."""
        t = int(self._now)
        func, name, workload, sched_at, count, timeout = job
        fs = self._funcs.get(func)
        if fs is None:
            fs = self._func(func)
        if sched_at < t:
            sched_at = t
        rec = fs.jobs.get(name)
        if rec is None:
            # hot path, inlined: a new job.  Its func bytes are the func's
            # own name object (not one copy per job).
            free = self._free
            if free:
                jid = free.pop()
                rec = JobRec(jid, fs.name, name, workload, sched_at, count, timeout)
                self._jobs[jid] = rec
            else:
                jid = len(self._jobs)
                rec = JobRec(jid, fs.name, name, workload, sched_at, count, timeout)
                self._jobs.append(rec)
            fs.jobs.add(rec)
            if fs.index is not None:  # the job browser's names (sched_index)
                fs.index.add(rec)
            fs.n_submit += 1
            self._save_job(rec if self._keeps_recs else rec.job, PENDING)
            if sched_at > t:
                if sched_at > self._wheel_t:
                    self._wheel.add(rec.id, sched_at)
                else:  # the wall clock stepped back
                    self._add_behind(rec)
                rec.where = IN_WHEEL
            else:
                rec.where = READY
                fs.n_ready += 1
                fs.ready.append(rec)
                if fs.avail:
                    self._pump(fs)
            return
        else:
            fs.n_submit += 1
            state = rec.state
            if state == RUNNING:
                return  # ignored; the running instance continues
            if self._attempts:  # a new submission: its failures start afresh
                self._attempt_gone(rec)
            # latest version is what gets dispatched
            rec.workload = workload
            rec.sched_at = sched_at
            rec.count = count
            rec.timeout = timeout
            if state == LOCKED:
                rec.state = PENDING
                fs.n_locked -= 1
            rec.repend()  # new epoch: no assignment of it yet
        self._save_job(rec if self._keeps_recs else rec.job, PENDING)
        self._place(rec, t)

    def _place(self, rec: JobRec, t: int) -> None:
        """Put a pending job where it belongs: wheel (future) or ready (due).
        Every way back to pending or to another ``sched_at`` comes here or
        to :meth:`_repend_now`: both note it for STATUS (``earliest``)."""
        self._funcs[rec.func].jobs.note(rec)
        when = rec.sched_at
        if when > t:
            if rec.where == READY:
                self._funcs[rec.func].n_ready -= 1  # its deque entry goes stale
            if when > self._wheel_t:
                self._wheel.add(rec.id, when)
            else:  # the wall clock stepped back
                self._wheel.cancel(rec.id)
                self._add_behind(rec)
            rec.where = IN_WHEEL
        else:
            self._to_ready(rec, False)

    def _add_behind(self, rec: JobRec) -> None:
        """A job due after the wall clock but not after the wheel's time."""
        heappush(self._behind, (rec.sched_at, next(self._behind_seq), rec, rec.epoch))

    def _due_behind(self, t: int) -> None:
        """Move the jobs of ``_behind`` due at wall second ``t`` to ready."""
        behind = self._behind
        ids: list[int] = []
        while behind and behind[0][0] <= t:
            _, _, rec, epoch = heappop(behind)
            if rec.epoch == epoch and rec.where == IN_WHEEL:
                rec.where = NOWHERE  # not in the wheel: nothing to cancel
                ids.append(rec.id)
        if ids:
            self._make_ready(ids)

    def _to_ready(self, rec: JobRec, front: bool) -> None:
        fs = self._funcs[rec.func]
        where = rec.where
        if where != READY:
            if where == IN_WHEEL:
                self._wheel.cancel(rec.id)
            rec.where = READY
            fs.n_ready += 1
            ready = fs.ready
            if front:
                ready.appendleft(rec)
            else:
                ready.append(rec)
                if len(ready) > 2 * fs.n_ready + 64:
                    self._compact(fs)
        if fs.avail:
            self._pump(fs)

    def _compact(self, fs: Func) -> None:
        seen: set[int] = set()
        live: deque[JobRec] = deque()
        for rec in fs.ready:
            if rec.where == READY and rec.id not in seen and rec.state == PENDING:
                seen.add(rec.id)
                live.append(rec)
        fs.ready = live

    def _make_ready(self, ids: list[int]) -> None:
        """Wheel output: group per func, sort each batch by (sched_at, name)."""
        jobs = self._jobs
        if len(ids) == 1:
            rec = jobs[ids[0]]
            if rec is not None:
                rec.where = NOWHERE
                fs = self._funcs.get(rec.func)
                if fs is not None and not (
                    self._reaper.left and fs.jobs.get(rec.name) is not rec
                ):  # else: of a dropped func, the reaper frees it
                    self._to_ready(rec, False)
            return
        groups: dict[Func, list[JobRec]] = {}
        funcs = self._funcs
        # a dropped func's records still fire until reaped: never dispatched
        reaping = self._reaper.left
        for jid in ids:
            rec = jobs[jid]
            if rec is None:  # pragma: no cover - deleted jobs leave the wheel
                continue
            rec.where = NOWHERE
            fs = funcs.get(rec.func)
            if fs is None or (reaping and fs.jobs.get(rec.name) is not rec):
                continue  # of a dropped func: the reaper frees it
            batch = groups.get(fs)
            if batch is None:
                groups[fs] = [rec]
            else:
                batch.append(rec)
        for fs, batch in groups.items():
            if len(batch) > 1:
                batch.sort(key=_due_order)
            ready = fs.ready
            for rec in batch:
                rec.where = READY
                ready.append(rec)
            fs.n_ready += len(batch)
            if len(ready) > 2 * fs.n_ready + 64:
                self._compact(fs)
            if fs.avail:
                self._pump(fs)

    def _requeue(self, rec: JobRec, sched_at: int, count: int) -> None:
        """A running job goes back to pending, due at ``sched_at`` with run
        count ``count`` (fail, later)."""
        fs = self._funcs[rec.func]
        rec.state = PENDING
        fs.n_running -= 1
        rec.repend()  # new epoch: no assignment of it yet
        rec.sched_at = sched_at
        rec.count = count
        self._save_job(rec if self._keeps_recs else rec.job, PENDING)
        self._place(rec, int(self._now))

    def _repend_now(self, rec: JobRec, front: bool) -> None:
        """Running or locked -> pending, dispatchable at once (sched_at kept)."""
        fs = self._funcs[rec.func]
        if rec.state == RUNNING:
            fs.n_running -= 1
        elif rec.state == LOCKED:
            fs.n_locked -= 1
        rec.state = PENDING
        rec.repend()  # new epoch: no assignment of it yet
        fs.jobs.note(rec)  # STATUS: pending again (earliest)
        self._store.set_state(rec.func, rec.name, PENDING)
        self._to_ready(rec, front)

    def _park(self, rec: JobRec) -> None:
        """Running -> locked: its ACQUIRE was refused (the lock table queued it)."""
        rec.state = LOCKED
        fs = self._funcs[rec.func]
        fs.n_running -= 1
        fs.n_locked += 1
        self._store.set_state(rec.func, rec.name, LOCKED)

    def _unpark(self, rec: JobRec) -> None:
        """Locked -> pending: the lock table handed it the lock."""
        self._repend_now(rec, False)

    def _delete(self, rec: JobRec, persist: bool = True) -> None:
        fs = self._funcs[rec.func]
        state = rec.state
        if state == RUNNING:
            fs.n_running -= 1
        elif state == LOCKED:
            fs.n_locked -= 1
        where = rec.where
        if where == IN_WHEEL:
            self._wheel.cancel(rec.id)
        elif where == READY:
            fs.n_ready -= 1
        rec.where = NOWHERE
        rec.state = DEAD
        rec.epoch = -1  # every assignment of it is stale now
        fs.jobs.pop(rec.name)
        if self._crons:  # a scheduled job gone for good takes its schedule
            self._crons.forget(fs.name, rec.name)
        if fs.index is not None:
            fs.index.discard(rec)
        self._jobs[rec.id] = None
        self._free.append(rec.id)
        if self._attempts:
            self._attempt_gone(rec)
        if persist:
            self._store.delete_job(fs.name, rec.name)

    def _finish(self, key: bytes, rec: JobRec | None, result: bytes) -> None:
        """The job ends: delete it, release its locks, EOF to streams, then
        ``result`` to result waiters (WORK_DONE, removed, expired, failed)."""
        if rec is not None:
            self._delete(rec)
        if self._hlocks and key in self._hlocks:
            self._lock_table.release_all(key, self._mono)
        if self._waiters:
            w = self._pop_waiters(key)
            if w is not None:
                for c, m in w.streams:
                    if c.alive:
                        c.send(encode_response(m, DATA, STREAM_EOF))
                for c, m in w.results:
                    if c.alive:
                        c.send(encode_response(m, DATA, result))

    def _fail(
        self, key: bytes, rec: JobRec | None, why: str = "fail", by: Conn | None = None
    ) -> None:
        """WORK_FAIL semantics (also timeouts and lost workers, 4.7-4.8);
        ``why`` and ``by`` (the worker) are recorded by :meth:`_failed`."""
        if self._hlocks and key in self._hlocks:
            # cluster mode: a parked job keeps waiting when its (stopped)
            # assignment's worker is lost or times out (WORK_FAIL still
            # releases); released, it would stay locked and queued nowhere
            # until the 60 s sweep (docs/cluster.md "Locks")
            if not (
                why != "fail"
                and rec is not None
                and rec.state == LOCKED
                and self._lock_table.remote is not None
            ):
                self._lock_table.release_all(key, self._mono)
        w = self._waiters.get(key) if self._waiters else None
        if w is not None and w.results:
            self._finish(key, rec, RESULT_FAILED)
        elif rec is not None and rec.state == RUNNING:
            self._failed(rec, why, by)

    def _failed(self, rec: JobRec, why: str, by: Conn | None) -> None:
        """A running job failed: the reference retries it a second later
        (sched_retry overrides this with the retry policies)."""
        self._requeue(rec, int(self._now) + 1, rec.count)

    def _attempt_gone(self, rec: JobRec) -> None:
        """The job ended or was submitted again: forget its failures."""
        per = self._attempts.get(rec.func)
        if per is not None and per.pop(rec.name, None) is not None:
            self._store.delete_extra("attempt", rec.func, rec.name)
            if not per:
                del self._attempts[rec.func]

    def _remove(self, key: bytes) -> bool:
        """REMOVE_JOB: end the job (waiters get "removed"); True if it existed."""
        rec = self._lookup(key)
        self._finish(key, rec, RESULT_REMOVED)
        if rec is None:
            return False
        self._stats.removed += 1
        self._stats.event(self._now, "remove", f"{show_key(key)} removed")
        return True

    def _drop_func(self, func: bytes) -> Literal["dropped", "busy", "unknown"]:
        """DROP_FUNC: forget ``func`` and its jobs unless workers serve it.

        The func is gone at once (registry, store); its pending records are
        detached and freed a slice per tick (:mod:`periodic_fast.sched_reap`),
        so a million-job drop does not hold the loop."""
        fs = self._funcs.get(func)
        if fs is None:
            return "unknown"
        if fs.workers:
            return "busy"
        self._end_active(fs)
        del self._funcs[func]
        self._retire(fs)
        self._reaper.detach(fs.jobs.values())  # type: ignore[arg-type]
        fs.jobs = NameTable()  # the list holds the records now
        fs.index = None
        fs.ready = deque()
        self._stats.event(self._now, "drop", f"func {show(func)} dropped")
        return "dropped"

    def _end_active(self, fs: Func) -> None:
        """Before a drop: delete the func's assigned jobs and release its
        handles' locks now (the work is bounded by the open assignments and
        the locks, not by the func's size)."""
        name = fs.name
        if fs.n_running or fs.n_locked:
            for conn in list(self._conns.values()):
                for a in [*conn.unconfirmed.values(), *conn.running.values()]:
                    rec = a.rec
                    if rec.func is name and a.epoch == rec.epoch and rec.state != DEAD:
                        self._delete(rec, persist=False)
        hlocks = self._hlocks
        if hlocks:
            n = len(name)
            for key in [k for k in hlocks if k[0] == n and k[1 : 1 + n] == name]:
                held = self._lookup(key)
                if held is not None:
                    self._delete(held, persist=False)
                self._lock_table.release_all(key, self._mono)

    def _retire(self, fs: Func) -> None:
        """A forgotten func: out of the store; its counters kept in the totals."""
        if self._crons:
            self._crons.drop_func(fs.name)
        self._store.delete_func_jobs(fs.name)
        self._store.delete_func(fs.name)
        self._series.forget(fs.name)
        retired = self._stats.retired
        retired[0] += fs.n_submit
        retired[1] += fs.n_done
        retired[2] += fs.n_fail
        retired[3] += fs.n_later

    # -- dispatch -------------------------------------------------------------

    def _pump(self, fs: Func) -> None:
        """Pair ready jobs of ``fs`` with free grab slots, round robin."""
        ready = fs.ready
        avail = fs.avail
        while fs.n_ready and avail:
            conn = next(iter(avail))
            slots = conn.slots
            if not slots:
                del avail[conn]  # lazily dropped when its last slot went
                continue
            rec = ready.popleft()
            if rec.where != READY:
                continue  # stale entry
            rec.where = NOWHERE
            fs.n_ready -= 1
            if fs.broadcast:
                self._assign_all(fs, rec)
                continue
            msgid = slots.popitem()[0]  # most recent first
            del avail[conn]
            if slots:
                avail[conn] = None  # to the back: round robin
            self._assign(conn, msgid, rec)

    def _assign_all(self, fs: Func, rec: JobRec) -> None:
        """Broadcast: one assignment to every connection with a free slot."""
        avail = fs.avail
        for conn in list(avail):
            slots = conn.slots
            if not slots:
                del avail[conn]
                continue
            msgid = slots.popitem()[0]
            if not slots:
                del avail[conn]
            self._assign(conn, msgid, rec)

    def _assign(self, conn: Conn, msgid: int, rec: JobRec) -> None:
        func = rec.func
        name = rec.name
        sched_at = rec.sched_at
        mono = self._mono
        if rec.state == PENDING:  # broadcast: only the first assignment
            rec.state = RUNNING
            self._funcs[rec.func].n_running += 1
            self._store.set_state(func, name, RUNNING)
            h = self._late  # Histogram.observe, inlined (hot path)
            v = self._now - sched_at  # lateness: against the wall clock
            h.counts[bisect_left(h.bounds, v)] += 1
            h.sum += v
            self._series.late(func, v, self._now)
        rec.run += 1
        wait = self._assign_wait
        if wait > 0:
            a = Assign(conn, msgid, rec, True, mono + wait, mono)
            conn.unconfirmed[msgid] = a
            self._awaiting.append(a)
        else:
            # extension: assign-wait 0 = accepted on send
            self._confirm(Assign(conn, msgid, rec, False, 0.0, mono))
        timeout = rec.timeout
        if timeout <= 0:  # JOB_ASSIGN carries the effective timeout
            timeout = self._timeout
        job = _new(Job, (func, name, rec.workload, sched_at, rec.count, timeout))
        conn.send(encode_response(msgid, JOB_ASSIGN, encode_job(job)))

    def _confirm(self, a: Assign) -> None:
        """The assignment stands: record its per-assignment deadline (4.7)."""
        rec = a.rec
        if a.epoch != rec.epoch:
            return  # the job ended or was re-queued meanwhile
        rec.confirmed = True
        running = a.conn.running
        key = rec.key
        old = running.get(key)
        if old is not None:
            self._cancel_deadline(old)
        running[key] = a
        timeout = rec.timeout
        if timeout <= 0:
            timeout = self._timeout
        afree = self._afree
        if afree:
            aid = afree.pop()
            self._aslots[aid] = a
        else:
            aid = len(self._aslots)
            self._aslots.append(a)
        a.aid = aid
        # +1: a whole-second wheel must never fire early
        self._deadlines.add(aid, int(self._mono) + timeout + 1)

    def _cancel_deadline(self, a: Assign) -> None:
        aid = a.aid
        if aid >= 0:
            self._deadlines.cancel(aid)
            self._aslots[aid] = None
            self._afree.append(aid)
            a.aid = -1

    def _end_assignment(self, a: Assign) -> None:
        rec = a.rec
        if a.epoch == rec.epoch:
            rec.run -= 1

    def _unassign(self, a: Assign) -> None:
        """Refused or unconfirmed: pending again unless another assignment of
        this run (broadcast) was confirmed or is still open."""
        rec = a.rec
        if a.epoch != rec.epoch:
            return
        rec.run -= 1
        if rec.run <= 0 and not rec.confirmed and rec.state == RUNNING:
            self._repend_now(rec, True)

    # -- connections ----------------------------------------------------------

    def _kill(self, conn: Conn) -> None:
        """Forget ``conn`` and ask the server to close it."""
        self._drop(conn)
        conn.close()

    def _drop(self, conn: Conn) -> None:
        """Connection clean-up (protocol.md 4.8)."""
        if not conn.alive:
            return
        conn.alive = False
        if self._conns.get(conn.id) is conn:
            del self._conns[conn.id]
        for fs in conn.funcs.values():
            fs.workers -= 1
            fs.avail.pop(conn, None)
        conn.funcs.clear()
        conn.slots.clear()
        if conn.waits:
            self._drop_waiters(conn)
        unconfirmed = list(conn.unconfirmed.values())
        conn.unconfirmed.clear()
        for a in unconfirmed:
            a.waiting = False
            self._unassign(a)
        running = list(conn.running.values())
        conn.running.clear()
        for a in running:
            self._cancel_deadline(a)
            if a.epoch == a.rec.epoch:
                a.rec.run -= 1
                rec = a.rec
                self._fail(rec.key, rec if rec.state != DEAD else None, "lost", conn)
        stats = self._stats
        stats.disconnects += 1
        stats.lost += len(running)
        kind = "worker" if conn.worker else "client"
        lost = f", {len(running)} running job(s) back to pending" if running else ""
        stats.event(self._now, "disconnect", f"{kind} {conn.id} went away{lost}")
