"""``periodic jobs ...``: the job browser from the command line (docs/jobs.md).

* ``periodic jobs list FUNC [--state S] [--prefix P] [--due-from T]
  [--due-to T] [--limit N] [--cursor C] [--json]``: a page of a func's jobs,
  by name, as an aligned table (the next cursor on stderr) or JSON;
* ``periodic jobs show FUNC NAME``: one job in full;
* ``periodic jobs run-now FUNC NAME``, ``periodic jobs reschedule FUNC NAME
  --at T | --in SECONDS``, ``periodic jobs delete FUNC NAME``.

Times are epoch seconds or ISO-8601 (``2025-01-31T08:00:00+01:00``; no
offset: local time).  Each command talks to the server's JSON API through
:func:`~periodic_fast.cli_common.with_admin` (any error: one line, exit 1).
"""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Annotated, Any

import typer

from .cli_common import CONTEXT_SETTINGS, die, with_admin

__all__ = ["jobs_app", "parse_time"]

_STATES = ("pending", "running", "locked", "dead", "all")
_COLUMNS = ("NAME", "STATE", "SCHEDAT", "COUNT", "TIMEOUT", "ATTEMPTS", "ARGS")


def parse_time(value: str, option: str) -> int:
    """Epoch seconds from ``value`` (seconds or ISO-8601); exit 2 if bad."""
    raw = value.strip()
    try:
        return int(float(raw))
    except (ValueError, OverflowError):
        pass
    try:
        return int(datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp())
    except (ValueError, OverflowError, OSError):
        die(f"{option}: {value!r} is neither epoch seconds nor ISO-8601", 2)


def _when(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return "-"
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
    except (OverflowError, OSError, ValueError):
        return str(epoch)


def _table(rows: list[list[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        )


def list_jobs(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC")],
    state: Annotated[
        str,
        typer.Option("--state", "-s", help="pending, running, locked, dead or all."),
    ] = "all",
    prefix: Annotated[
        str | None, typer.Option("--prefix", "-p", help="Names starting with this.")
    ] = None,
    due_from: Annotated[
        str | None, typer.Option("--due-from", help="Due at or after (epoch/ISO).")
    ] = None,
    due_to: Annotated[
        str | None, typer.Option("--due-to", help="Due at or before (epoch/ISO).")
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", "-n", help="Jobs per page.", min=1, max=500)
    ] = 50,
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Resume where a page ended.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List a func's jobs by name, a page at a time."""
    if state not in _STATES:
        die(f"--state must be one of {', '.join(_STATES)}", 2)
    start = None if due_from is None else parse_time(due_from, "--due-from")
    end = None if due_to is None else parse_time(due_to, "--due-to")
    page = with_admin(
        ctx,
        lambda a: a.list_jobs(
            func,
            state=state,
            prefix=prefix,
            due_from=start,
            due_to=end,
            cursor=cursor,
            limit=limit,
        ),
        timeout=60.0,  # a big func's first listing waits for its index
    )
    if as_json:
        typer.echo(json.dumps(page))
        return
    jobs = page.get("jobs") or []
    if jobs:
        rows = [list(_COLUMNS)]
        for j in jobs:
            rows.append(
                [
                    str(j.get("name")),
                    str(j.get("state")),
                    _when(j.get("sched_at")),
                    str(j.get("count")),
                    str(j.get("timeout")),
                    str(j.get("attempts")),
                    str(j.get("args_size")),
                ]
            )
        _table(rows)
    else:
        typer.echo("no jobs on this page")
    if page.get("next"):
        print(f"next page: --cursor {page['next']}", file=sys.stderr)


def show(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC")],
    name: Annotated[str, typer.Argument(metavar="NAME")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one job in full."""
    job = with_admin(ctx, lambda a: a.job(func, name))
    if as_json:
        typer.echo(json.dumps(job))
        return
    fields = [
        ("func", job.get("func")),
        ("name", job.get("name")),
        ("state", job.get("state")),
        ("sched_at", f"{_when(job.get('sched_at'))} ({job.get('sched_at')})"),
        ("count", job.get("count")),
        ("timeout", job.get("timeout")),
        ("attempts", job.get("attempts")),
        ("last_failed_at", _when(job.get("last_failed_at"))),
        ("last_worker", job.get("last_worker") or "-"),
        ("cron", "-" if job.get("cron") is None else json.dumps(job.get("cron"))),
        ("args_size", job.get("args_size")),
        ("args_preview", job.get("args_preview")),
    ]
    _table([[k, str(v)] for k, v in fields])


def run_now(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC")],
    name: Annotated[str, typer.Argument(metavar="NAME")],
) -> None:
    """Make a pending job due now.

    A free worker gets it at once."""
    with_admin(ctx, lambda a: a.run_now(func, name))
    typer.echo("SUCCESS")


def reschedule(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC")],
    name: Annotated[str, typer.Argument(metavar="NAME")],
    at: Annotated[
        str | None, typer.Option("--at", help="New due time (epoch/ISO).")
    ] = None,
    in_: Annotated[
        float | None, typer.Option("--in", help="Due in this many seconds.", min=0)
    ] = None,
) -> None:
    """Move a pending job to a new due time: --at T or --in SECONDS."""
    if (at is None) == (in_ is None):
        die("give exactly one of --at and --in", 2)
    when = parse_time(at, "--at") if at is not None else int(time.time() + (in_ or 0))
    with_admin(ctx, lambda a: a.reschedule(func, name, when))
    typer.echo("SUCCESS")


def delete(
    ctx: typer.Context,
    func: Annotated[str, typer.Argument(metavar="FUNC")],
    name: Annotated[str, typer.Argument(metavar="NAME")],
) -> None:
    """Delete a job (as REMOVE_JOB: its waiters get "removed")."""
    with_admin(ctx, lambda a: a.delete_job(func, name))
    typer.echo("SUCCESS")


jobs_app = typer.Typer(
    name="jobs",
    help="Browse a func's jobs and act on one (the server's JSON API).",
    no_args_is_help=True,
    rich_markup_mode=None,
    context_settings=CONTEXT_SETTINGS,
)
jobs_app.command("list")(list_jobs)
jobs_app.command("show")(show)
jobs_app.command("run-now")(run_now)
jobs_app.command("reschedule")(reschedule)
jobs_app.command("delete")(delete)
