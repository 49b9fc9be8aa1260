"""What an operator expects of the daemon (issue 19): HTTP writes with the
binary port's rules, SIGHUP reload, the build in /metrics and on the page,
systemd notify, a pidfile, start-up progress on a terminal."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from exec_helpers import env as _env

from periodic_fast.server.http_guard import is_local_peer, writes_allowed
from periodic_fast.server.http_wire import Request
from periodic_fast.testing import ServerProcess, free_port, wait_listening

pytestmark = pytest.mark.timeout(120)

CURL = shutil.which("curl")
MEM = ["-p", ":memory:"]
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _code(*args: str) -> str:
    return _curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout


def _outside_ip() -> str | None:
    """A non-loopback address of this machine, if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet: picks a route only
            ip: str = s.getsockname()[0]
        except OSError:
            return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


# -- 2. HTTP writes follow the binary port's rules ------------------------------------


def _req(method: str = "POST") -> Request:
    return Request(method, b"/f", [], b"", True, "1.1")


def test_writes_allowed_rules() -> None:
    for peer in ("127.0.0.1:5", "::1:5", "::ffff:127.0.0.1:5", "unix:/x", "unix"):
        assert is_local_peer(peer), peer
        assert writes_allowed(_req(), peer, False, False)
    for peer in ("192.0.2.7:5", "2001:db8::1:5", "?", "::ffff:192.0.2.7:5"):
        assert not is_local_peer(peer), peer
        assert not writes_allowed(_req(), peer, False, False)
        assert writes_allowed(_req(), peer, False, True)  # --http-writes
    assert not writes_allowed(_req(), None, False, False)
    # auth on: the identity decides, wherever the peer is; none (a probe
    # path skips the bearer check): refused, even with --http-writes
    assert not writes_allowed(_req(), "127.0.0.1:5", True, True)
    req = _req()
    req.identity = object()  # type: ignore[assignment]
    assert writes_allowed(req, "192.0.2.7:5", True, False)


@needs_curl
def test_seed_curl_lines_on_a_default_server() -> None:
    """The seed document's curl walk-through, against periodicd started
    without any flag (cli-and-http.md 3.1, "Seed-document mapping")."""
    with ServerProcess(MEM, command="periodicd") as proc:
        url = "http://" + proc.address.removeprefix("tcp://")
        at = str(int(time.time()) + 3600)
        r = _curl(
            "-d", "func=ls5", "-d", "name=job1", "-d", "args=hello",
            "-d", "timeout=10", "-d", f"sched_at={at}", url,
        )  # fmt: skip
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}, r
        r = _curl("-d", "name=job2", "-d", "sched_at=0", f"{url}/ls5")
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}, r
        assert json.loads(_curl(url).stdout)["ls5"]["total_job"] == 2
        assert json.loads(_curl(f"{url}/ls5").stdout)["func_name"] == "ls5"
        r = _curl("-d", "name=job1", "-d", "act=remove", f"{url}/ls5")
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}, r
        r = _curl("-X", "DELETE", f"{url}/ls5")
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}, r
        assert json.loads(_curl(url).stdout) == {}
        # the browser defences stay
        assert (
            _code("-H", "Origin: http://evil.example", "-d", "func=f&name=n", url)
            == "403"
        )
        assert _code("-H", "Host: evil.example", url) == "403"


@needs_curl
def test_writes_beyond_loopback_need_the_flag() -> None:
    ip = _outside_ip()
    if ip is None:
        pytest.skip("no non-loopback address on this machine")
    port = free_port()
    for flag, want in (([], "403"), (["--http-writes"], "200")):
        address = f"tcp://0.0.0.0:{port}"
        with ServerProcess(MEM + flag, address=address) as proc:
            assert wait_listening(f"tcp://{ip}:{port}")
            outside = f"http://{ip}:{port}"
            r = _curl("-d", "func=f&name=n", outside)
            if want == "403":
                assert "--http-writes" in r.stdout, r.stdout
            assert _code("-d", "func=f&name=n2", outside) == want, proc.output()
            assert _code(outside) == "200"  # reads stay open
            assert _code("-d", "func=f&name=n3", f"http://127.0.0.1:{port}") == "200"


# -- 4. which build is running ------------------------------------------------------


def test_build_info_helper() -> None:
    from periodic_fast import __version__, codec, rec, wheel
    from periodic_fast._build import build_info, build_line
    from periodic_fast.cli_common import build_info as cli_build_info

    info = build_info()
    assert info["version"] == __version__
    assert (info["codec"], info["wheel"], info["rec"]) == (
        codec.IMPLEMENTATION,
        wheel.IMPLEMENTATION,
        rec.IMPLEMENTATION,
    )
    assert cli_build_info() == build_line()
    assert f"codec: {codec.IMPLEMENTATION}" in build_line()


@needs_curl
def test_build_in_metrics_and_status_page() -> None:
    from periodic_fast import __version__, codec, rec, wheel

    with ServerProcess(MEM) as proc:
        url = "http://" + proc.address.removeprefix("tcp://")
        metrics = _curl(f"{url}/metrics").stdout
        line = next(
            x for x in metrics.splitlines() if x.startswith("periodic_build_info{")
        )
        for label in (
            f'version="{__version__}"',
            f'codec="{codec.IMPLEMENTATION}"',
            f'wheel="{wheel.IMPLEMENTATION}"',
            f'rec="{rec.IMPLEMENTATION}"',
        ):
            assert label in line, line
        assert line.endswith(" 1.0")
        page = _curl(f"{url}/ui").stdout
        assert f"codec: {codec.IMPLEMENTATION}, wheel: {wheel.IMPLEMENTATION}" in page
        overview = json.loads(_curl(f"{url}/api/overview").stdout)
        assert overview["server"]["build"]["rec"] == rec.IMPLEMENTATION


_NO_COMPILED = (
    "import sys\n"
    "for m in ('_codec_c', '_wheel_c', '_rec_c'):\n"
    "    sys.modules['periodic_fast.' + m] = None  # as an sdist without a compiler\n"
    "from periodic_fast.cli import periodicd_main\n"
    "sys.argv[0] = 'periodicd'\n"
    "periodicd_main()\n"
)


@pytest.mark.parametrize("asked", [False, True])
def test_pure_python_fallback_says_so_at_start(asked: bool) -> None:
    env = {"PERIODIC_FAST_NO_EXTENSIONS": "1" if asked else ""}
    proc = ServerProcess(MEM, env=env)
    proc.argv = lambda: [  # type: ignore[method-assign]
        sys.executable, "-c", _NO_COMPILED, "-H", proc.address, *MEM,
    ]  # fmt: skip
    with proc:
        proc.stop()
        out = proc.output()
    assert "codec: python, wheel: python, rec: python" in out, out
    warned = [x for x in out.splitlines() if "WARNING" in x and "pure-Python" in x]
    assert bool(warned) is not asked, out


# -- 3. SIGHUP reloads, the server keeps serving -----------------------------------


def _wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def _healthz(address: str, token: str) -> int:
    req = urllib.request.Request(
        "http://" + address.removeprefix("tcp://") + "/api/overview",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_sighup_reloads_and_keeps_serving(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    auth.write_text("admin ops ops-tok -\n")
    auth.chmod(0o600)
    sock = tmp_path / "p.sock"
    proc = ServerProcess(MEM + ["-H", f"unix://{sock}", "--auth-file", str(auth)])
    with proc:
        assert proc.pid is not None and sock.exists()
        os.kill(proc.pid, signal.SIGHUP)
        assert _wait_for(lambda: "SIGHUP: reloaded" in proc.output()), proc.output()
        assert "(unchanged)" in proc.output() and "log level info" in proc.output()
        auth.write_text("admin ops ops-tok -\nadmin root root-tok -\n")
        os.utime(auth, (time.time() + 5, time.time() + 5))  # a visible change
        assert _healthz(proc.address, "root-tok") == 401
        os.kill(proc.pid, signal.SIGHUP)
        assert _wait_for(lambda: "2 identities" in proc.output()), proc.output()
        # still serving, on both listeners, the new identity known at once
        assert proc.proc is not None and proc.proc.poll() is None
        assert _healthz(proc.address, "root-tok") == 200
        assert sock.exists() and wait_listening(f"unix://{sock}")
        assert proc.stop() == 0
        assert not sock.exists()  # removed at stop
        assert "stopped" in proc.output()


_WORKER = """
import asyncio, sys
from periodic_fast import Worker
w = Worker(sys.argv[1])

@w.func("f")
async def f(job):
    return b"ok"

async def main():
    task = asyncio.ensure_future(w.work())
    await asyncio.sleep(0.5)
    print("working", flush=True)
    await task
    print("drained", flush=True)

asyncio.run(main())
"""


def test_sighup_drains_a_worker() -> None:
    """A worker whose ssh session closes finishes cleanly (was: killed)."""
    with ServerProcess(MEM) as srv:
        proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER, srv.address],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "working"
        proc.send_signal(signal.SIGHUP)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, (proc.returncode, err)
        assert "drained" in out


# -- 5. systemd notify, pidfile --------------------------------------------------------


def _messages(sock: socket.socket, until: str, timeout: float = 15.0) -> list[str]:
    """Datagrams received until one holds ``until``."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except TimeoutError:
            break
        if until in got[-1]:
            return got
    raise AssertionError(f"no {until!r} in {got}")


def test_systemd_notify(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        proc = ServerProcess(MEM, env={"NOTIFY_SOCKET": path})
        with proc:
            ready = _messages(sock, "READY=1")[-1].split("\n")
            assert f"MAINPID={proc.pid}" in ready
            assert f"STATUS=serving on {proc.address}" in ready
            assert proc.pid is not None
            os.kill(proc.pid, signal.SIGHUP)
            got = _messages(sock, "READY=1")
            assert got[0].startswith("RELOADING=1\nMONOTONIC_USEC="), got
            proc.stop()
            assert "STOPPING=1" in _messages(sock, "STOPPING=1")[0]


def test_notify_is_quiet_without_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    from periodic_fast.server.daemon import notify

    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    assert notify("READY=1") is False  # logged at debug level, nothing raised


def test_pidfile(tmp_path: Path) -> None:
    pidfile = tmp_path / "periodicd.pid"
    first = ServerProcess(MEM + ["--pidfile", str(pidfile)])
    with first:
        assert pidfile.read_text().strip() == str(first.pid)
        second = subprocess.run(
            [*ServerProcess(MEM + ["--pidfile", str(pidfile)]).argv()],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=tmp_path,
            env=_env(None),
        )
        assert second.returncode == 1
        assert f"names a running process ({first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        assert pidfile.read_text().strip() == str(first.pid)  # left alone
        first.stop()
        assert not pidfile.exists()  # removed at stop
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pidfile.write_text(dead.stdout)  # a stale one: replaced
    with ServerProcess(MEM + ["--pidfile", str(pidfile)]) as again:
        assert pidfile.read_text().strip() == str(again.pid)
    assert not pidfile.exists()


def test_systemd_unit_file() -> None:
    root = Path(__file__).resolve().parent.parent
    unit = (root / "contrib" / "systemd" / "periodicd.service").read_text()
    for line in (
        "Type=notify",
        "ExecStart=",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "StateDirectory=periodic_fast",
        "ProtectSystem=strict",
        "PrivateTmp=true",
        "NoNewPrivileges=true",
    ):
        assert line in unit, line


# -- 6. start-up progress, on a terminal only ---------------------------------------


def _filled_store(path: Path, jobs: int) -> str:
    from periodic_fast.job import Job, JobState
    from periodic_fast.store.sqlite import SqliteStore

    store = SqliteStore(path)
    try:
        for i in range(jobs):
            job = Job(b"f%d" % (i % 4), b"job-%08d" % i, b"w", 2**33 + i)
            store.save_job(job, JobState.PENDING)
    finally:
        store.close()
    return f"file://{path}"


def test_startup_progress_on_a_terminal_only(tmp_path: Path) -> None:
    import pty

    uri = _filled_store(tmp_path / "jobs.db", 40_000)
    port = free_port()
    argv = ServerProcess(["-p", uri], address=f"tcp://127.0.0.1:{port}").argv()
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=_env(None, {"TERM": "xterm", "COLUMNS": "100"}),
    )
    os.close(slave)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"listening on" not in seen and time.monotonic() < deadline:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            seen += chunk
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(master)
    text = seen.decode(errors="replace")
    assert "loading stored jobs" in text, text
    # not on a terminal: the log holds log lines only, no bar
    with ServerProcess(["-p", uri]) as logged:
        logged.stop()
        out = logged.output()
    assert "listening on" in out
    assert "loading stored jobs" not in out and "\x1b[" not in out, out
