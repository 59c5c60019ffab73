"""The operators' endpoint: /metrics /healthz /routes /hops /tunnels /proxy.pac and the
live page (`/`, page.py) on a port of its own.

Small on purpose. Each connection carries one request, parsed by h11 (GET or HEAD),
answered with `Connection: close`. Answers are built from the config and health of this
moment, read through the callables of an `AdminView`, so that a hot reload shows at once.
Nothing here changes the router's state, and nothing here ever formats a credential:
proxies are described by an allow-list of fields.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

import anyio
import h11
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskStatus
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from ..errors import BadTarget
from ..inbound import check_basic, error_response, first_byte_kind
from ..models import Address, Admin, Config, HopGroup, Listener, Proxy, Via
from ..outbound.health import Health
from ..routing.pac import pac_script, proxy_directive
from ..routing.target import parse_authority
from ..text import READ_SIZE, cannot_listen
from .metrics import exposition
from .page import page_headers, page_html
from .registry import TunnelInfo

log = logging.getLogger("chainer.admin")

MAX_HEAD = 8192  # h11 checks it on incomplete heads; reading MAX_HEAD at a time, a head
# is refused (431) before it reaches twice this size
READ_TIMEOUT = 5.0  # for the whole request head, so a trickling client cannot hold a task
# After answering, what the client still sends is drained (bounded) before closing: closing
# a socket with unread bytes resets it, and a reset can destroy the answer in flight.
LINGER = 1.0
_LINGER_BYTES = 1 << 20

_TEXT = "text/plain; charset=utf-8"
_JSON = "application/json"
_HTML = "text/html; charset=utf-8"
_PAC = "application/x-ns-proxy-autoconfig"
_METHODS = (b"GET", b"HEAD")


@dataclass(frozen=True, slots=True)
class AdminView:
    """What the admin endpoint shows. `config` and `health` are called for every request,
    so they should return whatever the server is using now."""

    config: Callable[[], Config]
    health: Callable[[], Health]
    registry: CollectorRegistry
    # True once the server stops accepting (SIGTERM): /healthz then answers 503 so a load
    # balancer sends new clients elsewhere while live tunnels finish.
    draining: Callable[[], bool] = lambda: False
    # Who may read it (Basic auth); empty: anyone who can reach it. /healthz is always
    # open, for load balancers.
    users: Callable[[], Mapping[str, str]] = lambda: {}
    # The tunnels open now (/tunnels, the page).
    tunnels: Callable[[], Sequence[TunnelInfo]] = lambda: ()
    # Each listener served and its bound address: the one /proxy.pac names comes first.
    listening: Callable[[], Sequence[tuple[Listener, tuple[str, int]]]] = lambda: ()


# -- documents ----------------------------------------------------------------------------


def routes_json(config: Config) -> dict[str, Any]:
    """The route table as `/routes` serves it: routes, chains and proxies, no credentials."""
    return {
        "config": config.path,
        "routes": [
            {
                "index": route.index,
                "line": route.line,
                "match": [pattern.text for pattern in route.patterns],
                "via": _via_json(route.via),
                "fallback": [_via_json(via) for via in route.fallback],
            }
            for route in config.routes
        ],
        "chains": {name: _via_json(via) for name, via in config.chains},
        "proxies": [_proxy_json(proxy) for proxy in config.proxies],
    }


THIS_MACHINE = "-"  # the "from" of hop 1's edges, here as in the metrics' labels


def hops_json(health: Health) -> dict[str, Any]:
    """Every edge health knows about, as `/hops` serves it. `from` is "-" for hop 1 (as in
    the `chainer_breaker_state` metric); `latency_ms` is the moving average of successful
    set-ups, `failures` the failures since the hop last worked."""
    return {
        "edges": [
            {
                "from": edge.via or THIS_MACHINE,
                "hop": edge.proxy,
                "state": edge.state,
                "latency_ms": None if edge.latency is None else round(edge.latency * 1000, 3),
                "closes_in": None if edge.closes_in is None else round(edge.closes_in, 3),
                "failures": edge.failures,
                "last_reason": edge.last_reason,
            }
            for edge in health.edges()
        ]
    }


def tunnels_json(tunnels: Sequence[TunnelInfo]) -> dict[str, Any]:
    """The open tunnels as `/tunnels` serves them, oldest first: client, destination,
    route, via, hops used with their set-up time, bytes each way, age in seconds."""
    return {"tunnels": [tunnel.json() for tunnel in tunnels]}


_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def pac_text(view: AdminView, request_host: str | None) -> str:
    """/proxy.pac: the route table as a PAC file naming the first listener. A wildcard
    listener is named by the host the browser reached this endpoint at (its Host
    header, when that is a valid host), else loopback."""
    config = view.config()
    listening = list(view.listening())
    if not listening:
        raise LookupError("no listener to name")
    listener, (host, port) = listening[0]
    if host in _LOOPBACK_FOR:
        host = _LOOPBACK_FOR[host]
        if request_host:
            try:
                host = parse_authority(request_host, default_port=80).host
            except BadTarget:
                pass
    directive = proxy_directive(Address(host, port), listener.tls is not None)
    own = [address for _, address in listening]
    return pac_script(config.routes, config.policy, directive, own, config.path)


def _via_json(via: Via) -> dict[str, Any]:
    return {"kind": via.kind, "label": via.label, "hops": [_group_json(g) for g in via.hops]}


def _group_json(group: HopGroup) -> dict[str, Any]:
    return {"strategy": group.strategy, "candidates": [p.name for p in group.candidates]}


def _proxy_json(proxy: Proxy) -> dict[str, Any]:
    # An allow-list: a field added to Proxy later (a secret, say) stays out until named here.
    return {
        "name": proxy.name,
        "scheme": proxy.scheme,
        "address": proxy.address.authority(),
        "connect_timeout": proxy.connect_timeout,
        "handshake_timeout": proxy.handshake_timeout,
        "max_fails": proxy.max_fails,
        "fail_window": proxy.fail_window,
        "fail_timeout": proxy.fail_timeout,
    }


def _dump(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=2) + "\n").encode()


def _host_header(request: h11.Request) -> str | None:
    for name, value in request.headers:
        if name == b"host":
            return value.decode("ascii", "replace")
    return None


_Endpoint = Callable[[AdminView, h11.Request], tuple[str, bytes]]
_ENDPOINTS: dict[str, _Endpoint] = {
    "/": lambda view, _: (_HTML, page_html()),
    "/metrics": lambda view, _: (CONTENT_TYPE_LATEST, exposition(view.registry)),
    "/healthz": lambda view, _: (_TEXT, b"ok\n"),
    "/routes": lambda view, _: (_JSON, _dump(routes_json(view.config()))),
    "/hops": lambda view, _: (_JSON, _dump(hops_json(view.health()))),
    "/tunnels": lambda view, _: (_JSON, _dump(tunnels_json(view.tunnels()))),
    "/proxy.pac": lambda view, request: (_PAC, pac_text(view, _host_header(request)).encode()),
}


# -- server -------------------------------------------------------------------------------


async def serve_admin(
    admin: Admin,
    view: AdminView,
    *,
    task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the admin endpoint at `admin.address` (port 0: the kernel picks one) until
    cancelled; reports the bound (host, port)."""
    address = admin.address
    try:
        listener = await anyio.create_tcp_listener(local_host=address.host, local_port=address.port)
    except OSError as exc:
        raise cannot_listen(exc, str(address), "the admin endpoint") from None
    async with listener:
        sockname = listener.extra(SocketAttribute.local_address)
        assert isinstance(sockname, tuple)
        bound = (str(sockname[0]), int(sockname[1]))
        log.info("admin endpoint on http://%s", Address(*bound))
        if not ipaddress.ip_address(bound[0]).is_loopback and not view.users():
            log.warning(
                "admin endpoint %s is reachable from other machines and has no authentication",
                Address(*bound),
            )
        task_status.started(bound)

        async def handle(client: SocketStream) -> None:
            await _handle(view, client)

        await listener.serve(handle)


async def _handle(view: AdminView, client: SocketStream) -> None:
    peer = client.extra(SocketAttribute.remote_address, "?")
    try:
        await _serve_one(view, client)
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
        log.debug("admin: client %s: %s", peer, str(exc) or type(exc).__name__)
    except Exception:
        # A bug must cost one request, not the endpoint.
        log.exception("admin: internal error serving %s", peer)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.aclose_forcefully(client)


async def _serve_one(view: AdminView, stream: ByteStream) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    with anyio.move_on_after(READ_TIMEOUT) as scope:
        try:
            request = await _read_request(conn, stream)
        except h11.RemoteProtocolError as exc:
            reply = error_response(exc.error_status_hint, f"bad request: {exc}")
        else:
            if request is None:  # closed without asking anything: a port probe
                return
            reply = _answer(view, conn, request)
    if scope.cancelled_caught:
        reply = error_response(408, "no complete request in time")
    await stream.send(reply)
    await _linger(stream)


async def _read_request(conn: h11.Connection, stream: ByteStream) -> h11.Request | None:
    """The client's request; None when it closed before sending one."""
    started = False
    while True:
        event = conn.next_event()
        if isinstance(event, h11.Request):
            return event
        if event is not h11.NEED_DATA:
            return None
        try:
            data = await stream.receive(MAX_HEAD)
        except anyio.EndOfStream:
            data = b""
        # A method is a token: bytes that cannot begin one are refused now, not at the timeout.
        if data and not started and first_byte_kind(data[0]) != "http":
            raise h11.RemoteProtocolError("not an HTTP request", error_status_hint=400)
        started = started or bool(data)
        conn.receive_data(data)


def _answer(view: AdminView, conn: h11.Connection, request: h11.Request) -> bytes:
    path = urlsplit(request.target.decode("ascii", "replace")).path
    endpoint = _ENDPOINTS.get(path)
    extra: list[tuple[str, str]] = []
    users = view.users()
    if path != "/healthz" and users and not _authorized(request, users):
        status, content_type, body = 401, _TEXT, b"authentication required\n"
        extra.append(("WWW-Authenticate", 'Basic realm="chainer admin"'))
    elif endpoint is None:
        status, content_type = 404, _TEXT
        body = f"not found; endpoints: {' '.join(_ENDPOINTS)}\n".encode()
    elif request.method not in _METHODS:
        status, content_type, body = 405, _TEXT, b"only GET and HEAD\n"
        extra.append(("Allow", "GET, HEAD"))
    else:
        try:
            content_type, body = endpoint(view, request)
            status = 200
            if path == "/healthz" and view.draining():
                status, body = 503, b"draining\n"
            if content_type == _HTML:
                extra.extend(page_headers())
        except LookupError as exc:
            status, content_type, body = 404, _TEXT, f"{exc}\n".encode()
        except Exception:
            log.exception("admin: %s failed", path)
            status, content_type, body = 500, _TEXT, b"internal error; see the server's log\n"
    headers = [
        ("Content-Type", content_type),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Connection", "close"),
        *extra,
    ]
    reason = HTTPStatus(status).phrase
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
    if request.method != b"HEAD":
        out += conn.send(h11.Data(data=body)) or b""
    return out + (conn.send(h11.EndOfMessage()) or b"")


def _authorized(request: h11.Request, users: Mapping[str, str]) -> bool:
    return any(
        name == b"authorization" and check_basic(value, users) is not None
        for name, value in request.headers
    )


async def _linger(stream: ByteStream) -> None:
    """Half-close, then drain what the client still sends until it closes (bounded)."""
    await stream.send_eof()
    drained = 0
    with anyio.move_on_after(LINGER):
        try:
            while drained < _LINGER_BYTES:
                drained += len(await stream.receive(READ_SIZE))
        except anyio.EndOfStream:
            pass


__all__ = ["AdminView", "hops_json", "pac_text", "routes_json", "serve_admin", "tunnels_json"]
