"""One connector per hop scheme: (stream to the hop, target) -> stream to the target.

Connectors take no timeouts (the dialer owns the clock) and know nothing about chains:
they raise HopAnswer when the hop answered with a failure and HopProtocolError when it
did not answer properly; transport errors (OSError, EndOfStream, BrokenResourceError,
ssl.SSLError) pass through for the dialer to translate once.
"""

from __future__ import annotations

import functools
import ssl

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSStream

from .errors import HopAnswer, HopProtocolError
from .models import Address, Proxy
from .proto.http import (
    NEED_DATA,
    ConnectResponseReader,
    Established,
    ProtocolError,
    basic_authorization,
    connect_request,
)
from .streams import with_prefix

_DENIED = {401, 403, 407}
_UNREACHABLE = {404, 502, 503}
_READ_SIZE = 65536


async def open_tcp(address: Address) -> ByteStream:
    """TCP to an address; IP literals skip the happy-eyeballs machinery."""
    return await anyio.connect_tcp(address.host, address.port)


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
    return await TLSStream.wrap(
        stream,
        hostname=hostname,
        ssl_context=client_tls_context(proxy.ca, proxy.insecure),
        standard_compatible=False,
    )


async def ask(stream: ByteStream, proxy: Proxy, target: Address) -> ByteStream:
    """Ask `proxy` (reached over `stream`) to open a tunnel to `target`."""
    if proxy.scheme in ("http", "https"):
        return await http_connect(stream, proxy, target)
    raise HopAnswer("failed", 0, f"{proxy.scheme} hops are not supported yet")


async def http_connect(stream: ByteStream, proxy: Proxy, target: Address) -> ByteStream:
    authorization = None
    if proxy.username is not None:
        authorization = basic_authorization(proxy.username, proxy.password or "")
    await stream.send(connect_request(target.authority(), authorization))
    reader = ConnectResponseReader()
    while True:
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            raise HopProtocolError(str(exc)) from None
        if event is NEED_DATA:
            try:
                data = await stream.receive(_READ_SIZE)
            except anyio.EndOfStream:
                data = b""
            reader.receive_data(data)
            continue
        if isinstance(event, Established):
            return with_prefix(stream, reader.trailing_data)
        status = event.status
        text = f"answered {status} {event.reason}".rstrip()
        if status in _DENIED:
            raise HopAnswer("denied", status, text)
        if status == 504:
            raise HopAnswer("timeout", status, text)
        if status in _UNREACHABLE:
            raise HopAnswer("unreachable", status, text)
        raise HopAnswer("failed", status, text)
