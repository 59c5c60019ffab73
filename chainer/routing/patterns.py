r"""`match` patterns: parsed once when the table is loaded, tested one at a time here.

A destination is matched on its text as the client sent it: names are never resolved to
route, so a name never falls inside an IP range. `re:` patterns run on RE2 (google-re2),
whose matching time is linear in the host's length: a pattern such as
`^([a-z0-9-]+\.?)+\.corp\.example$`, which backtracks exponentially in Python's `re`,
cannot stall the event loop. RE2 has no backreferences or lookaround; such a pattern is
refused when the file is loaded. Compiled regexes and networks are cached by their text.

How loading stays fast: a table may hold 100,000 patterns, and the general parser below
(`_compile_general`, built on `ipaddress` and `normalize_host`) costs 10-25 µs a pattern.
`_compile_fast` recognizes the shapes almost every big list is made of — lower-case
names with `*.`/`.` and a port, IPv4 and IPv6 addresses and ranges in canonical form —
with one regex each and plain integer arithmetic, and returns exactly the Pattern the
general parser would (a property test holds them to that). Anything it is not sure of
(upper case, a trailing dot, leading zeros, an IPv4-mapped or IPv4-compatible IPv6
address, a bad port) goes to the general parser, which also words every error.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from typing import Any, Literal

import re2  # type: ignore[import-untyped]

from ..errors import BadTarget
from ..models import Address, Pattern
from .target import normalize_host, parse_port

__all__ = ["compile_pattern", "pattern_matches"]

_Kind = Literal["any", "exact", "subdomain", "domain", "cidr", "regex"]
_REGEX_PORTS = re.compile(r"^(.+):([0-9]+(?:-[0-9]+)?)$", re.DOTALL)
_PREFIX = re.compile(r"^[0-9]{1,3}$")


def compile_pattern(text: str, *, list_name: str = "", line: int = 0) -> Pattern:
    """Parse one `match` pattern. Raises ValueError with a short message when it is bad.

    `example.com` exact, `*.example.com` subdomains only, `.example.com` apex and
    subdomains, `10.0.0.0/8` or `2001:db8::/32` an IP range, `10.1.2.3` or `[2001:db8::1]`
    one IP, `re:REGEX` searched in the host, `*` anything; each may end in `:443` or
    `:8000-8999` (IPv6 needs brackets then: `[2001:db8::1]:443`). `list_name` and `line`
    say where a pattern read from a `lists:` file came from.
    """
    text = text.strip()
    parsed = _compile_fast(text) or _compile_general(text)
    kind, value, ports = parsed
    return Pattern(text, kind, value, ports, list_name, line)


def pattern_matches(p: Pattern, addr: Address) -> bool:
    """Whether `addr` (host already normalized by `chainer.target`) matches `p`."""
    if p.ports is not None and not p.ports[0] <= addr.port <= p.ports[1]:
        return False
    host = addr.host
    match p.kind:
        case "any":
            return True
        case "exact":
            return host == p.value
        case "subdomain":
            return host.endswith("." + p.value) and not addr.is_ip
        case "domain":
            return (host == p.value or host.endswith("." + p.value)) and not addr.is_ip
        case "cidr":
            ip = _ip(host)
            return ip is not None and ip in _cached_network(p.value)
        case "regex":
            return _cached_regex(p.value).search(host) is not None
    return False  # pragma: no cover - Pattern.kind is a closed Literal


_Parsed = tuple[_Kind, str, tuple[int, int] | None]

# -- the fast path --------------------------------------------------------------------------

_PORTS = r"(?::([0-9]{1,5})(?:-([0-9]{1,5}))?)?"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_FAST_NAME = re.compile(rf"(\*\.|\.)?((?:{_LABEL}\.)*{_LABEL}){_PORTS}")
_OCTET = r"([0-9]{1,3})"
_FAST_V4 = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}(?:/([0-9]{{1,3}}))?{_PORTS}")
_H = r"[0-9a-fA-F:]{2,39}"
_FAST_V6 = re.compile(
    rf"(?:\[({_H})\](?:/([0-9]{{1,3}}))?|\[({_H})/([0-9]{{1,3}})\]){_PORTS}"
    rf"|({_H})(?:/([0-9]{{1,3}}){_PORTS})?"
)
# What inet_aton would read as an address (`127.1`, `0x7f.1`): the general parser refuses it.
_NUMERIC = re.compile(r"(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*")
_V4_MASKS = [(0xFFFFFFFF << (32 - n)) & 0xFFFFFFFF for n in range(33)]
_V6_ALL = (1 << 128) - 1


def _compile_fast(text: str) -> _Parsed | None:
    """The common shapes, or None for the general parser to decide."""
    if not text or text.startswith("re:") or text == "*" or text.startswith("*:"):
        return None
    first = text[0]
    if first == "[" or (":" in text and text.count(":") > 1):
        return _fast_v6(text)
    if first.isdigit():
        fast = _fast_v4(text)
        if fast is not None:
            return fast
    m = _FAST_NAME.fullmatch(text)
    if m is None:
        return None
    wild, name, lo, hi = m.groups()
    if len(name) > 253 or _NUMERIC.fullmatch(name):
        return None
    ports = _fast_ports(lo, hi)
    if ports is False:
        return None
    kind: _Kind = "exact" if wild is None else "subdomain" if wild == "*." else "domain"
    return kind, name, ports


def _fast_ports(lo: str | None, hi: str | None) -> tuple[int, int] | Literal[False] | None:
    if lo is None:
        return None
    low = int(lo)
    high = low if hi is None else int(hi)
    if not 1 <= low <= high <= 65535:
        return False
    return (low, high)


def _fast_v4(text: str) -> _Parsed | None:
    m = _FAST_V4.fullmatch(text)
    if m is None:
        return None
    a, b, c, d, prefix, lo, hi = m.groups()
    value = 0
    for octet in (a, b, c, d):
        if (octet[0] == "0" and len(octet) > 1) or int(octet) > 255:
            return None  # leading zeros are refused (or read as octal by others)
        value = value << 8 | int(octet)
    ports = _fast_ports(lo, hi)
    if ports is False:
        return None
    if prefix is None:
        return "exact", f"{a}.{b}.{c}.{d}", ports
    length = int(prefix)
    if length > 32:
        return None
    net = value & _V4_MASKS[length]
    return "cidr", f"{socket.inet_ntoa(net.to_bytes(4, 'big'))}/{length}", ports


def _fast_v6(text: str) -> _Parsed | None:
    m = _FAST_V6.fullmatch(text)
    if m is None:
        return None
    g = m.groups()
    # Three spellings: `[addr]` or `[addr]/len` with a port, `[addr/len]` with a port,
    # or bare `addr` / `addr/len` (a port only after a length).
    if g[0] is not None:
        addr, prefix, lo, hi = g[0], g[1], g[4], g[5]
    elif g[2] is not None:
        addr, prefix, lo, hi = g[2], g[3], g[4], g[5]
    else:
        addr, prefix, lo, hi = g[6], g[7], g[8], g[9]
    try:
        value = int.from_bytes(socket.inet_pton(socket.AF_INET6, addr), "big")
    except OSError:
        return None
    ports = _fast_ports(lo, hi)
    if ports is False:
        return None
    if prefix is None:
        return None if _v4_shaped(value) else ("exact", _v6_text(value), ports)
    length = int(prefix)
    if length > 128:
        return None
    net = value & (_V6_ALL ^ (_V6_ALL >> length))  # strict=False: host bits cleared
    return None if _v4_shaped(net) else ("cidr", f"{_v6_text(net)}/{length}", ports)


def _v4_shaped(value: int) -> bool:
    """IPv4-compatible (`::a.b.c.d`, `::1`, `::`) or IPv4-mapped: inet_ntop writes these
    differently from `ipaddress`, and mapped ones become IPv4 text; the general parser
    handles them."""
    return value >> 96 == 0 or value >> 32 == 0xFFFF


def _v6_text(value: int) -> str:
    return socket.inet_ntop(socket.AF_INET6, value.to_bytes(16, "big"))


# -- the general parser ---------------------------------------------------------------------


def _compile_general(text: str) -> _Parsed:
    if not text:
        raise ValueError("empty pattern")
    if text.startswith("re:"):
        return _compile_regex(text)
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed bracket in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if rest.startswith("/"):
            prefix, colon, ports = rest[1:].partition(":")
            return "cidr", _network(host, prefix), _ports(colon, ports)
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        port_range = _ports(rest, rest[1:])
        if "/" in host:
            net, _, prefix = host.partition("/")
            return "cidr", _network(net, prefix), port_range
        try:
            return "exact", _one_ip(host), port_range
        except (ValueError, BadTarget):
            raise ValueError(f"not an IPv6 address or range in brackets: {text!r}") from None
    if "/" in text:
        net, _, rest = text.partition("/")
        prefix, colon, ports = rest.partition(":")
        return "cidr", _network(net, prefix), _ports(colon, ports)
    if text.count(":") > 1:
        # An unbracketed IPv6 literal; a port would be ambiguous, so none is read here.
        try:
            return "exact", _one_ip(text), None
        except (ValueError, BadTarget):
            raise ValueError(
                f"not an IPv6 address (with a port, write [addr]:port): {text!r}"
            ) from None
    host, colon, ports = text.partition(":")
    port_range = _ports(colon, ports)
    if host == "*":
        return "any", "", port_range
    if host.startswith("*."):
        return "subdomain", _domain(host[2:], text), port_range
    if host.startswith("."):
        return "domain", _domain(host[1:], text), port_range
    if "*" in host:
        raise ValueError(f"'*' may only be a whole pattern or a leading '*.': {text!r}")
    if not host:
        raise ValueError(f"no host in {text!r}")
    return "exact", normalize_host(host), port_range


def _compile_regex(text: str) -> _Parsed:
    body = text[3:]
    ports = None
    m = _REGEX_PORTS.match(body)
    if m:
        body, ports = m.group(1), _ports(":", m.group(2))
    if not body:
        raise ValueError("empty regex after 're:'")
    try:
        _cached_regex(body)
    except re2.error as e:
        reason = e.args[0] if e.args else e
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(f"bad regex {body!r}: {reason} (RE2 syntax)") from None
    return "regex", body, ports


def _ports(colon: str, text: str) -> tuple[int, int] | None:
    if not colon:
        return None
    lo_text, dash, hi_text = text.partition("-")
    try:
        lo = parse_port(lo_text)
        hi = parse_port(hi_text) if dash else lo
    except ValueError as e:
        raise ValueError(f"bad port in pattern: {e}") from None
    if lo > hi:
        raise ValueError(f"port range {lo}-{hi} is backwards")
    return (lo, hi)


def _domain(name: str, text: str) -> str:
    if not name or "*" in name:
        raise ValueError(f"bad domain in {text!r}")
    value = normalize_host(name)
    if _ip(value) is not None:
        raise ValueError(f"a wildcard needs a DNS name, not an IP: {text!r}")
    return value


def _one_ip(text: str) -> str:
    """One IPv6 literal (brackets gone) as `normalize_host` writes it: a mapped IPv4
    address becomes the IPv4 address, so it matches however a client spells it."""
    if "%" in text:
        raise ValueError("a zone id")
    ipaddress.IPv6Address(text)  # only IPv6 comes here: a ValueError says what it is not
    return normalize_host(text)


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def _network(net: str, prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ValueError(f"bad prefix length {prefix!r} in {net}/{prefix}")
    if "%" in net:
        raise ValueError(f"a zone id is not an address: {net!r}")
    try:
        network = ipaddress.ip_network(f"{net}/{prefix}", strict=False)
    except ValueError as e:
        raise ValueError(f"bad IP range: {e}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        # Destinations are normalized to IPv4 text: the range must be IPv4 too.
        assert network.network_address.ipv4_mapped is not None
        v4 = ipaddress.IPv4Network((network.network_address.ipv4_mapped, network.prefixlen - 96))
        return str(v4)
    return str(network)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported as config errors, not on stderr
_RE2_OPTIONS.never_capture = True  # only whether it matches is asked


@functools.lru_cache(maxsize=1024)
def _cached_regex(text: str) -> Any:
    return re2.compile(text, _RE2_OPTIONS)


@functools.lru_cache(maxsize=1024)
def _cached_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(text, strict=False)
