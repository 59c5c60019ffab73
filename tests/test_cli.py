"""The real `chainer` executable: validate, serve, signals, exit codes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import free_port
from realproxies import Origin, curl, wait_port

ROOT = Path(__file__).resolve().parent.parent


def chainer_cmd() -> list[str]:
    exe = shutil.which("chainer")
    return [exe] if exe else [sys.executable, "-m", "chainer"]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CHAINER_CONFIG"}
    return subprocess.run(
        [*chainer_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=cwd,
        env=env,
        check=False,
    )


def test_validate_accepts_the_shipped_routes_yaml() -> None:
    done = run("validate", "-c", str(ROOT / "routes.yaml"))
    assert done.returncode == 0, done.stderr
    assert "ok" in done.stdout


def test_validate_names_file_line_and_path_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text(
        "proxies:\n"
        "  corp: http://alice:topsecret@proxy.corp.example:3128\n"
        "chains:\n"
        "  lab: [corp]\n"
        "routes:\n"
        "  - {match: '*.lab.example', via: lab}\n"
        "  - {match: '*', via: bastoin}\n"
        "  - {match: 'x.example', via: direct, colour: blue}\n"
    )
    done = run("validate", "-c", str(bad))
    assert done.returncode == 2
    assert f'{bad}:7: routes[1].via: no chain or proxy named "bastoin"' in done.stderr
    assert f"{bad}:8: routes[2]" in done.stderr
    assert "colour" in done.stderr
    assert "topsecret" not in done.stderr + done.stdout


def test_config_from_environment_and_missing_file(tmp_path: Path) -> None:
    done = run("validate", cwd=tmp_path)
    assert done.returncode == 2
    assert "routes.yaml" in done.stderr


def test_bad_usage_exits_2() -> None:
    assert run("frobnicate").returncode == 2


@pytest.mark.interop
def test_serve_runs_until_sigterm_and_logs_each_connection(
    tmp_path: Path, plain_origin: Origin
) -> None:
    port = free_port()
    config = tmp_path / "routes.yaml"
    config.write_text(f"listen: ['127.0.0.1:{port}']\nroutes:\n  - {{match: '*', via: direct}}\n")
    log_file = tmp_path / "chainer.log"
    proc = subprocess.Popen(
        [*chainer_cmd(), "serve", "-c", str(config), "--log-file", str(log_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert wait_port("127.0.0.1", port, 15), "chainer did not start listening"
        result = curl("-x", f"http://127.0.0.1:{port}", plain_origin.url("/cli"))
        assert (result.returncode, result.body) == (0, b"origin:/cli")
        result = curl("-p", "-x", f"http://127.0.0.1:{port}", plain_origin.url("/tunnel"))
        assert (result.returncode, result.body) == (0, b"origin:/tunnel")
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(10)
    assert code == 0
    deadline = time.monotonic() + 5
    text = ""
    while time.monotonic() < deadline and text.count("chainer.access") < 2:
        text = log_file.read_text()
        time.sleep(0.05)
    lines = [line for line in text.splitlines() if "chainer.access" in line]
    assert len(lines) == 2
    assert f"dest=127.0.0.1:{plain_origin.port}" in lines[0]
    assert "route=routes[0] via=direct" in lines[0]
    assert "outcome=ok" in lines[1]


def test_serve_reports_a_busy_port(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "routes.yaml"
        config.write_text(
            f"listen: ['127.0.0.1:{port}']\nroutes:\n  - {{match: '*', via: direct}}\n"
        )
        done = run("serve", "-c", str(config))
    assert done.returncode == 1
    assert "address already in use" in done.stderr.lower()
    assert "Traceback" not in done.stderr


def test_bare_chainer_prints_help_with_examples_and_exits_2() -> None:
    done = run()
    assert done.returncode == 2
    assert "usage: chainer" in done.stdout
    assert "examples:" in done.stdout
    assert "chainer explain" in done.stdout


def test_version() -> None:
    done = run("--version")
    assert done.returncode == 0
    assert re.fullmatch(r"chainer [0-9][^ ]*\n", done.stdout), done.stdout


def test_a_missing_route_table_says_how_to_name_one(tmp_path: Path) -> None:
    done = run("validate", cwd=tmp_path)
    assert done.returncode == 2
    assert "routes.yaml: cannot read" in done.stderr
    assert "-c FILE" in done.stderr
    assert "$CHAINER_CONFIG" in done.stderr


def test_validate_counts_in_words(tmp_path: Path) -> None:
    one = tmp_path / "one.yaml"
    one.write_text(
        "proxies: {p: 'http://127.0.0.1:3128'}\nchains: {c: [p]}\nroutes: [{match: '*', via: c}]\n"
    )
    done = run("validate", "-c", str(one))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{one}: ok (1 route, 1 proxy, 1 chain)"


@pytest.mark.parametrize("what", ["a listener", "the admin endpoint"])
def test_a_busy_port_is_named_with_what_it_was_for(tmp_path: Path, what: str) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        free = free_port()
        listen, admin = (port, free) if what == "a listener" else (free, port)
        table = tmp_path / "routes.yaml"
        table.write_text(
            f"listen: [127.0.0.1:{listen}]\nadmin: 127.0.0.1:{admin}\n"
            "routes: [{match: '*', via: direct}]\n"
        )
        done = run("serve", "-c", str(table))
    assert done.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port} ({what}): address already in use" in (
        done.stderr
    )


@pytest.mark.parametrize(("choice", "loop"), [("asyncio", "asyncio"), ("uvloop", "uvloop")])
def test_the_event_loop_is_chosen_with_loop(tmp_path: Path, choice: str, loop: str) -> None:
    pytest.importorskip("uvloop")  # in the test extras: present wherever the suite runs
    port = free_port()
    table = tmp_path / "routes.yaml"
    table.write_text(f"listen: ['127.0.0.1:{port}']\nroutes: [{{match: '*', via: direct}}]\n")
    log = tmp_path / "chainer.log"
    proc = subprocess.Popen(
        [*chainer_cmd(), "serve", "-c", str(table), "--loop", choice, "--log-file", str(log)]
    )
    try:
        wait_port("127.0.0.1", port, 10)
        assert f"event loop: {loop}" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
