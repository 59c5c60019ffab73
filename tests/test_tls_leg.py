"""TLS legs half-close with close_notify and keep reading (chainer.relay.tls), over real
TLS on loopback, both TLS 1.3 and TLS 1.2, with the peer being plain anyio TLS."""

from __future__ import annotations

import ssl

import anyio
import pytest
import trustme
from anyio.abc import SocketAttribute, SocketStream
from anyio.streams.tls import TLSStream

from chainer.relay.tls import TLSLeg

pytestmark = pytest.mark.anyio


def contexts(version: ssl.TLSVersion) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.maximum_version = version
    return server, client


async def read_all(stream: TLSLeg | TLSStream) -> bytes:
    got = b""
    while True:
        try:
            got += await stream.receive()
        except anyio.EndOfStream:
            return got


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_half_close_then_the_answer_still_arrives(version: ssl.TLSVersion) -> None:
    server_ctx, client_ctx = contexts(version)
    seen: list[bytes] = []

    async def server(stream: SocketStream) -> None:
        async with stream:
            tls = await TLSLeg.wrap(stream, server_side=True, ssl_context=server_ctx)
            seen.append(await read_all(tls))  # ends at the client's close_notify
            await tls.send(b"answer after your end")
            await tls.send_eof()
            await anyio.sleep(1)  # the client must see EOF from close_notify, not a FIN

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server)
        port = listener.extra(SocketAttribute.local_port)
        with anyio.fail_after(5):
            tcp = await anyio.connect_tcp("127.0.0.1", port)
            leg = await TLSLeg.wrap(tcp, hostname="localhost", ssl_context=client_ctx)
            await leg.send(b"request")
            await leg.send_eof()
            assert await read_all(leg) == b"answer after your end"
            await leg.aclose()
        tg.cancel_scope.cancel()
    assert seen == [b"request"]


async def test_sending_after_eof_is_refused() -> None:
    server_ctx, client_ctx = contexts(ssl.TLSVersion.TLSv1_3)

    async def server(stream: SocketStream) -> None:
        async with stream:
            tls = await TLSStream.wrap(stream, server_side=True, ssl_context=server_ctx)
            await read_all(tls)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, server)
        port = listener.extra(SocketAttribute.local_port)
        with anyio.fail_after(5):
            leg = await TLSLeg.wrap(
                await anyio.connect_tcp("127.0.0.1", port),
                hostname="localhost",
                ssl_context=client_ctx,
            )
            await leg.send_eof()
            await leg.send_eof()  # idempotent
            with pytest.raises(anyio.ClosedResourceError):
                await leg.send(b"late")
            await leg.aclose()
        tg.cancel_scope.cancel()
