"""What both relay paths report, and the one rule both use to call a tunnel idle.

The idle rule: the byte counters are sampled every quarter of `idle` seconds, and the
tunnel is idle once they have stood still for four samples in a row — so an idle tunnel
is closed between `idle` and 1.25 x `idle` after its last byte. The generic relay samples
from a task (`anyio.sleep`), the splice path from an event-loop timer (`call_later`);
both ask the same `StillCounter`. The generic relay's linger after a TLS end uses the
same counter with one sample of LINGER seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio

IDLE_SAMPLES = 4


class ClientClosed(anyio.BrokenResourceError):
    """The client went away while its request was still being served (a forwarded
    request's answer had not ended): the relay ends at once, upstream side included."""


class BadRequestBody(anyio.BrokenResourceError):
    """The client's request body broke the protocol (a malformed chunk): the exchange
    ends, logged in one line as the client's bad request."""


@dataclass(slots=True)
class RelayResult:
    """What a relay did. The counters move while it runs, so whoever holds the result
    knows the bytes moved even when the relay is cancelled."""

    up: int = 0  # client -> upstream
    down: int = 0  # upstream -> client
    idle_closed: bool = False
    error: str | None = None
    client_closed: bool = False  # the client gave up (ClientClosed)
    bad_request: bool = False  # the client's body was malformed (BadRequestBody)
    shutdown: bool = False  # ended by the server's shutdown, at the end of --grace


@dataclass(slots=True)
class StillCounter:
    """Counts samples in a row in which the (up, down) byte counters did not move."""

    step: float  # seconds between samples
    limit: int  # this many still samples in a row and the tunnel is done
    _last: tuple[int, int] = (-1, -1)
    _still: int = 0

    @classmethod
    def idle(cls, idle: float) -> StillCounter:
        return cls(idle / IDLE_SAMPLES, IDLE_SAMPLES)

    @property
    def window(self) -> float:
        """How long the counters must stand still: the idle time this counter enforces."""
        return self.step * self.limit

    def sample(self, count: Sequence[int]) -> bool:
        """Take one sample; True once the counters stood still `limit` times running."""
        now = (count[0], count[1])
        self._still = self._still + 1 if now == self._last else 0
        self._last = now
        return self._still >= self.limit
