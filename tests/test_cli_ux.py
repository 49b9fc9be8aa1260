"""What a user of the command line sees (issue 19): help that fits 80
columns, one line and a non-zero exit for every bad input (never a
traceback), ``--version``, feedback from ``ping``, ``config set`` and
``dump``/``load``, shell completion.

Help is rendered in process (typer's runner, ``COLUMNS=80``); everything
else runs ``python -m periodic_fast`` in a subprocess, as a user would.
"""

from __future__ import annotations

import os
import platform
import pty
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from exec_helpers import env, server_fixtures, status_json
from typer.main import get_command
from typer.testing import CliRunner

from periodic_fast import __version__, cli, codec, rec, wheel
from periodic_fast.client import Client
from periodic_fast.codec import encode_job_list
from periodic_fast.constants import DEFAULT_MAX_FRAME
from periodic_fast.job import Job
from periodic_fast.testing import ServerProcess, running_server

pytestmark = pytest.mark.timeout(120)


# -- help at 80 columns ----------------------------------------------------------------

# rich markup that leaked as text: [bold], [/], [red] ... and literal backticks
_MARKUP = re.compile(r"`|\[/?(?:bold|italic|dim|red|green|blue|yellow|b|i|u)\b[^\]]*\]")
_APPS = {
    "periodic": cli.app,
    "periodicd": cli.periodicd_app,
    "periodic-run": cli.periodic_run_app,
    "periodic-run-pipe": cli.periodic_run_pipe_app,
}


def _commands() -> Iterator[tuple[str, typer.Typer, list[str], object]]:
    """(program, app, sub-command path, click command) of every command."""
    for prog, application in _APPS.items():
        root = get_command(application)
        todo: list[tuple[list[str], object]] = [([], root)]
        while todo:
            path, command = todo.pop()
            yield prog, application, path, command
            subs = getattr(command, "commands", {})
            todo.extend(([*path, name], sub) for name, sub in subs.items())


def _help_cases() -> list[object]:
    return [
        pytest.param(prog, path, id=" ".join([prog, *path]))
        for prog, _, path, _ in _commands()
    ]


@pytest.mark.parametrize(("prog", "path"), _help_cases())
def test_help_fits_80_columns(prog: str, path: list[str]) -> None:
    """Every option name is shown whole, no line is wider than 80 columns,
    no markup character is printed literally."""
    application, command = next(
        (a, c) for p, a, q, c in _commands() if p == prog and q == path
    )
    result = CliRunner().invoke(
        application, [*path, "--help"], prog_name=prog, env={"COLUMNS": "80"}
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Usage:" in out
    for line in out.splitlines():
        assert len(line) <= 80, line
        assert "…" not in line, line
        assert not _MARKUP.search(line), line
        # click cuts a command's summary in the list with "..."
        assert line.startswith("Usage:") or not line.endswith("..."), line
    words = set(re.findall(r"--?[\w-]+", out))
    for param in getattr(command, "params", []):
        if getattr(param, "hidden", False) or param.param_type_name != "option":
            continue
        for name in [*param.opts, *param.secondary_opts]:
            assert name in words, (name, out)


# -- running the tools ---------------------------------------------------------------

DOWN = "tcp://127.0.0.1:1"  # nothing listens: a command that connects fails


def periodic(
    *args: str, address: str = DOWN, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m periodic_fast ARGS`` to completion, at 80 columns."""
    return subprocess.run(
        [sys.executable, "-m", "periodic_fast", *args],
        capture_output=True,
        text=True,
        env=env(address, {"COLUMNS": "80", **(extra or {})}),
        timeout=60,
    )


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: ...`` line of a failed command (no traceback)."""
    assert r.returncode != 0, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("Error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "usage", "error"),
    [
        (["submit", "f"], "periodic submit", "missing NAME"),
        (["submit"], "periodic submit", "missing FUNC"),
        (["remove", "f"], "periodic remove", "need FUNC and at least one NAME"),
        (["drop"], "periodic drop", "need at least one FUNC"),
        (["run", "f"], "periodic run", "missing NAME"),
        (["run", "-f", "f"], "periodic run", "needs both -f FUNC and --exec"),
        (["recv", "f"], "periodic recv", "Missing argument"),
        (["config", "set", "timeout"], "periodic config set", "Missing argument"),
    ],
)
def test_missing_argument_is_usage_and_one_error(
    args: list[str], usage: str, error: str
) -> None:
    """A missing argument: the usage line and the error, not the whole help."""
    r = periodic(*args)
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2, r.stderr
    assert lines[0].startswith(f"Usage: {usage} "), r.stderr
    assert lines[1].startswith("Error: ") and error in lines[1], r.stderr


def _build() -> str:
    return (
        f"periodic_fast {__version__} (codec: {codec.IMPLEMENTATION}, "
        f"wheel: {wheel.IMPLEMENTATION}, rec: {rec.IMPLEMENTATION}; "
        f"{platform.python_implementation()} {platform.python_version()})"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["-d", "--version"],
        ["-H", DOWN, "--version"],
    ],
)
def test_version_names_the_build(args: list[str]) -> None:
    r = periodic(*args)
    assert (r.returncode, r.stdout.strip(), r.stderr) == (0, _build(), "")


@pytest.mark.parametrize(
    "main", ["periodicd_main", "periodic_run_main", "periodic_run_pipe_main"]
)
def test_version_of_the_other_tools(main: str) -> None:
    code = f"from periodic_fast.cli import {main} as m; m()"
    r = subprocess.run(
        [sys.executable, "-c", code, "--version"],
        capture_output=True,
        text=True,
        env=env(None),
        timeout=60,
    )
    assert (r.returncode, r.stdout.strip()) == (0, _build()), r.stderr


def test_start_up_line_names_the_build() -> None:
    with ServerProcess() as proc:
        assert _build() in proc.output()


def test_shell_completion_is_on() -> None:
    r = periodic("--show-completion", "bash")
    assert r.returncode == 0, r.stderr
    assert "_PERIODIC_COMPLETE" in r.stdout
    complete = {"_PERIODIC_COMPLETE": "complete_bash", "COMP_CWORD": "1"}
    r = periodic(extra={**complete, "COMP_WORDS": "periodic sub"})
    assert (r.returncode, r.stdout.split()) == (0, ["submit"]), r.stderr
    r = periodic(
        extra={**complete, "COMP_WORDS": "periodic submit --la", "COMP_CWORD": "2"}
    )
    assert r.stdout.split() == ["--later"], r.stderr


# -- bad input: one line, a non-zero exit, never a traceback ---------------------

server, addr = server_fixtures()
LONG = "x" * 300  # the protocol's names are at most 255 bytes


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["submit", "-f", "f", "-n", "n", "-t", "99999999999"], "--timeout"),
        (["submit", "f", "n", "--later", "99999999999999999999"], "--later"),
        (["run", "f", "n", "-t", "99999999999"], "--timeout"),
        (["config", "set", "timeout", "99999999999"], "VALUE"),
        (["submit", "-f", "f", "-n", LONG], "300 bytes"),
        (["submit", LONG, "n"], "300 bytes"),
        (["run", "f", LONG], "300 bytes"),
    ],
)
def test_out_of_range_is_one_line(addr: str, args: list[str], error: str) -> None:
    line = one_error_line(periodic(*args, address=addr))
    assert error in line, line


@pytest.mark.parametrize(
    "args",
    [
        ["remove", "f", LONG],
        ["drop", LONG],
        ["recv", "f", LONG],
        ["config", "get", LONG],
    ],
)
def test_long_names_sent_to_a_server_are_one_line(addr: str, args: list[str]) -> None:
    line = one_error_line(periodic(*args, address=addr))
    assert "300 bytes" in line, line


@pytest.fixture(scope="module")
def too_big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workload one byte over the default 64 MiB frame limit."""
    path = tmp_path_factory.mktemp("big") / "workload"
    path.write_bytes(b"w" * (DEFAULT_MAX_FRAME + 1))
    return path


@pytest.mark.parametrize("command", ["submit", "run"])
def test_workload_over_the_frame_limit(addr: str, too_big: Path, command: str) -> None:
    """Refused before sending, with the limit named (was: 'connection lost')."""
    line = one_error_line(
        periodic(command, "f", "n", "-w", f"@{too_big}", address=addr)
    )
    assert f"frame limit of {DEFAULT_MAX_FRAME} bytes" in line, line
    assert periodic("ping", address=addr).returncode == 0


def test_load_of_a_job_over_the_frame_limit(addr: str, too_big: Path) -> None:
    dump = too_big.parent / "dump.db"
    dump.write_bytes(
        encode_job_list(
            [Job(b"f", b"small", b""), Job(b"f", b"big", too_big.read_bytes())]
        )
    )
    line = one_error_line(periodic("load", str(dump), address=addr))
    assert f"frame limit of {DEFAULT_MAX_FRAME} bytes" in line, line
    # nothing was loaded: the check comes before the first frame
    assert "f" not in status_json(addr)


async def test_client_refuses_a_frame_over_its_limit() -> None:
    """The client API: a ValueError before anything is sent."""
    async with running_server(unix=False) as srv:
        async with Client(srv.addresses[0], max_frame=1024) as c:
            with pytest.raises(ValueError, match="frame limit of 1024"):
                await c.submit_job("f", "n", b"x" * 1024)
            with pytest.raises(ValueError, match="frame limit of 1024"):
                await c.run_job("f", "n", b"x" * 1024)
            with pytest.raises(ValueError, match="frame limit of 1024"):
                await c.submit_many([("f", "m", b"x" * 1024)])
            with pytest.raises(ValueError, match="frame limit of 1024"):
                await c.load([Job(b"f", b"a"), Job(b"f", b"b", b"x" * 1024)])
            assert await c.submit_job("f", "n", b"x" * 900)
            assert [j.name for j in await c.dump()] == [b"n"]


def test_postgres_without_asyncpg_names_the_extra(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['asyncpg'] = None\n"
        "from periodic_fast.cli import periodicd_main; periodicd_main()"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, "-H", f"unix://{tmp_path}/s.sock",
         "-p", "postgres://u@127.0.0.1:1/db"],
        capture_output=True,
        text=True,
        env=env(None),
        timeout=60,
    )  # fmt: skip
    lines = [ln for ln in r.stderr.splitlines() if " INFO " not in ln]
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "pip install 'periodic-fast[postgres]'" in lines[0], r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        ("./typo.sh", "no such file"),
        ("./not-executable.sh", "not an executable file"),
        ("no-such-command-here", "not found on $PATH"),
    ],
)
def test_exec_command_checked_at_start(
    tmp_path: Path, command: str, reason: str
) -> None:
    """A command that cannot start: one line and exit 1 at once, before
    connecting (the address is down), not a failed job every second."""
    (tmp_path / "not-executable.sh").write_text("#!/bin/sh\necho hi\n")
    for args in (
        ["run", "-f", "f", "--exec", command],
        ["run", "-f", "f", "--exec", f"{command} --flag"],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "periodic_fast", *args],
            capture_output=True,
            text=True,
            env=env(DOWN),
            timeout=60,
            cwd=tmp_path,
        )
        assert r.returncode == 1, r
        assert r.stderr.strip() == f"Error: cannot run {command}: {reason}", r.stderr
    hs = "from periodic_fast.cli import periodic_run_pipe_main as m; m()"
    r = subprocess.run(
        [sys.executable, "-c", hs, "-H", DOWN, "f", command],
        capture_output=True,
        text=True,
        env=env(None),
        timeout=60,
        cwd=tmp_path,
    )
    assert r.stderr.strip() == f"Error: cannot run {command}: {reason}", r.stderr


# -- feedback ------------------------------------------------------------------------


def test_ping_prints_the_round_trip(addr: str) -> None:
    r = periodic("ping", address=addr)
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(rf"pong from {re.escape(addr)} in \d+\.\d ms\n", r.stdout)


def test_config_set_refuses_an_unknown_key(addr: str) -> None:
    line = one_error_line(periodic("config", "set", "nosuchkey", "5", address=addr))
    assert "unknown config key 'nosuchkey'" in line
    assert "lock-timeout" in line  # the known keys are listed
    assert periodic("config", "set", "timeout", "600", address=addr).returncode == 0


def _on_a_terminal(args: list[str], address: str) -> tuple[int, str]:
    """Run ``periodic ARGS`` with stderr on a pseudo-terminal; its exit
    status and what it drew there."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "periodic_fast", *args],
            stdout=subprocess.DEVNULL,
            stderr=slave,
            env=env(address, {"COLUMNS": "80", "TERM": "xterm"}),
        )
        os.close(slave)
        out = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        return proc.wait(60), out.decode(errors="replace")
    finally:
        os.close(master)


def test_dump_and_load_show_progress_on_a_terminal_only(
    addr: str, tmp_path: Path
) -> None:
    src = tmp_path / "src.db"
    at = int(time.time()) + 3600
    src.write_bytes(
        encode_job_list([Job(b"prog", b"j%d" % i, b"", at) for i in range(3000)])
    )
    try:
        code, drawn = _on_a_terminal(["load", str(src)], addr)
        assert code == 0, drawn
        assert "loading src.db" in drawn and "100%" in drawn, drawn
        code, drawn = _on_a_terminal(["dump", str(tmp_path / "out.db")], addr)
        assert code == 0, drawn
        assert "dumping to out.db" in drawn, drawn
        # not a terminal (a script, a log): nothing on stderr
        for args in (["load", str(src)], ["dump", str(tmp_path / "out2.db")]):
            r = periodic(*args, address=addr)
            assert (r.returncode, r.stderr) == (0, ""), r
    finally:
        periodic("drop", "prog", address=addr)
