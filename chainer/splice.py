"""The relay fast path: Linux `splice(2)` between two plain sockets, through a pipe.

How this works. When both legs of a tunnel are plain TCP sockets (no TLS inside chainer),
the bytes need not pass through Python at all: each direction moves data socket -> pipe
-> socket in the kernel. The streams are taken apart first: whatever a handshake left
buffered (a PrefixedStream's prefix) is written out ahead of the spliced data, and the
socket is taken from its SockStream. Each direction then:

  - splices up to PIPE_SIZE bytes from the source socket into its pipe, trying the
    syscall first and waiting for readiness only on EAGAIN;
  - drains the pipe completely into the destination before reading again;
  - yields to the event loop every few chunks so one busy tunnel cannot starve others;
  - on end of stream, shuts the destination's write side (half-close passed on).

Pipes are made lazily (an idle tunnel holds none) and sized to 1 MiB where the kernel
allows (smaller pipes measured ~30% slower). Semantics match the generic relay: byte
counts, half-close, idle timeout, first error ends both directions.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from dataclasses import dataclass

import anyio
from anyio.abc import ByteStream

from .sockstream import SockStream
from .streams import PrefixedStream

AVAILABLE = sys.platform == "linux" and hasattr(os, "splice")
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
_YIELD_EVERY = 8


@dataclass(slots=True)
class Leg:
    """A tunnel leg taken out of its anyio stream."""

    sock: socket.socket
    pending: bytes  # already read from it, not yet delivered to the other side
    at_eof: bool  # the peer had already finished sending


def _unwrap(stream: ByteStream) -> tuple[SockStream, bytes] | None:
    """The plain socket stream under any PrefixedStream layers, and their prefixes;
    None if there is none (a TLS leg, the forwarding adapter)."""
    prefix = b""
    inner: ByteStream = stream
    while isinstance(inner, PrefixedStream):
        prefix += inner.prefix
        inner = inner.inner
    if not isinstance(inner, SockStream) or inner.sock.fileno() < 0:
        return None
    return inner, prefix


def can_detach(stream: ByteStream) -> bool:
    return _unwrap(stream) is not None


def detach(stream: ByteStream) -> Leg:
    """Take a plain TCP stream apart for splicing (check can_detach first)."""
    unwrapped = _unwrap(stream)
    assert unwrapped is not None
    inner, prefix = unwrapped
    layer: ByteStream = stream
    while isinstance(layer, PrefixedStream):
        layer.prefix = b""
        layer = layer.inner
    return Leg(inner.detach(), prefix, False)


def _new_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # over the pipe budget: the default size still works, only slower
    return r, w


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await anyio.wait_writable(sock)
            continue
        view = view[sent:]


async def pump(src: Leg, dst: Leg, count: list[int], index: int) -> None:
    """Move everything from src to dst (pending bytes first), then half-close dst.
    count[index] grows as bytes are delivered."""
    if src.pending:
        await _send_all(dst.sock, src.pending)
        count[index] += len(src.pending)
        src.pending = b""
    pipes: list[tuple[int, int]] = []
    try:
        if not src.at_eof:
            await _splice_until_eof(src.sock, dst.sock, count, index, pipes)
        try:
            dst.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the other side is already gone
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)


async def _splice_until_eof(
    src: socket.socket,
    dst: socket.socket,
    count: list[int],
    index: int,
    pipes: list[tuple[int, int]],
) -> None:
    src_fd, dst_fd = src.fileno(), dst.fileno()
    chunks = 0
    while True:
        if not pipes:
            await anyio.wait_readable(src)  # an idle tunnel holds no pipe
            pipes.append(_new_pipe())
        pipe_r, pipe_w = pipes[0]
        try:
            n = os.splice(src_fd, pipe_w, PIPE_SIZE, flags=_SPLICE_FLAGS)
        except BlockingIOError:
            await anyio.wait_readable(src)
            continue
        if n == 0:
            return
        while n:
            try:
                moved = os.splice(pipe_r, dst_fd, n, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await anyio.wait_writable(dst)
                continue
            n -= moved
            count[index] += moved
        chunks += 1
        if chunks % _YIELD_EVERY == 0:
            await anyio.lowlevel.checkpoint()
