"""What every ``periodic*`` command shares (cli-and-http.md 4.2, 4.4).

* :func:`run_app`: runs a typer app, a usage error as one line, exit 2;
* :func:`die`: one ``Error: ...`` line on stderr and an exit status;
* :func:`build_info` and ``--version`` (:data:`VersionOpt`): the version and
  which twins (compiled or pure Python) are running;
* the connection options of the client tools, declared once as Annotated
  aliases, with their environment fallbacks through typer's ``envvar=``
  (flag > variable > default; an empty variable counts as unset);
* :class:`ClientOptions`, those options once parsed (the ``ctx.obj`` of a
  client tool), and :func:`with_client`, which connects with them, runs one
  coroutine and turns every error into one line and exit 1.

Client code is imported inside the functions so the CLI starts fast.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import typer
from typer._click.exceptions import MissingParameter
from typer.exceptions import Abort, TyperException

from .constants import ADDRESS_ENV, DEFAULT_ADDRESS

if TYPE_CHECKING:
    from .admin import AdminClient
    from .client import Client
    from .rsa_transport import RSAConfig, RSAHandshakeName, RSAModeName

__all__ = [
    "with_admin",
    "CONTEXT_SETTINGS",
    "NAME_ENV",
    "RSA_HANDSHAKE_ENV",
    "RSA_MODE_ENV",
    "RSA_PRIVATE_ENV",
    "RSA_PUBLIC_ENV",
    "THREAD_ENV",
    "TOKEN_ENV",
    "VersionOpt",
    "build_info",
    "ClientHostsOpt",
    "ClientNameOpt",
    "ClientOptions",
    "ClientTokenOpt",
    "HsClientNameOpt",
    "HsClientTokenOpt",
    "HsHostOpt",
    "MAX_LATER",
    "MAX_NAME",
    "MAX_TIMEOUT",
    "RsaModeOpt",
    "RsaPrivateOpt",
    "RsaPublicOpt",
    "client_options",
    "die",
    "pick",
    "read_workload",
    "rsa_config",
    "run_app",
    "split_addresses",
    "usage_error",
    "with_client",
]

_T = TypeVar("_T")
NAME_ENV = "PERIODIC_CLIENT_NAME"
TOKEN_ENV = "PERIODIC_CLIENT_TOKEN"
RSA_PRIVATE_ENV = "PERIODIC_RSA_PRIVATE_PATH"
RSA_PUBLIC_ENV = "PERIODIC_RSA_PUBLIC_PATH"
RSA_MODE_ENV = "PERIODIC_RSA_MODE"
#: The handshake generation of the client tools (v2, v1 for the reference
#: server, legacy): an environment variable only, for the rare server that
#: does not speak v2.
RSA_HANDSHAKE_ENV = "PERIODIC_RSA_HANDSHAKE"
THREAD_ENV = "THREAD"
CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"]}
#: longest func, job name or config key on the wire (a u8 length prefix)
MAX_NAME = 255
#: the job timeout and the delay as the wire and the clock take them
MAX_TIMEOUT = 2**31 - 1
MAX_LATER = 2**62


# -- running an app ------------------------------------------------------------------


def run_app(
    application: typer.Typer, prog_name: str, args: list[str] | None = None
) -> NoReturn:
    """Run a typer app; a usage error becomes one line on stderr, exit 2
    (a missing argument: the usage line, then that line).

    Click's standalone mode prints a usage block and a boxed message; scripts
    and health checks want one line they can log, and the exit status.
    """
    try:
        code = application(args=args, prog_name=prog_name, standalone_mode=False)
    except TyperException as exc:  # usage errors and the like (click's, vendored)
        ctx = getattr(exc, "ctx", None)
        hint = f" (try '{ctx.command_path} -h')" if ctx is not None else ""
        if isinstance(exc, MissingParameter) and ctx is not None:
            print(ctx.get_usage(), file=sys.stderr)
        print(f"Error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Abort:
        print("Error: aborted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


def build_info() -> str:
    """The version and the running twins, e.g. ``periodic_fast 0.1.0
    (codec: cython, wheel: cython, rec: cython; CPython 3.11.7)``: whether
    the compiled parts loaded is the first question about a slow server
    (:func:`periodic_fast._build.build_line`)."""
    from ._build import build_line  # noqa: PLC0415  # loads the twins

    return build_line()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(build_info())
        raise typer.Exit(0)


VersionOpt = Annotated[
    bool,
    typer.Option(
        "--version",
        help="Print the version and the build (compiled or pure Python), exit.",
        callback=_print_version,
        is_eager=True,
    ),
]


def die(message: str, code: int = 1) -> NoReturn:
    """Print ``Error: message`` on stderr and exit with ``code``."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def split_addresses(hosts: list[str] | None) -> list[str]:
    """The addresses of repeated and comma-separated ``-H`` values (the flag's
    own, else ``$PERIODIC_PORT``'s), else the default address."""
    out: list[str] = []
    for h in hosts or ():
        out.extend(a.strip() for a in h.split(",") if a.strip())
    return out or [DEFAULT_ADDRESS]


def pick(
    positional: str | None, option: str | None, what: str, ctx: typer.Context
) -> str:
    """The option's value, else the positional one; neither: usage, exit 2.
    A value over the protocol's 255 bytes: one line, exit 2."""
    value = option if option is not None else positional
    if not value:
        usage_error(ctx, f"missing {what}")
    size = len(value.encode())
    if size > MAX_NAME:
        die(f"{what} of {size} bytes is longer than the protocol's {MAX_NAME}", 2)
    return value


def usage_error(ctx: typer.Context, message: str) -> NoReturn:
    """The command's usage line, ``Error: message (try '... -h')``, exit 2:
    what click prints for a missing argument, without the whole help."""
    typer.echo(ctx.get_usage(), err=True)
    die(f"{message} (try '{ctx.command_path} -h')", 2)


def read_workload(value: str | None) -> bytes:
    """A ``-w`` value as bytes; ``@FILE`` reads the file (unreadable: exit 1)."""
    if not value:
        return b""
    if value.startswith("@"):
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            die(f"cannot read workload file {value[1:]}: {exc.strerror}")
    return value.encode()


# -- connection options ----------------------------------------------------------------

# ``show_envvar=False``: each help text already names its variable.
ClientHostsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-H",
        "--host",
        help=f"Server address (default: ${ADDRESS_ENV}, else {DEFAULT_ADDRESS}).",
        show_default=False,
        envvar=ADDRESS_ENV,
        show_envvar=False,
    ),
]
ClientNameOpt = Annotated[
    str | None,
    typer.Option(
        "--client-name",
        help="Identity for servers with an auth file "
        f"(default: ${NAME_ENV}); needs --client-token.",
        show_default=False,
        envvar=NAME_ENV,
        show_envvar=False,
    ),
]
ClientTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--client-token",
        help=f"Token of that identity (default: ${TOKEN_ENV}).",
        show_default=False,
        envvar=TOKEN_ENV,
        show_envvar=False,
    ),
]

# the same options on the HS tools' own command lines (periodic-run, -pipe);
# -H repeats (or takes a comma list): the worker serves every address
HsHostOpt = Annotated[
    list[str] | None,
    typer.Option(
        "-H",
        "--host",
        help=f"Server address, repeatable (default: ${ADDRESS_ENV}, else "
        f"{DEFAULT_ADDRESS}).",
        show_default=False,
        envvar=ADDRESS_ENV,
        show_envvar=False,
    ),
]
HsClientNameOpt = Annotated[
    str | None,
    typer.Option(
        "--client-name",
        help=f"Identity (default: ${NAME_ENV}).",
        show_default=False,
        envvar=NAME_ENV,
        show_envvar=False,
    ),
]
HsClientTokenOpt = Annotated[
    str | None,
    typer.Option(
        "--client-token",
        help=f"Its token (default: ${TOKEN_ENV}).",
        show_default=False,
        envvar=TOKEN_ENV,
        show_envvar=False,
    ),
]

# The RSA/AES transport options every client tool shares; the mode is
# checked when a connection is made (rsa_config), so that a bad one is one
# line and exit 1, as with the reference tools.
RsaPrivateOpt = Annotated[
    str | None,
    typer.Option(
        "--rsa-private-path",
        help="Own RSA private key (PEM); connect through the RSA/AES transport "
        f"(default: ${RSA_PRIVATE_ENV}; off when empty).",
        show_default=False,
        envvar=RSA_PRIVATE_ENV,
        show_envvar=False,
    ),
]
RsaPublicOpt = Annotated[
    str | None,
    typer.Option(
        "--rsa-public-path",
        help="The server's RSA public key, file or directory "
        f"(default: ${RSA_PUBLIC_ENV}, else public_key.pem).",
        show_default=False,
        envvar=RSA_PUBLIC_ENV,
        show_envvar=False,
    ),
]
RsaModeOpt = Annotated[
    str | None,
    typer.Option(
        "--rsa-mode",
        help=f"Plain, RSA or AES (default: ${RSA_MODE_ENV}, else AES).",
        show_default=False,
        envvar=RSA_MODE_ENV,
        show_envvar=False,
    ),
]


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """The connection options of a client tool, parsed (the ``ctx.obj`` of
    ``periodic`` and of the HS tools); an empty value counts as unset."""

    address: str
    name: str | None = None
    token: str | None = None
    rsa_private_path: str | None = None
    rsa_public_path: str | None = None
    rsa_mode: str | None = None
    #: every address given (several ``-H``, a comma list, ``$PERIODIC_PORT``
    #: with several); ``address`` is the first; empty: ``address`` alone
    addresses: tuple[str, ...] = ()

    @classmethod
    def of(
        cls,
        address: str | list[str],
        name: str | None,
        token: str | None,
        rsa_private_path: str | None,
        rsa_public_path: str | None,
        rsa_mode: str | None,
    ) -> ClientOptions:
        """The options with empty strings turned into None; ``address`` may
        be the list of every address given (tried in order)."""
        addresses = [address] if isinstance(address, str) else address
        return cls(
            addresses[0],
            name or None,
            token or None,
            rsa_private_path or None,
            rsa_public_path or None,
            rsa_mode or None,
            tuple(addresses),
        )

    def all_addresses(self) -> list[str]:
        """The addresses to try, in order (the first that answers is used)."""
        return list(self.addresses) or [self.address]

    def identity(self) -> tuple[str | None, str | None]:
        """``(name, token)``: both or neither, else one line and exit 1."""
        if (self.name is None) != (self.token is None):
            die(
                "--client-name and --client-token must be provided together "
                f"(or ${NAME_ENV} and ${TOKEN_ENV})"
            )
        return self.name, self.token


def client_options(ctx: typer.Context) -> ClientOptions:
    """The options the tool's root command stored in ``ctx.obj``."""
    obj = ctx.find_root().obj
    return obj if isinstance(obj, ClientOptions) else ClientOptions(DEFAULT_ADDRESS)


def rsa_config(options: ClientOptions) -> RSAConfig | None:
    """The RSA/AES transport options as a config with its keys read, or None
    when no private key is given.  A bad mode (even with the transport off),
    a missing or bad key file, or no ``cryptography``: one line, exit 1."""
    from .rsa_transport import (  # noqa: PLC0415  # CLI starts fast
        DEFAULT_PUBLIC_PATH,
        HANDSHAKES,
        MODES,
        RSAConfig,
        RSAUnavailable,
    )

    mode = options.rsa_mode or "AES"
    if mode not in MODES:
        die(
            f"unknown RSA mode {mode!r} (--rsa-mode or ${RSA_MODE_ENV}: "
            "Plain, RSA or AES)"
        )
    handshake = os.environ.get(RSA_HANDSHAKE_ENV) or HANDSHAKES[0]
    if handshake not in HANDSHAKES:
        die(
            f"unknown RSA handshake {handshake!r} "
            f"(${RSA_HANDSHAKE_ENV}: v2, v1 or legacy)"
        )
    if not options.rsa_private_path:
        return None
    public = options.rsa_public_path or DEFAULT_PUBLIC_PATH
    try:
        config = RSAConfig(
            options.rsa_private_path,
            public,
            mode=cast("RSAModeName", mode),
            handshake=cast("RSAHandshakeName", handshake),
        )
        config.load()  # errors now, as one line; the client reuses the keys
    except (ValueError, RSAUnavailable) as exc:
        die(str(exc))
    return config


def with_client(
    ctx: typer.Context,
    body: Callable[[Client], Awaitable[_T]],
    *,
    timeout: float = 10.0,
    max_frame: int | None = None,
) -> _T:
    """Connect, run ``body(client)``, close; any error -> one line, exit 1.
    ``max_frame`` raises the client's cap on a reply frame (DUMP).

    With several addresses (nodes of one ``--cluster``, where any node
    answers any request, or stand-bys) the first that accepts the
    connection is used; a dead one is skipped.  Nothing is sent again after
    a connection lost mid-request (the tool cannot know whether it landed:
    one line, exit 1)."""
    from .client import Client, ClientError  # noqa: PLC0415  # CLI starts fast
    from .errors import NotConnected, PeriodicError  # noqa: PLC0415

    options = client_options(ctx)
    address = options.address
    try:
        name, token = options.identity()
        rsa = rsa_config(options)
        clients = [
            Client(
                a,
                reconnect=False,
                timeout=timeout,
                name=name,
                token=token,
                rsa=rsa,
                **({} if max_frame is None else {"max_frame": max_frame}),
            )
            for a in options.all_addresses()
        ]
    except ValueError as exc:
        die(str(exc))

    async def main() -> _T:
        nonlocal address
        refused: list[str] = []
        for client in clients:
            try:
                await client.connect()
            except NotConnected as exc:  # down: the next address
                refused.append(str(exc))
                await client.close()
                continue
            address = client.address
            try:
                return await body(client)
            finally:
                await client.close()
        raise NotConnected("; ".join(refused))

    try:
        return asyncio.run(main())
    except ClientError as exc:
        die(str(exc) or type(exc).__name__)
    except (PeriodicError, OSError) as exc:
        die(f"{address}: {exc}")
    except ValueError as exc:  # a request the codec or the client refused to send
        die(str(exc))


def with_admin(
    ctx: typer.Context,
    body: Callable[[AdminClient], Awaitable[_T]],
    *,
    timeout: float = 30.0,
) -> _T:
    """Run ``body(admin)`` with an :class:`~periodic_fast.admin.AdminClient`
    on the tool's address and token; any error -> one line, exit 1."""
    from .admin import AdminClient, AdminError  # noqa: PLC0415  # CLI starts fast

    options = client_options(ctx)
    try:
        admin = AdminClient(options.address, token=options.token, timeout=timeout)
    except ValueError as exc:
        die(str(exc))

    async def main() -> _T:
        return await body(admin)

    try:
        return asyncio.run(main())
    except AdminError as exc:
        die(str(exc))
    except TimeoutError:
        die(f"{options.address}: no answer in {timeout:g} s")
    except OSError as exc:
        die(f"{options.address}: {exc.strerror or exc}")
