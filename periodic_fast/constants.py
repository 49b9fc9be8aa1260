"""Wire constants of the Periodic protocol and the server's defaults.

Byte values and names follow docs/protocol.md; nothing here imports anything
beyond the standard library.
"""

from __future__ import annotations

import enum
from typing import Final

#: Magic that starts every client -> server frame.
MAGIC_REQUEST: Final = b"\x00REQ"
#: Magic that starts every server -> client frame.
MAGIC_RESPONSE: Final = b"\x00RES"
#: magic (4) + body length (4) + CRC-32 (4)
HEADER_SIZE: Final = 12
#: Length of the opaque message id that starts every non-registration body.
MSGID_SIZE: Final = 4
#: Default cap on one frame's body (the AES transport's own cap).
DEFAULT_MAX_FRAME: Final = 64 * 1024 * 1024
#: Largest registration frame body (client type + identity): an
#: unauthenticated peer may make the server buffer no more than this.
DEFAULT_MAX_REGISTRATION: Final = 4096
#: Log lines per second, per kind, that peers may cause (server/logbound).
DEFAULT_PEER_LOG_RATE: Final = 5.0

#: Built-in default listen / connect address (the reference's).
DEFAULT_ADDRESS: Final = "unix:///tmp/periodic.sock"
#: Environment variable that overrides the address for every tool.
ADDRESS_ENV: Final = "PERIODIC_PORT"


class Command(enum.IntEnum):
    """Command codes (the byte after the msgid)."""

    NOOP = 0  #: reply to SLEEP
    GRAB_JOB = 1  #: worker offers a slot (its msgid)
    SCHED_LATER = 2  #: worker: run again after a delay
    WORK_DONE = 3  #: worker: finished, with a result
    WORK_FAIL = 4  #: worker: failed
    JOB_ASSIGN = 5  #: server pushes a job to a grab slot
    NO_JOB = 6  #: obsolete; never sent
    CAN_DO = 7  #: worker registers a func
    CANT_DO = 8  #: worker unregisters a func
    PING = 9  #: any peer
    PONG = 10  #: reply to PING
    SLEEP = 11  #: vestigial
    UNKNOWN = 12  #: echoed if received
    SUBMIT_JOB = 13  #: client submits a job
    STATUS = 14  #: client asks for per-func stats
    DROP_FUNC = 15  #: client drops a func with no workers
    SUCCESS = 16  #: generic positive reply
    REMOVE_JOB = 17  #: client deletes one job
    DUMP = 18  #: client fetches every job
    LOAD = 19  #: client loads a job list
    SHUTDOWN = 20  #: client stops the server
    BROADCAST = 21  #: worker registers a broadcast func
    CONFIG_GET = 22  #: read a config key
    CONFIG_SET = 23  #: write a config key
    CONFIG = 24  #: reply to CONFIG_GET
    RUN_JOB = 25  #: client runs a job and waits for its result
    ACQUIRED = 26  #: reply to ACQUIRE
    ACQUIRE = 27  #: worker takes a named counting lock
    RELEASE = 28  #: worker releases a lock
    NO_WORKER = 29  #: no worker for the func / rejected
    DATA = 30  #: raw data reply
    RECV_DATA = 31  #: client subscribes to a job's streamed data
    WORK_DATA = 32  #: worker streams a chunk
    JOB_ASSIGNED = 33  #: worker confirms an assignment
    JOB_UNASSIGNED = 34  #: worker refuses an assignment


#: Highest valid command code; anything above is UnknownCommand.
MAX_COMMAND: Final = 34


class ClientType(enum.IntEnum):
    """First byte of the registration frame."""

    CLIENT = 1  #: plain client
    WORKER = 2  #: plain worker
    AUTH_CLIENT = 3  #: client followed by hsbytes(name) hsbytes(token)
    AUTH_WORKER = 4  #: worker followed by hsbytes(name) hsbytes(token)


#: Commands whose payload is empty in both directions.
EMPTY_PAYLOAD_COMMANDS: Final = frozenset(
    {
        Command.NOOP,
        Command.GRAB_JOB,
        Command.NO_JOB,
        Command.PING,
        Command.PONG,
        Command.SLEEP,
        Command.UNKNOWN,
        Command.STATUS,
        Command.SUCCESS,
        Command.DUMP,
        Command.SHUTDOWN,
        Command.NO_WORKER,
        Command.JOB_ASSIGNED,
        Command.JOB_UNASSIGNED,
    }
)

#: Config keys the server knows, with their defaults (protocol.md 4.14).
CONFIG_DEFAULTS: Final[dict[str, int]] = {
    "timeout": 600,
    "lock-timeout": 300,
    "assign-wait": 2,
    "keepalive": 120,
    "max-batch-size": 500,
    "max-pool-size": 2,
    "run-job-aggressive": 0,
}

#: Result texts sent to RUN_JOB callers when a job ends without WORK_DONE.
RESULT_FAILED: Final = b"failed"
RESULT_REMOVED: Final = b"removed"
RESULT_EXPIRED: Final = b"expired"
#: DATA text that ends a RECV_DATA stream.
STREAM_EOF: Final = b"EOF"

__all__ = [
    "ADDRESS_ENV",
    "CONFIG_DEFAULTS",
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_REGISTRATION",
    "DEFAULT_PEER_LOG_RATE",
    "EMPTY_PAYLOAD_COMMANDS",
    "HEADER_SIZE",
    "MAGIC_REQUEST",
    "MAGIC_RESPONSE",
    "MAX_COMMAND",
    "MSGID_SIZE",
    "RESULT_EXPIRED",
    "RESULT_FAILED",
    "RESULT_REMOVED",
    "STREAM_EOF",
    "ClientType",
    "Command",
]
