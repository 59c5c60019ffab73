"""Builds one connection's chain, hop by hop, with per-hop deadlines and failover.

How this works. A chain is a list of hop groups; position k holds the candidates for hop
k+1. `_extend(prev, pos, path)` holds a stream that reaches the last node of `path` and
tries the candidates of position `pos` in the order health gives: for hop 1 that is TCP
(and TLS for https hops); for an inner hop it is a request to the previous hop, sent
through the tunnel built so far. Once the last hop is reached it is asked for the
destination. Every wait runs under one cancel scope whose deadline is the earliest of the
limits that apply to it, and the limit that fires names the hop to blame:

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

import errno
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import anyio
from anyio.abc import ByteStream

from ..errors import (
    ChainerError,
    ChainFailed,
    HopAnswer,
    HopClosed,
    HopError,
    HopProtocolError,
    HopTimeout,
    HopUnreachable,
    Refused,
)
from ..models import Address, Proxy, Timeouts, Via
from ..text import fmt_seconds, transport_reason
from . import connectors, tcp
from .health import Health

T = TypeVar("T")

_TRANSPORT_ERRORS = (OSError, anyio.EndOfStream, anyio.BrokenResourceError)
MAX_ATTEMPTS = 16


@dataclass(frozen=True, slots=True)
class HopTrace:
    """One hop actually used: its position, name and how long reaching it took."""

    index: int
    name: str
    seconds: float


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


class _DeadlineExceeded(ChainerError):
    pass


class _Exhausted(ChainerError):
    """Every candidate of one position failed."""

    def __init__(self, only_destination: bool = False) -> None:
        self.only_destination = only_destination  # each failure was the destination's
        super().__init__()


class _BudgetExhausted(ChainerError):
    """The attempt budget ran out: this way is abandoned, the next fallback may run."""


class _Stale(Exception):
    """A connection kept from a failed request was closed by the hop before it answered
    the next one (the keep-alive race): rebuild it and ask again, charging no one."""


class _Survived(Exception):
    """A hop answered a failure about the next hop and kept its connection open: the next
    candidate can be asked over the same connection (failover in place)."""

    def __init__(self, error: HopError, stream: ByteStream) -> None:
        self.error = error
        self.stream = stream


@dataclass(slots=True)
class _Run:
    """State of one dial: the overall deadline, the failures so far, the attempt budget."""

    target: Address
    started: float
    total: float
    attempts: list[HopError] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    denied: set[str] = field(default_factory=set)  # hops that refused us: not asked again
    forward: bool = False  # a plain-HTTP request: an HTTP last hop gets it as is
    forward_to: Proxy | None = None
    tries: int = 0

    @property
    def deadline(self) -> float:
        return self.started + self.total

    def overall(self, waiting_for: str) -> tuple[float, Callable[[], ChainerError]]:
        return self.deadline, lambda: _DeadlineExceeded(
            f"deadline {fmt_seconds(self.total)} exceeded waiting for {waiting_for}"
        )

    def fail(self, error: HopError) -> HopError:
        error.elapsed = anyio.current_time() - self.started
        self.attempts.append(error)
        return error


Limit = tuple[float, Callable[[], ChainerError]]


async def _bounded(limits: Sequence[Limit], fn: Callable[[], Awaitable[T]]) -> T:
    """Run fn under the earliest limit; when that limit fires, raise its error."""
    at, make_error = min(limits, key=lambda limit: limit[0])
    with anyio.CancelScope(deadline=at):
        return await fn()
    raise make_error()


def _connect_status(exc: BaseException) -> str:
    """The RFC 9209 error type for a failed TCP connect."""
    errnos = set()
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return "dns_error"
        if isinstance(cause, OSError) and cause.errno:
            errnos.add(cause.errno)
        cause = cause.__cause__
    if errnos & {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return "destination_ip_unroutable"
    if errno.ECONNREFUSED in errnos:
        return "connection_refused"
    return "destination_unavailable"


async def _close(stream: ByteStream | None) -> None:
    """Close at once, even inside a cancelled scope (where an unshielded await would
    raise before the next stream in line got closed)."""
    if stream is not None:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(stream)


class Dialer:
    def __init__(self, defaults: Timeouts, health: Health | None = None) -> None:
        self.defaults = defaults
        self.health = health or Health()

    async def dial(
        self,
        route: str,
        vias: Sequence[Via],
        target: Address,
        screen: tcp.Screen | None = None,
        *,
        forward: bool = False,
    ) -> Dialed:
        """Reach `target` by the first of `vias` that works, within the deadline.
        `screen(ip, port)` vets each address a `direct` connection resolves to (it raises
        Refused to forbid one)."""
        run = _Run(target, anyio.current_time(), self.defaults.deadline, forward=forward)
        for position, via in enumerate(vias):
            if via.kind == "reject":
                if position == 0:
                    raise Refused(f"{route} rejects {target}", route)
                break
            try:
                if via.kind == "direct":
                    stream, trace = await self._direct(run, screen)
                else:
                    stream, trace = await self._chain(via, run)
            except (_Exhausted, _BudgetExhausted, HopError):
                continue
            except _DeadlineExceeded as exc:
                raise ChainFailed(route, run.attempts, str(exc), run.skipped) from None
            forward_to = run.forward_to if via.kind == "chain" else None
            return Dialed(
                stream, via, tuple(trace), tuple(run.attempts), tuple(run.skipped), forward_to
            )
        raise ChainFailed(route, run.attempts, None, run.skipped)

    async def _direct(
        self, run: _Run, screen: tcp.Screen | None
    ) -> tuple[ByteStream, list[HopTrace]]:
        target = run.target
        started = anyio.current_time()
        timeout = self.defaults.connect
        limits = [
            (
                started + timeout,
                lambda: run.fail(
                    HopTimeout(
                        0,
                        "direct",
                        "connect",
                        f"{target} not reached in {fmt_seconds(timeout)}",
                        proxy_status="connection_timeout",
                    )
                ),
            ),
            run.overall(f"a direct connection to {target}"),
        ]
        try:
            stream = await _bounded(limits, lambda: tcp.open_direct(target, screen))
        except HopError:
            raise  # a limit fired (HopTimeout is an OSError too)
        except OSError as exc:
            raise run.fail(
                HopUnreachable(
                    0,
                    "direct",
                    "connect",
                    f"{target}: {transport_reason(exc)}",
                    proxy_status=_connect_status(exc),
                )
            ) from None
        return stream, [HopTrace(0, "direct", anyio.current_time() - started)]

    async def _chain(self, via: Via, run: _Run) -> tuple[ByteStream, list[HopTrace]]:
        trace: list[HopTrace] = []
        stream = await self._extend(via, run, None, 0, [], trace)
        return stream, trace

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
            return await self._ask_destination(run, prev, path)
        edge_from = path[-1].name if path else ""
        queue = [c for c in self.health.order(via.hops[pos], edge_from) if c.name not in run.denied]
        skipped: list[Proxy] = []
        tried = 0
        reused = False  # prev is a hop connection kept from a failed request
        admitted: Proxy | None = None  # to be asked again: already let through its breaker
        # How this position's candidates failed: all "not reached in time through the
        # previous hop" means the previous hop is the silent one. All "the destination is
        # unreachable" means earlier positions need not be retried.
        timeouts = destinations = failures = 0
        try:
            while queue or admitted or (skipped and not tried):
                if admitted is not None:
                    candidate, admitted = admitted, None
                elif queue:
                    candidate = queue.pop(0)
                    if not self.health.allow(edge_from, candidate):
                        skipped.append(candidate)
                        run.skipped.append((pos + 1, candidate.name))
                        continue
                else:
                    # Every candidate's circuit is open: try the one most likely to recover.
                    candidate = self.health.soonest(edge_from, skipped)
                    skipped = []
                tried += 1
                if run.tries >= MAX_ATTEMPTS:
                    self.health.release(edge_from, candidate)
                    raise _BudgetExhausted(f"gave up after {MAX_ATTEMPTS} attempts")
                run.tries += 1
                outcome: HopError | None = None
                settled = False
                try:
                    if prev is None and pos > 0:
                        prev = await self._rebuild(run, path)
                    started = anyio.current_time()
                    try:
                        stream = await self._reach(run, prev, path, candidate, reused=reused)
                    except _Stale:
                        prev, reused, admitted = None, False, candidate
                        run.tries -= 1
                        settled = True  # nothing learnt; asked again at once
                        continue
                    except _Survived as exc:
                        prev, reused = exc.stream, True  # hop `pos` still listens: ask again
                        outcome = exc.error
                    except HopError as exc:
                        prev, reused = None, False
                        outcome = exc
                    if outcome is not None:
                        if not self._charge(run, outcome, pos, edge_from, candidate):
                            raise outcome  # the previous hop is at fault: unwind to it
                        settled = True
                        failures += 1
                        # no answer at all from the previous hop (not its 504)
                        timeouts += (
                            outcome.timeout and outcome.phase == "connect" and not outcome.status
                        )
                        continue
                    prev, reused = None, False
                    seconds = anyio.current_time() - started
                    self.health.record_success(edge_from, candidate, seconds)
                    settled = True
                finally:
                    if not settled:
                        self.health.release(edge_from, candidate)
                trace.append(HopTrace(pos + 1, candidate.name, seconds))
                try:
                    return await self._extend(via, run, stream, pos + 1, [*path, candidate], trace)
                except _Exhausted as exc:
                    del trace[pos:]
                    failures += 1
                    if exc.only_destination:
                        # The destination failed from every last hop reached through this
                        # candidate; other candidates here would reach the same last hops.
                        raise
                    continue  # no way on from this candidate: backtrack
                except HopError as exc:
                    del trace[pos:]
                    if not self._charge(run, exc, pos, edge_from, candidate):
                        raise
                    failures += 1
                    destinations += exc.phase == "destination"
                    continue
        except BaseException:
            await _close(prev)
            raise
        await _close(prev)
        if pos > 0 and failures and timeouts == failures:
            # Not one candidate was reached in time through the previous hop: blame it.
            hop = path[-1]
            names = ", ".join(c.name for c in via.hops[pos].candidates)
            raise run.fail(
                HopTimeout(
                    pos,
                    hop.name,
                    "handshake",
                    f"no answer about any next hop ({names})",
                    proxy_status="connection_read_timeout",
                )
            )
        raise _Exhausted(only_destination=bool(failures) and destinations == failures)

    def _charge(
        self, run: _Run, error: HopError, pos: int, edge_from: str, candidate: Proxy
    ) -> bool:
        """Charge `error` to `candidate` if it is the one at fault; False when the fault
        lies at an earlier position. A failure of the destination (as reported by the
        last hop) is charged to no hop: another last hop may still reach it."""
        if error.index - 1 < pos:
            return False
        if error.index - 1 == pos and error.phase != "destination":
            self.health.record_failure(edge_from, candidate, error.reason, denied=error.denied)
            if error.denied:
                run.denied.add(candidate.name)
        elif error.index - 1 == pos:
            self.health.release(edge_from, candidate)
        return True

    async def probe(
        self, path: Sequence[Proxy], target: Proxy | Address | None = None
    ) -> tuple[ByteStream, list[HopTrace]]:
        """Reach every node of `path` in order — hop 1 directly, each next one through the
        ones before — then, if given, `target` (one more hop, or a destination asked of the
        last hop). No failover: the first failure raises HopError (or ChainFailed when the
        deadline ran out). For `chainer check`; the caller closes the stream."""
        run = _Run(
            Address("0.0.0.0", 1) if not isinstance(target, Address) else target,
            anyio.current_time(),
            self.defaults.deadline,
        )
        nodes = [*path, target] if isinstance(target, Proxy) else list(path)
        trace: list[HopTrace] = []
        stream: ByteStream | None = None
        try:
            for pos, proxy in enumerate(nodes):
                started = anyio.current_time()
                stream = await self._reach(run, stream, nodes[:pos], proxy)
                trace.append(HopTrace(pos + 1, proxy.name, anyio.current_time() - started))
            if isinstance(target, Address):
                assert stream is not None
                started = anyio.current_time()
                stream = await self._ask_destination(run, stream, nodes)
                trace.append(HopTrace(len(nodes) + 1, str(target), anyio.current_time() - started))
        except _DeadlineExceeded as exc:
            raise ChainFailed("check", run.attempts, str(exc)) from None
        except _Survived as exc:
            await _close(exc.stream)
            raise exc.error from None
        assert stream is not None
        return stream, trace

    async def _rebuild(self, run: _Run, path: list[Proxy]) -> ByteStream:
        """Reach the same nodes again after a failure cost us the connection. A failure
        here is charged like any other (and unwinds to the position at fault)."""
        stream: ByteStream | None = None
        for pos, proxy in enumerate(path):
            try:
                stream = await self._reach(run, stream, path[:pos], proxy)
            except _Survived as exc:
                await _close(exc.stream)
                raise exc.error from None
            except _Stale:  # pragma: no cover - a rebuild never reuses a connection
                raise AssertionError("stale connection in a rebuild") from None
        assert stream is not None
        return stream

    async def _reach(
        self,
        run: _Run,
        prev: ByteStream | None,
        path: list[Proxy],
        proxy: Proxy,
        *,
        reused: bool = False,
    ) -> ByteStream:
        """A stream to `proxy`, ready for its request; consumes `prev`."""
        index = len(path) + 1
        started = anyio.current_time()
        reach_by = started + proxy.connect_timeout
        reach_limit: Limit = (
            reach_by,
            lambda: run.fail(
                HopTimeout(
                    index,
                    proxy.name,
                    "connect",
                    f"not reached{_through(path)} in {fmt_seconds(proxy.connect_timeout)}",
                    proxy_status="connection_timeout",
                )
            ),
        )
        stream: ByteStream | None = None
        try:
            if not path:
                try:
                    stream = await _bounded(
                        [reach_limit, run.overall(f"hop {index} ({proxy.name})")],
                        lambda: tcp.open_tcp(proxy.address),
                    )
                except HopError:
                    raise
                except OSError as exc:
                    raise run.fail(
                        HopUnreachable(
                            index,
                            proxy.name,
                            "connect",
                            f"{proxy.describe()}: {transport_reason(exc)}",
                            proxy_status=_connect_status(exc),
                        )
                    ) from None
            else:
                assert prev is not None
                through, prev = prev, None
                stream = await self._ask(
                    run, through, path, proxy.address, reach_limit, proxy, reused=reused
                )
            if proxy.scheme == "https":
                stream = await self._tls(run, stream, index, proxy, reach_limit)
            return stream
        except BaseException:
            await _close(prev)
            await _close(stream)
            raise

    async def _tls(
        self, run: _Run, stream: ByteStream, index: int, proxy: Proxy, limit: Limit
    ) -> ByteStream:
        try:
            return await _bounded(
                [limit, run.overall(f"TLS with hop {index} ({proxy.name})")],
                lambda: tcp.start_tls(stream, proxy),
            )
        except HopError:
            raise
        except ssl.SSLCertVerificationError as exc:
            raise run.fail(
                HopUnreachable(
                    index,
                    proxy.name,
                    "tls",
                    f"certificate not trusted: {exc.verify_message}",
                    proxy_status="tls_certificate_error",
                )
            ) from None
        except ssl.SSLError as exc:
            raise run.fail(
                HopUnreachable(
                    index,
                    proxy.name,
                    "tls",
                    f"TLS failed: {exc.reason or exc}",
                    proxy_status="tls_protocol_error",
                )
            ) from None
        except _TRANSPORT_ERRORS as exc:
            raise run.fail(
                HopUnreachable(
                    index,
                    proxy.name,
                    "tls",
                    f"TLS failed: {transport_reason(exc)}",
                    proxy_status="tls_protocol_error",
                )
            ) from None

    async def _ask(
        self,
        run: _Run,
        stream: ByteStream,
        path: list[Proxy],
        target: Address,
        reach_limit: Limit | None,
        next_proxy: Proxy | None,
        *,
        reused: bool = False,
    ) -> ByteStream:
        """Ask path[-1] for `target` (the next hop, or the destination when next_proxy is
        None) and charge a failure to whoever caused it. Consumes `stream`."""
        hop = path[-1]
        index = len(path)
        started = anyio.current_time()
        limits: list[Limit] = [
            (
                started + hop.handshake_timeout,
                lambda: run.fail(
                    HopTimeout(
                        index,
                        hop.name,
                        "handshake",
                        f"no answer in {fmt_seconds(hop.handshake_timeout)}",
                        proxy_status="connection_read_timeout",
                    )
                ),
            ),
        ]
        if reach_limit is not None:
            limits.append(reach_limit)
        # Last: when a hop's own limit and the deadline fall together, the hop is named.
        limits.append(run.overall(f"hop {index} ({hop.name})"))

        def about_next(cls: type[HopError], text: str, status: int, proxy_status: str) -> HopError:
            if next_proxy is None:
                return cls(
                    index,
                    hop.name,
                    "destination",
                    f"could not reach {target}: {text}",
                    status=status,
                    proxy_status="connection_timeout" if cls.timeout else "destination_unavailable",
                )
            return cls(
                index + 1,
                next_proxy.name,
                "connect",
                f"hop {index} ({hop.name}) could not reach it: {text}",
                status=status,
                proxy_status=proxy_status,
            )

        try:
            return await _bounded(limits, lambda: connectors.ask(stream, hop, target))
        except BaseException as exc:
            survivor = exc.stream if isinstance(exc, HopAnswer) else None
            if survivor is None or next_proxy is None:
                await _close(survivor)
                await _close(stream)
                survivor = None
            if isinstance(exc, HopError):
                raise  # a limit fired (HopTimeout is an OSError too)
            if reused and isinstance(exc, (HopClosed, *_TRANSPORT_ERRORS)):
                raise _Stale() from None
            if isinstance(exc, HopAnswer):
                if exc.kind == "unreachable":
                    error = about_next(HopUnreachable, exc.text, exc.status, "connection_refused")
                elif exc.kind == "timeout":
                    error = about_next(HopTimeout, exc.text, exc.status, "connection_timeout")
                else:
                    denied = exc.kind == "denied"
                    error = HopUnreachable(
                        index,
                        hop.name,
                        "handshake",
                        f"{exc.text} (denied)" if denied else exc.text,
                        status=exc.status or None,
                        proxy_status="http_request_denied" if denied else "proxy_internal_response",
                        denied=denied,
                    )
                run.fail(error)
                if survivor is not None:
                    raise _Survived(error, survivor) from None
                raise error from None
            if isinstance(exc, HopProtocolError):
                raise run.fail(
                    HopUnreachable(
                        index,
                        hop.name,
                        "handshake",
                        f"bad answer: {exc}",
                        proxy_status="http_protocol_error",
                    )
                ) from None
            if isinstance(exc, _TRANSPORT_ERRORS):
                raise run.fail(
                    HopUnreachable(
                        index,
                        hop.name,
                        "handshake",
                        f"{transport_reason(exc)} before it answered",
                        proxy_status="connection_terminated",
                    )
                ) from None
            raise

    async def _ask_destination(
        self, run: _Run, stream: ByteStream, path: list[Proxy]
    ) -> ByteStream:
        return await self._ask(run, stream, path, run.target, None, None)


def _through(path: list[Proxy]) -> str:
    if not path:
        return ""
    return f" through hop {len(path)} ({path[-1].name})"
