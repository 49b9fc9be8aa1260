"""Retry policies, failure counting and the dead set (docs/retries.md).

:class:`RetryScheduler` sits between the command handlers and the public
:class:`~periodic_fast.scheduler.Scheduler`.  It overrides the core's
:meth:`_failed` hook: a running job that failed (WORK_FAIL, its run timeout,
its worker gone) has its failure counted (``attempts``, when, which worker,
why) and is retried after its func's policy delay
(:class:`~periodic_fast.retry.RetryPolicy`), or, once the policy's
``max_attempts`` is used up, leaves the live set for the *dead set*.

What is kept, and where (store extras, :mod:`periodic_fast.store`):

* ``policy``: ``(func, b"")`` -> policy JSON; func ``b""`` is the default set
  through the API (else the operator's, ``periodicd --retry-policy``);
* ``attempt``: ``(func, name)`` -> the live job's failures (JSON); only jobs
  that failed and are still live have one.  WORK_DONE, REMOVE and a new
  SUBMIT of the name forget it (the core's ``_attempt_gone``);
* ``dead``: ``(func, name)`` -> the dead job: a JSON header, LF, the
  workload.  Bounded (``max_dead``): the oldest is evicted, logged and
  counted.

Bulk operations on the dead set handle at most :data:`BULK_SLICE` entries
per call and say whether more are left, so a large set never holds the loop.
"""

from __future__ import annotations

import json
import logging
import random
from bisect import bisect_left
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, NamedTuple

from .constants import RESULT_FAILED
from .job import Job
from .rec import JobRec
from .retry import DEFAULT_MAX_DEAD, DEFAULT_POLICY, RetryPolicy
from .sched_handlers import CommandHandlers
from .sched_limits import FuncRefused, bad_func_name
from .sched_model import Conn
from .sched_wire import handle_key, show_key
from .store import Store, StoreSnapshot

__all__ = [
    "BULK_SLICE",
    "DEFAULT_MAX_DEAD",
    "MAX_POLICIES",
    "DeadJob",
    "Failure",
    "RetryScheduler",
]


def _dumps(obj: object) -> bytes:
    """Compact JSON bytes.  The stdlib's, not orjson: on Python 3.10 orjson
    imports uuid -> platform -> subprocess, and the scheduler layer imports
    nothing of I/O (test_scheduler_stays_sans_io); these values are small
    and written once per failure or schedule."""
    return json.dumps(obj, separators=(",", ":")).encode()


log = logging.getLogger("periodic_fast.scheduler")

#: dead jobs retried or deleted by one bulk call at most
BULK_SLICE: Final = 5_000
#: per-func policies kept at most
MAX_POLICIES: Final = 10_000

_ATTEMPT: Final = "attempt"
_DEAD: Final = "dead"
_POLICY: Final = "policy"


class Failure(NamedTuple):
    """A job's failures so far: how many, the last one's wall time, worker
    (``"conn 12"`` or ``"conn 12 (name)"``, None when no worker was involved)
    and reason (``"fail"``, ``"timeout"`` or ``"lost"``)."""

    attempts: int
    failed_at: float
    worker: str | None
    reason: str

    def encode(self) -> bytes:
        return _dumps(self._asdict())

    @classmethod
    def decode(cls, raw: bytes) -> Failure:
        d = json.loads(raw)
        return cls(int(d["attempts"]), float(d["failed_at"]), d["worker"], d["reason"])


class DeadJob(NamedTuple):
    """A job whose retries are used up: the job's fields and its last failure."""

    job: Job
    failure: Failure

    def encode(self) -> bytes:
        job = self.job
        head = {
            "sched_at": job.sched_at,
            "count": job.count,
            "timeout": job.timeout,
            **self.failure._asdict(),
        }
        return _dumps(head) + b"\n" + job.workload  # JSON holds no raw LF

    @classmethod
    def decode(cls, func: bytes, name: bytes, raw: bytes) -> DeadJob:
        head, _, workload = raw.partition(b"\n")
        d = json.loads(head)
        job = Job(func, name, workload, int(d["sched_at"]), d["count"], d["timeout"])
        return cls(job, Failure.decode(head))


def _worker(conn: Conn | None) -> str | None:
    if conn is None:
        return None
    ident = conn.identity
    if ident is None:
        return f"conn {conn.id}"
    return f"conn {conn.id} ({ident[0].decode('utf-8', 'backslashreplace')})"


DeadKey = tuple[bytes, bytes]


class RetryScheduler(CommandHandlers):
    """The command handlers plus retry policies and the dead set.

    :param retry_policy: the server default (None: :data:`DEFAULT_POLICY`);
        a default stored through the API replaces it at start-up.
    :param max_dead: dead jobs kept at most (>= 1).
    :param rng: the jitter's random source, ``() -> [0, 1)`` (tests fix it).
    """

    def __init__(
        self,
        store: Store,
        now: float,
        config: dict[str, int],
        on_shutdown: Callable[[], None] | None,
        mono: float | None = None,
        *,
        retry_policy: RetryPolicy | None = None,
        max_dead: int = DEFAULT_MAX_DEAD,
        rng: Callable[[], float] | None = None,
    ) -> None:
        if max_dead < 1:
            raise ValueError("max_dead must be >= 1")
        super().__init__(store, now, config, on_shutdown, mono)
        self._operator_policy = retry_policy or DEFAULT_POLICY
        self._default_policy = self._operator_policy
        self._policies: dict[bytes, RetryPolicy] = {}
        self._attempts: dict[bytes, dict[bytes, Failure]] = {}
        # oldest death first (eviction order); the sorted keys for paging are
        # rebuilt on demand after a change
        self._dead: dict[DeadKey, DeadJob] = {}
        self._dead_sorted: list[DeadKey] | None = None
        self._max_dead = max_dead
        self._rng = rng or random.random
        self._max_jobs = 0  # the Scheduler sets it
        self._n_retried = 0  # retries scheduled
        self._n_buried = 0  # jobs moved to the dead set
        self._n_evicted = 0  # dead jobs evicted by the bound

    # -- start-up -------------------------------------------------------------

    def _load_failures(self, snap: StoreSnapshot) -> None:
        """Policies, live jobs' failures and the dead set from the store."""
        extras = snap.extras or {}
        store = self._store
        for func, _, raw in extras.get(_POLICY, ()):
            policy = RetryPolicy.from_dict(json.loads(raw))
            if func:
                self._policies[func] = policy
            else:
                self._default_policy = policy
        funcs = self._funcs
        for func, name, raw in extras.get(_ATTEMPT, ()):
            fs = funcs.get(func)
            if fs is None or name not in fs.jobs:  # the job is gone: stale
                store.delete_extra(_ATTEMPT, func, name)
                continue
            self._attempts.setdefault(fs.name, {})[name] = Failure.decode(raw)
        dead = [DeadJob.decode(f, n, raw) for f, n, raw in extras.get(_DEAD, ())]
        dead.sort(key=lambda d: d.failure.failed_at)
        for d in dead:
            self._dead[d.job.func, d.job.name] = d
        self._evict()

    # -- failures -------------------------------------------------------------

    def _failed(self, rec: JobRec, why: str, by: Conn | None) -> None:
        """Count the failure; retry after the policy's delay, or bury the job."""
        func, name = rec.func, rec.name
        per = self._attempts.get(func)
        old = None if per is None else per.get(name)
        n = 1 if old is None else old.attempts + 1
        now = self._now
        failure = Failure(n, now, _worker(by), why)
        policy = self._policies.get(func) or self._default_policy
        if policy.exhausted(n):
            self._bury(rec, failure)
            return
        if per is None:
            per = self._attempts[func] = {}
        per[name] = failure
        self._store.save_extra(_ATTEMPT, func, name, failure.encode())
        self._n_retried += 1
        # sched_at is in whole seconds: due at int(now) + int(delay), at
        # least the next second (the reference's int(now) + 1)
        delay = policy.delay(n, self._rng)
        self._requeue(rec, int(now) + max(1, int(delay)), rec.count)

    def _bury(self, rec: JobRec, failure: Failure) -> None:
        """The job's retries are used up: from the live set to the dead set."""
        job = rec.job
        key = (job.func, job.name)
        if self._crons and key in self._crons:
            # a scheduled job keeps its schedule: this run goes to the dead
            # set, the job waits for its next fire with its count reset
            self._finish(rec.key, None, RESULT_FAILED)  # waiters, locks
            self._attempt_gone(rec)
            self._cron_done(rec)
        else:
            self._finish(rec.key, rec, RESULT_FAILED)  # deleted; streams get EOF
        self._dead.pop(key, None)  # a second death moves it to the end
        dead = self._dead[key] = DeadJob(job, failure)
        self._dead_sorted = None
        self._store.save_extra(_DEAD, job.func, job.name, dead.encode())
        self._n_buried += 1
        self._stats.event(
            self._now,
            "dead",
            f"{show_key(rec.key)} moved to the dead set after "
            f"{failure.attempts} failure(s) ({failure.reason})",
        )
        self._evict()

    def _evict(self) -> None:
        dead = self._dead
        while len(dead) > self._max_dead:
            key = next(iter(dead))
            del dead[key]
            self._dead_sorted = None
            self._store.delete_extra(_DEAD, *key)
            self._n_evicted += 1
            log.warning(
                "dead set full (%d): evicted the oldest, %s",
                self._max_dead,
                show_key(handle_key(*key)),
            )

    def _drop_func(self, func: bytes) -> Literal["dropped", "busy", "unknown"]:
        """DROP_FUNC also forgets the func's failures and dead jobs (not its
        policy)."""
        result = super()._drop_func(func)
        if result == "dropped":
            if self._attempts.pop(func, None) is not None:
                self._store.delete_func_extras(_ATTEMPT, func)
            gone = [k for k in self._dead if k[0] == func]
            for key in gone:
                del self._dead[key]
            if gone:
                self._dead_sorted = None
                self._store.delete_func_extras(_DEAD, func)
        return result

    # -- reads ----------------------------------------------------------------

    def retry_counters(self) -> dict[str, int]:
        """``retried`` (retries scheduled), ``dead`` (jobs moved to the dead
        set), ``dead_evicted`` (dropped by the bound) since start, and
        ``dead_jobs`` (the dead set's size now)."""
        return {
            "retried": self._n_retried,
            "dead": self._n_buried,
            "dead_evicted": self._n_evicted,
            "dead_jobs": len(self._dead),
        }

    def retry_policies(self) -> tuple[RetryPolicy, dict[bytes, RetryPolicy]]:
        """The default policy and the per-func ones."""
        return self._default_policy, dict(self._policies)

    def retry_policy(self, func: bytes) -> RetryPolicy:
        """The policy in force for ``func``."""
        return self._policies.get(func) or self._default_policy

    def job_failure(self, func: bytes, name: bytes) -> dict[str, Any] | None:
        """The failures of a live or dead job: ``attempts``, ``last_failed_at``,
        ``last_worker``, ``reason`` and ``dead``; None when it never failed."""
        per = self._attempts.get(func)
        failure = None if per is None else per.get(name)
        dead = failure is None and (func, name) in self._dead
        if dead:
            failure = self._dead[func, name].failure
        if failure is None:
            return None
        return {
            "attempts": failure.attempts,
            "last_failed_at": failure.failed_at,
            "last_worker": failure.worker,
            "reason": failure.reason,
            "dead": dead,
        }

    def dead_jobs(
        self,
        func: bytes | None = None,
        prefix: bytes = b"",
        cursor: tuple[bytes, bytes] | None = None,
        limit: int = 50,
    ) -> tuple[list[DeadJob], tuple[bytes, bytes] | None, int]:
        """A page of the dead set in (func, name) order, after ``cursor``
        (the last key of the previous page): ``(jobs, next cursor or None,
        total matching)``.  ``func`` and the name ``prefix`` filter."""
        keys = self._dead_sorted
        if keys is None:
            keys = self._dead_sorted = sorted(self._dead)
        if func is not None:
            lo = bisect_left(keys, (func, prefix))
            hi = lo
            n = len(keys)
            if prefix:
                while hi < n and keys[hi][0] == func and keys[hi][1].startswith(prefix):
                    hi += 1
            else:  # every (func, name) sorts below (func + NUL,)
                hi = bisect_left(keys, (func + b"\x00",), lo)
            matching = keys[lo:hi]
        elif prefix:
            matching = [k for k in keys if k[1].startswith(prefix)]
        else:
            matching = keys
        start = 0 if cursor is None else bisect_left(matching, cursor)
        if cursor is not None and start < len(matching) and matching[start] == cursor:
            start += 1
        page = matching[start : start + limit]
        more = start + limit < len(matching)
        return (
            [self._dead[k] for k in page],
            page[-1] if more and page else None,
            len(matching),
        )

    # -- writes (the HTTP API) ------------------------------------------------

    def set_retry_policy(
        self,
        func: bytes | None,
        policy: RetryPolicy | None,
        now: float,
        mono: float | None = None,
    ) -> bool:
        """Set (``policy``) or reset (None) ``func``'s policy, or the default
        (``func`` None; reset: the operator's).  False: a reset of a func
        that has no policy of its own.

        :raises ValueError: a bad func name, or too many policies."""
        self._now = now
        self._mono = now if mono is None else mono
        if func is not None and (not 0 < len(func) <= 255 or bad_func_name(func)):
            raise ValueError("a func name is 1 to 255 bytes without ',', LF or CR")
        store = self._store
        if func is None:
            if policy is None:
                self._default_policy = self._operator_policy
                store.delete_extra(_POLICY, b"", b"")
            else:
                self._default_policy = policy
                store.save_extra(_POLICY, b"", b"", _dumps(policy.to_dict()))
            what = "default"
        elif policy is None:
            if self._policies.pop(func, None) is None:
                return False
            store.delete_extra(_POLICY, func, b"")
            what = repr(func.decode("utf-8", "backslashreplace"))
        else:
            if func not in self._policies and len(self._policies) >= MAX_POLICIES:
                raise ValueError(f"{MAX_POLICIES} per-func policies exist (the limit)")
            self._policies[func] = policy
            store.save_extra(_POLICY, func, b"", _dumps(policy.to_dict()))
            what = repr(func.decode("utf-8", "backslashreplace"))
        self._stats.event(
            now,
            "retry",
            f"retry policy of {what} " + ("reset" if policy is None else "set"),
        )
        return True

    def _dead_keys(
        self, func: bytes | None, name: bytes | None
    ) -> tuple[list[DeadKey], bool]:
        """The keys one call handles (at most :data:`BULK_SLICE`), and
        whether more match."""
        if name is not None:
            key = (func or b"", name)
            return ([key] if key in self._dead else []), False
        keys: list[DeadKey] = []
        for key in self._dead:
            if func is None or key[0] == func:
                if len(keys) == BULK_SLICE:
                    return keys, True
                keys.append(key)
        return keys, False

    def retry_dead(
        self,
        func: bytes | None,
        name: bytes | None,
        now: float,
        mono: float | None = None,
    ) -> tuple[int, bool]:
        """Dead jobs back to pending, due now, failures forgotten: one
        (``func``, ``name``), a func's (``name`` None) or all (both None).
        Returns ``(count, more)``; ``more``: call again for the rest.

        A job whose func cannot be created (``max_funcs``) or whose func is
        full (``max_jobs_per_func``) stays dead (not counted).  A live job
        of the same name is updated as a SUBMIT would (a running one is left
        alone)."""
        self._now = now
        self._mono = now if mono is None else mono
        keys, more = self._dead_keys(func, name)
        t = int(now)
        count = 0
        for key in keys:
            job = self._dead[key].job
            fs = self._funcs.get(job.func)
            if (
                self._max_jobs
                and fs is not None
                and job.name not in fs.jobs
                and len(fs.jobs) >= self._max_jobs
            ):
                continue
            try:
                self._submit(job._replace(sched_at=t))
            except FuncRefused as exc:
                self._refused("func", f"retry of a dead job: {exc}")
                continue
            del self._dead[key]
            self._store.delete_extra(_DEAD, *key)
            count += 1
        if count:
            self._dead_sorted = None
            self._stats.event(now, "retry", f"{count} dead job(s) retried")
        return count, more

    def delete_dead(
        self,
        func: bytes | None,
        name: bytes | None,
        now: float,
        mono: float | None = None,
    ) -> tuple[int, bool]:
        """Delete dead jobs (one, a func's or all, as :meth:`retry_dead`);
        returns ``(count, more)``."""
        self._now = now
        self._mono = now if mono is None else mono
        keys, more = self._dead_keys(func, name)
        store = self._store
        for key in keys:
            del self._dead[key]
            store.delete_extra(_DEAD, *key)
        if keys:
            self._dead_sorted = None
            self._stats.event(now, "retry", f"{len(keys)} dead job(s) deleted")
        return len(keys), more

    @property
    def dead_count(self) -> int:
        """Jobs in the dead set."""
        return len(self._dead)

    def dead_counts(self) -> Mapping[bytes, int]:
        """Dead jobs per func (O(dead set))."""
        out: dict[bytes, int] = {}
        for func, _ in self._dead:
            out[func] = out.get(func, 0) + 1
        return out
