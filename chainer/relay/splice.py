"""The relay fast path: Linux `splice(2)` between two plain sockets, through a pipe.

How this works. When both legs of a tunnel are plain TCP sockets (no TLS inside chainer),
the bytes need not pass through Python at all: each direction moves data socket -> pipe
-> socket in the kernel. The streams are taken apart first: whatever a handshake left
buffered (a PrefixedStream's prefix) is written out ahead of the spliced data, and the
socket is taken from its SockStream. Both directions are then driven by event-loop
readiness callbacks (no task and no cancel scope per tunnel; the relay awaits one
future). Each direction:

  - splices up to PIPE_SIZE bytes from the source socket into a pipe, trying the
    syscall first and registering for readiness only on EAGAIN; the registration then
    stays while the direction waits to read again (an add and a remove per read cost
    uvloop five system calls), and is dropped only to wait on the destination, to
    yield, or at the end;
  - drains the pipe completely into the destination before reading again;
  - after a few chunks in a row, yields to the event loop so one busy tunnel cannot
    starve others;
  - on end of stream, shuts the destination's write side (half-close passed on).

A direction holds a pipe only while bytes are in flight: an empty pipe goes back to a
small pool when its source would block, so idle tunnels hold none. Pipes are sized to
1 MiB where the kernel allows (smaller pipes measured ~30% slower). Semantics match the
generic relay: byte counts, half-close, idle timeout, first error ends both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass

from anyio.abc import ByteStream

from ..text import transport_reason
from .result import RelayResult, StillCounter
from .sockstream import SockStream, wait_fd
from .streams import PrefixedStream

log = logging.getLogger("chainer")

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


class PipePool:
    """Empty pipes kept for reuse: a tunnel takes one only while bytes are in flight, so
    ten thousand idle tunnels hold no pipes at all. Pipes are bare descriptors, never
    collected: whoever owns the pool `clear`s it when its tunnels are done."""

    def __init__(self, keep: int = 16) -> None:
        self.keep = keep
        self.free: list[tuple[int, int]] = []

    def take(self) -> tuple[int, int]:
        if self.free:
            return self.free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            pass  # over the pipe budget: the default size still works, only slower
        return r, w

    def give(self, pipe: tuple[int, int]) -> None:
        """Return an EMPTY pipe."""
        if len(self.free) < self.keep:
            self.free.append(pipe)
        else:
            _close_pipe(pipe)

    def clear(self) -> None:
        """Close every pooled pipe (the pool stays usable: take() makes new ones)."""
        while self.free:
            _close_pipe(self.free.pop())


def _close_pipe(pipe: tuple[int, int]) -> None:
    os.close(pipe[0])
    os.close(pipe[1])


async def _send_all(sock: socket.socket, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await wait_fd(sock.fileno(), True)
            continue
        view = view[sent:]


@dataclass(eq=False)
class _Direction:
    src: int  # file descriptors: asyncio lookups by socket object cost a repr() each
    dst: int
    index: int
    pipe: tuple[int, int] | None = None
    in_pipe: int = 0
    eof: bool = False
    finished: bool = False
    reading: bool = False  # a reader callback is registered on src


class Tunnel:
    """Both directions of one tunnel, driven by event-loop readiness callbacks: no task
    and no cancel scope. `on_done(result)` is called once, after the sockets are closed;
    `abort()` ends it from outside (shutdown). Whoever starts one owns it."""

    def __init__(
        self,
        a: Leg,
        b: Leg,
        idle: float,
        on_done: Callable[[RelayResult], None],
        pipes: PipePool,
        sent: tuple[int, int] = (0, 0),
        client_fin: float | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.client_fin = client_fin
        self.pipes = pipes
        fa, fb = a.sock.fileno(), b.sock.fileno()
        self.dirs = (_Direction(fa, fb, 0), _Direction(fb, fa, 1))
        self.socks = {fa: a.sock, fb: b.sock}
        self.count = list(sent)
        self.on_done = on_done
        self.finished = False
        self.result = RelayResult()
        self.idle = StillCounter.idle(idle)
        self.timer = self.loop.call_later(self.idle.step, self._check_idle)

    def start(self) -> None:
        for d in self.dirs:
            self._step(d)

    def _step(self, d: _Direction) -> None:
        if self.finished:  # a turn scheduled before the end
            return
        try:
            self._move(d)
        except OSError as exc:
            self._finish(f"{'client' if d.index == 0 else 'upstream'}: {transport_reason(exc)}")
        except Exception:
            # A bug costs this tunnel, once: its reader, still registered, would otherwise
            # call again on every turn of the loop.
            log.exception("spliced tunnel: internal error")
            self._finish("internal error")

    def _move(self, d: _Direction) -> None:
        loop = self.loop
        for _ in range(_YIELD_EVERY):
            if d.in_pipe:
                assert d.pipe is not None
                try:
                    moved = os.splice(d.pipe[0], d.dst, d.in_pipe, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    self._stop_reading(d)  # the source may stay readable meanwhile
                    loop.add_writer(d.dst, self._writable, d)
                    return
                d.in_pipe -= moved
                self.count[d.index] += moved
                continue
            if d.eof:
                self._half_close(d)
                return
            if d.pipe is None:
                d.pipe = self.pipes.take()
            try:
                n = os.splice(d.src, d.pipe[1], PIPE_SIZE, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.pipes.give(d.pipe)  # empty: an idle direction holds no pipe
                d.pipe = None
                if not d.reading:
                    loop.add_reader(d.src, self._step, d)
                    d.reading = True
                return
            if n == 0:
                d.eof = True
            d.in_pipe = n
        self._stop_reading(d)  # the turn below is the next step, not a readiness call too
        loop.call_soon(self._step, d)  # busy: let other tunnels have a turn

    def _stop_reading(self, d: _Direction) -> None:
        if d.reading:
            self.loop.remove_reader(d.src)
            d.reading = False

    def _writable(self, d: _Direction) -> None:
        self.loop.remove_writer(d.dst)
        self._step(d)

    def _half_close(self, d: _Direction) -> None:
        self._stop_reading(d)
        with contextlib.suppress(OSError):  # the other side may be gone already
            self.socks[d.dst].shutdown(socket.SHUT_WR)
        d.finished = True
        if d.pipe is not None:
            self.pipes.give(d.pipe)
            d.pipe = None
        if all(x.finished for x in self.dirs):
            self._finish(None)
        elif d.index == 0 and self.client_fin is not None and self.client_fin < self.idle.window:
            # The client has closed its side: the rest may idle only client_fin long.
            self.idle = StillCounter.idle(self.client_fin)
            self.timer.cancel()
            self.timer = self.loop.call_later(self.idle.step, self._check_idle)

    def _check_idle(self) -> None:
        if self.idle.sample(self.count):
            self.result.idle_closed = True
            self._finish(None)
        else:
            self.timer = self.loop.call_later(self.idle.step, self._check_idle)

    def abort(self, reason: str, *, shutdown: bool = False) -> None:
        """End it from outside; `shutdown` marks the server's own closing."""
        self.result.shutdown = shutdown
        self._finish(reason)

    def _finish(self, error: str | None) -> None:
        if self.finished:
            return
        self.finished = True
        self.result.error = error
        self.timer.cancel()
        for d in self.dirs:
            self.loop.remove_reader(d.src)
            self.loop.remove_writer(d.dst)
            if d.pipe is not None:
                _close_pipe(d.pipe)  # bytes may be left in it: never reuse it
                d.pipe = None
        for sock in self.socks.values():
            sock.close()
        self.result.up, self.result.down = self.count
        # Let go of the owner's callback (it holds this tunnel: a cycle the garbage
        # collector would otherwise have to find, for every tunnel).
        on_done, self.on_done = self.on_done, _reported
        on_done(self.result)


def _reported(result: RelayResult) -> None:
    """A finished tunnel's callback: its end was reported already."""


async def send_pending(a: Leg, b: Leg) -> tuple[int, int]:
    """Deliver what handshakes left buffered on each leg to the other; bytes sent up/down.
    The sockets are closed if this fails or is cancelled."""
    try:
        for src, dst in ((a, b), (b, a)):
            if src.pending:
                await _send_all(dst.sock, src.pending)
    except BaseException:
        close_legs(a, b)
        raise
    return len(a.pending), len(b.pending)


def close_legs(*legs: Leg) -> None:
    for leg in legs:
        leg.sock.close()
