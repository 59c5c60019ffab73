"""The address and port fields that the SOCKS client and server codecs both write and read.

A SOCKS5 address is ATYP, then 4 bytes (IPv4), 16 bytes (IPv6) or a length byte and that
many bytes of name (RFC 1928 5), then a 2-byte port. The client writes one in its request
and reads one in the reply; the server reads the request's and writes the reply's, so
encoding, framing and decoding live here once. SOCKS4 shares the port and IPv4 forms.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

from .reader import quote
from .socks_codes import ATYP_DOMAIN, ATYP_IPV4, ATYP_IPV6

__all__ = [
    "ADDRESS_TYPES",
    "address_size",
    "ascii_name",
    "decode_address",
    "encode_address",
    "encode_port",
    "ipv4_text",
]

ADDRESS_TYPES: Final = frozenset({ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6})
_IP_SIZE: Final = {ATYP_IPV4: 4, ATYP_IPV6: 16}
# Printable ASCII but space: a NUL would cut the name short in the peer's resolver.
_NAME_BAD = re.compile(r"[^\x21-\x7e]")
_V4_MAPPED: Final = bytes(10) + b"\xff\xff"


def encode_address(host: str) -> bytes:
    """ATYP and address for `host`: an IP literal by its version, anything else a name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = ascii_name(host)
        return bytes((ATYP_DOMAIN, len(name))) + name
    if isinstance(ip, ipaddress.IPv4Address):
        return bytes((ATYP_IPV4,)) + ip.packed
    if ip.scope_id is not None:
        # The zone has no place on the wire; dropping it would name another address.
        raise ValueError(f"SOCKS5 cannot carry a scoped IPv6 address: {quote(host)}")
    return bytes((ATYP_IPV6,)) + ip.packed


def ascii_name(host: str) -> bytes:
    """`host` as a SOCKS5 or SOCKS4a name: 1 to 255 printable ASCII characters."""
    if not 1 <= len(host) <= 255 or _NAME_BAD.search(host):
        raise ValueError(f"not a DNS name of 1 to 255 ASCII characters: {quote(host)}")
    return host.encode("ascii")


def encode_port(port: int, lowest: int = 1) -> bytes:
    """The 2-byte port; a destination needs 1 or more, a bound port may be 0."""
    if not lowest <= port <= 0xFFFF:
        raise ValueError(f"port {port} is not in {lowest}..65535")
    return port.to_bytes(2)


def address_size(data: bytes | bytearray, at: int) -> int:
    """Bytes of ATYP, address and port at `at`, whose ATYP is one of `ADDRESS_TYPES`.

    Needs `data[at + 1]` too: a name's length byte (every address is at least 2 bytes).
    """
    atyp = data[at]
    return 1 + (1 + data[at + 1] if atyp == ATYP_DOMAIN else _IP_SIZE[atyp]) + 2


def decode_address(data: bytes | bytearray, at: int, *, readable: bool) -> tuple[str, int]:
    """Host text and port of the address at `at`, all of whose bytes are there.

    `readable` text is for people: a name's bytes that are not ASCII are escaped (`\\xNN`)
    and an IPv4-mapped IPv6 address ends dotted (RFC 5952 5). Otherwise the text is for a
    validator: such bytes become U+FFFD, which no valid name contains, and IPv6 is
    Python's compressed form.
    """
    atyp = data[at]
    if atyp == ATYP_IPV4:
        host, port_at = ipv4_text(data[at + 1 : at + 5]), at + 5
    elif atyp == ATYP_IPV6:
        packed = bytes(data[at + 1 : at + 17])
        host, port_at = _ipv6_text(packed, readable), at + 17
    else:
        port_at = at + 2 + data[at + 1]
        host = data[at + 2 : port_at].decode("ascii", "backslashreplace" if readable else "replace")
    return host, int.from_bytes(data[port_at : port_at + 2])


def ipv4_text(packed: bytes | bytearray) -> str:
    return ".".join(map(str, packed))


def _ipv6_text(packed: bytes, readable: bool) -> str:
    # Python < 3.13 shows a mapped IPv4 address in hex.
    if readable and packed[:12] == _V4_MAPPED:
        return "::ffff:" + ipv4_text(packed[12:])
    return ipaddress.IPv6Address(packed).compressed
