"""Slowing down repeated wrong logins from one address.

A listener with `auth:` is a password oracle: every wrong login is answered at once, so
guessing is as fast as the network. Here the first few failures from an address within a
minute are answered at once (people mistype); after that each refusal waits, twice as
long each time up to 8 s, and a correct login from that address forgets its failures.
The wait is spent only on the failing connection (nobody else waits), and memory is
bounded: the oldest addresses are forgotten first.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["LoginThrottle"]

FREE = 3  # failures within WINDOW answered at once
WINDOW = 60.0
FIRST_DELAY = 0.5
MAX_DELAY = 8.0
MAX_ADDRESSES = 10_000


class LoginThrottle:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def failed(self, client: str) -> float:
        """Record a wrong login from `client`; the seconds its refusal should wait."""
        now = self._clock()
        recent = self._failures.pop(client, None) or deque()
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        recent.append(now)
        if len(recent) > 4 * FREE + 8:
            recent.popleft()  # only the count matters, and only up to the cap
        self._failures[client] = recent  # re-inserted: the newest at the end
        if len(self._failures) > MAX_ADDRESSES:
            del self._failures[next(iter(self._failures))]
        extra = len(recent) - FREE
        return 0.0 if extra <= 0 else min(FIRST_DELAY * 2 ** (extra - 1), MAX_DELAY)

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
