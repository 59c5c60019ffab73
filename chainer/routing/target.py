"""Destination names: validated before any rule sees them.

A host is either an IP literal or a DNS name made of letters, digits, `-` and `_` labels
(underscores appear in real service names). Anything else — NUL, control characters,
spaces, `@`, `%` (an IPv6 zone id, which would name an interface of *this* machine),
numeric aliases such as `2130706433` or `127.1` that a resolver would quietly turn into
loopback — is refused, because routing and policy act on the text.

An address has one text only: IPv6 compressed, and an IPv4-mapped IPv6 address
(`::ffff:127.0.0.1`, `::ffff:7f00:1`) written as the IPv4 address it is, so that routes,
`deny`, the loop check and the logs all see the same destination however it was spelt.
"""

from __future__ import annotations

import functools
import ipaddress
import re

from ..errors import BadTarget
from ..models import Address

_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
# What inet_aton would read as an address: dotted parts of decimal, octal or 0x-hex.
_NUMERIC = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*$")


# Pure functions of their text, called for every request: the same destinations come
# again and again, so their answers are kept (a BadTarget is not cached, only results).
@functools.lru_cache(maxsize=4096)
def normalize_host(host: str) -> str:
    """The canonical text of a host: IPv6 without brackets and compressed, names lower-case
    without a trailing dot. Raises BadTarget when it is neither an IP literal nor a DNS name."""
    if not host:
        raise BadTarget("empty host")
    if "%" in host:
        raise BadTarget(f"a zone id is not a destination: {_shown(host)}")
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            return _address_text(ipaddress.IPv6Address(inner))
        except ValueError:
            raise BadTarget(f"not an IPv6 literal: {_shown(host)}") from None
    try:
        return _address_text(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253 or not name.isascii():
        raise BadTarget(f"not a DNS name or IP literal: {_shown(host)}")
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise BadTarget(f"not a DNS name or IP literal: {_shown(host)}")
    if _NUMERIC.match(name):
        # `127.1`, `0x7f.1`, `2130706433`: resolvers read these as addresses.
        raise BadTarget(f"ambiguous numeric host: {_shown(host)}")
    return name


def _address_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def parse_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise BadTarget(f"bad port: {_shown(text)}")
    port = int(text)
    if not 1 <= port <= 65535:
        raise BadTarget(f"port out of range: {port}")
    return port


@functools.lru_cache(maxsize=4096)
def parse_authority(text: str, default_port: int | None = None) -> Address:
    """`host:port`, `[v6]:port` (or a bare host when default_port is given) -> Address."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadTarget(f"unclosed IPv6 bracket: {_shown(text)}")
        host, rest = text[: end + 1], text[end + 1 :]
        if rest.startswith(":"):
            port_text: str | None = rest[1:]
        elif rest == "":
            port_text = None
        else:
            raise BadTarget(f"bad authority: {_shown(text)}")
    else:
        host, sep, port_text_ = text.rpartition(":")
        if not sep:
            host, port_text = text, None
        elif ":" in host:
            raise BadTarget(f"IPv6 literal needs brackets: {_shown(text)}")
        else:
            port_text = port_text_
    if port_text is None:
        if default_port is None:
            raise BadTarget(f"no port: {_shown(text)}")
        port = default_port
    else:
        port = parse_port(port_text)
    return Address(normalize_host(host), port)


def _shown(text: str) -> str:
    """Hostile text made safe to log: bounded and escaped."""
    return repr(text[:100])
