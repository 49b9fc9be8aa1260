"""The ``periodic`` client sub-commands and the exec worker, in real
subprocesses against ``python -m periodic_fast -d`` on 127.0.0.1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exec_helpers import env as _env
from exec_helpers import server_fixtures, status_json, wait_for

from periodic_fast.testing import ServerProcess, free_port

pytestmark = pytest.mark.timeout(120)

NAME_ENV, TOKEN_ENV = "PERIODIC_CLIENT_NAME", "PERIODIC_CLIENT_TOKEN"


def periodic(
    *args: str,
    address: str | None = None,
    timeout: float = 30,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "periodic_fast", *args],
        capture_output=True,
        text=True,
        env=_env(address, env),
        timeout=timeout,
        cwd=cwd,
    )


server, addr = server_fixtures()


def start_worker(
    addr: str, *args: str, cwd: str | None = None, options: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "periodic_fast", "-H", addr, *options, "run", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(None),
        cwd=cwd,
    )


def stop_worker(proc: subprocess.Popen[bytes]) -> tuple[bytes, bytes]:
    proc.terminate()
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return out, err


# -- the classic walk-through ------------------------------------------------------


def test_ls5_runs_again_every_5_seconds(addr: str, tmp_path: Path) -> None:
    script = tmp_path / "ls5.sh"
    script.write_text('#!/bin/sh\nls -l "$1"\necho "SCHED_LATER 5"\n')
    script.chmod(0o755)
    target = tmp_path / "target"
    target.mkdir()
    (target / "marker-file").write_text("x")
    worker = start_worker(addr, "-f", "ls5", "--exec", "./ls5.sh", cwd=str(tmp_path))
    try:
        wait_for(lambda: status_json(addr).get("ls5", {}).get("workers") == 1)
        t0 = time.monotonic()
        r = periodic("submit", "-f", "ls5", "-n", f"{target}/", address=addr)
        assert r.returncode == 0, r.stderr
        runs: list[float] = []
        assert worker.stdout is not None
        os.set_blocking(worker.stdout.fileno(), False)
        buf = b""
        while len(runs) < 2 and time.monotonic() - t0 < 13:
            chunk = worker.stdout.read() or b""
            buf += chunk
            runs = [0.0] * buf.count(b"marker-file")
            time.sleep(0.1)
        assert len(runs) >= 2, buf
        elapsed = time.monotonic() - t0
        assert 4 <= elapsed <= 13
        st = status_json(addr)["ls5"]
        assert st["jobs"] == 1  # still scheduled: periodic
        assert st["sched_at"] > time.time()
    finally:
        stop_worker(worker)
        periodic("remove", "ls5", f"{target}/", address=addr)


# -- sub-commands: success paths ------------------------------------------------------


def test_help_everywhere() -> None:
    for cmd in [
        [],
        ["status"],
        ["submit"],
        ["remove"],
        ["drop"],
        ["dump"],
        ["load"],
        ["recv"],
        ["config"],
        ["config", "get"],
        ["config", "set"],
        ["shutdown"],
        ["ping"],
        ["run"],
    ]:
        r = periodic(*cmd, "--help")
        assert r.returncode == 0, (cmd, r.stderr)
        assert "Usage" in r.stdout


def test_submit_both_syntaxes_status_remove_drop(addr: str) -> None:
    r = periodic(
        "submit", "-f", "cf", "-n", "go", "--args", "w1", "-t", "30",
        "--sched_later", "100", address=addr,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = periodic(
        "submit", "cf", "hs", "-w", "w2", "--later", "100", "--timeout", "20",
        address=addr,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = periodic("status", address=addr)
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    assert lines[0].split() == [
        "FUNCTIONS", "WORKERS", "JOBS", "PROCESSING", "LOCKED", "SCHEDAT",
    ]  # fmt: skip
    row = next(line.split() for line in lines if line.startswith("cf "))
    assert row[1:5] == ["0", "2", "0", "0"]
    assert status_json(addr)["cf"]["jobs"] == 2
    assert periodic("remove", "-f", "cf", "-n", "go", address=addr).returncode == 0
    assert status_json(addr)["cf"]["jobs"] == 1
    assert periodic("remove", "cf", "hs", address=addr).returncode == 0
    assert status_json(addr)["cf"]["jobs"] == 0
    assert periodic("drop", "cf", address=addr).returncode == 0
    assert "cf" not in status_json(addr)
    assert periodic("submit", "cf2", "x", address=addr).returncode == 0
    assert periodic("drop", "-f", "cf2", address=addr).returncode == 0
    assert "cf2" not in status_json(addr)


def test_workload_from_file_dump_load(addr: str, tmp_path: Path) -> None:
    wl = tmp_path / "wl.bin"
    wl.write_bytes(b"\x00binary\xff")
    assert periodic("submit", "dl", "a", "-w", f"@{wl}", address=addr).returncode == 0
    assert periodic("submit", "dl", "b", "--later", "50", address=addr).returncode == 0
    dump = tmp_path / "dump.db"
    r = periodic("dump", str(dump), address=addr)
    assert r.returncode == 0, r.stderr
    data = dump.read_bytes()
    assert data[:8] != b"\x00" * 8  # a u64 count, then the jobs
    assert b"\x00binary\xff" in data
    assert periodic("remove", "dl", "a", "b", address=addr).returncode == 0
    assert status_json(addr)["dl"]["jobs"] == 0
    r = periodic("load", str(dump), address=addr)
    assert r.returncode == 0, r.stderr
    assert status_json(addr)["dl"]["jobs"] == 2
    out2 = tmp_path / "dump2.db"
    assert periodic("dump", "-o", str(out2), address=addr).returncode == 0
    assert periodic("load", "-i", str(out2), address=addr).returncode == 0
    periodic("remove", "dl", "a", "b", address=addr)
    periodic("drop", "dl", address=addr)


def _go_frame(jobs: list[dict[str, object]]) -> bytes:
    body = json.dumps({"jobs": jobs}).encode()
    return len(body).to_bytes(4, "big") + body


def test_load_go_2016_dump(addr: str, tmp_path: Path) -> None:
    """The Go server's dump file (length-prefixed JSON frames) loads too."""
    from periodic_fast.sync import SyncClient

    later = int(time.time()) + 3600
    go = tmp_path / "go.db"
    go.write_bytes(
        _go_frame(
            [
                {"job_id": 7, "name": "docs", "func": "gols", "workload": "w1",
                 "timeout": 30, "sched_at": later, "run_at": 0, "status": "ready"},
                {"job_id": 8, "name": "", "func": "gols", "workload": "",
                 "timeout": 0, "sched_at": 0, "run_at": 0, "status": "ready"},
            ]
        )
        + _go_frame(
            [{"job_id": 9, "name": "more", "func": "gols", "workload": "",
              "timeout": 0, "sched_at": later, "run_at": 5, "status": "processing"}]
        )
    )  # fmt: skip
    r = periodic("load", str(go), address=addr)
    assert r.returncode == 0, r.stderr
    with SyncClient(addr) as c:
        jobs = sorted(j for j in c.dump() if j.func == b"gols")
        assert [(j.name, j.workload, j.sched_at, j.timeout) for j in jobs] == [
            (b"docs", b"w1", later, 30),
            (b"more", b"", later, 0),
        ]
        c.drop_func("gols")
    for bad in (
        _go_frame([{"name": "x"}]),  # no func
        _go_frame([])[:-3],  # truncated
        b"\x00\x00\x00\x05" + b'{"jo',  # bad JSON
        _go_frame([{"name": "x", "func": "f", "timeout": -1}]),
    ):
        go.write_bytes(bad)
        r = periodic("load", str(go), address=addr)
        assert r.returncode == 1, r
        assert r.stderr.startswith("Error: invalid dump file"), r.stderr


def test_config_ping(addr: str) -> None:
    r = periodic("config", "get", "lock-timeout", address=addr)
    assert (r.returncode, r.stdout.strip()) == (0, "300")
    assert (
        periodic("config", "set", "lock-timeout", "301", address=addr).returncode == 0
    )
    r = periodic("config", "get", "lock-timeout", address=addr)
    assert r.stdout.strip() == "301"
    assert (
        periodic("config", "set", "lock-timeout", "300", address=addr).returncode == 0
    )
    r = periodic("ping", address=addr)
    assert r.returncode == 0 and r.stdout.startswith(f"pong from {addr} in ")
    r = periodic("-H", addr, "ping")  # -H beats the environment
    assert r.returncode == 0


def test_run_job_recv_and_exec_worker_outcomes(addr: str, tmp_path: Path) -> None:
    script = tmp_path / "echo.sh"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in\n'
        '  fail*) echo "FAIL";;\n'
        "  exit*) exit 3;;\n"
        '  done*) echo "result for $1"; cat; echo; echo DONE;;\n'
        '  *) echo "got $1"; cat;;\n'
        "esac\n"
    )
    script.chmod(0o755)
    worker = start_worker(addr, "-f", "ex", "--exec", str(script), "--thread", "2")
    try:
        wait_for(lambda: status_json(addr).get("ex", {}).get("workers") == 1)
        r = periodic("run", "ex", "plain", "-w", "stdin-data", address=addr)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "got plain\nstdin-data\n"
        r = periodic("run", "ex", "done1", "-w", "xyz", address=addr)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "result for done1\nxyz\n"
        r = periodic("run", "ex", "fail1", address=addr)
        assert r.returncode == 1
        assert r.stderr.strip() == "Error: job ex/fail1 failed"
        r = periodic("run", "ex", "exit1", address=addr)
        assert r.returncode == 1 and "failed" in r.stderr
        # recv: no chunks from an exec worker, ends when the job ends
        rc = subprocess.Popen(
            [sys.executable, "-m", "periodic_fast", "recv", "ex", "later1"],
            env=_env(addr),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        assert periodic("submit", "ex", "later1", address=addr).returncode == 0
        out, err = rc.communicate(timeout=20)
        assert rc.returncode == 0, err
    finally:
        out, err = stop_worker(worker)
    assert b"Worker started." in err
    assert worker.returncode == 0
    assert "ex" not in status_json(addr) or status_json(addr)["ex"]["workers"] == 0


def test_exec_worker_drains_on_sigterm(addr: str, tmp_path: Path) -> None:
    script = tmp_path / "slow.sh"
    script.write_text("#!/bin/sh\nsleep 2\necho slow-done\n")
    script.chmod(0o755)
    worker = start_worker(addr, "-f", "slow", "--exec", str(script))
    try:
        wait_for(lambda: status_json(addr).get("slow", {}).get("workers") == 1)
        runner = subprocess.Popen(
            [sys.executable, "-m", "periodic_fast", "run", "slow", "j"],
            env=_env(addr),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        wait_for(lambda: status_json(addr).get("slow", {}).get("processing") == 1)
        worker.terminate()
        out, err = runner.communicate(timeout=20)
        assert runner.returncode == 0, err
        assert out == b"slow-done\n"
        assert worker.wait(15) == 0
    finally:
        stop_worker(worker)


# -- error paths ----------------------------------------------------------------------


def test_server_down_errors() -> None:
    down = f"tcp://127.0.0.1:{free_port()}"
    for cmd in [
        ["status"],
        ["submit", "f", "n"],
        ["remove", "f", "n"],
        ["drop", "f"],
        ["dump", os.devnull],
        ["recv", "f", "n"],
        ["config", "get", "timeout"],
        ["config", "set", "timeout", "1"],
        ["shutdown"],
        ["ping"],
        ["run", "f", "n"],
        ["run", "-f", "f", "--exec", "true"],
    ]:
        r = periodic(*cmd, address=down)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: cannot connect"), (
            cmd,
            r.stderr,
        )


def test_bad_arguments(addr: str, tmp_path: Path) -> None:
    assert periodic("submit", address=addr).returncode == 2
    assert periodic("submit", "onlyfunc", address=addr).returncode == 2
    assert periodic("remove", "f", address=addr).returncode == 2
    assert periodic("drop", address=addr).returncode == 2
    assert periodic("config", "set", "timeout", "abc", address=addr).returncode == 2
    assert periodic("submit", "f", "n", "--later", "x", address=addr).returncode == 2
    assert periodic("run", "-f", "f", address=addr).returncode == 2
    assert periodic("run", "f", address=addr).returncode == 2
    assert periodic("recv", "f", address=addr).returncode == 2
    assert periodic("config", "get", address=addr).returncode == 2
    assert periodic("config", "set", "timeout", address=addr).returncode == 2
    assert periodic("status", "--bogus", address=addr).returncode == 2
    assert periodic("ping", "extra", address=addr).returncode == 2
    assert periodic("shutdown", "--now", address=addr).returncode == 2
    assert periodic("dump", "a", "b", address=addr).returncode == 2
    assert periodic("--client-name", address=addr).returncode == 2
    r = periodic("status", address="http://nowhere:1")
    assert r.returncode == 1 and r.stderr.startswith("Error: ")
    r = periodic("load", str(tmp_path / "missing.db"), address=addr)
    assert r.returncode == 1
    assert r.stderr.strip().startswith("Error: failed to read dump file")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage!!")
    r = periodic("load", str(bad), address=addr)
    assert r.returncode == 1 and r.stderr.startswith("Error: invalid dump file")
    r = periodic("submit", "f", "n", "-w", f"@{tmp_path}/nope", address=addr)
    assert r.returncode == 1 and "cannot read workload file" in r.stderr


def test_unknown_job_and_func(addr: str) -> None:
    r = periodic("run", "nosuchfunc", "n", address=addr)
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: no worker for nosuchfunc"
    r = periodic("recv", "nosuchfunc", "n", address=addr)
    assert r.returncode == 1 and "no worker" in r.stderr
    # removing an unknown job is not an error on the wire (SUCCESS)
    assert periodic("remove", "nosuchfunc", "n", address=addr).returncode == 0


def test_shutdown_command() -> None:
    with ServerProcess() as proc:
        r = periodic("shutdown", address=proc.address)
        assert r.returncode == 0, r.stderr
        assert proc.wait(10) == 0


@pytest.mark.parametrize(
    "args",
    [
        ["submit", "--bogus"],
        ["config", "set", "timeout", "abc"],
        ["submit", "f", "n", "--later", "x"],
        ["-d", "--no-such-flag"],
        ["no-such-command"],
    ],
)
def test_usage_errors_are_one_line(args: list[str]) -> None:
    r = periodic(*args, address="tcp://127.0.0.1:1")
    assert r.returncode == 2, r
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr


# -- identity (auth-file servers) ----------------------------------------------------


def test_client_name_and_token(tmp_path: Path) -> None:
    """--client-name/--client-token (or the HS environment variables) make
    every sub-command and the exec worker register as types 3/4."""
    auth = tmp_path / "auth"
    auth.write_text(
        "client web tok-web jobs\nworker wrk tok-wrk jobs\nadmin ops tok-ops -\n"
    )
    web = ("--client-name", "web", "--client-token", "tok-web")
    ops = ("--client-name", "ops", "--client-token", "tok-ops")
    with ServerProcess(["--auth-file", str(auth)]) as proc:
        a = proc.address

        def jobs_count() -> int:
            r = periodic(*ops, "status", "--json", address=a)
            assert r.returncode == 0, r.stderr
            return sum(
                row["jobs"] for row in json.loads(r.stdout) if row["func"] == "jobs"
            )

        # no identity: the server closes the connection at registration
        r = periodic("submit", "jobs", "n0", address=a)
        assert r.returncode == 1
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "before the registration reply" in lines[0], r.stderr
        # flags
        r = periodic(*web, "submit", "jobs", "n1", address=a)
        assert r.returncode == 0, r.stderr
        # environment variables (the HS tools' names)
        good = {NAME_ENV: "web", TOKEN_ENV: "tok-web"}
        assert periodic("submit", "jobs", "n2", address=a, env=good).returncode == 0
        # flags beat the environment; an empty variable counts as unset
        bad = {NAME_ENV: "web", TOKEN_ENV: "wrong"}
        r = periodic(*web, "submit", "jobs", "n3", address=a, env=bad)
        assert r.returncode == 0, r.stderr
        r = periodic("submit", "jobs", "n4", address=a, env=bad)
        assert r.returncode == 1 and "identity 'web' refused" in r.stderr
        r = periodic("--client-name", "web", "status", address=a, env={TOKEN_ENV: ""})
        assert r.returncode == 1
        assert r.stderr.strip() == (
            "Error: --client-name and --client-token must be provided together "
            f"(or ${NAME_ENV} and ${TOKEN_ENV})"
        )
        # the identity's rules apply: a func outside its list is refused
        r = periodic(*web, "submit", "other", "n", address=a)
        assert r.returncode == 1 and r.stderr.startswith("Error: ")
        # admin-only commands need the admin identity
        assert periodic(*web, "config", "set", "timeout", "700", address=a).returncode
        assert (
            periodic(*ops, "config", "set", "timeout", "700", address=a).returncode == 0
        )
        r = periodic(*ops, "config", "get", "timeout", address=a)
        assert r.stdout.strip() == "700"
        assert jobs_count() == 3
        # the exec worker registers with its identity (type 4) and runs the jobs
        worker = start_worker(
            a, "-f", "jobs", "--exec", "true",
            options=("--client-name", "wrk", "--client-token", "tok-wrk"),
        )  # fmt: skip
        try:
            wait_for(lambda: jobs_count() == 0)
        finally:
            stop_worker(worker)
        # a worker with a refused identity exits with one line
        worker = start_worker(
            a, "-f", "jobs", "--exec", "true",
            options=("--client-name", "wrk", "--client-token", "nope"),
        )  # fmt: skip
        try:
            assert worker.wait(20) == 1
            assert worker.stderr is not None
            err = worker.stderr.read().decode().strip().splitlines()
            assert len(err) == 1 and "identity 'wrk' refused" in err[0], err
        finally:
            stop_worker(worker)


# -- HS exec-worker flavours -----------------------------------------------------------


def test_work_data_streams_lines(addr: str, tmp_path: Path) -> None:
    script = tmp_path / "stream.sh"
    script.write_text(
        "#!/bin/sh\n"
        'echo "WORKDATA one $1"\n'
        "echo 'plain line'\n"
        "echo 'WORKDATA two'\n"
        "echo 'WORKDONE the result'\n"
    )
    script.chmod(0o755)
    worker = start_worker(addr, "-f", "wd", "--exec", str(script), "--work-data")
    try:
        wait_for(lambda: status_json(addr).get("wd", {}).get("workers") == 1)
        r = periodic("run", "wd", "j1", address=addr)
        assert r.returncode == 0, r.stderr
        # streamed chunks first (one line each), then the WORKDONE result
        assert r.stdout == "one j1\ntwo\nthe result\n"
        # recv prints the chunks of a job submitted by someone else
        rc = subprocess.Popen(
            [sys.executable, "-m", "periodic_fast", "recv", "wd", "j2"],
            env=_env(addr),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)  # subscribed before the job runs (2 s later)
        r = periodic("submit", "wd", "j2", "--later", "2", address=addr)
        assert r.returncode == 0, r.stderr
        out_r, err_r = rc.communicate(timeout=20)
        assert rc.returncode == 0, err_r
        assert out_r == b"one j2\ntwo\n"
    finally:
        out, _ = stop_worker(worker)
    assert b"plain line" in out and b"WORKDATA" not in out


def periodic_run(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    code = "from periodic_fast.cli_client import periodic_run_main as m; m()"
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(None, env),
    )


def test_periodic_run_hs_syntax(addr: str) -> None:
    # options before FUNC; everything after COMMAND goes to the command as is
    script = 'echo "$0 got $1"; cat'
    worker = periodic_run(
        "-H", addr, "--thread", "2", "hs", "sh", "-c", script, "--no-name"
    )  # fmt: skip
    try:
        wait_for(lambda: status_json(addr).get("hs", {}).get("workers") == 1)
        r = periodic("run", "hs", "n1", "-w", "payload", address=addr)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "--no-name got n1\npayload\n"
    finally:
        stop_worker(worker)
    # THREAD from the environment, address from PERIODIC_PORT
    worker = periodic_run("hs2", "true", env={"THREAD": "x", "PERIODIC_PORT": addr})
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 2 and b"thread" in err.lower(), err
    worker = periodic_run("--bogus", "f", "true")
    out, err = worker.communicate(timeout=30)
    assert worker.returncode == 2
    assert err.decode().strip().startswith("Error: "), err


# -- exec worker internals (in process) ----------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "code", "expected"),
    [
        (b"a\nSCHED_LATER 5\n", 0, ("sched_later", b"a\n", 5)),
        (b"a\nSCHEDLATER 7", 0, ("sched_later", b"a\n", 7)),
        (b"SCHEDLATER\n", 0, ("done", b"", 0)),  # bare: no crash, done
        (b"SCHED_LATER x\n", 0, ("done", b"", 0)),
        (b"out\nFAIL\n\n", 0, ("fail", b"out\n", 0)),
        (b"FAILED\n", 0, ("done", b"FAILED\n", 0)),  # exact word only
        (b"r\nDONE\n", 0, ("done", b"r\n", 0)),
        (b"r\n", 3, ("fail", b"r\n", 0)),
        (b"SCHED_LATER 5\n", 1, ("fail", b"", 5)),
        (b"", None, ("fail", b"", 0)),
    ],
)
def test_parse_output(
    stdout: bytes, code: int | None, expected: tuple[str, bytes, int]
) -> None:
    from periodic_fast.exec_worker import parse_output

    assert parse_output(stdout, code) == expected


class _FakeJob:
    def __init__(self, name: str) -> None:
        self.name = name
        self.workload = b"in"
        self.timeout = 0
        self.chunks: list[bytes] = []

    async def data(self, chunk: bytes) -> bool:
        self.chunks.append(chunk)
        return True


@pytest.mark.parametrize(
    ("script", "chunks", "outcome"),
    [
        # only WORKDATA lines, exit 0: done at once with an empty result (HS hangs)
        ("echo 'WORKDATA a'; echo 'WORKDATA b'", [b"a", b"b"], ("done", b"")),
        # unterminated WORKDONE line; stdin is still delivered
        ("cat >/dev/null; printf 'WORKDONE end'", [], ("done", b"end")),
        # streamed chunks stay streamed when the command then fails
        ("echo 'WORKDATA x'; exit 4", [b"x"], ("fail", None)),
        # directives still work next to the stream
        ("echo 'WORKDATA y'; echo 'SCHED_LATER 9'", [b"y"], ("sched_later", 9)),
    ],
)
async def test_work_data_handler(
    script: str, chunks: list[bytes], outcome: tuple[str, object]
) -> None:
    from periodic_fast.exec_worker import make_handler
    from periodic_fast.worker import Done, Fail, SchedLater

    handler = make_handler(["sh", "-c", script], work_data=True, echo=False)
    job = _FakeJob("n")
    res = await handler(job)  # type: ignore[arg-type]
    assert job.chunks == chunks
    kind, value = outcome
    if kind == "done":
        assert isinstance(res, Done) and res.data == value
    elif kind == "fail":
        assert isinstance(res, Fail)
    else:
        assert isinstance(res, SchedLater) and res.delay == value


async def test_handler_timeout_kills_the_command() -> None:
    from periodic_fast.exec_worker import WorkerOptions, make_handler
    from periodic_fast.worker import Fail

    for work_data in (False, True):
        handler = make_handler(
            ["sh", "-c", "echo 'WORKDATA s'; sleep 30"],
            WorkerOptions(timeout=0.5),
            work_data=work_data,
            echo=False,
        )
        t0 = time.monotonic()
        res = await handler(_FakeJob("n"))  # type: ignore[arg-type]
        assert isinstance(res, Fail) and time.monotonic() - t0 < 10


def test_dump_and_load_beyond_the_frame_limit(addr: str, tmp_path: Path) -> None:
    """A dump file of ~72 MB (1,100 jobs of 64 KiB) loads (cut into LOAD
    frames under the server's 64 MiB request limit) and dumps again (one DATA
    reply larger than the client's default 64 MiB frame cap)."""
    from periodic_fast.codec import decode_job_list, encode_job_list
    from periodic_fast.job import Job

    n, size = 1100, 64 * 1024
    at = int(time.time()) + 3600
    jobs = [Job(b"big", b"j%d" % i, bytes([i % 251]) * size, at) for i in range(n)]
    src = tmp_path / "big.db"
    src.write_bytes(encode_job_list(jobs))
    assert src.stat().st_size > 64 * 2**20
    try:
        r = periodic("load", str(src), address=addr, timeout=120)
        assert r.returncode == 0, r.stderr
        assert status_json(addr)["big"]["jobs"] == n
        out = tmp_path / "out.db"
        r = periodic("dump", str(out), address=addr, timeout=120)
        assert r.returncode == 0, r.stderr
        got = sorted(
            (j.name, j.workload)
            for j in decode_job_list(out.read_bytes())
            if j.func == b"big"
        )
        assert got == sorted((j.name, j.workload) for j in jobs)
    finally:
        periodic("drop", "big", address=addr)
