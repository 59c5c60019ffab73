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
through its breaker only when its turn comes; it tries each inside `trial(via, proxy)`.
What counts as a success is the hop *answering*: reaching it (TCP, TLS, or the previous
hop's CONNECT answer) is only `reached(seconds)`; the breaker closes and the set-up
latency is recorded when the hop's own answer to our request has been read
(`answered()`). A hop that accepts TCP and then stays silent, answers garbage or cuts its
reply therefore never closes its breaker, which keeps doubling its open time.
`failure(reason, denied=...)` reports the hop's own failure. A trial that ends with no
outcome (cancelled, out of time, failed elsewhere) gives a half-open breaker's one trial
back at once, so the next connection may take it.

Latency and failures are kept apart: the moving average is made of successful set-ups
only, and failures are counted beside it (`/hops`, `explain --live`); `fastest` orders
the candidates that failed since their last success after the others.

A generic failure answer from a last hop about a destination (microsocks' 0x01,
tinyproxy's 500: "could not connect", with no word on why) is the destination's problem,
not the hop's, until the same hop has given one for GENERIC_SUSPECT different
destinations with no successful answer in between: then it is charged to the hop, which
has most likely lost its own way out. So one mistyped name cannot take a healthy hop
down, and a hop that fails every destination is still found out.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType

from ..models import HopGroup, Proxy
from .breaker import Breaker, BreakerState

log = logging.getLogger("chainer.health")

_EWMA_WEIGHT = 0.3
GENERIC_SUSPECT = 3  # distinct destinations failed generically before the hop is blamed
# fastest: a challenger must beat the leader by this factor and margin to take its place
_FASTEST_FACTOR = 0.8
_FASTEST_MARGIN = 0.002


@dataclass(frozen=True, slots=True)
class EdgeHealth:
    """A snapshot of one edge for reports (explain, admin). `latency`: the moving average
    of successful set-ups; `failures`: failures since the last success."""

    via: str
    proxy: str
    state: BreakerState
    latency: float | None
    closes_in: float | None
    last_reason: str
    failures: int = 0


class Health:
    """Per-process hop state shared by every connection of a router."""

    def __init__(
        self, rng: random.Random | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._rng = rng or random.Random()
        self._clock = clock
        self._turns: dict[HopGroup, int] = {}
        self._latency: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str], int] = {}  # since the last success
        self._generic: dict[tuple[str, str], set[str]] = {}  # destinations, since a success
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
        failing = [p for p in group.candidates if self._failures.get((via, p.name))]
        healthy = [p for p in group.candidates if p not in failing]
        unmeasured = [p for p in healthy if (via, p.name) not in self._latency]
        measured = sorted(
            (p for p in healthy if (via, p.name) in self._latency),
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
        # Candidates never measured go first, once, so that they get measured; those that
        # failed since their last success go last, fastest first.
        failing.sort(key=lambda p: self._latency.get((via, p.name), float("inf")))
        return unmeasured + measured + failing

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

    def record_success(self, via: str, proxy: Proxy, seconds: float | None) -> None:
        """The hop answered our request; `seconds` is how long reaching it took (None when
        not measured)."""
        key = (via, proxy.name)
        if seconds is not None:
            old = self._latency.get(key)
            self._latency[key] = seconds if old is None else old + _EWMA_WEIGHT * (seconds - old)
        self._failures.pop(key, None)
        self._generic.pop(key, None)
        breaker = self._breakers.get(key)
        if breaker is None:
            return
        opened, since = breaker.backoff, breaker.episode_started
        if breaker.success() and opened:
            log.info(
                "circuit closed: %s answered again (down %.0fs, opened %d time%s)",
                _edge(via, proxy.name),
                self._clock() - since,
                opened,
                "" if opened == 1 else "s",
            )

    def record_failure(self, via: str, proxy: Proxy, reason: str, *, denied: bool) -> None:
        key = (via, proxy.name)
        self._failures[key] = self._failures.get(key, 0) + 1
        breaker = self._breaker(via, proxy)
        if not breaker.failure(self._clock(), reason):
            return
        edge = _edge(via, proxy.name)
        if breaker.backoff > 1:
            # The same episode: said once, at the first opening; the rest is detail.
            log.debug("circuit open again: %s: %s; skipped for %gs", edge, reason, breaker.open_for)
            return
        what = "denied us (check its credentials or policy)" if denied else "failing"
        log.warning(
            "circuit open: %s %s: %s; skipped for %gs", edge, what, reason, breaker.open_for
        )

    def generic_failure(self, via: str, proxy: Proxy, destination: str) -> bool:
        """A generic failure answer about `destination`. True when the hop has now given
        one for GENERIC_SUSPECT different destinations since its last success: the
        caller should charge the hop itself."""
        seen = self._generic.setdefault((via, proxy.name), set())
        if len(seen) < 4 * GENERIC_SUSPECT:  # bounded: only the count matters
            seen.add(destination)
        return len(seen) >= GENERIC_SUSPECT

    def forget(self, names: set[str]) -> None:
        """Drop what is known about hops whose definition changed (or that are gone): a
        reloaded table starts them afresh; every other hop keeps its health."""
        if not names:
            return
        tables: tuple[dict[tuple[str, str], object], ...] = (
            self._breakers,  # type: ignore[assignment]
            self._latency,
            self._failures,
            self._generic,
        )
        for table in tables:
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
        keys = sorted(set(self._breakers) | set(self._latency) | set(self._failures))
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
                    self._failures.get((via, name), 0),
                )
            )
        return result


@dataclass(slots=True)
class Trial:
    """One connection's try of one edge. `reached(seconds)` when the hop can be spoken to
    (the set-up time is kept, not yet recorded); `answered()` once its answer to our
    request has been read, which is the success; or `failure(reason, denied=...)`.
    `success(seconds)` is both at once. Leaving the `with` block with no outcome reported
    frees a half-open breaker's trial at once: this connection learnt nothing about the
    edge, and the next one should not wait out the lease."""

    health: Health
    via: str
    proxy: Proxy
    reported: bool = False
    seconds: float | None = None

    def reached(self, seconds: float) -> None:
        self.seconds = seconds

    def answered(self) -> None:
        if not self.reported:
            self.reported = True
            self.health.record_success(self.via, self.proxy, self.seconds)

    def success(self, seconds: float) -> None:
        self.reached(seconds)
        self.answered()

    def failure(self, reason: str, *, denied: bool) -> None:
        self.reported = True
        self.health.record_failure(self.via, self.proxy, reason, denied=denied)

    def generic_failure(self, destination: str, reason: str) -> bool:
        """A generic failure answer about `destination` (see Health.generic_failure):
        True when it was charged to the hop."""
        if not self.health.generic_failure(self.via, self.proxy, destination):
            return False
        self.failure(f"{reason} (generic failures for several destinations)", denied=False)
        return True

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
