"""The Periodic wire codec: the public switch over its two twins.

``IMPLEMENTATION`` says which twin is live: ``"cython"`` (``_codec_c``) or
``"python"`` (``_codec_py``, also forced by ``PERIODIC_FAST_NO_EXTENSIONS``).
The API is documented in :mod:`periodic_fast._codec_py`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._compat import NO_EXTENSIONS

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

__all__ = [
    "IMPLEMENTATION",
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
]
