"""The server as a process: the event loop, signals, systemd notify, pidfile.

:func:`run` is the blocking entry point of ``periodicd``: it picks uvloop
when it is importable (unless ``PERIODIC_FAST_NO_UVLOOP`` is set or asyncio
is asked for), writes the pidfile, stops on SIGTERM / SIGINT, reloads on
SIGHUP (the server keeps serving: a closed ssh session no longer kills it
and leaves its socket file), tells systemd where it stands (``READY=1``,
``RELOADING=1``, ``STOPPING=1``, ``STATUS=...`` to ``$NOTIFY_SOCKET``) and
returns the exit code.  It knows the server only through
:class:`Daemonized`, so this module imports nothing of :mod:`.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import signal
import socket
import sys
import time
from typing import Literal, Protocol

from ..errors import PeriodicError

__all__ = [
    "NO_UVLOOP_ENV",
    "NOTIFY_ENV",
    "Daemonized",
    "LoopName",
    "PidfileError",
    "new_event_loop",
    "notify",
    "remove_pidfile",
    "run",
    "write_pidfile",
]

log = logging.getLogger("periodic_fast.server")

#: Environment variable that forces the stock asyncio loop (any non-empty value).
NO_UVLOOP_ENV = "PERIODIC_FAST_NO_UVLOOP"
#: Where systemd (``Type=notify``) listens for state changes.
NOTIFY_ENV = "NOTIFY_SOCKET"

LoopName = Literal["auto", "asyncio", "uvloop"]


class Daemonized(Protocol):
    """What :func:`run` needs of a server (:class:`~.app.Server` is one)."""

    name: str

    @property
    def addresses(self) -> list[str]: ...

    async def start(self) -> None: ...

    async def serve_forever(self) -> None: ...

    async def stop(self, *, grace: float = 2.0) -> None: ...

    def request_stop(self) -> None: ...

    def reload(self) -> list[str]: ...


class PidfileError(PeriodicError):
    """The pidfile names a live process, or cannot be written."""


# -- systemd notify ------------------------------------------------------------------


def notify(*fields: str) -> bool:
    """Send ``fields`` (``"READY=1"``, ``"STATUS=..."``) as one datagram to
    ``$NOTIFY_SOCKET`` (sd_notify(3); ``@name`` is an abstract socket).

    No socket set (not under systemd) or a send error: False, nothing else.
    """
    path = os.environ.get(NOTIFY_ENV)
    if not path or not path.startswith(("/", "@")):
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as exc:
        log.debug("sd_notify to %s failed: %s", path, exc)
        return False
    return True


# -- pidfile --------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def write_pidfile(path: str) -> None:
    """Write this process's pid to ``path``; refuse (:class:`PidfileError`)
    when it names another live process.  A stale one is replaced."""
    try:
        with open(path, encoding="ascii") as f:
            old = int(f.read().strip() or "0")
    except FileNotFoundError:
        old = 0
    except (OSError, ValueError, UnicodeDecodeError):
        old = 0  # unreadable or garbage: not a live server's
    if old > 0 and old != os.getpid() and _alive(old):
        raise PidfileError(f"pidfile {path} names a running process ({old})")
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)  # never a half-written pidfile
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise PidfileError(f"cannot write pidfile {path}: {exc}") from None


def remove_pidfile(path: str) -> None:
    """Remove ``path`` if it still holds this process's pid."""
    try:
        with open(path, encoding="ascii") as f:
            mine = f.read().strip() == str(os.getpid())
        if mine:
            os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot remove pidfile %s: %s", path, exc)


# -- the loop ------------------------------------------------------------------------


def new_event_loop(loop: LoopName = "auto") -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop when importable (and not disabled), else asyncio.

    ``loop="auto"`` honours :data:`NO_UVLOOP_ENV`; ``"uvloop"`` fails when uvloop
    is missing; ``"asyncio"`` always gives the stock loop.
    """
    if loop == "asyncio" or (loop == "auto" and os.environ.get(NO_UVLOOP_ENV)):
        return asyncio.new_event_loop()
    try:
        import uvloop  # noqa: PLC0415  # optional dependency
    except ImportError:
        if loop == "uvloop":
            raise
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _tune_gc() -> None:
    """Keep the cyclic GC off the hot path of a long-running daemon.

    Jobs and connections are long-lived and rarely cyclic, yet every allocation
    counts towards a generation-0 collection: with the default threshold the
    collector took 25-50% of the scheduler's time in bench/bench_scheduler.py.
    Objects alive after start-up are frozen out of collection, and young
    collections run 70x less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _on_sighup(server: Daemonized) -> None:
    """Reload what can be reloaded, log it, keep serving."""
    notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
    try:
        done = server.reload()
    except Exception:  # a reload must never take the server down
        log.exception("%s: SIGHUP: reload failed; serving on", server.name)
        done = ["failed"]
    log.info("%s: SIGHUP: reloaded %s", server.name, "; ".join(done) or "nothing")
    notify("READY=1", f"STATUS=serving on {', '.join(server.addresses)}")


def _on_stop(server: Daemonized) -> None:
    notify("STOPPING=1", "STATUS=stopping")
    server.request_stop()


def run(
    server: Daemonized, *, loop: LoopName = "auto", pidfile: str | None = None
) -> int:
    """Run ``server`` until SIGTERM, SIGINT or SHUTDOWN; return the exit code.

    SIGHUP calls ``server.reload()``; ``pidfile`` is written before the start
    (refused if it names a live process) and removed at the end.
    """
    if pidfile is not None:
        try:
            write_pidfile(pidfile)
        except PidfileError as exc:
            log.error("%s: cannot start: %s", server.name, exc)
            return 1
    ev = new_event_loop(loop)
    asyncio.set_event_loop(ev)

    async def main() -> int:
        # before the start: a signal while binding or loading the store must
        # not find the default action (SIGHUP would kill the process)
        running = asyncio.get_running_loop()
        handlers = {
            signal.SIGTERM: _on_stop,
            signal.SIGINT: _on_stop,
            signal.SIGHUP: _on_sighup,
        }
        for sig, handler in handlers.items():
            with contextlib.suppress(NotImplementedError, RuntimeError):
                running.add_signal_handler(sig, handler, server)
        try:
            await server.start()
        except (PeriodicError, OSError, ValueError) as exc:  # bind / store URI
            log.error("%s: cannot start: %s", server.name, exc)
            notify(f"STATUS=cannot start: {exc}")
            return 1
        _tune_gc()
        notify(
            "READY=1",
            f"MAINPID={os.getpid()}",
            f"STATUS=serving on {', '.join(server.addresses)}",
        )
        await server.serve_forever()
        notify("STOPPING=1", "STATUS=stopped")
        return 0

    try:
        return ev.run_until_complete(main())
    except KeyboardInterrupt:  # pragma: no cover - signal raced the handler
        ev.run_until_complete(server.stop())
        return 0
    finally:
        with contextlib.suppress(Exception):
            ev.run_until_complete(ev.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        ev.close()
        if pidfile is not None:
            remove_pidfile(pidfile)
        sys.stdout.flush()
