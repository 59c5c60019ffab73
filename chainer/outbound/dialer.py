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

A hop's health hears of success only when the hop has *answered*: reaching hop k is
`reached`, and hop k's trial is told `answered` by the step that reads its answer (the
next hop reached through it, or its answer about the destination, or its answer that
the next hop failed). A generic failure answer from the last hop about the destination
is weighed by health (see health.py) rather than charged.

One budget (`max_attempts`) counts every upstream connection and every request sent to
a hop, prefix rebuilds included, across failovers: a request through a chain whose hops
are all down costs at most that many, not dozens. Each fallback way still gets one try
of its own (its hops and the destination) beyond what was spent before it.

A chain with `pipeline: true` changes only when requests are sent: each stream reaching a
node is handed the plan of what can be asked ahead on it (`pipeline.prime`), and the
steps then read the answers one by one as above. The search, the limits and the charges
are the same.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteStream

from ..errors import ChainerError, ChainFailed, HopError, Refused
from ..models import Address, Proxy, Timeouts, Via
from . import pipeline, steps
from .blame import DeadlineExceeded, NoneReached, Where, blame
from .health import Health, Trial
from .limits import Deadline, Forward, HopTrace, Stale, Survived, close_now
from .resolve import SYSTEM, Resolver
from .ssh import SshSessions
from .tcp import Screen

__all__ = ["MAX_ATTEMPTS", "Dialed", "Dialer", "Forward", "HopTrace"]

MAX_ATTEMPTS = 8  # the default of limits.max_attempts


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
    forward: Forward | None = None  # a plain-HTTP request: an HTTP last hop gets it as is
    forward_to: Proxy | None = None
    budget: int = MAX_ATTEMPTS
    spent: int = 0  # upstream connections opened and requests sent

    def spend(self, cost: int) -> None:
        if self.spent + cost > self.budget:
            raise _BudgetExhausted(f"gave up after {self.spent} upstream attempts")
        self.spent += cost

    def tried(self, pos: int, name: str) -> None:
        """A candidate skipped earlier (circuit open) was tried after all: no longer
        skipped, as far as the log line is concerned."""
        if (pos + 1, name) in self.skipped:
            self.skipped.remove((pos + 1, name))

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
        except Survived as exc:
            self.fail(exc.error)
            raise


@dataclass(slots=True)
class _Link:
    """The connection to the last node of the path so far, while one is open."""

    stream: ByteStream | None
    reused: bool = False  # kept from a failed request: the hop may close it any moment


class Dialer:
    def __init__(
        self,
        defaults: Timeouts,
        health: Health | None = None,
        *,
        max_attempts: int = MAX_ATTEMPTS,
        resolver: Resolver = SYSTEM,
        sessions: SshSessions | None = None,
        mark: int | None = None,
    ) -> None:
        self.defaults = defaults
        self.health = health or Health()
        self.max_attempts = max_attempts
        self.resolver = resolver
        # SSH hops' shared sessions (ssh.py); the ssh-agent is found as ssh finds it.
        self.sessions = sessions if sessions is not None else SshSessions.from_environment()
        self.mark = mark  # SO_MARK on every upstream socket (transparent set-ups' rules skip it)

    async def dial(
        self,
        route: str,
        vias: Sequence[Via],
        target: Address,
        screen: Screen | None = None,
        *,
        forward: Forward | None = None,
    ) -> Dialed:
        """Reach `target` by the first of `vias` that works, within the deadline.
        `screen(ip, port)` vets each address a `direct` connection resolves to (it raises
        Refused to forbid one)."""
        run = _Run(
            target,
            Deadline.from_now(self.defaults.deadline),
            forward=forward,
            budget=self.max_attempts,
        )
        for position, via in enumerate(vias):
            if via.kind == "reject":
                if position == 0:
                    raise Refused(f"{route} rejects {target}", route)
                break
            trace: list[HopTrace] = []
            if position > 0:
                # A fallback always gets one try of its own, whatever the way before it
                # spent; the budget bounds what failover within a way may multiply.
                run.budget = max(run.budget, run.spent + 1 + len(via.hops))
            try:
                if via.kind == "direct":
                    run.spend(1)
                    stream = await self._direct(run, screen, trace)
                else:
                    stream = await self._extend(via, run, None, 0, [], trace, None)
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
        return await steps.probe(
            path, target, self.defaults.deadline, self.sessions, mark=self.mark
        )

    async def _direct(self, run: _Run, screen: Screen | None, trace: list[HopTrace]) -> ByteStream:
        started = anyio.current_time()
        with run.recording():
            stream = await steps.direct(
                run.target, screen, self.defaults.connect, run.deadline, self.resolver, self.mark
            )
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
        parent: Trial | None,
    ) -> ByteStream:
        """Consumes `prev` (a stream that reaches path[-1]); returns one to the destination.
        `parent` is path[-1]'s trial, told `answered` when that hop's answer is read."""
        if pos == len(via.hops):
            assert parent is not None
            run.spend(1)
            with run.recording():
                if prev is None:  # every hop deferred to a session that is gone now
                    prev = await steps.reach_path(
                        path, run.deadline, resolver=self.resolver, sessions=self.sessions
                    )
                if run.forward is not None and path[-1].scheme in ("http", "https"):
                    # An HTTP proxy takes a plain-HTTP request as it is; many (squid's
                    # default) refuse to CONNECT to port 80. Its answer is awaited like
                    # a CONNECT's, so a silent hop fails over in its handshake_timeout.
                    stream = await steps.forward(prev, path, run.target, run.forward, run.deadline)
                    run.forward_to = path[-1]
                else:
                    stream = await steps.ask_destination(
                        prev,
                        path,
                        run.target,
                        run.deadline,
                        resolver=self.resolver,
                        sessions=self.sessions,
                        mark=self.mark,
                    )
            parent.answered()
            return stream
        edge_from = path[-1].name if path else ""
        link = _Link(prev)
        candidates = self.health.candidates(
            via.hops[pos],
            edge_from,
            exclude=frozenset(run.denied),  # as they stand now, when the order is made
            on_skip=lambda proxy: run.skipped.append((pos + 1, proxy.name)),
        )
        target = str(run.target)
        # How this position's candidates failed: all "not reached in time through the
        # previous hop" means the previous hop is the silent one. All "the destination is
        # unreachable" means earlier positions need not be retried.
        timeouts = destinations = failures = 0
        try:
            for candidate in candidates:
                run.tried(pos, candidate.name)
                with self.health.trial(edge_from, candidate) as trial:
                    try:
                        reached, seconds = await self._next(run, link, via, path, candidate)
                    except HopError as exc:
                        if parent is not None and _previous_answered(exc, pos):
                            parent.answered()
                        if not self._charge(run, exc, pos, trial, target):
                            raise  # the previous hop is at fault: unwind to it
                        failures += 1
                        # no answer at all from the previous hop (not its 504)
                        timeouts += exc.timeout and exc.phase == "connect" and not exc.status
                        continue
                    if parent is not None and reached is not None:
                        parent.answered()  # it answered our request for this candidate
                    if reached is not None:  # (None: deferred, not measured)
                        trial.reached(seconds)
                    trace.append(HopTrace(pos + 1, candidate.name, seconds))
                    if via.pipeline and reached is not None:
                        reached = pipeline.prime(
                            reached,
                            candidate,
                            via.hops[pos + 1 :],
                            run.target,
                            forward=run.forward is not None,
                            exclude=run.denied,
                        )
                    try:
                        return await self._extend(
                            via, run, reached, pos + 1, [*path, candidate], trace, trial
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
                        if not self._charge(run, exc, pos, trial, target):
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
        self, run: _Run, link: _Link, via: Via, path: list[Proxy], candidate: Proxy
    ) -> tuple[ByteStream | None, float]:
        """A stream to `candidate` through `link` (rebuilt first when it was lost), and how
        long reaching it took. A hop that answers a failure but keeps its connection
        leaves it in `link`, to ask the next candidate over it.

        SSH sessions change this in two ways. A candidate through which a live session of
        a later SSH hop of this chain runs is not reached now (None, "deferred"): that
        hop's tunnels need nothing but its session, and if they do after all, the path
        is rebuilt then. And an SSH candidate is given no rebuilt path: its step rebuilds
        one only if it has no session to use."""
        if self.sessions.carries([*path, candidate], via.hops):
            await close_now(link.stream)  # (a survivor kept for this position)
            link.stream, link.reused = None, False
            return None, 0.0
        for _ in range(2):  # a kept connection found closed is replaced once
            lazy = candidate.scheme == "ssh"
            if link.stream is None and path and not lazy:
                run.spend(len(path))
                link.stream = await self._rebuild(run, path)
            elif link.stream is None and path and self.sessions.live(path, candidate) is None:
                run.spend(len(path))  # (the ssh step rebuilds it, if no one else builds)
            run.spend(1)
            prev, reused = link.stream, link.reused
            link.stream, link.reused = None, False  # reach consumes it, whatever happens
            started = anyio.current_time()
            try:
                with run.recording():
                    stream = await steps.reach(
                        prev,
                        path,
                        candidate,
                        run.deadline,
                        reused=reused,
                        resolver=self.resolver,
                        sessions=self.sessions,
                        mark=self.mark,
                    )
            except Stale:
                continue  # nothing learnt: ask again on a new connection, charging no one
            except Survived as exc:
                link.stream, link.reused = exc.stream, True
                raise exc.error from None
            return stream, anyio.current_time() - started
        raise AssertionError("a rebuilt connection is never stale")  # pragma: no cover

    def _charge(self, run: _Run, error: HopError, pos: int, trial: Trial, target: str) -> bool:
        """Charge `error` to the candidate on trial if it is the one at fault; False when
        the fault lies at an earlier position. A failure of the destination (as reported
        by the last hop) is charged to no hop — another last hop may still reach it — but
        it is an answer; a generic one is weighed by health instead."""
        if error.index - 1 < pos:
            return False
        if error.index - 1 != pos:
            return True
        if error.phase != "destination":
            trial.failure(error.reason, denied=error.denied)
            if error.denied:
                run.denied.add(trial.proxy.name)
        elif not error.generic:
            trial.answered()
        elif trial.generic_failure(target, error.reason):
            error.generic = False  # charged: it is the hop's, as far as anyone can tell
        return True

    async def _rebuild(self, run: _Run, path: list[Proxy]) -> ByteStream:
        """Reach the same nodes again after a failure cost us the connection. A failure
        here is charged like any other (and unwinds to the position at fault)."""
        with run.recording():
            return await steps.reach_path(
                path,
                run.deadline,
                resolver=self.resolver,
                sessions=self.sessions,
                mark=self.mark,
            )


def _previous_answered(error: HopError, pos: int) -> bool:
    """Did the hop before position `pos` answer, given this failure of the candidate at
    `pos`? Yes when its answer is what failed the candidate (an HTTP status or SOCKS code
    about it) or when TLS or SSH with the candidate had begun (so the tunnel was
    granted)."""
    return error.index == pos + 1 and (error.status is not None or error.phase in ("tls", "ssh"))
