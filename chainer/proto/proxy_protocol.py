"""The PROXY protocol, versions 1 and 2 (HAProxy's spec), as a listener receives it.

How this works. A TCP load balancer in front of chainer opens its connection with one
header that names the client it is relaying for; the client's own bytes follow. The
reader frames exactly that header: `receive_data` takes bytes (`b""` for EOF),
`next_event` returns `NEED_DATA` or the final `ProxyHeader`, and whatever came after the
header stays in `trailing_data`. `wanted()` says how many bytes the caller may read next
without reading past the header, so a caller that reads exactly that much never has
leftovers to hand on: 12 bytes first (both versions' signatures fit, and the shortest
v1 line, `PROXY UNKNOWN\\r\\n`, is 15), then for v2 the rest of the 16-byte head and its
announced length, for v1 one byte at a time until the line's `\\n` (at most 107 bytes).

A v1 line names TCP4 or TCP6 addresses, or UNKNOWN (use the connection's own
addresses). A v2 header's command is LOCAL (the balancer's own connection, a health
check: use the connection's own addresses) or PROXY; its family INET, INET6, UNIX or
UNSPEC over STREAM or UNSPEC (UNIX and UNSPEC: the connection's own addresses, as the
spec asks); DGRAM is refused, chainer relays TCP. TLVs are kept unread. Anything else —
no signature, a malformed line, a bad version or command — raises `ProtocolError`: a
listener that expects the header closes such a connection.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import ClassVar, Literal

from .reader import NEED_DATA, NeedData, ProtocolError, Reader, quote

__all__ = ["V1_MAX", "V2_SIGNATURE", "ProxyHeader", "ProxyHeaderReader", "encode_v1", "encode_v2"]

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
_FIRST = 12  # read first: both signatures, and less than the shortest v1 line
_V2_HEAD = 16
_V2_FAMILIES = {0x0: "unspec", 0x1: "inet", 0x2: "inet6", 0x3: "unix"}
_V2_ADDRESS_SIZES = {"inet": 12, "inet6": 36, "unix": 216}

Family = Literal["tcp4", "tcp6", "unknown"]


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """What the balancer said. `source` is the client as the balancer saw it, and
    `destination` the address the client connected to; both None when the header does
    not name them (v1 UNKNOWN, v2 LOCAL, UNSPEC or UNIX): use the connection's own."""

    version: int
    local: bool  # v2 LOCAL: the balancer's own connection (a health check)
    family: Family
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None
    tlvs: bytes = b""  # v2 only: the type-length-value records, unparsed


class ProxyHeaderReader(Reader[ProxyHeader | NeedData]):
    """Frames one PROXY protocol header (v1 or v2) at the start of a connection."""

    __slots__ = ()

    _complete: ClassVar[str] = "the PROXY header is complete"

    def wanted(self) -> int:
        """How many bytes may be read next without reading past the header (0: done)."""
        if self._final is not None:
            return 0
        buf = self._buf
        if len(buf) < _FIRST:
            return _FIRST - len(buf)
        if buf.startswith(V2_SIGNATURE):
            if len(buf) < _V2_HEAD:
                return _V2_HEAD - len(buf)
            length = int.from_bytes(buf[14:16], "big")
            return max(0, _V2_HEAD + length - len(buf))
        return 1  # a v1 line ends at its "\n": one byte at a time cannot overshoot it

    def _step(self) -> ProxyHeader | NeedData:
        buf = self._buf
        head = bytes(buf[: len(V2_SIGNATURE)])
        if not (V2_SIGNATURE.startswith(head) or V1_PREFIX.startswith(head[:6])):
            raise ProtocolError(f"no PROXY protocol header: {quote(head)}")
        if not self._have(_FIRST, "header"):
            return NEED_DATA
        if buf.startswith(V2_SIGNATURE):
            return self._v2()
        return self._v1()

    def _closed(self, available: int, what: str) -> str:
        return f"closed after {available} bytes of a PROXY protocol {what}"

    def _v1(self) -> ProxyHeader | NeedData:
        buf = self._buf
        end = buf.find(b"\n", 0, V1_MAX)
        if end < 0:
            if len(buf) >= V1_MAX:
                raise ProtocolError(f"PROXY v1 line longer than {V1_MAX} bytes")
            if self._eof:
                raise ProtocolError(self._closed(len(buf), "v1 line"))
            return NEED_DATA
        if end == 0 or buf[end - 1] != 0x0D:
            raise ProtocolError("PROXY v1 line does not end in CRLF")
        line = bytes(buf[: end - 1])
        return self._finish(_parse_v1(line), end + 1)

    def _v2(self) -> ProxyHeader | NeedData:
        if not self._have(_V2_HEAD, "v2 header"):
            return NEED_DATA
        buf = self._buf
        version_command, family_protocol, length = struct.unpack_from("!BBH", buf, 12)
        if version_command >> 4 != 2:
            raise ProtocolError(f"PROXY v2 header with version {version_command >> 4}")
        command = version_command & 0x0F
        if command not in (0, 1):
            raise ProtocolError(f"PROXY v2 header with unknown command {command}")
        if not self._have(_V2_HEAD + length, "v2 header"):
            return NEED_DATA
        body = bytes(buf[_V2_HEAD : _V2_HEAD + length])
        end = _V2_HEAD + length
        if command == 0:  # LOCAL: the balancer speaking for itself
            return self._finish(ProxyHeader(2, True, "unknown"), end)
        family = _V2_FAMILIES.get(family_protocol >> 4)
        protocol = family_protocol & 0x0F
        if family is None or protocol > 1:
            raise ProtocolError(
                f"PROXY v2 header for an unsupported family/protocol 0x{family_protocol:02x}"
            )
        if family == "unspec":
            return self._finish(ProxyHeader(2, False, "unknown", tlvs=body), end)
        size = _V2_ADDRESS_SIZES[family]
        if length < size:
            raise ProtocolError(f"PROXY v2 {family} header of {length} bytes, under {size}")
        tlvs = body[size:]
        if family == "unix":
            return self._finish(ProxyHeader(2, False, "unknown", tlvs=tlvs), end)
        if family == "inet":
            src4, dst4, sport, dport = struct.unpack_from("!4s4sHH", body)
            source = (str(ipaddress.IPv4Address(src4)), sport)
            destination = (str(ipaddress.IPv4Address(dst4)), dport)
            return self._finish(ProxyHeader(2, False, "tcp4", source, destination, tlvs), end)
        src6, dst6, sport, dport = struct.unpack_from("!16s16sHH", body)
        source = (str(ipaddress.IPv6Address(src6)), sport)
        destination = (str(ipaddress.IPv6Address(dst6)), dport)
        return self._finish(ProxyHeader(2, False, "tcp6", source, destination, tlvs), end)


def _parse_v1(line: bytes) -> ProxyHeader:
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"PROXY v1 line is not ASCII: {quote(line)}") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, False, "unknown")  # the rest of the line is to be ignored
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProtocolError(f"malformed PROXY v1 line: {quote(line)}")
    _, proto, src, dst, sport, dport = parts
    ip_type = ipaddress.IPv4Address if proto == "TCP4" else ipaddress.IPv6Address
    try:
        if "%" in src or "%" in dst:  # a zone id names an interface of the balancer
            raise ValueError(src)
        source_ip, destination_ip = ip_type(src), ip_type(dst)
    except ValueError:
        raise ProtocolError(f"PROXY v1 line with a bad {proto} address: {quote(line)}") from None
    family: Family = "tcp4" if proto == "TCP4" else "tcp6"
    return ProxyHeader(
        1,
        False,
        family,
        (str(source_ip), _v1_port(sport, line)),
        (str(destination_ip), _v1_port(dport, line)),
    )


def _v1_port(text: str, line: bytes) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > 65535:
        raise ProtocolError(f"PROXY v1 line with a bad port: {quote(line)}")
    if len(text) > 1 and text.startswith("0"):
        raise ProtocolError(f"PROXY v1 port with a leading zero: {quote(line)}")
    return int(text)


# -- the sending side: what a balancer writes (tests, and anyone fronting chainer) ------


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    """A v1 line; UNKNOWN when either address is None."""
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    proto = "TCP6" if ":" in source[0] else "TCP4"
    return f"PROXY {proto} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    *,
    local: bool = False,
    tlvs: bytes = b"",
) -> bytes:
    """A v2 header: LOCAL, or PROXY over TCP (UNSPEC when either address is None)."""
    if local:
        return V2_SIGNATURE + struct.pack("!BBH", 0x20, 0x00, len(tlvs)) + tlvs
    if source is None or destination is None:
        return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x00, len(tlvs)) + tlvs
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    family = 0x11 if src.version == 4 else 0x21
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1]) + tlvs
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, family, len(body)) + body
