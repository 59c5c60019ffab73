"""Headless Chromium driven over the DevTools protocol, through a pipe (no WebSocket).

``--remote-debugging-pipe`` makes Chromium read commands from its fd 3 and write
answers and events to its fd 4, each message JSON ended by a NUL byte. ``Browser``
starts Debian's ``chromium`` that way, with a fresh profile in a temporary directory,
and offers the few calls the tests need: open a page, evaluate JavaScript, take a
screenshot. Every wait is bounded; the browser is stopped by PID.
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
from typing import Any

from realproxies import child_env, require_binary

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--window-size=1400,1000",
    # Chromium's own resolver answers nothing: no test may make it look a name up (its
    # background requests would), and names given to a proxy stay with the proxy.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-pings",
)


class CDPError(RuntimeError):
    pass


class Browser:
    """One headless Chromium; use as a context manager."""

    def __init__(self, *extra_flags: str) -> None:
        self.exe = require_binary("chromium")
        self.profile = tempfile.mkdtemp(prefix="chainer-chromium-")
        self.extra = extra_flags
        self._ids = 0
        self._buffer = b""
        self.events: list[dict[str, Any]] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Browser:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        # Chromium's ends move above fd 4 first: were one of them 3 or 4 already, the
        # shell's redirections below could overwrite it before using it.
        to_chrome_r, from_chrome_w = (_above_4(fd) for fd in (to_chrome_r, from_chrome_w))
        # bash (dash takes one-digit fds only) puts the pipe ends at fds 3 and 4, where
        # Chromium looks for them.
        script = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        argv = [
            shutil.which("bash") or "/bin/bash",
            "-c",
            script,
            self.exe,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={self.profile}",
            "--remote-debugging-pipe",
            *self.extra,
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            argv,
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=child_env(),
            start_new_session=True,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(CDPError, OSError):
                self.call("Browser.close", timeout=5)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for fd in (self._to_chrome, self._from_chrome):
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    # -- the protocol --------------------------------------------------------------

    def call(
        self, method: str, params: dict[str, Any] | None = None, *, session: str | None = None,
        timeout: float = 20.0,
    ) -> dict[str, Any]:  # fmt: skip
        self._ids += 1
        message: dict[str, Any] = {"id": self._ids, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._ids:
                if "error" in reply:
                    raise CDPError(f"{method}: {reply['error']}")
                result: dict[str, Any] = reply.get("result", {})
                return result
            self.events.append(reply)

    def _next(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError("no answer from chromium in time")
            ready, _, _ = select.select([self._from_chrome], [], [], left)
            if not ready:
                continue
            data = os.read(self._from_chrome, 1 << 20)
            if not data:
                raise CDPError("chromium closed the pipe")
            self._buffer += data
        raw, _, self._buffer = self._buffer.partition(b"\0")
        message: dict[str, Any] = json.loads(raw)
        return message

    # -- what the tests use ----------------------------------------------------------

    def open(self, url: str, timeout: float = 20.0) -> str:
        """A new tab at `url` (after its load event); its session id."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})
        sid: str = session["sessionId"]
        self.call("Page.enable", session=sid)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=sid)
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._next(deadline))
        return sid

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise CDPError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, session: str, expression: str, timeout: float) -> Any:
        """Evaluate until truthy (bounded); the last value."""
        deadline = time.monotonic() + timeout
        value = None
        for _ in range(int(timeout / 0.05) + 2):
            value = self.evaluate(session, expression)
            if value or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return value

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.call(
            "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
            session=session,
        )["data"]  # fmt: skip
        path.write_bytes(base64.b64decode(data))
        return path


def _above_4(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


def run_chromium(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run (``--dump-dom``, ``--screenshot``) with a fresh profile."""
    exe = require_binary("chromium")
    with tempfile.TemporaryDirectory(prefix="chainer-chromium-") as profile:
        return subprocess.run(
            [exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
            stdin=subprocess.DEVNULL,
            check=False,
        )
