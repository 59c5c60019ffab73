"""What every step of building a chain shares: the trace of hops used, the connection's
overall deadline and the per-wait limits (each naming the hop it blames), the two signals
that are not failures (`Stale`, `Survived`), and the one way a wait is bounded and its
interruption translated (`bounded`, `translated`). The steps themselves are steps.py."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import anyio
from anyio.abc import ByteStream

from ..errors import HopError
from ..models import Proxy
from .blame import Expired, Where, blame, expired

__all__ = [
    "Deadline",
    "Forward",
    "HopTrace",
    "Limit",
    "Stale",
    "Survived",
    "bounded",
    "close_now",
    "translated",
]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HopTrace:
    """One hop actually used: its position, name and how long reaching it took."""

    index: int
    name: str
    seconds: float


@dataclass(frozen=True, slots=True)
class Deadline:
    """The connection's overall deadline: `total` seconds from `started`."""

    started: float
    total: float

    @classmethod
    def from_now(cls, total: float) -> Deadline:
        return cls(anyio.current_time(), total)

    def limit(self, waiting: Where) -> Limit:
        return Limit(self.started + self.total, Expired(self.total, overall=True), waiting)


@dataclass(frozen=True, slots=True)
class Limit:
    """One deadline on the event loop's clock, and what to blame when it fires."""

    at: float
    cause: Expired
    where: Where


@dataclass(frozen=True, slots=True)
class Forward:
    """A plain-HTTP request to be sent to an HTTP last hop as it is: `head_for(hop)` gives
    the head in absolute form with that hop's own credentials; `body` says whether a body
    follows (then the answer cannot be awaited before it is sent)."""

    head_for: Callable[[Proxy], bytes]
    body: bool = False


class Stale(Exception):
    """A connection kept from a failed request was closed by the hop before it answered
    the next one (the keep-alive race): rebuild it and ask again, charging no one."""


class Survived(Exception):
    """A hop answered a failure about the next hop and kept its connection open: the next
    candidate can be asked over the same connection (failover in place)."""

    def __init__(self, error: HopError, stream: ByteStream) -> None:
        self.error = error
        self.stream = stream


async def close_now(stream: ByteStream | None) -> None:
    """Close at once, even inside a cancelled scope (where an unshielded await would
    raise before the next stream in line got closed)."""
    if stream is not None:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(stream)


async def bounded(limits: Sequence[Limit], fn: Callable[[], Awaitable[T]]) -> T:
    """Run fn under the earliest limit; when that limit fires, raise its error."""
    first = min(limits, key=lambda limit: limit.at)
    with anyio.CancelScope(deadline=first.at):
        return await fn()
    raise expired(first.cause, first.where)


async def translated(limits: Sequence[Limit], where: Where, fn: Callable[[], Awaitable[T]]) -> T:
    """`_bounded`, with whatever else interrupts fn translated by the blame table."""
    try:
        return await bounded(limits, fn)
    except Exception as exc:
        error = blame(exc, where)
        if error is None:
            raise
        raise error from None
