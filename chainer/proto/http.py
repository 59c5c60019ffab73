"""HTTP/1.1 as spoken to an upstream proxy: CONNECT framing and plain-HTTP forwarding.

How this works. `connect_request` builds the bytes of a CONNECT; `ConnectResponseReader`
turns the hop's answer into one event, in the style of h11: feed it whatever the socket
gave (`receive_data`, `b""` for EOF) and call `next_event` until it stops saying
`NEED_DATA`. The reader buffers bytes and looks for the blank line that ends a head,
resuming each search where the last one stopped, so a whole answer in one segment costs
one `find`. An incomplete head is still checked line by line as it arrives, so a peer
that is not an HTTP proxy (an SSH banner, TLS, binary) is refused at once rather than
when a timeout fires. 1xx heads are dropped; a 2xx is the tunnel and nothing after its
head is read as HTTP; anything else is a refusal whose body is read only when its length
is known and bounded, because only then can the connection carry another CONNECT. Every
byte not consumed by the answer stays in `trailing_data` for the next stage.

The reader never raises for what the hop meant (that is `Refused`), only for answers that
are not HTTP (`ProtocolError`), and for misuse by the caller (`RuntimeError`).
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

# NEED_DATA, NeedData and ProtocolError live in .reader; they are re-exported here
# because callers outside proto/ import them from this module.
from .reader import NEED_DATA as NEED_DATA
from .reader import NeedData as NeedData
from .reader import ProtocolError as ProtocolError
from .reader import Reader, quote

__all__ = [
    "ConnectResponseReader",
    "Established",
    "Refused",
    "basic_authorization",
    "connect_request",
]

Headers = tuple[tuple[str, str], ...]


# ---------------------------------------------------------------------------- requests


_AUTHORITY_BAD = re.compile(r"[\x00-\x20\x7f]")
_FIELD_VALUE_BAD = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def basic_authorization(username: str, password: str) -> str:
    """The `Proxy-Authorization` value for Basic credentials (RFC 7617, UTF-8)."""
    if ":" in username:
        # The proxy splits at the first colon: it would check a different user.
        raise ValueError("a Basic username cannot contain ':'")
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {token}"


def connect_request(
    authority: str, authorization: str | None = None, *, close: bool = False
) -> bytes:
    """The bytes of `CONNECT authority`, with `Proxy-Authorization` when given, and with
    `Connection: close` when `close`: a pipelining client sends the next hop's bytes
    right behind the request, and a proxy that refuses it must then close rather than
    read those bytes as another request of ours (RFC 9112 9.6)."""
    if not authority or _AUTHORITY_BAD.search(authority):
        raise ValueError(f"bad CONNECT authority {quote(authority.encode('utf-8', 'replace'))}")
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if authorization is not None:
        # Not quoted in the message: it carries credentials.
        if not authorization or _FIELD_VALUE_BAD.search(authorization):
            raise ValueError("bad Proxy-Authorization value")
        head += f"Proxy-Authorization: {authorization}\r\n"
    if close:
        head += "Connection: close\r\n"
    try:
        return (head + "\r\n").encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("CONNECT authority and Proxy-Authorization must be ASCII") from None


# ------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class Established:
    """A 2xx: the tunnel is open; `trailing_data` is its first bytes."""

    status: int
    reason: str
    headers: Headers


@dataclass(frozen=True, slots=True)
class Refused:
    """Any final answer but a 2xx.

    `body` is the refusal's body, complete when `reusable`, else whatever had arrived
    (at most `max_body` bytes). `reusable` means the connection to the hop is still in
    step and may carry another CONNECT, starting with `trailing_data`.
    """

    status: int
    reason: str
    headers: Headers
    body: bytes
    reusable: bool


# ------------------------------------------------------------------------------ reader

_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([1-9][0-9]{2})(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n")
# Any prefix of "HTTP/1.x SSS " or "HTTP/1.x SSS\r": what a status line may begin with.
_STATUS_START = re.compile(
    rb"H(T(T(P(/(1(\.([0-9]( ([1-9]([0-9]([0-9]([ \r])?)?)?)?)?)?)?)?)?)?)?)?"
)
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_FIELD_LINE = re.compile(
    rb"([" + _TCHAR + rb"]+):[ \t]*([\t\x20-\x7e\x80-\xff]*?)[ \t]*\r\n",
)
_TOKEN = re.compile(rb"[" + _TCHAR + rb"]+")
_CONTENT_LENGTH = re.compile(rb"[0-9]{1,18}")
_NO_BODY = frozenset({204, 304})


_Event = NeedData | Established | Refused


class ConnectResponseReader(Reader[_Event]):
    """Reads one answer to a CONNECT, consuming exactly that answer.

    `max_head` bounds the bytes of all heads of the answer (interim 1xx heads included);
    `max_body` bounds how much of a refusal's body is read. After `Established`,
    `trailing_data` is the tunnel's first bytes; after a reusable `Refused`, the start of
    the connection's next answer.
    """

    __slots__ = (
        "_body_end",
        "_body_start",
        "_head_budget",
        "_line_pos",
        "_max_body",
        "_max_head",
        "_nl_scan",
        "_pending",
        "_scan",
        "_status_checked",
    )

    def __init__(self, *, max_head: int = 32768, max_body: int = 65536) -> None:
        if max_head < 16 or max_body < 0:
            raise ValueError("max_head must be at least 16 and max_body not negative")
        super().__init__()
        self._max_head = max_head
        # What is left of max_head after interim heads, which are dropped from the buffer
        # as they are parsed: the read position stays 0 until the final event.
        self._head_budget = max_head
        self._max_body = max_body
        self._scan = 0  # where the next search for the blank line starts
        self._line_pos = 0  # start of the first line of the current head not yet checked
        self._nl_scan = 0  # where the next search for a line end starts
        self._status_checked = False
        self._pending: Refused | None = None  # a refusal waiting for its body
        self._body_start = self._body_end = 0

    def _step(self) -> _Event:
        if self._pending is None:
            return self._next_head()
        return self._next_body()

    def _next_head(self) -> _Event:
        buf = self._buf
        while True:
            end = buf.find(b"\r\n\r\n", self._scan, self._head_budget)
            if end == -1:
                return self._incomplete_head()
            end += 4
            version, status, reason, headers = _parse_head(bytes(buf[:end]))
            if 100 <= status < 200 and status != 101:
                # Interim answer: drop it, keep looking for the final one.
                del buf[:end]
                self._head_budget -= end
                self._scan = self._line_pos = self._nl_scan = 0
                self._status_checked = False
                continue
            if 200 <= status < 300:
                return self._finish(Established(status, reason, headers), end)
            return self._refusal(version, status, reason, headers, end)

    def _incomplete_head(self) -> NeedData:
        buf, budget = self._buf, self._head_budget
        # Check the lines complete so far, so that a peer which is not an HTTP proxy
        # (an SSH banner, a TLS record) is refused now rather than when a timeout fires.
        pos = self._nl_scan
        while (nl := buf.find(b"\n", pos, budget)) != -1:
            line = bytes(buf[self._line_pos : nl + 1])
            if self._line_pos == 0:
                _parse_status_line(line)
                self._status_checked = True
            else:
                _parse_field_line(line)
            self._line_pos = pos = nl + 1
        self._nl_scan = len(buf)
        if not self._status_checked:
            start = bytes(buf[:13])
            if start and not _STATUS_START.fullmatch(start):
                raise ProtocolError(f"not an HTTP status line: {quote(start)}")
        if len(buf) >= budget:
            raise ProtocolError(f"answer head over {self._max_head} bytes")
        self._scan = max(0, len(buf) - 3)
        if self._eof:
            # Every byte received is still buffered but the interim heads dropped.
            received = len(buf) + self._max_head - self._head_budget
            if received == 0:
                raise ProtocolError("closed without answering")
            raise ProtocolError(f"closed mid-answer after {received} bytes")
        return NEED_DATA

    def _refusal(
        self, version: int, status: int, reason: str, headers: Headers, end: int
    ) -> _Event:
        keep_alive = version >= 1 and status != 101
        lengths: list[bytes] = []
        chunked = False
        for name, value in headers:
            lname = name.lower()
            if lname == "content-length":
                lengths.append(value.encode("latin-1"))
            elif lname == "transfer-encoding":
                chunked = True
            elif lname == "connection" and "close" in _tokens(value):
                keep_alive = False
        if status in _NO_BODY:
            # RFC 9112 6.3: ends at the blank line whatever its headers say.
            return self._finish(Refused(status, reason, headers, b"", keep_alive), end)
        length = _content_length(lengths) if lengths and not chunked else None
        if length is None or length > self._max_body or status == 101:
            # The body's end is unknown or too far: take what is here and give up the
            # connection, which is out of step.
            stop = min(len(self._buf), end + self._max_body)
            body = bytes(self._buf[end:stop])
            return self._finish(Refused(status, reason, headers, body, False), stop)
        self._pending = Refused(status, reason, headers, b"", keep_alive)
        self._body_start = end
        self._body_end = end + length
        return self._next_body()

    def _next_body(self) -> _Event:
        pending = self._pending
        assert pending is not None
        buf, start, end = self._buf, self._body_start, self._body_end
        if len(buf) >= end:
            return self._finish(_with_body(pending, bytes(buf[start:end]), pending.reusable), end)
        if self._eof:
            # Truncated: the status still says what the hop meant.
            return self._finish(_with_body(pending, bytes(buf[start:]), False), len(buf))
        return NEED_DATA


def _with_body(pending: Refused, body: bytes, reusable: bool) -> Refused:
    return Refused(pending.status, pending.reason, pending.headers, body, reusable)


def _parse_head(head: bytes) -> tuple[int, int, str, Headers]:
    """Parse a complete head (status line, fields, blank line)."""
    first = head.index(b"\r\n") + 2
    version, status, reason = _parse_status_line(head[:first])
    headers: list[tuple[str, str]] = []
    pos = first
    stop = len(head) - 2
    while pos < stop:
        nl = head.index(b"\r\n", pos) + 2
        headers.append(_parse_field_line(head[pos:nl]))
        pos = nl
    return version, status, reason, tuple(headers)


def _parse_status_line(line: bytes) -> tuple[int, int, str]:
    m = _STATUS_LINE.fullmatch(line)
    if m is None:
        if not line.endswith(b"\r\n"):
            raise ProtocolError(f"status line not ended by CRLF: {quote(line)}")
        raise ProtocolError(f"not an HTTP status line: {quote(line)}")
    reason = m.group(3) or b""
    return int(m.group(1)), int(m.group(2)), reason.decode("latin-1")


def _parse_field_line(line: bytes) -> tuple[str, str]:
    m = _FIELD_LINE.fullmatch(line)
    if m is None:
        raise ProtocolError(f"{_field_problem(line)}: {quote(line)}")
    return m.group(1).decode("ascii"), m.group(2).decode("latin-1")


def _field_problem(line: bytes) -> str:
    if not line.endswith(b"\r\n"):
        return "header line not ended by CRLF"
    if line[:1] in (b" ", b"\t"):
        return "folded header line"
    name, colon, _ = line.partition(b":")
    if not colon:
        return "header line without colon"
    if name.rstrip(b" \t") != name:
        return "whitespace before colon"
    if not _TOKEN.fullmatch(name):
        return "bad header name"
    return "control character in header"


def _content_length(values: list[bytes]) -> int | None:
    """The length the values agree on, or None when any is not a plain number."""
    lengths = {v.strip(b" \t") for value in values for v in value.split(b",")}
    if len(lengths) != 1:
        return None
    (value,) = lengths
    return int(value) if _CONTENT_LENGTH.fullmatch(value) else None


def _tokens(value: str) -> set[str]:
    return {t.strip(" \t").lower() for t in value.split(",")}
