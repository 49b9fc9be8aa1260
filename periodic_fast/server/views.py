"""What the server side needs from its neighbours, as typed protocols.

The server (layer L4) drives the scheduler (L3) through
:class:`SchedulerLike`, the seam of docs/architecture.md plus ``admit`` and
``store``; the HTTP side and ``/metrics`` also read and write through
:class:`SchedulerView`.  :class:`HubView` is what the HTTP side uses of the
connection hub, :class:`HttpSide` what the hub uses of the HTTP side.  The
scheduler's read models are imported for type checking only: importing the
server loads no scheduler or store.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from ..auth import AuthRules
    from ..job import FuncStat, Job
    from ..retry import RetryPolicy
    from ..sched_browse import JobDetail, JobPage
    from ..sched_crontab import CronInfo
    from ..sched_retry import DeadJob
    from ..sched_series import SeriesSnapshot
    from ..scheduler import ConnInfo, FuncDetail, LockInfo, SchedulerStats
    from ..store import Store

__all__ = ["HttpSide", "HubView", "PeerView", "SchedulerLike", "SchedulerView"]


class SchedulerLike(Protocol):
    """The part of :class:`periodic_fast.scheduler.Scheduler` the binary
    side of the server uses.  ``now`` is the wall clock (when jobs are due),
    ``mono`` the monotonic clock (deadlines); :meth:`next_wakeup` answers a
    monotonic time.

    See docs/architecture.md, "The seam between the server and the scheduler".
    """

    #: the server's frame limit, set by the hub: a job that could not be
    #: dumped and loaded back under it is refused up front
    max_frame: int

    def connect(
        self,
        conn_id: int,
        client_type: int,
        identity: tuple[bytes, bytes] | None,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        now: float,
        mono: float | None = None,
    ) -> None: ...

    def disconnect(
        self, conn_id: int, now: float, mono: float | None = None
    ) -> None: ...

    def handle(
        self,
        conn_id: int,
        msgid: int,
        command: int,
        payload: bytes,
        now: float,
        mono: float | None = None,
    ) -> None: ...

    def tick(self, now: float, mono: float | None = None) -> None: ...

    def next_wakeup(self) -> float | None: ...

    def admit(
        self, client_type: int, identity: tuple[bytes, bytes] | None
    ) -> str | None:
        """Why a registration is refused (the connection is closed), or None."""
        ...

    @property
    def store(self) -> Store:
        """The store; a deferred one makes the hub hold replies for commits."""
        ...


class SchedulerView(SchedulerLike, Protocol):
    """Everything the server asks of its scheduler: the binary seam, the
    auth rules, the HTTP reads and writes and the figures of ``/metrics``."""

    @property
    def auth(self) -> AuthRules | None:
        """The auth rules in force (None: auth off)."""
        ...

    def set_auth(
        self, rules: AuthRules | None, now: float, mono: float | None = None
    ) -> list[int]:
        """New auth rules; the ids of the connections it closed."""
        ...

    @property
    def stats(self) -> SchedulerStats:
        """Histograms and recent events."""
        ...

    def set_config(self, key: str, value: int) -> bool:
        """Set a config key as CONFIG_SET does (False: unknown key)."""
        ...

    def status(self, now: float) -> list[FuncStat]: ...

    def func_stat(self, func: bytes, now: float) -> FuncStat | None: ...

    def has_func(self, func: bytes) -> bool:
        """Whether ``func`` is known (O(1), unlike :meth:`func_stat`)."""
        ...

    def counters(self) -> dict[str, int]: ...

    def rates(self, now: float) -> dict[str, float]: ...

    def func_details(self, now: float) -> list[FuncDetail]: ...

    @property
    def reaping(self) -> int:
        """Jobs of dropped funcs not freed yet."""
        ...

    def connections(self) -> list[ConnInfo]: ...

    def locks(self) -> list[LockInfo]: ...

    def series(
        self, now: float, *, limit: int = 50, func: bytes | None = None
    ) -> SeriesSnapshot:
        """The dashboard's per-func minutes of the last hour."""
        ...

    def submit(self, job: Job, now: float, mono: float | None = None) -> bool: ...

    def remove(
        self, func: bytes, name: bytes, now: float, mono: float | None = None
    ) -> bool: ...

    def drop_func(
        self, func: bytes, now: float, mono: float | None = None
    ) -> Literal["dropped", "busy", "unknown"]: ...

    # cron schedules (sched_cron) -------------------------------------------

    def add_cron(
        self,
        func: bytes,
        name: bytes,
        cron: str,
        tz: str,
        missed: str,
        args: bytes,
        timeout: int,
        now: float,
        mono: float | None = None,
    ) -> int:
        """Create or replace a schedule and submit its job; the next fire.
        ValueError for bad input, ``CronRefused`` beyond the limits."""
        ...

    def remove_cron(
        self, func: bytes, name: bytes, now: float, mono: float | None = None
    ) -> bool:
        """Remove a schedule and its job; False when there is none."""
        ...

    def cron_schedules(self, func: bytes | None, now: float) -> list[CronInfo]:
        """The schedules (of ``func`` only, unless None), by func and name."""
        ...

    @property
    def cron_count(self) -> int:
        """How many cron schedules exist."""
        ...

    # the job browser (sched_browse; server/http_jobs)

    def list_jobs(
        self,
        func: bytes,
        state: str,
        *,
        prefix: bytes = b"",
        due_from: int | None = None,
        due_to: int | None = None,
        after: bytes | None = None,
        limit: int = 50,
        mono: float | None = None,
    ) -> JobPage | None:
        """A page of a func's jobs by name; None while its index builds."""
        ...

    def when_indexed(self, func: bytes, callback: Callable[[], None]) -> bool:
        """``callback()`` once the func's index is built (False: none builds)."""
        ...

    def job_detail(self, func: bytes, name: bytes) -> JobDetail | None: ...

    def reschedule(
        self,
        func: bytes,
        name: bytes,
        sched_at: int | None,
        now: float,
        mono: float | None = None,
    ) -> Literal["ok", "unknown", "running"]: ...

    # -- retry policies and the dead set (sched_retry) --

    def retry_policies(self) -> tuple[RetryPolicy, dict[bytes, RetryPolicy]]: ...

    def retry_policy(self, func: bytes) -> RetryPolicy: ...

    def set_retry_policy(
        self,
        func: bytes | None,
        policy: RetryPolicy | None,
        now: float,
        mono: float | None = None,
    ) -> bool: ...

    def retry_counters(self) -> dict[str, int]: ...

    def job_failure(self, func: bytes, name: bytes) -> dict[str, Any] | None: ...

    def dead_jobs(
        self,
        func: bytes | None = None,
        prefix: bytes = b"",
        cursor: tuple[bytes, bytes] | None = None,
        limit: int = 50,
    ) -> tuple[list[DeadJob], tuple[bytes, bytes] | None, int]: ...

    def retry_dead(
        self,
        func: bytes | None,
        name: bytes | None,
        now: float,
        mono: float | None = None,
    ) -> tuple[int, bool]: ...

    def delete_dead(
        self,
        func: bytes | None,
        name: bytes | None,
        now: float,
        mono: float | None = None,
    ) -> tuple[int, bool]: ...


class PeerView(Protocol):
    """A registered connection, as the status page shows it."""

    @property
    def peer(self) -> str:
        """Printable peer address."""
        ...


class HubView(Protocol):
    """What the HTTP side uses of :class:`~.protocol.Hub`."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def on_input(self) -> Callable[[], None] | None:
        """Re-arms the server's timer after a write (None: nobody to tell)."""
        ...

    @property
    def connections(self) -> Mapping[int, PeerView]:
        """Registered binary connections by connection id."""
        ...


class HttpSide(Protocol):
    """What the hub uses of the HTTP side (:class:`~.http_app.HttpApp`)."""

    def sniff(self, head: bytes) -> bool | None:
        """True: HTTP; None: undecided yet (more bytes); False: not HTTP."""
        ...

    def accept(self, transport: asyncio.Transport, head: bytes, peer: str) -> None:
        """Take over ``transport`` whose first bytes were ``head``."""
        ...

    def close_all(self) -> None:
        """Close every HTTP connection (server shutdown)."""
        ...
