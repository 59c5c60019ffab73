"""Where clients may not go, whatever the routes say.

Checked before routing, on the destination as the client wrote it:
  - `deny:` patterns (the same patterns as `match`) and `allow_ports:`;
  - chainer's own listeners (a request to ourselves would loop);
  - on a listener that other machines can reach, loopback, unspecified and link-local
    (cloud metadata) addresses, every other address of this machine (on any interface),
    and `localhost` names: a proxy exposed on a network must not become a door into the
    machine it runs on. `allow_local:` names the ones that may be reached anyway.
For `direct` routes the same address rules are applied again to every address the name
resolves to, so a name that resolves to 127.0.0.1 (or is rebound to it) is refused too.

`deny:` may name lists (`list:NAME`), so it may be long: it is matched through a
`PatternIndex` (the first deny pattern in order, as a scan would find it), built once
per table — in the reload's worker thread, by `prepare` — and found again by identity.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import Refused
from ..models import Address, Listener, Pattern, Policy
from .index import PatternIndex, Recent
from .patterns import pattern_matches

_PROTECTED = tuple(
    ipaddress.ip_network(n)
    for n in (
        "127.0.0.0/8",
        "0.0.0.0/8",
        "169.254.0.0/16",
        "::1/128",
        "::/128",
        "fe80::/10",
        "::ffff:127.0.0.0/104",
        "::ffff:169.254.0.0/112",
        "fd00:ec2::254/128",
    )
)


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=4096)
def _parse(host: str) -> IP:
    return _plain(ipaddress.ip_address(host))


def _plain(ip: IP) -> IP:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is the IPv4 address it maps."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _protected(ip: IP) -> bool:
    return any(ip in net for net in _PROTECTED if net.version == ip.version)


_LOCAL_TTL = 5.0  # addresses come and go (DHCP, VPNs): an answer is trusted this long
_local_seen: dict[IP, tuple[bool, float]] = {}


def _is_local(ip: IP) -> bool:
    """Is `ip` an address of this machine? Binding to it succeeds only if it is, which
    covers every interface without enumerating them. Answers are kept a few seconds."""
    if ip.is_loopback or ip.is_unspecified:
        return True
    now = time.monotonic()
    seen = _local_seen.get(ip)
    if seen is not None and now - seen[1] < _LOCAL_TTL:
        return seen[0]
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
            local = True
        except OSError:
            local = False
    if len(_local_seen) >= 4096:
        _local_seen.clear()
    _local_seen[ip] = (local, now)
    return local


_Indexes = tuple[PatternIndex, PatternIndex]  # every deny pattern; its addresses only
_DENY: Recent[tuple[Pattern, ...], _Indexes] = Recent()


def _deny_indexes(deny: tuple[Pattern, ...]) -> _Indexes:
    return PatternIndex(deny), PatternIndex(deny, kinds=("cidr", "exact"))


def prepare(policy: Policy) -> None:
    """Index `policy.deny` now, off the event loop (connections then find it ready)."""
    if policy.deny:
        _DENY.get(policy.deny, _deny_indexes)


def _denied(pattern: Pattern) -> str:
    origin = f" (list {pattern.list_name}, line {pattern.line})" if pattern.list_name else ""
    return f"denied by deny: {pattern.text!r}{origin}"


@dataclass(frozen=True, slots=True)
class Guard:
    """The policy as it applies to connections arriving on one listener."""

    policy: Policy
    own: tuple[tuple[str, int], ...]  # every bound listener (host, port)
    exposed: bool  # the listener is reachable from other machines

    @classmethod
    def for_listener(
        cls, policy: Policy, listener: Listener, bound: Sequence[tuple[str, int]]
    ) -> Guard:
        return cls(policy, tuple(bound), not listener.loopback)

    def check(self, target: Address) -> None:
        """Raise Refused when `target`, as written, may not be reached."""
        deny = self.policy.deny
        if deny:
            every, _ = _DENY.get(deny, _deny_indexes)
            pos = every.first(target)
            if pos is not None:
                raise Refused(f"{target} is {_denied(deny[pos])}")
        ports = self.policy.allow_ports
        if ports and not any(lo <= target.port <= hi for lo, hi in ports):
            raise Refused(f"port {target.port} is not in allow_ports")
        if target.is_ip:
            self.check_address(target.host, target.port)
        elif self.exposed and (target.host == "localhost" or target.host.endswith(".localhost")):
            raise Refused(f"{target.host} is this machine: not reachable from outside")

    def check_address(self, host: str, port: int) -> None:
        """Raise Refused when connecting to IP `host`:`port` is not allowed (used again
        on every address a `direct` name resolves to)."""
        ip = _parse(host)
        if self._is_own(ip, port):
            raise Refused(f"{Address(host, port)} is chainer itself: refusing a loop")
        if self.exposed and (_protected(ip) or _is_local(ip)) and not self._allowed_local(ip, port):
            raise Refused(f"{host} is this machine or link-local: not reachable from outside")
        deny = self.policy.deny
        if deny:
            _, addresses = _DENY.get(deny, _deny_indexes)
            pos = addresses.first(Address(str(ip), port))
            if pos is not None:
                raise Refused(f"{host} is {_denied(deny[pos])}")

    def _allowed_local(self, ip: IP, port: int) -> bool:
        address = Address(str(ip), port)
        return any(pattern_matches(p, address) for p in self.policy.allow_local)

    def _is_own(self, ip: IP, port: int) -> bool:
        for host, own_port in self.own:
            if own_port != port:
                continue
            bound = _parse(host)
            if bound == ip or (ip.is_unspecified and bound.version == ip.version):
                return True  # connecting to 0.0.0.0 reaches this machine
            if bound.is_unspecified and _is_local(ip):
                return True  # a wildcard listener answers on every local address
        return False
