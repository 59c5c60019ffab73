"""Notice a client that goes away while its chain is being built.

A chain can take seconds to build (timeouts, failover). A client that gives up meanwhile
should be logged as `client_closed`, not as a tunnel that worked, and one whose
connection was reset should stop that work at once. The client's socket is watched with
a readiness callback (no task): when it becomes readable, one byte is peeked.

  - a reset: the client is gone for sure; the scope the dial runs in is cancelled (the
    half-built chain is closed by the cancel) and `closed` is set;
  - an end of stream: `half_closed` is set, and nothing else — a client may well send its
    request (and early data) and then half-close while it waits for the answer, which it
    is still owed (squid's `half_closed_clients on`); whether it was still there is known
    once the answer is sent;
  - bytes (early data sent after the request): left where they are.

Watching stops at the first of these. A TLS client is not watched (its socket's bytes
are records that only the TLS layer can read).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio

from ..relay.sockstream import SockStream

__all__ = ["CloseWatch", "watch_for_close"]


@dataclass(eq=False)
class CloseWatch:
    closed: bool = False  # reset while the dial ran: it was cancelled
    half_closed: bool = False  # the client sent its end of stream before our answer
    scope: anyio.CancelScope | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _fd: int = -1

    def _check(self) -> None:
        try:
            peeked = self._sock.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            self._stop()
            self.closed = True
            if self.scope is not None:
                self.scope.cancel()
            return
        self._stop()
        self.half_closed = not peeked

    def _stop(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None

    _sock: socket.socket = field(init=False)


@contextmanager
def watch_for_close(client: SockStream | None) -> Iterator[CloseWatch]:
    """Run the block in a scope that is cancelled if `client` closes; `.closed` says
    whether that happened. None: no watching (the block just runs, with no scope)."""
    loop = _running_asyncio_loop()
    if client is None or loop is None or client.sock.fileno() < 0:
        yield CloseWatch()
        return
    watch = CloseWatch(scope=anyio.CancelScope())
    assert watch.scope is not None
    with watch.scope:
        watch._sock, watch._fd, watch._loop = client.sock, client.sock.fileno(), loop
        loop.add_reader(watch._fd, watch._check)
        try:
            yield watch
        finally:
            watch._stop()


def _running_asyncio_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None  # trio: no readiness callbacks; the dial is simply not watched
