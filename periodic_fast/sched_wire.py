"""Wire-level bits the scheduler works with: command codes and job handles.

The command codes are plain ints taken from
:class:`~periodic_fast.constants.Command` (the one source): an ``IntEnum``
attribute lookup and its ``__eq__``/``__hash__`` cost on the per-frame hot
paths, a module-level int does not.  The payload helpers read job handles
(``str8(func) + str8(name)``, protocol.md 2.2) straight out of request
payloads, without a full decode.
"""

from __future__ import annotations

from typing import Final

from .constants import Command
from .errors import TrailingBytes, TruncatedPayload

__all__ = [
    "ACQUIRE",
    "ACQUIRED",
    "BROADCAST",
    "CAN_DO",
    "CANT_DO",
    "CONFIG",
    "CONFIG_GET",
    "CONFIG_SET",
    "DATA",
    "DROP_FUNC",
    "DUMP",
    "GRAB_JOB",
    "I32_MAX",
    "I32_MIN",
    "I64_MAX",
    "JOB_ASSIGN",
    "JOB_ASSIGNED",
    "JOB_UNASSIGNED",
    "LOAD",
    "NOOP",
    "NO_WORKER",
    "PING",
    "PONG",
    "RECV_DATA",
    "RELEASE",
    "REMOVE_JOB",
    "RUN_JOB",
    "SCHED_LATER",
    "SHUTDOWN",
    "SLEEP",
    "STATUS",
    "SUBMIT_JOB",
    "SUCCESS",
    "UNKNOWN",
    "WORK_DATA",
    "WORK_DONE",
    "WORK_FAIL",
    "exact_handle",
    "handle_end",
    "handle_key",
    "show",
    "show_key",
    "str8",
]

NOOP: Final = int(Command.NOOP)
GRAB_JOB: Final = int(Command.GRAB_JOB)
SCHED_LATER: Final = int(Command.SCHED_LATER)
WORK_DONE: Final = int(Command.WORK_DONE)
WORK_FAIL: Final = int(Command.WORK_FAIL)
JOB_ASSIGN: Final = int(Command.JOB_ASSIGN)
CAN_DO: Final = int(Command.CAN_DO)
CANT_DO: Final = int(Command.CANT_DO)
PING: Final = int(Command.PING)
PONG: Final = int(Command.PONG)
SLEEP: Final = int(Command.SLEEP)
UNKNOWN: Final = int(Command.UNKNOWN)
SUBMIT_JOB: Final = int(Command.SUBMIT_JOB)
STATUS: Final = int(Command.STATUS)
DROP_FUNC: Final = int(Command.DROP_FUNC)
SUCCESS: Final = int(Command.SUCCESS)
REMOVE_JOB: Final = int(Command.REMOVE_JOB)
DUMP: Final = int(Command.DUMP)
LOAD: Final = int(Command.LOAD)
SHUTDOWN: Final = int(Command.SHUTDOWN)
BROADCAST: Final = int(Command.BROADCAST)
CONFIG_GET: Final = int(Command.CONFIG_GET)
CONFIG_SET: Final = int(Command.CONFIG_SET)
CONFIG: Final = int(Command.CONFIG)
RUN_JOB: Final = int(Command.RUN_JOB)
ACQUIRED: Final = int(Command.ACQUIRED)
ACQUIRE: Final = int(Command.ACQUIRE)
RELEASE: Final = int(Command.RELEASE)
NO_WORKER: Final = int(Command.NO_WORKER)
DATA: Final = int(Command.DATA)
RECV_DATA: Final = int(Command.RECV_DATA)
WORK_DATA: Final = int(Command.WORK_DATA)
JOB_ASSIGNED: Final = int(Command.JOB_ASSIGNED)
JOB_UNASSIGNED: Final = int(Command.JOB_UNASSIGNED)

#: Ranges of the job fields on the wire (sched_at i64, count and timeout i32).
I32_MIN: Final = -(1 << 31)
I32_MAX: Final = (1 << 31) - 1
I64_MAX: Final = (1 << 63) - 1


def handle_end(payload: bytes) -> int:
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


def exact_handle(payload: bytes) -> bytes:
    """``payload`` when it is exactly one job handle."""
    if handle_end(payload) != len(payload):
        raise TrailingBytes("trailing bytes after the job handle")
    return payload


def str8(payload: bytes) -> bytes:
    """Decode a payload that is exactly one ``str8``."""
    if not payload:
        raise TruncatedPayload("payload too short for a name")
    n = payload[0] + 1
    if n > len(payload):
        raise TruncatedPayload("payload too short for a name")
    if n < len(payload):
        raise TrailingBytes("trailing bytes after the name")
    return payload[1:]


def handle_key(func: bytes, name: bytes) -> bytes:
    """The job handle ``str8(func) + str8(name)`` (protocol.md 2.2)."""
    return bytes((len(func),)) + func + bytes((len(name),)) + name


def show(raw: bytes) -> str:
    """A name for a log line or an event (never raises, bounded)."""
    text = raw[:80].decode("utf-8", "backslashreplace")
    return text + "..." if len(raw) > 80 else text


def show_key(key: bytes) -> str:
    """``func:name`` of a job handle, for events."""
    n = key[0]
    return f"{show(key[1 : 1 + n])}:{show(key[2 + n :])}"
