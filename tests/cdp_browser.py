"""A headless Chromium driven through the DevTools protocol over a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol messages (JSON,
NUL-terminated) on fd 3 and write them on fd 4: no port, no websocket
library.  :class:`Browser` opens a page, evaluates JavaScript in it (the
tests click and type that way), can answer chosen requests itself (the
Fetch domain: to fake a 404 or 403 of an API route) and takes screenshots.
Used by tests/test_dashboard.py and scripts/dashboard_screenshots.py.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser")) if p), None
)


class BrowserError(RuntimeError):
    """The browser failed, a protocol call failed, or a wait timed out."""


class Browser:
    """One headless Chromium with one page (a context manager).

    :param width, height: the window (and screenshot) size in CSS pixels.
    """

    def __init__(self, width: int = 1280, height: int = 900) -> None:
        if CHROMIUM is None:
            raise BrowserError("chromium is not installed")
        self._profile = tempfile.mkdtemp(prefix="pf-chromium-")
        to_r, self._to = os.pipe()  # we write, Chromium reads fd 3
        self._from, from_w = os.pipe()  # Chromium writes fd 4, we read

        def fds() -> None:  # in the child: our pipe ends become fds 3 and 4
            a = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._proc = subprocess.Popen(  # noqa: S603 - a fixed argv
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
                f"--window-size={width},{height}",
                f"--user-data-dir={self._profile}",
                "about:blank",
            ],
            preexec_fn=fds,  # noqa: PLW1509 - before exec, no threads of ours
            close_fds=False,  # fds 3 and 4 must survive; ours are CLOEXEC
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_r)
        os.close(from_w)
        self._buf = b""
        self._id = 0
        self._replies: dict[int, dict[str, Any]] = {}
        self._events: list[dict[str, Any]] = []
        self._session: str | None = None
        #: (url substring, status, JSON body) answered by the browser itself
        self.fakes: list[tuple[str, int, dict[str, Any]]] = []
        self.dialogs: list[str] = []  #: messages of confirm()/alert() (accepted)
        self.width, self.height = width, height
        target = self.call("Target.createTarget", {"url": "about:blank"}, page=False)
        attached = self.call(
            "Target.attachToTarget",
            {"targetId": target["targetId"], "flatten": True},
            page=False,
        )
        self._session = attached["sessionId"]
        self.call("Page.enable")
        self.call("Runtime.enable")
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    # -- the protocol ------------------------------------------------------------

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, page: bool = True
    ) -> Any:
        """One protocol command; its result (events meanwhile are handled)."""
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if page and self._session is not None:
            msg["sessionId"] = self._session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        want = self._id
        deadline = time.monotonic() + 60
        while want not in self._replies:
            for m in self._messages(deadline):
                if "id" in m:
                    self._replies[m["id"]] = m
                else:
                    self._events.append(m)
            while self._events:  # may call back into the browser: replies
                self._event(self._events.pop(0))  # are kept by id meanwhile
        reply = self._replies.pop(want)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def _messages(self, deadline: float) -> list[dict[str, Any]]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BrowserError("no answer from chromium")
            ready, _, _ = select.select([self._from], [], [], left)
            if ready:
                chunk = os.read(self._from, 1 << 20)
                if not chunk:
                    raise BrowserError("chromium went away")
                self._buf += chunk
        *done, self._buf = self._buf.split(b"\0")
        return [json.loads(m) for m in done]

    def _event(self, msg: dict[str, Any]) -> None:
        method = msg.get("method")
        params = msg.get("params", {})
        if method == "Fetch.requestPaused":
            url = params["request"]["url"]
            for part, status, body in self.fakes:
                if part in url:
                    data = json.dumps(body).encode()
                    self.call(
                        "Fetch.fulfillRequest",
                        {
                            "requestId": params["requestId"],
                            "responseCode": status,
                            "responseHeaders": [
                                {"name": "Content-Type", "value": "application/json"}
                            ],
                            "body": base64.b64encode(data).decode(),
                        },
                    )
                    return
            self.call("Fetch.continueRequest", {"requestId": params["requestId"]})
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params.get("message", ""))
            self.call("Page.handleJavaScriptDialog", {"accept": True})

    # -- what tests use ------------------------------------------------------------

    def fake(self, url_part: str, status: int, body: dict[str, Any]) -> None:
        """Answer requests whose URL holds ``url_part`` with ``status`` and
        ``body`` (before :meth:`open`)."""
        self.fakes.append((url_part, status, body))
        self.call("Fetch.enable", {"patterns": [{"urlPattern": "*"}]})

    def open(self, url: str) -> None:
        """Load ``url`` and wait for its load event."""
        self.call("Page.navigate", {"url": url})
        self.wait("document.readyState === 'complete'")

    def js(self, expression: str) -> Any:
        """Evaluate ``expression`` in the page (promises awaited); its value."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression: str, timeout: float = 15.0) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(BrowserError):  # a page still loading
                value = self.js(expression)
                if value:
                    return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for: {expression}")
            time.sleep(0.1)

    def screenshot(self, path: Path, full_page: bool = False) -> None:
        """Save the page as a PNG."""
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = self.call("Page.getLayoutMetrics")["cssContentSize"]
            params["clip"] = {
                "x": 0,
                "y": 0,
                "width": self.width,
                "height": min(int(size["height"]), 4000),
                "scale": 1,
            }
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", params)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        """Close the browser and remove its profile."""
        with contextlib.suppress(BrowserError, OSError):
            self.call("Browser.close", page=False)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        for fd in (self._to, self._from):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
