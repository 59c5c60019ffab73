"""SOCKS5, SOCKS4 and SOCKS4a as spoken by a client asking a hop to connect somewhere.

How this works. A client object is built from the target (and credentials), which are
checked and encoded once, then driven like `ConnectResponseReader`: feed it what the hop
sent (`receive_data`, `b""` for EOF) and call `next_event` until it stops saying
`NEED_DATA`. SOCKS4 is one request (`request()`) and one answer. SOCKS5 may take three
round trips (method selection, the RFC 1929 sub-negotiation, the CONNECT): the caller
sends `greeting()`, and between answers the client hands out a `Send` whose bytes must be
written before reading on. Every answer's length is known from its first bytes, so each
stage waits for exactly that many and consumes no more: bytes that arrive early stay
buffered for the next stage, and whatever follows the final answer is left in
`trailing_data` (after `Connected`, the tunnel's first bytes). A whole answer in one
segment is parsed with a few slices.

What the hop meant is an event (`Connected`, `Rejected`, `AuthFailed`). The client
raises only for answers that are not SOCKS (`ProtocolError`, on the first byte that
shows it) and for misuse by the caller (`RuntimeError`).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Final, Generic, TypeVar

from .http import NEED_DATA, NeedData, ProtocolError, _quote
from .socks_codes import (
    ATYP_DOMAIN,
    ATYP_IPV4,
    ATYP_IPV6,
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


class _Reader(Generic[_Ev]):
    """The receive_data / next_event / trailing_data contract shared by both clients.

    `_buf` holds only bytes of the current stage and later ones: a stage deletes what it
    consumed, so an empty buffer at EOF means the hop never began the current answer.
    """

    __slots__ = ("_buf", "_eof", "_error", "_event")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._eof = False
        self._error: str | None = None
        self._event: _Ev | None = None

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the hop; `b""` means the hop closed its side."""
        if self._event is not None:
            raise RuntimeError("the answer is complete: later bytes belong to the next stage")
        if self._eof:
            if data:
                raise RuntimeError("data after EOF")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> bytes:
        """Bytes received and not consumed by an event; after `Connected`, the tunnel's."""
        return bytes(self._buf)

    def next_event(self) -> _Ev:
        """The next event; `NEED_DATA` until there is one. Repeats a final event."""
        if self._event is not None:
            return self._event
        if self._error is not None:
            raise ProtocolError(self._error)
        try:
            event = self._step()
        except ProtocolError as exc:
            self._error = str(exc)
            raise
        if isinstance(event, Connected | Rejected | AuthFailed):
            self._event = event
        return event

    def _step(self) -> _Ev:
        raise NotImplementedError

    def _have(self, size: int, stage: str) -> bool:
        """Whether the first `size` bytes of the current answer are here."""
        have = len(self._buf)
        if have >= size:
            return True
        if self._eof:
            if have == 0:
                raise ProtocolError(f"closed without answering the {stage}")
            unit = "byte" if have == 1 else "bytes"
            raise ProtocolError(f"closed mid-answer to the {stage} after {have} {unit}")
        return False


class _Stage(Enum):
    METHOD = auto()
    AUTH = auto()
    REPLY = auto()


# The size of a whole CONNECT reply, for the address types of fixed size.
_REPLY_SIZE: Final = {ATYP_IPV4: 4 + 4 + 2, ATYP_IPV6: 4 + 16 + 2}


class Socks5Client(_Reader[Socks5Event]):
    """RFC 1928 CONNECT, with RFC 1929 username/password when credentials are given.

    `host` is an IPv4 literal, an IPv6 literal without brackets, or a DNS name (ASCII,
    sent for the hop to resolve). Credentials are offered alongside no-auth, so a hop
    that wants none still works.
    """

    __slots__ = ("_auth", "_greeting", "_request", "_stage")

    def __init__(
        self,
        host: str,
        port: int,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        super().__init__()
        self._request = bytes((SOCKS5, CMD_CONNECT, 0)) + _socks5_address(host) + _port(port)
        self._auth = _userpass(username, password)
        methods = (METHOD_NO_AUTH,) if self._auth is None else (METHOD_NO_AUTH, METHOD_USERPASS)
        self._greeting = bytes((SOCKS5, len(methods), *methods))
        self._stage = _Stage.METHOD

    def greeting(self) -> bytes:
        """The first bytes to send: version and the offered methods."""
        return self._greeting

    def _step(self) -> Socks5Event:
        if self._stage is _Stage.METHOD:
            return self._method_selection()
        if self._stage is _Stage.AUTH:
            return self._auth_reply()
        return self._connect_reply()

    def _method_selection(self) -> Socks5Event:
        buf = self._buf
        if buf and buf[0] != SOCKS5:
            raise ProtocolError(f"not a SOCKS5 answer to the greeting: {_quote(bytes(buf[:16]))}")
        if not self._have(2, "greeting"):
            return NEED_DATA
        method = buf[1]
        del buf[:2]
        if method == METHOD_NO_AUTH:
            self._stage = _Stage.REPLY
            return Send(self._request)
        if method == METHOD_USERPASS:
            if self._auth is None:
                raise ProtocolError("the hop chose username/password, which was not offered")
            self._stage = _Stage.AUTH
            return Send(self._auth)
        if method == METHOD_NONE_ACCEPTABLE:
            if self._auth is None:
                return AuthFailed("the hop requires authentication; no credentials were offered")
            return AuthFailed("the hop accepts neither no-auth nor username/password")
        raise ProtocolError(f"the hop chose method 0x{method:02x}, which was not offered")

    def _auth_reply(self) -> Socks5Event:
        buf = self._buf
        if buf and buf[0] != USERPASS_VERSION:
            raise ProtocolError(
                f"not an RFC 1929 answer to username/password: {_quote(bytes(buf[:16]))}"
            )
        if not self._have(2, "username/password"):
            return NEED_DATA
        status = buf[1]
        del buf[:2]
        if status != USERPASS_OK:
            return AuthFailed(f"the hop refused the username/password (status 0x{status:02x})")
        self._stage = _Stage.REPLY
        return Send(self._request)

    def _connect_reply(self) -> Socks5Event:
        buf = self._buf
        if buf and buf[0] != SOCKS5:
            raise ProtocolError(
                f"not a SOCKS5 answer to the CONNECT request: {_quote(bytes(buf[:16]))}"
            )
        if len(buf) >= 4:
            atyp = buf[3]
            if atyp not in _REPLY_SIZE and atyp != ATYP_DOMAIN:
                raise ProtocolError(f"unknown address type 0x{atyp:02x} in the CONNECT reply")
        # Five bytes reach the length of a domain; every reply is at least that long.
        if not self._have(5, "CONNECT request"):
            return NEED_DATA
        atyp = buf[3]
        size = 4 + 1 + buf[4] + 2 if atyp == ATYP_DOMAIN else _REPLY_SIZE[atyp]
        if not self._have(size, "CONNECT request"):
            return NEED_DATA
        rep = buf[1]
        reply = bytes(buf[:size])
        del buf[:size]
        # RSV (reply[2]) is ignored: it carries nothing and some servers fill it.
        if rep != REP_SUCCEEDED:
            return Rejected(rep, REP_TEXT.get(rep, f"unknown reply 0x{rep:02x}"))
        if atyp == ATYP_IPV4:
            host = _ipv4_text(reply[4:8])
        elif atyp == ATYP_IPV6:
            host = _ipv6_text(reply[4:20])
        else:
            # A name on the wire is ASCII (IDNA); anything else is shown escaped.
            host = reply[5:-2].decode("ascii", "backslashreplace")
        return Connected(host, int.from_bytes(reply[-2:]))


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
                raise ValueError(f"SOCKS4 needs an IPv4 address, not a name: {_quote_host(host)}")
            # SOCKS4a: DSTIP 0.0.0.x (x != 0) says a name follows the user id.
            dst = b"\x00\x00\x00\x01"
            name = _ascii_name(host) + b"\x00"
        elif ip.version == 4:
            dst = ip.packed
            if dst[:3] == b"\x00\x00\x00" and dst[3]:
                # A SOCKS4a hop would wait for a name after the user id.
                raise ValueError(f"{host} cannot be sent over SOCKS4: it marks a SOCKS4a name")
            name = b""
        else:
            raise ValueError(f"SOCKS4 cannot carry an IPv6 address: {_quote_host(host)}")
        self._request = bytes((SOCKS4, CMD_CONNECT)) + _port(port) + dst + user + b"\x00" + name

    def request(self) -> bytes:
        """The bytes to send: the CONNECT request."""
        return self._request

    def _step(self) -> Socks4Event:
        buf = self._buf
        # The reply's VN is 0; some servers echo the request's 4.
        if buf and buf[0] not in (0, SOCKS4):
            raise ProtocolError(f"not a SOCKS4 answer to the request: {_quote(bytes(buf[:16]))}")
        if not self._have(8, "SOCKS4 request"):
            return NEED_DATA
        code = buf[1]
        reply = bytes(buf[:8])
        del buf[:8]
        if code != SOCKS4_GRANTED:
            return Rejected(code, SOCKS4_TEXT.get(code, f"unknown reply {code}"))
        return Connected(_ipv4_text(reply[4:8]), int.from_bytes(reply[2:4]))


# ----------------------------------------------------------------------------- encoding

# Printable ASCII but space: a NUL would cut the name short in the hop's resolver.
_NAME_BAD = re.compile(r"[^\x21-\x7e]")
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def _socks5_address(host: str) -> bytes:
    """ATYP and DST.ADDR for `host`."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = _ascii_name(host)
        return bytes((ATYP_DOMAIN, len(name))) + name
    if isinstance(ip, ipaddress.IPv4Address):
        return bytes((ATYP_IPV4,)) + ip.packed
    if ip.scope_id is not None:
        raise ValueError(f"SOCKS5 cannot carry a scoped IPv6 address: {_quote_host(host)}")
    return bytes((ATYP_IPV6,)) + ip.packed


def _ascii_name(host: str) -> bytes:
    if not 1 <= len(host) <= 255 or _NAME_BAD.search(host):
        raise ValueError(f"not a DNS name of 1 to 255 ASCII characters: {_quote_host(host)}")
    return host.encode("ascii")


def _port(port: int) -> bytes:
    if not 1 <= port <= 65535:
        raise ValueError(f"port {port} is not in 1..65535")
    return port.to_bytes(2)


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


def _ipv4_text(packed: bytes) -> str:
    return ".".join(map(str, packed))


def _ipv6_text(packed: bytes) -> str:
    # RFC 5952 5: a mapped IPv4 address ends in dotted form (Python < 3.13 shows hex).
    if packed[:12] == _V4_MAPPED:
        return "::ffff:" + _ipv4_text(packed[12:])
    return str(ipaddress.IPv6Address(packed))


def _quote_host(host: str) -> str:
    return repr(host[:60]) + ("..." if len(host) > 60 else "")
