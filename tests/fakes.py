"""Scripted fake hops and origins on loopback, run in the test's own event loop.

A FakeHop is an HTTP CONNECT proxy whose answer follows a script: "ok" really connects
and relays; the others misbehave in one precise way. Every request head it receives is
recorded, so tests can check what each hop was sent (and what it was not).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import ByteStream, Listener, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteStream

if TYPE_CHECKING:
    from chainer.relay import RelayOptions

Behaviour = (  # "dies": like ok, but stops listening after its first 502
    str  # ok | keepalive | silent | garbage | close | close_mid | split | coalesced | status:NNN
)


@dataclass(eq=False)
class FakeHop:
    behaviour: Behaviour
    port: int = 0
    requests: list[bytes] = field(default_factory=list)
    accepted: int = 0
    closed: int = 0
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    closed_event: anyio.Event = field(default_factory=anyio.Event)
    requested: anyio.Event = field(default_factory=anyio.Event)  # a first request came

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.address}"

    async def handle(self, client: SocketStream) -> None:
        self.accepted += 1
        buffered = BufferedByteStream(client)
        async with client:
            try:
                await self._serve(buffered, client)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                pass

    async def _serve(self, buffered: BufferedByteStream, client: SocketStream) -> None:
        head = await buffered.receive_until(b"\r\n\r\n", 65536) + b"\r\n\r\n"
        self.requests.append(head)
        self.requested.set()
        b = self.behaviour
        while b == "keepalive":
            # A proxy that keeps its connection after a failed CONNECT: a 502 with a
            # body, then the next request on the same connection.
            target = head.split(b" ")[1].decode()
            host, _, port = target.rpartition(":")
            try:
                upstream = await anyio.connect_tcp(host.strip("[]"), int(port))
            except OSError:
                body = b"cannot reach it\n"
                await client.send(
                    b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                head = await buffered.receive_until(b"\r\n\r\n", 65536) + b"\r\n\r\n"
                self.requests.append(head)
                continue
            async with upstream:
                await client.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
                await _pipe(buffered, client, upstream)
            return
        if b == "silent":
            # never answer; notice when the other side gives up and closes
            try:
                while await buffered.receive():
                    pass
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                self.closed += 1
                self.closed_event.set()
            return
        if b == "garbage":
            await client.send(b"SSH-2.0-OpenSSH_9.2\r\n")
            return
        if b == "close":
            return
        if b == "close_mid":
            await client.send(b"HTTP/1.1 200 Conn")
            return
        if b.startswith("status:"):
            status = int(b.split(":")[1])
            body = f"fake hop says {status}\n".encode()
            await client.send(
                f"HTTP/1.1 {status} Nope\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            await anyio.sleep(0.5)
            return
        method, target_bytes, _ = head.split(b"\r\n", 1)[0].split(b" ")
        if method != b"CONNECT":
            await self._forward(head, target_bytes.decode(), buffered, client)
            return
        target = target_bytes.decode()
        host, _, port = target.rpartition(":")
        try:
            upstream = await anyio.connect_tcp(host.strip("[]"), int(port))
        except OSError:
            await client.send(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            if b == "dies":
                # answered its one failure, then goes away: its port refuses from now on
                self.scope.cancel()
            return
        async with upstream:
            answer = b"HTTP/1.1 200 Connection established\r\n\r\n"
            if b == "split":
                for i in range(len(answer)):
                    await client.send(answer[i : i + 1])
                    await anyio.sleep(0.002)
            elif b == "coalesced":
                with anyio.move_on_after(1):
                    answer += await upstream.receive()
                await client.send(answer)
            else:
                await client.send(answer)
            await _pipe(buffered, client, upstream)

    async def _forward(
        self, head: bytes, url: str, buffered: BufferedByteStream, client: SocketStream
    ) -> None:
        """A plain-HTTP request in absolute form: fetch it from the origin, as a proxy."""
        authority, _, path = url.removeprefix("http://").partition("/")
        host, _, port = authority.rpartition(":")
        line_end = head.index(b"\r\n")
        method, _, version = head[:line_end].split(b" ")
        origin_form = b"%s /%s %s" % (method, path.encode(), version)
        async with await anyio.connect_tcp(host.strip("[]"), int(port or 80)) as upstream:
            await upstream.send(origin_form + head[line_end:])
            await _pipe(buffered, client, upstream)


async def _pipe(client_rx: ByteStream, client_tx: ByteStream, upstream: ByteStream) -> None:
    async def one_way(src: ByteStream, dst: ByteStream) -> None:
        try:
            while True:
                await dst.send(await src.receive())
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            pass
        try:
            await dst.send_eof()
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass

    async with anyio.create_task_group() as tg:
        tg.start_soon(one_way, client_rx, upstream)
        tg.start_soon(one_way, upstream, client_tx)


async def _serve(listener: Listener[SocketStream], handler: Callable[[SocketStream], Any]) -> None:
    async with listener:
        await listener.serve(handler)


class FakeClock:
    """A clock for `Health(clock=...)` that moves only when a test moves it: breakers open,
    half-open and close on the test's word, with no sleep."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A loopback port with nothing listening (refused when connected to)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_hop(tg: TaskGroup, behaviour: Behaviour) -> FakeHop:
    hop = FakeHop(behaviour)
    if behaviour == "refused":
        hop.port = free_port()
        return hop
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    hop.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    tg.start_soon(_serve_scoped, listener, hop)
    return hop


async def _serve_scoped(listener: Listener[SocketStream], hop: FakeHop) -> None:
    with hop.scope:
        await _serve(listener, hop.handle)


@dataclass(eq=False)
class EchoOrigin:
    """Sends `banner` on connect, then echoes everything; half-close answered with EOF."""

    banner: bytes = b""
    port: int = 0
    connections: int = 0

    async def handle(self, client: SocketStream) -> None:
        self.connections += 1
        async with client:
            try:
                if self.banner:
                    await client.send(self.banner)
                while True:
                    await client.send(await client.receive())
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                pass
            try:
                await client.send_eof()
            except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass


async def start_echo(tg: TaskGroup, banner: bytes = b"") -> EchoOrigin:
    origin = EchoOrigin(banner)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    origin.port = listener.extra(anyio.abc.SocketAttribute.local_port)
    tg.start_soon(_serve, listener, origin.handle)
    return origin


@asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """A task group whose background servers are cancelled when the test is done."""
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


@asynccontextmanager
async def running_chainer(
    yaml_text: str, tmp_path: Path, name: str = "routes.yaml", *, relay: RelayOptions | None = None
) -> AsyncIterator[list[tuple[str, int]]]:
    """Serve a chainer route table in this event loop; yields the bound listener addresses.

    Listener ports written as 0 are chosen by the kernel."""
    from chainer.config import load_config
    from chainer.router import Router
    from chainer.server.server import Server

    path = tmp_path / name
    path.write_text(yaml_text)
    server = Server(Router(load_config(path)), relay=relay)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve)
        yield bound
        tg.cancel_scope.cancel()
