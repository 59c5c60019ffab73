"""Slow DNS stalls no one: in a network namespace whose DNS server (written here, with
dnslib) never answers for one zone, a dozen clients asking for names of that zone do not
hold up a client asking for a name of another zone (the system resolver is bounded per
zone and runs on chainer's own pool; see chainer/outbound/resolve.py)."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from dnslib import QTYPE, RR, A, DNSRecord  # type: ignore[import-untyped]
from netns import free_port_in, lone_namespace, netns_popen, netns_socket

pytestmark = [pytest.mark.netns, pytest.mark.slow]

DNS_ADDR = "127.0.0.53"
RESOLV = f"nameserver {DNS_ADDR}\noptions timeout:3 attempts:1\n"


@contextlib.contextmanager
def dns_server(ns: str) -> Iterator[list[str]]:
    """Answers A for names under fast.test with 127.0.0.1; never answers slow.test."""
    sock = netns_socket(ns, socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((DNS_ADDR, 53))
    sock.settimeout(0.2)
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = sock.recvfrom(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            query = DNSRecord.parse(data)
            name = str(query.q.qname).rstrip(".")
            asked.append(name)
            if not name.endswith("fast.test"):
                continue  # the zone whose server never answers
            reply = query.reply()
            if query.q.qtype == QTYPE.A:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A("127.0.0.1"), ttl=5))
            sock.sendto(reply.pack(), peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield asked
    finally:
        stop.set()
        thread.join(2)
        sock.close()


@contextlib.contextmanager
def echo_in(ns: str) -> Iterator[int]:
    listener = netns_socket(ns)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    port: int = listener.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.sendall(conn.recv(100))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def connect_in(ns: str, port: int, target: str) -> socket.socket:
    sock = netns_socket(ns)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    return sock


def test_a_zone_that_never_answers_does_not_stall_other_clients(tmp_path: Path) -> None:
    with lone_namespace(resolv_conf=RESOLV) as ns, dns_server(ns) as asked, echo_in(ns) as echo:
        port = free_port_in(ns, "127.0.0.1")
        table = tmp_path / "routes.yaml"
        table.write_text(
            f"listen: ['127.0.0.1:{port}']\n"
            "defaults: {connect_timeout: 2s, deadline: 10s}\n"
            "routes: [{match: '*', via: direct}]\n"
        )
        netns_popen(
            ns,
            [sys.executable, "-m", "chainer", "serve", "-c", str(table)],
            tmp_path / "chainer.log",
            ready=("127.0.0.1", port),
            name="chainer",
        )
        stuck = [connect_in(ns, port, f"n{i}.slow.test:{echo}") for i in range(12)]
        try:
            with contextlib.suppress(OSError):
                for s in stuck:
                    s.settimeout(0.3)
                    s.recv(1)  # give the slow lookups time to start (they do not answer)
            with connect_in(ns, port, f"www.fast.test:{echo}") as fast:
                answer = fast.recv(4096)
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                fast.sendall(b"ping")
                assert fast.recv(4) == b"ping"
        finally:
            for s in stuck:
                s.close()
        assert any(name.endswith("slow.test") for name in asked)
