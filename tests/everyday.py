"""Helpers of the everyday-use tests (run, PAC, the admin page, fleets): a threaded echo
origin, `chainer serve` as a child process, raw CONNECT tunnels from a chosen loopback
source address, and waiting (bounded) for a line in a log file."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from realproxies import ManagedProcess, free_port, start_process

LOOPBACK = "127.0.0.1"


def chainer_cmd() -> list[str]:
    exe = shutil.which("chainer")
    return [exe] if exe else [sys.executable, "-m", "chainer"]


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(30)
        with contextlib.suppress(OSError):
            while data := self.request.recv(65536):
                self.request.sendall(data)


class _EchoServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


@contextlib.contextmanager
def run_echo() -> Iterator[int]:
    """An echo origin on 127.0.0.1 in a thread; yields its port."""
    server = _EchoServer((LOOPBACK, 0), _Echo)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


class _GitHandler(BaseHTTPRequestHandler):
    """git's smart HTTP protocol: each request runs `git http-backend` as a CGI."""

    protocol_version = "HTTP/1.0"
    root = ""
    timeout = 20

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi(b"")

    def do_POST(self) -> None:
        self._cgi(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def _cgi(self, body: bytes) -> None:
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "REMOTE_ADDR": self.client_address[0],
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=20
        )
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.split(b"\r\n"):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def make_repo(root: Path) -> str:
    """A bare repository `root/repo.git` with one commit on `main`; its commit id."""
    work = root / "work"
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(root)}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True, env=env)
    (work / "README").write_text("hello\n")
    subprocess.run([*git, "-C", str(work), "add", "README"], check=True, env=env)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "one"], check=True, env=env)
    subprocess.run(
        [*git, "clone", "-q", "--bare", str(work), str(root / "repo.git")], check=True, env=env
    )
    head = subprocess.run(
        ["git", "-C", str(work), "rev-parse", "HEAD"], check=True, env=env, capture_output=True
    )
    return head.stdout.decode().strip()


@contextlib.contextmanager
def run_git_http(root: Path) -> Iterator[int]:
    """A smart-HTTP git origin for the repositories under `root`; yields its port."""
    handler = type("GitHandler", (_GitHandler,), {"root": str(root)})
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.daemon = True
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def serve_chainer(config: Path, log: Path, port: int, *extra: str) -> ManagedProcess:
    """`chainer serve -c config --log-file log`, ready once `port` accepts."""
    return start_process(
        [*chainer_cmd(), "serve", "-c", str(config), "--log-file", str(log), *extra],
        port,
        log.with_suffix(".out"),
        20.0,
        name="chainer",
    )


def open_tunnel(
    port: int, target: str, *, source: str = LOOPBACK, timeout: float = 5.0
) -> tuple[socket.socket | None, bytes]:
    """CONNECT `target` through the proxy at 127.0.0.1:`port` from `source`; (the socket
    when the answer is 200, else None; the answer's head)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout, source_address=(source, 0))
    try:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in head and time.monotonic() < deadline:
            data = sock.recv(4096)
            if not data:
                break
            head += data
    except OSError:
        sock.close()
        return None, b""
    if head.startswith(b"HTTP/1.1 200 "):
        return sock, head
    sock.close()
    return None, head


def echo_through(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        data = sock.recv(65536)
        if not data:
            break
        got += data
    return got


def wait_for(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.05
) -> bool:  # bounded in time and count
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        if predicate():
            return True
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    return predicate()


def log_lines(path: Path, needle: str) -> list[str]:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if needle in line]


__all__ = [
    "LOOPBACK",
    "chainer_cmd",
    "echo_through",
    "free_port",
    "log_lines",
    "make_repo",
    "open_tunnel",
    "run_echo",
    "run_git_http",
    "serve_chainer",
    "wait_for",
]
