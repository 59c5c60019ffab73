"""One edge's circuit breaker, driven by an explicit clock (seconds).

  closed     failures are counted; `max_fails` of them within `fail_window` open it
  open       the edge is skipped until `fail_timeout` has passed
  half-open  one connection may try it (a trial); success closes the breaker, failure
             opens it again for twice as long as last time (capped at 32x fail_timeout)

An *episode* runs from the first opening to the next success: `backoff` counts the
openings in it, so the first opening can be reported loudly and the rest quietly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MAX_BACKOFF", "TRIAL_LEASE", "Breaker", "BreakerState"]

BreakerState = Literal["closed", "open", "half_open"]
MAX_BACKOFF = 32
TRIAL_LEASE = 60.0  # a trial whose outcome never came back (cancelled) frees its slot


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
    backoff: int = 0  # how many times it opened in this episode (0: none since a success)
    episode_started: float = 0.0  # when this episode's first opening happened
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
        if self.trial_since is not None and now - self.trial_since < TRIAL_LEASE:
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
        if self.backoff == 0:
            self.episode_started = now
        self.state = "open"
        self.opened_at = now
        self.open_for = self.fail_timeout * min(2**self.backoff, MAX_BACKOFF)
        self.backoff += 1
        self.failures.clear()
        self.trial_since = None
