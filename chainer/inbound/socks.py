"""The server side for SOCKS clients: SOCKS5 (RFC 1928, RFC 1929 auth) and SOCKS4/4a.

Only CONNECT is served; BIND and UDP ASSOCIATE are answered "command not supported".
Failures are answered with the reply code that fits (see answers.py); bytes the client
sends after its request are kept and delivered once the chain is up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import ByteStream

from ..errors import BadTarget
from ..models import Address
from ..proto import socks_codes as codes
from ..proto.http import NEED_DATA, ProtocolError
from ..proto.socks_server import (
    BadRequest,
    Credentials,
    Failed,
    Request4,
    Socks4Server,
    Socks5Server,
)
from ..proto.socks_server import Request as Request5
from ..proto.socks_server import Send as Send5
from ..relay.streams import with_prefix
from ..routing.target import normalize_host
from ..text import READ_SIZE
from .answers import Failure
from .base import ClientError, Request, check_user, send_quietly


def open_socks(
    kind: str, stream: ByteStream, users: Mapping[str, str], first: bytes
) -> Socks5Inbound | Socks4Inbound:
    inbound: Socks5Inbound | Socks4Inbound
    if kind == "socks5":
        inbound = Socks5Inbound(stream, users, Socks5Server(require_auth=bool(users)))
    else:
        inbound = Socks4Inbound(stream, users, Socks4Server())
    inbound.codec.receive_data(first)
    return inbound


async def _receive(stream: ByteStream) -> bytes:
    try:
        return await stream.receive(READ_SIZE)
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        return b""


def _target(host: str, port: int) -> Address:
    if port == 0:
        raise BadTarget("port 0")
    return Address(normalize_host(host), port)


@dataclass(eq=False)
class Socks5Inbound:
    stream: ByteStream
    users: Mapping[str, str]
    codec: Socks5Server
    _refusal: bytes = b""  # a login's refusal, sent by reject() (after any slowing down)

    async def read_request(self) -> Request:
        user: str | None = None
        while True:
            try:
                event = self.codec.next_event()
            except ProtocolError as exc:
                raise ClientError(400, f"bad SOCKS5 handshake: {exc}") from None
            if event is NEED_DATA:
                self.codec.receive_data(await _receive(self.stream))
            elif isinstance(event, Send5):
                await self.stream.send(event.data)
            elif isinstance(event, Credentials):
                user = check_user(self.users, event.username, event.password)
                if user is None:
                    self._refusal = self.codec.auth_result(False)
                    raise ClientError(407, "SOCKS5: username/password refused", login="wrong")
                await self.stream.send(self.codec.auth_result(True))
            elif isinstance(event, Failed):
                raise ClientError(407, f"SOCKS5: {event.reason}", login="missing")
            elif isinstance(event, BadRequest):
                await self.stream.send(self.codec.reply(event.reply_code))
                raise ClientError(400, f"SOCKS5: {event.reason}")
            elif isinstance(event, Request5):
                if event.command != codes.CMD_CONNECT:
                    await self.stream.send(self.codec.reply(codes.REP_COMMAND_NOT_SUPPORTED))
                    raise ClientError(405, f"SOCKS5 command {event.command} not supported")
                try:
                    target = _target(event.host, event.port)
                except BadTarget as exc:
                    await self.stream.send(self.codec.reply(codes.REP_GENERAL_FAILURE))
                    raise ClientError(400, str(exc)) from None
                return Request("connect", target, user=user)

    async def reject(self, error: ClientError) -> None:
        """A refused login is answered now; other answers that were due were sent as the
        handshake went. The connection closes."""
        if self._refusal:
            await send_quietly(self.stream, self._refusal)

    async def refuse(self, failure: Failure) -> None:
        await send_quietly(self.stream, self.codec.reply(failure.socks5_reply))

    async def established(self) -> ByteStream:
        await self.stream.send(self.codec.reply(codes.REP_SUCCEEDED))
        return with_prefix(self.stream, self.codec.trailing_data)


@dataclass(eq=False)
class Socks4Inbound:
    stream: ByteStream
    users: Mapping[str, str]
    codec: Socks4Server

    async def read_request(self) -> Request:
        while True:
            try:
                event = self.codec.next_event()
            except ProtocolError as exc:
                raise ClientError(400, f"bad SOCKS4 request: {exc}") from None
            if event is NEED_DATA:
                self.codec.receive_data(await _receive(self.stream))
                continue
            assert isinstance(event, Request4)
            if self.users:
                # SOCKS4 carries a user id but no password: it cannot authenticate.
                await self.stream.send(self.codec.reply(False))
                raise ClientError(407, "SOCKS4 cannot authenticate; this listener needs it")
            if event.command != codes.CMD_CONNECT:
                await self.stream.send(self.codec.reply(False))
                raise ClientError(405, f"SOCKS4 command {event.command} not supported")
            try:
                target = _target(event.host, event.port)
            except BadTarget as exc:
                await self.stream.send(self.codec.reply(False))
                raise ClientError(400, str(exc)) from None
            return Request("connect", target)

    async def reject(self, error: ClientError) -> None:
        """Answers that are due were sent as the request was read; the connection closes."""

    async def refuse(self, failure: Failure) -> None:
        await send_quietly(self.stream, self.codec.reply(False))

    async def established(self) -> ByteStream:
        await self.stream.send(self.codec.reply(True))
        return with_prefix(self.stream, self.codec.trailing_data)
