"""SOCKS5, SOCKS4 and SOCKS4a as spoken by a client asking a hop to connect somewhere.

How this works. A client object is built from the target (and credentials), which are
checked and encoded once, then driven like `ConnectResponseReader`: feed it what the hop
sent (`receive_data`, `b""` for EOF) and call `next_event` until it stops saying
`NEED_DATA`. SOCKS4 is one request (`request()`) and one answer. SOCKS5 may take three
round trips (method selection, the RFC 1929 sub-negotiation, the CONNECT): the caller
sends `greeting()`, and between answers the client hands out a `Send` whose bytes must be
written before reading on — unless it is `early` (pipelined): then `greeting()` holds
every message at once and the answers are read in a row. Every answer's length is known
from its first bytes, so each stage waits for exactly that many and consumes no more:
bytes that arrive early stay buffered for the next stage, and whatever follows the final
answer is left in `trailing_data` (after `Connected`, the tunnel's first bytes). A whole
answer in one segment is parsed with a few slices.

What the hop meant is an event (`Connected`, `Rejected`, `AuthFailed`). The client
raises only for answers that are not SOCKS (`ProtocolError`, on the first byte that
shows it) and for misuse by the caller (`RuntimeError`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TypeVar

from .reader import NEED_DATA, NeedData, ProtocolError, Reader, quote
from .socks_address import (
    ADDRESS_TYPES,
    address_size,
    ascii_name,
    decode_address,
    encode_address,
    encode_port,
    ipv4_text,
)
from .socks_codes import (
    CMD_CONNECT,
    METHOD_NO_AUTH,
    METHOD_NONE_ACCEPTABLE,
    METHOD_USERPASS,
    REP_SUCCEEDED,
    REP_TEXT,
    SOCKS4,
    SOCKS4_GRANTED,
    SOCKS4_TEXT,
    SOCKS5,
    USERPASS_OK,
    USERPASS_VERSION,
)

__all__ = [
    "AuthFailed",
    "Connected",
    "Rejected",
    "Send",
    "Socks4Client",
    "Socks4Event",
    "Socks5Client",
    "Socks5Event",
]


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to write to the hop now, before reading its next answer."""

    # Not in the repr: it may be the RFC 1929 sub-negotiation, which carries the password.
    data: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class Connected:
    """The hop connected; `trailing_data` is the tunnel's first bytes."""

    bound_host: str
    bound_port: int


@dataclass(frozen=True, slots=True)
class Rejected:
    """The hop refused the CONNECT: SOCKS5 REP or SOCKS4 CD, and what it means."""

    code: int
    text: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """The hop accepted none of the offered methods, or refused the credentials."""

    reason: str


Socks5Event = NeedData | Send | Connected | Rejected | AuthFailed
Socks4Event = NeedData | Connected | Rejected

_Ev = TypeVar("_Ev", Socks5Event, Socks4Event)


# ------------------------------------------------------------------------------ reader


class _Reader(Reader[_Ev]):
    """What both clients add to `Reader`: their EOF errors, the first-byte check, and
    the two-byte answers."""

    __slots__ = ()

    def _closed(self, available: int, what: str) -> str:
        if available == 0:
            return f"closed without answering the {what}"
        unit = "byte" if available == 1 else "bytes"
        return f"closed mid-answer to the {what} after {available} {unit}"

    def _check_first(self, versions: tuple[int, ...], what: str) -> None:
        """Refuse the answer on its first byte when that byte is none of `versions`."""
        buf, pos = self._buf, self._pos
        if len(buf) > pos and buf[pos] not in versions:
            raise ProtocolError(f"not {what}: {quote(bytes(buf[pos : pos + 16]))}")

    def _pair(self, version: int, what: str, stage: str) -> int | None:
        """The second byte of a two-byte answer (version, value), consumed; None until
        both bytes are here."""
        self._check_first((version,), what)
        if not self._have(2, stage):
            return None
        self._pos += 2
        return self._buf[self._pos - 1]


class _Stage(Enum):
    METHOD = auto()
    AUTH = auto()
    REPLY = auto()


class Socks5Client(_Reader[Socks5Event]):
    """RFC 1928 CONNECT, with RFC 1929 username/password when credentials are given.

    `host` is an IPv4 literal, an IPv6 literal without brackets, or a DNS name (ASCII,
    sent for the hop to resolve). Credentials are offered alongside no-auth, so a hop
    that wants none still works.

    `early`: every message goes out at once, in `greeting()` — the greeting, the
    credentials and the CONNECT request — and no `Send` follows, for a hop known to read
    each message exactly (pipelining). Then exactly one method is offered (no-auth, or
    username/password when there are credentials), so the hop's choice cannot make it
    read the bytes after the greeting as something they are not: it picks the offered
    method, or none and closes (RFC 1928), and a refused login is closed too (RFC 1929).
    """

    __slots__ = ("_auth", "_early", "_greeting", "_request", "_stage")

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
        early: bool = False,
    ) -> None:
        super().__init__()
        self._request = bytes((SOCKS5, CMD_CONNECT, 0)) + encode_address(host) + encode_port(port)
        self._auth = _userpass(username, password)
        self._early = early
        if self._auth is None:
            methods: tuple[int, ...] = (METHOD_NO_AUTH,)
        elif early:
            methods = (METHOD_USERPASS,)
        else:
            methods = (METHOD_NO_AUTH, METHOD_USERPASS)
        self._greeting = bytes((SOCKS5, len(methods), *methods))
        self._stage = _Stage.METHOD

    def greeting(self) -> bytes:
        """The first bytes to send: version and the offered methods (for an `early`
        client, the credentials and the CONNECT request too)."""
        if self._early:
            return self._greeting + (self._auth or b"") + self._request
        return self._greeting

    def _step(self) -> Socks5Event:
        if self._stage is _Stage.METHOD:
            return self._method_selection()
        if self._stage is _Stage.AUTH:
            return self._auth_reply()
        return self._connect_reply()

    def _method_selection(self) -> Socks5Event:
        method = self._pair(SOCKS5, "a SOCKS5 answer to the greeting", "greeting")
        if method is None:
            return NEED_DATA
        if method == METHOD_NO_AUTH:
            if self._early and self._auth is not None:
                raise ProtocolError("the hop chose no authentication, which was not offered")
            self._stage = _Stage.REPLY
            # (early: the request went with the greeting; its answer may be here already)
            return self._connect_reply() if self._early else Send(self._request)
        if method == METHOD_USERPASS:
            if self._auth is None:
                raise ProtocolError("the hop chose username/password, which was not offered")
            self._stage = _Stage.AUTH
            return self._auth_reply() if self._early else Send(self._auth)
        if method == METHOD_NONE_ACCEPTABLE:
            if self._auth is None:
                reason = "the hop requires authentication; no credentials were offered"
            elif self._early:
                reason = "the hop does not accept username/password"
            else:
                reason = "the hop accepts neither no-auth nor username/password"
            return self._finish(AuthFailed(reason), self._pos)
        raise ProtocolError(f"the hop chose method 0x{method:02x}, which was not offered")

    def _auth_reply(self) -> Socks5Event:
        status = self._pair(
            USERPASS_VERSION, "an RFC 1929 answer to username/password", "username/password"
        )
        if status is None:
            return NEED_DATA
        if status != USERPASS_OK:
            reason = f"the hop refused the username/password (status 0x{status:02x})"
            return self._finish(AuthFailed(reason), self._pos)
        self._stage = _Stage.REPLY
        return self._connect_reply() if self._early else Send(self._request)

    def _connect_reply(self) -> Socks5Event:
        self._check_first((SOCKS5,), "a SOCKS5 answer to the CONNECT request")
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= 4 and buf[pos + 3] not in ADDRESS_TYPES:
            raise ProtocolError(f"unknown address type 0x{buf[pos + 3]:02x} in the CONNECT reply")
        # Five bytes reach the length of a domain; every reply is at least that long.
        if not self._have(5, "CONNECT request"):
            return NEED_DATA
        size = 3 + address_size(buf, pos + 3)
        if not self._have(size, "CONNECT request"):
            return NEED_DATA
        # RSV (pos + 2) is ignored: it carries nothing and some servers fill it.
        rep = buf[pos + 1]
        if rep != REP_SUCCEEDED:
            rejected = Rejected(rep, REP_TEXT.get(rep, f"unknown reply 0x{rep:02x}"))
            return self._finish(rejected, pos + size)
        # A name on the wire is ASCII (IDNA); anything else is shown escaped.
        host, port = decode_address(buf, pos + 3, readable=True)
        return self._finish(Connected(host, port), pos + size)


class Socks4Client(_Reader[Socks4Event]):
    """SOCKS4 CONNECT, or SOCKS4a when `socks4a` is true (the hop resolves names).

    SOCKS4 carries only IPv4 literals; SOCKS4a also a DNS name. Neither carries IPv6.
    """

    __slots__ = ("_request",)

    def __init__(self, host: str, port: int, *, user_id: str = "", socks4a: bool) -> None:
        super().__init__()
        user = _socks4_field(user_id, "user id")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            ip = None
        if ip is None:
            if not socks4a:
                raise ValueError(f"SOCKS4 needs an IPv4 address, not a name: {quote(host)}")
            # SOCKS4a: DSTIP 0.0.0.x (x != 0) says a name follows the user id.
            dst = b"\x00\x00\x00\x01"
            name = ascii_name(host) + b"\x00"
        elif ip.version == 4:
            dst = ip.packed
            if dst[:3] == b"\x00\x00\x00" and dst[3]:
                # A SOCKS4a hop would wait for a name after the user id.
                raise ValueError(f"{host} cannot be sent over SOCKS4: it marks a SOCKS4a name")
            name = b""
        else:
            raise ValueError(f"SOCKS4 cannot carry an IPv6 address: {quote(host)}")
        self._request = (
            bytes((SOCKS4, CMD_CONNECT)) + encode_port(port) + dst + user + b"\x00" + name
        )

    def request(self) -> bytes:
        """The bytes to send: the CONNECT request."""
        return self._request

    def _step(self) -> Socks4Event:
        # The reply's VN is 0; some servers echo the request's 4.
        self._check_first((0, SOCKS4), "a SOCKS4 answer to the request")
        if not self._have(8, "SOCKS4 request"):
            return NEED_DATA
        buf, pos = self._buf, self._pos
        code = buf[pos + 1]
        if code != SOCKS4_GRANTED:
            rejected = Rejected(code, SOCKS4_TEXT.get(code, f"unknown reply {code}"))
            return self._finish(rejected, pos + 8)
        port = int.from_bytes(buf[pos + 2 : pos + 4])
        return self._finish(Connected(ipv4_text(buf[pos + 4 : pos + 8]), port), pos + 8)


# ----------------------------------------------------------------------------- encoding


def _userpass(username: str | None, password: str | None) -> bytes | None:
    """The RFC 1929 sub-negotiation, or None without credentials.

    Errors never quote the credentials.
    """
    if username is None:
        if password is not None:
            raise ValueError("a SOCKS5 password needs a username")
        return None
    user = _utf8(username, "SOCKS5 username")
    secret = _utf8(password or "", "SOCKS5 password")
    if not 1 <= len(user) <= 255:
        raise ValueError("a SOCKS5 username must be 1 to 255 bytes of UTF-8")
    # RFC 1929 asks for 1..255; an empty password is sent as length 0, as curl does.
    if len(secret) > 255:
        raise ValueError("a SOCKS5 password must be at most 255 bytes of UTF-8")
    return bytes((USERPASS_VERSION, len(user))) + user + bytes((len(secret),)) + secret


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"the {what} is not encodable as UTF-8") from None


def _socks4_field(text: str, what: str) -> bytes:
    """A NUL-terminated SOCKS4 field, without its NUL."""
    if "\x00" in text:
        raise ValueError(f"a SOCKS4 {what} cannot contain NUL")
    data = _utf8(text, f"SOCKS4 {what}")
    if len(data) > 255:
        raise ValueError(f"a SOCKS4 {what} must be at most 255 bytes")
    return data
