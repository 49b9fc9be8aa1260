"""HTTP on the binary port (issue 7): the curl API, status page, metrics, health.

Every in-process test runs on the stock asyncio loop and on uvloop, with the
httptools parser and with the h11 fallback (``parser`` fixture).  Requests
are made by real clients: ``http.client`` (in a thread, the loop keeps
serving), raw sockets for malformed input and pipelining, and ``curl`` for
the reference's documented command lines against a ``periodicd`` process.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import shutil
import subprocess
import sys
import time
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_durable_ack import GateStore
from test_server import Raw, Runner, pick
from test_server import run as run  # noqa: F401  (the loop fixture)

from periodic_fast import codec
from periodic_fast.constants import ClientType, Command
from periodic_fast.job import Job
from periodic_fast.scheduler import Scheduler
from periodic_fast.server import http as http_mod
from periodic_fast.server.app import Server, parse_address
from periodic_fast.store.memory import MemoryStore
from periodic_fast.testing import ServerProcess, running_server

TIMEOUT = 10.0
PARSERS = ["httptools", "h11"]


@pytest.fixture(params=PARSERS)
def parser(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- clients ---------------------------------------------------------------------------


class Reply:
    """One HTTP response."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        assert self.headers.get("content-type", "").startswith("application/json")
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.body[:200]!r})"


def _blocking(
    host: str,
    port: int,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
) -> Reply:
    conn = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


async def fetch(
    server: Server,
    method: str,
    path: str,
    body: bytes | dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Reply:
    """One request with http.client (in a thread; the loop keeps serving)."""
    addr = parse_address(pick(server, "tcp"))
    hdrs = dict(headers or {})
    if isinstance(body, dict):
        body = "&".join(f"{k}={v}" for k, v in body.items()).encode()
        hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
    call = functools.partial(
        _blocking, addr.host or "127.0.0.1", addr.port, method, path, body, hdrs
    )
    return await asyncio.wait_for(
        asyncio.get_running_loop().run_in_executor(None, call), TIMEOUT
    )


class RawHttp:
    """A raw stream: write any bytes, read HTTP responses one by one."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, address: str) -> RawHttp:
        raw = await Raw.open(address)
        return cls(raw.reader, raw.writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def response(self, timeout: float = TIMEOUT) -> Reply:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(n), timeout)
        return Reply(status, headers, body)

    async def eof(self, timeout: float = TIMEOUT) -> bytes:
        """Everything until the server closes."""
        got = b""
        try:
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    return got
                got += data
        except (ConnectionResetError, BrokenPipeError):
            return got

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _server(
    parser: str, *, writes: bool = True, **options: Any
) -> Any:  # an async context manager
    return running_server(
        http_writes=writes, http_options={"parser": parser, **options}
    )


async def _binary_submit(conn: Raw, msgid: int, job: Job) -> None:
    reply = await conn.request(msgid, Command.SUBMIT_JOB, codec.encode_job(job))
    assert reply.command == Command.SUCCESS


async def _status(conn: Raw, msgid: int) -> dict[bytes, Any]:
    reply = await conn.request(msgid, Command.STATUS)
    assert reply.command == Command.DATA
    return {s.func: s for s in codec.decode_status(reply.payload)}


# -- sniffing --------------------------------------------------------------------------


def test_looks_like_http() -> None:
    assert http_mod.looks_like_http(b"GET / HTTP/1.1\r\nHost: localhost\r\n") is True
    assert http_mod.looks_like_http(b"DELETE /f") is True
    assert http_mod.looks_like_http(b"OPTIONS ") is True
    assert http_mod.looks_like_http(b"G") is None
    assert http_mod.looks_like_http(b"DELET") is None
    assert http_mod.looks_like_http(b"") is None
    assert http_mod.looks_like_http(b"\x00REQ") is False
    assert http_mod.looks_like_http(b"GETX") is False
    assert http_mod.looks_like_http(b"hello") is False


# -- the reference's API ---------------------------------------------------------------


def test_api_routes(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            r = await fetch(srv, "GET", "/")
            assert (r.status, r.json()) == (200, {})
            form = {"func": "f1", "name": "j1", "args": "hello", "timeout": "7"}
            r = await fetch(srv, "POST", "/", form)
            assert (r.status, r.json()) == (200, {"msg": "SUCCESS"})
            r = await fetch(srv, "POST", "/f1", {"name": "j2", "sched_at": "0"})
            assert r.status == 200
            far = int(time.time()) + 3600
            r = await fetch(srv, "POST", "/f2", {"name": "later", "sched_at": str(far)})
            assert r.status == 200
            got, state = srv.scheduler.job(b"f1", b"j1")
            assert (got.workload, got.timeout) == (b"hello", 7)
            assert state == 0
            got, _ = srv.scheduler.job(b"f2", b"later")
            assert got.sched_at == far

            r = await fetch(srv, "GET", "/")
            body = r.json()
            assert set(body) == {"f1", "f2"}
            assert body["f1"] == {
                "func_name": "f1",
                "total_worker": 0,
                "total_job": 2,
                "processing": 0,
                "locked": 0,
                "sched_at": body["f1"]["sched_at"],
            }
            assert body["f2"]["sched_at"] == far
            r = await fetch(srv, "GET", "/f1")
            assert (r.status, r.json()["total_job"]) == (200, 2)
            r = await fetch(srv, "GET", "/api/funcs/f2")
            assert r.json()["func_name"] == "f2"
            r = await fetch(srv, "GET", "/nope")
            assert r.status == 404 and "nope" in r.json()["err"]

            r = await fetch(srv, "POST", "/f1", {"name": "j1", "act": "REMOVE"})
            assert (r.status, r.json()) == (200, {"msg": "SUCCESS"})
            assert srv.scheduler.job(b"f1", b"j1") is None
            r = await fetch(
                srv, "POST", "/", {"func": "f1", "name": "j1", "act": "remove"}
            )
            assert r.status == 404 and "does not exist" in r.json()["err"]

            r = await fetch(srv, "DELETE", "/f1")
            assert (r.status, r.json()) == (200, {"msg": "SUCCESS"})
            r = await fetch(srv, "GET", "/f1")
            assert r.status == 404
            r = await fetch(srv, "DELETE", "/f1")
            assert r.status == 404
            r = await fetch(srv, "DELETE", "/")
            assert (r.status, r.json()) == (400, {"err": "func is required"})
            r = await fetch(srv, "HEAD", "/f2")
            assert r.status == 200 and r.body == b""
            r = await fetch(srv, "OPTIONS", "/")
            assert r.status == 204 and "POST" in r.headers["allow"]
            r = await fetch(srv, "PUT", "/f2", b"x")
            assert r.status == 405 and "GET" in r.headers["allow"]

    run(main())


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"func": "f"}, "job name or func is required"),
        ({"name": "n"}, "job name or func is required"),
        ({"func": "f", "name": "n", "timeout": "soon"}, "timeout must be an integer"),
        ({"func": "f", "name": "n", "timeout": "-1"}, "timeout out of range"),
        ({"func": "f", "name": "n", "sched_at": "1.5"}, "sched_at must be an integer"),
        ({"func": "f", "name": "n", "sched_at": "9" * 30}, "sched_at out of range"),
        ({"func": "f" * 256, "name": "n"}, "at most 255 bytes"),
    ],
)
def test_submit_bad_fields(
    run: Runner[None], form: dict[str, str], message: str
) -> None:
    async def main() -> None:
        async with _server("httptools") as srv:
            r = await fetch(srv, "POST", "/", form)
            assert r.status == 400, r
            assert message in r.json()["err"]
            assert srv.scheduler.jobs() == []

    run(main())


def test_bodies_json_query_and_unsupported(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            body = json.dumps({"name": "j", "args": "a b", "timeout": 3}).encode()
            r = await fetch(
                srv, "POST", "/fj", body, {"Content-Type": "application/json"}
            )
            assert r.status == 200
            job, _ = srv.scheduler.job(b"fj", b"j")
            assert (job.workload, job.timeout) == (b"a b", 3)
            r = await fetch(srv, "POST", "/fq?name=q&args=x%26y", b"")
            assert r.status == 200
            job, _ = srv.scheduler.job(b"fq", b"q")
            assert job.workload == b"x&y"
            r = await fetch(
                srv, "POST", "/fj", b"[1]", {"Content-Type": "application/json"}
            )
            assert r.status == 400 and "object" in r.json()["err"]
            r = await fetch(
                srv, "POST", "/fj", b"{bad", {"Content-Type": "application/json"}
            )
            assert r.status == 400 and "bad JSON" in r.json()["err"]
            r = await fetch(
                srv, "POST", "/fj", b"--x", {"Content-Type": "multipart/form-data"}
            )
            assert r.status == 415

    run(main())


def test_paths_are_url_decoded(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            r = await fetch(srv, "POST", "/my%20func%2Fx", {"name": "n%C3%A9"})
            assert r.status == 200
            assert srv.scheduler.job(b"my func/x", "né".encode())
            r = await fetch(srv, "GET", "/my%20func%2Fx?ignored=1")
            assert r.json()["func_name"] == "my func/x"
            assert "my func/x" in (await fetch(srv, "GET", "/")).json()

    run(main())


def test_writes_from_loopback_without_the_flag(run: Runner[None], parser: str) -> None:
    # the binary port's rules (issue 19); beyond loopback: tests/test_ops.py
    async def main() -> None:
        async with _server(parser, writes=False) as srv:
            r = await fetch(srv, "POST", "/", {"func": "f", "name": "n"})
            assert r.status == 200
            assert len(srv.scheduler.jobs()) == 1
            r = await fetch(srv, "DELETE", "/f")
            assert r.status == 200
            assert srv.scheduler.jobs() == []

    run(main())


def test_cross_site_writes_refused(run: Runner[None]) -> None:
    async def main() -> None:
        async with _server("httptools") as srv:
            form = {"func": "f", "name": "n"}
            r = await fetch(srv, "POST", "/", form, {"Origin": "http://evil.example"})
            assert r.status == 403
            r = await fetch(srv, "DELETE", "/f", None, {"Sec-Fetch-Site": "cross-site"})
            assert r.status == 403
            addr = parse_address(pick(srv, "tcp"))
            same = f"http://127.0.0.1:{addr.port}"
            r = await fetch(srv, "POST", "/", form, {"Origin": same})
            assert r.status == 200
            assert len(srv.scheduler.jobs()) == 1

    run(main())


def test_drop_refused_while_workers_connected(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            worker = await Raw.open(pick(srv, "unix"))
            await worker.register(ClientType.WORKER)
            reply = await worker.request(1, Command.CAN_DO, b"\x04busy")
            assert reply.command == Command.SUCCESS
            r = await fetch(srv, "POST", "/busy", {"name": "j"})
            assert r.status == 200
            r = await fetch(srv, "DELETE", "/busy")
            assert r.status == 409 and "workers" in r.json()["err"]
            assert srv.scheduler.job(b"busy", b"j")
            await worker.close()

    run(main())


def test_http_submit_dispatches_to_a_worker(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            worker = await Raw.open(pick(srv, "tcp"))
            await worker.register(ClientType.WORKER)
            await worker.request(1, Command.CAN_DO, b"\x02hw")
            assert (
                await worker.request(2, Command.GRAB_JOB)
            ).command == Command.SUCCESS
            r = await fetch(srv, "POST", "/hw", {"name": "now", "args": "payload"})
            assert r.status == 200
            assign = await worker.recv()
            assert (assign.msgid, assign.command) == (2, Command.JOB_ASSIGN)
            job = codec.decode_job(assign.payload)
            assert (job.func, job.name, job.workload) == (b"hw", b"now", b"payload")
            await worker.close()

    run(main())


# -- durability ------------------------------------------------------------------------


def test_writes_wait_for_the_store(run: Runner[None], parser: str) -> None:
    store = GateStore()

    async def main() -> None:
        async with running_server(
            store=store,  # type: ignore[arg-type]
            http_writes=True,
            http_options={"parser": parser},
        ) as srv:
            conn = await RawHttp.open(pick(srv, "tcp"))
            body = b"func=f&name=a"
            req = (
                b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n\r\n%s"
            ) % (len(body), body)
            conn.send(req)
            with pytest.raises(asyncio.TimeoutError):
                await conn.response(timeout=0.3)  # held: not committed yet
            store.open()
            assert (await conn.response()).status == 200
            # a failed commit: 503, the connection stays usable
            conn.send(req.replace(b"name=a", b"name=b"))
            await asyncio.sleep(0.1)
            store.open(OSError("disk full"))
            r = await conn.response()
            assert r.status == 503 and "disk full" in r.json()["err"]
            conn.send(b"GET /f HTTP/1.1\r\nHost: localhost\r\n\r\n")
            store.open()
            assert (await conn.response()).status == 200
            await conn.close()

    run(main())


def test_write_timeout_gives_503(run: Runner[None]) -> None:
    store = GateStore()

    async def main() -> None:
        async with running_server(
            store=store,  # type: ignore[arg-type]
            http_writes=True,
            http_options={"write_timeout": 0.2},
        ) as srv:
            r = await fetch(srv, "POST", "/", {"func": "f", "name": "a"})
            assert r.status == 503 and "in time" in r.json()["err"]
            store.open()

    run(main())


# -- limits and malformed requests -----------------------------------------------------


async def _expect_error_and_close(conn: RawHttp, status: int) -> None:
    r = await conn.response()
    assert r.status == status, r
    assert r.headers["connection"] == "close"
    assert await conn.eof() == b""
    await conn.close()


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: localhost\r\nBad Header\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/9.9\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n", 414),
        (
            b"GET / HTTP/1.1\r\nHost: localhost\r\n"
            + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
            + b"\r\n",
            431,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: "
            + b"v" * 50_000
            + b"\r\n\r\n",
            431,
        ),
        (b"POST /f HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2000\r\n\r\n", 413),
        (b"POST /f HTTP/1.1\r\nHost: localhost\r\nContent-Length: x\r\n\r\n", 400),
        (
            b"POST /f HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"a" * 1024
            + b"\r\n"
            + b"400\r\n"
            + b"a" * 1024
            + b"\r\n0\r\n\r\n",
            413,
        ),
    ],
    ids=["bad-header", "no-host", "bad-version", "long-target", "many-headers",
         "big-header", "declared-body", "bad-length", "chunked-body"],
)  # fmt: skip
def test_malformed_and_over_limit(
    run: Runner[None], parser: str, request_bytes: bytes, status: int
) -> None:
    async def main() -> None:
        async with _server(parser, max_body=1500) as srv:
            conn = await RawHttp.open(pick(srv, "tcp"))
            conn.send(request_bytes)
            await _expect_error_and_close(conn, status)
            # the server is fine: a new request is answered
            assert (await fetch(srv, "GET", "/healthz")).status == 200

    run(main())


def test_read_timeout_and_idle_close(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser, read_timeout=0.3, idle_timeout=0.3) as srv:
            conn = await RawHttp.open(pick(srv, "tcp"))
            conn.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n")  # never finished
            await _expect_error_and_close(conn, 408)
            idle = await RawHttp.open(pick(srv, "tcp"))
            idle.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert (await idle.response()).status == 200
            assert await idle.eof(timeout=3) == b""  # closed when idle
            await idle.close()

    run(main())


def test_trickled_request_times_out(run: Runner[None], parser: str) -> None:
    """A byte now and then does not extend the read timeout (slowloris)."""

    async def main() -> None:
        async with _server(parser, read_timeout=0.4) as srv:
            conn = await RawHttp.open(pick(srv, "tcp"))
            start = time.monotonic()
            conn.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n")
            got = b""
            while time.monotonic() - start < 3:
                try:
                    got = await asyncio.wait_for(conn.reader.read(65536), 0.05)
                    break  # the answer (or EOF) came
                except asyncio.TimeoutError:
                    conn.send(b"X")  # one more byte of a header name
            assert got.startswith(b"HTTP/1.1 408 "), got[:80]
            assert time.monotonic() - start < 1.2
            await conn.close()

    run(main())


def test_keep_alive_pipelining_and_close(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            for addr in srv.addresses:  # tcp and unix
                conn = await RawHttp.open(addr)
                body = b"name=p1"
                conn.send(
                    b"POST /pipe HTTP/1.1\r\nHost: localhost\r\n"
                    b"Content-Length: %d\r\n\r\n%s"
                    b"GET /pipe HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n"
                    % (len(body), body)
                )
                first, second, third = [await conn.response() for _ in range(3)]
                assert first.json() == {"msg": "SUCCESS"}
                assert second.json()["total_job"] >= 1
                assert third.json() == {"status": "ok"}
                assert third.headers["connection"] == "keep-alive"
                conn.send(
                    b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n"
                    b"Connection: close\r\n\r\n"
                )
                r = await conn.response()
                assert (r.status, r.headers["connection"]) == (200, "close")
                assert await conn.eof() == b""
                await conn.close()
            old = await RawHttp.open(pick(srv, "tcp"))
            old.send(b"GET /healthz HTTP/1.0\r\n\r\n")
            assert (await old.response()).headers["connection"] == "close"
            assert await old.eof() == b""
            await old.close()

    run(main())


def test_expect_continue(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            conn = await RawHttp.open(pick(srv, "tcp"))
            body = b"name=big&args=" + b"x" * 5000
            conn.send(
                b"POST /ec HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            interim = await conn.response()
            assert interim.status == 100
            conn.send(body)
            assert (await conn.response()).status == 200
            job, _ = srv.scheduler.job(b"ec", b"big")
            assert len(job.workload) == 5000
            await conn.close()

    run(main())


def test_binary_connections_undisturbed(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser, max_body=100) as srv:
            client = await Raw.open(pick(srv, "tcp"))
            await client.register()
            await _binary_submit(client, 1, Job(b"keep", b"k1", b"w"))
            bad = [
                b"GET / HTTP/1.1\r\nHost: localhost\r\nBad\r\n\r\n",
                b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Length: 999\r\n\r\n",
                b"GET / HTTP/1.1\r\nHost: localhost\r\nContent-Length: -1\r\n\r\n",
                b"\x00REQ garbage that is not a frame",
                b"HELLO\r\n",
            ]
            conns = [await RawHttp.open(pick(srv, "tcp")) for _ in bad]
            for c, data in zip(conns, bad, strict=True):
                c.send(data)
            pings = [client.request(10 + i, Command.PING) for i in range(5)]
            for ping in pings:
                assert (await ping).command == Command.PONG
            for c in conns:
                await c.eof()
                await c.close()
            stats = await _status(client, 30)
            assert stats[b"keep"].jobs == 1
            assert (await fetch(srv, "GET", "/keep")).json()["total_job"] == 1
            await client.close()

    run(main())


def test_http_off(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server(http=False) as srv:
            conn = await RawHttp.open(pick(srv, "tcp"))
            conn.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert await conn.eof() == b""  # closed as bad magic, no answer
            await conn.close()
            client = await Raw.open(pick(srv, "tcp"))
            await client.register()
            assert (await client.request(1, Command.PING)).command == Command.PONG
            await client.close()

    run(main())


def test_http_connection_limit(run: Runner[None]) -> None:
    async def main() -> None:
        async with _server("httptools", max_connections=2) as srv:
            held = [await RawHttp.open(pick(srv, "tcp")) for _ in range(2)]
            for c in held:
                c.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert (await c.response()).status == 200
            extra = await RawHttp.open(pick(srv, "tcp"))
            extra.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert (await extra.response()).status == 503
            await extra.close()
            # issue 16.9: a health probe still gets through (a reserve)
            probe = await RawHttp.open(pick(srv, "tcp"))
            probe.send(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert (await probe.response()).status == 200
            await probe.close()
            for c in held:
                await c.close()

    run(main())


# -- health, metrics, overview ---------------------------------------------------------


class SickStore(MemoryStore):
    """A memory store whose metrics say it is unhealthy."""

    def metrics(self) -> dict[str, float]:
        return {
            "commits": 3.0,
            "commit_seconds_sum": 0.25,
            "last_commit_seconds": 0.1,
            "errors": 2.0,
            "pending": 5.0,
            "healthy": 0.0,
            "queue depth": 7.0,
        }


def test_health_checks(run: Runner[None]) -> None:
    async def main() -> None:
        async with running_server() as srv:
            assert (await fetch(srv, "GET", "/healthz")).json() == {"status": "ok"}
            r = await fetch(srv, "GET", "/readyz")
            assert r.status == 200 and r.json()["ready"] is True
            app = srv.hub.http
            srv._state = "stopping"  # white box: draining
            try:
                ready, checks = app.readiness()
                assert not ready and checks["draining"]
            finally:
                srv._state = "running"
        async with running_server(store=SickStore()) as srv:  # type: ignore[arg-type]
            r = await fetch(srv, "GET", "/readyz")
            assert r.status == 503 and r.json()["store"] is False
            text = (await fetch(srv, "GET", "/metrics")).body.decode()
            samples = {
                s.name: s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
            }
            assert samples["periodic_store_errors_total"] == 2.0
            assert samples["periodic_store_commit_seconds_total"] == 0.25
            assert samples["periodic_store_pending_writes"] == 5.0
            assert samples["periodic_store_healthy"] == 0.0
            assert samples["periodic_store_queue_depth"] == 7.0
            assert samples["periodic_server_ready"] == 0.0

    run(main())


def _families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def _by_func(family: Any, suffix: str = "") -> dict[str, float]:
    return {
        s.labels["func"]: s.value
        for s in family.samples
        if s.name == family.name + suffix
    }


def test_metrics_match_status(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            client = await Raw.open(pick(srv, "tcp"))
            await client.register()
            now = int(time.time())
            for i in range(5):
                await _binary_submit(client, 1 + i, Job(b"mail", b"m%d" % i, b"x"))
            for i in range(3):
                at = now + 3600
                await _binary_submit(
                    client, 10 + i, Job(b"report", b"r%d" % i, b"", at)
                )
            worker = await Raw.open(pick(srv, "unix"))
            await worker.register(ClientType.WORKER)
            await worker.request(1, Command.CAN_DO, b"\x04mail")
            worker.send(codec.encode_request(2, Command.GRAB_JOB))
            worker.send(codec.encode_request(3, Command.GRAB_JOB))
            got = [await worker.recv() for _ in range(4)]  # 2 SUCCESS, 2 assigns
            assigned = [p for p in got if p.command == Command.JOB_ASSIGN]
            assert len(assigned) == 2
            jobs = [codec.decode_job(p.payload) for p in assigned]
            for p in assigned:
                assert p.msgid is not None
                worker.send(codec.encode_request(p.msgid, Command.JOB_ASSIGNED))
            done = await worker.request(
                4, Command.WORK_DONE, codec.encode_handle(b"mail", jobs[0].name)
            )
            assert done.command == Command.SUCCESS
            fail = await worker.request(
                5, Command.WORK_FAIL, codec.encode_handle(b"mail", jobs[1].name)
            )
            assert fail.command == Command.SUCCESS

            status = await _status(client, 40)
            r = await fetch(srv, "GET", "/metrics")
            assert r.status == 200
            assert r.headers["content-type"].startswith("text/plain")
            fams = _families(r.body.decode())
            jobs_g = _by_func(fams["periodic_func_jobs"])
            workers_g = _by_func(fams["periodic_func_workers"])
            running_g = _by_func(fams["periodic_func_running_jobs"])
            locked_g = _by_func(fams["periodic_func_locked_jobs"])
            for func, st in status.items():
                name = func.decode()
                assert jobs_g[name] == st.jobs
                assert workers_g[name] == st.workers
                assert running_g[name] == st.processing
                assert locked_g[name] == st.locked
            assert jobs_g == {"mail": 4.0, "report": 3.0}
            due = _by_func(fams["periodic_func_due_jobs"])
            # 5 mail jobs: 1 done, 1 failed (back to pending 1 s later), 0
            # running, 3 due; the report jobs are an hour away
            assert due == {"mail": 3.0, "report": 0.0}
            assert _by_func(fams["periodic_jobs_submitted"], "_total") == {
                "mail": 5.0,
                "report": 3.0,
            }
            assert _by_func(fams["periodic_jobs_done"], "_total")["mail"] == 1.0
            assert _by_func(fams["periodic_jobs_failed"], "_total")["mail"] == 1.0
            late = {
                s.name: s.value for s in fams["periodic_job_lateness_seconds"].samples
            }
            assert late["periodic_job_lateness_seconds_count"] == 2.0
            assert late["periodic_job_lateness_seconds_bucket"] == 2.0  # +Inf, last
            run_s = {s.name: s for s in fams["periodic_job_run_seconds"].samples}
            assert run_s["periodic_job_run_seconds_count"].value == 2.0
            conns = {
                s.labels["kind"]: s.value for s in fams["periodic_connections"].samples
            }
            assert conns == {"worker": 1.0, "client": 1.0}
            await worker.close()
            await client.close()

    run(main())


def test_overview_and_page(run: Runner[None], parser: str) -> None:
    async def main() -> None:
        async with _server(parser) as srv:
            client = await Raw.open(pick(srv, "tcp"))
            await client.register()
            for i in range(3):
                await _binary_submit(client, 1 + i, Job(b"orphan", b"o%d" % i))
            await _binary_submit(
                client, 9, Job(b"<b>x</b>", b"n", b"", int(time.time()) + 600)
            )
            ov = (await fetch(srv, "GET", "/api/overview")).json()
            assert ov["totals"]["scheduled"] == 4
            assert ov["totals"]["due"] == 3
            assert ov["totals"]["clients"] == 1 and ov["totals"]["workers"] == 0
            assert ov["totals"]["no_worker_funcs"] == 1
            first = ov["funcs"][0]
            assert (first["func"], first["no_worker"], first["due"]) == (
                "orphan",
                True,
                3,
            )
            assert first["oldest_due_age"] >= 0
            assert ov["connections"][0]["kind"] == "client"
            assert any(e["kind"] == "connect" for e in ov["events"])
            page = await fetch(srv, "GET", "/", headers={"Accept": "text/html,*/*"})
            assert page.headers["content-type"].startswith("text/html")
            text = page.body.decode()
            assert '<tr class="alert" data-func="orphan">' in text
            assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x</b>" not in text
            ui = await fetch(srv, "GET", "/ui")
            assert ui.body.startswith(b"<!doctype html>")
            frag = await fetch(srv, "GET", "/ui/fragment")
            assert b'id="funcs"' in frag.body and b"<html" not in frag.body
            # JSON clients (curl's */*) still get JSON at /
            assert (
                "orphan"
                in (await fetch(srv, "GET", "/", headers={"Accept": "*/*"})).json()
            )
            await client.close()

    run(main())


# -- periodicd and curl ----------------------------------------------------------------


CURL = shutil.which("curl")
MEM = ["-p", ":memory:"]  # not the default on-disk store other tests may share
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "-sS", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def _http_url(proc: ServerProcess) -> str:
    addr = parse_address(proc.address)
    return f"http://{addr.host}:{addr.port}"


@needs_curl
def test_seed_curl_lines() -> None:
    """The reference's documented curl lines, as written, on periodicd."""
    with ServerProcess(MEM + ["--http-writes"], command="periodicd") as proc:
        url = _http_url(proc)
        at = str(int(time.time()) + 3600)
        r = _curl(
            "-d", "func=ls5", "-d", "name=job1", "-d", "args=hello",
            "-d", "timeout=10", "-d", f"sched_at={at}", url,
        )  # fmt: skip
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}, r
        r = _curl("-d", "name=job2", "-d", "sched_at=0", f"{url}/ls5")
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}
        status = json.loads(_curl(url).stdout)
        assert status["ls5"]["total_job"] == 2 and status["ls5"]["total_worker"] == 0
        one = json.loads(_curl(f"{url}/ls5").stdout)
        assert one["func_name"] == "ls5"
        r = _curl("-d", "name=job1", "-d", "act=remove", f"{url}/ls5")
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}
        assert json.loads(_curl(f"{url}/ls5").stdout)["total_job"] == 1
        r = _curl("-X", "DELETE", f"{url}/ls5")
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}
        assert json.loads(_curl(url).stdout) == {}
        r = _curl("-o", "/dev/null", "-w", "%{http_code}", f"{url}/ls5")
        assert r.stdout == "404"
        metrics = _curl(f"{url}/metrics").stdout
        assert "periodic_jobs_submitted_total" in metrics
        assert "periodic_jobs_removed_total 1.0" in metrics


@needs_curl
def test_periodicd_flags(tmp_path: Any) -> None:
    with ServerProcess(MEM) as proc:  # default: writes from loopback (issue 19)
        url = _http_url(proc)
        r = _curl("-o", "/dev/null", "-w", "%{http_code}", "-d", "func=f&name=n", url)
        assert r.stdout == "200"
        assert _curl("-o", "/dev/null", "-w", "%{http_code}", url).stdout == "200"
    with ServerProcess(MEM + ["--no-http"]) as proc:
        r = _curl(_http_url(proc))
        assert r.returncode != 0  # closed without an answer
    sock = tmp_path / "p.sock"
    with ServerProcess(MEM + ["--http-writes"], address=f"unix://{sock}") as proc:
        r = _curl("--unix-socket", str(sock), "-d", "name=u", "http://localhost/uf")
        assert json.loads(r.stdout) == {"msg": "SUCCESS"}
        r = _curl("--unix-socket", str(sock), "http://localhost/uf")
        assert json.loads(r.stdout)["total_job"] == 1


def test_h11_when_httptools_is_missing() -> None:
    code = (
        "import sys; sys.modules['httptools'] = None\n"
        "from periodic_fast.server import http\n"
        "assert http.httptools is None\n"
        "app = http.HttpApp.__new__(http.HttpApp); app.parser = 'auto'\n"
        "assert app.parser_name == 'h11', app.parser_name\n"
        "p = http._new_parser('auto', 100)\n"
        "reqs, _ = p.feed(b'GET /x HTTP/1.1\\r\\nHost: h\\r\\n\\r\\n')\n"
        "assert [r.path for r in reqs] == [b'/x']\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# -- the scheduler's statistics (sans-I/O) ---------------------------------------------


def _sink(_: bytes) -> None:
    pass


def test_scheduler_stats_and_rates() -> None:
    t0 = 1_700_000_000.0
    s = Scheduler(MemoryStore(), t0)
    sent: list[bytes] = []
    s.connect(1, ClientType.CLIENT, None, _sink, lambda: None, t0)
    s.connect(2, ClientType.WORKER, None, sent.append, lambda: None, t0)
    s.handle(2, 1, Command.CAN_DO, b"\x01f", t0)
    for i in range(4):
        job = Job(b"f", b"j%d" % i, b"", int(t0) - 5)  # 5 s late when submitted
        s.handle(1, 10 + i, Command.SUBMIT_JOB, codec.encode_job(job), t0)
    for m in (20, 21, 22):
        s.handle(2, m, Command.GRAB_JOB, b"", t0 + 0.5)
    assigns = [p for p in codec.Parser(requests=False).feed(b"".join(sent))
               if p.command == Command.JOB_ASSIGN]  # fmt: skip
    assert len(assigns) == 3
    names = [codec.decode_job(p.payload).name for p in assigns]
    for p in assigns:  # confirmed: the run time is measured from the assignment
        assert p.msgid is not None
        s.handle(2, p.msgid, Command.JOB_ASSIGNED, b"", t0 + 1)
    s.handle(2, 30, Command.WORK_DONE, codec.encode_handle(b"f", names[0]), t0 + 2.5)
    s.handle(2, 31, Command.WORK_FAIL, codec.encode_handle(b"f", names[1]), t0 + 3)
    later = codec.encode_handle(b"f", names[2]) + b"\x00" * 7 + b"\x3c\x00\x01"
    s.handle(2, 32, Command.SCHED_LATER, later, t0 + 4)
    counters = s.counters()
    assert (counters["submit"], counters["done"], counters["fail"]) == (4, 1, 1)
    assert counters["sched_later"] == 1
    st = s.stats
    # lateness: sched_at was clamped to int(t0) on submit, dispatched at t0+0.5
    assert st.lateness.count == 3 and st.lateness.sum == pytest.approx(1.5)
    assert st.runtime.count == 3
    assert st.runtime.sum == pytest.approx(2.0 + 2.5 + 3.5)
    assert st.lateness.cumulative()[-1] == (float("inf"), 3)
    (d,) = s.func_details(t0 + 4)
    assert (d.workers, d.jobs, d.running, d.done, d.failed, d.sched_later) == (
        1, 3, 0, 1, 1, 1,
    )  # fmt: skip
    # per-minute rates over the last minute: samples every 10 s from tick()
    for k in range(1, 8):
        s.tick(t0 + 10 * k)
    rates = s.rates(t0 + 70)
    assert rates["done"] == 0.0  # everything happened more than a minute ago
    assert s.rates(t0 + 5)["done"] == 1.0
    assert [e.kind for e in st.events][:3] == ["connect", "connect", "fail"]
    # HTTP-side writes
    assert s.submit(Job(b"g", b"x"), t0 + 71)
    with pytest.raises(ValueError):
        s.submit(Job(b"", b"x"), t0 + 71)
    assert s.remove(b"g", b"x", t0 + 71) and not s.remove(b"g", b"x", t0 + 71)
    assert s.drop_func(b"f", t0 + 71) == "busy"
    assert s.drop_func(b"zz", t0 + 71) == "unknown"
    assert s.drop_func(b"g", t0 + 71) == "dropped"
    s.disconnect(2, t0 + 72)
    assert s.drop_func(b"f", t0 + 72) == "dropped"
    assert s.counters()["submit"] == 5  # dropped funcs still count
    assert s.connections()[0].id == 1 and s.locks() == []


def test_scheduler_submit_respects_max_jobs() -> None:
    s = Scheduler(MemoryStore(), 1000.0, max_jobs_per_func=1)
    assert s.submit(Job(b"f", b"a"), 1000.0)
    assert not s.submit(Job(b"f", b"b"), 1000.0)
    assert s.submit(Job(b"f", b"a", b"update"), 1000.0)  # an update is fine


def test_unknown_api_write_is_404_not_a_submit() -> None:
    """A mistyped API write answers 404 and submits nothing (not the classic
    ``POST /FUNC`` of a func named "api/...")."""
    import asyncio as _asyncio

    from periodic_fast.server import Server

    async def main() -> None:
        server = Server(["tcp://127.0.0.1:0"], store=":memory:")
        await server.start()
        try:
            port = int(server.addresses[0].rsplit(":", 1)[1])
            reader, writer = await _asyncio.open_connection("127.0.0.1", port)
            body = b"name=x"
            writer.write(
                b"POST /api/no-such-route HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            answer = await reader.read()
            writer.close()
            assert answer.startswith(b"HTTP/1.1 404"), answer[:80]
            assert b"no API route" in answer
            assert server.scheduler.job(b"api/no-such-route", b"x") is None
        finally:
            await server.stop()

    _asyncio.run(main())
