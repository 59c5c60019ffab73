"""The server side of a client's request: which protocol, which destination, and answers.

The first byte picks the protocol: 0x16 is TLS (where the listener has a certificate),
0x05 and 0x04 are SOCKS, a token character begins an HTTP request, anything else is
answered 400 at once. HTTP requests are parsed by h11: `CONNECT host:port` asks for a
tunnel, an absolute-form `GET http://host/...` is forwarded through the same route.
Bytes a client sends after its request and before our answer stay buffered and are
delivered once the chain is up.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import anyio
import h11
from anyio.abc import ByteStream

from ..errors import BadTarget, ChainerError
from ..models import Address, Limits
from ..proto.forward import LAST_CHUNK, encode_chunk, forward_request
from ..proto.request import check_request_head, find_head_end
from ..relay.streams import with_prefix
from ..routing.target import normalize_host, parse_authority
from .answers import Failure

MAX_HEAD = 16384
_DEFAULT_LIMITS = Limits()
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    414: "URI Too Long",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class ClientError(ChainerError):
    """The client's request cannot be served; answer `status` and close."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        self.status = status
        self.message = message
        self.headers = headers
        super().__init__(message)


class ClientGone(ChainerError):
    """The client closed before finishing its request."""


def first_byte_kind(first: int) -> Literal["tls", "socks5", "socks4", "http", "garbage"]:
    if first == 0x16:
        return "tls"
    if first == 0x05:
        return "socks5"
    if first == 0x04:
        return "socks4"
    if first in _TOKEN:
        return "http"
    return "garbage"


def error_response(
    status: int,
    message: str,
    *,
    proxy_status: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection."""
    body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    if proxy_status:
        lines.append(f"Proxy-Status: {proxy_status}")
    lines.extend(f"{k}: {v}" for k, v in extra)
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


@dataclass(slots=True)
class Request:
    """What a client asked for, whatever protocol it spoke."""

    kind: Literal["connect", "forward"]
    target: Address
    head: bytes = b""  # forward: the rewritten request head for the origin
    chunked: bool = False
    user: str | None = None


class Inbound(Protocol):
    """The server side of one client's protocol, as the per-connection flow sees it."""

    async def read_request(self) -> Request: ...

    async def reject(self, error: ClientError) -> None:
        """Answer a request that could not be understood or accepted, then close."""

    async def refuse(self, failure: Failure) -> None:
        """Answer a request that routing or the chain could not serve."""

    async def established(self) -> ByteStream:
        """Tell the client its tunnel is up; its stream, early bytes first."""


def open_inbound(
    kind: str,
    stream: ByteStream,
    users: Mapping[str, str],
    first: bytes,
    limits: Limits = _DEFAULT_LIMITS,
) -> Inbound | None:
    """The inbound for a first byte of `kind`; None when no protocol begins that way."""
    if kind == "http":
        inbound = HttpInbound(stream, users, limits)
        inbound.feed(first)
        return inbound
    if kind in ("socks5", "socks4"):
        from .socks import open_socks

        return open_socks(kind, stream, users, first)
    return None


@dataclass(eq=False)
class HttpInbound:
    """One client connection speaking HTTP to us."""

    stream: ByteStream
    users: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = _DEFAULT_LIMITS
    conn: h11.Connection = field(
        default_factory=lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    )
    _pending: bytes = b""

    def feed(self, data: bytes) -> None:
        self._pending += data

    async def _read_head(self) -> None:
        """Buffer the whole request head, check it strictly, then hand it (and whatever
        followed it) to h11."""
        buffer, self._pending = self._pending, b""
        limit = self.limits.header_bytes
        while (end := find_head_end(buffer)) < 0:
            if len(buffer) > limit:
                raise ClientError(431, f"request head over {limit} bytes")
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            if not data:
                if not buffer:
                    raise ClientGone()
                raise ClientError(400, "connection closed inside the request head")
            buffer += data
        if end > limit:
            raise ClientError(431, f"request head over {limit} bytes")
        problem = check_request_head(buffer[:end], self.limits.header_fields)
        if problem is not None:
            raise ClientError(*problem)
        self.conn.receive_data(buffer)

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ClientError(exc.error_status_hint, f"bad request: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            self.conn.receive_data(data)

    async def read_request(self) -> Request:
        await self._read_head()
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            raise ClientGone()
        if not isinstance(event, h11.Request):
            raise ClientError(400, "expected a request")
        user = self._authenticate(event)
        target = event.target.decode("ascii", "replace")
        if event.method == b"CONNECT":
            if target.startswith("/") or "://" in target:
                raise ClientError(400, "CONNECT needs host:port")
            for name, value in event.headers:
                if name == b"transfer-encoding" or (
                    name == b"content-length" and value.strip() != b"0"
                ):
                    raise ClientError(400, "CONNECT with a body")
            try:
                address = parse_authority(target)
            except BadTarget as exc:
                raise ClientError(400, str(exc)) from None
            end = await self._next_event()
            if not isinstance(end, h11.EndOfMessage):
                raise ClientError(400, "CONNECT with a body")
            return Request("connect", address, user=user)
        if target.startswith("/") or target == "*":
            raise ClientError(400, "not a proxy request: use an absolute URL or CONNECT")
        try:
            host, port, head = forward_request(
                event.method, event.target, list(event.headers.raw_items()), event.http_version
            )
            address = Address(normalize_host(host), port)
        except ValueError as exc:
            raise ClientError(400, str(exc)) from None
        chunked = any(
            name == b"transfer-encoding" and b"chunked" in value.lower()
            for name, value in event.headers
        )
        return Request("forward", address, head=head, chunked=chunked, user=user)

    def _authenticate(self, request: h11.Request) -> str | None:
        if not self.users:
            return None
        challenge = (("Proxy-Authenticate", 'Basic realm="chainer"'),)
        for name, value in request.headers:
            if name == b"proxy-authorization":
                user = _check_basic(value, self.users)
                if user is not None:
                    return user
        raise ClientError(407, "proxy authentication required", challenge)

    async def established(self) -> ByteStream:
        """Answer 200 to a CONNECT; the client stream, early bytes first."""
        await self.stream.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        early, _closed = self.conn.trailing_data
        return with_prefix(self.stream, early)

    async def reject(self, error: ClientError) -> None:
        await send_quietly(
            self.stream, error_response(error.status, error.message, extra=error.headers)
        )

    async def refuse(self, failure: Failure) -> None:
        data = error_response(
            failure.http_status, failure.message, proxy_status=failure.proxy_status_header
        )
        await send_quietly(self.stream, data)

    def body_stream(self, chunked: bool) -> ByteStream:
        """The client side of a forwarded request: receive() gives the request body as it
        goes to the origin (re-chunked when chunked), then waits; send() writes to the client."""
        return _ForwardStream(self, chunked)


async def send_quietly(stream: ByteStream, data: bytes) -> None:
    """Send a last answer to a client that may already be gone."""
    try:
        await stream.send(data)
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


def _check_basic(value: bytes, users: Mapping[str, str]) -> str | None:
    scheme, _, token = value.partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return check_user(users, user, password)


def check_user(users: Mapping[str, str], username: str, password: str) -> str | None:
    """The user these credentials belong to. Every user is compared, in constant time,
    so timing says nothing about which names exist."""
    found = None
    for name, secret in users.items():
        ok_name = hmac.compare_digest(name.encode(), username.encode())
        ok_pass = hmac.compare_digest(secret.encode(), password.encode())
        if ok_name and ok_pass:
            found = name
    return found


@dataclass(eq=False)
class _ForwardStream(ByteStream):
    inbound: HttpInbound
    chunked: bool
    done: bool = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self.done:
            event = await self.inbound._next_event()
            if isinstance(event, h11.Data):
                if not event.data:
                    continue
                return encode_chunk(bytes(event.data)) if self.chunked else bytes(event.data)
            self.done = True
            if isinstance(event, h11.EndOfMessage) and self.chunked:
                return LAST_CHUNK
            if not isinstance(event, h11.EndOfMessage):
                raise anyio.EndOfStream
        # The request is complete; the origin's answer ends the exchange.
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async def send(self, item: bytes) -> None:
        await self.inbound.stream.send(item)

    async def send_eof(self) -> None:
        await self.inbound.stream.send_eof()

    async def aclose(self) -> None:
        await self.inbound.stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inbound.stream.extra_attributes
