"""Asking a DNS server: over UDP, over TCP, or over any byte stream (a chain's tunnel) with
RFC 7766's two-byte length framing; and the system's resolvers from /etc/resolv.conf.

A query goes out under an ID of its own (a fresh random one, chosen by the caller) and
only a reply that answers it — same ID, opcode and question (`dnswire.matches`) — is
taken: over UDP, other datagrams (late answers to an earlier try, forgeries) are read
past, a bounded number of them. Like the connectors, nothing here takes a timeout: the
caller owns the clock.
"""

from __future__ import annotations

import ipaddress

import anyio
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteStream

from ..models import Address
from ..proto import dnswire
from ..relay.sockstream import connect_ip

__all__ = ["DnsExchangeError", "ask_stream", "ask_tcp", "ask_udp", "system_resolvers"]

RESOLV_CONF = "/etc/resolv.conf"
_STRAY_DATAGRAMS = 16  # datagrams that answer something else, read past before giving up
_UDP_READ = 65535


class DnsExchangeError(OSError):
    """The server's answer never came, or did not answer the question."""


async def ask_udp(server: Address, query: bytes) -> bytes:
    """One query over UDP; the first datagram that answers it."""
    async with await anyio.create_connected_udp_socket(server.host, server.port) as udp:
        await udp.send(query)
        for _ in range(_STRAY_DATAGRAMS):
            reply = await udp.receive()
            if dnswire.matches(query, reply):
                return reply
    raise DnsExchangeError(f"{server}: {_STRAY_DATAGRAMS} datagrams that answer nothing asked")


async def ask_stream(stream: ByteStream, query: bytes) -> bytes:
    """One query over a stream (TCP, or a tunnel to the server), RFC 7766 framing."""
    buffered = BufferedByteStream(stream)
    await stream.send(dnswire.frame(query))
    try:
        size = int.from_bytes(await buffered.receive_exactly(2), "big")
        reply = await buffered.receive_exactly(size)
    except (anyio.EndOfStream, anyio.IncompleteRead):
        raise DnsExchangeError("the server closed before its answer was whole") from None
    if not dnswire.matches(query, reply):
        raise DnsExchangeError("the answer does not answer the question")
    return reply


async def ask_tcp(server: Address, query: bytes, mark: int | None = None) -> bytes:
    """One query over a TCP connection of its own (`mark`: its SO_MARK, so capture rules
    leave it alone)."""
    async with await connect_ip(server.host, server.port, mark=mark) as stream:
        return await ask_stream(stream, query)


def system_resolvers(path: str = RESOLV_CONF) -> tuple[Address, ...]:
    """The `nameserver` lines of a resolv.conf, port 53; none if it cannot be read. An
    address with a zone (`fe80::1%eth0`) is skipped: chainer does not reach addresses of
    one interface."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read(1 << 16).splitlines()
    except OSError:
        return ()
    found: list[Address] = []
    for line in lines:
        words = line.split()
        if len(words) < 2 or words[0] != "nameserver":
            continue
        try:
            ip = ipaddress.ip_address(words[1])
        except ValueError:
            continue
        address = Address(str(ip), 53)
        if address not in found:
            found.append(address)
    return tuple(found)
