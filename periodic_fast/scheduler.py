"""The sans-I/O Periodic scheduler (protocol.md sections 3-4).

The server hands every decoded request to :meth:`Scheduler.handle` and calls
:meth:`Scheduler.tick` from its single timer; the scheduler never reads a clock
and never touches a socket: ``now`` (``time.time()``, float seconds) is passed
in and frames leave through each connection's ``send`` callable.  The seam is
specified in docs/architecture.md.

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
  ``where == _READY``; stale entries are skipped when popped (and compacted
  when they outnumber the live ones).
* Every JOB_ASSIGN creates an :class:`_Assign`.  Unconfirmed ones wait in a
  FIFO deque ordered by their assign-wait deadline; confirmed ones live in the
  connection's running set and in a second wheel keyed by a dense assignment
  id (the per-assignment timeout, 4.7).  ``epoch`` ties an assignment to one
  run of a job: it changes whenever the job goes back to pending, so late
  events about an old run are ignored.

Hot paths (SUBMIT_JOB, GRAB_JOB, JOB_ASSIGNED, WORK_DONE, dispatch) use a
per-connection dispatch table, specific decoders and no logging.
"""

from __future__ import annotations

import gc
import struct
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple

from .auth import AuthRules, Identity, Role
from .codec import (
    decode_job,
    decode_job_list,
    decode_payload,
    encode_job,
    encode_job_list,
    encode_response,
    encode_status,
)
from .constants import (
    CONFIG_DEFAULTS,
    MAX_COMMAND,
    RESULT_EXPIRED,
    RESULT_FAILED,
    RESULT_REMOVED,
    STREAM_EOF,
    ClientType,
)
from .errors import TrailingBytes, TruncatedPayload, UnknownCommand
from .job import FuncStat, Job, JobState
from .rec import JobRec as _JobRec
from .rec import NameTable as _NameTable
from .store import Store, StoreSnapshot
from .wheel import TimerWheel

__all__ = [
    "ADMIN_COMMANDS",
    "WORKER_COMMANDS",
    "ConnInfo",
    "Event",
    "FuncDetail",
    "Histogram",
    "LockInfo",
    "Scheduler",
    "SchedulerStats",
]

# Command codes as plain ints: IntEnum attribute lookups cost on hot paths.
_NOOP: Final = 0
_GRAB_JOB: Final = 1
_SCHED_LATER: Final = 2
_WORK_DONE: Final = 3
_WORK_FAIL: Final = 4
_JOB_ASSIGN: Final = 5
_CAN_DO: Final = 7
_CANT_DO: Final = 8
_PING: Final = 9
_PONG: Final = 10
_SLEEP: Final = 11
_UNKNOWN: Final = 12
_SUBMIT_JOB: Final = 13
_STATUS: Final = 14
_DROP_FUNC: Final = 15
_SUCCESS: Final = 16
_REMOVE_JOB: Final = 17
_DUMP: Final = 18
_LOAD: Final = 19
_SHUTDOWN: Final = 20
_BROADCAST: Final = 21
_CONFIG_GET: Final = 22
_CONFIG_SET: Final = 23
_CONFIG: Final = 24
_RUN_JOB: Final = 25
_ACQUIRED: Final = 26
_ACQUIRE: Final = 27
_RELEASE: Final = 28
_NO_WORKER: Final = 29
_DATA: Final = 30
_RECV_DATA: Final = 31
_WORK_DATA: Final = 32
_JOB_ASSIGNED: Final = 33
_JOB_UNASSIGNED: Final = 34

#: Worker-class commands (protocol.md 3.1 class W): refused with NO_WORKER on
#: client-role connections.
WORKER_COMMANDS: Final = frozenset({1, 2, 3, 4, 7, 8, 11, 21, 27, 28, 32, 33, 34})

#: With an auth file only ``admin`` identities may send these (stricter than
#: the reference, which lets any identity): SHUTDOWN, CONFIG_SET, DUMP, LOAD,
#: DROP_FUNC.
ADMIN_COMMANDS: Final = frozenset({20, 23, 18, 19, 15})

# With an auth file: commands whose func must be in the identity's list
# (protocol.md 5.3), and commands about a job handle that only the connection
# holding that job may send (stricter than the reference).
_FUNC_CHECKED: Final = frozenset({13, 25, 31, 15, 17, 19, 7, 21})
_OWNED: Final = frozenset({3, 4, 2, 32, 27, 28})

_PENDING: Final = JobState.PENDING
_RUNNING: Final = JobState.RUNNING
_LOCKED: Final = JobState.LOCKED
_DEAD: Final = -1  # record deleted (never stored)

# _JobRec.where
_NOWHERE: Final = 0
_IN_WHEEL: Final = 1
_READY: Final = 2

_WORKER_TYPES: Final = (ClientType.WORKER, ClientType.AUTH_WORKER)
_ADMIN: Final = Role.ADMIN

_SWEEP_FAST: Final = 10.0  # keepalive, waiter expiry (protocol.md 4.15)
_SWEEP_LOCKED: Final = 60.0  # locked jobs back to pending
_SWEEP_SLOW: Final = 100.0  # lock-timeout purge, orphaned running jobs
_WAITER_DEFAULT: Final = 60  # result-waiter expiry when the job timeout is 0
_WHEEL_BATCH: Final = 50_000  # due ids moved per tick; the rest next tick
_I32_MIN: Final = -(1 << 31)
_I32_MAX: Final = (1 << 31) - 1
_I64_MAX: Final = (1 << 63) - 1

_SCHED_LATER_TAIL: Final = struct.Struct(">qh")
_U32: Final = struct.Struct(">I")
_GRANTED: Final = b"\x01"
_REFUSED: Final = b"\x00"

# NamedTuple's generated __new__ costs ~400 ns; tuple.__new__ ~120 ns.
_new = tuple.__new__
#: stored jobs from which start-up moves its objects out of the GC's reach
_FREEZE_AT: Final = 50_000


def _handle_end(payload: bytes) -> int:
    """Index just past the job handle that starts ``payload``."""
    n = len(payload)
    if not n:
        raise TruncatedPayload("payload too short for a job handle")
    i = payload[0] + 1
    if i >= n:
        raise TruncatedPayload("payload too short for a job handle")
    i += payload[i] + 1
    if i > n:
        raise TruncatedPayload("payload too short for a job handle")
    return i


def _exact_handle(payload: bytes) -> bytes:
    """``payload`` when it is exactly one job handle."""
    if _handle_end(payload) != len(payload):
        raise TrailingBytes("trailing bytes after the job handle")
    return payload


def _str8(payload: bytes) -> bytes:
    """Decode a payload that is exactly one ``str8``."""
    if not payload:
        raise TruncatedPayload("payload too short for a name")
    n = payload[0] + 1
    if n > len(payload):
        raise TruncatedPayload("payload too short for a name")
    if n < len(payload):
        raise TrailingBytes("trailing bytes after the name")
    return payload[1:]


def _key(func: bytes, name: bytes) -> bytes:
    """The job handle ``str8(func) + str8(name)`` (protocol.md 2.2)."""
    return bytes((len(func),)) + func + bytes((len(name),)) + name


def _show(raw: bytes) -> str:
    """A name for a log line or an event (never raises, bounded)."""
    text = raw[:80].decode("utf-8", "backslashreplace")
    return text + "..." if len(raw) > 80 else text


def _show_key(key: bytes) -> str:
    """``func:name`` of a job handle, for events."""
    n = key[0]
    return f"{_show(key[1 : 1 + n])}:{_show(key[2 + n :])}"


def _due_order(rec: _JobRec) -> tuple[int, bytes]:
    return rec.sched_at, rec.name


class _Func:
    """A known func: worker count, broadcast flag, ready queue, counters."""

    __slots__ = (
        "avail",
        "broadcast",
        "jobs",
        "n_done",
        "n_fail",
        "n_later",
        "n_locked",
        "n_ready",
        "n_running",
        "n_submit",
        "name",
        "ready",
        "workers",
    )

    def __init__(self, name: bytes, jobs: _NameTable) -> None:
        # counters since the func was created (SchedulerStats reads them)
        self.n_submit = 0
        self.n_done = 0
        self.n_fail = 0
        self.n_later = 0
        self.name = name
        self.workers = 0  # connections that registered it
        self.broadcast = False  # last first-registration wins (quirk kept)
        self.ready: deque[_JobRec] = deque()  # due jobs, lazily cleaned
        self.n_ready = 0  # live entries of ``ready``
        self.avail: dict[_Conn, None] = {}  # registered conns, round-robin order
        # every stored job of the func, by name: the only name index (a
        # handle is split to look a job up), so a job costs no handle bytes;
        # shared with a store that keeps records (one slot per job in all)
        self.jobs = jobs
        self.n_running = 0
        self.n_locked = 0


class _Assign:
    """One JOB_ASSIGN sent to one grab slot."""

    __slots__ = ("aid", "at", "conn", "deadline", "epoch", "msgid", "rec", "waiting")

    def __init__(
        self,
        conn: _Conn,
        msgid: int,
        rec: _JobRec,
        waiting: bool,
        deadline: float,
        at: float,
    ) -> None:
        self.at = at  # when JOB_ASSIGN was sent (run-time histogram)
        self.conn = conn
        self.msgid = msgid
        self.rec = rec
        self.epoch = rec.epoch
        self.waiting = waiting  # awaiting JOB_ASSIGNED / JOB_UNASSIGNED
        self.deadline = deadline  # assign-wait deadline while waiting
        self.aid = -1  # id in the per-assignment timeout wheel, -1 if none


_Handler = Callable[["_Conn", int, bytes], None]


class _Conn:
    """A registered connection."""

    __slots__ = (
        "alive",
        "auth",
        "close",
        "funcs",
        "id",
        "identity",
        "last_seen",
        "running",
        "send",
        "slots",
        "table",
        "unconfirmed",
        "worker",
    )

    def __init__(
        self,
        conn_id: int,
        worker: bool,
        identity: tuple[bytes, bytes] | None,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        now: float,
    ) -> None:
        self.id = conn_id
        self.worker = worker
        self.identity = identity  # (name, token) as registered, or None
        self.auth: Identity | None = None  # its auth-file entry (auth on)
        self.send = send
        self.close = close
        self.last_seen = now
        self.alive = True
        self.funcs: dict[bytes, _Func] = {}  # registered funcs
        self.slots: dict[int, None] = {}  # grab msgids; popitem() = most recent
        self.unconfirmed: dict[int, _Assign] = {}  # msgid -> awaiting confirmation
        self.running: dict[bytes, _Assign] = {}  # handle -> confirmed assignment
        self.table: list[_Handler] = []


class _Waiters:
    """RUN_JOB result waiters and RECV_DATA stream waiters of one handle."""

    __slots__ = ("expiry", "results", "streams")

    def __init__(self) -> None:
        self.results: list[tuple[_Conn, int]] = []
        self.streams: list[tuple[_Conn, int]] = []
        self.expiry = 0.0


class _Lock:
    """A named counting lock (protocol.md 4.11); values are entry times."""

    __slots__ = ("holders", "max", "name", "queue")

    def __init__(self, name: bytes, max_holders: int) -> None:
        self.name = name
        self.max = max_holders
        self.holders: dict[bytes, float] = {}
        self.queue: dict[bytes, float] = {}  # FIFO


# -- statistics (read by the HTTP status page and /metrics) ----------------------

#: Bucket upper bounds (seconds) of the lateness and run-time histograms.
LATENESS_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip
RUNTIME_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
)  # fmt: skip
_EVENTS_KEPT: Final = 200
_RATE_WINDOW: Final = 60.0  # per-minute rates look back this far


class Histogram:
    """Fixed-bucket histogram: ``counts[i]`` observations ``<= bounds[i]``
    (not cumulative), the last slot for everything above."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= bound)`` pairs, ending with +inf."""
        out: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


class Event(NamedTuple):
    """One line of the recent-events log."""

    time: float
    kind: str  #: connect, disconnect, fail, timeout, lost, remove, drop, config
    message: str


class FuncDetail(NamedTuple):
    """A func's counts and counters (:meth:`Scheduler.func_details`)."""

    func: bytes
    workers: int  #: connections that registered it
    jobs: int  #: stored jobs, any state (the queue depth)
    due: int  #: pending jobs whose time has come, waiting for a grab slot
    running: int
    locked: int
    next_due: int | None  #: earliest sched_at of a pending job
    oldest_due: int | None  #: sched_at of the oldest due job
    submitted: int  #: counters since start (or since the func was created)
    done: int
    failed: int
    sched_later: int


class ConnInfo(NamedTuple):
    """A registered connection (:meth:`Scheduler.connections`)."""

    id: int
    worker: bool
    identity: bytes | None  #: the registered identity name, if any
    funcs: tuple[bytes, ...]  #: funcs it registered (workers)
    slots: int  #: free grab slots
    running: int  #: confirmed assignments
    unconfirmed: int  #: assignments awaiting JOB_ASSIGNED
    last_seen: float


class LockInfo(NamedTuple):
    """A named lock (:meth:`Scheduler.locks`); entries are (func, name, since)."""

    name: bytes
    max: int
    holders: tuple[tuple[bytes, bytes, float], ...]
    waiting: tuple[tuple[bytes, bytes, float], ...]


class SchedulerStats:
    """Counters, histograms and recent events of one scheduler.

    Per-func counters (submit, done, fail, sched_later) live on the func
    records and are summed on read; the counters of dropped funcs are kept
    here so the totals never go down.  Everything is a plain int or float
    increment on the hot paths.
    """

    __slots__ = (
        "connects",
        "disconnects",
        "events",
        "lateness",
        "lost",
        "removed",
        "retired",
        "runtime",
        "samples",
        "started",
        "timeouts",
    )

    def __init__(self, now: float) -> None:
        self.started = now
        #: dispatch time - sched_at, at each job's first assignment
        self.lateness = Histogram(LATENESS_BUCKETS)
        #: assignment -> WORK_DONE / WORK_FAIL / SCHED_LATER of the same worker
        self.runtime = Histogram(RUNTIME_BUCKETS)
        self.timeouts = 0  #: per-assignment timeouts (treated as fail)
        self.lost = 0  #: running jobs re-queued because their worker went away
        self.removed = 0  #: jobs removed by REMOVE_JOB or HTTP
        self.connects = 0
        self.disconnects = 0
        #: submit, done, fail, sched_later of dropped funcs
        self.retired = [0, 0, 0, 0]
        self.events: deque[Event] = deque(maxlen=_EVENTS_KEPT)
        #: (time, submit, done, fail, sched_later) every 10 s, for the rates
        self.samples: deque[tuple[float, int, int, int, int]] = deque(maxlen=8)

    def event(self, now: float, kind: str, message: str) -> None:
        """Append to the recent-events log (bounded)."""
        self.events.append(Event(now, kind, message))


class Scheduler:
    """Job states, func registry, grab slots, locks and waiters; no I/O.

    :param store: persistence driver; loaded once here.  Running and locked
        jobs come back as pending.
    :param now: current time (``time.time()``).
    :param config: config values overriding the defaults and the stored values
        (operator options win); keys must be known (``CONFIG_DEFAULTS``).
    :param on_shutdown: called (with no reply sent) when a client sends SHUTDOWN.
    :param auth: auth-file rules (docs/security.md); None = no auth.  Replace
        them with :meth:`set_auth`.
    :param max_jobs_per_func: refuse (NO_WORKER) a SUBMIT_JOB, RUN_JOB or
        LOAD that would store more jobs than this for one func; 0 = no limit.

    Not thread-safe: the server's event loop is the only caller.
    """

    def __init__(
        self,
        store: Store,
        now: float,
        *,
        config: Mapping[str, int] | None = None,
        on_shutdown: Callable[[], None] | None = None,
        auth: AuthRules | None = None,
        max_jobs_per_func: int = 0,
    ) -> None:
        if max_jobs_per_func < 0:
            raise ValueError("max_jobs_per_func must be >= 0")
        self._store = store
        # A store that keeps the scheduler's records (MemoryStore) is handed
        # the record itself, and its per-func name tables are the funcs' own
        # index: no second per-job object or slot.  Others get a fresh Job
        # (they encode or copy it at once).
        self._keeps_recs = bool(getattr(store, "keeps_records", False))
        self._save_job: Callable[[Any, JobState], None] = store.save_job
        self._name_table: Callable[[bytes], _NameTable] | None = (
            getattr(store, "name_table", None) if self._keeps_recs else None
        )
        self._on_shutdown = on_shutdown
        self._auth = auth
        self._max_jobs = max_jobs_per_func
        self._auth_tables: dict[tuple[bool, bool, bool], list[_Handler]] = {}
        self._now = now
        # Loading a big store creates millions of objects: no GC pass may scan
        # them meanwhile (each would rescan everything built so far).
        gc_on = gc.isenabled()
        gc.disable()
        try:
            snap = store.load()
            cfg = dict(CONFIG_DEFAULTS)
            for k, v in snap.config.items():
                if k in cfg:
                    cfg[k] = int(v)
            if config:
                for k, v in config.items():
                    if k not in cfg:
                        raise ValueError(f"unknown config key {k!r}")
                    cfg[k] = int(v)
        except BaseException:
            if gc_on:
                gc.enable()
            raise
        self._config = cfg
        self._timeout = 0
        self._assign_wait = 0.0
        self._keepalive = 0
        self._lock_timeout = 0
        self._apply_config()

        t = int(now)
        self._jobs: list[_JobRec | None] = []  # id -> record
        self._free: list[int] = []  # free ids (LIFO keeps ids dense)
        self._funcs: dict[bytes, _Func] = {}
        self._conns: dict[int, _Conn] = {}
        self._wheel = TimerWheel(t)  # future pending jobs, by job id
        self._deadlines = TimerWheel(t)  # confirmed assignments, by assignment id
        self._aslots: list[_Assign | None] = []  # assignment id -> assignment
        self._afree: list[int] = []
        self._awaiting: deque[_Assign] = deque()  # by assign-wait deadline
        self._waiters: dict[bytes, _Waiters] = {}
        self._locks: dict[bytes, _Lock] = {}
        self._hlocks: dict[bytes, set[bytes]] = {}  # handle -> locks held/awaited
        self._next_fast = now + _SWEEP_FAST
        self._next_locked = now + _SWEEP_LOCKED
        self._next_slow = now + _SWEEP_SLOW
        self._tables: dict[bool, list[_Handler]] = {}
        self._stats = SchedulerStats(now)
        self._late = self._stats.lateness  # bound once: hot paths
        self._runtime = self._stats.runtime

        try:
            self._rebuild(snap, t)
        finally:
            del snap
            if len(self._jobs) >= _FREEZE_AT:
                # The records live as long as their jobs: keep them out of
                # every later GC pass (refcounting still frees them).  The
                # daemon freezes after start-up anyway; this spares the passes
                # in between (~0.5 s per million jobs).
                gc.freeze()
            if gc_on:
                gc.enable()

    def _rebuild(self, snap: StoreSnapshot, t: int) -> None:
        """Start-up: index every stored job; future ones go into the wheel, due
        ones into their func's ready queue in (sched_at, name) order; running
        and locked jobs become pending (protocol.md 4.16).  One tight loop
        (the new-job work of _submit inlined)."""
        for func in snap.funcs:
            self._func(func, persist=False)
        store = self._store
        funcs = self._funcs
        recs = self._jobs
        wheel_add = self._wheel.add
        rec_new = _JobRec
        due: list[int] = []
        last = b""
        fs: _Func | None = None
        jobs = _NameTable()
        shared = self._name_table is not None
        cleared: set[bytes] = set()
        for job, state in snap.jobs:
            func, name, workload, when, count, timeout = job
            if fs is None or func != last:
                fs = funcs.get(func) or self._func(func)
                jobs = fs.jobs
                last = func
                if shared and func not in cleared:
                    # the store's table still holds the records the snapshot
                    # was made from (of an earlier scheduler, or the store's
                    # own): this scheduler's records replace them
                    cleared.add(func)
                    jobs.clear()
                if not jobs:
                    fs.name = func  # adopt the store's func bytes
            # one func bytes object per func (fs.name), not one per job
            jid = len(recs)
            rec = rec_new(jid, fs.name, name, workload, when, count, timeout)
            old = jobs.add(rec)
            if old is not None:  # a store should not hold duplicates
                jobs.add(old)  # the first one stays
                continue
            recs.append(rec)
            if state != _PENDING:  # protocol.md 4.16: all jobs pending at start
                store.set_state(func, name, _PENDING)
            if when > t:
                wheel_add(jid, when)
                rec.where = _IN_WHEEL
            else:
                due.append(jid)
        if due:
            self._make_ready(due)  # sorted by (sched_at, name) per func

    # -- connection life cycle ------------------------------------------------

    def connect(
        self,
        conn_id: int,
        client_type: int,
        identity: tuple[bytes, bytes] | None,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        now: float,
    ) -> None:
        """A connection finished registration (client_type 1-4).

        ``send(frame)`` queues encoded frames for it; ``close()`` asks the
        server to drop it (the scheduler has then already forgotten it, so the
        following :meth:`disconnect` is a no-op).

        With auth on, a connection without a valid identity (unknown name,
        wrong token, or none) is not registered: ``close()`` is called at once.
        The server refuses those before registering (:meth:`admit`).
        """
        self._now = now
        old = self._conns.get(conn_id)
        if old is not None:  # the server reuses ids only after disconnect()
            self._drop(old)
        conn = _Conn(conn_id, client_type in _WORKER_TYPES, identity, send, close, now)
        if self._auth is not None:
            ident = self._authenticate(identity)
            if ident is None:
                close()
                return
            conn.auth = ident
        conn.table = self._table_for(conn)
        self._conns[conn_id] = conn
        self._stats.connects += 1
        kind = "worker" if conn.worker else "client"
        who = f" as {_show(identity[0])}" if identity is not None else ""
        self._stats.event(now, "connect", f"{kind} {conn_id} connected{who}")

    def disconnect(self, conn_id: int, now: float) -> None:
        """The connection is gone: clean-up of protocol.md 4.8.  Idempotent."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._now = now
            self._drop(conn)

    # -- authentication ---------------------------------------------------------

    @property
    def auth(self) -> AuthRules | None:
        """The auth rules in force (None: auth off)."""
        return self._auth

    def admit(
        self, client_type: int, identity: tuple[bytes, bytes] | None
    ) -> str | None:
        """Why a registration must be refused (the server closes the
        connection without a reply), or None to accept it.

        Auth off: everything is accepted (an identity is ignored).  Auth on:
        the identity must exist and carry its token; a registration without
        identity (types 1, 2) is refused.  A role that does not fit the
        connection type is *not* refused here: every command then gets
        NO_WORKER, as in the reference (protocol.md 5.3).
        """
        if self._auth is None:
            return None
        if identity is None:
            return f"no identity (type {client_type}) and auth is on"
        if self._authenticate(identity) is None:
            name = identity[0].decode("utf-8", "replace")
            return f"unknown identity or wrong token for {name!r}"
        return None

    def _authenticate(self, identity: tuple[bytes, bytes] | None) -> Identity | None:
        auth = self._auth
        if auth is None or identity is None:
            return None
        return auth.authenticate(identity[0], identity[1])

    def set_auth(self, rules: AuthRules | None, now: float) -> list[int]:
        """New auth rules (the auth file was reloaded); returns the ids of the
        connections closed because of them.

        Live connections are checked again: one whose identity is gone or
        whose token changed is closed (``close()``); the others get the new
        role and func rules, and funcs they may no longer use are
        unregistered (like CANT_DO).  ``None`` turns auth off.
        """
        self._now = now
        self._auth = rules
        self._auth_tables.clear()
        closed: list[int] = []
        for conn in list(self._conns.values()):
            if rules is None:
                conn.auth = None
            else:
                ident = self._authenticate(conn.identity)
                if ident is None:
                    closed.append(conn.id)
                    self._kill(conn)
                    continue
                conn.auth = ident
                fits = ident.may_connect_as(conn.worker)
                for func in [
                    f for f in conn.funcs if not fits or not ident.func_allowed(f)
                ]:
                    fs = conn.funcs.pop(func)
                    fs.workers -= 1
                    fs.avail.pop(conn, None)
            conn.table = self._table_for(conn)
        return closed

    # -- input ----------------------------------------------------------------

    def handle(
        self, conn_id: int, msgid: int, command: int, payload: bytes, now: float
    ) -> None:
        """One request frame from a registered connection.

        Replies and pushes go out through the connections' ``send``.  Raises a
        :class:`~periodic_fast.errors.ProtocolError` for a malformed payload
        (the server closes that connection).  Frames for unknown (already
        dropped) connections are ignored.
        """
        conn = self._conns.get(conn_id)
        if conn is None:
            return
        self._now = now
        conn.last_seen = now
        # 256 entries: codes 35-255 raise UnknownCommand (``command`` is a u8)
        conn.table[command](conn, msgid, payload)

    # -- time -----------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Advance time: due jobs, assign-wait, per-assignment timeouts,
        waiter expiry, lock sweeps, idle connections."""
        self._now = now
        t = int(now)
        ids = self._wheel.advance(t, _WHEEL_BATCH)
        if ids:
            self._make_ready(ids)

        awaiting = self._awaiting
        while awaiting and awaiting[0].deadline <= now:
            a = awaiting.popleft()
            if a.waiting and a.conn.alive:
                # no confirmation: the reference assumes a broken worker;
                # _drop re-queues this and every other assignment of it
                self._kill(a.conn)

        # advanced every tick (cheap when nothing is due) so new deadlines land
        # in the wheel's low levels
        for aid in self._deadlines.advance(t):
            a2 = self._aslots[aid]
            self._aslots[aid] = None
            self._afree.append(aid)
            if a2 is None:  # pragma: no cover - cancelled entries leave the wheel
                continue
            a2.aid = -1
            rec = a2.rec
            running = a2.conn.running
            if running.get(rec.key) is a2:
                del running[rec.key]
            if a2.epoch == rec.epoch:  # treated like WORK_FAIL (4.7)
                rec.run -= 1
                self._stats.timeouts += 1
                self._stats.event(
                    now,
                    "timeout",
                    f"{_show_key(rec.key)} timed out on connection {a2.conn.id}",
                )
                self._fail(rec.key, rec)

        if now >= self._next_fast:
            self._next_fast = now + _SWEEP_FAST
            self._sweep_fast(now)
        if now >= self._next_locked:
            self._next_locked = now + _SWEEP_LOCKED
            self._sweep_locked()
        if now >= self._next_slow:
            self._next_slow = now + _SWEEP_SLOW
            self._sweep_slow(now)

    def next_wakeup(self) -> float | None:
        """Earliest time at which :meth:`tick` has work.

        Never None in practice: the periodic sweeps are always scheduled.
        """
        best = min(self._next_fast, self._next_locked, self._next_slow)
        nd = self._wheel.next_due()
        if nd is not None and nd < best:
            best = float(nd)
        nd = self._deadlines.next_due()
        if nd is not None and nd < best:
            best = float(nd)
        awaiting = self._awaiting
        while awaiting and not awaiting[0].waiting:
            awaiting.popleft()  # resolved: drop now so the wake-up is exact
        if awaiting:
            d = awaiting[0].deadline
            if d < best:
                best = d
        return best

    # -- introspection --------------------------------------------------------

    def status(self, now: float) -> list[FuncStat]:
        """One :class:`FuncStat` per known func, sorted by func (protocol.md 2.4)."""
        t = int(now)
        return [self._stat(self._funcs[name], t) for name in sorted(self._funcs)]

    def func_stat(self, func: bytes, now: float) -> FuncStat | None:
        """The STATUS line of one func, or None when it is unknown."""
        fs = self._funcs.get(func)
        return None if fs is None else self._stat(fs, int(now))

    @staticmethod
    def _stat(fs: _Func, t: int) -> FuncStat:
        at = fs.jobs.min_sched_at(_PENDING)
        return FuncStat(
            fs.name,
            fs.workers,
            len(fs.jobs),
            fs.n_running,
            fs.n_locked,
            t if at is None else at,
        )

    def get_config(self, key: str) -> int:
        """Current value of a config key (0 for unknown keys)."""
        return self._config.get(key, 0)

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

    @property
    def connection_count(self) -> int:
        """Live registered connections."""
        return len(self._conns)

    @property
    def store(self) -> Store:
        """The store this scheduler writes to (the server holds replies
        behind its durability barrier when ``store.deferred``)."""
        return self._store

    @property
    def stats(self) -> SchedulerStats:
        """Histograms, event log and global counters (read-only use)."""
        return self._stats

    def _totals(self) -> tuple[int, int, int, int]:
        """submit, done, fail, sched_later since start, every func included."""
        s, d, f, la = self._stats.retired
        for fs in self._funcs.values():
            s += fs.n_submit
            d += fs.n_done
            f += fs.n_fail
            la += fs.n_later
        return s, d, f, la

    def counters(self) -> dict[str, int]:
        """Monotonic totals since start: submit, done, fail, sched_later,
        timeout, lost, removed, connects, disconnects."""
        s, d, f, la = self._totals()
        st = self._stats
        return {
            "submit": s,
            "done": d,
            "fail": f,
            "sched_later": la,
            "timeout": st.timeouts,
            "lost": st.lost,
            "removed": st.removed,
            "connects": st.connects,
            "disconnects": st.disconnects,
        }

    def rates(self, now: float) -> dict[str, float]:
        """submit, done, fail and sched_later per minute over about the last
        minute (counter samples are taken every 10 s by :meth:`tick`)."""
        current = self._totals()
        base: tuple[float, int, int, int, int] = (self._stats.started, 0, 0, 0, 0)
        for sample in self._stats.samples:  # oldest first
            if sample[0] > now - _RATE_WINDOW:
                break
            base = sample
        scale = 60.0 / max(now - base[0], _RATE_WINDOW)
        keys = ("submit", "done", "fail", "sched_later")
        return {
            k: (c - b) * scale for k, c, b in zip(keys, current, base[1:], strict=True)
        }

    def func_details(self, now: float) -> list[FuncDetail]:
        """Every known func with its counts and counters, sorted by name.

        Costs a pass over each func's jobs (like :meth:`status`)."""
        out = []
        for name in sorted(self._funcs):
            fs = self._funcs[name]
            oldest: int | None = None
            seen = 0
            for rec in fs.ready:  # about oldest first: look at the head only
                if rec.where == _READY and rec.state == _PENDING:
                    at = rec.sched_at
                    if oldest is None or at < oldest:
                        oldest = at
                    seen += 1
                    if seen >= 64:
                        break
            out.append(
                FuncDetail(
                    name,
                    fs.workers,
                    len(fs.jobs),
                    fs.n_ready,
                    fs.n_running,
                    fs.n_locked,
                    fs.jobs.min_sched_at(_PENDING),
                    oldest,
                    fs.n_submit,
                    fs.n_done,
                    fs.n_fail,
                    fs.n_later,
                )
            )
        return out

    def connections(self) -> list[ConnInfo]:
        """Every registered connection, by id."""
        return [
            ConnInfo(
                c.id,
                c.worker,
                c.identity[0] if c.identity is not None else None,
                tuple(c.funcs),
                len(c.slots),
                len(c.running),
                len(c.unconfirmed),
                c.last_seen,
            )
            for _, c in sorted(self._conns.items())
        ]

    def locks(self) -> list[LockInfo]:
        """Every named lock with its holders and its queue, by name."""

        def entries(d: dict[bytes, float]) -> tuple[tuple[bytes, bytes, float], ...]:
            out = []
            for key, since in d.items():
                n = key[0]
                out.append((key[1 : 1 + n], key[2 + n :], since))
            return tuple(out)

        return [
            LockInfo(lk.name, lk.max, entries(lk.holders), entries(lk.queue))
            for _, lk in sorted(self._locks.items())
        ]

    # -- writes from outside a connection (the HTTP API) ----------------------------

    def submit(self, job: Job, now: float) -> bool:
        """Submit or update ``job`` exactly as SUBMIT_JOB does (a running job
        is left alone).  False when ``max_jobs_per_func`` refuses a new job.

        Raises ValueError for a field the wire format cannot carry.  The
        caller waits for ``store.on_durable`` before it reports success.
        """
        func, name = job.func, job.name
        if not 0 < len(func) <= 255 or not 0 < len(name) <= 255:
            raise ValueError("func and name must be 1 to 255 bytes")
        if not -(1 << 63) <= job.sched_at <= _I64_MAX:
            raise ValueError("sched_at out of range")
        if not (_I32_MIN <= job.count <= _I32_MAX and 0 <= job.timeout <= _I32_MAX):
            raise ValueError("count or timeout out of range")
        self._now = now
        if self._max_jobs:
            fs = self._funcs.get(func)
            if (
                fs is not None
                and name not in fs.jobs
                and len(fs.jobs) >= self._max_jobs
            ):
                return False
        self._submit(job)
        return True

    def remove(self, func: bytes, name: bytes, now: float) -> bool:
        """REMOVE_JOB for ``(func, name)``; False when there is no such job."""
        self._now = now
        if len(func) > 255 or len(name) > 255:
            return False
        return self._remove(_key(func, name))

    def drop_func(
        self, func: bytes, now: float
    ) -> Literal["dropped", "busy", "unknown"]:
        """DROP_FUNC: ``"busy"`` (nothing done) while workers serve ``func``."""
        self._now = now
        return self._drop_func(func)

    # -- role check (the auth issue hooks in here) ----------------------------------

    def _allowed(self, conn: _Conn, command: int) -> bool:
        """May ``conn`` send ``command`` at all (protocol.md 5.3)?

        Without an auth file: client-role connections may not send
        worker-class commands.  With one: the identity's role must fit the
        connection (else nothing is allowed); admins may send everything;
        others follow the class rule and may not send :data:`ADMIN_COMMANDS`.
        Func and job-ownership checks are done per request (wrappers).
        """
        ident = conn.auth
        if ident is not None:
            if not ident.may_connect_as(conn.worker):
                return False
            if ident.role is _ADMIN:
                return True
            if command in ADMIN_COMMANDS:
                return False
        return conn.worker or command not in WORKER_COMMANDS

    def _table_for(self, conn: _Conn) -> list[_Handler]:
        """The per-connection dispatch table: command code -> handler.

        Tables depend only on the connection role and (auth on) on the
        identity's role, so they are shared; per-identity func lists are read
        from ``conn.auth`` by the wrappers.
        """
        ident = conn.auth
        if ident is None:
            table = self._tables.get(conn.worker)
            if table is None:
                table = [
                    h
                    if c > MAX_COMMAND or self._allowed(conn, c)
                    else self._make_reject(c)
                    for c, h in enumerate(self._handlers())
                ]
                self._tables[conn.worker] = table
            return table
        admin = ident.role is _ADMIN
        key = (conn.worker, admin, ident.may_connect_as(conn.worker))
        table = self._auth_tables.get(key)
        if table is None:
            table = []
            for c, h in enumerate(self._handlers()):
                if c > MAX_COMMAND:
                    table.append(h)
                elif not self._allowed(conn, c):
                    table.append(self._make_reject(c))
                elif c in _OWNED:
                    table.append(self._make_owned(c, h))
                elif admin:
                    table.append(h)
                elif c in _FUNC_CHECKED:
                    table.append(self._make_func_checked(c, h))
                elif c == _STATUS:
                    table.append(self._h_status_filtered)
                else:
                    table.append(h)
            self._auth_tables[key] = table
        return table

    def _handlers(self) -> list[_Handler]:
        t: list[_Handler] = [self._make_ignore(c) for c in range(MAX_COMMAND + 1)]
        t += [self._make_unknown(c) for c in range(MAX_COMMAND + 1, 256)]
        t[_GRAB_JOB] = self._h_grab_job
        t[_SCHED_LATER] = self._h_sched_later
        t[_WORK_DONE] = self._h_work_done
        t[_WORK_FAIL] = self._h_work_fail
        t[_CAN_DO] = self._h_can_do
        t[_CANT_DO] = self._h_cant_do
        t[_PING] = self._h_ping
        t[_SLEEP] = self._h_sleep
        t[_UNKNOWN] = self._h_unknown
        t[_SUBMIT_JOB] = self._h_submit_job
        t[_STATUS] = self._h_status
        t[_DROP_FUNC] = self._h_drop_func
        t[_REMOVE_JOB] = self._h_remove_job
        t[_DUMP] = self._h_dump
        t[_LOAD] = self._h_load
        t[_SHUTDOWN] = self._h_shutdown
        t[_BROADCAST] = self._h_broadcast
        t[_CONFIG_GET] = self._h_config_get
        t[_CONFIG_SET] = self._h_config_set
        t[_RUN_JOB] = self._h_run_job
        t[_ACQUIRE] = self._h_acquire
        t[_RELEASE] = self._h_release
        t[_RECV_DATA] = self._h_recv_data
        t[_WORK_DATA] = self._h_work_data
        t[_JOB_ASSIGNED] = self._h_job_assigned
        t[_JOB_UNASSIGNED] = self._h_job_unassigned
        if self._max_jobs:
            t[_SUBMIT_JOB] = self._make_limited(_SUBMIT_JOB, t[_SUBMIT_JOB])
            t[_RUN_JOB] = self._make_limited(_RUN_JOB, t[_RUN_JOB])
            t[_LOAD] = self._make_load_limited(t[_LOAD])
        return t

    # -- wrappers: job limit, auth (installed only when configured) -----------------

    def _make_limited(self, command: int, inner: _Handler) -> _Handler:
        """SUBMIT_JOB / RUN_JOB: a new job beyond ``max_jobs_per_func`` of its
        func gets NO_WORKER and changes nothing."""
        limit = self._max_jobs
        funcs = self._funcs

        def limited(conn: _Conn, msgid: int, payload: bytes) -> None:
            name: bytes | None
            try:
                n = payload[0]
                name = payload[2 + n : 2 + n + payload[1 + n]]
            except IndexError:  # malformed: the handler closes the connection
                name = None
            if name is not None:
                fs = funcs.get(payload[1 : 1 + n])
                if fs is not None and name not in fs.jobs and len(fs.jobs) >= limit:
                    decode_job(payload)  # a malformed payload still closes
                    conn.send(encode_response(msgid, _NO_WORKER))
                    return
            inner(conn, msgid, payload)

        return limited

    def _make_load_limited(self, inner: _Handler) -> _Handler:
        """LOAD: refused as a whole (NO_WORKER, nothing stored) when any func
        would end up with more than ``max_jobs_per_func`` jobs."""
        limit = self._max_jobs

        def limited(conn: _Conn, msgid: int, payload: bytes) -> None:
            new: dict[bytes, set[bytes]] = {}
            for job in decode_job_list(payload):
                fs = self._funcs.get(job.func)
                if fs is None or job.name not in fs.jobs:
                    new.setdefault(job.func, set()).add(job.name)
            for func, names in new.items():
                fs = self._funcs.get(func)
                if len(names) + (len(fs.jobs) if fs is not None else 0) > limit:
                    conn.send(encode_response(msgid, _NO_WORKER))
                    return
            inner(conn, msgid, payload)

        return limited

    @staticmethod
    def _make_func_checked(command: int, inner: _Handler) -> _Handler:
        """Auth on, non-admin: the func named by the request must be in the
        identity's list, else NO_WORKER (protocol.md 5.3)."""

        def checked(conn: _Conn, msgid: int, payload: bytes) -> None:
            ident = conn.auth
            assert ident is not None
            if command == _LOAD:
                jobs = decode_job_list(payload)  # malformed: close
                allowed = all(ident.func_allowed(job.func) for job in jobs)
            elif payload and payload[0] < len(payload):
                # every other checked payload starts with str8(func); the
                # handler decodes (and refuses) the whole payload
                allowed = ident.func_allowed(payload[1 : 1 + payload[0]])
            else:
                allowed = False
            if allowed:
                inner(conn, msgid, payload)
            else:
                decode_payload(command, payload)  # a malformed payload closes
                conn.send(encode_response(msgid, _NO_WORKER))

        return checked

    @staticmethod
    def _make_owned(command: int, inner: _Handler) -> _Handler:
        """Auth on: WORK_DONE, WORK_FAIL, SCHED_LATER, WORK_DATA, ACQUIRE and
        RELEASE only for a job assigned to this connection, else NO_WORKER
        (stricter than the reference, which lets any worker end any job)."""

        def owned(conn: _Conn, msgid: int, payload: bytes) -> None:
            if command in (_ACQUIRE, _RELEASE):
                fields = decode_payload(command, payload)  # malformed: close
                key = _key(fields[-2], fields[-1])
            else:  # the payload starts with the handle
                key = payload[: _handle_end(payload)]
            if key in conn.running or any(
                a.rec.key == key for a in conn.unconfirmed.values()
            ):
                inner(conn, msgid, payload)  # decodes the whole payload
            else:
                decode_payload(command, payload)  # a malformed payload closes
                conn.send(encode_response(msgid, _NO_WORKER))

        return owned

    def _h_status_filtered(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        """STATUS for a non-admin identity: only the funcs it may use."""
        if payload:
            raise TrailingBytes("STATUS carries no payload")
        ident = conn.auth
        assert ident is not None
        stats = [s for s in self.status(self._now) if ident.func_allowed(s.func)]
        conn.send(encode_response(msgid, _DATA, encode_status(stats)))

    # -- handlers: (conn, msgid, payload); self._now is the current time ------------

    @staticmethod
    def _make_reject(command: int) -> _Handler:
        def reject(conn: _Conn, msgid: int, payload: bytes) -> None:
            # a malformed payload still closes the connection, as in the
            # reference (it decodes the whole frame before the role check)
            decode_payload(command, payload)
            conn.send(encode_response(msgid, _NO_WORKER))

        return reject

    @staticmethod
    def _make_unknown(command: int) -> _Handler:
        def unknown(conn: _Conn, msgid: int, payload: bytes) -> None:
            raise UnknownCommand(f"unknown command {command}")

        return unknown

    @staticmethod
    def _make_ignore(command: int) -> _Handler:
        def ignore(conn: _Conn, msgid: int, payload: bytes) -> None:
            decode_payload(command, payload)  # undecodable: close

        return ignore

    def _h_ping(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("PING carries no payload")
        conn.send(encode_response(msgid, _PONG))

    def _h_sleep(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("SLEEP carries no payload")
        conn.send(encode_response(msgid, _NOOP))

    def _h_unknown(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("UNKNOWN carries no payload")
        conn.send(encode_response(msgid, _UNKNOWN))

    def _h_submit_job(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        self._submit(decode_job(payload))
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_run_job(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        job = decode_job(payload)
        fs = self._funcs.get(job.func)
        if fs is None or not fs.workers:
            conn.send(encode_response(msgid, _NO_WORKER))
            return
        key = payload[: 2 + len(job.func) + len(job.name)]
        self._add_waiter(key, conn, msgid, job.timeout, True)
        # a running handle is not resubmitted: the caller waits for that run
        self._submit(job)

    def _h_recv_data(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        job = decode_job(payload)
        fs = self._funcs.get(job.func)
        if fs is None or not fs.workers:
            conn.send(encode_response(msgid, _NO_WORKER))
            return
        key = payload[: 2 + len(job.func) + len(job.name)]
        self._add_waiter(key, conn, msgid, job.timeout, False)
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_status(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("STATUS carries no payload")
        conn.send(encode_response(msgid, _DATA, encode_status(self.status(self._now))))

    def _h_drop_func(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        self._drop_func(_str8(payload))
        conn.send(encode_response(msgid, _SUCCESS))

    def _drop_func(self, func: bytes) -> Literal["dropped", "busy", "unknown"]:
        """DROP_FUNC: forget ``func`` and its jobs unless workers serve it."""
        fs = self._funcs.get(func)
        if fs is None:
            return "unknown"
        if fs.workers:
            return "busy"
        hlocks = self._hlocks
        for rec in fs.jobs.values():
            self._delete(rec, persist=False)
            if hlocks:
                key = rec.key
                if key in hlocks:
                    self._release_all(key)
        del self._funcs[func]
        self._store.delete_func_jobs(func)
        self._store.delete_func(func)
        stats = self._stats
        retired = stats.retired
        retired[0] += fs.n_submit
        retired[1] += fs.n_done
        retired[2] += fs.n_fail
        retired[3] += fs.n_later
        stats.event(self._now, "drop", f"func {_show(func)} dropped")
        return "dropped"

    def _h_remove_job(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        key = _exact_handle(payload)
        self._remove(key)
        conn.send(encode_response(msgid, _SUCCESS))

    def _remove(self, key: bytes) -> bool:
        """REMOVE_JOB: end the job (waiters get "removed"); True if it existed."""
        rec = self._lookup(key)
        self._finish(key, rec, RESULT_REMOVED)
        if rec is None:
            return False
        self._stats.removed += 1
        self._stats.event(self._now, "remove", f"{_show_key(key)} removed")
        return True

    def _h_dump(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("DUMP carries no payload")
        data = encode_job_list(self.jobs())
        conn.send(encode_response(msgid, _DATA, data))

    def _h_load(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        jobs = decode_job_list(payload)
        for job in jobs:  # all funcs first (protocol.md 3.2)
            if job.func not in self._funcs:
                self._func(job.func)
        for job in jobs:
            self._submit(job)
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_shutdown(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("SHUTDOWN carries no payload")
        if self._on_shutdown is not None:
            self._on_shutdown()  # no reply (protocol.md 3.2)

    def _h_config_get(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        key = _str8(payload).decode("latin-1")
        value = self._config.get(key, 0)
        conn.send(encode_response(msgid, _CONFIG, _U32.pack(value & 0xFFFFFFFF)))

    def _h_config_set(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        raw_key, value = decode_payload(_CONFIG_SET, payload)
        key = raw_key.decode("latin-1")
        if key in self._config:  # unknown keys: ignored, still SUCCESS
            self._config[key] = value
            self._apply_config()
            self._store.save_config(key, value)
            self._stats.event(self._now, "config", f"{key} set to {value}")
        conn.send(encode_response(msgid, _SUCCESS))

    # worker commands ---------------------------------------------------------

    def _h_can_do(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        self._register(conn, _str8(payload), False)
        conn.send(encode_response(msgid, _SUCCESS))
        self._pump_conn(conn)

    def _h_broadcast(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        self._register(conn, _str8(payload), True)
        conn.send(encode_response(msgid, _SUCCESS))
        self._pump_conn(conn)

    def _h_cant_do(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        fs = conn.funcs.pop(_str8(payload), None)
        if fs is not None:
            fs.workers -= 1
            fs.avail.pop(conn, None)
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_grab_job(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("GRAB_JOB carries no payload")
        slots = conn.slots
        # duplicates are ignored (AIO re-sends); a msgid awaiting confirmation
        # gets no slot (protocol.md 4.5 rule 6)
        new = msgid not in slots and msgid not in conn.unconfirmed
        if new:
            slots[msgid] = None
        conn.send(encode_response(msgid, _SUCCESS))
        if new and len(slots) == 1:
            # 0 -> 1 free slot: the conn re-enters every func's avail set
            for fs in conn.funcs.values():
                fs.avail[conn] = None
                if fs.n_ready:
                    self._pump(fs)
                    if not slots:
                        break

    def _h_job_assigned(self, conn: _Conn, msgid: int, payload: bytes) -> None:
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

    def _h_job_unassigned(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("JOB_UNASSIGNED carries no payload")
        a = conn.unconfirmed.pop(msgid, None)
        if a is not None:
            a.waiting = False
            self._unassign(a)

    def _h_work_done(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        end = _handle_end(payload)
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
            v = self._now - a.at
            h.counts[bisect_left(h.bounds, v)] += 1
            h.sum += v
        # delete whatever the state, whoever holds it (quirk kept, 3.3)
        rec = self._lookup(key)
        if rec is not None:
            self._funcs[rec.func].n_done += 1
        if self._waiters or self._hlocks:
            self._finish(key, rec, payload[end:])
        elif rec is not None:
            self._delete(rec)
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_work_fail(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        key = _exact_handle(payload)
        a = conn.running.pop(key, None)
        if a is not None:
            self._cancel_deadline(a)
            self._end_assignment(a)
            self._runtime.observe(self._now - a.at)
        rec = self._lookup(key)
        if rec is not None:
            self._funcs[rec.func].n_fail += 1
            self._stats.event(
                self._now, "fail", f"{_show_key(key)} failed (connection {conn.id})"
            )
        self._fail(key, rec)
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_sched_later(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        end = _handle_end(payload)
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
            self._runtime.observe(self._now - a.at)
        if self._hlocks and key in self._hlocks:
            self._release_all(key)
        rec = self._lookup(key)
        if rec is not None:
            self._funcs[rec.func].n_later += 1
        w = self._waiters.get(key)
        if w is not None and w.results:
            self._finish(key, rec, RESULT_FAILED)
        elif rec is not None and rec.state == _RUNNING:
            t = int(self._now)
            when = t + delay
            if when < t:
                when = t
            elif when > _I64_MAX:
                when = _I64_MAX
            count = rec.count + step
            if count > _I32_MAX:
                count = _I32_MAX
            elif count < _I32_MIN:
                count = _I32_MIN
            self._requeue(rec, when, count)
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_work_data(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        end = _handle_end(payload)
        w = self._waiters.get(payload[:end])
        if w is not None and w.streams:
            chunk = payload[end:]
            for c, m in w.streams:
                if c.alive:
                    c.send(encode_response(m, _DATA, chunk))
        conn.send(encode_response(msgid, _SUCCESS))

    def _h_acquire(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        lock, count, func, name = decode_payload(_ACQUIRE, payload)
        granted = self._acquire(lock, count, _key(func, name))
        conn.send(encode_response(msgid, _ACQUIRED, _GRANTED if granted else _REFUSED))

    def _h_release(self, conn: _Conn, msgid: int, payload: bytes) -> None:
        lock, func, name = decode_payload(_RELEASE, payload)
        self._release(lock, _key(func, name))
        conn.send(encode_response(msgid, _SUCCESS))

    # -- config ---------------------------------------------------------------

    def _apply_config(self) -> None:
        cfg = self._config
        # a u32 on the wire, but JOB_ASSIGN carries it in the job's i32 field
        self._timeout = min(cfg["timeout"], 0x7FFFFFFF)
        self._assign_wait = float(cfg["assign-wait"])
        self._keepalive = cfg["keepalive"]
        self._lock_timeout = cfg["lock-timeout"]

    # -- funcs ----------------------------------------------------------------

    def _func(self, name: bytes, persist: bool = True) -> _Func:
        """The func record, created (and persisted as known) on first use."""
        fs = self._funcs.get(name)
        if fs is None:
            table = self._name_table
            jobs = _NameTable() if table is None else table(name)
            fs = self._funcs[name] = _Func(name, jobs)
            if persist:
                self._store.save_func(name)
        return fs

    def _register(self, conn: _Conn, func: bytes, broadcast: bool) -> None:
        if func in conn.funcs:
            return  # a second registration on one connection is a no-op
        fs = self._func(func)
        conn.funcs[func] = fs
        fs.workers += 1
        fs.broadcast = broadcast
        if conn.slots:
            fs.avail[conn] = None

    def _pump_conn(self, conn: _Conn) -> None:
        """After a registration: dispatch to the conn's free slots."""
        if conn.slots:
            for fs in conn.funcs.values():
                if fs.n_ready and fs.avail:
                    self._pump(fs)
                    if not conn.slots:
                        break

    # -- jobs -----------------------------------------------------------------

    def _lookup(self, key: bytes) -> _JobRec | None:
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
                rec = _JobRec(jid, fs.name, name, workload, sched_at, count, timeout)
                self._jobs[jid] = rec
            else:
                jid = len(self._jobs)
                rec = _JobRec(jid, fs.name, name, workload, sched_at, count, timeout)
                self._jobs.append(rec)
            fs.jobs.add(rec)
            fs.n_submit += 1
            self._save_job(rec if self._keeps_recs else rec.job, _PENDING)
            if sched_at > t:
                self._wheel.add(rec.id, sched_at)
                rec.where = _IN_WHEEL
            else:
                rec.where = _READY
                fs.n_ready += 1
                fs.ready.append(rec)
                if fs.avail:
                    self._pump(fs)
            return
        else:
            fs.n_submit += 1
            state = rec.state
            if state == _RUNNING:
                return  # ignored; the running instance continues
            # latest version is what gets dispatched
            rec.workload = workload
            rec.sched_at = sched_at
            rec.count = count
            rec.timeout = timeout
            if state == _LOCKED:
                rec.state = _PENDING
                fs.n_locked -= 1
            rec.repend()  # new epoch: no assignment of it yet
        self._save_job(rec if self._keeps_recs else rec.job, _PENDING)
        self._place(rec, t)

    def _place(self, rec: _JobRec, t: int) -> None:
        """Put a pending job where it belongs: wheel (future) or ready (due)."""
        when = rec.sched_at
        if when > t:
            if rec.where == _READY:
                self._funcs[rec.func].n_ready -= 1  # its deque entry goes stale
            self._wheel.add(rec.id, when)
            rec.where = _IN_WHEEL
        else:
            self._to_ready(rec, False)

    def _to_ready(self, rec: _JobRec, front: bool) -> None:
        fs = self._funcs[rec.func]
        where = rec.where
        if where != _READY:
            if where == _IN_WHEEL:
                self._wheel.cancel(rec.id)
            rec.where = _READY
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

    def _compact(self, fs: _Func) -> None:
        seen: set[int] = set()
        live: deque[_JobRec] = deque()
        for rec in fs.ready:
            if rec.where == _READY and rec.id not in seen and rec.state == _PENDING:
                seen.add(rec.id)
                live.append(rec)
        fs.ready = live

    def _make_ready(self, ids: list[int]) -> None:
        """Wheel output: group per func, sort each batch by (sched_at, name)."""
        jobs = self._jobs
        if len(ids) == 1:
            rec = jobs[ids[0]]
            if rec is not None:
                rec.where = _NOWHERE
                self._to_ready(rec, False)
            return
        groups: dict[_Func, list[_JobRec]] = {}
        funcs = self._funcs
        for jid in ids:
            rec = jobs[jid]
            if rec is None:  # pragma: no cover - deleted jobs leave the wheel
                continue
            rec.where = _NOWHERE
            fs = funcs[rec.func]
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
                rec.where = _READY
                ready.append(rec)
            fs.n_ready += len(batch)
            if len(ready) > 2 * fs.n_ready + 64:
                self._compact(fs)
            if fs.avail:
                self._pump(fs)

    def _requeue(self, rec: _JobRec, sched_at: int, count: int) -> None:
        """A running job goes back to pending, due at ``sched_at`` with run
        count ``count`` (fail, later)."""
        fs = self._funcs[rec.func]
        rec.state = _PENDING
        fs.n_running -= 1
        rec.repend()  # new epoch: no assignment of it yet
        rec.sched_at = sched_at
        rec.count = count
        self._save_job(rec if self._keeps_recs else rec.job, _PENDING)
        self._place(rec, int(self._now))

    def _repend_now(self, rec: _JobRec, front: bool) -> None:
        """Running or locked -> pending, dispatchable at once (sched_at kept)."""
        fs = self._funcs[rec.func]
        if rec.state == _RUNNING:
            fs.n_running -= 1
        elif rec.state == _LOCKED:
            fs.n_locked -= 1
        rec.state = _PENDING
        rec.repend()  # new epoch: no assignment of it yet
        self._store.set_state(rec.func, rec.name, _PENDING)
        self._to_ready(rec, front)

    def _delete(self, rec: _JobRec, persist: bool = True) -> None:
        fs = self._funcs[rec.func]
        state = rec.state
        if state == _RUNNING:
            fs.n_running -= 1
        elif state == _LOCKED:
            fs.n_locked -= 1
        where = rec.where
        if where == _IN_WHEEL:
            self._wheel.cancel(rec.id)
        elif where == _READY:
            fs.n_ready -= 1
        rec.where = _NOWHERE
        rec.state = _DEAD
        rec.epoch = -1  # every assignment of it is stale now
        fs.jobs.pop(rec.name)
        self._jobs[rec.id] = None
        self._free.append(rec.id)
        if persist:
            self._store.delete_job(fs.name, rec.name)

    def _finish(self, key: bytes, rec: _JobRec | None, result: bytes) -> None:
        """The job ends: delete it, release its locks, EOF to streams, then
        ``result`` to result waiters (WORK_DONE, removed, expired, failed)."""
        if rec is not None:
            self._delete(rec)
        if self._hlocks and key in self._hlocks:
            self._release_all(key)
        if self._waiters:
            w = self._waiters.pop(key, None)
            if w is not None:
                for c, m in w.streams:
                    if c.alive:
                        c.send(encode_response(m, _DATA, STREAM_EOF))
                for c, m in w.results:
                    if c.alive:
                        c.send(encode_response(m, _DATA, result))

    def _fail(self, key: bytes, rec: _JobRec | None) -> None:
        """WORK_FAIL semantics (also timeouts and lost workers, 4.7-4.8)."""
        if self._hlocks and key in self._hlocks:
            self._release_all(key)
        w = self._waiters.get(key) if self._waiters else None
        if w is not None and w.results:
            self._finish(key, rec, RESULT_FAILED)
        elif rec is not None and rec.state == _RUNNING:
            self._requeue(rec, int(self._now) + 1, rec.count)

    # -- dispatch -------------------------------------------------------------

    def _pump(self, fs: _Func) -> None:
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
            if rec.where != _READY:
                continue  # stale entry
            rec.where = _NOWHERE
            fs.n_ready -= 1
            if fs.broadcast:
                self._assign_all(fs, rec)
                continue
            msgid = slots.popitem()[0]  # most recent first
            del avail[conn]
            if slots:
                avail[conn] = None  # to the back: round robin
            self._assign(conn, msgid, rec)

    def _assign_all(self, fs: _Func, rec: _JobRec) -> None:
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

    def _assign(self, conn: _Conn, msgid: int, rec: _JobRec) -> None:
        func = rec.func
        name = rec.name
        sched_at = rec.sched_at
        now = self._now
        if rec.state == _PENDING:  # broadcast: only the first assignment
            rec.state = _RUNNING
            self._funcs[rec.func].n_running += 1
            self._store.set_state(func, name, _RUNNING)
            h = self._late  # Histogram.observe, inlined (hot path)
            v = now - sched_at
            h.counts[bisect_left(h.bounds, v)] += 1
            h.sum += v
        rec.run += 1
        wait = self._assign_wait
        if wait > 0:
            a = _Assign(conn, msgid, rec, True, now + wait, now)
            conn.unconfirmed[msgid] = a
            self._awaiting.append(a)
        else:
            # extension: assign-wait 0 = accepted on send
            self._confirm(_Assign(conn, msgid, rec, False, 0.0, now))
        timeout = rec.timeout
        if timeout <= 0:  # JOB_ASSIGN carries the effective timeout
            timeout = self._timeout
        job = _new(Job, (func, name, rec.workload, sched_at, rec.count, timeout))
        conn.send(encode_response(msgid, _JOB_ASSIGN, encode_job(job)))

    def _confirm(self, a: _Assign) -> None:
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
        self._deadlines.add(aid, int(self._now) + timeout + 1)

    def _cancel_deadline(self, a: _Assign) -> None:
        aid = a.aid
        if aid >= 0:
            self._deadlines.cancel(aid)
            self._aslots[aid] = None
            self._afree.append(aid)
            a.aid = -1

    def _end_assignment(self, a: _Assign) -> None:
        rec = a.rec
        if a.epoch == rec.epoch:
            rec.run -= 1

    def _unassign(self, a: _Assign) -> None:
        """Refused or unconfirmed: pending again unless another assignment of
        this run (broadcast) was confirmed or is still open."""
        rec = a.rec
        if a.epoch != rec.epoch:
            return
        rec.run -= 1
        if rec.run <= 0 and not rec.confirmed and rec.state == _RUNNING:
            self._repend_now(rec, True)

    def _kill(self, conn: _Conn) -> None:
        """Forget ``conn`` and ask the server to close it."""
        self._drop(conn)
        conn.close()

    def _drop(self, conn: _Conn) -> None:
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
                self._fail(rec.key, rec if rec.state != _DEAD else None)
        stats = self._stats
        stats.disconnects += 1
        stats.lost += len(running)
        kind = "worker" if conn.worker else "client"
        lost = f", {len(running)} running job(s) back to pending" if running else ""
        stats.event(self._now, "disconnect", f"{kind} {conn.id} went away{lost}")

    # -- waiters --------------------------------------------------------------

    def _add_waiter(
        self, key: bytes, conn: _Conn, msgid: int, timeout: int, result: bool
    ) -> None:
        w = self._waiters.get(key)
        if w is None:
            w = self._waiters[key] = _Waiters()
        (w.results if result else w.streams).append((conn, msgid))
        # every new waiter overwrites the expiry (protocol.md 4.7)
        w.expiry = self._now + (timeout if timeout > 0 else _WAITER_DEFAULT)

    # -- locks ----------------------------------------------------------------

    def _acquire(self, lock: bytes, count: int, key: bytes) -> bool:
        rec = self._lookup(key)
        if rec is None or rec.state != _RUNNING:
            return True  # not running: granted, nothing recorded
        now = self._now
        lk = self._locks.get(lock)
        if lk is None:
            lk = self._locks[lock] = _Lock(lock, count)
            lk.holders[key] = now
            self._hlocks.setdefault(key, set()).add(lock)
            return True
        if count > lk.max:
            lk.max = count  # max holders only grows
        if key in lk.holders:
            return True
        if key not in lk.queue:
            if len(lk.holders) < lk.max:
                lk.holders[key] = now
                self._hlocks.setdefault(key, set()).add(lock)
                return True
            lk.queue[key] = now
            self._hlocks.setdefault(key, set()).add(lock)
        # refused: park the job until the lock is handed over
        rec.state = _LOCKED
        fs = self._funcs[rec.func]
        fs.n_running -= 1
        fs.n_locked += 1
        self._store.set_state(rec.func, rec.name, _LOCKED)
        return False

    def _release(self, lock: bytes, key: bytes) -> None:
        lk = self._locks.get(lock)
        if lk is None:
            return
        if key in lk.holders:
            del lk.holders[key]
            self._unlink_lock(key, lock)
            self._handover(lk)
        elif key in lk.queue:
            del lk.queue[key]
            self._unlink_lock(key, lock)
        if not lk.holders and not lk.queue:
            del self._locks[lock]

    def _release_all(self, key: bytes) -> None:
        for lock in list(self._hlocks.get(key, ())):
            self._release(lock, key)

    def _unlink_lock(self, key: bytes, lock: bytes) -> None:
        locks = self._hlocks.get(key)
        if locks is not None:
            locks.discard(lock)
            if not locks:
                del self._hlocks[key]

    def _handover(self, lk: _Lock) -> None:
        """Promote queued handles while there is room; a promoted locked job
        becomes pending (its ACQUIRE will then succeed at once)."""
        queue = lk.queue
        while queue and len(lk.holders) < lk.max:
            key = next(iter(queue))
            del queue[key]
            rec = self._lookup(key)
            if rec is not None and rec.state == _LOCKED:
                lk.holders[key] = self._now
                self._repend_now(rec, False)
            else:
                # gone or not parked: released on its behalf
                self._unlink_lock(key, lk.name)

    # -- sweeps ---------------------------------------------------------------

    def _sweep_fast(self, now: float) -> None:
        """Every 10 s: idle connections, expired waiters, a counter sample."""
        self._stats.samples.append((now, *self._totals()))
        keepalive = self._keepalive
        if keepalive > 0:
            limit = now - keepalive
            for conn in [c for c in self._conns.values() if c.last_seen < limit]:
                self._kill(conn)
        if self._waiters:
            expired = [k for k, w in self._waiters.items() if w.expiry <= now]
            for key in expired:
                # like REMOVE_JOB with reason "expired" (4.7)
                self._finish(key, self._lookup(key), RESULT_EXPIRED)

    def _sweep_locked(self) -> None:
        """Every 60 s: some locked jobs back to pending (safety net, 4.11)."""
        limit = max([10, *(lk.max for lk in self._locks.values())])
        for fs in list(self._funcs.values()):
            if fs.n_locked:
                locked = [r for r in fs.jobs if r.state == _LOCKED][:limit]
                for rec in locked:
                    self._repend_now(rec, False)

    def _sweep_slow(self, now: float) -> None:
        """Every 100 s: purge old lock entries; re-queue running jobs that no
        connection holds any more (a safety net; should not happen)."""
        cutoff = now - self._lock_timeout
        for name, lk in list(self._locks.items()):
            for entries in (lk.holders, lk.queue):
                for key in [k for k, since in entries.items() if since < cutoff]:
                    del entries[key]
                    self._unlink_lock(key, name)
            if not lk.holders and not lk.queue:
                del self._locks[name]
        for fs in list(self._funcs.values()):
            if fs.n_running:
                orphans = [r for r in fs.jobs if r.state == _RUNNING and r.run <= 0]
                for rec in orphans:
                    self._fail(rec.key, rec)
