"""A child process's stdout, line by line: shared by the exec and pipe workers.

:func:`read_lines` reads in 64 KiB chunks (not ``readline``: that one fails
on a line longer than the stream's buffer limit) and yields each line with its
``\\n``; a last line without one is yielded as it is at EOF.  With
``max_line`` a line that grows past that many bytes before its newline ends
the reading with :class:`LineTooLong` (a broken child must not fill our
memory); the lines complete before it were all yielded.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

__all__ = ["CHUNK", "LineTooLong", "read_lines"]

#: bytes asked of the stream per read
CHUNK = 65536


class _Readable(Protocol):
    """What :func:`read_lines` needs of an :class:`asyncio.StreamReader`."""

    async def read(self, n: int = -1) -> bytes: ...


class LineTooLong(ValueError):
    """A line reached more than ``limit`` bytes without a newline."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"a line over {limit} B")
        self.limit = limit


async def read_lines(
    stream: _Readable, max_line: int = 0
) -> AsyncGenerator[bytes, None]:
    """Yield ``stream``'s lines (with their ``\\n``; the last one may lack it)
    until EOF.

    :param max_line: > 0: raise :class:`LineTooLong` once the unfinished line
        holds more than this many bytes (what it held is dropped); 0: no limit.
    """
    pending = b""
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            break
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line + b"\n"
        if max_line and len(pending) > max_line:
            raise LineTooLong(max_line)
    if pending:
        yield pending
