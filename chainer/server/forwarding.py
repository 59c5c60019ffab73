"""Plain-HTTP forwarding: an absolute-form request (`GET http://host/path`) goes on as a
request, not through a CONNECT.

The head the inbound side cleaned (hop-by-hop headers and Proxy-Authorization gone)
gets what this proxy adds — Via, X-Forwarded-For — and, when the last hop is an HTTP
proxy that takes the request itself, goes back into proxy form with that hop's
credentials. For such a hop the dialer sends the head (`outbound.steps.forward`) and,
for a request without a body, waits for the first head of the answer within the hop's
handshake_timeout, failing over like a CONNECT; otherwise the head is sent here, once
the chain reaches the origin. The body and the answer then move through the generic
relay, which ends with the upstream's answer.
"""

from __future__ import annotations

from ..inbound import HttpInbound, Request
from ..models import Address, HttpOptions, Proxy, Route
from ..outbound.dialer import Dialed, Forward
from ..proto.forward import proxy_form
from ..proto.http import basic_authorization
from ..relay.generic import relay
from ..relay.result import RelayResult


def plan(request: Request, options: HttpOptions, route: Route, client: str) -> Forward:
    """What the dialer sends an HTTP last hop for this request (see module doc)."""
    head = forwarded_head(request.head, options, route, client)
    return Forward(lambda hop: for_proxy(head, request.target, hop), body=request.body)


async def forward(
    inbound: HttpInbound,
    request: Request,
    dialed: Dialed,
    options: HttpOptions,
    route: Route,
    client: str,
    idle: float,
    result: RelayResult,
) -> RelayResult:
    """Send the request on (unless the dialer already gave it to an HTTP last hop) and
    relay until the upstream has answered; `client` is the client's address as the
    access line shows it."""
    head = forwarded_head(request.head, options, route, client)
    if dialed.forward_to is not None:
        head = for_proxy(head, request.target, dialed.forward_to)  # sent by the dialer
    else:
        await dialed.stream.send(head)
    result.up += len(head)
    return await relay(
        inbound.body_stream(request.chunked),
        dialed.stream,
        idle,
        end_with_upstream=True,
        result=result,
    )


def forwarded_head(head: bytes, options: HttpOptions, route: Route, client: str) -> bytes:
    """The forwarded request head with what this proxy adds: Via (unless the route is
    anonymous or Via is off) and X-Forwarded-For (only when configured)."""
    extra = b""
    if options.via and not route.anonymous:
        extra += f"Via: 1.1 {options.via}\r\n".encode()
    if options.x_forwarded_for and not route.anonymous:
        client_ip = client.rpartition(":")[0].strip("[]")
        extra += f"X-Forwarded-For: {client_ip}\r\n".encode()
    return head[:-2] + extra + b"\r\n" if extra else head


def for_proxy(head: bytes, target: Address, proxy: Proxy) -> bytes:
    """The head in proxy form for an HTTP last hop, with that hop's credentials."""
    authorization = None
    if proxy.username is not None:
        authorization = basic_authorization(proxy.username, proxy.password or "")
    return proxy_form(head, target.authority(), authorization)
