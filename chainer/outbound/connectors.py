"""One connector per hop scheme: (stream to the hop, target) -> stream to the target.

Connectors take no timeouts (the dialer's steps own the clock) and know nothing about
chains: they raise HopAnswer when the hop answered with a failure and HopProtocolError
when it did not answer properly; transport errors (OSError, EndOfStream,
BrokenResourceError, ssl.SSLError) pass through for the blame table to translate once.
Reaching the hop itself (TCP, TLS) is `tcp.py`'s job, and an SSH hop's session
`ssh.py`'s: asking an SSH hop is opening a channel on its session. What a request's
bytes are, and whether they went out already with a pipelined batch, is `pipeline.py`'s:
a connector sends what `pipeline.ask` says is due and reads the answer.
"""

from __future__ import annotations

import socket
from typing import Protocol

import anyio
from anyio.abc import ByteStream

from ..errors import HopAnswer, HopClosed, HopProtocolError
from ..models import Address, Proxy
from ..proto import socks_codes as codes
from ..proto.forward import ResponseStartReader
from ..proto.http import NEED_DATA, ConnectResponseReader, Established, ProtocolError, Refused
from ..proto.socks import AuthFailed, Connected, Rejected, Send, Socks4Client, Socks5Client
from ..relay.streams import with_prefix
from ..text import READ_SIZE, printable
from . import pipeline
from .resolve import SYSTEM
from .ssh import open_channel

__all__ = ["ask", "http_connect", "socks4_connect", "socks5_connect"]

_DENIED = {401, 403, 407}
_UNREACHABLE = {404, 502, 503}


async def ask(stream: ByteStream, proxy: Proxy, target: Address) -> ByteStream:
    """Ask `proxy` (reached over `stream`) to open a tunnel to `target`."""
    if proxy.scheme == "ssh":
        channel = await open_channel(stream, target)
        await stream.aclose()  # the SshReached stand-in: the channel holds the session now
        return channel
    if proxy.scheme in ("http", "https"):
        return await http_connect(stream, proxy, target)
    if proxy.scheme in ("socks5", "socks5h"):
        return await socks5_connect(stream, proxy, target)
    return await socks4_connect(stream, proxy, target)


async def socks5_connect(stream: ByteStream, proxy: Proxy, target: Address) -> ByteStream:
    """RFC 1928 CONNECT. socks5 and socks5h both send names: the hop resolves them."""
    asked = await pipeline.ask(stream, proxy, target)
    assert isinstance(asked.request.reader, Socks5Client)
    return asked.onward(await _drive_socks(asked.stream, asked.request.reader))


async def socks4_connect(stream: ByteStream, proxy: Proxy, target: Address) -> ByteStream:
    host = target.host
    if proxy.scheme == "socks4" and not target.is_ip:
        if proxy.resolve != "local":
            raise HopAnswer(
                "failed", 0, f"socks4 cannot send the name {host}; use socks4a or resolve: local"
            )
        host = await _resolve_ipv4(host)
    try:
        asked = await pipeline.ask(stream, proxy, Address(host, target.port))
    except ValueError as exc:  # (from the codec, before anything is sent)
        raise HopAnswer("failed", 0, f"{proxy.scheme}: {exc}") from None
    assert isinstance(asked.request.reader, Socks4Client)
    return asked.onward(await _drive_socks(asked.stream, asked.request.reader))


async def _resolve_ipv4(host: str) -> str:
    """`resolve: local` on a socks4 hop: the one place a chain resolves a name here."""
    try:
        infos = await SYSTEM.getaddrinfo(host, None, family=socket.AF_INET)
    except OSError as exc:
        raise HopAnswer("failed", 0, f"cannot resolve {host} locally: {exc}") from None
    return str(infos[0][4][0])


_SOCKS_UNREACHABLE = {
    codes.REP_NETWORK_UNREACHABLE,
    codes.REP_HOST_UNREACHABLE,
    codes.REP_CONNECTION_REFUSED,
}


async def _receive(stream: ByteStream) -> bytes:
    try:
        return await stream.receive(READ_SIZE)
    except anyio.EndOfStream:
        return b""


class _Reader(Protocol):
    def receive_data(self, data: bytes) -> None: ...
    def next_event(self) -> object: ...


async def _next_answer(stream: ByteStream, reader: _Reader, answered: list[bool]) -> object:
    """Feed a sans-I/O reader from the hop until it has an event. A hop that closes before
    its first byte is HopClosed (so a kept-alive connection can be retried); any other bad
    answer is HopProtocolError. answered[0] records whether a byte ever came."""
    while True:
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            raise (HopProtocolError if answered[0] else HopClosed)(str(exc)) from None
        if event is not NEED_DATA:
            return event
        data = await _receive(stream)
        answered[0] = answered[0] or bool(data)
        reader.receive_data(data)


async def _drive_socks(stream: ByteStream, codec: Socks5Client | Socks4Client) -> ByteStream:
    answered = [False]
    while True:
        event = await _next_answer(stream, codec, answered)
        if isinstance(event, Send):
            await stream.send(event.data)
        elif isinstance(event, Connected):
            return with_prefix(stream, codec.trailing_data)
        elif isinstance(event, AuthFailed):
            raise HopAnswer("denied", 0, event.reason)
        elif isinstance(event, Rejected):
            text = f"answered {event.code:#04x} ({event.text})"
            if isinstance(codec, Socks4Client):
                # SOCKS4 says only "rejected or failed": it cannot tell down from denied.
                raise HopAnswer("unreachable", event.code, f"answered {event.code} ({event.text})")
            if event.code in _SOCKS_UNREACHABLE:
                raise HopAnswer("unreachable", event.code, text)
            if event.code == codes.REP_TTL_EXPIRED:
                raise HopAnswer("timeout", event.code, text)
            if event.code == codes.REP_NOT_ALLOWED:
                raise HopAnswer("denied", event.code, text)
            raise HopAnswer("failed", event.code, text)


async def http_connect(stream: ByteStream, proxy: Proxy, target: Address) -> ByteStream:
    asked = await pipeline.ask(stream, proxy, target)
    reader, stream = asked.request.reader, asked.stream
    assert isinstance(reader, ConnectResponseReader)
    event = await _next_answer(stream, reader, [False])
    if isinstance(event, Established):
        return asked.onward(with_prefix(stream, reader.trailing_data))
    assert isinstance(event, Refused)
    status = event.status
    text = f"answered {status} {printable(event.reason)}".rstrip()
    if status in _DENIED:
        raise HopAnswer("denied", status, text)
    dns = _says_dns_failed(event.headers)
    # The answer was read whole and the hop keeps the connection: it can be asked again
    # (not after a pipelined request: we asked it to close, and sent more behind it).
    reusable = event.reusable and not asked.pipelined
    survivor = with_prefix(stream, reader.trailing_data) if reusable else None
    if status == 504:
        raise HopAnswer("timeout", status, text, survivor, dns=dns)
    if status in _UNREACHABLE:
        raise HopAnswer("unreachable", status, text, survivor, dns=dns)
    if survivor is not None:
        await anyio.aclose_forcefully(survivor)
    raise HopAnswer("failed", status, text, dns=dns)


def _says_dns_failed(headers: tuple[tuple[str, str], ...]) -> bool:
    """squid names its error page in `X-Squid-Error`; ERR_DNS_FAIL is "could not resolve
    the name". Other proxies say nothing machine-readable about why."""
    return any(
        name.lower() == "x-squid-error" and value.startswith("ERR_DNS_FAIL")
        for name, value in headers
    )


async def http_forward(stream: ByteStream, head: bytes, body: bool) -> ByteStream:
    """Send a plain-HTTP request head to an HTTP proxy and, unless a body is to follow,
    wait for the first head of its answer; the stream given back delivers that answer
    from its first byte. A request with a body is answered only once the body has been
    sent, so it is given back at once (the caller bounds the wait for its answer)."""
    await stream.send(head)
    if body:
        return stream
    reader = ResponseStartReader()
    await _next_answer(stream, reader, [False])
    return with_prefix(stream, reader.trailing_data)
