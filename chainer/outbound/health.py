"""Hop health: which candidates to try, in which order, and which to skip for now.

How this works. Health is kept per *edge* — (the hop we reach a candidate through, the
candidate) — because "bastion cannot be reached from corp" says nothing about reaching
bastion from elsewhere. Hop 1's edges start at "" (this machine).

Each edge has a circuit breaker:

  closed     failures are counted; `max_fails` of them within `fail_window` open it
  open       the edge is skipped until `fail_timeout` has passed
  half-open  one connection may try it (a trial); success closes the breaker, failure
             opens it again for twice as long as last time (capped at 32x fail_timeout)

A group whose every candidate is open is not failed at once: the candidate whose circuit
will close soonest is tried anyway (the one most likely to have recovered). A "denied"
failure (407, 403, SOCKS auth refused) opens the breaker like any other, but is logged as
a configuration problem rather than as a hop going down.

Order within a group comes from its strategy: failover (as listed), round_robin (the
starting point rotates per connection), random (a fresh shuffle per connection), fastest
(lowest moving-average setup time over this edge; the current leader keeps its place
until another candidate is clearly faster, so noise does not make it flap).

A connection asks `candidates(group, via)` for whom to try, in that order, each let
through its breaker only when its turn comes; it tries each inside `trial(via, proxy)`
and reports `success(seconds)` or `failure(reason, denied=...)`. A trial that ends with
neither (cancelled, out of time, failed elsewhere) gives a half-open breaker's one trial
back at once, so the next connection may take it.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Literal

from ..models import HopGroup, Proxy

log = logging.getLogger("chainer.health")

BreakerState = Literal["closed", "open", "half_open"]
_EWMA_WEIGHT = 0.3
_MAX_BACKOFF = 32
_TRIAL_LEASE = 60.0  # a trial whose outcome never came back (cancelled) frees its slot
# fastest: a challenger must beat the leader by this factor and margin to take its place
_FASTEST_FACTOR = 0.8
_FASTEST_MARGIN = 0.002


@dataclass(slots=True)
class Breaker:
    """One edge's circuit breaker, driven by an explicit clock (seconds)."""

    max_fails: int
    fail_window: float
    fail_timeout: float
    state: BreakerState = "closed"
    failures: deque[float] = field(default_factory=deque)
    opened_at: float = 0.0
    open_for: float = 0.0
    backoff: int = 0  # how many times in a row it opened
    trial_since: float | None = None
    last_reason: str = ""

    @property
    def closes_at(self) -> float:
        return self.opened_at + self.open_for

    def allow(self, now: float) -> bool:
        """May a connection try this edge now? (Claims the trial when half-open.)"""
        if self.state == "closed":
            return True
        if self.state == "open":
            if now < self.closes_at:
                return False
            self.state = "half_open"
            self.trial_since = None
        if self.trial_since is not None and now - self.trial_since < _TRIAL_LEASE:
            return False
        self.trial_since = now
        return True

    def force(self, now: float) -> None:
        """Let one connection through although the circuit is open."""
        self.state = "half_open"
        self.trial_since = now

    def success(self) -> bool:
        """Record a success; True when this closed an open or half-open circuit."""
        changed = self.state != "closed"
        self.state = "closed"
        self.failures.clear()
        self.backoff = 0
        self.trial_since = None
        return changed

    def failure(self, now: float, reason: str) -> bool:
        """Record a failure; True when this opened the circuit."""
        self.last_reason = reason
        if self.state == "half_open":
            self._open(now)
            return True
        if self.state == "open":
            return False
        self.failures.append(now)
        while self.failures and self.failures[0] <= now - self.fail_window:
            self.failures.popleft()
        if len(self.failures) >= self.max_fails:
            self._open(now)
            return True
        return False

    def _open(self, now: float) -> None:
        self.state = "open"
        self.opened_at = now
        self.open_for = self.fail_timeout * min(2**self.backoff, _MAX_BACKOFF)
        self.backoff += 1
        self.failures.clear()
        self.trial_since = None


@dataclass(frozen=True, slots=True)
class EdgeHealth:
    """A snapshot of one edge for reports (explain, admin)."""

    via: str
    proxy: str
    state: BreakerState
    latency: float | None
    closes_in: float | None
    last_reason: str


class Health:
    """Per-process hop state shared by every connection of a router."""

    def __init__(
        self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock
        self._turns: dict[HopGroup, int] = {}
        self._latency: dict[tuple[str, str], float] = {}
        self._leader: dict[tuple[str, HopGroup], str] = {}
        self._breakers: dict[tuple[str, str], Breaker] = {}

    # -- order ----------------------------------------------------------------------------

    def order(self, group: HopGroup, via: str = "") -> Sequence[Proxy]:
        """The group's candidates in the order its strategy gives for this connection."""
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
        return self._fastest(group, via)

    def _fastest(self, group: HopGroup, via: str) -> Sequence[Proxy]:
        unmeasured = [p for p in group.candidates if (via, p.name) not in self._latency]
        measured = sorted(
            (p for p in group.candidates if (via, p.name) in self._latency),
            key=lambda p: self._latency[(via, p.name)],
        )
        if measured:
            best = measured[0]
            leader_name = self._leader.get((via, group))
            leader = next((p for p in measured if p.name == leader_name), None)
            if leader is not None and leader is not best:
                lead, challenger = (
                    self._latency[(via, leader.name)],
                    self._latency[(via, best.name)],
                )
                if challenger > lead * _FASTEST_FACTOR - _FASTEST_MARGIN:
                    measured.remove(leader)
                    measured.insert(0, leader)
            self._leader[(via, group)] = measured[0].name
        # Candidates never measured go first, once, so that they get measured.
        return unmeasured + measured

    # -- breakers -------------------------------------------------------------------------

    def _breaker(self, via: str, proxy: Proxy) -> Breaker:
        key = (via, proxy.name)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = Breaker(proxy.max_fails, proxy.fail_window, proxy.fail_timeout)
            self._breakers[key] = breaker
        return breaker

    def candidates(
        self,
        group: HopGroup,
        via: str = "",
        *,
        exclude: Collection[str] = (),
        on_skip: Callable[[Proxy], None] | None = None,
    ) -> Iterator[Proxy]:
        """The group's candidates (by name, less `exclude`) in the order its strategy gives
        for this connection, each let through its breaker when the caller asks for it (a
        half-open one's trial is claimed then, so only the ones tried are claimed). Those
        whose circuit is open are passed over, each told to `on_skip`; when every one was,
        the one whose circuit closes soonest is let through anyway."""
        order = [p for p in self.order(group, via) if p.name not in exclude]
        return self._admit(order, via, on_skip)

    def _admit(
        self, order: Sequence[Proxy], via: str, on_skip: Callable[[Proxy], None] | None
    ) -> Iterator[Proxy]:
        skipped: list[Proxy] = []
        for proxy in order:
            if self.allow(via, proxy):
                yield proxy
                continue
            skipped.append(proxy)
            if on_skip is not None:
                on_skip(proxy)
        if skipped and len(skipped) == len(order):
            # Every candidate's circuit is open: try the one most likely to have recovered.
            yield self._soonest(via, skipped)

    def trial(self, via: str, proxy: Proxy) -> Trial:
        """One connection's try of `proxy` reached through `via`, as a context manager;
        see Trial."""
        return Trial(self, via, proxy)

    def allow(self, via: str, proxy: Proxy) -> bool:
        """May this connection try `proxy` reached through `via` now?"""
        key = (via, proxy.name)
        breaker = self._breakers.get(key)
        return breaker is None or breaker.allow(self._clock())

    def _soonest(self, via: str, proxies: Sequence[Proxy]) -> Proxy:
        """Of candidates whose circuits are all open, the one that will close first;
        it is let through once."""
        chosen = min(proxies, key=lambda p: self._breaker(via, p).closes_at)
        self._breaker(via, chosen).force(self._clock())
        return chosen

    def _release(self, via: str, proxy: Proxy) -> None:
        """A connection let through an edge's breaker learnt nothing about it (it was
        cancelled, ran out of time, or failed elsewhere): free the trial at once."""
        breaker = self._breakers.get((via, proxy.name))
        if breaker is not None:
            breaker.trial_since = None

    def record_success(self, via: str, proxy: Proxy, seconds: float) -> None:
        key = (via, proxy.name)
        old = self._latency.get(key)
        self._latency[key] = seconds if old is None else old + _EWMA_WEIGHT * (seconds - old)
        breaker = self._breakers.get(key)
        if breaker is not None and breaker.success():
            log.info("circuit closed: %s", _edge(via, proxy.name))

    def record_failure(self, via: str, proxy: Proxy, reason: str, *, denied: bool) -> None:
        # A candidate that fails counts as slow for `fastest`, so it is not kept first
        # forever as "unmeasured".
        key = (via, proxy.name)
        self._latency[key] = max(self._latency.get(key, 0.0), proxy.handshake_timeout)
        breaker = self._breaker(via, proxy)
        if breaker.failure(self._clock(), reason):
            what = "denied us (check its credentials or policy)" if denied else "failing"
            log.warning(
                "circuit open: %s %s: %s; skipped for %gs",
                _edge(via, proxy.name),
                what,
                reason,
                breaker.open_for,
            )

    def forget(self, names: set[str]) -> None:
        """Drop what is known about hops whose definition changed (or that are gone): a
        reloaded table starts them afresh; every other hop keeps its health."""
        if not names:
            return
        for table in (self._breakers, self._latency):
            for key in [k for k in table if k[0] in names or k[1] in names]:
                del table[key]

    # -- reports --------------------------------------------------------------------------

    def latency(self, proxy: Proxy, via: str = "") -> float | None:
        return self._latency.get((via, proxy.name))

    def state(self, via: str, proxy: Proxy) -> BreakerState:
        breaker = self._breakers.get((via, proxy.name))
        if breaker is None:
            return "closed"
        if breaker.state == "open" and self._clock() >= breaker.closes_at:
            return "half_open"
        return breaker.state

    def edges(self) -> list[EdgeHealth]:
        now = self._clock()
        keys = sorted(set(self._breakers) | set(self._latency))
        result = []
        for via, name in keys:
            breaker = self._breakers.get((via, name))
            state: BreakerState = "closed" if breaker is None else breaker.state
            closes_in = None
            if breaker is not None and breaker.state == "open":
                closes_in = breaker.closes_at - now
                if closes_in <= 0:  # due a trial: the next connection may try it
                    state, closes_in = "half_open", None
            result.append(
                EdgeHealth(
                    via,
                    name,
                    state,
                    self._latency.get((via, name)),
                    closes_in,
                    "" if breaker is None else breaker.last_reason,
                )
            )
        return result


@dataclass(slots=True)
class Trial:
    """One connection's try of one edge. Its outcome is reported once it is known:
    `success(seconds)` (reached; the latency feeds `fastest`) or `failure(reason,
    denied=...)`. A failure found after the hop was reached (its answer about the next
    hop or the destination) may still follow a success. Leaving the `with` block with no
    outcome reported frees a half-open breaker's trial at once: this connection learnt
    nothing about the edge, and the next one should not wait out the lease."""

    health: Health
    via: str
    proxy: Proxy
    reported: bool = False

    def success(self, seconds: float) -> None:
        self.reported = True
        self.health.record_success(self.via, self.proxy, seconds)

    def failure(self, reason: str, *, denied: bool) -> None:
        self.reported = True
        self.health.record_failure(self.via, self.proxy, reason, denied=denied)

    def __enter__(self) -> Trial:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.reported:
            self.health._release(self.via, self.proxy)


def _edge(via: str, name: str) -> str:
    return f"{name} (from {via})" if via else name
