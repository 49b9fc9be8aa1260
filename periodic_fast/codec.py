"""The Periodic wire codec: the public switch over its two twins.

``IMPLEMENTATION`` says which twin is live: ``"cython"`` (``_codec_c``) or
``"python"`` (``_codec_py``, also forced by ``PERIODIC_FAST_NO_EXTENSIONS``).
The API is documented in :mod:`periodic_fast._codec_py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Literal

from ._compat import NO_EXTENSIONS

if TYPE_CHECKING:
    from .job import Job

IMPLEMENTATION: Literal["cython", "python"]

if TYPE_CHECKING or NO_EXTENSIONS:
    from ._codec_py import (
        Packet,
        Parser,
        decode_handle,
        decode_identity,
        decode_job,
        decode_job_list,
        decode_payload,
        decode_status,
        encode_handle,
        encode_identity,
        encode_job,
        encode_job_list,
        encode_payload,
        encode_registration,
        encode_registration_reply,
        encode_request,
        encode_request_into,
        encode_response,
        encode_response_into,
        encode_status,
    )

    IMPLEMENTATION = "python"
else:
    try:
        from ._codec_c import (
            Packet,
            Parser,
            decode_handle,
            decode_identity,
            decode_job,
            decode_job_list,
            decode_payload,
            decode_status,
            encode_handle,
            encode_identity,
            encode_job,
            encode_job_list,
            encode_payload,
            encode_registration,
            encode_registration_reply,
            encode_request,
            encode_request_into,
            encode_response,
            encode_response_into,
            encode_status,
        )

        IMPLEMENTATION = "cython"
    except ImportError:  # not built; tests/test_switch.py makes this loud
        from ._codec_py import (
            Packet,
            Parser,
            decode_handle,
            decode_identity,
            decode_job,
            decode_job_list,
            decode_payload,
            decode_status,
            encode_handle,
            encode_identity,
            encode_job,
            encode_job_list,
            encode_payload,
            encode_registration,
            encode_registration_reply,
            encode_request,
            encode_request_into,
            encode_response,
            encode_response_into,
            encode_status,
        )

        IMPLEMENTATION = "python"

#: bytes of the LOAD frame body that carries one job besides its func, name
#: and workload: msgid and command (5), the list's count (8), the length
#: prefixes (1 + 1 + 4), sched_at (8), the version byte (1), and count and
#: timeout (4 + 4: a job may gain them later, SCHED_LATER sets its count)
LOAD_FRAME_OVERHEAD: Final = 36

#: a job payload (SUBMIT_JOB, RUN_JOB) at most this much under ``max_frame``
#: fits for sure (encoded, a job is its fields plus 15 to 23 bytes)
_SURE_SLACK: Final = LOAD_FRAME_OVERHEAD - 15


def load_frame_size(job: Job) -> int:
    """The largest LOAD frame body ``job`` can need, in any state.

    Every job a server accepts must survive DUMP and LOAD: the server
    refuses (and our client does not send) a job for which this is over
    ``max_frame`` (issue 17.6)."""
    return len(job[0]) + len(job[1]) + len(job[2]) + LOAD_FRAME_OVERHEAD


def oversize_job(payload: bytes, max_frame: int) -> int:
    """The LOAD frame size the encoded job ``payload`` needs (see
    :func:`load_frame_size`) when that is over ``max_frame``, else 0.  Only a
    payload near the limit is decoded."""
    if len(payload) + _SURE_SLACK <= max_frame:
        return 0
    size = load_frame_size(decode_job(payload))
    return size if size > max_frame else 0


__all__ = [
    "IMPLEMENTATION",
    "LOAD_FRAME_OVERHEAD",
    "Packet",
    "Parser",
    "decode_handle",
    "decode_identity",
    "decode_job",
    "decode_job_list",
    "decode_payload",
    "decode_status",
    "encode_handle",
    "encode_identity",
    "encode_job",
    "encode_job_list",
    "encode_payload",
    "encode_registration",
    "encode_registration_reply",
    "encode_request",
    "encode_request_into",
    "encode_response",
    "encode_response_into",
    "encode_status",
    "load_frame_size",
    "oversize_job",
]
