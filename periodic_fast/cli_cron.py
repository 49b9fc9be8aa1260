"""``periodic cron list|remove`` and ``periodic submit --cron`` (docs/cron.md).

Cron schedules live in the server and are reached through its JSON API
(:class:`~periodic_fast.admin.AdminClient`), not the wire protocol.  Exit
status: 0 on success; 1 with a one-line ``Error: ...`` when the server
cannot be reached or refuses; 2 for bad usage.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .cli_common import with_admin

if TYPE_CHECKING:
    from .admin import AdminClient

__all__ = ["cron_app", "cron_list", "cron_remove", "submit_cron"]

MISSED_HELP = (
    "After downtime: 'once' runs a missed job once, 'skip' waits for the next fire."
)


def submit_cron(
    ctx: typer.Context,
    func: str,
    name: str,
    expr: str,
    *,
    tz: str,
    missed: str,
    args: str,
    timeout: int,
) -> None:
    """``submit FUNC NAME --cron EXPR``: create or replace the schedule and
    print its next fire."""

    async def body(admin: AdminClient) -> int:
        return await admin.add_cron(
            func, name, expr, tz=tz, missed=missed, args=args, timeout=timeout
        )

    when = with_admin(ctx, body)
    typer.echo(f"scheduled {func}:{name}, next run at {when}")


def cron_list(
    ctx: typer.Context,
    func: Annotated[str | None, typer.Argument(metavar="[FUNC]")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON instead of a table.")
    ] = False,
) -> None:
    """List cron schedules (of FUNC only, when given)."""

    async def body(admin: AdminClient) -> list[dict[str, Any]]:
        return await admin.cron_schedules(func)

    rows = with_admin(ctx, body)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        typer.echo("no cron schedules")
        return
    head = ("FUNC", "NAME", "CRON", "TZ", "MISSED", "STATE", "NEXT RUN")
    table = [head] + [
        (
            r["func"],
            r["name"],
            r["cron"],
            r["tz"],
            r["missed"],
            r["state"],
            (r["next_runs"] or [""])[0],
        )
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    for row in table:
        typer.echo(
            "  ".join(
                str(v).ljust(w) for v, w in zip(row, widths, strict=True)
            ).rstrip()
        )


def cron_remove(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC")],
    name: Annotated[str, typer.Argument(metavar="NAME")],
) -> None:
    """Remove the cron schedule of FUNC NAME, and its job."""

    async def body(admin: AdminClient) -> None:
        await admin.remove_cron(func, name)

    with_admin(ctx, body)


def cron_app(settings: dict[str, Any]) -> typer.Typer:
    """The ``periodic cron`` sub-app."""
    app = typer.Typer(
        name="cron",
        help="List or remove cron schedules (create them with submit --cron).",
        no_args_is_help=True,
        rich_markup_mode=None,
        context_settings=settings,
    )
    app.command("list")(cron_list)
    app.command("remove")(cron_remove)
    return app
