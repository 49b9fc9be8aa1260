"""``--mem-limit`` of the exec workers (``periodic run -f F --exec CMD`` and
``periodic-run``): SIZE parsing, and a memory hog killed in a real worker
process while a small command passes."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from exec_helpers import Script, env, periodic, server_fixtures, wait_for, workers

from periodic_fast.exec_worker import format_size, group_rss, parse_size

pytestmark = pytest.mark.timeout(120)

# argv[-1] is the job name: "hog*" holds 200 MiB resident for 30 s
HOG = (
    "import sys, time\n"
    "if sys.argv[-1].startswith('hog'):\n"
    "    b = bytearray(200 * 2**20)\n"
    "    b[::4096] = b'x' * len(b[::4096])\n"
    "    time.sleep(30)\n"
    "print('small', sys.argv[-1])\n"
)


server, addr = server_fixtures()


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("123", 123),
        ("1k", 1024),
        ("1K", 1024),
        ("1.5m", 1536 * 1024),
        ("50M", 50 * 2**20),
        ("2g", 2 * 2**30),
        (".5G", 2**29),
        ("7.", 7),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "k", "-1", "1e3", "5x", "1 m", "1mb", "1,5m"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="bad size"):
        parse_size(text)


def test_format_size_and_group_rss() -> None:
    assert format_size(512) == "512 B"
    assert format_size(50 * 2**20) == "50.0 MiB"
    assert format_size(3 * 2**30) == "3.0 GiB"
    proc = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(30)"],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    try:
        # measured once the interpreter runs (right after exec it may be tiny)
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        rss = group_rss(proc.pid)
        if rss is None:
            pytest.skip("no /proc")
        assert rss > 1 << 20  # a Python interpreter, read through /proc
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert group_rss(proc.pid) == 0  # an empty group


def test_periodic_run_exec_kills_a_memory_hog(addr: str, tmp_path: Path) -> None:
    (tmp_path / "hog.py").write_text(HOG)
    command = shlex.join([sys.executable, str(tmp_path / "hog.py")])
    with (tmp_path / "w.err").open("wb") as err:
        w = subprocess.Popen(
            [sys.executable, "-m", "periodic_fast", "-H", addr, "run", "-f", "mem"]
            + ["--exec", command, "--mem-limit", "50m"],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env(),
        )
    try:
        wait_for(lambda: workers(addr, "mem") == 1)
        r = periodic("run", "mem", "small1", address=addr)
        assert (r.returncode, r.stdout) == (0, "small small1\n"), r.stderr
        r = periodic("run", "mem", "hog1", address=addr)
        assert r.returncode == 1 and "failed" in r.stderr
    finally:
        w.terminate()
        w.communicate(timeout=20)
    lines = [x for x in (tmp_path / "w.err").read_text().splitlines() if "killed" in x]
    assert len(lines) == 1 and "over --mem-limit 50.0 MiB" in lines[0], lines
    assert w.returncode == 0


def test_periodic_run_hs_mem_limit_with_skip_fail(addr: str, tmp_path: Path) -> None:
    (tmp_path / "hog.py").write_text(HOG)
    hog = [sys.executable, str(tmp_path / "hog.py")]
    w = Script(
        "periodic_run_main",
        *("-H", addr, "--mem-limit", "50M", "--skip-fail", "mem2", *hog),
        logdir=tmp_path,
    )
    try:
        wait_for(lambda: workers(addr, "mem2") == 1)
        # killed, and --skip-fail reports it as done (empty result)
        r = periodic("run", "mem2", "hog2", address=addr)
        assert (r.returncode, r.stdout) == (0, ""), r.stderr
        r = periodic("run", "mem2", "small2", address=addr)
        assert (r.returncode, r.stdout) == (0, "small small2\n"), r.stderr
    finally:
        assert w.stop() == 0
    assert w.err().count("over --mem-limit") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "periodic_fast", "run", "-f", "f", "--exec", "true", "--mem-limit", "x"],
        ["-c", "from periodic_fast.cli_client import periodic_run_main as m; m()"]
        + ["--mem-limit", "1.2.3", "f", "true"],
        ["-c", "from periodic_fast.cli_client import periodic_run_pipe_main as m; m()"]
        + ["--mem-limit", "-5m", "f", "true"],
    ],
)
def test_bad_mem_limit_is_a_usage_error(argv: list[str]) -> None:
    r = subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, env=env(), timeout=30
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--mem-limit" in lines[0], r.stderr
