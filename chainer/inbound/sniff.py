"""The first byte of a connection picks its protocol.

0x16 is TLS (where the listener has a certificate), 0x05 and 0x04 are SOCKS, a token
character begins an HTTP request (a method is a token), anything else is answered 400 at
once rather than after a timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from anyio.abc import ByteStream

from ..models import Limits
from .base import Inbound
from .http import HttpInbound
from .socks import open_socks

__all__ = ["Kind", "first_byte_kind", "open_inbound"]

Kind = Literal["tls", "socks5", "socks4", "http", "garbage"]
_DEFAULT_LIMITS = Limits()
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def first_byte_kind(first: int) -> Kind:
    if first == 0x16:
        return "tls"
    if first == 0x05:
        return "socks5"
    if first == 0x04:
        return "socks4"
    if first in _TOKEN:
        return "http"
    return "garbage"


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
        return open_socks(kind, stream, users, first)
    return None
