"""The two bridges between chainer's anyio streams and asyncssh's asyncio protocols.

How this works. asyncssh runs an SSH connection as an asyncio Protocol over a Transport.
For an SSH hop reached through a tunnel (an HTTP CONNECT, a SOCKS request, another SSH
hop's channel), `TunnelTransport` is that Transport over the anyio ByteStream the dialer
built: one asyncio task, owned by the transport, pumps the stream into the protocol and
the protocol's writes into the stream, and ends when the transport is closed or aborted
(by asyncssh, when its connection closes) or when the stream ends. asyncssh never asks a
transport to pause: each SSH channel's window bounds what is in flight, so the write
queue needs no bound of its own.

The other way, `ChannelStream` is an anyio ByteStream over one `direct-tcpip` channel:
what the dialer hands on as "the tunnel to the next hop" or "the tunnel to the
destination". Its reader is asyncssh's, which stops reading the channel (and so the SSH
window stays shut) while unread data piles up. Closing it closes the channel and tells
its owner (`release`), so the session knows when it has no channel left.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

import anyio
import asyncssh
from anyio.abc import ByteStream

from ..text import READ_SIZE

__all__ = ["ChannelStream", "TunnelTransport"]

_BROKEN = (
    asyncssh.Error,
    OSError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


class TunnelTransport(asyncio.Transport):
    """An asyncio Transport over an anyio ByteStream, for one asyncio Protocol."""

    def __init__(self, stream: ByteStream, protocol: asyncio.Protocol) -> None:
        super().__init__()
        self._stream = stream
        self._protocol = protocol
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._closing = False  # close(): flush, then stop
        self._aborted = False  # abort(): stop now
        self._scope: anyio.CancelScope | None = None
        self._lost = False
        self._error: Exception | None = None
        self._task = asyncio.get_running_loop().create_task(self._run())

    def start(self) -> None:
        self._protocol.connection_made(self)

    async def _run(self) -> None:
        try:
            with anyio.CancelScope() as self._scope:
                if not self._aborted:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._pump_in, tg.cancel_scope)
                        await self._pump_out(tg.cancel_scope)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(self._stream)
            self._connection_lost(self._error)

    async def _pump_in(self, scope: anyio.CancelScope) -> None:
        try:
            while True:
                data = await self._stream.receive(READ_SIZE)
                self._protocol.data_received(data)
        except anyio.EndOfStream:
            self._protocol.eof_received()
        except _BROKEN as exc:
            self._error = exc
        scope.cancel()

    async def _pump_out(self, scope: anyio.CancelScope) -> None:
        """Until close() and everything queued has been sent."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._outgoing:
                    chunk = b"".join(self._outgoing)
                    self._outgoing.clear()
                    await self._stream.send(chunk)
                if self._closing:
                    break
        except _BROKEN as exc:
            self._error = exc
        scope.cancel()

    def _connection_lost(self, exc: Exception | None) -> None:
        if not self._lost:
            self._lost = True
            self._protocol.connection_lost(exc)

    # -- asyncio.Transport ---------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._task.done():
            return
        self._outgoing.append(bytes(data))
        self._wake.set()

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing or self._task.done()

    def close(self) -> None:
        """Send what is queued, then close."""
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._closing = self._aborted = True
        if self._scope is not None:
            self._scope.cancel()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default  # no socket, no peer address: asyncssh does without

    def pause_reading(self) -> None:  # never called by asyncssh's connection
        pass

    def resume_reading(self) -> None:
        pass

    def is_reading(self) -> bool:
        return not self._task.done()

    def get_write_buffer_size(self) -> int:
        return sum(len(chunk) for chunk in self._outgoing)

    async def wait_closed(self) -> None:
        """Until the pump has stopped and the stream is closed."""
        await asyncio.wait([self._task])


class ChannelStream(ByteStream):
    """One SSH `direct-tcpip` channel as an anyio ByteStream."""

    def __init__(
        self,
        reader: asyncssh.SSHReader[bytes],
        writer: asyncssh.SSHWriter[bytes],
        release: Callable[[], None],
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._release: Callable[[], None] | None = release
        self._closed = False

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            data = await self._reader.read(max_bytes)
        except _BROKEN as exc:
            raise anyio.BrokenResourceError from exc
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        if self._writer.is_closing():
            raise anyio.BrokenResourceError
        try:
            self._writer.write(item)
            await self._writer.drain()
        except _BROKEN as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            if not self._writer.is_closing():
                self._writer.write_eof()
        except _BROKEN as exc:
            raise anyio.BrokenResourceError from exc
        await anyio.lowlevel.checkpoint()

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._writer.close()
        release, self._release = self._release, None
        if release is not None:
            release()
