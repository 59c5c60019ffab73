"""The connections a server has open now, for the admin endpoint's /tunnels and page.

A connection registers once its chain is up and leaves when it ends (spliced tunnels
included: they leave when their tunnel reports its end). Nothing is copied while it
runs: a snapshot reads each connection's access record and live byte counters when the
admin endpoint asks, so /tunnels costs the relay nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .logs import ConnRecord

__all__ = ["Live", "Registry", "TunnelInfo"]


class Live(Protocol):
    """What the registry reads from an open connection."""

    @property
    def record(self) -> ConnRecord: ...

    def traffic(self) -> tuple[int, int]:
        """Bytes moved so far: (client -> upstream, upstream -> client)."""
        ...


@dataclass(frozen=True, slots=True)
class TunnelInfo:
    id: int
    client: str
    destination: str
    route: str
    via: str
    hops: tuple[tuple[str, float], ...]  # (hop, set-up seconds), as the access line
    up: int
    down: int
    age: float  # seconds since the client connected

    def json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "client": self.client,
            "destination": self.destination,
            "route": self.route,
            "via": self.via,
            "hops": [{"hop": name, "ms": round(seconds * 1000, 2)} for name, seconds in self.hops],
            "up": self.up,
            "down": self.down,
            "age": round(self.age, 3),
        }


class Registry:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._open: dict[int, Live] = {}

    def __len__(self) -> int:
        return len(self._open)

    def opened(self, conn: Live) -> None:
        self._open[conn.record.id] = conn

    def closed(self, conn: Live) -> None:
        self._open.pop(conn.record.id, None)

    def snapshot(self) -> list[TunnelInfo]:
        """The open tunnels, oldest first."""
        now = self._clock()
        out = []
        for conn in self._open.values():
            record = conn.record
            up, down = conn.traffic()
            out.append(
                TunnelInfo(
                    record.id,
                    record.client,
                    str(record.target) if record.target else "-",
                    record.route,
                    record.via,
                    tuple((hop.name, hop.seconds) for hop in record.trace),
                    up,
                    down,
                    max(0.0, now - record.started),
                )
            )
        out.sort(key=lambda t: t.id)
        return out
