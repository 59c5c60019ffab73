r"""Route matching: pure functions over the frozen route table, no I/O.

A destination is matched on its text as the client sent it: names are never resolved to
route, so a name never falls inside an IP range. `re:` patterns run on RE2 (google-re2),
whose matching time is linear in the host's length: a pattern such as
`^([a-z0-9-]+\.?)+\.corp\.example$`, which backtracks exponentially in Python's `re`,
cannot stall the event loop. RE2 has no backreferences or lookaround; such a pattern is
refused when the file is loaded. Patterns are parsed once (by config.py,
through `compile_pattern`); compiled regexes and networks are cached by their text.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import re2  # type: ignore[import-untyped]

from ..errors import BadTarget
from ..models import Address, Pattern, Route
from .target import normalize_host, parse_port

__all__ = ["Match", "RouteTable", "compile_pattern", "pattern_matches"]

_Kind = Literal["any", "exact", "subdomain", "domain", "cidr", "regex"]
_REGEX_PORTS = re.compile(r"^(.+):([0-9]+(?:-[0-9]+)?)$", re.DOTALL)
_PREFIX = re.compile(r"^[0-9]{1,3}$")


def compile_pattern(text: str) -> Pattern:
    """Parse one `match` pattern. Raises ValueError with a short message when it is bad.

    `example.com` exact, `*.example.com` subdomains only, `.example.com` apex and
    subdomains, `10.0.0.0/8` or `2001:db8::/32` an IP range, `10.1.2.3` or `[2001:db8::1]`
    one IP, `re:REGEX` searched in the host, `*` anything; each may end in `:443` or
    `:8000-8999` (IPv6 needs brackets then: `[2001:db8::1]:443`).
    """
    text = text.strip()
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
            return _pattern(text, "cidr", _network(host, prefix), _ports(colon, ports))
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected {rest!r} after ']'")
        port_range = _ports(rest, rest[1:])
        if "/" in host:
            net, _, prefix = host.partition("/")
            return _pattern(text, "cidr", _network(net, prefix), port_range)
        try:
            return _pattern(text, "exact", _one_ip(host), port_range)
        except (ValueError, BadTarget):
            raise ValueError(f"not an IPv6 address or range in brackets: {text!r}") from None
    if "/" in text:
        net, _, rest = text.partition("/")
        prefix, colon, ports = rest.partition(":")
        return _pattern(text, "cidr", _network(net, prefix), _ports(colon, ports))
    if text.count(":") > 1:
        # An unbracketed IPv6 literal; a port would be ambiguous, so none is read here.
        try:
            return _pattern(text, "exact", _one_ip(text), None)
        except (ValueError, BadTarget):
            raise ValueError(
                f"not an IPv6 address (with a port, write [addr]:port): {text!r}"
            ) from None
    host, colon, ports = text.partition(":")
    port_range = _ports(colon, ports)
    if host == "*":
        return _pattern(text, "any", "", port_range)
    if host.startswith("*."):
        return _pattern(text, "subdomain", _domain(host[2:], text), port_range)
    if host.startswith("."):
        return _pattern(text, "domain", _domain(host[1:], text), port_range)
    if "*" in host:
        raise ValueError(f"'*' may only be a whole pattern or a leading '*.': {text!r}")
    if not host:
        raise ValueError(f"no host in {text!r}")
    return _pattern(text, "exact", normalize_host(host), port_range)


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


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    pattern: Pattern


class RouteTable:
    """The routes in file order; the first route with a matching pattern wins."""

    __slots__ = ("routes",)

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)

    def match(self, addr: Address) -> Match | None:
        for route in self.routes:
            for pattern in route.patterns:
                if pattern_matches(pattern, addr):
                    return Match(route, pattern)
        return None

    def __repr__(self) -> str:
        return f"RouteTable({len(self.routes)} routes)"


def _pattern(text: str, kind: _Kind, value: str, ports: tuple[int, int] | None) -> Pattern:
    return Pattern(text=text, kind=kind, value=value, ports=ports)


def _compile_regex(text: str) -> Pattern:
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
    return _pattern(text, "regex", body, ports)


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
