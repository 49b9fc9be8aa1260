"""The status page in a real browser (issue 7): headless Chromium loads
``/ui`` from a ``periodicd`` that holds jobs, a worker, a running job and a
lock; the test reads the DOM *after the page's script ran* (its refresh
replaces the server-rendered content and counts itself in
``body[data-refreshes]``) and saves a PNG screenshot for a person to look at.

Skipped when Chromium is missing, except under ``CI=true`` where a missing
browser fails the test.  ``PERIODIC_FAST_SCREENSHOT=PATH`` also copies the
screenshot there (that is how docs/img/status-page.png is made).
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import struct
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from periodic_fast import codec
from periodic_fast.constants import ClientType, Command
from periodic_fast.server.app import parse_address
from periodic_fast.testing import ServerProcess

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
)
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _need_chromium() -> str:
    if CHROMIUM is None:
        if CI:
            pytest.fail("chromium is required under CI=true (apt-get install chromium)")
        pytest.skip("chromium is not installed (Debian package: chromium)")
    return CHROMIUM


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    browser = _need_chromium()
    argv = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp / 'profile'}",
        *args,
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90)


class _Dom(HTMLParser):
    """Collects what the test checks: attributes by id, table rows, cards."""

    def __init__(self) -> None:
        super().__init__()
        self.body_attrs: dict[str, str | None] = {}
        self.rows: dict[str, list[list[str]]] = {}  # table id -> rows of cells
        self.row_attrs: dict[str, list[dict[str, str | None]]] = {}
        self.cards: dict[str, str] = {}  # data-total -> value
        self.text_by_id: dict[str, str] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._card: str | None = None
        self._in_value = False
        self._id_stack: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "body":
            self.body_attrs = a
        if a.get("id"):
            self._id_stack.append((tag, str(a["id"])))
            self.text_by_id.setdefault(str(a["id"]), "")
        if tag == "table":
            self._table = str(a.get("id"))
            self.rows.setdefault(self._table, [])
            self.row_attrs.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self.row_attrs[self._table].append(a)
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "div" and a.get("data-total"):
            self._card = str(a["data-total"])
        elif tag == "div" and a.get("class") == "v" and self._card is not None:
            self._in_value = True

    def handle_endtag(self, tag: str) -> None:
        if self._id_stack and self._id_stack[-1][0] == tag:
            self._id_stack.pop()
        if tag == "td" and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            if self._row:
                self.rows[self._table].append(self._row)
            else:  # header row
                self.row_attrs[self._table].pop()
            self._row = None
        elif tag == "table":
            self._table = None
        elif tag == "div" and self._in_value:
            self._in_value = False
            self._card = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._in_value and self._card is not None:
            self.cards[self._card] = self.cards.get(self._card, "") + data.strip()
        for _, ident in self._id_stack:
            self.text_by_id[ident] += data


class _Worker:
    """A blocking binary worker: serves ``resize``, runs one job, holds a lock."""

    def __init__(self, address: str) -> None:
        addr = parse_address(address)
        self.sock = socket.create_connection((addr.host, addr.port), timeout=10)
        self.parser = codec.Parser(requests=False, registration=True)
        self.pending: list[codec.Packet] = []
        self.sock.sendall(codec.encode_registration(ClientType.WORKER))
        self.recv()  # registration reply

    def recv(self) -> codec.Packet:
        while not self.pending:
            data = self.sock.recv(65536)
            assert data, "server closed the worker"
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def request(self, msgid: int, command: int, payload: bytes = b"") -> None:
        self.sock.sendall(codec.encode_request(msgid, command, payload))

    def until(self, command: int) -> codec.Packet:
        for _ in range(10):
            pkt = self.recv()
            if pkt.command == command:
                return pkt
        raise AssertionError(f"no {command} from the server")

    def close(self) -> None:
        self.sock.close()


def _post(address: str, path: str, body: str) -> None:
    addr = parse_address(address)
    conn = http.client.HTTPConnection(addr.host or "127.0.0.1", addr.port, timeout=10)
    try:
        conn.request(
            "POST",
            path,
            body=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        resp.read()
    finally:
        conn.close()


def test_status_page_in_chromium(tmp_path: Path) -> None:
    _need_chromium()
    with ServerProcess(["-p", ":memory:", "--http-writes", "--name", "demo"]) as proc:
        for i in range(3):
            _post(proc.address, "/email-send", f"name=welcome-{i}&args=hi")
        _post(proc.address, "/report", f"name=daily&sched_at={int(time.time()) + 600}")
        _post(proc.address, "/resize", "name=photo-1&args=800x600")
        worker = _Worker(proc.address)
        try:
            worker.request(1, Command.CAN_DO, b"\x06resize")
            worker.request(2, Command.GRAB_JOB)
            assign = worker.until(Command.JOB_ASSIGN)
            assert assign.msgid is not None
            worker.request(assign.msgid, Command.JOB_ASSIGNED)
            lock = codec.encode_payload(
                Command.ACQUIRE, b"db", 1, b"resize", b"photo-1"
            )
            worker.request(3, Command.ACQUIRE, lock)
            granted = worker.until(Command.ACQUIRED)
            assert granted.payload == b"\x01"

            addr = parse_address(proc.address)
            url = f"http://{addr.host}:{addr.port}/ui"
            dom_run = _chromium(
                tmp_path, "--virtual-time-budget=5000", "--dump-dom", url
            )
            assert dom_run.returncode == 0, dom_run.stderr[-2000:]
            dom = _Dom()
            dom.feed(dom_run.stdout)

            # the page's script ran: it re-fetched the fragment at least once
            assert int(dom.body_attrs.get("data-refreshes") or 0) >= 1
            assert dom.text_by_id["refresh-state"].startswith("live")
            assert dom.cards["scheduled"] == "5"
            assert dom.cards["due"] == "3"
            assert dom.cards["running"] == "1"
            assert dom.cards["workers"] == "1"
            funcs = {row[0]: row for row in dom.rows["funcs"]}
            assert set(funcs) == {"email-send", "report", "resize"}
            # columns: func workers jobs due processing locked next-due oldest
            assert funcs["email-send"][1:5] == ["0", "3", "3", "0"]
            assert funcs["resize"][1:5] == ["1", "1", "0", "1"]
            assert funcs["report"][6].startswith("in ")
            alerts = [
                attrs.get("data-func")
                for attrs in dom.row_attrs["funcs"]
                if attrs.get("class") == "alert"
            ]
            assert alerts == ["email-send"]  # due jobs, no worker
            (conn_row,) = dom.rows["connections"]
            assert conn_row[1] == "worker" and "resize" in conn_row[4]
            (lock_row,) = dom.rows["locks"]
            assert lock_row[0] == "db" and "resize:photo-1" in lock_row[2]
            assert "connect" in dom.text_by_id["events"]

            shot = tmp_path / "status-page.png"
            snap = _chromium(
                tmp_path,
                "--window-size=1280,860",
                "--virtual-time-budget=3000",
                f"--screenshot={shot}",
                url,
            )
            assert snap.returncode == 0, snap.stderr[-2000:]
            data = shot.read_bytes()
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            width, height = struct.unpack(">II", data[16:24])
            assert (width, height) == (1280, 860)
            target = os.environ.get("PERIODIC_FAST_SCREENSHOT")
            if target:
                shutil.copyfile(shot, target)
        finally:
            worker.close()
