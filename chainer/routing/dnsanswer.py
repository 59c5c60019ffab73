"""What chainer's DNS answers for a name: the route table's verdict, read for DNS. Pure.

How this works. A DNS question has a name and no port, while routes (and `deny:`,
`allow_ports:`) may depend on the port. So the name is routed at one port of each *port
class*: the ports between two consecutive boundaries that any route pattern, deny
pattern or allow_ports range draws (`*:22` draws 22 and 23). Within a class no pattern's
port test changes, so `RouteTable.match` at one port of it speaks for all of it; the
table decides, and nothing here matches a pattern itself. Then, in this order:

  1. refused at every port — a `reject` route, `deny:`, `allow_ports:`, no route — the
     name does not exist for the table's users: NXDOMAIN (or `reject_rcode: REFUSED`);
  2. `dns.chain_resolve` matches it: resolved for real by that entry's server, through
     its chain (the operator asked for real addresses);
  3. chained at any port: a fake address (a connection to it is routed by the name, per
     port, so every port still gets its own route) — and no query about it leaves this
     machine; with `fake_ip: false`, refused as in 1;
  4. otherwise (direct at every port that is not refused): resolved for real by
     `dns.upstream`, and the answer passed on.

Rule 3 before 4 means a name chained on one port and direct on another is kept remote:
answering it for real would leak it. Decisions are cached per name (a table is
immutable; a reload builds a new policy).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ..errors import BadTarget, Refused
from ..models import Address, ChainResolve, Config, Dns, Pattern, Route
from .policy import Guard
from .table import RouteTable
from .target import normalize_host

__all__ = ["DnsAnswer", "DnsPolicy", "PortVerdict", "dns_name"]

Kind = Literal["fake", "chain_resolve", "upstream", "refuse"]
Verdict = Literal["chain", "direct", "refused"]
_CACHE = 4096  # names whose decision is kept per table


@dataclass(frozen=True, slots=True)
class PortVerdict:
    """What the table does with the name on ports low..high."""

    low: int
    high: int
    verdict: Verdict
    route: str | None  # routes[i]; None when no route matched (or policy refused first)
    why: str

    def ports(self) -> str:
        return "every port" if (self.low, self.high) == (1, 65535) else _span(self.low, self.high)


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    kind: Kind
    name: str
    why: str  # one line, for explain and the debug log
    verdicts: tuple[PortVerdict, ...] = ()
    resolve: ChainResolve | None = None  # kind "chain_resolve": the entry that matched


def dns_name(text: str) -> str | None:
    """A question's name as a destination name (lower case, no final dot); None when it
    is not one a client could route to (an address, escapes, a bad label)."""
    try:
        host = normalize_host(text)
    except BadTarget:
        return None
    return None if Address(host, 1).is_ip else host


class DnsPolicy:
    """The decisions for one table: built once per route table (and reload)."""

    def __init__(self, config: Config, table: RouteTable) -> None:
        assert config.dns is not None
        self.dns: Dns = config.dns
        self.table = table
        self.guard = Guard(config.policy, own=(), exposed=False)
        self.classes = _port_classes(config)
        self.resolvers = RouteTable(
            [
                Route(entry.index, entry.patterns, entry.via, line=entry.line)
                for entry in self.dns.chain_resolve
            ]
        )
        self.decide = functools.lru_cache(maxsize=_CACHE)(self._decide)

    def _decide(self, name: str) -> DnsAnswer:
        verdicts = tuple(self._verdict(name, low, high) for low, high in self.classes)
        merged = _merge(verdicts)
        if all(v.verdict == "refused" for v in merged):
            return DnsAnswer("refuse", name, merged[0].why, merged)
        match = self.resolvers.match(Address(name, 53))
        if match is not None:
            entry = self.dns.chain_resolve[match.route.index]
            why = (
                f'dns.chain_resolve[{entry.index}] match "{match.pattern.text}": asked of '
                f"{entry.server} through {entry.via.label}"
            )
            return DnsAnswer("chain_resolve", name, why, merged, entry)
        chained = next((v for v in merged if v.verdict == "chain"), None)
        if chained is not None:
            where = f"chained on {chained.ports()} ({chained.why})"
            if self.dns.fake_ip is None:
                return DnsAnswer("refuse", name, f"{where}, and fake_ip is false", merged)
            return DnsAnswer("fake", name, where, merged)
        direct = next(v for v in merged if v.verdict == "direct")
        return DnsAnswer("upstream", name, f"direct on {direct.ports()} ({direct.why})", merged)

    def _verdict(self, name: str, low: int, high: int) -> PortVerdict:
        target = Address(name, low)
        try:
            self.guard.check(target)
        except Refused as exc:
            return PortVerdict(low, high, "refused", None, str(exc))
        match = self.table.match(target)
        if match is None:
            return PortVerdict(low, high, "refused", None, "no route matches")
        route = match.route
        label = route.label()
        if route.via.kind == "reject":
            return PortVerdict(low, high, "refused", label, f"{label} rejects it")
        kind: Verdict = "chain" if route.via.kind == "chain" else "direct"
        return PortVerdict(low, high, kind, label, f"{label} via {route.via.label}")


def _port_classes(config: Config) -> tuple[tuple[int, int], ...]:
    """Ports 1-65535 cut at every boundary a port test in the table draws."""
    cuts = {1}
    patterns: Iterable[Pattern] = (
        *(p for route in config.routes for p in route.patterns),
        *config.policy.deny,
    )
    ranges = [p.ports for p in patterns if p.ports is not None]
    ranges += list(config.policy.allow_ports)
    for low, high in ranges:
        cuts.add(low)
        if high < 65535:
            cuts.add(high + 1)
    starts = sorted(cuts)
    ends = [*(s - 1 for s in starts[1:]), 65535]
    return tuple(zip(starts, ends, strict=True))


def _merge(verdicts: tuple[PortVerdict, ...]) -> tuple[PortVerdict, ...]:
    """Neighbouring classes with the same verdict, route and reason, as one."""
    out: list[PortVerdict] = []
    for v in verdicts:
        last = out[-1] if out else None
        if last is not None and (last.verdict, last.route, last.why) == (v.verdict, v.route, v.why):
            out[-1] = PortVerdict(last.low, v.high, v.verdict, v.route, v.why)
        else:
            out.append(v)
    return tuple(out)


def _span(low: int, high: int) -> str:
    return f"port {low}" if low == high else f"ports {low}-{high}"
