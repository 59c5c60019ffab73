"""DNS peers for tests, written here with dnspython: a spy resolver that answers from a
table and records every question it is asked (over UDP and TCP), and `dig`, run for real
and its answer read back.

The spy serves on sockets it is given, so the same code runs on loopback or inside a
network namespace (sockets made by ``netns.netns_socket``). It runs in threads of its
own, stopped (bounded) when its context ends.
"""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from realproxies import child_env, require_binary

POLL = 0.2  # seconds a spy's threads wait before looking at the stop flag again


@dataclass
class Spy:
    """Answers A for the names in `records` (NXDOMAIN for the rest), records questions."""

    records: dict[str, str]
    asked: list[tuple[str, str, str]] = field(default_factory=list)  # (name, type, udp|tcp)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _, _ in self.asked]

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:
            return None
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        with self.lock:
            self.asked.append((name, dns.rdatatype.to_text(question.rdtype), transport))
        reply = dns.message.make_response(query)
        if name not in self.records:
            reply.set_rcode(dns.rcode.NXDOMAIN)
        elif question.rdtype == dns.rdatatype.A:
            reply.answer.append(
                dns.rrset.from_text(question.name, 60, "IN", "A", self.records[name])
            )
        return reply.to_wire()


@contextlib.contextmanager
def spy_resolver(
    records: dict[str, str],
    host: str = "127.0.0.1",
    port: int = 0,
    make: Callable[[int], socket.socket] | None = None,
) -> Iterator[Spy]:
    """A spy on `host` (UDP and TCP, one port). `make(kind)` makes its sockets (default:
    here; ``lambda kind: netns_socket(ns, AF_INET, kind)`` puts it in a namespace)."""
    make = make or (lambda kind: socket.socket(socket.AF_INET, kind))
    udp, tcp = _bind_pair(make, host, port)
    port = udp.getsockname()[1]
    for sock in (udp, tcp):
        sock.settimeout(POLL)
    spy = Spy(records, port=port)
    stop = threading.Event()

    def serve_udp() -> None:
        while not stop.is_set():
            try:
                data, peer = udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply = spy.answer(data, "udp")
            if reply is not None:
                udp.sendto(reply, peer)

    def serve_tcp() -> None:
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    size = int.from_bytes(_exactly(conn, 2), "big")
                    reply = spy.answer(_exactly(conn, size), "tcp")
                    if reply is not None:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    continue

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_udp, serve_tcp)]
    for thread in threads:
        thread.start()
    try:
        yield spy
    finally:
        stop.set()
        for thread in threads:
            thread.join(POLL * 10)
        udp.close()
        tcp.close()


def _bind_pair(
    make: Callable[[int], socket.socket], host: str, port: int
) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP on one port: TCP picks it (a port the kernel picks for UDP is often
    taken for TCP on a busy machine, by a client's TIME_WAIT), and a few tries."""
    for attempt in range(10):
        udp = make(socket.SOCK_DGRAM)
        tcp = make(socket.SOCK_STREAM)
        try:
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, port))
            tcp.listen(16)
            udp.bind((host, tcp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            if port or attempt == 9:
                raise
            continue
        return udp, tcp
    raise AssertionError("unreachable")


def _exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionResetError("closed early")
        data += chunk
    return data


@dataclass(frozen=True)
class Dug:
    """What dig printed: the status and the answer section's records."""

    status: str | None  # NOERROR, NXDOMAIN...; None: no answer at all
    answers: list[tuple[str, int, str, str]]  # (name, ttl, type, data)
    flags: str
    text: str

    def data(self) -> list[str]:
        return [a[3] for a in self.answers]


_STATUS = re.compile(r"status: ([A-Z]+)")
_FLAGS = re.compile(r";; flags: ([a-z ]*);")


def dig_argv(server: str, port: int, *args: str) -> list[str]:
    exe = require_binary("dig")
    return [exe, "-p", str(port), f"@{server}", "+time=3", "+tries=1", *args]


def read_dig(text: str) -> Dug:
    status = _STATUS.search(text)
    flags = _FLAGS.search(text)
    answers = []
    section = False
    for line in text.splitlines():
        if line.startswith(";; ANSWER SECTION:"):
            section = True
            continue
        if section:
            if not line.strip():
                break
            name, ttl, _cls, kind, data = line.split(None, 4)
            answers.append((name, int(ttl), kind, data.strip()))
    return Dug(status.group(1) if status else None, answers, flags.group(1) if flags else "", text)


def dig(server: str, port: int, *args: str, timeout: float = 15.0) -> Dug:
    """The real dig (blocking: call it from a thread when the server runs in this loop)."""
    done = subprocess.run(
        dig_argv(server, port, *args),
        capture_output=True,
        env=child_env(),
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    return read_dig(done.stdout.decode("utf-8", "replace"))
