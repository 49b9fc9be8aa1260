"""``periodic retry show|set|reset`` and ``periodic dead list|retry|delete``.

Retry policies and the dead set (docs/retries.md) through the server's JSON
API (:class:`~periodic_fast.admin.AdminClient`, with the tool's address and
token).  :mod:`periodic_fast.cli` registers the two sub-apps.

Exit status: 0 on success; 1 with one ``Error: ...`` line when the server
cannot be reached or refuses (bad values, unknown func); 2 for bad usage.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli_common import CONTEXT_SETTINGS, usage_error, with_admin

if TYPE_CHECKING:
    from .admin import AdminClient

__all__ = ["dead_app", "retry_app"]

retry_app = typer.Typer(
    name="retry",
    help="Show or set retry policies (per func, or the server default).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)
dead_app = typer.Typer(
    name="dead",
    help="List, retry or delete the jobs whose retries are used up.",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)

_FuncArg = Annotated[
    str | None,
    typer.Argument(metavar="FUNC", help="Func (none: the server default)."),
]
_JsonOpt = Annotated[bool, typer.Option("--json", help="Print the JSON answer.")]
_COLUMNS = ("max_attempts", "backoff", "factor", "cap", "jitter")
_HEADER = (
    f"{'func':<24} {'max_attempts':>12} {'backoff':>9} {'factor':>7}"
    f" {'cap':>9} {'jitter':>7}"
)


def _policy_line(label: str, p: dict[str, Any]) -> str:
    attempts = p["max_attempts"] or "unlimited"
    return (
        f"{label:<24} {attempts!s:>12} {p['backoff']:>9g} {p['factor']:>7g}"
        f" {p['cap']:>9g} {p['jitter']:>7g}"
    )


@retry_app.command("show")
def retry_show(
    ctx: typer.Context, func: _FuncArg = None, as_json: _JsonOpt = False
) -> None:
    """Print the default policy and every func's own (or FUNC's policy)."""

    async def body(admin: AdminClient) -> dict[str, Any]:
        return await admin.retry_policies()

    answer = with_admin(ctx, body)
    funcs: dict[str, Any] = answer["funcs"]
    if func is not None:
        own = func in funcs
        policy = funcs.get(func, answer["default"])
        if as_json:
            typer.echo(json.dumps({"func": func, "own": own, "policy": policy}))
            return
        typer.echo(_HEADER)
        typer.echo(_policy_line(func if own else f"{func} (default)", policy))
        return
    if as_json:
        typer.echo(json.dumps(answer))
        return
    typer.echo(_HEADER)
    typer.echo(_policy_line("(default)", answer["default"]))
    for name, policy in sorted(funcs.items()):
        typer.echo(_policy_line(name, policy))


@retry_app.command("set")
def retry_set(
    ctx: typer.Context,
    func: _FuncArg = None,
    max_attempts: Annotated[
        int | None,
        typer.Option(
            "--max-attempts", min=0, help="Failures before the dead set (0: never)."
        ),
    ] = None,
    backoff: Annotated[
        float | None,
        typer.Option("--backoff", min=0, help="First delay, seconds."),
    ] = None,
    factor: Annotated[
        float | None,
        typer.Option("--factor", min=1, help="Each delay is the last times this."),
    ] = None,
    cap: Annotated[
        float | None, typer.Option("--cap", min=0, help="Longest delay, seconds.")
    ] = None,
    jitter: Annotated[
        float | None,
        typer.Option("--jitter", min=0, max=1, help="Random stretch, 0 to 1."),
    ] = None,
    reference: Annotated[
        bool,
        typer.Option(
            "--reference",
            help="Start from the reference: retry after 1 s, for ever.",
        ),
    ] = False,
    default: Annotated[
        bool,
        typer.Option("--default", help="Start from the built-in default policy."),
    ] = False,
) -> None:
    """Set FUNC's retry policy (no FUNC: the server default).

    Options not given keep their current value, or the preset's."""
    if reference and default:
        usage_error(ctx, "--reference and --default exclude each other")
    fields = {
        k: v
        for k, v in zip(
            _COLUMNS, (max_attempts, backoff, factor, cap, jitter), strict=True
        )
        if v is not None
    }
    preset = "reference" if reference else "default" if default else None
    if not fields and preset is None:
        usage_error(ctx, "nothing to set: give an option, --reference or --default")

    async def body(admin: AdminClient) -> dict[str, Any]:
        return await admin.set_retry_policy(func, preset=preset, **fields)

    policy = with_admin(ctx, body)
    typer.echo(_policy_line(func or "(default)", policy))


@retry_app.command("reset")
def retry_reset(ctx: typer.Context, func: _FuncArg = None) -> None:
    """FUNC follows the default again (no FUNC: the default goes back to
    the server's start-up one)."""

    async def body(admin: AdminClient) -> None:
        await admin.reset_retry_policy(func)

    with_admin(ctx, body)


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))


@dead_app.command("list")
def dead_list(
    ctx: typer.Context,
    func: Annotated[
        str | None, typer.Option("-f", "--func", help="Only this func.")
    ] = None,
    prefix: Annotated[
        str | None, typer.Option("--prefix", help="Only names starting so.")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=500, help="Jobs per page.")
    ] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Page after this cursor.")
    ] = None,
    as_json: _JsonOpt = False,
) -> None:
    """List dead jobs (one page; the next page's cursor is printed last)."""

    async def body(admin: AdminClient) -> dict[str, Any]:
        return await admin.dead_jobs(func, prefix=prefix, cursor=cursor, limit=limit)

    answer = with_admin(ctx, body)
    if as_json:
        typer.echo(json.dumps(answer))
        return
    for d in answer["jobs"]:
        typer.echo(
            f"{d['func']}\t{d['name']}\t{d['attempts']} attempt(s)\t"
            f"{d['reason']}\t{_when(d['failed_at'])}\t{d['worker'] or '-'}"
        )
    tail = f"{answer['total']} dead job(s)"
    if answer["next"]:
        tail += f"; more: --cursor {answer['next']}"
    typer.echo(tail)


def _target(ctx: typer.Context, name: str | None, every: bool) -> None:
    if name is not None and every:
        usage_error(ctx, "give NAME or --all, not both")
    if name is None and not every:
        usage_error(ctx, "give FUNC NAME, FUNC --all or --all")


_DeadFunc = Annotated[str | None, typer.Argument(metavar="FUNC", help="Func.")]
_DeadName = Annotated[str | None, typer.Argument(metavar="NAME", help="Job name.")]
_AllOpt = Annotated[
    bool, typer.Option("--all", help="Every dead job (of FUNC when given).")
]


def _act(ctx: typer.Context, retry: bool, func: str | None, name: str | None) -> int:
    async def body(admin: AdminClient) -> int:
        act = admin.retry_dead if retry else admin.delete_dead
        total = 0
        while True:  # a bulk call handles a bounded slice: call again for more
            count, more = await act(func, name)
            total += count
            if not more or not count:
                return total

    return with_admin(ctx, body)


@dead_app.command("retry")
def dead_retry(
    ctx: typer.Context,
    func: _DeadFunc = None,
    name: _DeadName = None,
    every: _AllOpt = False,
) -> None:
    """Dead jobs back to pending, due now, their failures forgotten."""
    _target(ctx, name, every)
    typer.echo(f"{_act(ctx, True, func, name)} job(s) retried")


@dead_app.command("delete")
def dead_delete(
    ctx: typer.Context,
    func: _DeadFunc = None,
    name: _DeadName = None,
    every: _AllOpt = False,
) -> None:
    """Delete dead jobs."""
    _target(ctx, name, every)
    typer.echo(f"{_act(ctx, False, func, name)} job(s) deleted")
