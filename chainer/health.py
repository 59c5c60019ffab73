"""Which candidate of a hop group to try first.

This is the selection half of hop health: the order in which a group's candidates are
tried for one connection. Strategies: failover (as listed), round_robin (rotate the
starting point per connection), random (a fresh shuffle per connection), fastest (lowest
moving-average handshake latency first; candidates never measured keep their listed order
ahead of slower measured ones so they get measured).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .models import HopGroup, Proxy

_EWMA_WEIGHT = 0.3


class Health:
    """Per-process hop state shared by every connection of a router."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()
        self._turns: dict[HopGroup, int] = {}
        self._latency: dict[str, float] = {}

    def order(self, group: HopGroup) -> Sequence[Proxy]:
        candidates = group.candidates
        if len(candidates) == 1 or group.strategy == "failover":
            return candidates
        if group.strategy == "round_robin":
            turn = self._turns.get(group, 0)
            self._turns[group] = turn + 1
            start = turn % len(candidates)
            return candidates[start:] + candidates[:start]
        if group.strategy == "random":
            shuffled = list(candidates)
            self._rng.shuffle(shuffled)
            return shuffled
        # fastest: unmeasured first (in listed order), then by latency
        return sorted(candidates, key=lambda p: self._latency.get(p.name, -1.0))

    def record_success(self, proxy: Proxy, seconds: float) -> None:
        old = self._latency.get(proxy.name)
        new = seconds if old is None else old + _EWMA_WEIGHT * (seconds - old)
        self._latency[proxy.name] = new

    def latency(self, proxy: Proxy) -> float | None:
        return self._latency.get(proxy.name)
