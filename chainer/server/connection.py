"""One client's connection: sniff -> request -> guard, route, dial -> relay -> log.

The first byte says what the client speaks (TLS is unwrapped first where the listener
has `tls:`); the inbound side reads the whole request within client_timeout; the
destination is checked against policy, routed and dialed; then the bytes are relayed —
by this task (the generic relay, plain-HTTP forwarding) or, for two plain sockets, by a
spliced tunnel handed to the server's `Tunnels`, after which this task ends and the
tunnel reports its end. Either way the connection ends with one access line and its
metrics, logged exactly once (`ConnRecord.handed_off` says who logs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteStream

from ..errors import ChainFailed, Refused, describe_attempts
from ..inbound import (
    ClientError,
    ClientGone,
    HttpInbound,
    Inbound,
    Request,
    TransparentInbound,
    error_response,
    failure_for,
    first_byte_kind,
    open_inbound,
    send_quietly,
)
from ..models import Address, Route, Transparent
from ..outbound.dialer import Dialed
from ..outbound.limits import close_now
from ..relay import RelayOptions
from ..relay.generic import relay
from ..relay.result import RelayResult
from ..relay.sockstream import SockStream
from ..relay.streams import PrefixedStream
from ..relay.tls import TLSLeg
from ..router import Router
from ..routing.fakeip import Claim, FakeIps
from ..routing.policy import Guard
from ..routing.table import Match
from ..text import READ_SIZE
from . import forwarding
from .closewatch import watch_for_close
from .listeners import Door, Occupancy
from .logs import ConnRecord, conn_id
from .metrics import Metrics
from .registry import Registry
from .throttle import LoginThrottle
from .tunnels import Tunnels

log = logging.getLogger("chainer")


@dataclass(frozen=True, slots=True)
class Shared:
    """What every connection of one server uses."""

    router: Callable[[], Router]  # the table now: a reload swaps it for new requests
    metrics: Metrics
    bound: Sequence[tuple[str, int]]  # our own listening addresses (the guard refuses loops)
    relay: RelayOptions
    tunnels: Tunnels
    occupancy: Occupancy  # entered by the accept loop, left here when the connection ends
    ids: Iterator[int]
    logins: LoginThrottle
    registry: Registry = field(default_factory=Registry)  # open tunnels, for the admin
    fakes: FakeIps | None = None  # the DNS server's fake addresses, when it lends them


async def handle(shared: Shared, client: SockStream, door: Door, peer: tuple[str, int]) -> None:
    await Connection(shared, client, door, peer).run()


class Connection:
    def __init__(
        self, shared: Shared, client: SockStream, door: Door, peer: tuple[str, int]
    ) -> None:
        self.shared = shared
        self.client = client
        self.door = door
        self.peer_host, peer_port = peer  # ("0.0.0.0", 0): it reset before it was seen
        self.record = ConnRecord(next(shared.ids), str(Address(self.peer_host, peer_port)))
        self.result: RelayResult | None = None  # while relaying: the bytes moved so far
        self.tls = False  # the client speaks TLS to us
        self.spliced: Sequence[int] | None = None  # a spliced tunnel's live (up, down)
        self.half_closed_early = False  # the client ended its side before our answer
        self.claim: Claim | None = None  # a fake address held while this connection lives

    async def run(self) -> None:
        conn = self.record
        conn_id.set(conn.id)
        try:
            if not self.door.allows(self.peer_host):
                conn.outcome, conn.error = "denied", "client address not allowed"
                return
            await self._serve_client()
        except anyio.get_cancelled_exc_class():
            # Only the server cancels a connection: its grace period is over (or serve()
            # itself was cancelled). The bytes that moved are in self.result.
            conn.outcome, conn.error = "shutdown", "closed at shutdown"
            if self.result is not None:
                conn.up, conn.down = self.result.up, self.result.down
            raise
        except ClientGone:
            conn.outcome = "client_gone"
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            conn.outcome, conn.error = "client_error", type(exc).__name__
        except Exception:
            # A bug must cost one connection, not the listener and every tunnel on it.
            conn.outcome, conn.error = "internal_error", "see traceback"
            log.exception("conn=%d: internal error", conn.id)
        finally:
            # A plain socket's close needs no await, so a cancelled connection (grace over,
            # serve() cancelled) closes it too. One handed to a tunnel is not closed here.
            self.client.close()
            if not conn.handed_off:
                self._ended()

    async def _serve_client(self) -> None:
        if self.door.listener.transparent is not None:
            await self._serve_captured(self.door.listener.transparent)
            return
        conn, tls = self.record, self.door.tls
        stream: ByteStream = self.client
        inbound: Inbound | None = None
        refused: ClientError | None = None
        limits = self.shared.router().config.limits
        with anyio.move_on_after(limits.client_timeout) as scope:
            first = await _receive_some(stream)
            kind = first_byte_kind(first[0])
            if tls is not None and kind != "tls":
                # A TLS listener speaks TLS only: credentials must not cross it in clear.
                conn.outcome = "bad_request"
                conn.error = f"{kind} on a TLS listener: {first[:8]!r}"
                if kind == "http":
                    answer = error_response(400, "this listener speaks TLS (an HTTPS proxy)")
                    await send_quietly(stream, answer)
                return
            if kind == "tls" and tls is not None:
                stream = await TLSLeg.wrap(
                    PrefixedStream(stream, first), server_side=True, ssl_context=tls
                )
                self.tls = True
                first = await _receive_some(stream)
                kind = first_byte_kind(first[0])
            users = dict(self.door.listener.users)
            inbound = open_inbound(kind, stream, users, first, limits)
            if inbound is None:
                conn.outcome = "bad_request"
                conn.error = f"{kind} where a request should begin: {first[:8]!r}"
                await send_quietly(stream, error_response(400, "not an HTTP or SOCKS request"))
                return
            try:
                request = await inbound.read_request()
            except ClientError as exc:
                refused = exc
            else:
                if request.user is not None:
                    self.shared.logins.succeeded(self.peer_host)
        if refused is not None:
            assert inbound is not None
            conn.outcome, conn.error = _CLIENT_OUTCOMES[refused.login], refused.message
            if refused.login == "wrong":
                # Past a few failures from this address, the refusal waits (throttle.py);
                # outside the client_timeout scope, so it is still the refusal that is sent.
                await anyio.sleep(self.shared.logins.failed(self.peer_host))
            await inbound.reject(refused)
            return
        if scope.cancelled_caught:
            conn.outcome, conn.error = "client_timeout", "no complete request in time"
            if inbound is not None:
                await inbound.reject(ClientError(408, "no complete request in time"))
            return
        assert inbound is not None
        conn.target = request.target
        await self._serve_request(inbound, request)

    async def _serve_captured(self, mode: Transparent) -> None:
        """A transparent listener's connection: no request to read, a tunnel to where it
        was going, by name when its first flight tells one (inbound/transparent.py)."""
        fakes = self.shared.fakes
        named = fakes.name_of if fakes is not None else None
        inbound = TransparentInbound(self.client, mode, self.door.listener.sniff, named=named)
        request = await inbound.read_request()
        conn = self.record
        conn.target, conn.original = request.target, request.original
        conn.inbound, conn.sniffed = mode, request.sniffed
        conn.fake_ip = request.fake_ip
        await self._serve_request(inbound, request)

    def _watched(self, request: Request, match: Match) -> SockStream | None:
        """The client socket to watch for a reset while the chain is built (closewatch.py):
        not over TLS, and not for a `direct` connection to an address with no fallback,
        which is one TCP connect (a reset there costs at most its connect_timeout, and
        watching costs every connection two epoll calls and a cancel scope)."""
        if self.tls:
            return None
        route = match.route
        if route.via.kind == "direct" and not route.fallback and request.target.is_ip:
            return None
        return self.client

    async def _serve_request(self, inbound: Inbound, request: Request) -> None:
        conn, metrics = self.record, self.shared.metrics
        router = self.shared.router()
        guard = Guard.for_listener(router.config.policy, self.door.listener, self.shared.bound)
        try:
            request = self._unfake(request)
            guard.check(request.target)
            if request.original not in (None, request.target) and request.fake_ip is None:
                guard.check(request.original)  # a sniffed name: its address is judged too
            # Routed once, before the chain is built, so that a failure names the route
            # and its chain too.
            match = router.route(request.target)
            conn.route, conn.via = match.route.label(), match.route.via.label
            plan = None
            if request.kind == "forward":
                options = router.config.http
                plan = forwarding.plan(request, options, match.route, self.record.client)
            opened = None
            with watch_for_close(self._watched(request, match)) as watch:
                screen = self._screen(guard)
                opened = await router.open(request.target, screen, forward=plan, match=match)
            if watch.closed or opened is None:
                # The client's connection was reset while its chain was being built: what
                # was built is closed (a chain that came up just then too).
                if opened is not None:
                    await close_now(opened[1].stream)
                conn.outcome, conn.error = "client_closed", "reset while the chain was built"
                return
            self.half_closed_early = watch.half_closed
            match, dialed = opened
        except (Refused, ChainFailed) as exc:
            for attempt in getattr(exc, "attempts", ()):
                metrics.hop_failure(attempt)
            failure = failure_for(exc)
            conn.outcome, conn.error = failure.outcome, failure.logged
            conn.route = exc.route or conn.route
            await inbound.refuse(failure)
            return
        conn.route, conn.via, conn.trace = match.route.label(), dialed.via.label, dialed.trace
        if dialed.attempts or dialed.skipped:
            conn.failovers = describe_attempts(dialed.attempts, dialed.skipped, full=True)
        for attempt in dialed.attempts:
            metrics.hop_failure(attempt)
        for hop in dialed.trace:
            metrics.hop_setup(hop.name, hop.seconds)
        metrics.active.inc()
        self.shared.registry.opened(self)
        try:
            await self._relay(inbound, request, dialed, router, match.route)
        finally:
            if not conn.handed_off:
                metrics.active.dec()

    def _unfake(self, request: Request) -> Request:
        """A request for a fake address of chainer's DNS is one for the name it stands
        for (held until the connection ends); one the table no longer knows is refused."""
        fakes, target = self.shared.fakes, request.target
        fake = request.fake_ip
        if fake is None and (fakes is None or not target.is_ip or not fakes.covers(target.host)):
            return request
        assert fakes is not None
        fake = fake or target
        self.claim = fakes.claim(fake.host)
        if self.claim is None:
            raise Refused(
                f"{fake.host} is a fake address chainer's DNS lends to no name now (lent "
                "before a restart, or forgotten since): ask for the name again"
            )
        request.target, request.fake_ip = Address(self.claim.name, target.port), fake
        self.record.target, self.record.fake_ip = request.target, fake
        return request

    def _screen(self, guard: Guard) -> Callable[[str, int], None]:
        """What vets the addresses a `direct` name resolves to: the policy, and never a
        fake address (this machine's resolver may be chainer's own DNS)."""
        fakes = self.shared.fakes
        if fakes is None:
            return guard.check_address

        def screen(host: str, port: int) -> None:
            if fakes.covers(host):
                raise Refused(f"{host} is a fake address of chainer's DNS, not a destination")
            guard.check_address(host, port)

        return screen

    async def _relay(
        self, inbound: Inbound, request: Request, dialed: Dialed, router: Router, route: Route
    ) -> None:
        idle, client_fin = router.config.defaults.idle, router.config.limits.client_fin
        self.result = result = RelayResult()
        async with dialed.stream:
            if request.kind == "connect":
                client = await inbound.established()
                if self.shared.relay.can_splice(client, dialed.stream):
                    self.result = None
                    await self._hand_off(client, dialed.stream, idle, client_fin)
                    return
                await relay(client, dialed.stream, idle, result=result, client_fin=client_fin)
            else:
                assert isinstance(inbound, HttpInbound)
                options, who = router.config.http, self.record.client
                await forwarding.forward(
                    inbound, request, dialed, options, route, who, idle, result
                )
        self._note(result)

    async def _hand_off(
        self, client: ByteStream, upstream: ByteStream, idle: float, client_fin: float
    ) -> None:
        """What this task would have done at the end — the log line, the counters —
        happens when the tunnel ends (`_tunnel_ended`)."""
        tunnels = self.shared.tunnels
        tunnel = await tunnels.hand_off(client, upstream, idle, self._tunnel_ended, client_fin)
        if tunnel is not None:
            self.record.handed_off = True
            self.spliced = tunnel.count
        else:
            self.record.outcome, self.record.error = "closed_on_error", "shutting down"

    def _tunnel_ended(self, result: RelayResult) -> None:
        self._note(result)
        self.shared.metrics.active.dec()
        self._ended()

    def _note(self, result: RelayResult) -> None:
        conn = self.record
        conn.up, conn.down = result.up, result.down
        gave_up = self.half_closed_early and (
            result.down == 0 or (result.error or "").startswith("client:")
        )
        if result.shutdown:
            conn.outcome, conn.error = "shutdown", "closed at shutdown"
        elif result.bad_request:
            conn.outcome, conn.error = "bad_request", result.error
        elif result.client_closed or gave_up:
            # It went away before the answer it asked for could reach it.
            conn.outcome, conn.error = "client_closed", result.error or "gone before the answer"
        elif result.idle_closed:
            conn.outcome = "idle_timeout"
        elif result.error:
            conn.outcome, conn.error = "closed_on_error", result.error

    def traffic(self) -> tuple[int, int]:
        """Bytes moved so far (up, down), whichever relay moves them."""
        if self.result is not None:
            return self.result.up, self.result.down
        if self.spliced is not None:
            return self.spliced[0], self.spliced[1]
        return self.record.up, self.record.down

    def _ended(self) -> None:
        conn = self.record
        if self.claim is not None and self.shared.fakes is not None:
            self.shared.fakes.release(self.claim)
        self.shared.registry.closed(self)
        conn.log()
        self.shared.metrics.connection_done(conn.route, conn.outcome, conn.up, conn.down)
        self.shared.occupancy.leave(self.peer_host)


async def _receive_some(stream: ByteStream) -> bytes:
    try:
        data = await stream.receive(READ_SIZE)
    except anyio.EndOfStream:
        raise ClientGone() from None
    return data


_CLIENT_OUTCOMES = {None: "bad_request", "missing": "auth_required", "wrong": "auth_failed"}
