"""Builds one connection's chain, hop by hop, with per-hop deadlines and failover.

How this works. A chain is a list of hop groups; position k holds the candidates for hop
k+1. `_extend(prev, pos, path)` holds a stream that reaches the last node of `path` and
tries the candidates of position `pos` in the order health gives: for hop 1 that is TCP
(and TLS for https hops); for an inner hop it is a request to the previous hop, sent
through the tunnel built so far. Once the last hop is reached it is asked for the
destination. Every wait (a step, `steps.py`) runs under one cancel scope whose deadline
is the earliest of the limits that apply to it, and the limit that fires names the hop
to blame (the blame table, `blame.py`, words it):

  reach hop 1          hop 1's connect_timeout (TLS included)      -> hop 1
  ask hop k for k+1    hop k's handshake_timeout                     -> hop k
                       hop k+1's connect_timeout (TLS to it incl.)  -> hop k+1
  ask last for dest    the last hop's handshake_timeout             -> the last hop
  any of them          the connection's deadline                    -> the whole attempt

An answer is charged to the hop it is about: hop k's 502 about hop k+1 is a failure of
hop k+1 (as reached from hop k); 407/403 and garbage are hop k's own. A failure charged
to the current position moves on to the next candidate there, after rebuilding the prefix
with the same nodes (a failed CONNECT usually costs the previous hop's connection); a
failure charged to an earlier position unwinds to that position (backtracking); a
position whose candidates are exhausted makes the position before it try its next one.
Every failure is kept, in order, for the client's error and the log line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteStream

from ..errors import ChainerError, ChainFailed, HopError, Refused
from ..models import Address, Proxy, Timeouts, Via
from . import steps
from .blame import DeadlineExceeded, NoneReached, Where, blame
from .health import Health, Trial
from .steps import Deadline, HopTrace, close_now
from .tcp import Screen

__all__ = ["MAX_ATTEMPTS", "Dialed", "Dialer", "HopTrace"]

MAX_ATTEMPTS = 16


@dataclass(slots=True)
class Dialed:
    stream: ByteStream
    via: Via
    trace: tuple[HopTrace, ...]
    attempts: tuple[HopError, ...]  # failures on the way, in order
    skipped: tuple[tuple[int, str], ...] = ()  # (hop index, name) skipped: circuit open
    # With forward=True and an HTTP(S) last hop: the stream reaches that hop, which is to
    # be sent the plain-HTTP request itself rather than asked for a tunnel.
    forward_to: Proxy | None = None


class _Exhausted(ChainerError):
    """Every candidate of one position failed."""

    def __init__(self, only_destination: bool = False) -> None:
        self.only_destination = only_destination  # each failure was the destination's
        super().__init__()


class _BudgetExhausted(ChainerError):
    """The attempt budget ran out: this way is abandoned, the next fallback may run."""


@dataclass(slots=True)
class _Run:
    """State of one dial: the overall deadline, the failures so far, the attempt budget."""

    target: Address
    deadline: Deadline
    attempts: list[HopError] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    denied: set[str] = field(default_factory=set)  # hops that refused us: not asked again
    forward: bool = False  # a plain-HTTP request: an HTTP last hop gets it as is
    forward_to: Proxy | None = None
    tries: int = 0

    def fail(self, error: HopError) -> HopError:
        error.elapsed = anyio.current_time() - self.deadline.started
        self.attempts.append(error)
        return error

    @contextmanager
    def recording(self) -> Iterator[None]:
        """Keep every failure a step raises (a survivor's too) in `attempts`."""
        try:
            yield
        except HopError as exc:
            self.fail(exc)
            raise
        except steps.Survived as exc:
            self.fail(exc.error)
            raise


@dataclass(slots=True)
class _Link:
    """The connection to the last node of the path so far, while one is open."""

    stream: ByteStream | None
    reused: bool = False  # kept from a failed request: the hop may close it any moment


class Dialer:
    def __init__(self, defaults: Timeouts, health: Health | None = None) -> None:
        self.defaults = defaults
        self.health = health or Health()

    async def dial(
        self,
        route: str,
        vias: Sequence[Via],
        target: Address,
        screen: Screen | None = None,
        *,
        forward: bool = False,
    ) -> Dialed:
        """Reach `target` by the first of `vias` that works, within the deadline.
        `screen(ip, port)` vets each address a `direct` connection resolves to (it raises
        Refused to forbid one)."""
        run = _Run(target, Deadline.from_now(self.defaults.deadline), forward=forward)
        for position, via in enumerate(vias):
            if via.kind == "reject":
                if position == 0:
                    raise Refused(f"{route} rejects {target}", route)
                break
            trace: list[HopTrace] = []
            try:
                if via.kind == "direct":
                    stream = await self._direct(run, screen, trace)
                else:
                    stream = await self._extend(via, run, None, 0, [], trace)
            except (_Exhausted, _BudgetExhausted, HopError):
                continue
            except DeadlineExceeded as exc:
                raise ChainFailed(route, run.attempts, str(exc), run.skipped) from None
            forward_to = run.forward_to if via.kind == "chain" else None
            return Dialed(
                stream, via, tuple(trace), tuple(run.attempts), tuple(run.skipped), forward_to
            )
        raise ChainFailed(route, run.attempts, None, run.skipped)

    async def probe(
        self, path: Sequence[Proxy], target: Proxy | Address | None = None
    ) -> tuple[ByteStream, list[HopTrace]]:
        """`steps.probe` within this dialer's deadline (for `chainer check`)."""
        return await steps.probe(path, target, self.defaults.deadline)

    async def _direct(self, run: _Run, screen: Screen | None, trace: list[HopTrace]) -> ByteStream:
        started = anyio.current_time()
        with run.recording():
            stream = await steps.direct(run.target, screen, self.defaults.connect, run.deadline)
        trace.append(HopTrace(0, "direct", anyio.current_time() - started))
        return stream

    async def _extend(
        self,
        via: Via,
        run: _Run,
        prev: ByteStream | None,
        pos: int,
        path: list[Proxy],
        trace: list[HopTrace],
    ) -> ByteStream:
        """Consumes `prev` (a stream that reaches path[-1]); returns one to the destination."""
        if pos == len(via.hops):
            assert prev is not None
            if run.forward and path[-1].scheme in ("http", "https"):
                # An HTTP proxy takes a plain-HTTP request as it is; many (squid's
                # default) refuse to CONNECT to port 80.
                run.forward_to = path[-1]
                return prev
            with run.recording():
                return await steps.ask_destination(prev, path, run.target, run.deadline)
        edge_from = path[-1].name if path else ""
        link = _Link(prev)
        candidates = self.health.candidates(
            via.hops[pos],
            edge_from,
            exclude=frozenset(run.denied),  # as they stand now, when the order is made
            on_skip=lambda proxy: run.skipped.append((pos + 1, proxy.name)),
        )
        # How this position's candidates failed: all "not reached in time through the
        # previous hop" means the previous hop is the silent one. All "the destination is
        # unreachable" means earlier positions need not be retried.
        timeouts = destinations = failures = 0
        try:
            for candidate in candidates:
                with self.health.trial(edge_from, candidate) as trial:
                    if run.tries >= MAX_ATTEMPTS:
                        raise _BudgetExhausted(f"gave up after {MAX_ATTEMPTS} attempts")
                    run.tries += 1
                    try:
                        stream, seconds = await self._next(run, link, path, candidate)
                    except HopError as exc:
                        if not self._charge(run, exc, pos, trial):
                            raise  # the previous hop is at fault: unwind to it
                        failures += 1
                        # no answer at all from the previous hop (not its 504)
                        timeouts += exc.timeout and exc.phase == "connect" and not exc.status
                        continue
                    trial.success(seconds)
                    trace.append(HopTrace(pos + 1, candidate.name, seconds))
                    try:
                        return await self._extend(
                            via, run, stream, pos + 1, [*path, candidate], trace
                        )
                    except _Exhausted as exc:
                        del trace[pos:]
                        failures += 1
                        if exc.only_destination:
                            # The destination failed from every last hop reached through
                            # this candidate; other candidates here would reach the same.
                            raise
                    except HopError as exc:
                        del trace[pos:]
                        if not self._charge(run, exc, pos, trial):
                            raise
                        failures += 1
                        destinations += exc.phase == "destination"
        finally:
            await close_now(link.stream)
        if pos > 0 and failures and timeouts == failures:
            # Not one candidate was reached in time through the previous hop: blame it.
            names = tuple(c.name for c in via.hops[pos].candidates)
            error = blame(NoneReached(names), Where(pos, path[-1].name, "handshake"))
            assert isinstance(error, HopError)
            raise run.fail(error)
        raise _Exhausted(only_destination=bool(failures) and destinations == failures)

    async def _next(
        self, run: _Run, link: _Link, path: list[Proxy], candidate: Proxy
    ) -> tuple[ByteStream, float]:
        """A stream to `candidate` through `link` (rebuilt first when it was lost), and how
        long reaching it took. A hop that answers a failure but keeps its connection
        leaves it in `link`, to ask the next candidate over it."""
        for _ in range(2):  # a kept connection found closed is replaced once
            if link.stream is None and path:
                link.stream = await self._rebuild(run, path)
            prev, reused = link.stream, link.reused
            link.stream, link.reused = None, False  # reach consumes it, whatever happens
            started = anyio.current_time()
            try:
                with run.recording():
                    stream = await steps.reach(prev, path, candidate, run.deadline, reused=reused)
            except steps.Stale:
                continue  # nothing learnt: ask again on a new connection, charging no one
            except steps.Survived as exc:
                link.stream, link.reused = exc.stream, True
                raise exc.error from None
            return stream, anyio.current_time() - started
        raise AssertionError("a rebuilt connection is never stale")  # pragma: no cover

    def _charge(self, run: _Run, error: HopError, pos: int, trial: Trial) -> bool:
        """Charge `error` to the candidate on trial if it is the one at fault; False when
        the fault lies at an earlier position. A failure of the destination (as reported
        by the last hop) is charged to no hop: another last hop may still reach it."""
        if error.index - 1 < pos:
            return False
        if error.index - 1 == pos and error.phase != "destination":
            trial.failure(error.reason, denied=error.denied)
            if error.denied:
                run.denied.add(trial.proxy.name)
        return True

    async def _rebuild(self, run: _Run, path: list[Proxy]) -> ByteStream:
        """Reach the same nodes again after a failure cost us the connection. A failure
        here is charged like any other (and unwinds to the position at fault)."""
        with run.recording():
            return await steps.reach_path(path, run.deadline)
