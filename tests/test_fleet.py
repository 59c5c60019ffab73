"""A fleet: real HAProxy (TCP mode) in front of two `chainer serve` instances, one sent
PROXY protocol v1 and the other v2 (with v2 health checks, which say LOCAL). Clients
connect from different loopback addresses; chainer's access log, `allow:` and
limits.per_client must see those addresses, not HAProxy's."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from everyday import (
    LOOPBACK,
    echo_through,
    free_port,
    log_lines,
    open_tunnel,
    run_echo,
    serve_chainer,
    wait_for,
)
from realproxies import StartProcess, require_binary

pytestmark = [pytest.mark.interop, pytest.mark.slow]


def chainer_table(port: int) -> str:
    return f"""\
listen:
  - address: {LOOPBACK}:{port}
    proxy_protocol: true
    proxy_protocol_from: [127.0.0.1/32]   # HAProxy connects from here
    allow: [127.0.0.2/32, 127.0.0.3/32]   # the real clients let in
limits: {{per_client: 1}}
routes:
  - {{match: "*", via: direct}}
"""


def haproxy_config(fleet: int, first: int, c1: int, c2: int) -> str:
    return f"""\
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fleet
    bind {LOOPBACK}:{fleet}
    default_backend chainers
frontend first
    bind {LOOPBACK}:{first}
    default_backend first_only
backend chainers
    balance roundrobin
    server c1 {LOOPBACK}:{c1} send-proxy
    server c2 {LOOPBACK}:{c2} send-proxy-v2 check check-send-proxy inter 500ms
backend first_only
    server c1 {LOOPBACK}:{c1} send-proxy
"""


def test_haproxy_in_front_keeps_the_real_client_addresses(
    tmp_path: Path, spawn_process: StartProcess
) -> None:
    haproxy = require_binary("haproxy")
    c1, c2, fleet, first = free_port(), free_port(), free_port(), free_port()
    logs = [tmp_path / "c1.log", tmp_path / "c2.log"]
    with run_echo() as echo:
        target = f"{LOOPBACK}:{echo}"
        instances = []
        for port, log in zip((c1, c2), logs, strict=True):
            config = tmp_path / f"{log.stem}.yaml"
            config.write_text(chainer_table(port))
            instances.append(serve_chainer(config, log, port, "--log-level", "debug"))
        try:
            cfg = tmp_path / "haproxy.cfg"
            cfg.write_text(haproxy_config(fleet, first, c1, c2))
            spawn_process([haproxy, "-f", str(cfg), "-db"], fleet, tmp_path / "haproxy.out")

            # 1. Round robin over both instances, from 127.0.0.2: each instance logs the
            #    client's own address and port.
            used: list[int] = []
            for i in range(4):
                # per_client is 1 and the previous tunnel's end reaches chainer a moment
                # after this side closed it: a 503 "from your address" may be that race.
                for _ in range(50):
                    sock, head = open_tunnel(fleet, target, source="127.0.0.2")
                    if sock is not None or b"from your address" not in head:
                        break
                    time.sleep(0.05)
                assert sock is not None, head
                with sock:
                    used.append(sock.getsockname()[1])
                    assert echo_through(sock, b"hello %d" % i) == b"hello %d" % i
            for port in used:
                needle = f"client=127.0.0.2:{port} "
                found = lambda n=needle: sum(len(log_lines(log, n)) for log in logs) == 1  # noqa: E731
                assert wait_for(found, 10), f"{needle} not logged exactly once"
            assert all(log_lines(log, "client=127.0.0.2:") for log in logs), "one instance idle"

            # 2. allow: judges the real client: 127.0.0.4 is not in it.
            sock, head = open_tunnel(fleet, target, source="127.0.0.4")
            assert sock is None
            # (HAProxy's readiness probe, from 127.0.0.1, was refused the same way.)
            assert wait_for(lambda: any(log_lines(x, "client=127.0.0.4:") for x in logs), 10)
            lines = [line for log in logs for line in log_lines(log, "client=127.0.0.4:")]
            assert len(lines) == 1
            assert "outcome=denied" in lines[0]

            # 3. limits.per_client (1) counts real clients, not HAProxy's one address.
            held, head = open_tunnel(first, target, source="127.0.0.2")
            assert held is not None, head
            with held:
                assert echo_through(held, b"held") == b"held"
                again, head = open_tunnel(first, target, source="127.0.0.2")
                assert again is None
                assert head.startswith(b"HTTP/1.1 503 "), head
                other, head = open_tunnel(first, target, source="127.0.0.3")
                assert other is not None, head
                with other:
                    assert echo_through(other, b"other") == b"other"

            # 4. Straight to an instance, without HAProxy's header: closed, unanswered.
            with socket.create_connection((LOOPBACK, c1), timeout=5) as raw:
                raw.sendall(f"CONNECT {target} HTTP/1.1\r\n\r\n".encode())
                try:
                    answer = raw.recv(100)
                except ConnectionResetError:  # closed with our request unread
                    answer = b""
                assert answer == b""
            assert wait_for(lambda: bool(log_lines(logs[0], "sent no valid PROXY header")), 10)

            # HAProxy's health checks (v2 LOCAL, closed with a reset) are no strangers.
            assert not any(log_lines(log, "not in proxy_protocol_from") for log in logs)
        finally:
            for proc in instances:
                proc.stop()
