"""Resolving names for `direct` routes (and hop addresses given as names), so that one
slow zone cannot stall everyone else's lookups.

How this works. The system resolver (`getaddrinfo`: hosts file, nsswitch, resolv.conf)
blocks a thread for as long as a DNS server takes to answer or not; asyncio's default
pool has a handful of threads, so a few names under a zone whose server never answers
used to hold every thread for seconds, and unrelated clients failed with 504. Here:

  - lookups run on a pool of their own (`total` threads), never the loop's default one;
  - at most `per_zone` lookups run at once for names of one zone (the registrable part
    of the name: `example.com`, `example.co.uk`), so a zone that never answers holds at
    most that many threads, whatever is asked under it;
  - concurrent lookups of the same name (and port and family) share one;
  - a connection that gives up stops waiting at once; its lookup, which no one can stop
    inside getaddrinfo, keeps its thread and its zone's slot until it returns, so the
    bounds hold even for abandoned lookups.

Runs on asyncio (as chainer does): the pool is a concurrent.futures executor and the
bookkeeping lives on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["SYSTEM", "Resolver", "zone_of"]

AddrInfo = list[tuple[Any, ...]]
GetAddrInfo = Callable[..., AddrInfo]

_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "gov", "edu", "ac", "or", "ne", "go"})


def zone_of(host: str) -> str:
    """The part of a name one DNS operator most likely answers for: the last two labels,
    or three when the second-to-last is a generic second level (`example.co.uk`)."""
    labels = host.rstrip(".").split(".")
    keep = 3 if len(labels) >= 3 and (labels[-2] in _SECOND_LEVEL or len(labels[-2]) <= 2) else 2
    return ".".join(labels[-keep:])


class Resolver:
    def __init__(
        self,
        *,
        total: int = 64,
        per_zone: int = 4,
        getaddrinfo: GetAddrInfo | None = None,
    ) -> None:
        self.total = total
        self.per_zone = per_zone
        # Looked up at call time by default, so a test's monkeypatched socket.getaddrinfo
        # (a fake DNS) is what runs.
        self._getaddrinfo = getaddrinfo
        self._pool: ThreadPoolExecutor | None = None
        self._zones: dict[str, asyncio.Semaphore] = {}
        self._busy: dict[str, int] = {}  # lookups holding or waiting for a zone's slots
        self._flights: dict[tuple[str, int, int], asyncio.Future[AddrInfo]] = {}

    async def getaddrinfo(
        self, host: str, port: int | None, family: int = 0, type: int = socket.SOCK_STREAM
    ) -> AddrInfo:
        key = (host, port or 0, family)
        flight = self._flights.get(key)
        if flight is None:
            zone = zone_of(host)
            slots = self._zones.get(zone)
            if slots is None:
                slots = self._zones[zone] = asyncio.Semaphore(self.per_zone)
            self._busy[zone] = self._busy.get(zone, 0) + 1
            try:
                await slots.acquire()
            except BaseException:
                self._leave(zone)
                raise
            flight = self._flights.get(key)  # another caller may have started it meanwhile
            if flight is None:
                flight = self._start(key, host, port, family, type, zone, slots)
            else:
                slots.release()
                self._leave(zone)
        # Shielded: a waiter that gives up must not cancel the lookup others share.
        return await asyncio.shield(flight)

    def _start(
        self,
        key: tuple[str, int, int],
        host: str,
        port: int | None,
        family: int,
        type: int,
        zone: str,
        slots: asyncio.Semaphore,
    ) -> asyncio.Future[AddrInfo]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.total, thread_name_prefix="chainer-dns")
        lookup = self._getaddrinfo or socket.getaddrinfo
        call = functools.partial(lookup, host, port, family, type)
        flight = asyncio.get_running_loop().run_in_executor(self._pool, call)
        self._flights[key] = flight

        def landed(done: asyncio.Future[AddrInfo]) -> None:
            # Only now, when getaddrinfo has returned, are its thread and slot free.
            if not done.cancelled():
                done.exception()  # seen here, if every waiter gave up: no "never retrieved"
            self._flights.pop(key, None)
            slots.release()
            self._leave(zone)

        flight.add_done_callback(landed)
        return flight

    def _leave(self, zone: str) -> None:
        left = self._busy[zone] - 1
        if left:
            self._busy[zone] = left
        else:
            del self._busy[zone]
            del self._zones[zone]  # memory stays bounded by the zones in use

    def close(self) -> None:
        """Stop the pool (lookups still running finish on their own threads)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


# The process's resolver unless a Dialer is given another: one bounded pool for everyone.
SYSTEM = Resolver()
