"""The server side of a transparent listener: where the client was going, and the name
it meant.

How this works. A connection that nftables captured arrives with no request at all. Its
destination is the address it was sent to, learnt from the kernel: with `redirect` (NAT)
the conntrack entry's original destination (SO_ORIGINAL_DST, IP6T_SO_ORIGINAL_DST), with
`tproxy` the accepted socket's own local address. A connection made straight to the
listener therefore has the listener itself as its destination, which the policy refuses
as a loop. Then, unless sniffing is off, the client's first flight is read, bounded in
time and bytes, and shown to `ServerNameSniffer` (proto/servername.py): a DNS name from
the TLS SNI or the HTTP Host becomes the request's target, with the original port, and
the address stays in `Request.original` so that policy judges both. A protocol whose
server speaks first (SSH, SMTP) sends nothing, and after the timeout it is routed by the
address. Every byte read is handed to the tunnel first, untouched and exactly once. An
original destination that is a fake address of chainer's DNS (routing/fakeip.py) is not
sniffed: the name it stands for is the target. There is no protocol in which to answer a
refusal or a failure: the client's connection is reset, which is what the application
would have seen from a firewall.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import ByteStream

from ..errors import BadTarget
from ..models import Address, Sniff, Transparent
from ..proto.reader import NEED_DATA
from ..proto.servername import Named, ServerNameSniffer, Unnamed
from ..relay.sockstream import SockStream
from ..relay.streams import with_prefix
from ..routing.target import normalize_host
from .answers import Failure
from .base import ClientError, Request

__all__ = ["TransparentInbound", "original_destination", "read_first_flight", "reset_on_close"]

log = logging.getLogger("chainer")

_SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same number
_SOL_IPV6 = 41


def original_destination(sock: socket.socket, mode: Transparent) -> Address:
    """Where the client's connection was going before it was captured. A connection
    that was not redirected (made straight to the listener) gives the listener's own
    address."""
    local = sock.getsockname()
    found = _redirected(sock, str(local[0])) if mode == "redirect" else None
    host, port = found or (str(local[0]), int(local[1]))
    # normalize_host writes an IPv4-mapped address (a dual-stack listener's) as IPv4.
    return Address(normalize_host(host), port)


def _redirected(sock: socket.socket, local: str) -> tuple[str, int] | None:
    """The conntrack entry's original destination; None when there is none (no NAT in
    this namespace, or the connection was not redirected)."""
    try:
        if sock.family == socket.AF_INET6 and ipaddress.IPv6Address(local).ipv4_mapped is None:
            raw = sock.getsockopt(_SOL_IPV6, _SO_ORIGINAL_DST, 28)  # struct sockaddr_in6
            return str(ipaddress.IPv6Address(raw[8:24])), struct.unpack("!H", raw[2:4])[0]
        # IPv4, also for an IPv4 client of a dual-stack socket (SOL_IP reaches its
        # IPv4 conntrack entry)
        raw = sock.getsockopt(socket.SOL_IP, _SO_ORIGINAL_DST, 16)  # struct sockaddr_in
        return str(ipaddress.IPv4Address(raw[4:8])), struct.unpack("!H", raw[2:4])[0]
    except OSError:
        return None


async def read_first_flight(stream: ByteStream, sniff: Sniff) -> tuple[bytes, Named | Unnamed]:
    """The client's first bytes, read until the sniffer decides, the client closes, or
    `sniff.timeout` ends (at most `sniff.bytes`); and what they name."""
    sniffer = ServerNameSniffer(sniff.bytes)
    flight = bytearray()
    event = sniffer.next_event()
    with anyio.move_on_after(sniff.timeout):
        # Each pass adds at least one byte or the EOF, and the sniffer decides by
        # `sniff.bytes` bytes or at EOF: bounded in count as well as in time.
        while event is NEED_DATA:
            try:
                data = await stream.receive(sniff.bytes - len(flight))
            except anyio.EndOfStream:
                data = b""
            flight += data
            sniffer.receive_data(data)
            event = sniffer.next_event()
    if event is NEED_DATA:
        return bytes(flight), Unnamed(f"nothing named within {sniff.timeout:g}s")
    return bytes(flight), event


def destination_name(text: str) -> str | None:
    """A sniffed name as a destination: a valid DNS name, normalized; an IP literal or
    anything else is no name (the original address stands)."""
    try:
        host = normalize_host(text)
    except BadTarget:
        return None
    return None if Address(host, 1).is_ip else host


@dataclass(eq=False)
class TransparentInbound:
    """One captured connection, as the connection flow sees any inbound."""

    stream: SockStream
    mode: Transparent
    sniff: Sniff | None  # None: route by the address alone
    flight: bytes = b""  # what the client sent while we listened for the name
    # The name a fake address of chainer's DNS stands for (server/dns.py); None: none.
    named: Callable[[str], str | None] | None = None

    async def read_request(self) -> Request:
        original = original_destination(self.stream.sock, self.mode)
        name = self.named(original.host) if self.named is not None else None
        if name is not None:
            # The client got this address from chainer's DNS for `name`: nothing to sniff
            # (a server that speaks first is not kept waiting either).
            target = Address(name, original.port)
            return Request(
                "connect", target, original=original, sniffed="fake_ip", fake_ip=original
            )
        if self.sniff is None:
            return Request("connect", original, original=original, sniffed="none")
        self.flight, event = await read_first_flight(self.stream, self.sniff)
        name = destination_name(event.name) if isinstance(event, Named) else None
        if isinstance(event, Named) and name is not None:
            target = Address(name, original.port)
            return Request("connect", target, original=original, sniffed=event.source)
        why = event.reason if isinstance(event, Unnamed) else f"not a destination: {event.name!r}"
        log.debug("no name for %s: %s", original, why)
        return Request("connect", original, original=original, sniffed="none")

    async def reject(self, error: ClientError) -> None:
        reset_on_close(self.stream.sock)

    async def refuse(self, failure: Failure) -> None:
        reset_on_close(self.stream.sock)

    async def established(self) -> ByteStream:
        return with_prefix(self.stream, self.flight)


def reset_on_close(sock: socket.socket) -> None:
    """Make the coming close a reset (RST), as a firewall's refusal would look."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass  # already gone
