"""Listening sockets: bind them, accept on them, decide who gets in.

`bind` opens every listener's socket, or none. `accept` runs one listener's loop: on
EMFILE and the like it backs off instead of spinning or dying; over max_connections a
client is turned away with a 503; everyone else is counted by `Occupancy` and handed to
`handle` as a task of the server's connection group. The allow-list is checked by the
connection itself (`Door.allows`), so that a denied client still gets its access line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..inbound import error_response, send_quietly
from ..models import Address, Listener
from ..relay import sockstream
from ..relay.sockstream import SockStream
from ..text import cannot_listen

log = logging.getLogger("chainer")

ACCEPT_BACKOFF = 0.1  # seconds between accept attempts while they fail (EMFILE)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Door:
    """What a connection needs to know about the listener it came in by."""

    listener: Listener
    tls: ssl.SSLContext | None  # clients speak TLS to us first (we are an HTTPS proxy)
    allow: tuple[IPNetwork, ...]  # client source networks let in; empty: everyone

    @classmethod
    def of(cls, listener: Listener) -> Door:
        tls = None
        if listener.tls is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(listener.tls.cert, listener.tls.key)
        allow = tuple(ipaddress.ip_network(c, strict=False) for c in listener.allow)
        return cls(listener, tls, allow)

    def allows(self, host: str) -> bool:
        if not self.allow:
            return True
        ip = ipaddress.ip_address(host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack [::] listener
        return any(ip in net for net in self.allow)


class Occupancy:
    """Connections open now — spliced tunnels included, which outlive their task — and a
    way to wait until there are none (the drain on shutdown)."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self.count = 0
        self._limit = limit  # read on each accept: a reload may change it
        self._empty = anyio.Event()

    def full(self) -> bool:
        return self.count >= self._limit()

    def enter(self) -> None:
        self.count += 1
        if self.count == 1:
            self._empty = anyio.Event()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._empty.set()

    async def drained(self) -> None:
        if self.count:
            await self._empty.wait()


def bind(listeners: Sequence[Listener]) -> list[tuple[Listener, socket.socket]]:
    """A listening socket per listener; if one cannot be bound, none stays open."""
    bound: list[tuple[Listener, socket.socket]] = []
    try:
        for listener in listeners:
            try:
                sock = sockstream.listen(listener.address.host, listener.address.port)
            except OSError as exc:
                raise cannot_listen(exc, str(listener.address), "a listener") from None
            bound.append((listener, sock))
            log.info("listening on %s", Address(*address(sock)))
            if listener.open and not listener.loopback:
                log.warning(
                    "%s is open: anyone who can reach it may use it as a proxy",
                    listener.address,
                )
    except BaseException:
        for _, sock in bound:
            sock.close()
        raise
    return bound


def address(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return str(host), int(port)


Handle = Callable[[SockStream, Door], Coroutine[Any, Any, None]]


async def accept(
    sock: socket.socket,
    listener: Listener,
    occupancy: Occupancy,
    connections: TaskGroup,
    handle: Handle,
) -> None:
    """Accept until cancelled; the listening socket is closed when this ends."""
    door = Door.of(listener)
    failing = False
    with sock:
        while True:
            try:
                client = await sockstream.accept(sock)
            except OSError as exc:
                # EMFILE and friends: back off instead of spinning or dying, and say
                # so once per episode rather than ten times a second.
                if not failing:
                    log.warning("accept failed: %s; retrying every 100ms", exc)
                failing = True
                await anyio.sleep(ACCEPT_BACKOFF)
                continue
            if failing:
                log.info("accepting again")
                failing = False
            if occupancy.full():
                connections.start_soon(_turn_away, client)
                continue
            occupancy.enter()
            connections.start_soon(handle, client, door)


async def _turn_away(client: SockStream) -> None:
    """Over max_connections: say so (in HTTP, the likeliest protocol) and close."""
    async with client:
        await send_quietly(client, error_response(503, "too many connections; try again later"))
