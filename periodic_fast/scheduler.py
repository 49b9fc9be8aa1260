"""The sans-I/O Periodic scheduler (protocol.md sections 3-4).

The server hands every decoded request to :meth:`Scheduler.handle` and calls
:meth:`Scheduler.tick` from its single timer; the scheduler never reads a clock
and never touches a socket: ``now`` (``time.time()``, float seconds: due
times) and ``mono`` (``time.monotonic()``: every deadline and age) are passed
in and frames leave through each connection's ``send`` callable.  The seam is
specified in docs/architecture.md.

:class:`Scheduler` is the public face: construction from a store, the
connection life cycle and authentication, input, time, introspection and the
HTTP API's writes.  It is built from one concept per module:

* :mod:`~periodic_fast.sched_core`: the job state machine and dispatch (the
  data layout is described there);
* :mod:`~periodic_fast.sched_handlers`: one handler per request command;
* :mod:`~periodic_fast.sched_retry`: retry policies, failure counts and the
  dead set;
* :mod:`~periodic_fast.sched_rules`: per-role dispatch tables (auth, limits,
  owned-job checks);
* :mod:`~periodic_fast.sched_locks`: the named counting locks;
* :mod:`~periodic_fast.sched_model`: funcs, connections, assignments, waiters;
* :mod:`~periodic_fast.sched_stats`: statistics and read models;
* :mod:`~periodic_fast.sched_wire`: command codes and job-handle parsing.

Hot paths (SUBMIT_JOB, GRAB_JOB, JOB_ASSIGNED, WORK_DONE, dispatch) use a
per-connection dispatch table, specific decoders and no logging.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sized
from typing import Final, Literal

from ._gc import gc_paused
from .auth import AuthRules, Identity
from .codec import load_frame_size
from .constants import CONFIG_DEFAULTS, RESULT_EXPIRED, ClientType
from .job import Job
from .rec import JobRec as _JobRec  # noqa: F401 - tests check the twin switch
from .rec import NameTable as _NameTable  # noqa: F401
from .retry import RetryPolicy
from .sched_browse import JobBrowser, JobDetail, JobPage
from .sched_index import INDEX_IDLE
from .sched_limits import (
    DEFAULT_MAX_FUNCS,
    DEFAULT_MAX_WAITERS,
    DEFAULT_MAX_WAITERS_PER_CONN,
    FuncRefused,
    bad_func_name,
    check_limit,
)
from .sched_model import LOCKED, PENDING, READY, RUNNING, Conn, Handler
from .sched_retry import DEFAULT_MAX_DEAD, RetryScheduler
from .sched_rules import ADMIN_COMMANDS, WORKER_COMMANDS, DispatchTables
from .sched_series import SeriesSnapshot
from .sched_stats import (
    LATENESS_BUCKETS,
    RUNTIME_BUCKETS,
    ConnInfo,
    Event,
    FuncDetail,
    Histogram,
    LockInfo,
    SchedulerStats,
)
from .sched_wire import I32_MAX, I32_MIN, I64_MAX, handle_key, show, show_key
from .store import Store
from .wheel import TimerWheel

__all__ = [
    "ADMIN_COMMANDS",
    "LATENESS_BUCKETS",
    "RUNTIME_BUCKETS",
    "WORKER_COMMANDS",
    "ConnInfo",
    "Event",
    "FuncDetail",
    "Histogram",
    "LockInfo",
    "Scheduler",
    "SchedulerStats",
]

_WORKER_TYPES: Final = (ClientType.WORKER, ClientType.AUTH_WORKER)

_SWEEP_FAST: Final = 10.0  # keepalive, waiter expiry (protocol.md 4.15)
_SWEEP_LOCKED: Final = 60.0  # locked jobs back to pending
_SWEEP_SLOW: Final = 100.0  # lock-timeout purge, orphaned running jobs
_WHEEL_BATCH: Final = 50_000  # due ids moved per tick; the rest next tick

#: stored jobs from which start-up moves its objects out of the GC's reach
_FREEZE_AT: Final = 50_000


def _merged_config(
    stored: Mapping[str, int], given: Mapping[str, int] | None
) -> dict[str, int]:
    """Defaults, overridden by the stored values (known keys only), then by
    the operator's (which must all be known)."""
    cfg = dict(CONFIG_DEFAULTS)
    for k, v in stored.items():
        if k in cfg:
            cfg[k] = int(v)
    if given:
        for k, v in given.items():
            if k not in cfg:
                raise ValueError(f"unknown config key {k!r}")
            cfg[k] = int(v)
    return cfg


class Scheduler(RetryScheduler):
    """Job states, func registry, grab slots, locks and waiters; no I/O.

    :param store: persistence driver; loaded once here.  Running and locked
        jobs come back as pending.
    :param now: current wall-clock time (``time.time()``).
    :param mono: current monotonic time (``time.monotonic()``); every method
        that takes ``now`` also takes ``mono``.  None (everywhere): ``now``
        drives the deadlines too, as in tests with one fake clock.
    :param config: config values overriding the defaults and the stored values
        (operator options win); keys must be known (``CONFIG_DEFAULTS``).
    :param on_shutdown: called (with no reply sent) when a client sends SHUTDOWN.
    :param auth: auth-file rules (docs/security.md); None = no auth.  Replace
        them with :meth:`set_auth`.
    :param max_jobs_per_func: refuse (NO_WORKER) a SUBMIT_JOB, RUN_JOB or
        LOAD that would store more jobs than this for one func; 0 = no limit.
    :param max_funcs: known funcs at most: a SUBMIT_JOB, LOAD, CAN_DO or
        BROADCAST that would create one more gets NO_WORKER, once the funcs
        with no job and no worker were forgotten to make room; 0 = no limit.
    :param max_waiters: RUN_JOB and RECV_DATA waiters at most, every
        connection together (NO_WORKER beyond); 0 = no limit.
    :param max_waiters_per_conn: the same, per connection; 0 = no limit.
    :param retry_policy: the default retry policy (None: the built-in one;
        docs/retries.md); one stored through the HTTP API wins.
    :param max_dead: jobs kept in the dead set at most (oldest evicted).
    :param retry_random: the retry jitter's random source (``() -> [0, 1)``).

    The limits and their defaults are listed in docs/security.md.

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
        max_funcs: int = DEFAULT_MAX_FUNCS,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        max_waiters_per_conn: int = DEFAULT_MAX_WAITERS_PER_CONN,
        mono: float | None = None,
        retry_policy: RetryPolicy | None = None,
        max_dead: int = DEFAULT_MAX_DEAD,
        retry_random: Callable[[], float] | None = None,
    ) -> None:
        check_limit("max_jobs_per_func", max_jobs_per_func)
        check_limit("max_funcs", max_funcs)
        check_limit("max_waiters", max_waiters)
        check_limit("max_waiters_per_conn", max_waiters_per_conn)
        # Loading a big store creates millions of objects: no GC pass may scan
        # them meanwhile (each would rescan everything built so far).
        with gc_paused():
            snap = store.load()
            super().__init__(
                store,
                now,
                _merged_config(snap.config, config),
                on_shutdown,
                mono,
                retry_policy=retry_policy,
                max_dead=max_dead,
                rng=retry_random,
            )
            self._auth = auth
            self._max_jobs = max_jobs_per_func
            self._max_funcs = max_funcs
            self._max_waiters = max_waiters
            self._max_conn_waiters = max_waiters_per_conn
            self._dispatch = DispatchTables(
                self._handler_table,
                lambda: self.status(self._now),
                self._funcs,
                max_jobs_per_func,
            )
            # built without ``mono`` (a custom server factory): the first
            # call that brings one moves the deadlines onto that clock
            self._unanchored = mono is None
            self._browser = JobBrowser(self)  # the job browser (sched_browse)
            m = self._mono  # the sweeps run on the monotonic clock
            self._next_fast = m + _SWEEP_FAST
            self._next_locked = m + _SWEEP_LOCKED
            self._next_slow = m + _SWEEP_SLOW
            jobs = snap.jobs  # an unsized snapshot counts as big
            big = not isinstance(jobs, Sized) or len(jobs) >= _FREEZE_AT
            # The records live as long as their jobs: keep a big store's out
            # of every later GC pass (refcounting still frees them).  The
            # daemon freezes after start-up anyway; this spares the passes in
            # between (~0.5 s per million jobs).  GC stays off until the
            # outer block ends.
            with gc_paused(freeze=big):
                self._rebuild(snap, int(now))
                self._cron_start(snap.extras)  # cron schedules (sched_cron)
                self._load_failures(snap)  # sched_retry: policies, dead set
                del snap, jobs  # not frozen: garbage once the records exist

    # -- connection life cycle ------------------------------------------------

    def connect(
        self,
        conn_id: int,
        client_type: int,
        identity: tuple[bytes, bytes] | None,
        send: Callable[[bytes], None],
        close: Callable[[], None],
        now: float,
        mono: float | None = None,
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
        if mono is None:
            mono = now
        elif self._unanchored:
            self._anchor(mono)
        self._mono = mono
        old = self._conns.get(conn_id)
        if old is not None:  # the server reuses ids only after disconnect()
            self._drop(old)
        conn = Conn(conn_id, client_type in _WORKER_TYPES, identity, send, close, mono)
        if self._auth is not None:
            ident = self._authenticate(identity)
            if ident is None:
                close()
                return
            conn.auth = ident
        conn.table = self._dispatch.for_conn(conn)
        self._conns[conn_id] = conn
        self._stats.connects += 1
        kind = "worker" if conn.worker else "client"
        who = f" as {show(identity[0])}" if identity is not None else ""
        self._stats.event(now, "connect", f"{kind} {conn_id} connected{who}")

    def disconnect(self, conn_id: int, now: float, mono: float | None = None) -> None:
        """The connection is gone: clean-up of protocol.md 4.8.  Idempotent."""
        conn = self._conns.get(conn_id)
        if conn is not None:
            self._now = now
            self._mono = now if mono is None else mono
            self._drop(conn)

    # -- authentication -------------------------------------------------------

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

    def set_auth(
        self, rules: AuthRules | None, now: float, mono: float | None = None
    ) -> list[int]:
        """New auth rules (the auth file was reloaded); returns the ids of the
        connections closed because of them.

        Live connections are checked again: one whose identity is gone or
        whose token changed is closed (``close()``); the others get the new
        role and func rules, and funcs they may no longer use are
        unregistered (like CANT_DO).  ``None`` turns auth off.
        """
        self._now = now
        if mono is not None and self._unanchored:
            self._anchor(mono)
        self._mono = now if mono is None else mono
        self._auth = rules
        self._dispatch.clear_auth()
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
            conn.table = self._dispatch.for_conn(conn)
        return closed

    # -- input ----------------------------------------------------------------

    def handle(
        self,
        conn_id: int,
        msgid: int,
        command: int,
        payload: bytes,
        now: float,
        mono: float | None = None,
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
        if mono is None:
            mono = now
        self._mono = conn.last_seen = mono
        # 256 entries: codes 35-255 raise UnknownCommand (``command`` is a u8)
        conn.table[command](conn, msgid, payload)

    # -- time -----------------------------------------------------------------

    def tick(self, now: float, mono: float | None = None) -> None:
        """Advance time: due jobs (wall clock), then on the monotonic clock
        assign-wait, per-assignment timeouts, waiter expiry, lock sweeps,
        idle connections."""
        self._now = now
        if mono is None:
            mono = now
        elif self._unanchored:
            self._anchor(mono)
        self._mono = mono
        if self._crons:  # a forward clock jump catches up missed cron runs
            self._cron_tick()
        t = int(now)
        if t > self._wheel_t:
            self._wheel_t = t  # the wheel's time: it never moves back
        ids = self._wheel.advance(t, _WHEEL_BATCH)
        if ids:
            self._make_ready(ids)
        behind = self._behind
        if behind and behind[0][0] <= t:  # the wall clock stepped back
            self._due_behind(t)
        if self._reaper.left:  # a dropped func's records: one slice per tick
            self._reaper.reap()
        if self._browser.building:  # a browsed func's index: one slice per tick
            self._browser.step()
        if self._bulk.busy:  # a big DUMP or LOAD: one slice per tick
            self._bulk.step()

        awaiting = self._awaiting
        while awaiting and awaiting[0].deadline <= mono:
            a = awaiting.popleft()
            if a.waiting and a.conn.alive:
                # no confirmation: the reference assumes a broken worker;
                # _drop re-queues this and every other assignment of it
                self._kill(a.conn)

        # advanced every tick (cheap when nothing is due) so new deadlines land
        # in the wheel's low levels
        for aid in self._deadlines.advance(int(mono)):
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
                self._series.failed(rec.func, now)
                fs = self._funcs.get(rec.func)
                if fs is not None:  # a timeout is a failure of the func
                    fs.n_fail += 1
                self._stats.event(
                    now,
                    "timeout",
                    f"{show_key(rec.key)} timed out on connection {a2.conn.id}",
                )
                self._fail(rec.key, rec, "timeout", a2.conn)

        if mono >= self._next_fast:
            self._next_fast = mono + _SWEEP_FAST
            self._sweep_fast(now)
        if mono >= self._next_locked:
            self._next_locked = mono + _SWEEP_LOCKED
            self._sweep_locked()
        if mono >= self._next_slow:
            self._next_slow = mono + _SWEEP_SLOW
            self._sweep_slow()

    def _table_for(self, conn: Conn) -> list[Handler]:
        return self._dispatch.for_conn(conn)

    def _anchor(self, mono: float) -> None:
        """The first monotonic time of a scheduler built without one: the
        sweeps and the (still empty) deadline wheel move onto its clock."""
        self._unanchored = False
        shift = mono - self._mono
        self._next_fast += shift
        self._next_locked += shift
        self._next_slow += shift
        if not self._conns:
            self._deadlines = TimerWheel(int(mono))
        self._mono = mono

    def next_wakeup(self) -> float | None:
        """Earliest monotonic time at which :meth:`tick` has work (a due
        wall-clock time is converted with the last times handed in).

        Never None in practice: the periodic sweeps are always scheduled.
        """
        if self._reaper.left or self._browser.building or self._bulk.busy:
            return self._mono  # at once: the next slice of a drop, an index,
            # a DUMP or a LOAD
        best = min(self._next_fast, self._next_locked, self._next_slow)
        nd = self._wheel.next_due()
        behind = self._behind
        if behind and (nd is None or behind[0][0] < nd):
            nd = behind[0][0]
        if nd is not None:
            due = nd + (self._mono - self._now)
            if due < best:
                best = due
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

    def _sweep_fast(self, now: float) -> None:
        """Every 10 s: idle connections, expired waiters, a counter sample
        (taken at wall time ``now``, as the HTTP rates are asked)."""
        self._stats.samples.append((now, *self._totals()))
        mono = self._mono
        keepalive = self._keepalive
        if keepalive > 0:
            limit = mono - keepalive
            for conn in [c for c in self._conns.values() if c.last_seen < limit]:
                self._kill(conn)
        if self._waiters:
            expired = [k for k, w in self._waiters.items() if w.expiry <= mono]
            for key in expired:
                # like REMOVE_JOB with reason "expired" (4.7)
                self._finish(key, self._lookup(key), RESULT_EXPIRED)

    def _sweep_locked(self) -> None:
        """Every 60 s: some locked jobs back to pending (safety net, 4.11)."""
        limit = max(10, self._lock_table.max_holders())
        for fs in list(self._funcs.values()):
            if fs.n_locked:
                locked = [r for r in fs.jobs if r.state == LOCKED][:limit]
                for rec in locked:
                    self._repend_now(rec, False)

    def _sweep_slow(self) -> None:
        """Every 100 s: purge old lock entries; re-queue running jobs that no
        connection holds any more (a safety net; should not happen)."""
        self._lock_table.purge(self._mono - self._lock_timeout)
        self._browser.expire(self._mono, INDEX_IDLE)  # unused browse indexes
        for fs in list(self._funcs.values()):
            if fs.n_running:
                orphans = [r for r in fs.jobs if r.state == RUNNING and r.run <= 0]
                for rec in orphans:
                    self._fail(rec.key, rec, "lost")

    # -- introspection --------------------------------------------------------

    def get_config(self, key: str) -> int:
        """Current value of a config key (0 for unknown keys)."""
        return self._config.get(key, 0)

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
    def max_frame(self) -> int:
        """The server's frame limit: a job that would not fit a LOAD frame
        under it is refused (SUBMIT_JOB, RUN_JOB, LOAD: NO_WORKER; HTTP:
        ValueError), so whatever is accepted can be dumped and loaded back.
        The server's hub sets it."""
        return self._max_frame

    @max_frame.setter
    def max_frame(self, value: int) -> None:
        self._set_max_frame(value)

    @property
    def reaping(self) -> int:
        """Jobs of dropped funcs not freed yet (freed a slice per tick)."""
        return self._reaper.left

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
        timeout, lost, removed, connects, disconnects, and the retry
        figures (:meth:`retry_counters`)."""
        return {**self._stats.counters(self._totals()), **self.retry_counters()}

    def rates(self, now: float) -> dict[str, float]:
        """submit, done, fail and sched_later per minute over about the last
        minute (counter samples are taken every 10 s by :meth:`tick`)."""
        return self._stats.rates(self._totals(), now)

    def func_details(self, now: float) -> list[FuncDetail]:
        """Every known func with its counts and counters, sorted by name.

        Costs a pass over each func's jobs (like :meth:`status`)."""
        out = []
        for name in sorted(self._funcs):
            fs = self._funcs[name]
            oldest: int | None = None
            seen = 0
            for rec in fs.ready:  # about oldest first: look at the head only
                if rec.where == READY and rec.state == PENDING:
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
                    fs.jobs.earliest(),
                    oldest,
                    fs.n_submit,
                    fs.n_done,
                    fs.n_fail,
                    fs.n_later,
                )
            )
        return out

    def connections(self) -> list[ConnInfo]:
        """Every registered connection, by id (``last_seen`` in wall time)."""
        shift = self._now - self._mono
        return [
            ConnInfo(
                c.id,
                c.worker,
                c.identity[0] if c.identity is not None else None,
                tuple(c.funcs),
                len(c.slots),
                len(c.running),
                len(c.unconfirmed),
                c.last_seen + shift,
            )
            for _, c in sorted(self._conns.items())
        ]

    def locks(self) -> list[LockInfo]:
        """Every named lock with its holders and its queue, by name (entry
        times in wall time)."""
        return self._lock_table.infos(self._now - self._mono)

    def series(
        self, now: float, *, limit: int = 50, func: bytes | None = None
    ) -> SeriesSnapshot:
        """Per-func done, failed and lateness per minute over the last hour
        (the dashboard; :mod:`periodic_fast.sched_series`)."""
        return self._series.snapshot(now, limit=limit, func=func)

    # -- writes from outside a connection (the HTTP API) ----------------------

    def submit(self, job: Job, now: float, mono: float | None = None) -> bool:
        """Submit or update ``job`` exactly as SUBMIT_JOB does (a running job
        is left alone).  False when ``max_jobs_per_func`` refuses a new job
        or ``max_funcs`` a new func.

        Raises ValueError for a field the wire format cannot carry and for a
        func name that would break STATUS (``,``, LF, CR).  The
        caller waits for ``store.on_durable`` before it reports success.
        """
        func, name = job.func, job.name
        if not 0 < len(func) <= 255 or not 0 < len(name) <= 255:
            raise ValueError("func and name must be 1 to 255 bytes")
        if bad_func_name(func):
            raise ValueError("a func name may not hold ',', LF or CR")
        if not -(1 << 63) <= job.sched_at <= I64_MAX:
            raise ValueError("sched_at out of range")
        if not (I32_MIN <= job.count <= I32_MAX and 0 <= job.timeout <= I32_MAX):
            raise ValueError("count or timeout out of range")
        size = load_frame_size(job)
        if size > self._max_frame:  # it could not be DUMPed and LOADed back
            self._refused("size", f"HTTP submit of a {size}-byte LOAD frame")
            raise ValueError(
                f"the job needs a LOAD frame of {size} bytes, over the frame "
                f"limit of {self._max_frame} bytes"
            )
        self._now = now
        self._mono = now if mono is None else mono
        if self._max_jobs:
            fs = self._funcs.get(func)
            if (
                fs is not None
                and name not in fs.jobs
                and len(fs.jobs) >= self._max_jobs
            ):
                return False
        try:
            self._submit(job)
        except FuncRefused as exc:
            self._refused("func", f"HTTP submit: {exc}")
            return False
        return True

    def remove(
        self, func: bytes, name: bytes, now: float, mono: float | None = None
    ) -> bool:
        """REMOVE_JOB for ``(func, name)``; False when there is no such job."""
        self._now = now
        self._mono = now if mono is None else mono
        if len(func) > 255 or len(name) > 255:
            return False
        return self._remove(handle_key(func, name))

    def drop_func(
        self, func: bytes, now: float, mono: float | None = None
    ) -> Literal["dropped", "busy", "unknown"]:
        """DROP_FUNC: ``"busy"`` (nothing done) while workers serve ``func``."""
        self._now = now
        self._mono = now if mono is None else mono
        return self._drop_func(func)

    # -- the job browser (sched_browse; docs/jobs.md) --------------------------

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
        """A page of ``func``'s jobs by name (:meth:`JobBrowser.list_jobs
        <periodic_fast.sched_browse.JobBrowser.list_jobs>`); None while the
        func's index builds (:meth:`when_indexed`)."""
        return self._browser.list_jobs(
            func,
            state,
            prefix=prefix,
            due_from=due_from,
            due_to=due_to,
            after=after,
            limit=limit,
            mono=self._mono if mono is None else mono,
        )

    def when_indexed(self, func: bytes, callback: Callable[[], None]) -> bool:
        """``callback()`` from a later tick once ``func``'s index is built;
        False (nothing kept) when no build of it runs."""
        return self._browser.when_indexed(func, callback)

    def job_detail(self, func: bytes, name: bytes) -> JobDetail | None:
        """The job ``(func, name)`` in full, or None."""
        return self._browser.detail(func, name)

    def reschedule(
        self,
        func: bytes,
        name: bytes,
        sched_at: int | None,
        now: float,
        mono: float | None = None,
    ) -> Literal["ok", "unknown", "running"]:
        """A pending or locked job becomes due at ``sched_at`` (None: now,
        dispatched at once if a worker is free); a running one is left alone.
        The caller waits for ``store.on_durable`` before it reports success."""
        self._now = now
        self._mono = now if mono is None else mono
        return self._browser.reschedule(func, name, sched_at)
