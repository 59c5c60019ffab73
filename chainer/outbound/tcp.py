"""Reaching a host: TCP to an address (a name's addresses raced, happy eyeballs) and TLS
on top for an https hop.

Like the connectors, nothing here takes a timeout (the dialer's steps own the clock) or
knows about chains; transport errors (OSError, ssl.SSLError) pass through for the blame
table to translate once.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable

import anyio
from anyio.abc import ByteStream

from ..models import Address, Proxy
from ..relay.sockstream import connect_ip
from ..relay.tls import TLSLeg
from .resolve import SYSTEM, Resolver

__all__ = ["HAPPY_EYEBALLS_DELAY", "Screen", "open_direct", "open_tcp", "start_tls"]

Screen = Callable[[str, int], None]  # vets one resolved address: raises to refuse it
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's recommended connection attempt delay


async def open_tcp(
    address: Address, resolver: Resolver = SYSTEM, mark: int | None = None
) -> ByteStream:
    """TCP to an address; a name is resolved here and its addresses raced (happy
    eyeballs, RFC 8305). `mark`: the SO_MARK the socket carries (see sockstream)."""
    if address.is_ip:
        return await connect_ip(address.host, address.port, mark=mark)
    infos = await resolver.getaddrinfo(address.host, address.port)
    return await _race(_interleave([str(info[4][0]) for info in infos]), address.port, mark)


async def open_direct(
    address: Address,
    screen: Screen | None,
    resolver: Resolver = SYSTEM,
    mark: int | None = None,
) -> ByteStream:
    """TCP to a destination for a `direct` route. A name is resolved here and every
    address it gives is passed through `screen` (which raises to refuse one), so that
    policy applies to where the connection really goes; the allowed addresses are raced
    happy-eyeballs style."""
    if screen is None or address.is_ip:
        return await open_tcp(address, resolver, mark)
    infos = await resolver.getaddrinfo(address.host, address.port)
    ips = _interleave([str(info[4][0]) for info in infos])
    allowed: list[str] = []
    refusal: Exception | None = None
    for ip in ips:
        try:
            screen(ip, address.port)
        except Exception as exc:  # the screen's own refusal, re-raised below
            refusal = exc
            continue
        allowed.append(ip)
    if not allowed:
        assert refusal is not None
        raise refusal
    return await _race(allowed, address.port, mark)


def _interleave(ips: list[str]) -> list[str]:
    """Unique addresses, alternating IPv6 and IPv4 (RFC 8305), first family first."""
    unique = list(dict.fromkeys(ips))
    v6 = [ip for ip in unique if ":" in ip]
    v4 = [ip for ip in unique if ":" not in ip]
    first, second = (v6, v4) if unique and ":" in unique[0] else (v4, v6)
    out: list[str] = []
    for i in range(max(len(first), len(second))):
        out += first[i : i + 1] + second[i : i + 1]
    return out


async def _race(ips: list[str], port: int, mark: int | None) -> ByteStream:
    if len(ips) == 1:
        return await connect_ip(ips[0], port, mark=mark)
    winner: ByteStream | None = None
    errors: list[OSError] = []

    async def attempt(ip: str, failed: anyio.Event) -> None:
        nonlocal winner
        try:
            stream = await connect_ip(ip, port, mark=mark)
        except OSError as exc:
            errors.append(exc)
            failed.set()
            return
        if winner is None:
            winner = stream
            tg.cancel_scope.cancel()
        else:
            await stream.aclose()

    try:
        async with anyio.create_task_group() as tg:
            for ip in ips:
                failed = anyio.Event()
                tg.start_soon(attempt, ip, failed)
                with anyio.move_on_after(HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
    except BaseException:
        if winner is not None:  # cancelled from outside just as one connected
            await anyio.aclose_forcefully(winner)
        raise
    if winner is None:
        raise OSError("all connection attempts failed") from (errors[-1] if errors else None)
    return winner


@functools.lru_cache(maxsize=64)
def client_tls_context(ca: str | None, insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def start_tls(stream: ByteStream, proxy: Proxy) -> ByteStream:
    """TLS to an https hop, over whatever stream reaches it (TCP or a tunnel)."""
    hostname = proxy.sni or proxy.address.host
    return await TLSLeg.wrap(
        stream, hostname=hostname, ssl_context=client_tls_context(proxy.ca, proxy.insecure)
    )
