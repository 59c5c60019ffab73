"""Listeners and the per-connection flow: sniff -> request -> route -> dial -> relay -> log."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import itertools
import logging
import socket
import ssl
from collections.abc import Sequence

import anyio
from anyio.abc import (
    ByteStream,
    TaskGroup,
    TaskStatus,
)
from anyio.streams.tls import TLSStream

from ..errors import ChainFailed, Refused, describe_attempts
from ..inbound import (
    ClientError,
    ClientGone,
    HttpInbound,
    Inbound,
    Request,
    error_response,
    failure_for,
    first_byte_kind,
    open_inbound,
    send_quietly,
)
from ..models import Address, Config, HttpOptions, Listener, Proxy, Route
from ..outbound.dialer import Dialed
from ..proto.forward import proxy_form
from ..proto.http import basic_authorization
from ..relay import RelayOptions, sockstream, splice
from ..relay.generic import relay
from ..relay.result import RelayResult
from ..relay.sockstream import SockStream
from ..relay.streams import PrefixedStream
from ..router import Router
from ..routing.policy import Guard
from ..text import READ_SIZE
from .logs import ConnRecord, conn_id
from .metrics import Metrics

log = logging.getLogger("chainer")


def _server_tls_context(listener: Listener) -> ssl.SSLContext | None:
    if listener.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(listener.tls.cert, listener.tls.key)
    return ctx


class Server:
    """Serves the listeners of one route table; `reload` swaps the table for new
    connections, `shutdown` stops accepting and lets live tunnels finish."""

    def __init__(
        self,
        router: Router,
        *,
        metrics: Metrics | None = None,
        grace: float = 10.0,
        relay: RelayOptions | None = None,
    ) -> None:
        self.router = router
        self.relay = relay if relay is not None else RelayOptions()
        self.metrics = metrics or Metrics(lambda: self.router.dialer.health)
        self.grace = grace
        self.active = 0
        self._ids = itertools.count(1)
        self._stopping = anyio.Event()
        self._drained = anyio.Event()
        self.stopped = anyio.Event()  # set once serve() has returned
        self.bound: list[tuple[str, int]] = []  # every listening (host, port)
        self._tunnels: set[splice.Tunnel] = set()  # spliced tunnels, run by callbacks
        self._closing = False  # no new spliced tunnel may start

    def reload(self, config: Config) -> None:
        """New connections use `config`; live ones keep what they had. Health is kept for
        hops whose definition did not change."""
        old = self.router.config
        changed = {p.name for p in old.proxies} - {
            p.name for p in old.proxies if _same_proxy(p, config.proxy(p.name))
        }
        health = self.router.dialer.health
        health.forget(changed)
        self.router = Router(config, health)
        if config.listeners != old.listeners:
            log.warning("listener changes take effect at the next restart")
        log.info(
            "reloaded %s: %d routes, %d proxies (%d changed)",
            config.path,
            len(config.routes),
            len(config.proxies),
            len(changed),
        )
        self.metrics.reloaded(True)

    @property
    def draining(self) -> bool:
        return self._stopping.is_set()

    def shutdown(self) -> None:
        """Stop accepting; live connections get `grace` seconds to finish."""
        self._stopping.set()

    async def serve(
        self,
        listeners: Sequence[Listener] | None = None,
        *,
        task_status: TaskStatus[list[tuple[str, int]]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled or shut down; reports the bound (host, port) of each
        listener once all are listening."""
        try:
            await self._serve(listeners, task_status)
        finally:
            # Spliced tunnels have no task to cancel: end them here, however serve() ends.
            self._closing = True
            for tunnel in list(self._tunnels):
                tunnel.abort("shutting down")
            self.relay.pipes.clear()
            self.stopped.set()

    async def _serve(
        self,
        listeners: Sequence[Listener] | None,
        task_status: TaskStatus[list[tuple[str, int]]],
    ) -> None:
        listeners = listeners if listeners is not None else self.router.config.listeners
        sockets: list[tuple[Listener, socket.socket]] = []
        try:
            for listener in listeners:
                one = sockstream.listen(listener.address.host, listener.address.port)
                sockets.append((listener, one))
                host, port = one.getsockname()[:2]
                self.bound.append((str(host), int(port)))
                log.info("listening on %s", Address(str(host), int(port)))
                if listener.open and not listener.loopback:
                    log.warning(
                        "%s is open: anyone who can reach it may use it as a proxy",
                        listener.address,
                    )
        except BaseException:
            for _, one in sockets:
                one.close()
            raise
        async with anyio.create_task_group() as connections:
            async with anyio.create_task_group() as accepting:
                for listener, one in sockets:
                    accepting.start_soon(self._accept, one, listener, connections)
                task_status.started(list(self.bound))
                await self._stopping.wait()
                accepting.cancel_scope.cancel()
            log.info("stopped accepting; %d connections open", self.active)
            try:
                if self.active:
                    with anyio.move_on_after(self.grace):
                        await self._drained.wait()
                    if self.active:
                        log.info("grace period over: closing %d connections", self.active)
            finally:
                self._closing = True
                connections.cancel_scope.cancel()
                for tunnel in list(self._tunnels):
                    tunnel.abort("shutting down")

    async def _accept(self, tcp: socket.socket, listener: Listener, connections: TaskGroup) -> None:
        tls = _server_tls_context(listener)
        allow = tuple(ipaddress.ip_network(c, strict=False) for c in listener.allow)
        failing = False
        with tcp:
            while True:
                try:
                    client = await sockstream.accept(tcp)
                except OSError as exc:
                    # EMFILE and friends: back off instead of spinning or dying, and say
                    # so once per episode rather than ten times a second.
                    if not failing:
                        log.warning("accept failed: %s; retrying every 100ms", exc)
                    failing = True
                    await anyio.sleep(0.1)
                    continue
                if failing:
                    log.info("accepting again")
                    failing = False
                if self.active >= self.router.config.limits.max_connections:
                    connections.start_soon(_turn_away, client)
                    continue
                self.active += 1
                self._drained = anyio.Event() if self.active == 1 else self._drained
                connections.start_soon(self._handle, client, listener, tls, allow)

    async def _handle(
        self,
        client: SockStream,
        listener: Listener,
        tls: ssl.SSLContext | None,
        allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    ) -> None:
        # A client that reset before we got here has no peer address any more.
        try:
            peer = client.sock.getpeername()
        except OSError:
            peer = ("0.0.0.0", 0)
        peer_host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        peer_port = int(peer[1]) if isinstance(peer, tuple) else 0
        conn = ConnRecord(next(self._ids), str(Address(peer_host, peer_port)))
        conn_id.set(conn.id)
        stream: ByteStream = client
        try:
            if allow and not any(ipaddress.ip_address(peer_host) in net for net in allow):
                conn.outcome, conn.error = "denied", "client address not allowed"
                return
            await self._serve_client(conn, stream, listener, tls)
        except ClientGone:
            conn.outcome = "client_gone"
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            conn.outcome, conn.error = "client_error", type(exc).__name__
        except Exception:
            # A bug must cost one connection, not the listener and every tunnel on it.
            conn.outcome, conn.error = "internal_error", "see traceback"
            log.exception("conn=%d: internal error", conn.id)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(client)
            if not conn.handed_off:
                self._connection_ended(conn)

    async def _serve_client(
        self, conn: ConnRecord, stream: ByteStream, listener: Listener, tls: ssl.SSLContext | None
    ) -> None:
        inbound: Inbound | None = None
        limits = self.router.config.limits
        with anyio.move_on_after(limits.client_timeout) as scope:
            first = await _receive_some(stream)
            kind = first_byte_kind(first[0])
            if kind == "tls" and tls is not None:
                stream = await TLSStream.wrap(
                    PrefixedStream(stream, first), server_side=True, ssl_context=tls
                )
                first = await _receive_some(stream)
                kind = first_byte_kind(first[0])
            inbound = open_inbound(kind, stream, dict(listener.users), first, limits)
            if inbound is None:
                conn.outcome = "bad_request"
                conn.error = f"{kind} where a request should begin: {first[:8]!r}"
                await send_quietly(stream, error_response(400, "not an HTTP or SOCKS request"))
                return
            try:
                request = await inbound.read_request()
            except ClientError as exc:
                conn.outcome, conn.error = "bad_request", exc.message
                await inbound.reject(exc)
                return
        if scope.cancelled_caught:
            conn.outcome, conn.error = "client_timeout", "no complete request in time"
            if inbound is not None:
                await inbound.reject(ClientError(408, "no complete request in time"))
            return
        assert inbound is not None
        conn.target = request.target
        await self._serve_request(conn, inbound, request, listener)

    async def _serve_request(
        self, conn: ConnRecord, inbound: Inbound, request: Request, listener: Listener
    ) -> None:
        router = self.router
        guard = Guard.for_listener(router.config.policy, listener, self.bound)
        try:
            guard.check(request.target)
            match, dialed = await router.open(
                request.target, guard.check_address, forward=request.kind == "forward"
            )
        except (Refused, ChainFailed) as exc:
            for attempt in getattr(exc, "attempts", ()):
                self.metrics.hop_failure(attempt)
            failure = failure_for(exc)
            conn.outcome, conn.error = failure.outcome, failure.message
            conn.route = exc.route or "-"
            await inbound.refuse(failure)
            return
        conn.route, conn.via, conn.trace = match.route.label(), dialed.via.label, dialed.trace
        if dialed.attempts or dialed.skipped:
            conn.failovers = describe_attempts(dialed.attempts, dialed.skipped)
        for attempt in dialed.attempts:
            self.metrics.hop_failure(attempt)
        for hop in dialed.trace:
            self.metrics.hop_setup(hop.name, hop.seconds)
        self.metrics.active.inc()
        try:
            await self._relay(conn, inbound, request, dialed, router, match.route)
        finally:
            if not conn.handed_off:
                self.metrics.active.dec()

    async def _relay(
        self,
        conn: ConnRecord,
        inbound: Inbound,
        request: Request,
        dialed: Dialed,
        router: Router,
        route: Route,
    ) -> None:
        idle = router.config.defaults.idle
        async with dialed.stream:
            if request.kind == "connect":
                client = await inbound.established()
                if self.relay.can_splice(client, dialed.stream):
                    await self._hand_off(conn, client, dialed.stream, idle)
                    return
                result = await relay(client, dialed.stream, idle)
            else:
                assert isinstance(inbound, HttpInbound)
                head = _forwarded_head(request.head, router.config.http, route, conn)
                if dialed.forward_to is not None:
                    head = _for_proxy(head, request.target, dialed.forward_to)
                await dialed.stream.send(head)
                result = await relay(
                    inbound.body_stream(request.chunked),
                    dialed.stream,
                    idle,
                    end_with_upstream=True,
                )
                result.up += len(head)
        conn.up, conn.down = result.up, result.down
        if result.idle_closed:
            conn.outcome = "idle_timeout"
        elif result.error:
            conn.outcome, conn.error = "closed_on_error", result.error

    async def _hand_off(
        self, conn: ConnRecord, client: ByteStream, upstream: ByteStream, idle: float
    ) -> None:
        """A plain-socket tunnel needs no task: once its handshake leftovers are sent it
        runs on event-loop callbacks, owned by the server (closed on shutdown), and this
        connection's task ends. What the task would have done at the end — the log line,
        the counters — happens when the tunnel finishes."""
        a, b = splice.detach(client), splice.detach(upstream)
        sent = await splice.send_pending(a, b)
        if self._closing:
            a.sock.close()
            b.sock.close()
            conn.outcome, conn.error = "closed_on_error", "shutting down"
            return
        try:
            tunnel = splice.Tunnel(a, b, idle, lambda result: None, self.relay.pipes, sent)
        except BaseException:
            a.sock.close()
            b.sock.close()
            raise
        tunnel.on_done = functools.partial(self._tunnel_done, conn, tunnel)
        self._tunnels.add(tunnel)
        conn.handed_off = True
        tunnel.start()

    def _tunnel_done(self, conn: ConnRecord, tunnel: splice.Tunnel, result: RelayResult) -> None:
        self._tunnels.discard(tunnel)
        conn.up, conn.down = result.up, result.down
        if result.idle_closed:
            conn.outcome = "idle_timeout"
        elif result.error:
            conn.outcome, conn.error = "closed_on_error", result.error
        self.metrics.active.dec()
        self._connection_ended(conn)

    def _connection_ended(self, conn: ConnRecord) -> None:
        conn.log()
        self.metrics.connection_done(conn.route, conn.outcome, conn.up, conn.down)
        self.active -= 1
        if self.active == 0:
            self._drained.set()


async def _receive_some(stream: ByteStream) -> bytes:
    try:
        data = await stream.receive(READ_SIZE)
    except anyio.EndOfStream:
        raise ClientGone() from None
    return data


__all__ = ["Server"]


def _same_proxy(old: Proxy, new: Proxy | None) -> bool:
    return new is not None and dataclasses.replace(old, line=0) == dataclasses.replace(new, line=0)


async def _turn_away(client: SockStream) -> None:
    """Over max_connections: say so (in HTTP, the likeliest protocol) and close."""
    async with client:
        await send_quietly(client, error_response(503, "too many connections; try again later"))


def _forwarded_head(head: bytes, options: HttpOptions, route: Route, conn: ConnRecord) -> bytes:
    """The forwarded request head with what this proxy adds: Via (unless the route is
    anonymous or Via is off) and X-Forwarded-For (only when configured)."""
    extra = b""
    if options.via and not route.anonymous:
        extra += f"Via: 1.1 {options.via}\r\n".encode()
    if options.x_forwarded_for and not route.anonymous:
        client_ip = conn.client.rpartition(":")[0].strip("[]")
        extra += f"X-Forwarded-For: {client_ip}\r\n".encode()
    return head[:-2] + extra + b"\r\n" if extra else head


def _for_proxy(head: bytes, target: Address, proxy: Proxy) -> bytes:
    authorization = None
    if proxy.username is not None:
        authorization = basic_authorization(proxy.username, proxy.password or "")
    return proxy_form(head, target.authority(), authorization)
