"""The server side of a client speaking HTTP/1.1 to us.

Requests are parsed by h11, after a strict check of the whole head: `CONNECT host:port`
asks for a tunnel, an absolute-form `GET http://host/...` is forwarded through the same
route. A plainly well-formed CONNECT (the common case) is read without h11
(proto/request.py parse_connect_head); anything else goes through h11, which has the
last word on what is malformed. Bytes a client sends after its request and before our
answer stay buffered and are delivered once the chain is up.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
import h11
from anyio.abc import ByteStream

from ..errors import BadTarget
from ..models import Address, Limits
from ..proto.forward import LAST_CHUNK, encode_chunk, forward_request
from ..proto.request import check_request_head, find_head_end, parse_connect_head
from ..relay.result import BadRequestBody, ClientClosed
from ..relay.streams import with_prefix
from ..routing.target import normalize_host, parse_authority
from ..text import READ_SIZE
from .answers import Failure, error_response
from .base import ClientError, ClientGone, Request, check_basic, send_quietly

MAX_HEAD = 16384
_DEFAULT_LIMITS = Limits()


@dataclass(eq=False)
class HttpInbound:
    """One client connection speaking HTTP to us."""

    stream: ByteStream
    users: Mapping[str, str] = field(default_factory=dict)
    limits: Limits = _DEFAULT_LIMITS
    _conn: h11.Connection | None = None  # made only for a request that needs h11
    _pending: bytes = b""
    _early: bytes | None = None  # after a CONNECT read without h11: what followed its head
    closed: bool = False  # the client's side has ended (end of stream or a reset)

    @property
    def conn(self) -> h11.Connection:
        if self._conn is None:
            self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        return self._conn

    def feed(self, data: bytes) -> None:
        self._pending += data

    async def _read_head(self) -> tuple[bytes, int]:
        """Buffer the whole request head and check it strictly; the buffer (the head and
        whatever followed it) and where the head ends."""
        buffer, self._pending = self._pending, b""
        limit = self.limits.header_bytes
        while (end := find_head_end(buffer)) < 0:
            if len(buffer) > limit:
                raise ClientError(431, f"request head over {limit} bytes")
            try:
                data = await self.stream.receive(READ_SIZE)
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
        return buffer, end

    async def _next_event(self) -> Any:
        while True:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise ClientError(exc.error_status_hint, f"bad request: {exc}") from None
            if event is not h11.NEED_DATA:
                return event
            try:
                data = await self.stream.receive(READ_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                data = b""
            self.closed = self.closed or not data
            self.conn.receive_data(data)

    async def read_request(self) -> Request:
        buffer, end = await self._read_head()
        if buffer.startswith(b"CONNECT "):
            parsed = parse_connect_head(buffer[:end])
            if parsed is not None:
                raw_target, fields = parsed
                self._early = buffer[end:]
                return self._connect(raw_target.decode("ascii"), fields)
        self.conn.receive_data(_with_connect_host(buffer, end))
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed):
            raise ClientGone()
        if not isinstance(event, h11.Request):
            raise ClientError(400, "expected a request")
        target = event.target.decode("ascii", "replace")
        if event.method == b"CONNECT":
            request = self._connect(target, list(event.headers))
            if not isinstance(await self._next_event(), h11.EndOfMessage):
                raise ClientError(400, "CONNECT with a body")
            return request
        user = self._authenticate(event.headers)
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
        body = chunked or any(
            name == b"content-length" and value.strip() not in (b"", b"0")
            for name, value in event.headers
        )
        return Request("forward", address, head=head, chunked=chunked, user=user, body=body)

    def _connect(self, target: str, fields: list[tuple[bytes, bytes]]) -> Request:
        """A CONNECT's checks, whoever parsed it (lower-case field names)."""
        user = self._authenticate(fields)
        if target.startswith("/") or "://" in target:
            raise ClientError(400, "CONNECT needs host:port")
        for name, value in fields:
            if name == b"transfer-encoding" or (
                name == b"content-length" and value.strip() != b"0"
            ):
                raise ClientError(400, "CONNECT with a body")
        try:
            address = parse_authority(target)
        except BadTarget as exc:
            raise ClientError(400, str(exc)) from None
        return Request("connect", address, user=user)

    def _authenticate(self, fields: Iterable[tuple[bytes, bytes]]) -> str | None:
        if not self.users:
            return None
        challenge = (("Proxy-Authenticate", 'Basic realm="chainer"'),)
        given = False
        for name, value in fields:
            if name == b"proxy-authorization":
                given = True
                user = check_basic(value, self.users)
                if user is not None:
                    return user
        if given:
            raise ClientError(407, "proxy credentials refused", challenge, login="wrong")
        raise ClientError(407, "proxy authentication required", challenge, login="missing")

    async def established(self) -> ByteStream:
        """Answer 200 to a CONNECT; the client stream, early bytes first."""
        await self.stream.send(b"HTTP/1.1 200 Connection established\r\n\r\n")
        if self._early is not None:
            return with_prefix(self.stream, self._early)
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


@dataclass(eq=False)
class _ForwardStream(ByteStream):
    inbound: HttpInbound
    chunked: bool
    done: bool = False

    async def receive(self, max_bytes: int = 65536) -> bytes:
        while not self.done:
            try:
                event = await self.inbound._next_event()
            except ClientError as exc:
                if self.inbound.closed:
                    raise ClientClosed from None  # it went away inside its body
                raise BadRequestBody(f"bad request body: {exc.message}") from None
            if isinstance(event, h11.Data):
                if not event.data:
                    continue
                return encode_chunk(bytes(event.data)) if self.chunked else bytes(event.data)
            self.done = True
            if isinstance(event, h11.EndOfMessage) and self.chunked:
                return LAST_CHUNK
            if not isinstance(event, h11.EndOfMessage):
                raise ClientClosed
        # The request is complete; the origin's answer ends the exchange. Until it does,
        # watch the client: one that goes away ends the upstream side at once rather
        # than leaving it until idle_timeout. (What a client sends meanwhile — a
        # pipelined request — is not served: the answer ends with Connection: close.)
        while True:
            try:
                await self.inbound.stream.receive(max_bytes)
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                raise ClientClosed from None

    async def send(self, item: bytes) -> None:
        await self.inbound.stream.send(item)

    async def send_eof(self) -> None:
        await self.inbound.stream.send_eof()

    async def aclose(self) -> None:
        await self.inbound.stream.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inbound.stream.extra_attributes


_HOST_FIELD = re.compile(rb"\r\nhost[ \t]*:", re.IGNORECASE)


def _with_connect_host(buffer: bytes, end: int) -> bytes:
    """A CONNECT without Host gets one naming its own target. HTTP/1.1 requires Host and
    h11 enforces it, but many clients leave it out of CONNECT, whose target already says
    where to go, and squid accepts them; so do we. Other requests are left as sent."""
    if not buffer.startswith(b"CONNECT ") or _HOST_FIELD.search(buffer, 0, end):
        return buffer
    line_end = buffer.find(b"\r\n")
    target = buffer[8:line_end].rpartition(b" ")[0]
    return buffer[: line_end + 2] + b"Host: " + target + b"\r\n" + buffer[line_end + 2 :]
