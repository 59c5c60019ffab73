"""The name a client is going to, read from its first flight: the TLS ClientHello's
server_name (SNI) or an HTTP/1.x request's Host.

How this works. A transparent listener receives connections that were on their way to
an address; the *name* the client meant is, for most traffic, in the first bytes it
sends. `ServerNameSniffer` is fed those bytes (`receive_data`, `b""` for EOF) and says,
as soon as it can, `Named(name, "sni" | "host")` or `Unnamed(reason)`; until then
`NEED_DATA`. It only looks: nothing is consumed, every byte fed is still the caller's to
deliver to the destination untouched. It never needs more than `limit` bytes — past
them it gives up — and it decides early: a first byte that can begin neither a TLS
handshake record nor an HTTP method settles it at once.

TLS: handshake records (type 22) are reassembled into the ClientHello, which may span
records and segments; the first host_name of the server_name extension is the name. An
SSLv2-style hello, another record type first, or a ClientHello without server_name gives
no name. HTTP: the request line must be `METHOD SP origin-form SP HTTP/1.x`; the first
Host field gives the name, without its port (the connection's own port is the one that
counts). A CONNECT or an absolute-form request gives no name: that client believes it
talks to a proxy, so the connection belongs to the address it was going to.

The name is returned as sent (ASCII, at most 255 characters); whether it is a valid
destination is for the caller to judge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .reader import NEED_DATA, NeedData

__all__ = ["DEFAULT_LIMIT", "Named", "ServerNameSniffer", "Unnamed"]

DEFAULT_LIMIT = 16384

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
_MAX_RECORD = 16384 + 2048  # TLSPlaintext may not exceed 2^14; allow the ciphertext slack
_MAX_METHOD = 32
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION = re.compile(rb"HTTP/1\.[0-9]")
_PRINTABLE_NAME = re.compile(rb"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class Named:
    """The client named its destination."""

    name: str
    source: Literal["sni", "host"]


@dataclass(frozen=True, slots=True)
class Unnamed:
    """The first flight names no destination (or not in time, or not within the limit)."""

    reason: str


Event = Named | Unnamed | NeedData


class _Malformed(Exception):
    pass


class ServerNameSniffer:
    """Bytes in, at most one decision out (see the module's docstring)."""

    __slots__ = ("_buf", "_eof", "_handshake", "_limit", "_line", "_record", "_result")

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 byte")
        self._limit = limit
        self._buf = bytearray()  # the first `limit` bytes fed
        self._eof = False
        self._result: Named | Unnamed | None = None
        self._record = 0  # TLS: where the next unread record starts in _buf
        self._handshake = bytearray()  # TLS: handshake bytes of the records read so far
        self._line = 0  # HTTP: where the next header line starts in _buf (0: none yet)

    def receive_data(self, data: bytes) -> None:
        """More of the client's bytes; `b""` means it closed its side."""
        if self._result is not None:
            raise RuntimeError("already decided: later bytes are the destination's")
        if self._eof:
            if data:
                raise RuntimeError("data after EOF")
            return
        if not data:
            self._eof = True
            return
        room = self._limit - len(self._buf)
        self._buf += data[:room] if room < len(data) else data

    def next_event(self) -> Event:
        """`Named`, `Unnamed`, or `NEED_DATA`; a decision is repeated once made."""
        if self._result is not None:
            return self._result
        if not self._buf:
            if self._eof:
                return self._decide(Unnamed("closed before sending anything"))
            return NEED_DATA
        first = self._buf[0]
        if first == _HANDSHAKE:
            event = self._tls()
        elif first in _TOKEN:
            event = self._http()
        else:
            event = Unnamed("neither a TLS handshake nor an HTTP request")
        if event is NEED_DATA:
            if self._eof:
                return self._decide(Unnamed("closed before its first message was complete"))
            if len(self._buf) >= self._limit:
                return self._decide(Unnamed(f"no name in the first {self._limit} bytes"))
            return NEED_DATA
        return self._decide(event)

    def _decide(self, event: Named | Unnamed) -> Named | Unnamed:
        self._result = event
        self._handshake = bytearray()
        return event

    # -- TLS -------------------------------------------------------------------------

    def _tls(self) -> Event:
        buf = self._buf
        while True:
            at = self._record
            header = buf[at : at + 5]
            if len(header) >= 2 and header[1] != 3:
                return Unnamed("not a TLS record (version)")
            if len(header) < 5:
                return NEED_DATA
            if header[0] != _HANDSHAKE:
                return Unnamed("a TLS record other than a handshake before the ClientHello")
            length = int.from_bytes(header[3:5], "big")
            if not 0 < length <= _MAX_RECORD:
                return Unnamed(f"not a TLS record (length {length})")
            end = at + 5 + length
            # What the handshake would be with this record, complete or not: its type
            # and size are judged as soon as they arrive, not when the record ends.
            seen = self._handshake + buf[at + 5 : end]
            if seen and seen[0] != _CLIENT_HELLO:
                return Unnamed("the first TLS handshake message is not a ClientHello")
            size = int.from_bytes(seen[1:4], "big") if len(seen) >= 4 else None
            if size is not None and size + 4 > self._limit:
                return Unnamed(f"a ClientHello of {size} bytes, over the {self._limit} read")
            if len(buf) < end:
                return NEED_DATA
            self._handshake = seen
            self._record = end
            if size is not None and len(seen) >= 4 + size:
                try:
                    return _client_hello(bytes(seen[4 : 4 + size]))
                except _Malformed as exc:
                    return Unnamed(f"malformed ClientHello: {exc}")

    # -- HTTP ------------------------------------------------------------------------

    def _http(self) -> Event:
        buf = self._buf
        if not self._line:
            space = buf.find(b" ", 0, _MAX_METHOD + 1)
            if space < 0:
                if len(buf) > _MAX_METHOD or not all(b in _TOKEN for b in buf):
                    return Unnamed("not an HTTP request")
                return NEED_DATA
            method = bytes(buf[:space])
            if not method or not all(b in _TOKEN for b in method):
                return Unnamed("not an HTTP request")
            end = buf.find(b"\n")
            if end < 0:
                return NEED_DATA
            parts = bytes(buf[:end]).rstrip(b"\r").split(b" ")
            if len(parts) != 3 or not _VERSION.fullmatch(parts[2]):
                return Unnamed("not an HTTP/1.x request line")
            if method == b"CONNECT" or not (parts[1].startswith(b"/") or parts[1] == b"*"):
                return Unnamed("a request for a proxy (CONNECT or absolute-form)")
            self._line = end + 1
        while True:
            end = buf.find(b"\n", self._line)
            if end < 0:
                return NEED_DATA
            field = bytes(buf[self._line : end]).rstrip(b"\r")
            self._line = end + 1
            if not field:
                return Unnamed("an HTTP request without Host")
            name, colon, value = field.partition(b":")
            if colon and name.lower() == b"host":
                return _host(value.strip(b" \t"))


def _client_hello(body: bytes) -> Named | Unnamed:
    """The server_name in a complete ClientHello body (RFC 8446 4.1.2, RFC 6066 3)."""
    reader = _Cursor(body)
    reader.skip(2 + 32)  # legacy_version, random
    reader.skip(reader.u8(upto=32), "session id")
    suites = reader.u16()
    if suites == 0 or suites % 2:
        raise _Malformed("cipher suites")
    reader.skip(suites, "cipher suites")
    reader.skip(reader.u8(), "compression methods")
    if reader.done:
        return Unnamed("a ClientHello without extensions")
    extensions = _Cursor(reader.take(reader.u16(), "extensions"))
    if not reader.done:
        raise _Malformed("bytes after the extensions")
    while not extensions.done:
        kind = extensions.u16()
        data = extensions.take(extensions.u16(), "an extension")
        if kind == _SERVER_NAME:
            return _server_name(data)
    return Unnamed("a ClientHello without server_name")


def _server_name(data: bytes) -> Named | Unnamed:
    outer = _Cursor(data)
    names = _Cursor(outer.take(outer.u16(), "server_name list"))
    while not names.done:
        kind = names.u8()
        name = names.take(names.u16(), "server_name")
        if kind == _HOST_NAME:
            if not _PRINTABLE_NAME.fullmatch(name):
                return Unnamed("a server_name that is not a printable ASCII host name")
            return Named(name.decode("ascii"), "sni")
    return Unnamed("a server_name extension without a host_name")


def _host(value: bytes) -> Named | Unnamed:
    """A Host field's host, without its port; `[v6]` keeps its brackets."""
    if value.startswith(b"["):
        close = value.find(b"]")
        host = value[: close + 1] if close > 0 else b""
    else:
        host, colon, port = value.rpartition(b":")
        if not colon:
            host = port
    if not _PRINTABLE_NAME.fullmatch(host):
        return Unnamed("a Host field that names no host")
    return Named(host.decode("ascii"), "host")


class _Cursor:
    """Reads big-endian fields off a bytes object; running out is `_Malformed`."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def done(self) -> bool:
        return self._pos >= len(self._data)

    def take(self, n: int, what: str = "a field") -> bytes:
        if self._pos + n > len(self._data):
            raise _Malformed(f"{what} runs past its end")
        out = self._data[self._pos : self._pos + n]
        self._pos += n
        return out

    def skip(self, n: int, what: str = "a field") -> None:
        self.take(n, what)

    def u8(self, upto: int = 255) -> int:
        value = self.take(1)[0]
        if value > upto:
            raise _Malformed(f"a length of {value}, over {upto}")
        return value

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")
