"""`chainer explain HOST[:PORT]`: what the route table would do with a destination.

Nothing is sent anywhere. The answer says which rule matches (its position, the pattern
and file:line; for a pattern from a `lists:` file, that list and its file:line too), what
the server's destination policy says on each listener, the via and each hop position's
candidates with their strategy and timeouts, the fallbacks in order, and where the
destination's name would be resolved. `explain_render` shows it.

Live health is optional and comes from a `HealthView` (`liveview.py`). Health is kept
per edge (the hop a candidate is reached through, the candidate), so a candidate at hop
k > 1 gets one health line per candidate of hop k-1, not a merged "worst" state:
"bastion is fine from corp but open from corp2" is exactly what an operator needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..errors import BadTarget, Refused
from ..models import Address, Config, Proxy, Via
from ..routing.dnsanswer import DnsPolicy
from ..routing.fakeip import FakeIps
from ..routing.policy import Guard
from ..routing.table import RouteTable
from ..routing.target import normalize_host, parse_authority
from ..text import printable
from .liveview import EdgeNotes, HealthView

__all__ = [
    "CandidateView",
    "DnsView",
    "EdgeView",
    "Explanation",
    "ListedAt",
    "PolicyVerdict",
    "PositionView",
    "Resolution",
    "ViaView",
    "explain",
    "parse_destination",
]

DEFAULT_PORT = 443
ViaForm = Literal["chain", "inline", "proxy", "direct", "reject"]
Where = Literal["last_hop", "here", "nothing", "cannot", "nowhere"]


# -- the explanation ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EdgeView:
    """Health of reaching one candidate from `source` ("" = this machine)."""

    source: str
    state: str
    latency: float | None
    note: str = ""


@dataclass(frozen=True, slots=True)
class CandidateView:
    name: str
    url: str  # scheme://host:port, never credentials
    connect_timeout: float
    handshake_timeout: float
    auth: bool  # whether credentials are configured (never what they are)
    edges: tuple[EdgeView, ...] = ()


@dataclass(frozen=True, slots=True)
class PositionView:
    index: int  # 1-based hop position
    strategy: str
    candidates: tuple[CandidateView, ...]


@dataclass(frozen=True, slots=True)
class Resolution:
    """Where the destination's name gets resolved (for some of the last hop's candidates)."""

    where: Where
    text: str
    hops: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ViaView:
    form: ViaForm
    name: str  # chain or proxy name, the inline chain's text, "direct" or "reject"
    positions: tuple[PositionView, ...]
    resolution: tuple[Resolution, ...]


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    """What the server's destination policy says on one listener: None, or why it refuses."""

    listener: str
    refused: str | None


@dataclass(frozen=True, slots=True)
class DnsView:
    """What chainer's DNS server answers for the name (routing/dnsanswer.py), and why."""

    answer: str  # fake_ip, upstream, chain_resolve, blocked; fake_address: an IP it lends
    text: str


@dataclass(frozen=True, slots=True)
class ListedAt:
    """Where a matching pattern read from a `lists:` file was written."""

    name: str
    file: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Explanation:
    given: str  # the destination as typed (or its authority, when given an Address)
    target: Address  # as normalized
    port_assumed: bool
    route: str | None  # routes[i]; None when no route matches
    pattern: str | None
    file: str
    line: int
    via: ViaView | None
    fallbacks: tuple[ViaView, ...]
    deadline: float
    routes_total: int
    live: bool
    policy: tuple[PolicyVerdict, ...] = ()
    # `--sni`: a captured connection to this address whose first flight named `target`
    captured: Address | None = None
    sniffing: bool = True  # some transparent listener reads first flights for names
    dns: DnsView | None = None  # with `dns:` configured
    listed: ListedAt | None = None  # the pattern came from a `lists:` file

    @property
    def policy_refused(self) -> str | None:
        """The policy's reason when every listener refuses the destination."""
        reasons = [v.refused for v in self.policy]
        if reasons and all(reasons):
            return reasons[0]
        return None

    @property
    def refused(self) -> bool:
        return self.via is None or self.via.form == "reject" or self.policy_refused is not None

    @property
    def status(self) -> int | None:
        """The HTTP status a client would get without any connection being tried."""
        return 403 if self.refused else None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


_URL_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def parse_destination(text: str) -> tuple[Address, bool]:
    """`HOST[:PORT]` (IPv6 in brackets) or a URL (`http://host/path` -> host:80,
    `https://host` -> host:443) -> (Address, whether the port was assumed: 443).
    Raises BadTarget as the server would for the same destination."""
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if sep:
        default = _URL_PORTS.get(scheme.lower())
        if default is None:
            raise BadTarget(f"not an http(s) URL: {printable(text[:100])!r}")
        authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
        authority = authority.rpartition("@")[2]  # user:password@ is never a destination
        return parse_authority(authority, default_port=default), False
    address = parse_authority(text, default_port=0)
    if address.port == 0:
        return Address(address.host, DEFAULT_PORT), True
    return address, False


def _policy(
    config: Config, target: Address, captured: Address | None = None
) -> tuple[PolicyVerdict, ...]:
    """The server's destination policy on each configured listener (deny, allow_ports,
    loops to chainer itself, what exposed listeners protect). Addresses a `direct` name
    resolves to are checked again by the server when it connects; that cannot be shown
    here, since explain resolves nothing. A captured connection is judged on the
    transparent listeners (on every listener if there is none), by name and address."""
    bound = [(ln.address.host, ln.address.port) for ln in config.listeners]
    listeners = config.listeners
    if captured is not None:
        listeners = tuple(ln for ln in listeners if ln.transparent) or listeners
    verdicts = []
    for listener in listeners:
        guard = Guard.for_listener(config.policy, listener, bound)
        try:
            guard.check(target)
            if captured is not None and captured != target:
                guard.check(captured)
        except Refused as exc:
            verdicts.append(PolicyVerdict(str(listener.address), str(exc)))
        else:
            verdicts.append(PolicyVerdict(str(listener.address), None))
    return tuple(verdicts)


def explain(
    config: Config,
    target: Address | str,
    health: HealthView | None = None,
    *,
    sni: str | None = None,
) -> Explanation:
    """What the route table does with `target` (a string is parsed as HOST[:PORT], port
    443 assumed when omitted; raises BadTarget when it is not a valid destination).
    With `sni`: what a transparent listener does with a connection captured on its way
    to `target` whose first flight named `sni` (TLS SNI or HTTP Host): routed by that
    name, on the captured port, the policy judging name and address."""
    if isinstance(target, str):
        given = target
        address, assumed = parse_destination(target)
    else:
        given, address, assumed = str(target), target, False
    captured = None
    if sni is not None:
        name = normalize_host(sni)
        if Address(name, 1).is_ip:
            raise BadTarget(f"--sni takes a name, not an address: {printable(sni[:100])!r}")
        captured, address = address, Address(name, address.port)
    table = RouteTable.of(config.routes)
    match = table.match(address)
    route = match.route if match is not None else None
    listed = None
    if match is not None and match.pattern.list_name:
        found = config.pattern_list(match.pattern.list_name)
        file = found.file if found is not None else "?"
        listed = ListedAt(match.pattern.list_name, file, match.pattern.line)
    return Explanation(
        given=given,
        target=address,
        port_assumed=assumed,
        route=None if route is None else route.label(),
        pattern=None if match is None else match.pattern.text,
        file=config.path,
        line=0 if route is None else route.line,
        via=None if route is None else _via(config, route.via, address, health),
        fallbacks=()
        if route is None
        else tuple(_via(config, v, address, health) for v in route.fallback),
        deadline=config.defaults.deadline,
        routes_total=len(config.routes),
        live=health is not None,
        policy=_policy(config, address, captured),
        captured=captured,
        sniffing=any(ln.sniff for ln in config.listeners if ln.transparent),
        dns=_dns(config, table, address),
        listed=listed,
    )


def _dns(config: Config, table: RouteTable, target: Address) -> DnsView | None:
    """What the DNS server would answer for the name, decided as the server decides."""
    dns = config.dns
    if dns is None:
        return None
    if target.is_ip:
        fake = dns.fake_ip
        if fake is None or not FakeIps(fake).covers(target.host):
            return None
        return DnsView(
            "fake_address",
            "a fake address of chainer's DNS: a connection to it is routed by the name it "
            "is lent to (`dig -x` asks the running server which)",
        )
    decision = DnsPolicy(config, table).decide(target.host)
    if decision.kind == "fake":
        assert dns.fake_ip is not None
        ranges = " and ".join(r for r in (dns.fake_ip.v4, dns.fake_ip.v6) if r)
        text = (
            f"a fake address from {ranges} (TTL {dns.fake_ip.ttl}s): {decision.why}; "
            "no query for it leaves this machine"
        )
        return DnsView("fake_ip", text)
    if decision.kind == "chain_resolve":
        return DnsView("chain_resolve", f"real addresses: {decision.why}")
    if decision.kind == "upstream":
        where = ", ".join(str(a) for a in dns.upstream) or "the resolvers of /etc/resolv.conf"
        return DnsView("upstream", f"real addresses from {where}: {decision.why}")
    return DnsView("blocked", f"{dns.reject_rcode}: {decision.why}")


def _via(config: Config, via: Via, target: Address, health: HealthView | None) -> ViaView:
    if via.kind != "chain":
        return ViaView(via.kind, via.kind, (), (_resolution_direct(target, via.kind),))
    form: ViaForm = "inline"
    if (via.label, via) in config.chains:
        form = "chain"
    elif len(via.hops) == 1 and config.proxy(via.label) is not None:
        form = "proxy"
    positions: list[PositionView] = []
    sources = [""]
    for index, group in enumerate(via.hops, 1):
        candidates = tuple(_candidate(p, sources, health) for p in group.candidates)
        positions.append(PositionView(index, group.strategy, candidates))
        sources = [p.name for p in group.candidates]
    return ViaView(form, via.label, tuple(positions), _resolution_chain(via, target))


def _candidate(proxy: Proxy, sources: list[str], health: HealthView | None) -> CandidateView:
    edges: tuple[EdgeView, ...] = ()
    if health is not None:
        notes = health if isinstance(health, EdgeNotes) else None
        edges = tuple(
            EdgeView(
                source,
                health.state(source, proxy.name),
                health.latency(source, proxy.name),
                notes.note(source, proxy.name) if notes is not None else "",
            )
            for source in sources
        )
    return CandidateView(
        proxy.name,
        proxy.describe(),
        proxy.connect_timeout,
        proxy.handshake_timeout,
        proxy.has_credentials,
        edges,
    )


def _resolution_direct(target: Address, kind: str) -> Resolution:
    if kind == "reject":
        return Resolution("nowhere", "nowhere: refused, no connection is made")
    if target.is_ip:
        return Resolution("nothing", "nothing to resolve (an IP literal)")
    return Resolution("here", "on this machine (happy eyeballs)")


def _resolution_chain(via: Via, target: Address) -> tuple[Resolution, ...]:
    """Per candidate of the last position, grouped: a mixed group resolves in more than
    one place, depending on which last hop the connection ends up using."""
    places: dict[tuple[Where, str], list[str]] = {}
    for proxy in via.hops[-1].candidates:
        socks4 = proxy.scheme in ("socks4", "socks4a")
        if socks4 and target.is_ipv6:
            place: tuple[Where, str] = ("cannot", "cannot: socks4 carries no IPv6 address")
        elif target.is_ip:
            place = ("nothing", "nothing to resolve (an IP literal)")
        elif proxy.scheme != "socks4":
            place = ("last_hop", "by the last hop")
        elif proxy.resolve == "local":
            place = ("here", "on this machine (socks4 resolve: local)")
        else:
            place = ("cannot", "cannot: socks4 sends IPv4 only")
        places.setdefault(place, []).append(proxy.name)
    return tuple(Resolution(w, text, tuple(names)) for (w, text), names in places.items())
