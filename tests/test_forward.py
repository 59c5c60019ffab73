"""Plain-HTTP forwarding through an HTTP last hop gets the same per-hop timeouts,
failover, fallback and 502/504 + Proxy-Status as a CONNECT, until the hop's answer has
begun; curl is the client."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import anyio
import pytest
from fakes import running_chainer, start_hop, task_group
from realproxies import Origin, curl

pytestmark = [pytest.mark.anyio, pytest.mark.interop]


def table(port: int, proxies: str, routes: str) -> str:
    return (
        f"listen: ['127.0.0.1:{port}']\n"
        "defaults: {connect_timeout: 1s, handshake_timeout: 400ms, deadline: 5s}\n"
        f"proxies:\n{proxies}routes:\n{routes}"
    )


async def fetch(port: int, url: str) -> tuple[int, bytes, str]:
    """curl -x chainer URL: (HTTP status or 0, body, Proxy-Status header)."""
    args = ("-x", f"http://127.0.0.1:{port}", "-D", "-", url)
    result = await anyio.to_thread.run_sync(lambda: curl(*args, timeout=10))
    head, _, body = result.body.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    proxy_status = next(
        (
            line.split(":", 1)[1].strip()
            for line in lines
            if line.lower().startswith("proxy-status:")
        ),
        "",
    )
    return status, body, proxy_status


async def test_a_silent_http_last_hop_fails_over_to_the_fallback(
    tmp_path: Path, plain_origin: Origin
) -> None:
    async with task_group() as tg:
        silent = await start_hop(tg, "silent")
        good = await start_hop(tg, "ok")
        port = free_port_number()
        proxies = f"  silent: {silent.url()}\n  good: {good.url()}\n"
        routes = "  - {match: '*', via: [silent], fallback: [[good]]}\n"
        async with running_chainer(table(port, proxies, routes), tmp_path):
            started = time.monotonic()
            status, body, _ = await fetch(port, plain_origin.url("/hello"))
            took = time.monotonic() - started
    assert status == 200, body
    assert took < 3  # the hop's 400ms handshake_timeout, not forever
    assert len(silent.requests) == 1
    assert silent.requests[0].startswith(b"GET http://")  # it was sent the request itself
    assert len(good.requests) == 1


async def test_a_silent_http_last_hop_alone_gives_504_with_proxy_status(
    tmp_path: Path, plain_origin: Origin
) -> None:
    async with task_group() as tg:
        silent = await start_hop(tg, "silent")
        port = free_port_number()
        proxies = f"  silent: {silent.url()}\n"
        routes = "  - {match: '*', via: [silent]}\n"
        async with running_chainer(table(port, proxies, routes), tmp_path):
            status, _, proxy_status = await fetch(port, plain_origin.url("/hello"))
            with anyio.fail_after(5):
                await silent.closed_event.wait()  # the hop's socket is not left behind
    assert status == 504
    assert proxy_status.startswith("chainer; error=connection_read_timeout")
    assert "hop 1 (silent): no answer in 400ms" in proxy_status


@pytest.mark.parametrize("behaviour", ["garbage", "close"])
async def test_a_broken_http_last_hop_gives_502_and_fails_over_within_the_group(
    tmp_path: Path, plain_origin: Origin, behaviour: str
) -> None:
    async with task_group() as tg:
        bad = await start_hop(tg, behaviour)
        good = await start_hop(tg, "ok")
        port = free_port_number()
        proxies = f"  bad: {bad.url()}\n  good: {good.url()}\n"
        alone = "  - {match: 'alone.test', via: [bad]}\n"
        routes = alone + "  - {match: '*', via: [[bad, good]]}\n"
        async with running_chainer(table(port, proxies, routes), tmp_path):
            status, body, _ = await fetch(port, plain_origin.url("/hello"))
            assert status == 200, body
            status, _, proxy_status = await fetch(port, "http://alone.test/")
    assert status == 502
    assert proxy_status.startswith("chainer; error=")


def free_port_number() -> int:
    from fakes import free_port

    return free_port()


async def _version_aware_origin(tg: object) -> int:
    """Answers HTTP/1.1 requests with a chunked body, HTTP/1.0 ones with a plain one, as
    a server must (RFC 9112: no chunked answer to an HTTP/1.0 request)."""

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await client.receive()
            if head.split(b"\r\n", 1)[0].endswith(b"HTTP/1.1"):
                await client.send(
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                )
            else:
                await client.send(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello")

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port: int = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve() -> None:
        async with listener:
            await listener.serve(handle)

    tg.start_soon(serve)  # type: ignore[attr-defined]
    return port


async def test_an_http10_client_never_gets_a_chunked_answer(tmp_path: Path) -> None:
    async with task_group() as tg:
        origin = await _version_aware_origin(tg)
        text = "listen: ['127.0.0.1:0']\nroutes: [{match: '*', via: direct}]\n"
        async with running_chainer(text, tmp_path) as bound:
            for version in ("1.0", "1.1"):
                async with await anyio.connect_tcp(*bound[0]) as c:
                    request = f"GET http://127.0.0.1:{origin}/ HTTP/{version}\r\n"
                    await c.send(request.encode() + b"Host: x\r\n\r\n")
                    got = b""
                    with anyio.fail_after(5), contextlib.suppress(anyio.EndOfStream):
                        while True:
                            got += await c.receive()
                chunked = b"transfer-encoding: chunked" in got.lower()
                assert chunked is (version == "1.1"), (version, got)
