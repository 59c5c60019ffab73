"""Listeners and the per-connection flow: sniff -> request -> route -> dial -> relay -> log."""

from __future__ import annotations

import ipaddress
import itertools
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskStatus
from anyio.abc import Listener as AnyioListener
from anyio.streams.tls import TLSStream

from .answers import failure_for
from .dialer import HopTrace
from .errors import ChainFailed, Refused, describe_attempts
from .inbound import (
    ClientError,
    ClientGone,
    HttpInbound,
    Inbound,
    Request,
    error_response,
    first_byte_kind,
    open_inbound,
    send_quietly,
)
from .models import Address, Listener
from .relay import relay
from .router import Router
from .streams import PrefixedStream

log = logging.getLogger("chainer")
access_log = logging.getLogger("chainer.access")

CLIENT_HANDSHAKE_TIMEOUT = 10.0


@dataclass(slots=True)
class _Conn:
    """What one connection's log line says."""

    id: int
    client: str
    started: float = field(default_factory=time.monotonic)
    target: Address | None = None
    route: str = "-"
    via: str = "-"
    trace: tuple[HopTrace, ...] = ()
    up: int = 0
    down: int = 0
    outcome: str = "ok"
    error: str | None = None
    failovers: str | None = None  # what failed on the way to a connection that worked

    def line(self) -> str:
        hops = ",".join(f"{h.name}:{h.seconds * 1000:.1f}ms" for h in self.trace) or "-"
        parts = [
            f"conn={self.id}",
            f"client={self.client}",
            f"dest={self.target or '-'}",
            f"route={self.route}",
            f"via={self.via}",
            f"hops={hops}",
            f"up={self.up}",
            f"down={self.down}",
            f"duration={time.monotonic() - self.started:.3f}s",
            f"outcome={self.outcome}",
        ]
        if self.error:
            parts.append(f'error="{self.error}"')
        if self.failovers:
            parts.append(f'failovers="{self.failovers}"')
        return " ".join(parts)


def _server_tls_context(listener: Listener) -> ssl.SSLContext | None:
    if listener.tls is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(listener.tls.cert, listener.tls.key)
    return ctx


class Server:
    def __init__(self, router: Router) -> None:
        self.router = router
        self._ids = itertools.count(1)

    async def serve(
        self,
        listeners: Sequence[Listener] | None = None,
        *,
        task_status: TaskStatus[list[tuple[str, int]]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled; reports the bound (host, port) of each listener."""
        listeners = listeners if listeners is not None else self.router.config.listeners
        bound: list[tuple[str, int]] = []
        async with anyio.create_task_group() as tg:
            for listener in listeners:
                tcp = await anyio.create_tcp_listener(
                    local_host=listener.address.host, local_port=listener.address.port
                )
                sockname = tcp.extra(SocketAttribute.local_address)
                assert isinstance(sockname, tuple)
                host, port = str(sockname[0]), int(sockname[1])
                bound.append((host, port))
                log.info("listening on %s", Address(host, port))
                tls = _server_tls_context(listener)
                allow = tuple(ipaddress.ip_network(c, strict=False) for c in listener.allow)

                async def handle(
                    client: SocketStream,
                    listener: Listener = listener,
                    tls: ssl.SSLContext | None = tls,
                    allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = allow,
                ) -> None:
                    await self._handle(client, listener, tls, allow)

                tg.start_soon(_serve_listener, tcp, handle)
            task_status.started(bound)

    async def _handle(
        self,
        client: SocketStream,
        listener: Listener,
        tls: ssl.SSLContext | None,
        allow: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
    ) -> None:
        peer = client.extra(SocketAttribute.remote_address)
        peer_host = str(peer[0]) if isinstance(peer, tuple) else str(peer)
        peer_port = int(peer[1]) if isinstance(peer, tuple) else 0
        conn = _Conn(next(self._ids), str(Address(peer_host, peer_port)))
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
            # A connection that closed without a request (a port probe, a load balancer's
            # health check) is logged at debug level only.
            quiet = conn.outcome == "client_gone" and conn.target is None
            access_log.log(logging.DEBUG if quiet else logging.INFO, "%s", conn.line())

    async def _serve_client(
        self, conn: _Conn, stream: ByteStream, listener: Listener, tls: ssl.SSLContext | None
    ) -> None:
        inbound: Inbound | None = None
        with anyio.move_on_after(CLIENT_HANDSHAKE_TIMEOUT) as scope:
            first = await _receive_some(stream)
            kind = first_byte_kind(first[0])
            if kind == "tls" and tls is not None:
                stream = await TLSStream.wrap(
                    PrefixedStream(stream, first), server_side=True, ssl_context=tls
                )
                first = await _receive_some(stream)
                kind = first_byte_kind(first[0])
            inbound = open_inbound(kind, stream, dict(listener.users), first)
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
        await self._serve_request(conn, inbound, request)

    async def _serve_request(self, conn: _Conn, inbound: Inbound, request: Request) -> None:
        try:
            match, dialed = await self.router.open(request.target)
        except (Refused, ChainFailed) as exc:
            failure = failure_for(exc)
            conn.outcome, conn.error = failure.outcome, failure.message
            conn.route = exc.route or "-"
            await inbound.refuse(failure)
            return
        conn.route, conn.via, conn.trace = match.route.label(), dialed.via.label, dialed.trace
        if dialed.attempts or dialed.skipped:
            conn.failovers = describe_attempts(dialed.attempts, dialed.skipped)
        idle = self.router.config.defaults.idle
        async with dialed.stream:
            if request.kind == "connect":
                client = await inbound.established()
                result = await relay(client, dialed.stream, idle)
            else:
                assert isinstance(inbound, HttpInbound)
                await dialed.stream.send(request.head)
                result = await relay(
                    inbound.body_stream(request.chunked),
                    dialed.stream,
                    idle,
                    end_with_upstream=True,
                )
                result.up += len(request.head)
        conn.up, conn.down = result.up, result.down
        if result.idle_closed:
            conn.outcome = "idle_timeout"
        elif result.error:
            conn.outcome, conn.error = "closed_on_error", result.error


async def _serve_listener(
    tcp: AnyioListener[SocketStream], handle: Callable[[SocketStream], Awaitable[None]]
) -> None:
    async with tcp:
        await tcp.serve(handle)


async def _receive_some(stream: ByteStream) -> bytes:
    try:
        data = await stream.receive(65536)
    except anyio.EndOfStream:
        raise ClientGone() from None
    return data


__all__ = ["Server"]
