"""Per-role dispatch tables: who may send what (protocol.md 5.3), job limits.

Every registered connection dispatches through a 256-entry table, command
code -> handler.  The rules are baked into the tables once per role instead
of being checked per frame: a refused command maps to a NO_WORKER reply,
and the checks that depend on the request (the job limit, the identity's
func list, owning the job) are wrappers around the plain handler, installed
only where they apply.  Tables depend on the connection role and, with an
auth file, on the identity's role only, so :class:`DispatchTables` builds
each once and shares it; per-identity func lists are read from
``conn.auth`` by the wrappers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Final

from .auth import Role
from .codec import (
    decode_job,
    decode_job_list,
    decode_payload,
    encode_response,
    encode_status,
)
from .constants import MAX_COMMAND, Command
from .errors import TrailingBytes, UnknownCommand
from .sched_model import Conn, Func, Handler
from .sched_wire import (
    ACQUIRE,
    DATA,
    LOAD,
    NO_WORKER,
    RELEASE,
    RUN_JOB,
    STATUS,
    SUBMIT_JOB,
    handle_end,
    handle_key,
)

if TYPE_CHECKING:
    from .job import FuncStat

__all__ = [
    "ADMIN_COMMANDS",
    "WORKER_COMMANDS",
    "DispatchTables",
    "allowed",
]

#: Worker-class commands (protocol.md 3.1 class W): refused with NO_WORKER on
#: client-role connections.
WORKER_COMMANDS: Final = frozenset(
    int(c)
    for c in (
        Command.GRAB_JOB,
        Command.SCHED_LATER,
        Command.WORK_DONE,
        Command.WORK_FAIL,
        Command.CAN_DO,
        Command.CANT_DO,
        Command.SLEEP,
        Command.BROADCAST,
        Command.ACQUIRE,
        Command.RELEASE,
        Command.WORK_DATA,
        Command.JOB_ASSIGNED,
        Command.JOB_UNASSIGNED,
    )
)

#: With an auth file only ``admin`` identities may send these (stricter than
#: the reference, which lets any identity).  DROP_FUNC is not one: like
#: REMOVE_JOB it is func-checked (an identity whose rights cover the func
#: may already remove each of its jobs).
ADMIN_COMMANDS: Final = frozenset(
    int(c)
    for c in (
        Command.SHUTDOWN,
        Command.CONFIG_SET,
        Command.DUMP,
        Command.LOAD,
    )
)

# With an auth file: commands whose func must be in the identity's list
# (protocol.md 5.3), and commands about a job handle that only the connection
# holding that job may send (stricter than the reference).
_FUNC_CHECKED: Final = frozenset(
    int(c)
    for c in (
        Command.SUBMIT_JOB,
        Command.RUN_JOB,
        Command.RECV_DATA,
        Command.DROP_FUNC,
        Command.REMOVE_JOB,
        Command.LOAD,
        Command.CAN_DO,
        Command.BROADCAST,
    )
)
_OWNED: Final = frozenset(
    int(c)
    for c in (
        Command.WORK_DONE,
        Command.WORK_FAIL,
        Command.SCHED_LATER,
        Command.WORK_DATA,
        Command.ACQUIRE,
        Command.RELEASE,
    )
)

_ADMIN: Final = Role.ADMIN


def allowed(conn: Conn, command: int) -> bool:
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


class DispatchTables:
    """Builds and caches the dispatch tables of every connection role.

    :param handlers: the scheduler's handler of each implemented command
        (called once per table built: fresh bound methods are cheap).
    :param status: the STATUS lines at the current time (for the filtered
        STATUS of non-admin identities).
    :param funcs: the scheduler's func registry (read by the job limits).
    :param max_jobs: ``max_jobs_per_func``; 0 = no limit wrappers.
    """

    __slots__ = ("_auth", "_funcs", "_handlers", "_max_jobs", "_plain", "_status")

    def __init__(
        self,
        handlers: Callable[[], Mapping[int, Handler]],
        status: Callable[[], list[FuncStat]],
        funcs: Mapping[bytes, Func],
        max_jobs: int,
    ) -> None:
        self._handlers = handlers
        self._status = status
        self._funcs = funcs
        self._max_jobs = max_jobs
        self._plain: dict[bool, list[Handler]] = {}
        self._auth: dict[tuple[bool, bool, bool], list[Handler]] = {}

    def for_conn(self, conn: Conn) -> list[Handler]:
        """The dispatch table of ``conn`` (shared with its role's peers)."""
        ident = conn.auth
        if ident is None:
            table = self._plain.get(conn.worker)
            if table is None:
                table = [
                    h if c > MAX_COMMAND or allowed(conn, c) else _reject(c)
                    for c, h in enumerate(self._base())
                ]
                self._plain[conn.worker] = table
            return table
        admin = ident.role is _ADMIN
        key = (conn.worker, admin, ident.may_connect_as(conn.worker))
        table = self._auth.get(key)
        if table is None:
            table = []
            for c, h in enumerate(self._base()):
                if c > MAX_COMMAND:
                    table.append(h)
                elif not allowed(conn, c):
                    table.append(_reject(c))
                elif c in _OWNED:
                    table.append(_owned(c, h))
                elif admin:
                    table.append(h)
                elif c in _FUNC_CHECKED:
                    table.append(_func_checked(c, h))
                elif c == STATUS:
                    table.append(_status_filtered(self._status))
                else:
                    table.append(h)
            self._auth[key] = table
        return table

    def clear_auth(self) -> None:
        """Forget the auth tables (the auth rules were replaced)."""
        self._auth.clear()

    def _base(self) -> list[Handler]:
        """Every code's plain handler: the implemented ones (behind the job
        limit when set), the other known codes decoded and ignored, codes
        above :data:`~periodic_fast.constants.MAX_COMMAND` unknown."""
        t: list[Handler] = [_ignore(c) for c in range(MAX_COMMAND + 1)]
        t += [_unknown(c) for c in range(MAX_COMMAND + 1, 256)]
        for c, h in self._handlers().items():
            t[c] = h
        limit = self._max_jobs
        if limit:
            t[SUBMIT_JOB] = _limited(t[SUBMIT_JOB], self._funcs, limit)
            t[RUN_JOB] = _limited(t[RUN_JOB], self._funcs, limit)
            t[LOAD] = _load_limited(t[LOAD], self._funcs, limit)
        return t


# -- table entries and wrappers -----------------------------------------------


def _reject(command: int) -> Handler:
    def reject(conn: Conn, msgid: int, payload: bytes) -> None:
        # a malformed payload still closes the connection, as in the
        # reference (it decodes the whole frame before the role check)
        decode_payload(command, payload)
        conn.send(encode_response(msgid, NO_WORKER))

    return reject


def _unknown(command: int) -> Handler:
    def unknown(conn: Conn, msgid: int, payload: bytes) -> None:
        raise UnknownCommand(f"unknown command {command}")

    return unknown


def _ignore(command: int) -> Handler:
    def ignore(conn: Conn, msgid: int, payload: bytes) -> None:
        decode_payload(command, payload)  # undecodable: close

    return ignore


def _limited(inner: Handler, funcs: Mapping[bytes, Func], limit: int) -> Handler:
    """SUBMIT_JOB / RUN_JOB: a new job beyond ``max_jobs_per_func`` of its
    func gets NO_WORKER and changes nothing."""

    def limited(conn: Conn, msgid: int, payload: bytes) -> None:
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
                conn.send(encode_response(msgid, NO_WORKER))
                return
        inner(conn, msgid, payload)

    return limited


def _load_limited(inner: Handler, funcs: Mapping[bytes, Func], limit: int) -> Handler:
    """LOAD: refused as a whole (NO_WORKER, nothing stored) when any func
    would end up with more than ``max_jobs_per_func`` jobs."""

    def limited(conn: Conn, msgid: int, payload: bytes) -> None:
        new: dict[bytes, set[bytes]] = {}
        for job in decode_job_list(payload):
            fs = funcs.get(job.func)
            if fs is None or job.name not in fs.jobs:
                new.setdefault(job.func, set()).add(job.name)
        for func, names in new.items():
            fs = funcs.get(func)
            if len(names) + (len(fs.jobs) if fs is not None else 0) > limit:
                conn.send(encode_response(msgid, NO_WORKER))
                return
        inner(conn, msgid, payload)

    return limited


def _func_checked(command: int, inner: Handler) -> Handler:
    """Auth on, non-admin: the func named by the request must be in the
    identity's list, else NO_WORKER (protocol.md 5.3)."""

    def checked(conn: Conn, msgid: int, payload: bytes) -> None:
        ident = conn.auth
        assert ident is not None
        if command == LOAD:
            jobs = decode_job_list(payload)  # malformed: close
            ok = all(ident.func_allowed(job.func) for job in jobs)
        elif payload and payload[0] < len(payload):
            # every other checked payload starts with str8(func); the
            # handler decodes (and refuses) the whole payload
            ok = ident.func_allowed(payload[1 : 1 + payload[0]])
        else:
            ok = False
        if ok:
            inner(conn, msgid, payload)
        else:
            decode_payload(command, payload)  # a malformed payload closes
            conn.send(encode_response(msgid, NO_WORKER))

    return checked


def _owned(command: int, inner: Handler) -> Handler:
    """Auth on: WORK_DONE, WORK_FAIL, SCHED_LATER, WORK_DATA, ACQUIRE and
    RELEASE only for a job assigned to this connection, else NO_WORKER
    (stricter than the reference, which lets any worker end any job); and
    ACQUIRE only of a lock the identity may use (docs/security.md, "Locks")."""

    def owned(conn: Conn, msgid: int, payload: bytes) -> None:
        if command in (ACQUIRE, RELEASE):
            fields = decode_payload(command, payload)  # malformed: close
            key = handle_key(fields[-2], fields[-1])
            ident = conn.auth
            assert ident is not None
            if command == ACQUIRE and not ident.lock_allowed(fields[0]):
                conn.send(encode_response(msgid, NO_WORKER))
                return
        else:  # the payload starts with the handle
            key = payload[: handle_end(payload)]
        if key in conn.running or any(
            a.rec.key == key for a in conn.unconfirmed.values()
        ):
            inner(conn, msgid, payload)  # decodes the whole payload
        else:
            decode_payload(command, payload)  # a malformed payload closes
            conn.send(encode_response(msgid, NO_WORKER))

    return owned


def _status_filtered(status: Callable[[], list[FuncStat]]) -> Handler:
    """STATUS for a non-admin identity: only the funcs it may use."""

    def filtered(conn: Conn, msgid: int, payload: bytes) -> None:
        if payload:
            raise TrailingBytes("STATUS carries no payload")
        ident = conn.auth
        assert ident is not None
        stats = [s for s in status() if ident.func_allowed(s.func)]
        conn.send(encode_response(msgid, DATA, encode_status(stats)))

    return filtered
