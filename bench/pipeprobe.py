"""Which real hops take pipelined bytes: a raw-socket probe (issue 18).

    python bench/pipeprobe.py [--json out.json]

How this works. The real peers run on loopback (squid, tinyproxy, dante, microsocks and
pproxy, each configured to refuse CONNECTs to one port, where it can), beside two
recording TCP servers in this process: `echo` (allowed; counts its connections and
echoes what it gets) and `forbidden` (the refused port). Each case opens a fresh
connection to one peer, writes bytes in one `sendall` as a pipelining client would, and
reads with a short timeout:

  relay       the request for `echo` and 5 bytes of tunnel data in one write: does the
              data come back through the tunnel, or is it dropped?
  early       SOCKS5: the greeting, the request and the data in one write (no auth offered)
  refused     the request for `forbidden`, then (in the same write) a request for
              `echo`, as the next hop's request would follow: after the refusal, did the
              peer act on those bytes (did `echo` get a connection)? HTTP with and
              without `Connection: close` on the refused CONNECT.

What a chain may pipeline follows from it: a hop that relays what follows its request
can be sent the next hop's request behind its own; a refusal must end the exchange
without the peer reading on (`Connection: close` on every pipelined CONNECT).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import socketserver
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import peers
from procs import Lab, ensure_pproxy, wait_listening

LOOPBACK = "127.0.0.1"
ALLOW = "127.0.0.0/8"
READ_TIMEOUT = 2.0
DATA = b"ping\n"


class Recorder:
    """A TCP server in a thread: counts connections; echoes when `echo`."""

    def __init__(self, echo: bool) -> None:
        self.count = 0
        lock = threading.Lock()
        recorder = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                with lock:
                    recorder.count += 1
                self.request.settimeout(5)
                with contextlib.suppress(OSError):
                    while echo and (data := self.request.recv(4096)):
                        self.request.sendall(data)

        socketserver.ThreadingTCPServer.allow_reuse_address = True
        self.server = socketserver.ThreadingTCPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def connect_head(port: int, close: bool) -> bytes:
    head = f"CONNECT {LOOPBACK}:{port} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\n"
    return (head + ("Connection: close\r\n" if close else "") + "\r\n").encode()


def socks5_request(port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton(LOOPBACK) + port.to_bytes(2, "big")


def socks4_request(port: int) -> bytes:
    return b"\x04\x01" + port.to_bytes(2, "big") + socket.inet_aton(LOOPBACK) + b"\x00"


def read_all(
    sock: socket.socket, want: int = 4096, timeout: float = READ_TIMEOUT
) -> tuple[bytes, bool]:
    """What the peer sends within `timeout` (stopping once `want` bytes came); and
    whether it closed."""
    sock.settimeout(0.2)
    got = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(got) < want:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except OSError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def http_status(data: bytes) -> str:
    line = data.split(b"\r\n", 1)[0]
    parts = line.split(b" ")
    return parts[1].decode() if len(parts) > 1 and line.startswith(b"HTTP/") else "none"


def case_http_relay(port: int, echo: Recorder) -> str:
    with socket.create_connection((LOOPBACK, port), 3) as sock:
        sock.sendall(connect_head(echo.port, close=True) + DATA)
        got, closed = read_all(sock, timeout=READ_TIMEOUT)
    status = http_status(got)
    if status != "200":
        return f"answered {status}"
    body = got.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in got else b""
    return "relayed" if body == DATA else f"dropped (got {body!r}{', closed' if closed else ''})"


def case_http_refused(port: int, forbidden: Recorder, echo: Recorder, close: bool) -> str:
    before = echo.count
    with socket.create_connection((LOOPBACK, port), 3) as sock:
        sock.sendall(connect_head(forbidden.port, close) + connect_head(echo.port, True) + DATA)
        got, closed = read_all(sock, timeout=READ_TIMEOUT)
    time.sleep(0.2)
    acted = echo.count - before
    statuses = [http_status(b"HTTP/" + part) for part in got.split(b"HTTP/")[1:]]
    verdict = "ACTED ON the next request" if acted else "did not act on it"
    return f"{'/'.join(statuses) or 'none'}, {'closed' if closed else 'open'}, {verdict}"


def case_socks5_relay(port: int, echo: Recorder, early: bool) -> str:
    with socket.create_connection((LOOPBACK, port), 3) as sock:
        if early:
            sock.sendall(b"\x05\x01\x00" + socks5_request(echo.port) + DATA)
            got, closed = read_all(sock, want=2 + 10 + len(DATA))
            method, rest = got[:2], got[2:]
        else:
            sock.sendall(b"\x05\x01\x00")
            method, closed = read_all(sock, want=2)
            if method != b"\x05\x00":
                return f"method reply {method!r}"
            sock.sendall(socks5_request(echo.port) + DATA)
            rest, closed = read_all(sock, want=10 + len(DATA))
    if method != b"\x05\x00":
        return f"method reply {method!r}{', closed' if closed else ''}"
    if len(rest) < 10 or rest[1] != 0:
        return f"no CONNECT reply ({rest!r}{', closed' if closed else ', silent'})"
    return "relayed" if rest[10:] == DATA else f"dropped (got {rest[10:]!r})"


def case_socks5_refused(port: int, forbidden: Recorder, echo: Recorder) -> str:
    before = echo.count
    with socket.create_connection((LOOPBACK, port), 3) as sock:
        sock.sendall(b"\x05\x01\x00")
        read_all(sock, want=2)  # (the method reply)
        # what would follow for the next hop: its greeting and request
        sock.sendall(socks5_request(forbidden.port) + b"\x05\x01\x00" + socks5_request(echo.port))
        got, closed = read_all(sock)
    time.sleep(0.2)
    acted = echo.count - before
    rep = f"REP {got[1]:#04x}" if len(got) >= 2 else "no reply"
    verdict = "ACTED ON the next request" if acted else "did not act on it"
    return f"{rep}, {'closed' if closed else 'open'}, {verdict}"


def case_socks4_relay(port: int, echo: Recorder) -> str:
    with socket.create_connection((LOOPBACK, port), 3) as sock:
        sock.sendall(socks4_request(echo.port) + DATA)
        got, closed = read_all(sock, want=8 + len(DATA))
    if len(got) < 8 or got[1] != 90:
        return f"no grant ({got[:8]!r}{', closed' if closed else ''})"
    return "relayed" if got[8:] == DATA else f"dropped (got {got[8:]!r})"


def case_socks4_refused(port: int, forbidden: Recorder, echo: Recorder) -> str:
    before = echo.count
    with socket.create_connection((LOOPBACK, port), 3) as sock:
        sock.sendall(socks4_request(forbidden.port) + socks4_request(echo.port))
        got, closed = read_all(sock)
    time.sleep(0.2)
    acted = echo.count - before
    code = f"CD {got[1]}" if len(got) >= 2 else "no reply"
    verdict = "ACTED ON the next request" if acted else "did not act on it"
    return f"{code}, {'closed' if closed else 'open'}, {verdict}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "chainer-bench")
    args = parser.parse_args()
    lacking = [m for m in peers.missing() if m not in ("proxychains4", "curl", "openssl")]
    if lacking:
        print(f"missing: {', '.join(lacking)} ({peers.APT})", file=sys.stderr)
        return 2
    echo, forbidden = Recorder(echo=True), Recorder(echo=False)
    results: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="chainer-probe-", dir="/dev/shm") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        lab = Lab(workdir, nofile=4096)
        try:
            ports = {"squid": 0, "tinyproxy": 0, "dante": 0, "microsocks": 0, "pproxy": 0}
            for name in ports:
                with socket.socket() as s:
                    s.bind((LOOPBACK, 0))
                    ports[name] = s.getsockname()[1]
            argvs = {
                "squid": peers.squid(LOOPBACK, ports["squid"], workdir, ALLOW, (forbidden.port,)),
                # ConnectPort: every port but the forbidden one is refused by tinyproxy
                # too, so it may CONNECT to echo only.
                "tinyproxy": peers.tinyproxy(
                    LOOPBACK, ports["tinyproxy"], workdir, ALLOW, (echo.port,)
                ),
                "dante": peers.dante(
                    LOOPBACK, ports["dante"], [LOOPBACK], workdir, ALLOW, forbidden.port
                ),
                "microsocks": peers.microsocks(LOOPBACK, ports["microsocks"]),
            }
            pproxy, note = ensure_pproxy(args.cache_dir, lambda t: print(t, file=sys.stderr))
            if pproxy is not None:
                argvs["pproxy"] = [str(pproxy), "-l", f"http://{LOOPBACK}:{ports['pproxy']}"]
            for name, argv in argvs.items():
                proc = lab.spawn(name, argv)
                wait_listening(ports[name], proc, 30)
            cases: list[tuple[str, str, Callable[[], str]]] = []
            for name in ("squid", "tinyproxy", "pproxy"):
                if name not in argvs:
                    continue
                p = ports[name]
                cases.append((name, "relay", partial(case_http_relay, p, echo)))
                if name != "pproxy":  # (pproxy has no way to refuse a port)
                    refused = partial(case_http_refused, p, forbidden, echo)
                    cases.append((name, "refused, Connection: close", partial(refused, True)))
                    cases.append((name, "refused, keep-alive", partial(refused, False)))
            for name in ("dante", "microsocks"):
                p = ports[name]
                cases.append((name, "socks5 relay", partial(case_socks5_relay, p, echo, False)))
                cases.append((name, "socks5 early", partial(case_socks5_relay, p, echo, True)))
            p = ports["dante"]
            cases.append(
                ("dante", "socks5 refused", partial(case_socks5_refused, p, forbidden, echo))
            )
            cases.append(("dante", "socks4 relay", partial(case_socks4_relay, p, echo)))
            cases.append(
                ("dante", "socks4 refused", partial(case_socks4_refused, p, forbidden, echo))
            )
            for name, case, run in cases:
                try:
                    outcome = run()
                except OSError as exc:
                    outcome = f"error: {exc}"
                results.setdefault(name, {})[case] = outcome
                print(f"{name:<11} {case:<28} {outcome}", flush=True)
        finally:
            lab.stop_all()
            echo.close()
            forbidden.close()
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "pproxy": note}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
