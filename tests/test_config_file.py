"""``periodicd --config FILE`` (issue 19): a TOML key per option, precedence
flag > environment > file > default, ``--print-config`` with each value's
source, one line and exit 2 for an unknown key or a bad value; SIGHUP
re-reads the file and applies the changed config keys.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from periodic_fast import cli
from periodic_fast.cli_config import CONFIG_ENV
from periodic_fast.client import Client
from periodic_fast.testing import ServerProcess

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.timeout(120)

_FILE = """\
timeout = 30
keepalive = 50
assign-wait = 7
path = "file:///from-file.db"
host = ["127.0.0.1:7001"]
log = "debug"
no-http = true
rsa-legacy = true
"""


def _print_config(
    args: list[str], env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    runner = CliRunner()
    base = {"PERIODIC_PORT": "", "PERIODIC_PATH": "", CONFIG_ENV: ""}
    result = runner.invoke(
        cli.periodicd_app, [*args, "--print-config"], env={**base, **(env or {})}
    )
    return result.exit_code, result.stdout, result.stderr


def _sources(text: str) -> dict[str, tuple[str, str]]:
    """key -> (value text, source) of a ``--print-config`` output."""
    out = {}
    for line in text.splitlines():
        body, _, source = line.rpartition("  # ")
        if body.startswith("# "):
            out[body[2:].split()[0]] = ("unset", source)
        else:
            key, _, value = body.partition("=")
            out[key.strip()] = (value.strip(), source)
    return out


def test_precedence_flag_env_file_default(tmp_path: Path) -> None:
    conf = tmp_path / "periodicd.toml"
    conf.write_text(_FILE)
    code, out, err = _print_config(
        ["--config", str(conf), "--timeout", "40", "--no-http"],
        env={"PERIODIC_PATH": "file:///from-env.db"},
    )
    assert code == 0, err
    got = _sources(out)
    assert got["timeout"] == ("40", "flag")  # flag over file
    assert got["no-http"] == ("true", "flag")
    assert got["path"] == ('"file:///from-env.db"', "env")  # env over file
    assert got["keepalive"] == ("50", "file")  # file over default
    assert got["assign-wait"] == ("7", "file")
    assert got["host"] == ('["127.0.0.1:7001"]', "file")
    assert got["log"] == ('"debug"', "file")
    assert got["rsa-legacy"] == ("true", "file")
    assert got["lock-timeout"] == ("unset", "default")  # nobody set it
    assert got["durability"] == ('"strict"', "default")
    # a flag over the environment too, and the file named by the environment
    code, out, _ = _print_config(
        ["-H", "127.0.0.1:7003"],
        env={CONFIG_ENV: str(conf), "PERIODIC_PORT": "127.0.0.1:7002"},
    )
    got = _sources(out)
    assert got["host"] == ('["127.0.0.1:7003"]', "flag")
    assert got["keepalive"] == ("50", "file")
    code, out, _ = _print_config(
        [], env={CONFIG_ENV: str(conf), "PERIODIC_PORT": "127.0.0.1:7002"}
    )
    assert _sources(out)["host"] == ('["127.0.0.1:7002"]', "env")


def test_print_config_is_a_config_file(tmp_path: Path) -> None:
    """Exit 0, every option has a key, and the output reads back as TOML
    giving the same settings."""
    conf = tmp_path / "a.toml"
    conf.write_text(_FILE)
    code, out, _ = _print_config(["--config", str(conf)])
    assert code == 0
    data = tomllib.loads(out)
    assert data["keepalive"] == 50 and data["host"] == ["127.0.0.1:7001"]
    again = tmp_path / "b.toml"
    again.write_text(out)
    code, out2, err = _print_config(["--config", str(again)])
    assert code == 0, err
    assert tomllib.loads(out2) == data
    # every long option of periodicd but --config/--print-config/--version/-h
    keys = set(_sources(out))
    for opt in ("--max-frame", "--http-host", "--pidfile", "--log-format"):
        assert opt[2:] in keys


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("nosuchkey = 5\n", ["unknown key 'nosuchkey'"]),
        ("assign_wait = 5\n", ["unknown key 'assign_wait'", "'assign-wait'"]),
        ("timeout = -1\n", ["key 'timeout'"]),
        ("timeout = 'soon'\n", ["key 'timeout'"]),
        ("timeout = 2.5\n", ["key 'timeout'", "integer"]),
        ("no-http = 1\n", ["key 'no-http'", "true or false"]),
        ("durability = 'weak'\n", ["key 'durability'", "strict"]),
        ("log-format = 'xml'\n", ["key 'log-format'", "json"]),
        ("unix-mode = '999'\n", ["key 'unix-mode'"]),
        ("timeout = \n", ["not valid TOML"]),
    ],
)
def test_bad_file_one_line_exit_2(tmp_path: Path, text: str, words: list[str]) -> None:
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    code, out, err = _print_config(["--config", str(conf)])
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("Error: ") and str(conf) in lines[0]
    for word in words:
        assert word in lines[0]


def test_missing_file_one_line() -> None:
    code, _, err = _print_config(["--config", "/nonexistent/p.toml"])
    assert code == 2
    assert err.strip().count("\n") == 0 and "/nonexistent/p.toml" in err


# -- the running server ---------------------------------------------------------------


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _config(address: str, *keys: str) -> dict[str, int]:
    async def main() -> dict[str, int]:
        async with Client(address, reconnect=False, timeout=10) as client:
            return {k: await client.config_get(k) for k in keys}

    return asyncio.run(main())


def test_server_takes_file_settings_and_sighup_reloads(tmp_path: Path) -> None:
    """The file's config keys reach the scheduler (a flag still wins); after
    an edit, SIGHUP applies the changed keys and logs them; a broken file
    on SIGHUP is logged and the settings are kept."""
    conf = tmp_path / "periodicd.toml"
    conf.write_text("timeout = 77\nkeepalive = 50\nlock-timeout = 30\n")
    args = ["-p", ":memory:", "--config", str(conf), "--lock-timeout", "20"]
    with ServerProcess(args) as proc:
        keys = ("timeout", "keepalive", "lock-timeout", "assign-wait")
        assert _config(proc.address, *keys) == {
            "timeout": 77,
            "keepalive": 50,
            "lock-timeout": 20,  # the flag
            "assign-wait": 2,  # default
        }
        conf.write_text("timeout = 90\nlock-timeout = 40\nassign-wait = 3\n")
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGHUP)
        assert _wait_for(lambda: "SIGHUP: reloaded" in proc.output()), proc.output()
        assert _config(proc.address, *keys) == {
            "timeout": 90,
            "keepalive": 120,  # gone from the file: the default again
            "lock-timeout": 20,  # the flag still wins
            "assign-wait": 3,
        }
        line = next(x for x in proc.output().splitlines() if "SIGHUP: reloaded" in x)
        assert "timeout 77 -> 90" in line and "keepalive 50 -> 120" in line
        assert "assign-wait default -> 3" in line and "lock-timeout" not in line
        conf.write_text("timeout = 'x'\n")
        os.kill(proc.pid, signal.SIGHUP)
        assert _wait_for(lambda: "settings kept" in proc.output()), proc.output()
        assert _config(proc.address, "timeout")["timeout"] == 90
        assert proc.proc is not None and proc.proc.poll() is None
        assert proc.stop() == 0


def test_scheduler_set_config() -> None:
    """The public path SIGHUP and CONFIG_SET share: applied and stored;
    an unknown key is refused (the wire still answers SUCCESS to it,
    protocol.md 4.14)."""
    from periodic_fast.scheduler import Scheduler  # noqa: PLC0415
    from periodic_fast.store.memory import MemoryStore  # noqa: PLC0415

    store = MemoryStore()
    s = Scheduler(store, 1000.0)
    assert s.set_config("timeout", 5) and s.get_config("timeout") == 5
    assert not s.set_config("nosuchkey", 5) and s.get_config("nosuchkey") == 0
