"""A TCP byte stream that is just a non-blocking socket.

Readiness is always waited for by file descriptor number, not socket object: asyncio's
lookups format a socket's repr (two syscalls) on every miss. And it is waited for on the
running asyncio loop directly (`wait_fd`: one future, a reader or writer callback), not
through anyio's wait_readable, whose backend lookups and bookkeeping cost more than the
wait itself on a tunnel's set-up path; cancellation still works (the task is cancelled,
the callback removed), and a stream closed while a task waits on it wakes that task
with ClosedResourceError, as anyio's notify_closing does. chainer runs on asyncio.

Why not anyio's own socket streams: on asyncio they sit on a transport and protocol (a
read queue, events, reading ahead until told to pause) — per tunnel that is memory and
set-up time, and it stands between the relay and the socket when the kernel could move
the bytes itself (splice.py). This stream tries each syscall first and waits for
readiness only when the socket would block, and can hand its socket over whole.
Everything else in chainer sees an ordinary anyio ByteStream.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketAttribute

from ..text import READ_SIZE

_BROKEN = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


def _wake(fut: asyncio.Future[bool]) -> None:
    if not fut.done():
        fut.set_result(True)


# A wait in progress: its future, and whether it waits for writability.
_Wait = tuple[asyncio.Future[bool], bool]


async def wait_fd(fd: int, writable: bool, holder: list[_Wait] | None = None) -> None:
    """Until `fd` is readable (or writable). `holder`, when given, holds the wait while it
    lasts, so that closing the stream can end it (`end_waits`: ClosedResourceError)."""
    if holder and any(w == writable for _, w in holder):
        # The loop keeps one callback per fd and direction: a second waiter would
        # silently take the first one's place, and the first would wait forever.
        raise anyio.BusyResourceError("writing to" if writable else "reading from")
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[bool] = loop.create_future()
    if writable:
        loop.add_writer(fd, _wake, fut)
    else:
        loop.add_reader(fd, _wake, fut)
    wait = (fut, writable)
    if holder is not None:
        holder.append(wait)
    try:
        if not await fut:
            raise anyio.ClosedResourceError
    finally:
        # Ended by end_waits: the callback is gone already, and the fd may be another
        # socket's by now, so it must not be touched.
        if holder is None or wait in holder:
            if holder is not None:
                holder.remove(wait)
            if writable:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)


def end_waits(fd: int, holder: list[_Wait]) -> None:
    """Before `fd` is closed: remove the waits' callbacks and wake them with "closed"."""
    if not holder:
        return
    loop = asyncio.get_running_loop()
    for fut, writable in holder:
        if writable:
            loop.remove_writer(fd)
        else:
            loop.remove_reader(fd)
        if not fut.done():
            fut.set_result(False)
    holder.clear()


class SockStream(ByteStream):
    __slots__ = ("_closed", "_fd", "_waiting", "sock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._closed = False
        self._waiting: list[_Wait] = []  # a receive's and a send's, at most

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                data = self.sock.recv(max_bytes)
            except BlockingIOError:
                await wait_fd(self._fd, False, self._waiting)
                continue
            except _BROKEN as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.EndOfStream
            return data

    async def send(self, item: bytes) -> None:
        view = memoryview(item)
        while view:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                sent = self.sock.send(view)
            except BlockingIOError:
                await wait_fd(self._fd, True, self._waiting)
                continue
            except _BROKEN as exc:
                raise anyio.BrokenResourceError from exc
            view = view[sent:]

    async def send_eof(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            end_waits(self._fd, self._waiting)  # a task waiting on this socket: wake it
            self.sock.close()

    def detach(self) -> socket.socket:
        """Hand the socket over; this stream is closed without closing it."""
        self._closed = True
        return self.sock

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self.sock
        return {
            SocketAttribute.family: lambda: sock.family,
            SocketAttribute.local_address: sock.getsockname,
            SocketAttribute.raw_socket: lambda: sock,
            SocketAttribute.remote_address: sock.getpeername,
            SocketAttribute.local_port: lambda: sock.getsockname()[1],
            SocketAttribute.remote_port: lambda: sock.getpeername()[1],
        }


async def connect_ip(host: str, port: int, *, mark: int | None = None) -> SockStream:
    """One non-blocking connect to an IP literal; with `mark`, the socket's packets carry
    that SO_MARK (firewall rules that capture traffic into chainer skip it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mark is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
        err = sock.connect_ex((host, port))
        if err == errno.EINPROGRESS:
            await wait_fd(sock.fileno(), True)
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    except BaseException:
        sock.close()
        raise
    return SockStream(sock)


def listen(
    host: str,
    port: int,
    backlog: int = 4096,
    *,
    transparent: bool = False,
    mark: int | None = None,
) -> socket.socket:
    """A listening socket. `transparent`: IP_TRANSPARENT (and IPV6_TRANSPARENT), so that
    nftables' tproxy may hand it connections addressed elsewhere; `mark`: the SO_MARK of
    the connections it accepts (their packets, replies included, then pass the capture
    rules untouched). Both need CAP_NET_ADMIN (or CAP_NET_RAW)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # [::] takes IPv4 clients too (as ::ffff:a.b.c.d), as squid's and most servers' do.
    dualstack = host == "::" and socket.has_dualstack_ipv6()
    if not transparent and mark is None:
        sock = socket.create_server(
            (host, port), family=family, backlog=backlog, dualstack_ipv6=dualstack
        )
        sock.setblocking(False)
        return sock
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dualstack else 1)
        if transparent:
            _privileged(sock, socket.SOL_IP, socket.IP_TRANSPARENT, 1, "IP_TRANSPARENT")
            if family == socket.AF_INET6:
                _privileged(sock, _SOL_IPV6, _IPV6_TRANSPARENT, 1, "IPV6_TRANSPARENT")
        if mark is not None:
            _privileged(sock, socket.SOL_SOCKET, socket.SO_MARK, mark, "SO_MARK")
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


_SOL_IPV6 = 41  # not in Python's socket module
_IPV6_TRANSPARENT = 75


def _privileged(sock: socket.socket, level: int, option: int, value: int, name: str) -> None:
    try:
        sock.setsockopt(level, option, value)
    except PermissionError:
        # No errno: the message itself is what callers show.
        raise PermissionError(
            f"{name} needs CAP_NET_ADMIN or CAP_NET_RAW (run as root or grant one)"
        ) from None


def check_mark(mark: int) -> None:
    """Raise PermissionError now, with the reason, if sockets cannot carry `mark`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        _privileged(probe, socket.SOL_SOCKET, socket.SO_MARK, mark, "SO_MARK")


async def accept(listener: socket.socket) -> SockStream:
    """The next connection on a listening socket (OSError such as EMFILE passes through)."""
    while True:
        try:
            sock, _ = listener.accept()
        except BlockingIOError:
            await wait_fd(listener.fileno(), False)
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            sock.close()  # reset before we saw it: take the next one
            continue
        return SockStream(sock)
