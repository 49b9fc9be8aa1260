"""Our Client, Worker and CLI through the RSA/AES transport (protocol.md 5.4).

* our Client and Worker (``rsa=RSAConfig(...)``) against our server in each
  mode, v2 handshake by default, v1 and legacy on request: ping, submit, and
  ``run_job`` with payloads cut into many RSA blocks / several AES records
  both ways; client and worker keys of different sizes;
* refusals end in a clear :class:`RSAHandshakeError` (or the connection
  error that names the mode), never a hang: unknown client key, wrong
  server key, a plain or silent server, a mode the server does not allow;
* key and option errors (missing file, bad mode, no ``cryptography``);
* a mixed pair: aio-periodic 1.0.0's ``RSATransport`` client (legacy, with
  the server's opt-in) and our worker (v2) on one server;
* ``periodic --rsa-...`` and ``periodic-run`` in subprocesses, with the
  ``PERIODIC_RSA_*`` fallbacks (flags win, empty = unset, bad mode: exit 1).

The key pairs and aio-periodic helpers come from tests/test_rsa.py, the
subprocess helpers from tests/test_cli.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("cryptography")

import test_rsa  # noqa: E402
from aio_periodic.transport import RSAMode as AioMode  # noqa: E402
from exec_helpers import Script  # noqa: E402
from test_cli import periodic, periodic_run, stop_worker, wait_for  # noqa: E402
from test_interop_aio import run_on, wait_until  # noqa: E402
from test_rsa import Keys, aio_client, aio_rsa, rsa_server  # noqa: E402

from periodic_fast._rsa_common import AES_CHUNK, KeyFileError  # noqa: E402
from periodic_fast.client import Client, ConnectionLost  # noqa: E402
from periodic_fast.cluster import ClientCluster, WorkerCluster  # noqa: E402
from periodic_fast.rsa_transport import (  # noqa: E402
    RSAConfig,
    RSAHandshakeError,
    RSAModeName,
)
from periodic_fast.sync import SyncClient  # noqa: E402
from periodic_fast.testing import ServerProcess, running_server  # noqa: E402
from periodic_fast.worker import Worker, WorkerJob  # noqa: E402

pytestmark = [pytest.mark.interop, pytest.mark.timeout(120)]

MODES: list[RSAModeName] = ["Plain", "RSA", "AES"]
# many RSA blocks (2048-bit server key: 190 bytes each) / several AES records
SIZES = {"Plain": 300_000, "RSA": 20_000, "AES": 3 * AES_CHUNK + 1000}
UNSET_RSA = dict.fromkeys(
    (
        "PERIODIC_RSA_PRIVATE_PATH",
        "PERIODIC_RSA_PUBLIC_PATH",
        "PERIODIC_RSA_MODE",
        "PERIODIC_RSA_HANDSHAKE",
    ),
    "",
)

# test_rsa's fixtures, found here by these names: its key pairs (module
# scope, made by `periodic keygen`) and the event loop kinds
keys = test_rsa.keys
loop_kind = test_rsa.loop_kind


def client_rsa(keys: Keys, mode: RSAModeName = "AES", **kw: Any) -> RSAConfig:
    """The allowed 2048-bit client key, the server's public key."""
    kw.setdefault("server_public_key_path", keys.server_public)
    return RSAConfig(kw.pop("private", keys.client_private), mode=mode, **kw)


async def echo(job: WorkerJob) -> bytes:
    return b"R" + job.workload[::-1]


async def serve(worker: Worker) -> asyncio.Task[None]:
    await worker.add_func("echo", echo)
    await worker.connect()
    return asyncio.get_running_loop().create_task(worker.work(2))


async def stop(worker: Worker, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await worker.close()


# -- our client and worker, each mode ---------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_client_and_worker_each_mode(keys: Keys, loop_kind: str, mode: str) -> None:
    """Client (2048-bit key) and Worker (1024-bit key: another block size)
    over the v2 handshake (the default): ping, submit, run_job with a large
    workload and result, status; the server counts v2 handshakes in that mode
    only."""
    big = os.urandom(SIZES[mode])
    m: RSAModeName = mode  # type: ignore[assignment]

    async def main() -> None:
        async with rsa_server(keys) as srv:
            (addr,) = srv.addresses
            worker = Worker(addr, rsa=client_rsa(keys, m, private=keys.small_private))
            task = await serve(worker)
            try:
                async with Client(addr, rsa=client_rsa(keys, m)) as c:
                    assert await c.ping() is True
                    assert await c.submit_job("echo", "s1", b"hello") is True
                    res = await c.run_job("echo", "big", big, timeout=60)
                    assert res == b"R" + big[::-1]
                    st = await c.status()
                    assert st["echo"].workers == 1
            finally:
                await stop(worker, task)
            stats = dict(srv.hub.secure.stats)
            assert stats == {f"v2/{mode}": 2}, stats

    run_on(loop_kind, main, timeout=100)


@pytest.mark.parametrize("gen", ["v1", "legacy"])
@pytest.mark.parametrize("mode", ["RSA", "AES"])
def test_older_handshake_on_request(keys: Keys, mode: str, gen: str) -> None:
    """``handshake="v1"`` speaks the reference's generation, ``"legacy"``
    aio-periodic 1.0.0's (AES records without tag; our server serves it
    only with ``rsa_legacy=True``), for servers that know only those."""
    m: RSAModeName = mode  # type: ignore[assignment]
    big = os.urandom(SIZES[mode])

    async def main() -> None:
        async with rsa_server(keys, rsa_legacy=True) as srv:
            (addr,) = srv.addresses
            cfg = client_rsa(keys, m, handshake=gen)
            worker = Worker(addr, rsa=cfg)
            task = await serve(worker)
            try:
                async with Client(addr, rsa=cfg) as c:
                    assert await c.run_job("echo", "j", big, timeout=60) == (
                        b"R" + big[::-1]
                    )
            finally:
                await stop(worker, task)
            assert dict(srv.hub.secure.stats) == {f"{gen}/{mode}": 2}

    run_on("asyncio", main, timeout=100)


def test_unix_socket_and_reconnect(keys: Keys) -> None:
    """Over a unix socket; after the server drops the connection the client
    reconnects with a fresh handshake (the keys are read only once)."""
    cfg = client_rsa(keys)

    async def main() -> None:
        async with rsa_server(keys, tcp=False, unix=True) as srv:
            (addr,) = srv.addresses
            c = Client(addr, rsa=cfg, reconnect_delay=0.1)
            try:
                assert await c.ping() is True
                assert c._proto is not None and c._proto.transport is not None
                c._proto.transport.abort()
                await wait_until(
                    lambda: srv.hub.secure.stats["v2/AES"] == 2, 10, "reconnect"
                )
                assert await c.ping() is True
            finally:
                await c.close()
        assert Client(addr, rsa=cfg)._rsa is cfg.load()

    run_on("asyncio", main)


def test_sync_client_and_clusters(keys: Keys) -> None:
    """rsa= reaches every connection of SyncClient and the clusters."""
    cfg = client_rsa(keys)

    async def main() -> None:
        async with rsa_server(keys) as srv:
            (addr,) = srv.addresses
            sync = await asyncio.to_thread(SyncClient, addr, rsa=cfg)
            try:
                assert await asyncio.to_thread(sync.ping) is True
            finally:
                await asyncio.to_thread(sync.close)
            async with (
                ClientCluster([addr], rsa=cfg) as cc,
                WorkerCluster([addr], rsa=cfg) as wc,
            ):
                assert await cc.ping() is True
                await wc.add_func("echo", echo)
                await wc.start(1)
                assert await cc.run_job("echo", "c", b"abc") == b"Rcba"
            assert srv.hub.secure.stats["v2/AES"] == 3

    run_on("asyncio", main)


# -- refusals: a clear error, no hang ---------------------------------------------


def test_unknown_client_key(keys: Keys) -> None:
    """A key the server does not list: RSAHandshakeError naming the likely
    causes; an allowed client on the same server is undisturbed."""

    async def main() -> None:
        async with rsa_server(keys) as srv:
            (addr,) = srv.addresses
            async with Client(addr, rsa=client_rsa(keys)) as good:
                bad = Client(
                    addr,
                    rsa=client_rsa(keys, private=keys.stranger_private),
                    reconnect=False,
                )
                with pytest.raises(RSAHandshakeError, match="during the RSA handshake"):
                    await asyncio.wait_for(bad.connect(), 10)
                await bad.close()
                assert await good.ping() is True
            assert srv.hub.secure.stats["refused"] == 1

    run_on("asyncio", main)


def test_wrong_server_key(keys: Keys) -> None:
    """Configured with a key the server does not hold: the server cannot read
    the first block and closes; the client says which key file it used."""

    async def main() -> None:
        async with rsa_server(keys) as srv:
            other = str(keys.dir / "stranger_public_key.pem")  # same size
            cfg = client_rsa(keys, server_public_key_path=other)
            c = Client(srv.addresses[0], rsa=cfg, reconnect=False)
            with pytest.raises(RSAHandshakeError, match="stranger_public_key.pem"):
                await asyncio.wait_for(c.connect(), 10)
            await c.close()

    run_on("asyncio", main)


def test_mode_not_allowed(keys: Keys) -> None:
    """The server closes after the mode block: the request fails with an
    error that names the mode."""

    async def main() -> None:
        async with rsa_server(keys, rsa_modes="AES") as srv:
            c = Client(srv.addresses[0], rsa=client_rsa(keys, "RSA"), reconnect=False)
            try:
                with pytest.raises(ConnectionLost, match="RSA mode RSA not allowed"):
                    await asyncio.wait_for(c.ping(), 10)
            finally:
                await c.close()

    run_on("asyncio", main)


def test_plain_server(keys: Keys) -> None:
    """An RSA client on a server without the transport: refused at once."""

    async def main() -> None:
        async with running_server(unix=False) as srv:
            c = Client(srv.addresses[0], rsa=client_rsa(keys), reconnect=False)
            with pytest.raises(RSAHandshakeError):
                await asyncio.wait_for(c.connect(), 10)
            await c.close()

    run_on("asyncio", main)


def test_silent_server_times_out(keys: Keys) -> None:
    """A peer that never answers the first block: the handshake is bounded
    by the client's timeout."""

    async def main() -> None:
        async def mute(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read()  # until the client gives up
            w.close()

        srv = await asyncio.start_server(mute, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        try:
            c = Client(
                f"tcp://127.0.0.1:{port}",
                rsa=client_rsa(keys),
                timeout=0.3,
                reconnect=False,
            )
            with pytest.raises(RSAHandshakeError, match="no RSA handshake reply"):
                await asyncio.wait_for(c.connect(), 10)
            await c.close()
        finally:
            srv.close()
            await srv.wait_closed()

    run_on("asyncio", main)


def test_config_errors(keys: Keys, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown RSA mode 'aes'"):
        RSAConfig(keys.client_private, mode="aes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="handshake"):
        RSAConfig(keys.client_private, handshake="v3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no private key"):
        RSAConfig("")
    with pytest.raises(KeyFileError, match="cannot read private key"):
        Client("tcp://127.0.0.1:1", rsa=RSAConfig(tmp_path / "none.pem"))
    none = tmp_path / "none.pem"
    with pytest.raises(KeyFileError, match="cannot read public keys"):
        Client("tcp://127.0.0.1:1", rsa=client_rsa(keys, server_public_key_path=none))
    (tmp_path / "empty").mkdir()
    with pytest.raises(KeyFileError, match="no RSA public key"):
        client_rsa(keys, server_public_key_path=tmp_path / "empty").load()
    # a directory of *.pem: the first key (by file name) is the server's
    d = tmp_path / "dir"
    d.mkdir()
    shutil.copy(keys.server_public, d / "a.pem")
    shutil.copy(keys.client_private, d / "b.pem")  # a private key is skipped
    loaded = client_rsa(keys, server_public_key_path=d).load()
    assert loaded.server_fingerprint == client_rsa(keys).load().server_fingerprint


def test_missing_cryptography_is_a_clear_error(keys: Keys) -> None:
    """Without ``cryptography`` the client still imports; ``rsa=`` raises
    RSAUnavailable (an ImportError) naming the extra."""
    code = (
        "import sys; sys.modules['cryptography'] = None\n"
        "from periodic_fast.client import Client\n"
        "from periodic_fast.rsa_transport import RSAConfig, RSAUnavailable\n"
        "Client('tcp://127.0.0.1:1')\n"
        "try:\n"
        f"    Client('tcp://127.0.0.1:1', rsa=RSAConfig({keys.client_private!r}))\n"
        "except RSAUnavailable as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "periodic-fast[rsa]" in out.stdout


def test_plain_client_untouched() -> None:
    """Without ``rsa=`` nothing of the transport is imported."""
    code = (
        "import sys\n"
        "from periodic_fast.client import Client\n"
        "Client('tcp://127.0.0.1:1')\n"
        "bad = [m for m in ('cryptography', 'periodic_fast._rsa_client',"
        " 'periodic_fast.rsa_transport') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- a mixed pair ------------------------------------------------------------------


def test_aio_client_with_our_worker(keys: Keys) -> None:
    """aio-periodic 1.0.0's RSATransport client (legacy handshake, allowed
    by the server's opt-in) runs a job on our RSA worker (v2) through one
    server."""
    big = os.urandom(100_000)

    async def main() -> None:
        async with rsa_server(keys, rsa_legacy=True) as srv:
            (addr,) = srv.addresses
            worker = Worker(addr, rsa=client_rsa(keys, private=keys.small_private))
            task = await serve(worker)
            try:
                async with aio_client(aio_rsa(addr, keys, AioMode.AES)) as c:
                    res = await c.run_job("echo", "mixed", big, timeout=30)
                    assert res == b"R" + big[::-1]
                    assert await c.submit_job("echo", "x", b"w") is True
            finally:
                await stop(worker, task)
            stats = dict(srv.hub.secure.stats)
            assert stats == {"v2/AES": 1, "legacy/AES": 1}, stats

    run_on("asyncio", main, timeout=80)


# -- the command line ----------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_proc(keys: Keys) -> Iterator[ServerProcess]:
    """periodicd with the transport on; RSA mode not allowed (to see the
    mode flag beat the environment)."""
    args = ["--loop", "asyncio", "--rsa-private-path", keys.server_private]
    args += ["--rsa-public-path", keys.allowed, "--rsa-mode", "Plain,AES"]
    with ServerProcess(args) as proc:
        yield proc


def cli(
    *args: str, address: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``periodic ARGS`` with ``env`` and no RSA variable from outside (an
    empty one counts as unset)."""
    return periodic(*args, address=address, env={**UNSET_RSA, **(env or {})})


def key_flags(keys: Keys, mode: str = "AES") -> list[str]:
    return [
        "--rsa-private-path",
        keys.client_private,
        "--rsa-public-path",
        keys.server_public,
        "--rsa-mode",
        mode,
    ]


def test_cli_handshake_env(keys: Keys, rsa_proc: ServerProcess) -> None:
    """``$PERIODIC_RSA_HANDSHAKE``: v1 is served, legacy refused (the
    server's default), a bad name is one line and exit 1."""
    addr = rsa_proc.address
    env = {"PERIODIC_RSA_HANDSHAKE": "v1"}
    r = cli(*key_flags(keys), "status", address=addr, env=env)
    assert r.returncode == 0, r.stderr
    env = {"PERIODIC_RSA_HANDSHAKE": "legacy"}
    r = cli(*key_flags(keys), "status", address=addr, env=env)
    assert r.returncode == 1 and "during the RSA handshake" in r.stderr, r.stderr
    assert "legacy handshake refused" in rsa_proc.output()
    env = {"PERIODIC_RSA_HANDSHAKE": "v3"}
    r = cli(*key_flags(keys), "status", address=addr, env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().splitlines() == [
        "Error: unknown RSA handshake 'v3' ($PERIODIC_RSA_HANDSHAKE: v2, v1 or legacy)"
    ]


def serves(keys: Keys, address: str, func: str) -> bool:
    """``func`` is in the server's status (a worker registered it)."""
    r = cli(*key_flags(keys), "status", "--json", address=address)
    return f'"{func}"' in r.stdout


def test_cli_flags_status_submit_run(keys: Keys, rsa_proc: ServerProcess) -> None:
    """``periodic --rsa-...`` status / submit / run, and ``periodic-run``
    taking its keys from the environment."""
    addr = rsa_proc.address
    r = cli(*key_flags(keys), "submit", "cli", "s1", "-w", "x", address=addr)
    assert r.returncode == 0, r.stderr
    r = cli(*key_flags(keys, "Plain"), "status", "--json", address=addr)
    assert r.returncode == 0, r.stderr
    assert '"cli"' in r.stdout
    worker = periodic_run(
        "-H", addr, "--no-name", "rev", "rev",
        env={
            **UNSET_RSA,
            "PERIODIC_RSA_PRIVATE_PATH": keys.small_private,
            "PERIODIC_RSA_PUBLIC_PATH": keys.server_public,
        },
    )  # fmt: skip
    try:
        wait_for(lambda: serves(keys, addr, "rev"))
        r = cli(*key_flags(keys), "run", "rev", "n1", "-w", "abc", address=addr)
        assert r.returncode == 0, r.stderr
        assert r.stdout == "cba\n"
    finally:
        stop_worker(worker)


def test_pipe_worker_flags(keys: Keys, rsa_proc: ServerProcess, tmp_path: Path) -> None:
    """``periodic-run-pipe --rsa-...``: its runner answers with the job name."""
    addr = rsa_proc.address
    flags = ["--rsa-private-path", keys.small_private]
    flags += ["--rsa-public-path", keys.server_public]
    w = Script(
        "periodic_run_pipe_main", "-H", addr, *flags,
        "pipe", "sh", "-c", "echo hello; cat",
        logdir=tmp_path,
    )  # fmt: skip
    try:
        wait_for(lambda: serves(keys, addr, "pipe"))
        r = cli(*key_flags(keys), "run", "pipe", "n1", address=addr)
        assert r.returncode == 0, (r.stderr, w.err())
        assert r.stdout == "n1\n"
    finally:
        w.stop()


def test_cli_env_fallbacks(keys: Keys, rsa_proc: ServerProcess) -> None:
    addr = rsa_proc.address
    env = {
        "PERIODIC_RSA_PRIVATE_PATH": keys.client_private,
        "PERIODIC_RSA_PUBLIC_PATH": keys.server_public,
    }
    r = cli("ping", address=addr, env=env)  # default mode AES
    assert r.returncode == 0, r.stderr
    # an empty variable counts as unset: the default mode
    r = cli("ping", address=addr, env={**env, "PERIODIC_RSA_MODE": ""})
    assert r.returncode == 0, r.stderr
    # a mode the server does not allow (RSA): refused; the flag beats it
    r = cli("ping", address=addr, env={**env, "PERIODIC_RSA_MODE": "RSA"})
    assert r.returncode == 1 and "RSA mode RSA not allowed" in r.stderr, r.stderr
    env_rsa = {**env, "PERIODIC_RSA_MODE": "RSA"}
    r = cli("--rsa-mode", "AES", "ping", address=addr, env=env_rsa)
    assert r.returncode == 0, r.stderr
    # flags beat env for the keys too
    bad = {**env, "PERIODIC_RSA_PRIVATE_PATH": keys.stranger_private}
    r = cli(*key_flags(keys), "ping", address=addr, env=bad)
    assert r.returncode == 0, r.stderr
    r = cli("ping", address=addr, env=bad)
    assert r.returncode == 1 and "during the RSA handshake" in r.stderr, r.stderr
    # no private key (or an empty one): a plain client, which this server refuses
    r = cli("ping", address=addr, env={**env, "PERIODIC_RSA_PRIVATE_PATH": ""})
    assert r.returncode == 1 and "RSA transport required" in r.stderr, r.stderr


def test_cli_errors_are_one_line(keys: Keys, tmp_path: Path) -> None:
    """Bad mode (flag or env, even with the transport off), missing key file,
    default server key absent: one ``Error:`` line, exit 1, no connection
    attempted (the address is not listening)."""
    addr = "tcp://127.0.0.1:1"
    cases: list[tuple[list[str], dict[str, str], str]] = [
        (["--rsa-mode", "aes"], {}, "unknown RSA mode 'aes'"),
        ([], {"PERIODIC_RSA_MODE": "rsa"}, "unknown RSA mode 'rsa'"),
        (["--rsa-private-path", str(tmp_path / "none.pem")], {}, "none.pem"),
        (["--rsa-private-path", keys.client_private], {}, "public_key.pem"),
    ]
    for flags, env, what in cases:
        r = cli(*flags, "status", address=addr, env=env)
        assert r.returncode == 1, (flags, env, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
        assert what in lines[0], r.stderr
    worker = periodic_run("-H", addr, "--rsa-mode", "bad", "f", "true", env=UNSET_RSA)
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 1 and b"unknown RSA mode 'bad'" in err, err
