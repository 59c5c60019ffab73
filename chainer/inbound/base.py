"""What every inbound protocol shares: the request as the connection flow sees it, the
client errors, and the small helpers for answering and authenticating a client."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import anyio
from anyio.abc import ByteStream

from ..errors import ChainerError
from ..models import Address
from .answers import Failure

__all__ = [
    "ClientError",
    "ClientGone",
    "Inbound",
    "Request",
    "check_basic",
    "check_user",
    "send_quietly",
]


Login = Literal["missing", "wrong"]


class ClientError(ChainerError):
    """The client's request cannot be served; answer `status` and close. `login` says
    whether it is about credentials: none given where they are needed, or wrong ones
    (whose refusal the server may slow down, see server/throttle.py)."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
        *,
        login: Login | None = None,
    ):
        self.status = status
        self.message = message
        self.headers = headers
        self.login = login
        super().__init__(message)


class ClientGone(ChainerError):
    """The client closed before finishing its request."""


@dataclass(slots=True)
class Request:
    """What a client asked for, whatever protocol it spoke."""

    kind: Literal["connect", "forward"]
    target: Address
    head: bytes = b""  # forward: the rewritten request head for the origin
    chunked: bool = False
    user: str | None = None
    body: bool = False  # forward: a body follows the head (chunked, or a length over 0)
    # Transparent (inbound/transparent.py): the address the client was going to, and
    # where the name in `target` came from ("none": `target` is that address).
    original: Address | None = None
    sniffed: Literal["sni", "host", "fake_ip", "none"] | None = None
    # The fake address (of chainer's DNS) the client asked for; `target` is its name.
    fake_ip: Address | None = None


class Inbound(Protocol):
    """The server side of one client's protocol, as the per-connection flow sees it."""

    async def read_request(self) -> Request: ...

    async def reject(self, error: ClientError) -> None:
        """Answer a request that could not be understood or accepted, then close."""

    async def refuse(self, failure: Failure) -> None:
        """Answer a request that routing or the chain could not serve."""

    async def established(self) -> ByteStream:
        """Tell the client its tunnel is up; its stream, early bytes first."""


async def send_quietly(stream: ByteStream, data: bytes) -> None:
    """Send a last answer to a client that may already be gone."""
    try:
        await stream.send(data)
    except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass


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


def check_basic(value: bytes, users: Mapping[str, str]) -> str | None:
    """The user a Basic `Authorization`/`Proxy-Authorization` value names, if its
    password is right (see check_user); None otherwise."""
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
