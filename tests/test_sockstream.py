"""SockStream waits for readiness on the loop itself (relay/sockstream.py wait_fd). What
a user would notice if that went wrong: a tunnel whose socket is closed while a task
waits on it hangs instead of ending, or — worse — a new connection that happens to get
the closed socket's fd number never hears its data. Both loops chainer runs on."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import pytest

from chainer.relay.sockstream import SockStream

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["asyncio", "uvloop"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    if request.param == "uvloop":
        pytest.importorskip("uvloop")  # in the test extras: present wherever the suite runs
        return ("asyncio", {"use_uvloop": True})
    return ("asyncio", {})


def _pair() -> tuple[SockStream, socket.socket]:
    ours, peer = socket.socketpair()
    return SockStream(ours), peer


async def test_receive_gets_what_the_peer_sends() -> None:
    stream, peer = _pair()
    with peer:
        async with anyio.create_task_group() as tg:

            async def later() -> None:
                await anyio.sleep(0.05)
                peer.sendall(b"hello")

            tg.start_soon(later)
            with anyio.fail_after(5):
                assert await stream.receive() == b"hello"
        stream.close()


async def test_closing_wakes_a_waiting_receive_and_a_waiting_send() -> None:
    stream, peer = _pair()
    with peer:
        stream.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        outcomes: list[str] = []

        async def receive() -> None:
            try:
                await stream.receive()
            except anyio.ClosedResourceError:
                outcomes.append("receive closed")

        async def send() -> None:
            try:
                await stream.send(b"x" * (8 << 20))  # far more than the buffers hold
            except anyio.ClosedResourceError:
                outcomes.append("send closed")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(receive)
                tg.start_soon(send)
                await anyio.sleep(0.1)  # both are waiting now
                stream.close()
        assert sorted(outcomes) == ["receive closed", "send closed"]


async def test_a_new_socket_on_the_closed_ones_fd_still_hears_its_data() -> None:
    old, old_peer = _pair()
    fd = old.sock.fileno()
    with old_peer:
        async with anyio.create_task_group() as tg:

            async def wait_on_old() -> None:
                with pytest.raises(anyio.ClosedResourceError):
                    await old.receive()

            tg.start_soon(wait_on_old)
            await anyio.sleep(0.05)
            old.close()  # the waiter has not run yet when the fd is handed out again
            new, new_peer = _pair()
            with new_peer:
                if new.sock.fileno() != fd:
                    got = new.sock.fileno()
                    pytest.fail(f"fd {fd} was not reused ({got}); the test proves nothing")

                async def send_later() -> None:
                    await anyio.sleep(0.1)  # after the old waiter has finished
                    new_peer.sendall(b"for the new one")

                tg.start_soon(send_later)
                with anyio.fail_after(5):
                    assert await new.receive() == b"for the new one"
                new.close()


async def test_a_cancelled_receive_leaves_the_stream_usable() -> None:
    stream, peer = _pair()
    with peer:
        with anyio.move_on_after(0.05) as scope:
            await stream.receive()
        assert scope.cancelled_caught
        peer.sendall(b"after")
        with anyio.fail_after(5):
            assert await stream.receive() == b"after"
        stream.close()


async def test_a_second_reader_at_once_is_refused_not_left_hanging() -> None:
    a, b = socket.socketpair()
    stream = SockStream(a)
    with b:
        async with stream, anyio.create_task_group() as tg:
            tg.start_soon(stream.receive)
            await anyio.sleep(0.01)
            with pytest.raises(anyio.BusyResourceError):
                await stream.receive()
            b.sendall(b"x")  # the first reader still gets it
            await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
