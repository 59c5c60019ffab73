"""Running it for real: the `chainer serve` executable reloading on SIGHUP and on file
changes, shutting down gracefully, and logging text or JSON with connection ids."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import free_port
from realproxies import wait_port
from test_cli import chainer_cmd


class EchoServer:
    """A threaded TCP echo server on loopback."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


class Chainer:
    def __init__(self, config: Path, port: int, log: Path, *extra: str) -> None:
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(
            [*chainer_cmd(), "serve", "-c", str(config), "--log-file", str(log), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert wait_port("127.0.0.1", port, 15), "chainer did not start"

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait_log(self, text: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        content = ""
        while time.monotonic() < deadline:
            content = self.log.read_text() if self.log.exists() else ""
            if text in content:
                return content
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged; log:\n{content[-2000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode


def tunnel(port: int, target_port: int, host: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    """Open a CONNECT tunnel; return the socket and chainer's answer head."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(f"CONNECT {host}:{target_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            break
        head += chunk
    return s, head


def table(port: int, routes: str, extra: str = "") -> str:
    return f"listen: ['127.0.0.1:{port}']\n{extra}routes:\n{routes}"


@pytest.fixture
def run(tmp_path: Path) -> Iterator[list[Chainer]]:
    started: list[Chainer] = []
    yield started
    for c in started:
        c.stop()


def start(run: list[Chainer], tmp_path: Path, text: str, *extra: str) -> tuple[Chainer, Path]:
    config = tmp_path / "routes.yaml"
    config.write_text(text)
    port = int(text.split("127.0.0.1:")[1].split("'")[0])
    c = Chainer(config, port, tmp_path / "chainer.log", *extra)
    run.append(c)
    return c, config


def test_sighup_reload_changes_new_connections_and_keeps_live_tunnels(
    tmp_path: Path, echo: EchoServer, run: list[Chainer]
) -> None:
    port = free_port()
    c, config = start(run, tmp_path, table(port, "  - {match: '*', via: direct}\n"))
    live, head = tunnel(port, echo.port)
    assert head.startswith(b"HTTP/1.1 200 ")
    config.write_text(table(port, "  - {match: '*', via: reject}\n"))
    c.signal(signal.SIGHUP)
    c.wait_log("reloaded")
    refused, head = tunnel(port, echo.port)
    refused.close()
    assert head.startswith(b"HTTP/1.1 403 ")
    live.sendall(b"still here")  # the tunnel opened before the reload keeps running
    assert live.recv(100) == b"still here"
    live.close()


def test_a_bad_file_is_reported_and_the_running_table_stays(
    tmp_path: Path, echo: EchoServer, run: list[Chainer]
) -> None:
    port = free_port()
    c, config = start(run, tmp_path, table(port, "  - {match: '*', via: direct}\n"))
    config.write_text(table(port, "  - {match: '*', via: nowhere}\n"))
    c.signal(signal.SIGHUP)
    log = c.wait_log("reload refused")
    assert f'{config}:3: routes[0].via: no chain or proxy named "nowhere"' in log
    s, head = tunnel(port, echo.port)
    s.close()
    assert head.startswith(b"HTTP/1.1 200 ")


def test_watch_reloads_when_the_file_changes(
    tmp_path: Path, echo: EchoServer, run: list[Chainer]
) -> None:
    port = free_port()
    c, config = start(run, tmp_path, table(port, "  - {match: '*', via: direct}\n"), "--watch")
    config.write_text(table(port, "  - {match: '*', via: reject}\n"))
    c.wait_log("changed: reloading")
    c.wait_log("reloaded")
    s, head = tunnel(port, echo.port)
    s.close()
    assert head.startswith(b"HTTP/1.1 403 ")


def test_sigterm_stops_accepting_and_lets_live_tunnels_finish(
    tmp_path: Path, echo: EchoServer, run: list[Chainer]
) -> None:
    port = free_port()
    c, _ = start(run, tmp_path, table(port, "  - {match: '*', via: direct}\n"), "--grace", "20s")
    live, head = tunnel(port, echo.port)
    assert head.startswith(b"HTTP/1.1 200 ")
    c.signal(signal.SIGTERM)
    c.wait_log("stopped accepting; 1 connection open")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    live.sendall(b"after sigterm")
    assert live.recv(100) == b"after sigterm"
    assert c.proc.poll() is None  # waiting for the tunnel
    live.close()
    assert c.proc.wait(10) == 0


def test_grace_period_ends_with_the_tunnels_closed(
    tmp_path: Path, echo: EchoServer, run: list[Chainer]
) -> None:
    port = free_port()
    c, _ = start(run, tmp_path, table(port, "  - {match: '*', via: direct}\n"), "--grace", "300ms")
    live, _ = tunnel(port, echo.port)
    started = time.monotonic()
    c.signal(signal.SIGTERM)
    assert c.proc.wait(10) == 0
    assert time.monotonic() - started < 5
    live.settimeout(5)
    assert live.recv(100) == b""  # closed by chainer
    live.close()
    c.wait_log("grace period over: closing 1 connection")


def test_json_logs_carry_the_connection_id_on_every_line(
    tmp_path: Path, echo: EchoServer, run: list[Chainer]
) -> None:
    port = free_port()
    gone = free_port()
    text = table(
        port,
        "  - {match: 'a.test', via: [gone]}\n  - {match: '*', via: direct}\n",
        f"proxies:\n  gone: http://127.0.0.1:{gone}\n",
    )
    c, _ = start(run, tmp_path, text, "--log-format", "json")
    s, _ = tunnel(port, echo.port)
    s.close()
    s, head = tunnel(port, 443, host="a.test")
    s.close()
    assert head.startswith(b"HTTP/1.1 502 ")
    c.wait_log('"outcome":"failed"')
    c.wait_log('"outcome":"ok"')
    lines = [json.loads(line) for line in c.log.read_text().splitlines()]
    access = {e["outcome"]: e for e in lines if e["logger"] == "chainer.access"}
    assert access["ok"]["dest"] == f"127.0.0.1:{echo.port}"
    assert access["failed"]["dest"] == "a.test:443"
    assert access["failed"]["hops"] == []
    breaker = next(e for e in lines if "circuit open" in e.get("message", ""))
    assert breaker["conn"] == access["failed"]["conn"]  # the breaker line names its connection
    assert access["ok"]["conn"] != access["failed"]["conn"]


def test_text_logs_carry_the_connection_id(
    tmp_path: Path, echo: EchoServer, run: list[Chainer]
) -> None:
    port = free_port()
    c, _ = start(run, tmp_path, table(port, "  - {match: '*', via: direct}\n"))
    s, _ = tunnel(port, echo.port)
    s.close()
    log = c.wait_log("outcome=ok")
    line = next(line for line in log.splitlines() if "chainer.access" in line)
    assert re.search(r" chainer\.access conn=\d+ client=127\.0\.0\.1:\d+ dest=", line), line


def test_signals_are_not_needed_for_a_clean_exit_code(tmp_path: Path, run: list[Chainer]) -> None:
    port = free_port()
    c, _ = start(run, tmp_path, table(port, "  - {match: '*', via: direct}\n"))
    c.signal(signal.SIGINT)
    assert c.proc.wait(10) == 0
    assert os.path.exists(c.log)


def test_reload_keeps_health_of_unchanged_hops_only(tmp_path: Path) -> None:
    from chainer.config import parse_config
    from chainer.router import Router
    from chainer.server.server import Server

    def table_with(b_port: int) -> str:
        return (
            "proxies:\n  a: http://127.0.0.1:3128\n"
            f"  b: http://127.0.0.1:{b_port}\n  c: http://127.0.0.1:3130\n"
            "routes:\n  - {match: '*', via: [[a, b, c]]}\n"
        )

    server = Server(Router(parse_config(table_with(3129), "routes.yaml")))
    health = server.router.dialer.health
    old = {p.name: p for p in server.router.config.proxies}
    for name in ("a", "b"):
        health.record_failure("", old[name], "down", denied=False)
    server.reload(parse_config(table_with(4000), "routes.yaml"))  # b moved
    new = {p.name: p for p in server.router.config.proxies}
    assert server.router.dialer.health is health
    assert health.state("", new["a"]) == "open"  # unchanged: its circuit stays open
    assert health.state("", new["b"]) == "closed"  # changed: starts afresh
    assert server.metrics.reloads.labels("ok")._value.get() == 1


def test_running_out_of_file_descriptors_backs_off_instead_of_dying(
    tmp_path: Path, echo: EchoServer
) -> None:
    """With RLIMIT_NOFILE at 64, 80 idle clients exhaust chainer's descriptors; accept()
    fails with EMFILE; chainer must log, back off, and serve again once they leave."""
    import resource

    port = free_port()
    config = tmp_path / "routes.yaml"
    config.write_text(table(port, "  - {match: '*', via: direct}\n"))
    log = tmp_path / "chainer.log"

    def low_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    proc = subprocess.Popen(
        [*chainer_cmd(), "serve", "-c", str(config), "--log-file", str(log)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=low_limit,
    )
    held: list[socket.socket] = []
    try:
        assert wait_port("127.0.0.1", port, 15)
        for _ in range(80):
            held.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        deadline = time.monotonic() + 5
        while "accept failed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "accept failed" in log.read_text()
        assert proc.poll() is None
        for s in held:
            s.close()
        held.clear()
        time.sleep(0.5)
        s, head = tunnel(port, echo.port)
        s.sendall(b"alive")
        assert s.recv(100) == b"alive"
        s.close()
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        for s in held:
            s.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def test_reload_warns_about_listeners_only_while_they_differ_from_the_running_ones(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from chainer.config import parse_config
    from chainer.router import Router
    from chainer.server import Server

    routes = "routes: [{match: '*', via: direct}]\n"
    running = parse_config(f"listen: [127.0.0.1:8080]\n{routes}", "routes.yaml")
    moved = parse_config(f"listen: [127.0.0.1:9999]\n{routes}", "routes.yaml")
    same_lower = parse_config(f"# a comment\n\nlisten: [127.0.0.1:8080]\n{routes}", "routes.yaml")
    server = Server(Router(running))
    warned = []
    for config in (moved, running, same_lower, moved):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="chainer"):
            server.reload(config)
        warned.append("listener changes" in caplog.text)
    assert warned == [True, False, False, True]


@pytest.mark.anyio
async def test_a_reload_is_parsed_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a (slow) table is parsed, the event loop goes on: live tunnels do not wait."""
    import anyio

    from chainer.config import load_config
    from chainer.router import Router
    from chainer.server import Server, run

    path = tmp_path / "routes.yaml"
    path.write_text("routes: [{match: '*', via: direct}]\n")
    server = Server(Router(load_config(path)))
    parsed_in: list[threading.Thread] = []

    def slow_load(p: str) -> object:
        parsed_in.append(threading.current_thread())
        time.sleep(0.5)  # a big table
        return load_config(p)

    monkeypatch.setattr(run, "load_config", slow_load)
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await anyio.sleep(0.01)
            ticks += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        assert await run.reload(server, str(path))
        tg.cancel_scope.cancel()
    assert parsed_in
    assert parsed_in[0] is not threading.main_thread()
    assert ticks >= 10  # the loop ran on while the file was parsed
