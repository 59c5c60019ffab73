"""Both relay paths — the splice fast path and the generic anyio path — keep the same
semantics: early data, coalesced handshake leftovers, half-close both ways, byte counts,
idle timeout, resets, and a client that stops reading (backpressure)."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from fakes import _serve as serve_and_close
from fakes import free_port, running_chainer, start_echo, start_hop, task_group

from chainer.relay import RelayOptions, splice

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["splice", "generic"])
def relay(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RelayOptions]:
    if request.param == "splice" and not splice.AVAILABLE:
        pytest.skip("splice(2) is Linux-only")
    calls: list[str] = []
    real = splice.Tunnel.start

    def spy(self: splice.Tunnel) -> None:
        calls.append("spliced")
        real(self)

    monkeypatch.setattr(splice.Tunnel, "start", spy)
    yield RelayOptions(mode=request.param)
    # the path under test is the one that ran (every test here opens at least one tunnel)
    assert bool(calls) == (request.param == "splice")


def table(routes: str, proxies: str = "", idle: str = "10m") -> str:
    return (
        f"listen: ['127.0.0.1:{free_port()}']\n"
        f"defaults: {{idle_timeout: {idle}}}\n"
        + (f"proxies:\n{proxies}" if proxies else "")
        + f"routes:\n{routes}"
    )


async def read_all(s: anyio.abc.SocketStream, limit: float = 5) -> bytes:
    got = b""
    with anyio.fail_after(limit):
        try:
            while True:
                got += await s.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            pass
    return got


OK = b"HTTP/1.1 200 Connection established\r\n\r\n"


async def test_early_data_half_close_and_counts(
    relay: RelayOptions, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chainer.access")
    async with task_group() as tg:
        echo = await start_echo(tg, banner=b"HELLO\n")
        async with running_chainer(
            table("  - {match: '*', via: direct}\n"), tmp_path, relay=relay
        ) as b:
            async with await anyio.connect_tcp("127.0.0.1", b[0][1]) as s:
                target = f"127.0.0.1:{echo.port}".encode()
                await s.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\nEARLY")
                await s.send(b"x" * 300_000)
                await s.send_eof()  # half-close: the answer must still come back whole
                got = await read_all(s)
            with anyio.fail_after(3):
                while not any(r.name == "chainer.access" for r in caplog.records):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
    assert got == OK + b"HELLO\nEARLY" + b"x" * 300_000
    line = next(r.getMessage() for r in caplog.records if r.name == "chainer.access")
    assert " up=300005 " in line
    assert " down=300011 " in line


async def test_through_a_hop_with_coalesced_answer(relay: RelayOptions, tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg, banner=b"BANNER\n")
        hop = await start_hop(tg, "coalesced")
        text = table("  - {match: '*', via: [h]}\n", f"  h: {hop.url()}\n")
        async with running_chainer(text, tmp_path, relay=relay) as b:
            async with await anyio.connect_tcp("127.0.0.1", b[0][1]) as s:
                target = f"127.0.0.1:{echo.port}".encode()
                await s.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
                await s.send(b"ping")
                await s.send_eof()
                got = await read_all(s)
    assert got == OK + b"BANNER\nping"


async def test_idle_timeout(relay: RelayOptions, tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table("  - {match: '*', via: direct}\n", idle="300ms")
        async with running_chainer(text, tmp_path, relay=relay) as b:
            async with await anyio.connect_tcp("127.0.0.1", b[0][1]) as s:
                await s.send(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                started = time.monotonic()
                got = await read_all(s)
    assert got == OK
    assert 0.25 < time.monotonic() - started < 2.0


async def test_a_reset_ends_both_directions(relay: RelayOptions, tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(
            table("  - {match: '*', via: direct}\n"), tmp_path, relay=relay
        ) as b:
            s = await anyio.connect_tcp("127.0.0.1", b[0][1])
            await s.send(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert await s.receive() == OK
            await s.send(b"ping")
            assert await s.receive() == b"ping"
            raw = s.extra(anyio.abc.SocketAttribute.raw_socket)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await s.aclose()  # RST
            await anyio.sleep(0.2)
            # the server still serves
            async with await anyio.connect_tcp("127.0.0.1", b[0][1]) as s:
                await s.send(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await s.send(b"again")
                await s.send_eof()
                assert await read_all(s) == OK + b"again"


@pytest.mark.slow
async def test_a_client_that_stops_reading_is_not_buffered_for(
    relay: RelayOptions, tmp_path: Path
) -> None:
    """The origin pushes as fast as it can; the client reads nothing. What the origin
    manages to send must stay bounded by socket buffers, not grow inside chainer."""
    sent = 0
    stop = anyio.Event()

    async def firehose(client: anyio.abc.SocketStream) -> None:
        nonlocal sent
        chunk = b"z" * 65536
        async with client:
            with anyio.move_on_after(3):
                try:
                    while not stop.is_set():
                        await client.send(chunk)
                        sent += len(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    pass  # chainer closed it once the client went away

    async with task_group() as tg:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        tg.start_soon(serve_and_close, listener, firehose)
        async with running_chainer(
            table("  - {match: '*', via: direct}\n"), tmp_path, relay=relay
        ) as b:
            raw = socket.create_connection(("127.0.0.1", b[0][1]))
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            raw.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await anyio.sleep(1.5)
            stalled_at = sent
            await anyio.sleep(0.5)
            assert sent == stalled_at  # the origin is blocked: nothing drains it
            assert sent < 64 * 1024 * 1024
            stop.set()
            raw.close()


async def test_stopping_the_server_ends_live_tunnels(relay: RelayOptions, tmp_path: Path) -> None:
    """However the server stops, its tunnels end with it (a spliced tunnel has no task
    that cancellation would reach)."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(
            table("  - {match: '*', via: direct}\n"), tmp_path, relay=relay
        ) as b:
            s = await anyio.connect_tcp("127.0.0.1", b[0][1])
            await s.send(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert await s.receive() == OK
            await s.send(b"still")
            assert await s.receive() == b"still"
        # the server is gone: the tunnel must be closed, not left relaying
        async with s:
            assert await read_all(s, limit=3) == b""
    assert not relay.pipes.free  # and the pipes it pooled are closed


async def test_a_client_that_closed_its_side_holds_the_tunnel_only_client_fin_long(
    relay: RelayOptions, tmp_path: Path
) -> None:
    """The client sends and half-closes; the origin never answers nor closes. With
    idle_timeout 10m and client_fin 400ms, the tunnel (and the client's slot) ends at
    client_fin, not at the idle timeout."""

    async def mute(client: anyio.abc.SocketStream) -> None:
        async with client:
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    await client.receive()
            await anyio.sleep_forever()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    origin = listener.extra(anyio.abc.SocketAttribute.local_port)
    text = table("  - {match: '*', via: direct}\n") + "limits: {client_fin: 400ms}\n"
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, mute)
        async with running_chainer(text, tmp_path, relay=relay) as bound:
            async with await anyio.connect_tcp(*bound[0]) as s:
                await s.send(f"CONNECT 127.0.0.1:{origin} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await s.send(b"last words")
                await s.send_eof()
                assert await read_all(s, limit=5) == OK
        tg.cancel_scope.cancel()
