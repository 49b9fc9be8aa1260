"""Cluster mode in the scheduler: holding only the partitions this node owns.

In cluster mode (docs/cluster.md) a node's scheduler starts with no jobs
(its store's ``load()`` returns none) and holds the jobs of the partitions
its heartbeat acquired, nothing else.  :class:`Partitions` is that set and
the operations on it, sans-I/O like the rest of the scheduler (times are
handed in; rows come from the caller, which reads them from the store):

* :meth:`Partitions.begin` / :meth:`~Partitions.load_rows` /
  :meth:`~Partitions.finish`: a partition's rows are added chunk by chunk
  (the caller feeds one chunk per loop turn, so a big partition does not
  hold the loop), indexed like the start-up rebuild and dispatched as they
  arrive; requests for its jobs are accepted once it is finished;
* :meth:`Partitions.unload`: the partition leaves at once (lease lost, excess
  to hand over, shutdown): its records leave their funcs' tables, ready
  queues and counters in one pass, nothing of it is dispatched again, its
  open assignments are forgotten (a later WORK_DONE, WORK_FAIL or
  SCHED_LATER finds no job and writes nothing: the new owner has it
  pending) and its records' ids and wheel entries are freed a slice per
  tick by the scheduler's :class:`~periodic_fast.sched_reap.Reaper`.
  Nothing is written to the store: the rows stay as the new owner finds them.
* :meth:`Partitions.install`: requests about a job of a partition that is
  not held (SUBMIT_JOB, RUN_JOB, REMOVE_JOB, RECV_DATA) go to the
  :attr:`Partitions.forward` hook (the server's forwarder sends them to the
  owner), and LOAD, DROP_FUNC and DUMP, which span partitions, to
  :attr:`Partitions.span` (without one, DUMP answers with the partitions
  held here and the other two are refused).  Without a hook a request
  about a job not held is refused with NO_WORKER and a rate-limited log
  line, as is the HTTP API's submit of a job not held here.  A request
  from another node's forwarder (:attr:`Partitions.peer` says so) is never
  forwarded again: a second hop could loop while routes are stale; the
  origin retries instead.
  Single-node schedulers never install it, so their hot paths are
  unchanged.

The partition of a job is :func:`~periodic_fast.store.cluster.partition_of`
(the same CRC-32 rule, with the func's part of the checksum cached).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

from .codec import decode_job_list, encode_response
from .constants import Command
from .errors import ProtocolError
from .job import Job
from .rec import JobRec
from .sched_model import IN_WHEEL, LOCKED, NOWHERE, PENDING, READY, RUNNING, Conn
from .sched_part_extras import drop_extras
from .sched_wire import NO_WORKER, show

if TYPE_CHECKING:
    from .sched_model import Handler
    from .scheduler import Scheduler

__all__ = ["Partitions"]

# requests naming one job (str8 func, str8 name first): held partitions only
_JOB_COMMANDS = (
    int(Command.SUBMIT_JOB),
    int(Command.RUN_JOB),
    int(Command.REMOVE_JOB),
    int(Command.RECV_DATA),
)
# requests spanning partitions: to the span hook (the forwarder); DUMP
# answers with this node's partitions when there is none
_SPANNING = (int(Command.LOAD), int(Command.DROP_FUNC), int(Command.DUMP))


class Partitions:
    """The partitions a cluster node's scheduler holds (see the module doc).

    :param sched: the node's scheduler (built on a cluster store: no jobs).
    :param count: the cluster's partition count.
    """

    def __init__(self, sched: Scheduler, count: int) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        self._s = sched
        self.count = count
        #: loading or loaded: its jobs are in memory and dispatched
        self.held: set[int] = set()
        #: loaded: requests about its jobs are accepted
        self.ready: set[int] = set()
        self._crc: dict[bytes, int] = {}  # func -> CRC-32 of len(func) + func
        #: ``(conn, msgid, command, payload, part)``: a request about a job
        #: of a partition not ready here (the forwarder); None: refused
        self.forward: Callable[[Conn, int, int, bytes, int], None] | None = None
        #: ``(conn, msgid, command, payload)``: LOAD or DROP_FUNC (they
        #: span partitions); None: refused
        self.span: Callable[[Conn, int, int, bytes], None] | None = None
        #: true for a connection of another node's forwarder (never
        #: forwarded again)
        self.peer: Callable[[Conn], bool] = lambda conn: False
        self._local: dict[int, Handler] = {}  # LOAD, DROP_FUNC as plain

    def part(self, func: bytes, name: bytes) -> int:
        """The partition of job ``(func, name)``."""
        crc = self._crc.get(func)
        if crc is None:
            if len(self._crc) > 100_000:  # bounded: funcs come and go
                self._crc.clear()
            crc = self._crc[func] = zlib.crc32(len(func).to_bytes(4, "big") + func)
        return zlib.crc32(name, crc) % self.count

    # -- loading ----------------------------------------------------------------------

    def begin(self, parts: Iterable[int]) -> None:
        """``parts`` were acquired: their rows follow (:meth:`load_rows`)."""
        self.held.update(parts)

    def load_rows(self, rows: Iterable[tuple[Any, ...]], now: float) -> int:
        """Add stored rows ``(func, name, workload, sched_at, count,
        timeout, state)`` of held partitions (as the start-up rebuild: future
        ones into the wheel, due ones ready in ``(sched_at, name)`` order,
        every one pending).  A key already in memory keeps its record (it is
        newer).  Returns how many were added."""
        s = self._s
        s._now = now
        t = int(now)
        funcs = s._funcs
        recs = s._jobs
        free = s._free
        store = s._store
        due: list[int] = []
        added = 0
        held = self.held
        part = self.part
        for func, name, workload, when, count, timeout, state in rows:
            if part(func, name) not in held:
                continue  # unloaded while it loaded (lost meanwhile)
            fs = funcs.get(func) or s._func(func, check=False)
            jobs = fs.jobs
            if name in jobs:
                continue
            if free:
                jid = free.pop()
                rec = JobRec(jid, fs.name, name, workload, when, count, timeout)
                recs[jid] = rec
            else:
                jid = len(recs)
                rec = JobRec(jid, fs.name, name, workload, when, count, timeout)
                recs.append(rec)
            jobs.add(rec)
            if fs.index is not None:  # the job browser's names (sched_index)
                fs.index.add(rec)
            added += 1
            if state != PENDING:  # protocol.md 4.16: pending when loaded
                store.set_state(func, name, PENDING)
            if when > t:
                if when > s._wheel_t:
                    s._wheel.add(jid, when)
                else:  # the wall clock stepped back
                    s._add_behind(rec)
                rec.where = IN_WHEEL
            else:
                due.append(jid)
        if due:
            s._make_ready(due)  # sorted by (sched_at, name) per func
        return added

    def finish(self, parts: Iterable[int]) -> None:
        """Every row of ``parts`` is loaded: accept requests for them."""
        self.ready.update(p for p in parts if p in self.held)

    # -- unloading --------------------------------------------------------------------

    def unload(self, parts: Iterable[int], mono: float) -> int:
        """Drop ``parts`` from memory at once (see the module doc); returns
        how many jobs left.  Writes nothing to the store."""
        gone_parts = set(parts) & self.held
        if not gone_parts:
            return 0
        self.held -= gone_parts
        self.ready -= gone_parts
        s = self._s
        s._mono = mono
        drop_extras(s, gone_parts, self.part)  # failures, dead, schedules
        count = self.count
        attempts = s._attempts
        gone: list[JobRec | None] = []
        for fs in list(s._funcs.values()):
            jobs = fs.jobs
            if not len(jobs):
                continue
            crc = zlib.crc32(len(fs.name).to_bytes(4, "big") + fs.name)
            victims = [
                r
                for r in jobs.values()
                if zlib.crc32(r.name, crc) % count in gone_parts
            ]
            per = attempts.get(fs.name) if attempts else None
            for rec in victims:
                jobs.pop(rec.name)
                if fs.index is not None:
                    fs.index.discard(rec)
                state = rec.state
                if state == RUNNING:
                    fs.n_running -= 1
                elif state == LOCKED:
                    fs.n_locked -= 1
                if rec.where == READY:  # its deque entry goes stale
                    fs.n_ready -= 1
                    rec.where = NOWHERE
                rec.state = PENDING  # not DEAD: the reaper frees it
                rec.epoch = -1  # every assignment of it is stale now
                if per is not None:  # the new owner counts its failures
                    per.pop(rec.name, None)
            if per is not None and not per:
                del attempts[fs.name]
            gone.extend(victims)
        if not gone:
            return 0
        self._forget_assignments({id(r) for r in gone})
        hlocks = s._hlocks
        if hlocks:  # their locks go to the next waiters
            for key in [r.key for r in gone if r is not None and r.key in hlocks]:
                s._lock_table.release_all(key, mono)
        n = len(gone)
        s._reaper.detach(gone)  # ids and wheel entries, a slice per tick
        return n

    def _forget_assignments(self, victims: set[int]) -> None:
        """Open assignments of unloaded records: their deadlines and slots go
        (a late report of the worker finds nothing)."""
        s = self._s
        for conn in s._conns.values():
            waiting = conn.unconfirmed
            for msgid in [m for m, a in waiting.items() if id(a.rec) in victims]:
                waiting.pop(msgid).waiting = False
            running = conn.running
            for key in [k for k, a in running.items() if id(a.rec) in victims]:
                s._cancel_deadline(running.pop(key))

    # -- requests ---------------------------------------------------------------------

    def install(self) -> None:
        """Refuse requests about jobs of partitions not held (see the module
        doc).  Call before the first connection."""
        s = self._s
        tables = s._dispatch
        plain = tables._handlers

        def handlers() -> dict[int, Handler]:
            table = dict(plain())
            for c in _JOB_COMMANDS:
                table[c] = self._held_only(c, table[c])
            for c in _SPANNING:
                self._local[c] = table[c]
                table[c] = self._spanning(c)
            return table

        tables._handlers = handlers
        tables._plain.clear()
        tables.clear_auth()
        submit = s.submit

        def http_submit(job: Job, now: float, mono: float | None = None) -> bool:
            if self.part(job.func, job.name) not in self.ready:
                s._refused("cluster", f"HTTP submit of {show(job.name)!r}: not here")
                return False
            return submit(job, now, mono)

        def http_drop(
            func: bytes, now: float, mono: float | None = None
        ) -> Literal["dropped", "busy", "unknown"]:
            s._refused("cluster", "HTTP drop of a func: not in cluster mode yet")
            return "busy"

        # instance attributes shadow the methods for this scheduler only
        s.submit = http_submit  # type: ignore[method-assign]
        s.drop_func = http_drop  # type: ignore[method-assign]

    def _held_only(self, command: int, inner: Handler) -> Handler:
        ready = self.ready
        part = self.part
        refuse = self._s._refuse
        what = Command(command).name

        def held_only(conn: Conn, msgid: int, payload: bytes) -> None:
            try:
                n = payload[0]
                func = payload[1 : 1 + n]
                name = payload[2 + n : 2 + n + payload[1 + n]]
            except IndexError:  # malformed: the handler closes the connection
                inner(conn, msgid, payload)
                return
            p = part(func, name)
            if p in ready:
                inner(conn, msgid, payload)
            elif self.forward is not None and not self.peer(conn):
                self.forward(conn, msgid, command, payload, p)
            else:
                refuse(
                    conn,
                    msgid,
                    "cluster",
                    f"{what} of {show(func)!r}/{show(name)!r}: its partition"
                    " is not held here (try another node)",
                )

        return held_only

    def run_local(self, conn: Conn, msgid: int, command: int, payload: bytes) -> None:
        """LOAD, DROP_FUNC or DUMP handled here, for this node's partitions: a
        DROP_FUNC drops the func's jobs of the partitions held here (the
        store deletes only their rows); a LOAD is refused with NO_WORKER
        unless every job's partition is ready here (the forwarder splits a
        LOAD by partition and retries a refused piece)."""
        if command == Command.LOAD:
            try:
                jobs = decode_job_list(payload)
            except ProtocolError:
                jobs = []  # malformed: the handler closes the connection
            ready = self.ready
            part = self.part
            if any(part(j.func, j.name) not in ready for j in jobs):
                self._s._refuse(
                    conn, msgid, "cluster", "LOAD of jobs not held here (retried)"
                )
                return
        self._local[command](conn, msgid, payload)

    def _spanning(self, command: int) -> Handler:
        what = Command(command).name
        s = self._s

        def spanning(conn: Conn, msgid: int, payload: bytes) -> None:
            if self.span is not None:
                self.span(conn, msgid, command, payload)
                return
            if command == Command.DUMP:
                self._local[command](conn, msgid, payload)
                return
            s._refused("cluster", f"{what}: not available in cluster mode yet")
            conn.send(encode_response(msgid, NO_WORKER))

        return spanning
