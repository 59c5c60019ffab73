"""SOCKS5 (RFC 1928, RFC 1929) and SOCKS4/4a as spoken by a client to chainer's listener.

How this works. A server codec takes the client's bytes (`receive_data`, `b""` for EOF)
and hands out one event per `next_event` call, in the style of h11; the caller owns the
socket and the clock, and answers through the codec's methods, which return the bytes to
send. Each stage frames exactly one message: it reads the fixed header, learns from it how
long the message is, and waits until that many bytes are buffered, so a message split
across segments costs a few length checks and a whole message in one segment is parsed at
once. Bytes beyond the current message are never looked at: they stay buffered for the
next stage, and after the request they are the tunnel's first bytes (`trailing_data`).
No stage needs more than its own message (greeting <= 257 bytes, RFC 1929 <= 513,
request <= 262, SOCKS4 <= 520) before it decides.

SOCKS5: `Send` (the method selection), then `Credentials` when a password is required
(answer with `auth_result`), then `Request` (answer with `reply`). An exchange that ends
without a request ends with `Failed`; a request that cannot be framed ends with
`BadRequest`, which names the reply code to send. SOCKS4: `Request4`, answered by
`reply`. Malformed input raises `ProtocolError` (the caller closes); misuse by the caller
raises `RuntimeError`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import TypeVar

from .reader import NEED_DATA, NeedData, ProtocolError, Reader
from .socks_address import (
    ADDRESS_TYPES,
    address_size,
    decode_address,
    encode_address,
    encode_port,
    ipv4_text,
)
from .socks_codes import (
    ATYP_DOMAIN,
    METHOD_NO_AUTH,
    METHOD_NONE_ACCEPTABLE,
    METHOD_USERPASS,
    REP_ADDRESS_TYPE_NOT_SUPPORTED,
    REP_SUCCEEDED,
    SOCKS4,
    SOCKS4_GRANTED,
    SOCKS4_REJECTED,
    SOCKS5,
    USERPASS_FAILED,
    USERPASS_OK,
    USERPASS_VERSION,
)

__all__ = [
    "BadRequest",
    "Credentials",
    "Failed",
    "Request",
    "Request4",
    "Send",
    "Socks4Server",
    "Socks5Server",
]

# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Send:
    """Bytes to send to the client now (the SOCKS5 method selection)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Credentials:
    """An RFC 1929 username and password; answer with `Socks5Server.auth_result`."""

    username: str
    password: str = field(repr=False)  # kept out of logs and tracebacks


@dataclass(frozen=True, slots=True)
class Request:
    """The client's SOCKS5 request, any command; answer with `Socks5Server.reply`.

    `host` is IPv4 text, compressed IPv6 text, or the domain as sent (ASCII, undecodable
    bytes replaced): the caller validates it.
    """

    command: int
    host: str
    port: int
    atyp: int


@dataclass(frozen=True, slots=True)
class BadRequest:
    """A request that cannot be served as sent: answer `reply(reply_code)` and close."""

    reply_code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Failed:
    """The exchange ended before a request (no acceptable method, wrong password)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Request4:
    """The client's SOCKS4 or SOCKS4a request; answer with `Socks4Server.reply`."""

    command: int
    host: str
    port: int
    user_id: str
    socks4a: bool


_Event5 = NeedData | Send | Credentials | Request | BadRequest | Failed
_Event4 = NeedData | Request4
_Ev = TypeVar("_Ev", _Event5, _Event4)

# ------------------------------------------------------------------------------ common


class _Reader(Reader[_Ev]):
    """What both server codecs add to `Reader`: their EOF errors, the version byte that
    opens each message, and the one reply."""

    __slots__ = ("_replied",)
    _complete = "the exchange is over"

    def __init__(self) -> None:
        super().__init__()
        self._replied = False

    def _closed(self, available: int, what: str) -> str:
        return f"closed before the {what}" if available == 0 else f"closed mid-{what}"

    def _opens(self, version: int, what: str, message: str) -> bool:
        """Whether the `what` message's first byte is here; raises when it is not `version`."""
        if not self._have(1, what):
            return False
        first = self._buf[self._pos]
        if first != version:
            raise ProtocolError(f"not {message} (version {first:#04x})")
        return True

    def _check_reply(self) -> None:
        if self._replied:
            raise RuntimeError("already replied")


# ------------------------------------------------------------------------------ SOCKS5


class _State(Enum):
    GREETING = auto()
    AUTH = auto()
    AUTH_DECISION = auto()  # Credentials handed out, auth_result() not called yet
    REQUEST = auto()


class Socks5Server(_Reader[_Event5]):
    """The server side of one SOCKS5 handshake.

    With `require_auth` the client must offer username/password (RFC 1929); without, it
    must offer "no authentication". The codec picks the method; the caller checks the
    credentials.
    """

    __slots__ = ("_require_auth", "_state")

    def __init__(self, *, require_auth: bool) -> None:
        super().__init__()
        self._require_auth = require_auth
        self._state = _State.GREETING

    def auth_result(self, ok: bool) -> bytes:
        """The RFC 1929 answer to `Credentials`; after `False` the exchange is over."""
        if self._state is not _State.AUTH_DECISION or self._final is not None:
            raise RuntimeError("no credentials to answer")
        if ok:
            self._state = _State.REQUEST
            return bytes((USERPASS_VERSION, USERPASS_OK))
        self._finish(Failed("authentication failed"), self._pos)
        return bytes((USERPASS_VERSION, USERPASS_FAILED))

    def reply(self, code: int, bound_host: str = "0.0.0.0", bound_port: int = 0) -> bytes:
        """The reply to `Request` or `BadRequest`, once.

        After `REP_SUCCEEDED` the connection is a tunnel whose first bytes from the client
        are `trailing_data`. The bound address is encoded as IPv4, IPv6 or a domain,
        whichever `bound_host` is.
        """
        if not isinstance(self._final, Request | BadRequest):
            raise RuntimeError("no request to reply to")
        self._check_reply()
        if not 0 <= code <= 0xFF:
            raise ValueError(f"reply code {code} out of range")
        if code == REP_SUCCEEDED and isinstance(self._final, BadRequest):
            raise ValueError("a bad request cannot succeed")
        address = encode_address(bound_host) + encode_port(bound_port, lowest=0)
        self._replied = True
        return bytes((SOCKS5, code, 0)) + address

    def _step(self) -> _Event5:
        state = self._state
        if state is _State.AUTH_DECISION:
            raise RuntimeError("call auth_result() first")
        if state is _State.GREETING:
            return self._greeting()
        if state is _State.AUTH:
            return self._auth()
        return self._request()

    def _greeting(self) -> _Event5:
        if not self._opens(SOCKS5, "greeting", "a SOCKS5 greeting"):
            return NEED_DATA
        if not self._have(2, "greeting"):
            return NEED_DATA
        buf, pos = self._buf, self._pos
        count = buf[pos + 1]
        if count == 0:
            raise ProtocolError("SOCKS5 greeting offers no methods")
        if not self._have(2 + count, "greeting"):
            return NEED_DATA
        methods = buf[pos + 2 : pos + 2 + count]
        self._pos = pos + 2 + count
        wanted = METHOD_USERPASS if self._require_auth else METHOD_NO_AUTH
        if wanted not in methods:
            reason = "client does not offer " + (
                "username/password" if self._require_auth else "no-authentication"
            )
            # Failed is what next_event says once the client has been told.
            self._finish(Failed(reason), self._pos)
            return Send(bytes((SOCKS5, METHOD_NONE_ACCEPTABLE)))
        self._state = _State.AUTH if self._require_auth else _State.REQUEST
        return Send(bytes((SOCKS5, wanted)))

    def _auth(self) -> _Event5:
        what = "username/password"
        if not self._opens(USERPASS_VERSION, what, "an RFC 1929 sub-negotiation"):
            return NEED_DATA
        if not self._have(2, what):
            return NEED_DATA
        buf, pos = self._buf, self._pos
        ulen = buf[pos + 1]
        if ulen == 0:
            raise ProtocolError("empty username")
        plen_at = pos + 2 + ulen
        if not self._have(plen_at + 1 - pos, what):
            return NEED_DATA
        end = plen_at + 1 + buf[plen_at]
        if not self._have(end - pos, what):
            return NEED_DATA
        username = buf[pos + 2 : plen_at].decode("utf-8", "replace")
        password = buf[plen_at + 1 : end].decode("utf-8", "replace")
        self._pos = end
        self._state = _State.AUTH_DECISION
        return Credentials(username, password)

    def _request(self) -> _Event5:
        if not self._opens(SOCKS5, "request", "a SOCKS5 request"):
            return NEED_DATA
        if not self._have(4, "request"):
            return NEED_DATA
        buf, pos = self._buf, self._pos
        command, atyp = buf[pos + 1], buf[pos + 3]  # RSV (pos + 2) is not checked
        if atyp not in ADDRESS_TYPES:
            # The address cannot be framed, so the rest of the stream is out of step.
            reason = f"address type {atyp:#04x} not supported"
            return self._finish(BadRequest(REP_ADDRESS_TYPE_NOT_SUPPORTED, reason), pos + 4)
        # Five bytes reach the length of a domain; every request is at least that long.
        if not self._have(5, "request"):
            return NEED_DATA
        if atyp == ATYP_DOMAIN and buf[pos + 4] == 0:
            raise ProtocolError("empty domain in SOCKS5 request")
        size = 3 + address_size(buf, pos + 3)
        if not self._have(size, "request"):
            return NEED_DATA
        host, port = decode_address(buf, pos + 3, readable=False)  # the caller validates it
        return self._finish(Request(command, host, port, atyp), pos + size)


# ------------------------------------------------------------------------------ SOCKS4

_FIELD_MAX = 255  # bytes of a SOCKS4 user id or SOCKS4a domain before its NUL


class Socks4Server(_Reader[_Event4]):
    """The server side of one SOCKS4 or SOCKS4a request.

    The user id and the domain are NUL-terminated; each NUL is searched for within its
    bound, resuming where the previous search stopped, so bytes fed one at a time are
    still scanned once.
    """

    __slots__ = ("_domain_at", "_scan")

    def __init__(self) -> None:
        super().__init__()
        self._scan = 0  # where the next NUL search starts
        self._domain_at = 0  # start of the SOCKS4a domain, once the user id is framed

    def reply(self, granted: bool, bound_host: str = "0.0.0.0", bound_port: int = 0) -> bytes:
        """The 8-byte reply to `Request4`, once; `bound_host` must be IPv4."""
        if self._final is None:
            raise RuntimeError("no request to reply to")
        self._check_reply()
        try:
            address = ipaddress.IPv4Address(bound_host).packed
        except ValueError:
            raise ValueError("a SOCKS4 bound address must be IPv4") from None
        code = SOCKS4_GRANTED if granted else SOCKS4_REJECTED
        self._replied = True
        return bytes((0, code)) + encode_port(bound_port, lowest=0) + address

    def _step(self) -> _Event4:
        if not self._opens(SOCKS4, "request", "a SOCKS4 request"):
            return NEED_DATA
        if not self._have(8, "request"):
            return NEED_DATA
        buf, pos = self._buf, self._pos
        ip = buf[pos + 4 : pos + 8]
        socks4a = ip[0] == ip[1] == ip[2] == 0 and ip[3] != 0
        user_at = pos + 8
        if not self._domain_at:
            user_end = self._find_nul(user_at, "user id")
            if user_end < 0:
                return NEED_DATA
            self._domain_at = user_end + 1
        end = self._domain_at
        if socks4a:
            domain_end = self._find_nul(self._domain_at, "domain")
            if domain_end < 0:
                return NEED_DATA
            if domain_end == self._domain_at:
                raise ProtocolError("empty domain in SOCKS4a request")
            host = buf[self._domain_at : domain_end].decode("ascii", "replace")
            end = domain_end + 1
        else:
            host = ipv4_text(ip)
        request = Request4(
            command=buf[pos + 1],
            host=host,
            port=int.from_bytes(buf[pos + 2 : pos + 4]),
            user_id=buf[user_at : self._domain_at - 1].decode("utf-8", "replace"),
            socks4a=socks4a,
        )
        return self._finish(request, end)

    def _find_nul(self, start: int, what: str) -> int:
        """The NUL ending the field at `start`, or -1 for "not yet"; raises past the bound."""
        buf = self._buf
        bound = start + _FIELD_MAX + 1
        nul = buf.find(0, max(start, self._scan), bound)
        if nul >= 0:
            self._scan = nul + 1
            return nul
        if len(buf) >= bound:
            raise ProtocolError(f"{what} too long (no NUL in {_FIELD_MAX + 1} bytes)")
        self._scan = len(buf)
        if self._eof:
            raise ProtocolError("closed mid-request")
        return -1
