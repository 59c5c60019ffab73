"""Plain-HTTP forwarding: an absolute-form request rewritten for the origin (sans-I/O).

A client that sends `GET http://host/path` to a proxy expects the proxy to fetch it. The
request goes on in origin-form with the hop-by-hop fields removed, Host set from the URL
and `Connection: close`, so the exchange ends with the origin's answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from .http import _STATUS_LINE, _STATUS_START, _TOKEN
from .reader import NEED_DATA, NeedData, ProtocolError, Reader, quote

__all__ = [
    "LAST_CHUNK",
    "ProtocolError",
    "ResponseStart",
    "ResponseStartReader",
    "encode_chunk",
    "forward_request",
    "proxy_form",
]


LAST_CHUNK: Final[bytes] = b"0\r\n\r\n"

_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"proxy-connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"upgrade",
        b"proxy-authorization",
        b"proxy-authenticate",
    }
)
# Never dropped, even when Connection names them: the body is relayed as framed.
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_TARGET_BAD = re.compile(rb"[^\x21-\x7e]")
_FIELD_BYTES_BAD = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def forward_request(
    method: bytes,
    target: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    http_version: bytes = b"1.1",
) -> tuple[str, int, bytes]:
    """Rewrite a proxy request (`GET http://host/path`) for the origin.

    Returns the URL's host as written (IPv6 without brackets, for the caller to
    validate), its port (80 by default) and the request head to send: origin-form
    target, hop-by-hop fields dropped, `Host` from the URL first, `Connection: close`.
    The request keeps the client's HTTP version: the answer is relayed as it comes, and
    a server asked in HTTP/1.0 never answers with a chunked body, which an HTTP/1.0
    client could not read.
    """
    if not _TOKEN.fullmatch(method):
        raise ValueError(f"bad method {quote(method)}")
    if http_version not in (b"1.0", b"1.1"):
        raise ValueError(f"unsupported HTTP version {quote(http_version)}")
    host, port, authority, origin = _split_url(target)

    named = set(_HOP_BY_HOP)
    for name, value in headers:
        if name.lower() == b"connection":
            named.update(t.strip(b" \t").lower() for t in value.split(b","))
    named -= _FRAMING
    named.add(b"host")

    lines = [b"%s %s HTTP/%s\r\nHost: %s\r\n" % (method, origin, http_version, authority)]
    for name, value in headers:
        if not _TOKEN.fullmatch(name) or _FIELD_BYTES_BAD.search(value):
            raise ValueError(f"bad header {quote(name)}")
        lname = name.lower()
        if lname == b"transfer-encoding" and http_version == b"1.0":
            raise ValueError("Transfer-Encoding in an HTTP/1.0 request")
        if lname not in named:
            lines.append(b"%s: %s\r\n" % (name, value))
    lines.append(b"Connection: close\r\n\r\n")
    return host, port, b"".join(lines)


def _split_url(target: bytes) -> tuple[str, int, bytes, bytes]:
    """`http://authority/path?query` -> (host, port, Host value, origin-form)."""
    scheme, sep, rest = target.partition(b"://")
    if sep and scheme.lower() == b"https":
        raise ValueError("https URLs need CONNECT")
    if not sep or scheme.lower() != b"http":
        raise ValueError(f"not an absolute http URL: {quote(target)}")
    if _TARGET_BAD.search(target):
        raise ValueError(f"bad character in URL {quote(target)}")
    if b"#" in rest:
        raise ValueError("a request target has no fragment")
    cut = min((i for i in (rest.find(b"/"), rest.find(b"?")) if i != -1), default=len(rest))
    authority, origin = rest[:cut], rest[cut:]
    if origin[:1] != b"/":
        origin = b"/" + origin
    if b"@" in authority:
        # Not quoted: it would hold credentials.
        raise ValueError("userinfo in URL")
    if authority.startswith(b"["):
        close = authority.find(b"]")
        host, after = authority[1:close], authority[close + 1 :]
        if close == -1 or (after and after[:1] != b":"):
            raise ValueError(f"bad URL authority {quote(authority)}")
        port_text = after[1:]
        written = authority[: close + 1]
    else:
        written, _, port_text = authority.partition(b":")
        host = written
        if b":" in port_text:
            raise ValueError(f"bad URL authority {quote(authority)}")
    if not host:
        raise ValueError(f"no host in URL {quote(target)}")
    port = 80
    if port_text:
        if not (port_text.isascii() and port_text.isdigit()) or not 0 < int(port_text) < 65536:
            raise ValueError(f"bad port in URL {quote(target)}")
        port = int(port_text)
    host_value = written if port == 80 else b"%s:%d" % (written, port)
    return host.decode("ascii"), port, host_value, origin


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body; empty data gives b"" (LAST_CHUNK ends the body)."""
    if not data:
        return b""
    return b"%x\r\n%s\r\n" % (len(data), data)


def proxy_form(head: bytes, authority: str, authorization: str | None = None) -> bytes:
    """The same request for an HTTP proxy instead of the origin: the target back in
    absolute form (`GET http://authority/path`), and the proxy's own credentials."""
    line_end = head.index(b"\r\n")
    method, origin, version = head[:line_end].split(b" ")
    line = b"%s http://%s%s %s\r\n" % (method, authority.encode("ascii"), origin, version)
    extra = b""
    if authorization is not None:
        if _FIELD_BYTES_BAD.search(authorization.encode("latin-1", "replace")):
            raise ValueError("bad authorization")
        extra = b"Proxy-Authorization: %s\r\n" % authorization.encode("latin-1")
    return line + extra + head[line_end + 2 :]


# ------------------------------------------------------------------------- the answer


@dataclass(frozen=True, slots=True)
class ResponseStart:
    """A complete response head arrived (an interim 1xx one counts: the hop answered)."""

    status: int


class ResponseStartReader(Reader[NeedData | ResponseStart]):
    """Watches the first bytes of the answer to a forwarded request until one whole head
    has arrived, checking the status line as it comes so that a peer that is not an HTTP
    server is refused at once. It consumes nothing: `trailing_data` is every byte received,
    to be relayed to the client as it was sent."""

    __slots__ = ("_max_head", "_scan")
    _complete = "the response has started"

    def __init__(self, *, max_head: int = 65536) -> None:
        super().__init__()
        self._max_head = max_head
        self._scan = 0

    def _step(self) -> NeedData | ResponseStart:
        buf = self._buf
        if not buf:
            if self._eof:
                raise ProtocolError(self._closed(0, "response head"))
            return NEED_DATA
        line_end = buf.find(b"\r\n")
        if line_end < 0:
            start = bytes(buf[:13])  # "HTTP/1.1 200 ": what _STATUS_START can vouch for
            m = _STATUS_START.match(start)
            if m is None or m.end() < len(start):
                raise ProtocolError(f"not an HTTP response: {quote(start)}")
        elif _STATUS_LINE.fullmatch(buf, 0, line_end + 2) is None:
            raise ProtocolError(f"not an HTTP response: {quote(bytes(buf[: line_end + 2]))}")
        end = buf.find(b"\r\n\r\n", self._scan)
        if end < 0:
            if len(buf) > self._max_head:
                raise ProtocolError(f"response head over {self._max_head} bytes")
            self._scan = max(0, len(buf) - 3)
            if self._eof:
                raise ProtocolError(self._closed(len(buf), "response head"))
            return NEED_DATA
        status = int(buf[9:12])
        return self._finish(ResponseStart(status), 0)

    def _closed(self, available: int, what: str) -> str:
        if not available:
            return "closed without answering"
        return f"closed inside the {what} after {available} bytes"
