"""Operators' commands through the real executable, against a running instance:
explain (and --live), check, the admin endpoint, demo."""

from __future__ import annotations

import json
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fakes import free_port
from realproxies import Endpoint, Origin
from test_cli import chainer_cmd, run
from test_ops import Chainer, EchoServer, tunnel


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def fetch(url: str) -> tuple[int, str]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


LAB = """\
listen: ['127.0.0.1:{port}']
admin: 127.0.0.1:{admin}
proxies:
  corp: http://alice:topsecret@127.0.0.1:{gone}
  bastion: {{url: "socks5h://127.0.0.1:1080", connect_timeout: 2s}}
chains:
  lab: [corp, [bastion]]
routes:
  - {{match: "*.lab.example", via: lab}}
  - {{match: "*", via: direct}}
"""


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[Chainer, Path, int]]:
    port, admin, gone = free_port(), free_port(), free_port()
    config = tmp_path / "routes.yaml"
    config.write_text(LAB.format(port=port, admin=admin, gone=gone))
    c = Chainer(config, port, tmp_path / "chainer.log")
    yield c, config, admin
    c.stop()


@pytest.mark.slow  # three fresh interpreters
def test_explain_names_rule_chain_hops_and_where_names_resolve(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(LAB.format(port=8080, admin=9090, gone=3128))
    done = run("explain", "db.lab.example:5432", "-c", str(config))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "routes[0]" in out
    assert f"{config}:9" in out
    assert "corp" in out
    assert "bastion" in out
    assert "by the last hop (bastion)" in out
    assert "topsecret" not in out
    done = run("explain", "example.com", "-c", str(config), "--json")
    data = json.loads(done.stdout)
    assert data["route"]["label"] == "routes[1]"
    assert data["destination"]["port_assumed"] is True
    assert run("explain", "bad host", "-c", str(config)).returncode == 2


def test_explain_live_shows_an_open_circuit(lab: tuple[Chainer, Path, int]) -> None:
    c, config, _admin = lab
    s, head = tunnel(c.port, 22, host="db.lab.example")  # corp refuses: its circuit opens
    s.close()
    assert head.startswith(b"HTTP/1.1 502 ")
    done = run("explain", "db.lab.example:22", "-c", str(config), "--live")
    assert done.returncode == 0, done.stderr
    assert "open" in done.stdout


def test_admin_endpoint_on_a_running_instance(
    lab: tuple[Chainer, Path, int], echo: EchoServer
) -> None:
    c, _config, admin = lab
    s, _head = tunnel(c.port, echo.port)
    s.sendall(b"x" * 1000)
    assert s.recv(2000)
    s.close()
    s, _ = tunnel(c.port, 22, host="db.lab.example")
    s.close()
    c.wait_log("outcome=failed")
    status, body = fetch(f"http://127.0.0.1:{admin}/healthz")
    assert (status, body) == (200, "ok\n")
    status, metrics = fetch(f"http://127.0.0.1:{admin}/metrics")
    assert status == 200
    assert 'chainer_connections_total{outcome="failed",route="routes[0]"} 1.0' in metrics
    assert 'chainer_hop_failures_total{hop="corp",phase="connect",reason="connection_refused"}' in (
        metrics
    )
    assert 'chainer_breaker_state{from="-",hop="corp"} 2.0' in metrics
    assert "chainer_active_tunnels 0.0" in metrics
    status, routes = fetch(f"http://127.0.0.1:{admin}/routes")
    assert "topsecret" not in routes
    assert json.loads(routes)["routes"][0]["via"]["label"] == "lab"
    hops = json.loads(fetch(f"http://127.0.0.1:{admin}/hops")[1])
    assert {"from": "-", "hop": "corp", "state": "open"}.items() <= hops["edges"][0].items()
    # a reload is counted
    c.signal(signal.SIGHUP)
    c.wait_log("reloaded")
    assert 'chainer_reloads_total{result="ok"} 1.0' in fetch(f"http://127.0.0.1:{admin}/metrics")[1]


def test_healthz_says_draining_after_sigterm(
    lab: tuple[Chainer, Path, int], echo: EchoServer
) -> None:
    c, _config, admin = lab
    live, _ = tunnel(c.port, echo.port)
    c.signal(signal.SIGTERM)
    c.wait_log("stopped accepting")
    assert fetch(f"http://127.0.0.1:{admin}/healthz") == (503, "draining\n")
    live.close()
    assert c.proc.wait(10) == 0


@pytest.mark.interop
@pytest.mark.slow
def test_check_probes_each_hop_through_the_ones_before(
    tmp_path: Path, tinyproxy: Endpoint, squid: Endpoint, tls_origin: Origin
) -> None:
    gone = free_port()
    config = tmp_path / "routes.yaml"
    config.write_text(
        "proxies:\n"
        f"  tiny: http://{tinyproxy.hostport}\n"
        f"  gone: http://127.0.0.1:{gone}\n"
        f"  squid: http://{squid.hostport}\n"
        "chains:\n"
        "  good: [tiny, [gone, squid]]\n"
        "  broken: [gone]\n"
        "routes:\n  - {match: '*', via: good}\n"
    )
    target = f"127.0.0.1:{tls_origin.port}"
    done = run("check", "good", "-c", str(config), "--target", target)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = done.stdout.splitlines()
    assert any("tiny" in r and "ok" in r for r in rows)
    assert any("gone" in r and "failed" in r for r in rows)
    assert any("squid" in r and "ok" in r for r in rows)
    done = run("check", "good", "-c", str(config), "--target", target, "--json")
    assert json.loads(done.stdout)
    done = run("check", "broken", "-c", str(config))
    assert done.returncode == 1
    assert run("check", "nosuchchain", "-c", str(config)).returncode == 2


@pytest.mark.slow
def test_demo_works_from_the_executable() -> None:
    done = subprocess.run(
        [*chainer_cmd(), "demo"], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Demo OK" in done.stdout
