"""Listening sockets: bind them, accept on them, decide who gets in.

`bind` opens every listener's socket, or none. `accept` runs one listener's loop: on
EMFILE and the like it backs off instead of spinning or dying; over max_connections a
client is turned away with a 503; everyone else is counted by `Occupancy` and handed to
`handle` as a task of the server's connections (tasks.py). The allow-list is checked by the
connection itself (`Door.allows`), so that a denied client still gets its access line.

On a `proxy_protocol: true` listener the client is not who connected: a load balancer
is, and its first bytes name the client. Such a connection gets a task of its own at
once (the accept loop never waits on a client): a peer outside `proxy_protocol_from` is
closed unread, the header is read exactly (never a byte of the client's request), and a
connection without one is closed. Only then is it counted, limited and handed on, under
the client's address — so the access log, `allow:`, limits.per_client and the login
throttle all see the real client.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from ..inbound import error_response, send_quietly
from ..inbound.transparent import reset_on_close
from ..models import Address, Limits, Listener
from ..proto import NEED_DATA, ProtocolError
from ..proto.proxy_protocol import ProxyHeader, ProxyHeaderReader
from ..relay import sockstream
from ..relay.sockstream import SockStream
from ..text import cannot_listen
from .tasks import ConnectionTasks

log = logging.getLogger("chainer")

ACCEPT_BACKOFF = 0.1  # seconds between accept attempts while they fail (EMFILE)
PROXY_HEADER_TIMEOUT = 5.0  # a balancer sends its header at once
_PROXY_HEADER_READS = 200  # v1 is read a byte at a time (<= 107); v2 in two or three reads

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Door:
    """What a connection needs to know about the listener it came in by."""

    listener: Listener
    tls: ssl.SSLContext | None  # clients speak TLS to us first (we are an HTTPS proxy)
    allow: tuple[IPNetwork, ...]  # client source networks let in; empty: everyone
    # proxy_protocol: the balancers that may name the client; empty: no PROXY header
    balancers: tuple[IPNetwork, ...] = ()

    @classmethod
    def of(cls, listener: Listener) -> Door:
        tls = None
        if listener.tls is not None:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(listener.tls.cert, listener.tls.key)
        allow = tuple(ipaddress.ip_network(c, strict=False) for c in listener.allow)
        balancers = tuple(
            ipaddress.ip_network(c, strict=False) for c in listener.proxy_protocol_from
        )
        return cls(listener, tls, allow, balancers if listener.proxy_protocol else ())

    def allows(self, host: str) -> bool:
        return not self.allow or _within(host, self.allow)


class Occupancy:
    """Connections open now — spliced tunnels included, which outlive their task — in all
    and per client address, and a way to wait until there are none (the drain)."""

    def __init__(self, limits: Callable[[], Limits]) -> None:
        self.count = 0
        self._limits = limits  # read on each accept: a reload may change them
        self._per_client: dict[str, int] = {}
        self._empty = anyio.Event()

    def refusal(self, client: str, exposed: bool) -> str | None:
        """Why a new connection from `client` is turned away now; None: it is let in.
        The per-client limit holds on listeners other machines can reach: on a loopback
        listener every client is this machine (one browser may open hundreds)."""
        limits = self._limits()
        if self.count >= limits.max_connections:
            return "too many connections; try again later"
        if exposed and self._per_client.get(client, 0) >= limits.per_client:
            return "too many connections from your address; try again later"
        return None

    def enter(self, client: str) -> None:
        self.count += 1
        self._per_client[client] = self._per_client.get(client, 0) + 1
        if self.count == 1:
            self._empty = anyio.Event()

    def leave(self, client: str) -> None:
        self.count -= 1
        left = self._per_client[client] - 1
        if left:
            self._per_client[client] = left
        else:
            del self._per_client[client]
        if self.count == 0:
            self._empty.set()

    async def drained(self) -> None:
        if self.count:
            await self._empty.wait()


def bind(
    listeners: Sequence[Listener], mark: int | None = None
) -> list[tuple[Listener, socket.socket]]:
    """A listening socket per listener; if one cannot be bound, none stays open. With
    `mark` (the SO_MARK of upstream sockets), transparent listeners' connections carry
    it too, and a process that may not set it is told so now, not at each connection."""
    bound: list[tuple[Listener, socket.socket]] = []
    if mark is not None:
        try:
            sockstream.check_mark(mark)
        except OSError as exc:
            raise OSError(f"cannot mark upstream connections (defaults.mark): {exc}") from None
    try:
        for listener in listeners:
            what = "a listener" if listener.transparent is None else "a transparent listener"
            try:
                sock = sockstream.listen(
                    listener.address.host,
                    listener.address.port,
                    transparent=listener.transparent == "tproxy",
                    mark=mark if listener.transparent is not None else None,
                )
            except OSError as exc:
                raise cannot_listen(exc, str(listener.address), what) from None
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


Handle = Callable[[SockStream, Door, tuple[str, int]], Coroutine[Any, Any, None]]


async def accept(
    sock: socket.socket,
    listener: Listener,
    occupancy: Occupancy,
    connections: ConnectionTasks,
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
            peer = peer_of(client)
            if door.balancers:
                connections.start_soon(_admit_proxied, client, door, peer, occupancy, handle)
                continue
            refusal = occupancy.refusal(peer[0], not listener.loopback)
            if refusal is not None:
                connections.start_soon(_turn_away, client, refusal, listener.transparent is None)
                continue
            occupancy.enter(peer[0])
            connections.start_soon(handle, client, door, peer)


_UNSEEN = ("0.0.0.0", 0)


def peer_of(client: SockStream) -> tuple[str, int]:
    """The client's IP address and port; ("0.0.0.0", 0) when it reset before we asked."""
    try:
        peer = client.sock.getpeername()
    except OSError:
        return _UNSEEN
    return str(peer[0]), int(peer[1])


async def _turn_away(client: SockStream, why: str, http: bool = True) -> None:
    """Over max_connections or limits.per_client: say so (in HTTP, the likeliest
    protocol) and close; a captured client, who speaks no protocol to us, is reset."""
    async with client:
        if http:
            await send_quietly(client, error_response(503, why))
        else:
            reset_on_close(client.sock)


def _within(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # an IPv4 client of a dual-stack [::] listener
    return any(ip in net for net in networks)


async def _admit_proxied(
    client: SockStream,
    door: Door,
    balancer: tuple[str, int],
    occupancy: Occupancy,
    handle: Handle,
) -> None:
    """A connection on a proxy_protocol listener: from a known balancer, with a header,
    or closed; then counted and served as the client the header names."""
    where = door.listener.address
    if balancer == _UNSEEN:  # reset before it was seen (a balancer's health check does)
        await anyio.aclose_forcefully(client)
        return
    if not _within(balancer[0], door.balancers):
        log.info("%s: %s is not in proxy_protocol_from: closed", where, Address(*balancer))
        await anyio.aclose_forcefully(client)
        return
    try:
        with anyio.fail_after(PROXY_HEADER_TIMEOUT):
            header = await read_proxy_header(client)
    except (
        ProtocolError,
        TimeoutError,
        OSError,
        anyio.EndOfStream,
        anyio.BrokenResourceError,
        anyio.ClosedResourceError,
    ) as exc:
        reason = str(exc) or type(exc).__name__
        # A bare TCP connect (a port probe, a balancer's plain health check): debug only.
        level = logging.DEBUG if "after 0 bytes" in reason else logging.INFO
        message = "%s: %s sent no valid PROXY header (%s): closed"
        log.log(level, message, where, Address(*balancer), reason)
        await anyio.aclose_forcefully(client)
        return
    peer = balancer
    if header.source is not None:
        peer = _plain(header.source)
    else:
        # LOCAL (a health check) or an unnamed client: the balancer speaks for itself.
        # It may name any client it likes anyway, so `allow:` does not stop it here.
        door = dataclasses.replace(door, allow=())
    # The clients are whoever the balancer names, other machines: per_client holds even
    # on a loopback listener.
    refusal = occupancy.refusal(peer[0], True)
    if refusal is not None:
        await _turn_away(client, refusal)
        return
    occupancy.enter(peer[0])
    await handle(client, door, peer)


async def read_proxy_header(client: SockStream) -> ProxyHeader:
    """Read a PROXY protocol header and not one byte more (ProtocolError if there is none)."""
    reader = ProxyHeaderReader()
    for _ in range(_PROXY_HEADER_READS):
        try:
            data = await client.receive(reader.wanted())
        except anyio.EndOfStream:
            data = b""
        reader.receive_data(data)
        event = reader.next_event()
        if event is not NEED_DATA:
            return event
    raise ProtocolError("PROXY header took too many reads")


def _plain(address: tuple[str, int]) -> tuple[str, int]:
    """An IPv4-mapped IPv6 client is the IPv4 client it maps, as everywhere else."""
    ip = ipaddress.ip_address(address[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped), address[1]
    return address
