"""The scheduler's in-memory records: funcs, connections, assignments, waiters.

Plain ``__slots__`` classes the scheduler's modules share; all behaviour
lives in :mod:`periodic_fast.sched_core` and the modules around it.  The
jobs themselves are :class:`~periodic_fast.rec.JobRec` records; the
constants below name their ``state`` and ``where`` values.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from .job import JobState

if TYPE_CHECKING:
    from .auth import Identity
    from .rec import JobRec, NameTable
    from .sched_index import NameIndex

__all__ = [
    "DEAD",
    "IN_WHEEL",
    "LOCKED",
    "NOWHERE",
    "PENDING",
    "READY",
    "RUNNING",
    "Assign",
    "Conn",
    "Func",
    "Handler",
    "Waiters",
]

# JobRec.state
PENDING: Final = JobState.PENDING
RUNNING: Final = JobState.RUNNING
LOCKED: Final = JobState.LOCKED
DEAD: Final = -1  # record deleted (never stored)

# JobRec.where
NOWHERE: Final = 0
IN_WHEEL: Final = 1
READY: Final = 2


class Func:
    """A known func: worker count, broadcast flag, ready queue, counters."""

    __slots__ = (
        "avail",
        "broadcast",
        "index",
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

    def __init__(self, name: bytes, jobs: NameTable) -> None:
        # counters since the func was created (SchedulerStats reads them)
        self.n_submit = 0
        self.n_done = 0
        self.n_fail = 0
        self.n_later = 0
        self.name = name
        self.workers = 0  # connections that registered it
        self.broadcast = False  # last first-registration wins (quirk kept)
        self.ready: deque[JobRec] = deque()  # due jobs, lazily cleaned
        self.n_ready = 0  # live entries of ``ready``
        self.avail: dict[Conn, None] = {}  # registered conns, round-robin order
        # every stored job of the func, by name: the only name index (a
        # handle is split to look a job up), so a job costs no handle bytes;
        # shared with a store that keeps records (one slot per job in all)
        self.jobs = jobs
        self.n_running = 0
        self.n_locked = 0
        # the job browser's ordered names, built on the first listing
        # (sched_index); None: the hot paths skip it
        self.index: NameIndex | None = None


class Assign:
    """One JOB_ASSIGN sent to one grab slot."""

    __slots__ = ("aid", "at", "conn", "deadline", "epoch", "msgid", "rec", "waiting")

    def __init__(
        self,
        conn: Conn,
        msgid: int,
        rec: JobRec,
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


#: A command handler: ``(conn, msgid, payload)``; one per code in a
#: connection's dispatch table.
Handler = Callable[["Conn", int, bytes], None]


class Conn:
    """A registered connection."""

    __slots__ = (
        "alive",
        "auth",
        "close",
        "funcs",
        "id",
        "identity",
        "last_seen",
        "n_waits",
        "running",
        "send",
        "slots",
        "table",
        "unconfirmed",
        "waits",
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
        self.funcs: dict[bytes, Func] = {}  # registered funcs
        self.slots: dict[int, None] = {}  # grab msgids; popitem() = most recent
        self.unconfirmed: dict[int, Assign] = {}  # msgid -> awaiting confirmation
        self.running: dict[bytes, Assign] = {}  # handle -> confirmed assignment
        # handle -> this connection's RUN_JOB/RECV_DATA waiter entries on it
        # (dropped with the connection; their sum counts against the limits)
        self.waits: dict[bytes, int] = {}
        self.n_waits = 0  # sum of ``waits``
        self.table: list[Handler] = []


class Waiters:
    """RUN_JOB result waiters and RECV_DATA stream waiters of one handle."""

    __slots__ = ("expiry", "results", "streams")

    def __init__(self) -> None:
        self.results: list[tuple[Conn, int]] = []
        self.streams: list[tuple[Conn, int]] = []
        self.expiry = 0.0
