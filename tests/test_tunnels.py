"""Spliced tunnels have an owner (server/tunnels.py) whose lifetime bounds theirs: however
its block ends — normally, cancelled, or serve() cancelled with tunnels open — every
tunnel is closed and reported exactly once, and no pipe is left behind."""

from __future__ import annotations

import gc
import logging
import socket
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from fakes import free_port, start_echo, task_group

from chainer.config import load_config
from chainer.relay import PipePool, RelayOptions, RelayResult, splice
from chainer.relay.sockstream import SockStream
from chainer.router import Router
from chainer.server import Server
from chainer.server.tunnels import Tunnels

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(not splice.AVAILABLE, reason="splice(2) is Linux-only"),
]

OK = b"HTTP/1.1 200 Connection established\r\n\r\n"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[splice.Tunnel]:
    """Every splice.Tunnel started while the test runs."""
    seen: list[splice.Tunnel] = []
    real = splice.Tunnel.start

    def spy(self: splice.Tunnel) -> None:
        seen.append(self)
        real(self)

    monkeypatch.setattr(splice.Tunnel, "start", spy)
    return seen


class Pair:
    """One tunnel's two far ends (the client's and the upstream's), as plain sockets,
    and the streams the owner is handed."""

    def __init__(self) -> None:
        self.client, near_client = socket.socketpair()
        self.upstream, near_upstream = socket.socketpair()
        self.streams = SockStream(near_client), SockStream(near_upstream)

    def close(self) -> None:
        for sock in (self.client, self.upstream, *(s.sock for s in self.streams)):
            sock.close()  # the near ends too, where no tunnel took them


@pytest.fixture
def pairs() -> Iterator[list[Pair]]:
    made = [Pair() for _ in range(3)]
    yield made
    for pair in made:
        pair.close()


async def wait_until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(3):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)


def closed(tunnel: splice.Tunnel) -> bool:
    return tunnel.finished and all(s.fileno() == -1 for s in tunnel.socks.values())


def far_ends_see_eof(pair: Pair) -> bool:
    return pair.client.recv(10) == b"" and pair.upstream.recv(10) == b""


async def test_leaving_the_block_ends_every_tunnel_once(
    pairs: list[Pair], started: list[splice.Tunnel]
) -> None:
    pool = PipePool()
    ended: list[RelayResult] = []
    async with Tunnels(pool) as tunnels:
        for pair in pairs:
            assert await tunnels.hand_off(*pair.streams, 60.0, ended.append)
        pairs[0].client.sendall(b"ping")
        await wait_until(lambda: started[0].count[0] == 4)
        assert pairs[0].upstream.recv(10) == b"ping"
        assert len(tunnels) == len(pairs)
        assert not ended
    assert len(tunnels) == 0
    assert [r.error for r in ended] == ["shutting down"] * len(pairs)
    assert sorted(r.up for r in ended) == [0, 0, 4]  # bytes moved before the end count
    assert all(closed(t) for t in started)
    assert all(far_ends_see_eof(pair) for pair in pairs)
    assert not pool.free


async def test_a_cancelled_owner_ends_every_tunnel_once(
    pairs: list[Pair], started: list[splice.Tunnel]
) -> None:
    ended: list[RelayResult] = []
    with anyio.CancelScope() as scope:
        async with Tunnels(PipePool()) as tunnels:
            for pair in pairs:
                await tunnels.hand_off(*pair.streams, 60.0, ended.append)
            scope.cancel()
            await anyio.sleep_forever()
    assert [r.error for r in ended] == ["shutting down"] * len(pairs)
    assert len(started) == len(pairs)
    assert all(closed(t) for t in started)


async def test_a_tunnel_that_ends_by_itself_is_reported_and_forgotten(pairs: list[Pair]) -> None:
    ended: list[RelayResult] = []
    async with Tunnels(PipePool()) as tunnels:
        pair = pairs[0]
        await tunnels.hand_off(*pair.streams, 60.0, ended.append)
        pair.client.sendall(b"up")
        pair.client.shutdown(socket.SHUT_WR)
        pair.upstream.shutdown(socket.SHUT_WR)
        await wait_until(lambda: bool(ended))
        assert len(tunnels) == 0
    assert len(ended) == 1
    assert (ended[0].up, ended[0].down, ended[0].error) == (2, 0, None)
    assert pair.upstream.recv(10) == b"up"


async def test_no_tunnel_starts_once_the_owner_is_closed(pairs: list[Pair]) -> None:
    ended: list[RelayResult] = []
    async with Tunnels(PipePool()) as tunnels:
        tunnels.close("shutting down")
        assert not await tunnels.hand_off(*pairs[0].streams, 60.0, ended.append)
    assert not ended
    assert far_ends_see_eof(pairs[0])


async def test_cancelling_serve_closes_and_logs_each_spliced_tunnel_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, started: list[splice.Tunnel]
) -> None:
    caplog.set_level(logging.INFO, logger="chainer.access")
    clients: list[anyio.abc.SocketStream] = []
    ports: list[int] = []
    async with task_group() as background:
        echo = await start_echo(background)
        path = tmp_path / "routes.yaml"
        listen = f"listen: ['127.0.0.1:{free_port()}']\n"
        path.write_text(listen + "routes:\n  - {match: '*', via: direct}\n")
        server = Server(Router(load_config(path)), relay=RelayOptions(mode="splice"))
        async with anyio.create_task_group() as serving:
            bound = await serving.start(server.serve)
            for i in range(3):
                s = await anyio.connect_tcp("127.0.0.1", bound[0][1])
                clients.append(s)
                ports.append(s.extra(anyio.abc.SocketAttribute.local_port))
                await s.send(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                assert await s.receive() == OK
                await s.send(b"hi %d" % i)
                assert await s.receive() == b"hi %d" % i
            assert len(started) == 3
            assert not any(t.finished for t in started)
            assert server.active == 3
            serving.cancel_scope.cancel()  # serve() is cancelled with three tunnels open
        assert server.stopped.is_set()
        assert all(closed(t) for t in started)
        assert server.active == 0
        assert server.metrics.active._value.get() == 0
        for s in clients:
            async with s:
                with anyio.fail_after(3):
                    with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                        await s.receive()
    lines = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    for port in ports:
        mine = [line for line in lines if f"client=127.0.0.1:{port} " in line]
        assert len(mine) == 1, lines
        assert "outcome=shutdown" in mine[0]
        assert 'error="closed at shutdown"' in mine[0]
        assert " up=4 down=4 " in mine[0]
    assert not server.relay.pipes.free


async def test_an_ended_tunnel_is_freed_without_the_garbage_collector(pairs: list[Pair]) -> None:
    """A cycle through the owner's callback would leave every tunnel (its sockets, its
    connection's record) for the collector to find: CPU on the set-up path under load."""
    ended: list[RelayResult] = []
    gc.disable()
    try:
        async with Tunnels(PipePool()) as tunnels:
            pair = pairs[0]
            tunnel = await tunnels.hand_off(*pair.streams, 60.0, ended.append)
            assert tunnel is not None
            gone = weakref.ref(tunnel)
            del tunnel
            pair.client.shutdown(socket.SHUT_WR)
            pair.upstream.shutdown(socket.SHUT_WR)
            await wait_until(lambda: bool(ended))
            await anyio.lowlevel.checkpoint()  # the loop lets go of the last handle
            assert gone() is None
    finally:
        gc.enable()


async def test_a_bug_in_a_tunnel_ends_it_once_and_says_so(
    pairs: list[Pair], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its reader stays registered between reads: a bug must end the tunnel, not make
    the loop call it again on every turn."""
    ended: list[RelayResult] = []
    calls: list[int] = []

    def broken(self: splice.Tunnel, d: object) -> None:
        calls.append(1)
        raise ValueError("a bug")

    async with Tunnels(PipePool()) as tunnels:
        pair = pairs[0]
        await tunnels.hand_off(*pair.streams, 60.0, ended.append)
        monkeypatch.setattr(splice.Tunnel, "_move", broken)
        with caplog.at_level(logging.ERROR, "chainer"):
            pair.client.sendall(b"x")
            await wait_until(lambda: bool(ended))
            await anyio.sleep(0.05)
    assert [r.error for r in ended] == ["internal error"]
    assert len(calls) == 1
    with pytest.raises(ConnectionResetError):  # closed with the byte unread: a reset
        pair.client.recv(10)
    assert any("internal error" in r.getMessage() for r in caplog.records)
