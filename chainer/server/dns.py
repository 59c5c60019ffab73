"""chainer's DNS server: UDP and TCP on each `dns.listen` address, in chainer's process,
beside the admin endpoint (run.py starts it); what it answers is dnsanswers.py's.

How this works. Each address gets a UDP socket and a TCP listener on the same port (a
port written as 0 is chosen for UDP, and TCP takes the same one). UDP: every datagram
from a client `dns.allow` lets in becomes a task of this server's group, at most
`MAX_UDP_IN_FLIGHT` at once — beyond that a datagram is dropped, not queued, so a flood
costs memory for none. TCP (RFC 7766): each message is its two-byte length and the
message; a connection may ask many questions, one after the other, and is closed when
idle for `TCP_IDLE`, after `MAX_TCP_QUERIES`, or at the first message that is not a
query (a length promising more than ever arrives ends it at the idle timeout). Nothing a
client sends stops the server: a bad packet is answered FORMERR or dropped, a failing
socket call backs off and carries on, and a bug costs one answer (logged), never the
listener.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.buffered import BufferedByteStream

from ..models import Address, Dns
from ..proto import dnswire
from ..relay import sockstream
from ..relay.sockstream import SockStream
from ..text import cannot_listen
from .dnsanswers import DnsAnswers

if TYPE_CHECKING:
    from .server import Server

__all__ = ["bind_dns", "serve_dns"]

log = logging.getLogger("chainer.dns")

MAX_UDP_IN_FLIGHT = 512  # questions being answered at once over UDP; more are dropped
MAX_TCP_CLIENTS = 256  # open TCP connections; more are closed at once
MAX_TCP_QUERIES = 1000  # questions on one TCP connection
TCP_IDLE = 10.0  # seconds a TCP connection may stay silent (also inside a message)
BACKOFF = 0.1  # after a failing socket call
_DATAGRAM = 65535

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def bind_dns(listen: Sequence[Address]) -> list[tuple[socket.socket, socket.socket]]:
    """(UDP, TCP) sockets per address, on one port each; all of them or none."""
    bound: list[tuple[socket.socket, socket.socket]] = []
    try:
        for address in listen:
            try:
                bound.append(_bind_pair(address))
            except OSError as exc:
                raise cannot_listen(exc, str(address), "the DNS server") from None
    except BaseException:
        for udp, tcp in bound:
            udp.close()
            tcp.close()
        raise
    return bound


def _bind_pair(address: Address) -> tuple[socket.socket, socket.socket]:
    family = socket.AF_INET6 if address.is_ipv6 else socket.AF_INET
    # Port 0: TCP picks first. A port the kernel picks for UDP is often taken for TCP
    # on a busy machine (a client's TIME_WAIT holds its port for a minute); one it picks
    # for a TCP listener is seldom taken for UDP. Still, a few tries.
    for attempt in range(8):
        tcp = sockstream.listen(address.host, address.port, backlog=128)
        udp = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                udp.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            udp.bind((address.host, int(tcp.getsockname()[1])))
            udp.setblocking(False)
        except OSError as exc:
            udp.close()
            tcp.close()
            if address.port == 0 and exc.errno == errno.EADDRINUSE and attempt < 7:
                continue
            raise
        return udp, tcp
    raise AssertionError("unreachable")  # pragma: no cover


async def serve_dns(
    server: Server, *, task_status: TaskStatus[list[tuple[str, int]]] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Serve `dns:` of the server's table until cancelled; reports the bound addresses."""
    dns = server.router.config.dns
    assert dns is not None
    pairs = bind_dns(dns.listen)
    bound = [_address(udp) for udp, _ in pairs]
    answers = DnsAnswers(lambda: server.router, server.fakes, server.metrics, dns, bound)
    door = _Door(answers)
    if not dns.loopback and dns.open and not dns.allow:
        log.warning("the DNS server is open: anyone who reaches it may use it as a resolver")
    try:
        async with anyio.create_task_group() as tg:
            for (udp, tcp), where in zip(pairs, bound, strict=True):
                log.info("DNS on %s (UDP and TCP)", Address(*where))
                tg.start_soon(_serve_udp, udp, door)
                tg.start_soon(_serve_tcp, tcp, door)
            task_status.started(bound)
    finally:
        for udp, tcp in pairs:
            udp.close()
            tcp.close()


class _Door:
    """Who may ask (the table's `dns.allow` now), and how many at once."""

    def __init__(self, answers: DnsAnswers) -> None:
        self.answers = answers
        self._allow_for: Dns | None = None
        self._allow: tuple[IPNetwork, ...] = ()
        self.udp_in_flight = 0
        self.tcp_clients = 0

    def allows(self, host: str) -> bool:
        dns = self.answers.options()
        if dns is not self._allow_for:
            self._allow = tuple(ipaddress.ip_network(c, strict=False) for c in dns.allow)
            self._allow_for = dns
        if not self._allow:
            return True
        ip = ipaddress.ip_address(host.partition("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allow)


async def _serve_udp(sock: socket.socket, door: _Door) -> None:
    async with anyio.create_task_group() as tg:
        while True:
            try:
                data, peer = sock.recvfrom(_DATAGRAM)
            except BlockingIOError:
                await anyio.wait_readable(sock.fileno())
                continue
            except OSError as exc:  # an ICMP error queued on the socket, ENOMEM...
                log.debug("dns: UDP receive failed: %s", exc)
                await anyio.sleep(BACKOFF)
                continue
            host = str(peer[0])
            if not door.allows(host) or door.udp_in_flight >= MAX_UDP_IN_FLIGHT:
                door.answers.count("dropped")
                continue
            door.udp_in_flight += 1
            tg.start_soon(_answer_udp, sock, door, data, peer)


async def _answer_udp(sock: socket.socket, door: _Door, data: bytes, peer: tuple[str, int]) -> None:
    try:
        reply = await _answer(door.answers, data, str(peer[0]), tcp=False)
        if reply is not None:
            try:
                sock.sendto(reply, peer)
            except OSError as exc:  # a full buffer or a vanished route: UDP may lose it
                log.debug("dns: could not answer %s: %s", peer[0], exc)
    finally:
        door.udp_in_flight -= 1


async def _answer(answers: DnsAnswers, data: bytes, client: str, *, tcp: bool) -> bytes | None:
    try:
        return await answers.answer(data, client, tcp=tcp)
    except Exception:
        # A bug must cost one answer, not the server.
        log.exception("dns: internal error answering %s", client)
        answers.count("dropped")
        return None


async def _serve_tcp(listener: socket.socket, door: _Door) -> None:
    failing = False
    with listener:
        async with anyio.create_task_group() as tg:
            while True:
                try:
                    client = await sockstream.accept(listener)
                except OSError as exc:
                    if not failing:
                        log.warning("dns: accept failed: %s; retrying every 100ms", exc)
                    failing = True
                    await anyio.sleep(BACKOFF)
                    continue
                failing = False
                _start_tcp(tg, client, door)


def _start_tcp(tg: TaskGroup, client: SockStream, door: _Door) -> None:
    try:
        host = str(client.sock.getpeername()[0])
    except OSError:
        client.close()  # reset before it was seen
        return
    if not door.allows(host) or door.tcp_clients >= MAX_TCP_CLIENTS:
        door.answers.count("dropped")
        client.close()
        return
    door.tcp_clients += 1
    tg.start_soon(_serve_tcp_client, client, host, door)


async def _serve_tcp_client(client: SockStream, host: str, door: _Door) -> None:
    try:
        async with client:
            buffered = BufferedByteStream(client)
            for _ in range(MAX_TCP_QUERIES):
                message = await _read_message(buffered)
                if message is None:
                    return
                reply = await _answer(door.answers, message, host, tcp=True)
                if reply is None:
                    return  # not a query: whatever follows is not worth reading
                await client.send(dnswire.frame(reply))
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass  # the client went away
    finally:
        door.tcp_clients -= 1


async def _read_message(buffered: BufferedByteStream) -> bytes | None:
    """The next framed message; None at the end, on a cut one or after TCP_IDLE."""
    with anyio.move_on_after(TCP_IDLE):
        try:
            size = int.from_bytes(await buffered.receive_exactly(2), "big")
            return await buffered.receive_exactly(size) if size else None
        except (anyio.EndOfStream, anyio.IncompleteRead):
            return None
    return None


def _address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)
