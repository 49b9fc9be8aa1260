"""The command-line apps, built in one place, and their entry points.

* ``periodicd`` (:data:`periodicd_app`): the server,
  :func:`periodic_fast.cli_server.periodicd`;
* ``periodic`` (:data:`app`): ``-d`` runs the same server (every
  ``periodicd`` option follows it); the sub-commands are the client tools of
  :mod:`periodic_fast.cli_jobs`, ``run`` of :mod:`periodic_fast.cli_worker`
  and ``keygen`` of :mod:`periodic_fast.cli_keygen`.  The app's callback
  parses the global connection options into ``ctx.obj``
  (:class:`~periodic_fast.cli_common.ClientOptions`);
* ``periodic-run`` and ``periodic-run-pipe`` (:data:`periodic_run_app`,
  :data:`periodic_run_pipe_app`): the HS exec and pipe workers.

Each app is run by :func:`~periodic_fast.cli_common.run_app`: a usage error
is one line on stderr and exit 2.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from .cli_browse import jobs_app
from .cli_common import (
    CONTEXT_SETTINGS,
    ClientHostsOpt,
    ClientNameOpt,
    ClientOptions,
    ClientTokenOpt,
    RsaModeOpt,
    RsaPrivateOpt,
    RsaPublicOpt,
    VersionOpt,
    run_app,
    split_addresses,
)
from .cli_cron import cron_app
from .cli_jobs import (
    backup,
    config_get,
    config_set,
    drop,
    dump,
    load,
    ping,
    recv,
    remove,
    shutdown,
    status,
    submit,
)
from .cli_keygen import keygen
from .cli_retry import dead_app, retry_app
from .cli_server import periodicd
from .cli_worker import periodic_run, periodic_run_pipe, run

__all__ = [
    "app",
    "config_app",
    "main",
    "periodic_run_app",
    "periodic_run_main",
    "periodic_run_pipe_app",
    "periodic_run_pipe_main",
    "periodicd_app",
    "periodicd_main",
    "periodicd_main_args",
]

# the HS tools: options end at FUNC, everything after COMMAND belongs to it
_HS_CONTEXT: dict[str, Any] = {**CONTEXT_SETTINGS, "allow_interspersed_args": False}


# -- periodicd -----------------------------------------------------------------

periodicd_app = typer.Typer(
    name="periodicd",
    # no completion: it is also "periodic -d", a name no shell can complete
    add_completion=False,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
    help="The Periodic job server.",
)
periodicd_app.command()(periodicd)


def periodicd_main() -> None:
    """Entry point of the ``periodicd`` script."""
    run_app(periodicd_app, "periodicd")


def periodicd_main_args(args: list[str]) -> int:
    """Run ``periodicd`` with ``args``; return its exit status."""
    try:
        run_app(periodicd_app, "periodic -d", args)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1


# -- periodic ------------------------------------------------------------------


def periodic(
    ctx: typer.Context,
    daemon: Annotated[
        bool,
        typer.Option(
            "-d",
            "--daemon",
            help="Run the server (foreground); takes every periodicd option.",
        ),
    ] = False,
    host: ClientHostsOpt = None,
    client_name: ClientNameOpt = None,
    client_token: ClientTokenOpt = None,
    rsa_private_path: RsaPrivateOpt = None,
    rsa_public_path: RsaPublicOpt = None,
    rsa_mode: RsaModeOpt = None,
    version: VersionOpt = False,
) -> None:
    """Periodic job server and client tool."""
    if daemon:  # only reached through --help paths; main() forwards -d
        raise typer.Exit(periodicd_main_args([]))
    # read back by the sub-commands through cli_common.client_options
    ctx.obj = ClientOptions.of(
        split_addresses(host),  # several: the first that answers
        client_name,
        client_token,
        rsa_private_path,
        rsa_public_path,
        rsa_mode,
    )
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)


config_app = typer.Typer(
    name="config",
    help="Read or write server config keys.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)
config_app.command("get")(config_get)
config_app.command("set")(config_set)

app = typer.Typer(
    name="periodic",
    add_completion=True,  # --install-completion, --show-completion
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
    help="Periodic: -d runs the server; sub-commands talk to one.",
)
app.callback(invoke_without_command=True)(periodic)
for _command in (
    status,
    submit,
    remove,
    drop,
    dump,
    load,
    backup,
    recv,
    ping,
    shutdown,
    run,
    keygen,
):
    app.command(_command.__name__)(_command)
app.add_typer(config_app, name="config")
# cron schedules (issue 20): periodic cron list|remove
app.add_typer(cron_app(CONTEXT_SETTINGS), name="cron")
# the job browser (issue 20): periodic jobs list/show/run-now/reschedule/delete
app.add_typer(jobs_app, name="jobs")
# issue 20, retry policies and the dead set: periodic retry ..., periodic dead ...
app.add_typer(retry_app, name="retry")
app.add_typer(dead_app, name="dead")


# global options of ``periodic`` that take a value (the next word)
_VALUE_FLAGS = (
    "-H",
    "--host",
    "--client-name",
    "--client-token",
    "--rsa-private-path",
    "--rsa-public-path",
    "--rsa-mode",
)


def _daemon_args(argv: list[str]) -> list[str] | None:
    """``periodic [-H A] -d [server options]`` -> the periodicd arguments, or
    None when ``-d``/``--daemon`` is not among the global options."""
    for i, arg in enumerate(argv):
        if arg in ("-d", "--daemon"):
            return argv[:i] + argv[i + 1 :]
        if not arg.startswith("-") and (i == 0 or argv[i - 1] not in _VALUE_FLAGS):
            return None  # a sub-command name: its own options follow
    return None


def main() -> None:
    """Entry point of the ``periodic`` script and ``python -m periodic_fast``.

    ``periodic -d ...`` is ``periodicd ...``: the server options are declared
    once, on :func:`~periodic_fast.cli_server.periodicd`.
    """
    daemon = _daemon_args(sys.argv[1:])
    if daemon is not None:
        run_app(periodicd_app, "periodic -d", daemon)
    run_app(app, "periodic")


# -- periodic-run, periodic-run-pipe (the HS tools' own command lines) ---------

periodic_run_app = typer.Typer(
    name="periodic-run",
    add_completion=False,
    rich_markup_mode=None,
    context_settings=_HS_CONTEXT,
    help="Exec worker, HS syntax: periodic-run [OPTIONS] FUNC COMMAND [ARGS...].",
)
periodic_run_app.command()(periodic_run)

periodic_run_pipe_app = typer.Typer(
    name="periodic-run-pipe",
    add_completion=False,
    rich_markup_mode=None,
    context_settings=_HS_CONTEXT,
    help="Pipe worker: periodic-run-pipe [OPTIONS] FUNC COMMAND [ARGS...].",
)
periodic_run_pipe_app.command()(periodic_run_pipe)


def periodic_run_main() -> None:
    """Entry point of the ``periodic-run`` script (HS syntax)."""
    run_app(periodic_run_app, "periodic-run")


def periodic_run_pipe_main() -> None:
    """Entry point of the ``periodic-run-pipe`` script."""
    run_app(periodic_run_pipe_app, "periodic-run-pipe")
