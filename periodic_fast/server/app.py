"""The server process: listeners, the event loop, the one scheduler timer.

:class:`Server` binds any number of ``tcp://`` and ``unix://`` addresses,
builds the scheduler (or takes one from a factory), and drives it with a single
loop timer: ``scheduler.tick(clock(), mono_clock())`` (``time.time`` and
``time.monotonic`` unless injected), then re-arm for
``min(scheduler.next_wakeup(), mono + 1.0)`` (a monotonic time).  After
each batch of input the timer is pulled earlier if the scheduler now has
earlier work.

:func:`run` (from :mod:`.daemon`, re-exported) is the blocking entry point
used by the CLI: the loop, signals (SIGHUP calls :meth:`Server.reload`),
systemd notify and the pidfile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import os
import resource
import socket
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from .._address import ListenAddress as Address
from .._address import parse_listen_address as parse_address
from .._sockowner import socket_path_problem
from ..auth import AuthFile
from ..constants import DEFAULT_ADDRESS, DEFAULT_MAX_FRAME
from ..errors import PeriodicError
from ..job import Job, JobState
from ..retry import DEFAULT_MAX_DEAD, RetryPolicy
from ..sched_limits import (
    DEFAULT_MAX_FUNCS,
    DEFAULT_MAX_WAITERS,
    DEFAULT_MAX_WAITERS_PER_CONN,
)
from .daemon import NO_UVLOOP_ENV, new_event_loop, run
from .logbound import DEFAULT_PEER_LOG_RATE
from .protocol import (
    DEFAULT_MAX_OUTPUT,
    DEFAULT_MAX_REGISTRATION,
    DEFAULT_REGISTRATION_TIMEOUT,
    Hub,
    new_protocol,
)
from .views import SchedulerView

if TYPE_CHECKING:  # pragma: no cover
    from ..store import Store, StoreSnapshot
    from .cluster_node import ClusterNode, ClusterOptions

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "NO_UVLOOP_ENV",
    "Address",
    "AddressInUse",
    "SchedulerFactory",
    "Server",
    "default_max_connections",
    "new_event_loop",
    "parse_address",
    "run",
]

log = logging.getLogger("periodic_fast.server")

# the scheduler's own limits (docs/security.md), as Server keywords
_DEFAULT_LIMITS = {
    "max_funcs": DEFAULT_MAX_FUNCS,
    "max_waiters": DEFAULT_MAX_WAITERS,
    "max_waiters_per_conn": DEFAULT_MAX_WAITERS_PER_CONN,
}

#: ``factory(now, on_shutdown) -> scheduler``
SchedulerFactory = Callable[[float, Callable[[], None]], SchedulerView]
#: ``progress(jobs) -> jobs``: sees the stored jobs stream by at start
LoadProgress = Callable[
    [Iterable[tuple[Job, JobState]]], Iterable[tuple[Job, JobState]]
]

#: Open binary connections allowed by default (fewer when the process may
#: open fewer files: see :func:`default_max_connections`).
DEFAULT_MAX_CONNECTIONS = 10_000
# file descriptors kept for the rest: 256 HTTP connections, the store, logs
_FD_RESERVE = 320


def default_max_connections() -> int:
    """:data:`DEFAULT_MAX_CONNECTIONS`, or less when ``RLIMIT_NOFILE`` is
    lower: an extra connection is then closed cleanly instead of failing
    ``accept()`` with EMFILE (which also starves the HTTP probes)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return DEFAULT_MAX_CONNECTIONS
    return max(16, min(DEFAULT_MAX_CONNECTIONS, soft - _FD_RESERVE))


class AddressInUse(PeriodicError):
    """Another live server already listens on a unix socket path."""


def _format_sockname(family: int, name: Any) -> str:
    if family == socket.AF_UNIX:
        return f"unix://{name}"
    host, port = name[0], name[1]
    if family == socket.AF_INET6:
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def _check_unix_path(path: str) -> None:
    """Refuse a path a live server answers on, or one another user owns
    (docs/security.md); delete a stale socket file."""
    if (problem := socket_path_problem(path, binding=True)) is not None:
        raise AddressInUse(f"refusing unix://{path}: {problem}")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AddressInUse(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        log.info("removing stale socket file %s", path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    finally:
        probe.close()
    raise AddressInUse(f"address in use: unix://{path} (a server answers there)")


def _bind_unix(path: str, mode: int) -> socket.socket:
    """A listening unix socket at ``path`` whose file has ``mode``.

    The mode is set between bind() and listen(): nobody can connect before
    the file has its final permissions.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        try:
            os.chmod(path, mode)
            sock.listen(1024)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _default_factory(
    store: str | Store,
    durability: str,
    config: Mapping[str, int] | None,
    owned: list[Store],
    max_jobs_per_func: int = 0,
    limits: Mapping[str, int] | None = None,
    mono_clock: Callable[[], float] = time.monotonic,
    load_progress: LoadProgress | None = None,
    retry: tuple[RetryPolicy | None, int] = (None, DEFAULT_MAX_DEAD),
    opener: Callable[[str, str], Store] | None = None,
) -> SchedulerFactory:
    lim = {**_DEFAULT_LIMITS, **(limits or {})}

    def factory(now: float, on_shutdown: Callable[[], None]) -> SchedulerView:
        from ..scheduler import Scheduler  # noqa: PLC0415  # L3 loaded on start

        if isinstance(store, str):
            opened = (opener or _open_store)(store, durability)
            owned.append(opened)
        else:  # a Store instance: the caller owns it
            opened = store
        with _watched_load(opened, load_progress):
            return Scheduler(
                opened,
                now,
                config=config,
                on_shutdown=on_shutdown,
                max_jobs_per_func=max_jobs_per_func,
                max_funcs=lim["max_funcs"],
                max_waiters=lim["max_waiters"],
                max_waiters_per_conn=lim["max_waiters_per_conn"],
                mono=mono_clock(),
                retry_policy=retry[0],
                max_dead=retry[1],
            )

    return factory


def _open_store(uri: str, durability: str) -> Store:
    from ..store import open_store  # noqa: PLC0415  # L2 loaded on start

    return open_store(uri, durability=durability)


@contextlib.contextmanager
def _watched_load(store: Store, progress: LoadProgress | None) -> Iterator[None]:
    """While the scheduler is built, ``store.load()`` hands its job stream
    through ``progress`` (a terminal's progress bar).  The store's own
    ``load`` is shadowed on the instance for that time only: nothing stands
    between the scheduler and the store once it runs.  A store that takes no
    instance attribute (the memory store, empty at start) is left alone."""
    if progress is None:
        yield
        return
    load = store.load

    def watched() -> StoreSnapshot:
        snap = load()
        # the scheduler reads ``groups`` or ``rows`` when a store offers
        # them: hide them, so it consumes the watched job stream (only while
        # a bar is shown)
        return snap._replace(jobs=progress(snap.jobs), rows=None, groups=None)

    try:
        store.load = watched  # type: ignore[method-assign]
    except AttributeError:
        yield
        return
    try:
        yield
    finally:
        del store.load


def _cluster_opener(
    cluster: ClusterOptions,
    first: str,
    factory: SchedulerFactory | None,
    store: str | Store,
) -> Callable[[str, str], Store]:
    """The store opener of a cluster node (checked here: a clear error
    before anything starts)."""
    from .cluster_node import (  # noqa: PLC0415  # only in cluster mode
        NEEDS_POSTGRES,
        default_node_id,
        open_cluster_store,
    )

    if factory is not None or not isinstance(store, str):
        raise ValueError("cluster mode needs the default scheduler and a store URI")
    if not store.removeprefix("cache+").startswith(("postgres:", "postgresql:")):
        raise ValueError(f"{NEEDS_POSTGRES}; got {store!r}")
    node = cluster.node or default_node_id(first)

    def opener(uri: str, durability: str) -> Store:
        return open_cluster_store(uri, durability, cluster, node)

    return opener


class Server:
    """A Periodic server on the running event loop.

    Use ``async with Server([...]) as srv:`` (or :meth:`start` / :meth:`stop`),
    and :meth:`serve_forever` to run until :meth:`request_stop` (SIGTERM,
    SIGINT, or a SHUTDOWN frame).

    :param addresses: listen addresses (see :func:`parse_address`).
    :param store: store URI for the default scheduler (``":memory:"``), or a
        :class:`~periodic_fast.store.Store` instance (the caller closes it).
    :param durability: ``"strict"`` or ``"relaxed"`` (durable stores only).
    :param config: initial config keys for the scheduler (protocol.md 4.14).
    :param scheduler_factory: build the scheduler yourself:
        ``factory(now, on_shutdown)``; the caller then owns its store.
    :param max_frame: largest request frame body accepted.
    :param registration_timeout: seconds to wait for a registration frame
        (0 disables).
    :param max_output: unread output after which a peer is dropped.
    :param name: server name used in log lines.
    :param clock: wall clock in float seconds (``time.time``); every "now"
        the scheduler sees comes from it (when jobs are due).  Tests inject a
        movable clock and call :meth:`poke` after moving it.
    :param mono_clock: monotonic clock (``time.monotonic``) for every
        deadline (keepalive, assign-wait, timeouts, waiters, locks, sweeps);
        None: ``time.monotonic``, or ``clock`` itself when one is injected
        (one movable clock then drives both).  A scheduler from a
        ``scheduler_factory`` gets it with each call.
    :param auth_file: path of an auth file (docs/security.md); read at
        start (a missing or malformed file stops the start with
        :class:`~periodic_fast.auth.AuthFileError`), then checked for changes
        every ``auth_poll`` seconds.  None: no authentication.
    :param auth_poll: seconds between two checks of the auth file.
    :param unix_mode: permission bits of the unix socket files (0o600: only
        the server's user may connect).
    :param max_connections: open connections allowed at once; an extra one
        is closed at once and logged (0: no limit; None: the default,
        :func:`default_max_connections`).
    :param peer_log_rate: log lines per second per kind that peers may cause
        (refusals, protocol errors, bad HTTP requests), after a burst of 4 s
        worth; then one "suppressed K similar messages" line (0: no limit).
        Peer bytes in those lines are cut to a bounded length.
    :param max_registration: largest registration frame body (client type
        and identity); a larger one is refused from its header.
    :param max_jobs_per_func: stored jobs allowed per func; a submission
        beyond it gets NO_WORKER (0: no limit; default scheduler only).
    :param max_funcs: known funcs allowed (0: no limit; default scheduler
        only; docs/security.md).
    :param max_waiters: RUN_JOB/RECV_DATA waiters allowed, all connections
        together (0: no limit; default scheduler only).
    :param max_waiters_per_conn: the same per connection.
    :param rsa_private_path: the server's RSA private key (PEM); set, every
        connection must start with the RSA/AES handshake (docs/transport.md).
    :param rsa_public_path: allowed client public keys: a PEM file (several
        keys allowed) or a directory of ``*.pem`` files.
    :param rsa_modes: stream modes clients may pick: ``"Plain,RSA,AES"``.
    :param rsa_legacy: also serve aio-periodic 1.0.0's legacy handshake
        (which does not prove the client holds its private key; default
        off, a refused legacy hello is logged naming ``--rsa-legacy``).
    :param rsa_v1: serve the reference's v1 handshake (default on; whose
        mode and session key a relay can swap); v2 is always served.
    :param http: answer HTTP on every listener (sniffed from the first bytes;
        docs/http.md).  Off with the RSA/AES transport.
    :param http_writes: let HTTP submit, remove and drop from any peer
        without an auth file (else only loopback and unix peers may).
    :param http_options: more :class:`~.http_app.HttpApp` keywords (``parser``,
        ``max_body``, ``read_timeout``, ``idle_timeout``, ...).
    :param retry_policy: the default retry policy (None: the built-in one;
        docs/retries.md; default scheduler only).
    :param max_dead: jobs kept in the dead set at most (default scheduler only).
    :param load_progress: ``progress(jobs) -> jobs``, handed the stored jobs
        as the default scheduler loads them at start (the CLI's progress bar
        on a terminal).
    :param cluster: run as a cluster node (docs/cluster.md): ``store`` must
        be a ``postgres://`` URI shared by every node; the heartbeat
        (:class:`~.cluster_node.ClusterNode`) loads the partitions this node
        acquires, and :meth:`stop` hands them over.
    """

    def __init__(
        self,
        addresses: Sequence[str] = (DEFAULT_ADDRESS,),
        *,
        store: str | Store = ":memory:",
        durability: str = "strict",
        config: Mapping[str, int] | None = None,
        scheduler_factory: SchedulerFactory | None = None,
        max_frame: int = DEFAULT_MAX_FRAME,
        registration_timeout: float = DEFAULT_REGISTRATION_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
        name: str = "periodicd",
        clock: Callable[[], float] = time.time,
        mono_clock: Callable[[], float] | None = None,
        auth_file: str | os.PathLike[str] | None = None,
        auth_poll: float = 1.0,
        unix_mode: int = 0o600,
        max_connections: int | None = None,
        max_registration: int = DEFAULT_MAX_REGISTRATION,
        peer_log_rate: float = DEFAULT_PEER_LOG_RATE,
        max_jobs_per_func: int = 0,
        max_funcs: int = DEFAULT_MAX_FUNCS,
        max_waiters: int = DEFAULT_MAX_WAITERS,
        max_waiters_per_conn: int = DEFAULT_MAX_WAITERS_PER_CONN,
        rsa_private_path: str | os.PathLike[str] | None = None,
        rsa_public_path: str | os.PathLike[str] = "public_keys.pem",
        rsa_modes: str | Sequence[str] = "Plain,RSA,AES",
        rsa_legacy: bool = False,
        rsa_v1: bool = True,
        http: bool = True,
        http_writes: bool = False,
        http_options: Mapping[str, Any] | None = None,
        load_progress: LoadProgress | None = None,
        retry_policy: RetryPolicy | None = None,
        max_dead: int = DEFAULT_MAX_DEAD,
        cluster: ClusterOptions | None = None,
    ) -> None:
        if not addresses:
            raise ValueError("no listen address")
        if not 0 <= unix_mode <= 0o777:
            raise ValueError(f"bad unix socket mode {unix_mode:#o}")
        if max_connections is None:
            max_connections = default_max_connections()
        if max_connections < 0 or max_jobs_per_func < 0:
            raise ValueError("limits must be >= 0")
        if max_registration < 16:  # a client type and an empty identity fit
            raise ValueError("max_registration must be >= 16")
        if max_jobs_per_func and scheduler_factory is not None:
            raise ValueError("max_jobs_per_func needs the default scheduler")
        limits = {
            "max_funcs": max_funcs,
            "max_waiters": max_waiters,
            "max_waiters_per_conn": max_waiters_per_conn,
        }
        if min(limits.values()) < 0:
            raise ValueError("limits must be >= 0")
        if scheduler_factory is not None and limits != _DEFAULT_LIMITS:
            raise ValueError("scheduler limits need the default scheduler")
        if max_dead < 1:
            raise ValueError("max_dead must be >= 1")
        if scheduler_factory is not None and (
            retry_policy is not None or max_dead != DEFAULT_MAX_DEAD
        ):
            raise ValueError("retry settings need the default scheduler")
        self._requested = [parse_address(a) for a in addresses]
        self._owned: list[Store] = []  # stores we opened and must close
        if mono_clock is None:
            mono_clock = time.monotonic if clock is time.time else clock
        self._mono = mono_clock
        # cluster mode (issue 18): the store opened as a node, a heartbeat
        self._cluster = cluster
        self._node: ClusterNode | None = None
        opener = None
        if cluster is not None:
            opener = _cluster_opener(cluster, addresses[0], scheduler_factory, store)
        self._factory = scheduler_factory or _default_factory(
            store,
            durability,
            config,
            self._owned,
            max_jobs_per_func,
            limits,
            mono_clock,
            load_progress,
            (retry_policy, max_dead),
            opener,
        )
        self._rsa = (rsa_private_path, rsa_public_path, rsa_modes, rsa_legacy, rsa_v1)
        self._http = http
        self._http_writes = http_writes
        self._http_options = dict(http_options or {})
        self._auth_path = auth_file
        self._auth_poll = auth_poll
        self._auth: AuthFile | None = None
        self._auth_timer: asyncio.TimerHandle | None = None
        self._unix_mode = unix_mode
        self._max_connections = max_connections
        self._max_registration = max_registration
        self._peer_log_rate = peer_log_rate
        self._max_frame = max_frame
        self._registration_timeout = registration_timeout
        self._max_output = max_output
        self.name = name
        self._clock = clock
        self._scheduler: SchedulerView | None = None
        self._hub: Hub | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[asyncio.AbstractServer] = []
        self._unix_files: list[tuple[str, int, int]] = []  # path, dev, inode
        self._addresses: list[str] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = 0.0
        self._done: asyncio.Event | None = None  # set when stop() has finished
        self._stop_task: asyncio.Task[None] | None = None
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        #: run by :meth:`reload` (SIGHUP), each returning what it reloaded
        self.on_reload: list[Callable[[], str]] = []

    # -- properties --------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        """The bound addresses (real port numbers), one per listening socket."""
        return list(self._addresses)

    @property
    def scheduler(self) -> SchedulerView:
        """The scheduler this server drives (after :meth:`start`)."""
        if self._scheduler is None:
            raise RuntimeError("server not started")
        return self._scheduler

    @property
    def hub(self) -> Hub:
        """The connection hub (after :meth:`start`)."""
        if self._hub is None:
            raise RuntimeError("server not started")
        return self._hub

    # -- life cycle --------------------------------------------------------------

    async def start(self) -> None:
        """Build the scheduler, bind every address and start the timer."""
        if self._state != "new":
            raise RuntimeError("a Server can be started once")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._done = asyncio.Event()
        self._state = "running"
        try:
            if self._auth_path is not None:
                self._auth = AuthFile(self._auth_path)  # malformed: no start
            scheduler = self._factory(self._clock(), self.request_stop)
            self._scheduler = scheduler
            if self._cluster is not None:  # before any connection (install)
                from .cluster_node import ClusterNode  # noqa: PLC0415

                self._node = ClusterNode(
                    self.name,
                    scheduler,  # type: ignore[arg-type]
                    scheduler.store,  # type: ignore[arg-type]
                    clock=self._clock,
                    mono=self._mono,
                    wake=self.input_done,
                )
                self._node.start()
                # input and timer ticks first unload partitions past their
                # dispatch deadline (a loop resuming from a stall)
                self._mono = self._node.guard(self._mono)
            if self._auth is not None:
                scheduler.set_auth(self._auth.rules, self._clock(), self._mono())
            hub = Hub(
                scheduler,
                loop,
                max_frame=self._max_frame,
                registration_timeout=self._registration_timeout,
                max_output=self._max_output,
                clock=self._clock,
                mono=self._mono,
                # replies wait for the store's commits (durable stores)
                store=scheduler.store,
                max_connections=self._max_connections,
                max_registration=self._max_registration,
                peer_log_rate=self._peer_log_rate,
            )
            hub.on_input = self.input_done
            self._hub = hub
            private, public, modes, legacy, v1 = self._rsa
            if private is not None:
                from .secure import MAX_RECORD, SecureConfig  # noqa: PLC0415

                hub.secure = SecureConfig.load(
                    private,
                    public,
                    modes=modes,
                    legacy=legacy,
                    v1=v1,
                    # an AES record must be able to carry the largest frame
                    max_record=max(MAX_RECORD, self._max_frame + 64),
                )
            if self._http and hub.secure is None:
                from .http_app import HttpApp  # noqa: PLC0415  # loaded when used

                http = HttpApp(
                    scheduler,
                    hub,
                    name=self.name,
                    addresses=lambda: self.addresses,
                    running=lambda: self._state == "running",
                    clock=self._clock,
                    mono_clock=self._mono,
                    writes=self._http_writes,
                    **{"peer_log_rate": self._peer_log_rate, **self._http_options},
                )
                if self._node is not None:  # cluster mode: every node's figures
                    http.cluster = self._node.view
                    http.cluster_writes = self._node.http_writes()
                    http.cluster_admin = self._node.http_admin()
                hub.http = http
            for addr in self._requested:
                await self._listen(loop, hub, addr)
            if self._node is not None:  # forwarding: the peers reach us here
                self._node.publish(self._addresses[0], self._max_frame, hub.secure)
        except BaseException:
            await self.stop()
            raise
        self._arm(self._mono())
        if self._auth is not None:
            self._auth_timer = loop.call_later(self._auth_poll, self._poll_auth)
        log.info("%s: listening on %s", self.name, ", ".join(self._addresses))
        self._warn_exposed()

    def _warn_exposed(self) -> None:
        """Warn when TCP listens beyond loopback and nobody must authenticate."""
        if self._auth is not None:
            return
        for bound in self._addresses:
            addr = parse_address(bound)
            if addr.scheme != "tcp" or addr.host is None:
                continue
            try:
                ip = ipaddress.ip_address(addr.host.split("%", 1)[0])
                loopback = ip.is_loopback
            except ValueError:  # pragma: no cover - bound names are numeric
                loopback = False
            if not loopback:
                log.warning(
                    "%s: listening on %s without --auth-file: anyone who "
                    "reaches this address can submit, remove and dump jobs "
                    "and shut the server down",
                    self.name,
                    bound,
                )

    def reload(self) -> list[str]:
        """SIGHUP: re-read the auth file now and run :attr:`on_reload` (the
        CLI's log settings); what was done, one phrase each, for the log."""
        done: list[str] = []
        if self._auth is not None and self._state == "running":
            rules = self._auth.poll()  # a malformed file: logged, old rules kept
            if rules is not None and self._scheduler is not None:
                closed = self._scheduler.set_auth(rules, self._clock(), self._mono())
                done.append(
                    f"auth file {self._auth.path} ({len(rules)} identities,"
                    f" {len(closed)} connection(s) closed)"
                )
            else:
                done.append(f"auth file {self._auth.path} (unchanged)")
        for hook in self.on_reload:
            done.append(hook())
        return done

    def _poll_auth(self) -> None:
        """Every ``auth_poll`` s: reload the auth file if it changed."""
        self._auth_timer = None
        if self._state != "running" or self._auth is None:
            return
        try:
            rules = self._auth.poll()
            if rules is not None and self._scheduler is not None:
                closed = self._scheduler.set_auth(rules, self._clock(), self._mono())
                if closed:
                    log.warning(
                        "%s: auth file changed: closed %d connection(s) whose "
                        "identity is no longer valid",
                        self.name,
                        len(closed),
                    )
        except Exception:  # pragma: no cover - keep polling whatever happens
            log.exception("%s: error reloading the auth file", self.name)
        assert self._loop is not None
        self._auth_timer = self._loop.call_later(self._auth_poll, self._poll_auth)

    async def _listen(
        self, loop: asyncio.AbstractEventLoop, hub: Hub, addr: Address
    ) -> None:
        srv: asyncio.AbstractServer
        if addr.scheme == "tcp":
            srv = await loop.create_server(
                functools.partial(new_protocol, hub),
                # tcp://:PORT -> loopback only (safe default, docs/security.md)
                host=addr.host or "127.0.0.1",
                port=addr.port,
                reuse_address=True,
                backlog=1024,
            )
        else:
            path = addr.host
            assert path is not None
            _check_unix_path(path)
            sock = _bind_unix(path, self._unix_mode)
            try:
                srv = await loop.create_unix_server(
                    functools.partial(new_protocol, hub), sock=sock
                )
            except BaseException:
                sock.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                raise
            st = os.stat(path)
            self._unix_files.append((path, st.st_dev, st.st_ino))
        self._servers.append(srv)
        for sock in srv.sockets:
            self._addresses.append(_format_sockname(sock.family, sock.getsockname()))

    def request_stop(self) -> None:
        """Stop the server soon (SIGTERM, SIGINT, SHUTDOWN): runs :meth:`stop`
        in a task; :meth:`serve_forever` returns when it is done."""
        if self._state == "running" and self._stop_task is None:
            assert self._loop is not None
            log.info("%s: stop requested", self.name)
            self._stop_task = self._loop.create_task(self.stop())

    async def serve_forever(self) -> None:
        """Serve until the server is stopped (:meth:`request_stop`, :meth:`stop`)."""
        if self._state == "new":
            await self.start()
        assert self._done is not None
        try:
            await self._done.wait()
        finally:
            await self.stop()

    async def stop(self, *, grace: float = 2.0) -> None:
        """Stop accepting, close every connection, close the store, remove
        the unix socket files.  Idempotent."""
        if self._state in ("stopping", "stopped"):
            if self._done is not None:
                await self._done.wait()
            return
        self._state = "stopping"
        if self._node is not None:  # hand the partitions over first
            await self._node.leave()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None
        for srv in self._servers:
            srv.close()
        self._remove_unix_files()
        hub = self._hub
        if hub is not None:
            hub.close_all()
            if hub.http is not None:
                hub.http.close_all()
            # let queued writes drain, bounded; then abort stragglers
            deadline = time.monotonic() + grace
            while hub.protocols and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for proto in list(hub.protocols):
                proto.abort()
        for srv in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(srv.wait_closed(), grace)
        self._servers.clear()
        for store in self._owned:
            try:
                store.close()
            except Exception:  # pragma: no cover - store bug
                log.exception("%s: error closing the store", self.name)
        self._owned.clear()
        self._state = "stopped"
        if self._done is not None:
            self._done.set()
        log.info("%s: stopped", self.name)

    def _remove_unix_files(self) -> None:
        for path, dev, ino in self._unix_files:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            if (st.st_dev, st.st_ino) == (dev, ino):  # still ours
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
        self._unix_files.clear()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the one timer -----------------------------------------------------------

    def _arm(self, now: float) -> None:
        """Set the timer; ``now`` and the scheduler's wake-up are monotonic."""
        assert self._scheduler is not None and self._loop is not None
        due = now + 1.0
        nxt = self._scheduler.next_wakeup()
        if nxt is not None and nxt < due:
            due = nxt
        loop = self._loop
        self._timer_due = due
        # floor of 1 ms: a wakeup already in the past must not spin the loop
        delay = max(0.001, due - now)
        self._timer = loop.call_at(loop.time() + delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._state != "running":
            return
        now = self._clock()
        assert self._scheduler is not None
        try:
            self._scheduler.tick(now, self._mono())
        except Exception:
            log.exception("%s: internal error in tick", self.name)
        if self._state == "running":
            self._arm(self._mono())

    def poke(self) -> None:
        """Run the timer now: ``scheduler.tick(clock(), mono_clock())``, then
        re-arm.

        For tests that move an injected clock; a no-op unless running.
        """
        if self._state != "running" or self._scheduler is None:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._on_timer()

    def input_done(self) -> None:
        """Pull the timer earlier if the scheduler now has earlier work."""
        if self._timer is None or self._scheduler is None:
            return
        nxt = self._scheduler.next_wakeup()
        if nxt is not None and nxt < self._timer_due - 0.001:
            self._timer.cancel()
            self._arm(self._mono())
