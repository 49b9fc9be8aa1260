"""``periodic-run-pipe``: persistent runners fed job lines over a pipe, in
real subprocesses against ``python -m periodic_fast -d`` on 127.0.0.1."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from exec_helpers import (
    Script,
    periodic,
    server_fixtures,
    spawn_periodic,
    status_json,
    wait_for,
    workers,
)

pytestmark = pytest.mark.timeout(120)

PIPE = "periodic_run_pipe_main"

# A runner speaking the line protocol; what it does depends on the payload.
RUNNER = r"""
import os, sys, time
barrier = sys.argv[1]
print("ready", os.getpid(), flush=True)
for line in sys.stdin:
    msgid, _, arg = line.rstrip("\n").partition(" ")
    if arg.startswith("data"):
        print(msgid, "WORKDATA one", flush=True)
        print("a log line from the runner", flush=True)
        print(msgid, "WORKDATA two", flush=True)
        print(msgid, "WORKDONE fin", arg, flush=True)
    elif arg.startswith("fail"):
        print(msgid, "WORKFAIL", flush=True)
    elif arg.startswith("crash"):
        sys.exit(3)
    elif arg.startswith("hog"):
        b = bytearray(200 * 2**20)
        b[:: 4096] = b"x" * len(b[:: 4096])  # touch every page: resident
        time.sleep(30)
    elif arg.startswith("slow"):
        time.sleep(30)
    elif arg.startswith("barrier"):
        # answers with the number of jobs that reached the barrier: 2 only
        # when both ran at once (bounded wait, no timing assertion)
        open(os.path.join(barrier, arg), "w").close()
        for _ in range(150):
            if len(os.listdir(barrier)) >= 2:
                break
            time.sleep(0.1)
        print(msgid, len(os.listdir(barrier)), flush=True)
    else:
        print("ignored: a reply for another msgid")
        print(str(int(msgid) + 1), "not mine", flush=True)
        print(msgid, "got", arg, flush=True)
"""


server, addr = server_fixtures()


@pytest.fixture
def runner(tmp_path: Path) -> list[str]:
    path = tmp_path / "runner.py"
    path.write_text(RUNNER)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    return [sys.executable, str(path), str(barrier)]


def pipe_worker(addr: str, tmp_path: Path, *args: str) -> Script:
    return Script(PIPE, "-H", addr, *args, logdir=tmp_path / "logs")


def _pids(err: str) -> list[int]:
    return [
        int(line.split()[-1])
        for line in err.splitlines()
        if line.startswith("Pipe Runner Ready: ready ")
    ]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_hs_readme_one_liner(addr: str, tmp_path: Path) -> None:
    # periodic-run-pipe show_file sh -c "echo hello; cat": cat echoes the job
    # line, so the reply is "<msgid> <name>" and the result is the name
    w = pipe_worker(addr, tmp_path, "show_file", "sh", "-c", "echo hello; cat")
    try:
        wait_for(lambda: workers(addr, "show_file") == 1)
        for name in ("NAME", "with space"):
            r = periodic("run", "show_file", name, address=addr)
            assert r.returncode == 0, r.stderr
            assert r.stdout == f"{name}\n"
        # a newline in the payload would break the framing: refused, failed
        r = periodic("run", "show_file", "two\nlines", address=addr)
        assert r.returncode == 1 and "failed" in r.stderr
        wait_for(lambda: "refused" in w.err())
        # and the runner still answers in step afterwards
        r = periodic("run", "show_file", "after", address=addr)
        assert (r.returncode, r.stdout) == (0, "after\n"), r.stderr
    finally:
        assert w.stop() == 0
    err = w.err()
    assert "Pipe Worker started." in err
    assert "Pipe Runner Ready: hello" in err
    assert err.count("newline") == 1


def test_protocol_streaming_failures_and_restarts(
    addr: str, tmp_path: Path, runner: list[str]
) -> None:
    w = pipe_worker(
        addr, tmp_path, "--thread", "2", "--mem-limit", "50m", "pp", *runner
    )  # fmt: skip
    try:
        wait_for(lambda: workers(addr, "pp") == 1)
        wait_for(lambda: len(_pids(w.err())) == 2)
        first = _pids(w.err())
        # a plain reply is the result; other lines go to the worker's stdout
        r = periodic("run", "pp", "plain", address=addr)
        assert (r.returncode, r.stdout) == (0, "got plain\n"), r.stderr
        # WORKDATA lines stream to the caller, WORKDONE is the result
        r = periodic("run", "pp", "data1", address=addr)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "one\ntwo\nfin data1\n"
        # WORKFAIL without --retry-secs/--skip-fail: failed
        r = periodic("run", "pp", "fail1", address=addr)
        assert r.returncode == 1 and "failed" in r.stderr
        # --thread 2: two runners, two jobs at once
        a = spawn_periodic("run", "pp", "barrier-a", address=addr)
        b = spawn_periodic("run", "pp", "barrier-b", address=addr)
        assert a.communicate(timeout=30)[0] == b"2\n"
        assert b.communicate(timeout=30)[0] == b"2\n"
        # a runner that exits fails its job and is started again
        r = periodic("run", "pp", "crash1", address=addr)
        assert r.returncode == 1 and "failed" in r.stderr
        wait_for(lambda: len(_pids(w.err())) == 3)
        # a runner over --mem-limit is killed: failed, started again
        r = periodic("run", "pp", "hog1", address=addr)
        assert r.returncode == 1 and "failed" in r.stderr
        assert "over --mem-limit" in w.err()
        wait_for(lambda: len(_pids(w.err())) == 4)
        r = periodic("run", "pp", "plain2", address=addr)
        assert (r.returncode, r.stdout) == (0, "got plain2\n"), r.stderr
        pids = _pids(w.err())
        assert len(set(pids)) == 4 and set(first) < set(pids)
    finally:
        assert w.stop() == 0
    out = w.out()
    assert "a log line from the runner" in out and "WORKDATA" not in out
    assert "not mine" in out
    assert w.err().count("restarting in 1 s") == 2
    # the runners are stopped with the worker
    wait_for(lambda: all(_gone(p) for p in pids), timeout=10)


def test_skip_fail_no_name_and_lock(
    addr: str, tmp_path: Path, runner: list[str]
) -> None:
    w = pipe_worker(
        addr, tmp_path, "--skip-fail", "--no-name", "--lock-name", "L", "sk", *runner
    )  # fmt: skip
    try:
        wait_for(lambda: workers(addr, "sk") == 1)
        # --no-name: the workload is the payload
        r = periodic("run", "sk", "n1", "-w", "the workload", address=addr)
        assert (r.returncode, r.stdout) == (0, "got the workload\n"), r.stderr
        # --skip-fail: WORKFAIL and a crash count as done (empty result)
        for payload in ("fail", "crash"):
            r = periodic("run", "sk", "n2", "-w", payload, address=addr)
            assert (r.returncode, r.stdout) == (0, ""), r.stderr
    finally:
        assert w.stop() == 0


def test_retry_secs_and_timeout(addr: str, tmp_path: Path, runner: list[str]) -> None:
    w = pipe_worker(
        addr, tmp_path, "--retry-secs", "300", "--timeout", "2", "rt", *runner
    )  # fmt: skip
    try:
        wait_for(lambda: workers(addr, "rt") == 1)
        assert "--retry-secs no longer delays" in w.err()
        # issue 20: WORKFAIL is sent; the server's retry policy sets the delay
        policy = ("--backoff", "300", "--factor", "1", "--jitter", "0")
        assert periodic("retry", "set", "rt", *policy, address=addr).returncode == 0
        t0 = time.time()
        assert periodic("submit", "rt", "fail1", address=addr).returncode == 0

        def rescheduled() -> bool:
            st = status_json(addr)["rt"]
            return (
                st["jobs"] == 1 and st["processing"] == 0 and st["sched_at"] > t0 + 60
            )

        wait_for(rescheduled)  # WORKFAIL, retried 300 s later by the policy
        # --timeout: the job fails (a RUN_JOB caller gets "failed" for a
        # SCHED_LATER too) and its runner is killed and started again
        r = periodic("run", "rt", "slow1", address=addr)
        assert r.returncode == 1 and "failed" in r.stderr
        assert "timed out after 2 s" in w.err()
        wait_for(lambda: len(_pids(w.err())) == 2)
        r = periodic("run", "rt", "ok", address=addr)
        assert (r.returncode, r.stdout) == (0, "got ok\n"), r.stderr
    finally:
        assert w.stop() == 0
        periodic("remove", "rt", "fail1", "slow1", address=addr)


def test_ready_timeout_restarts_the_runner(addr: str, tmp_path: Path) -> None:
    # first start: no ready line in time (killed); second start: ready
    count = tmp_path / "starts"
    code = (
        "import os, sys, time\n"
        f"p = {str(count)!r}\n"
        "n = len(open(p).read()) if os.path.exists(p) else 0\n"
        "open(p, 'a').write('x')\n"
        "if n == 0: time.sleep(60)\n"
        "print('ready', os.getpid(), flush=True)\n"
        "for line in sys.stdin: print(line.split()[0], 'start', n, flush=True)\n"
    )
    w = pipe_worker(
        addr, tmp_path, "--ready-timeout", "1", "rd", sys.executable, "-c", code
    )  # fmt: skip
    try:
        wait_for(lambda: workers(addr, "rd") == 1)
        r = periodic("run", "rd", "j", address=addr)
        assert (r.returncode, r.stdout) == (0, "start 1\n"), r.stderr
    finally:
        assert w.stop() == 0
    assert "not ready after 1 s, killed" in w.err()
    assert count.read_text() == "xx"


def test_usage_errors(tmp_path: Path) -> None:
    for args in (["--mem-limit", "12q", "f", "true"], ["--thread", "0", "f", "cat"]):
        w = Script(PIPE, *args, logdir=tmp_path)
        assert w.wait() == 2
        lines = w.err().strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), lines
