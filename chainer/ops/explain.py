"""`chainer explain HOST[:PORT]`: what the route table would do with a destination.

Nothing is sent anywhere. The answer says which rule matches (its position, the pattern
and file:line), the via and each hop position's candidates with their strategy and
timeouts, the fallbacks in order, and where the destination's name would be resolved.

Live health is optional and comes from a `HealthView`: an adapter over a `Health` object
in this process (`LiveHealthView`) or over the admin endpoint's `/hops` JSON (`HopsView`).
Health is kept per edge (the hop a candidate is reached through, the candidate), so a
candidate at hop k > 1 gets one health line per candidate of hop k-1, not a merged "worst"
state: "bastion is fine from corp but open from corp2" is exactly what an operator needs.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from ..errors import BadTarget, ChainerError, Refused
from ..models import Address, Config, Proxy, Via
from ..outbound.health import Health
from ..routing.policy import Guard
from ..routing.table import RouteTable
from ..routing.target import parse_authority
from ..text import fmt_ms, fmt_seconds, printable

__all__ = [
    "CandidateView",
    "EdgeView",
    "Explanation",
    "HealthView",
    "HopsView",
    "LiveHealthView",
    "LiveUnavailable",
    "PolicyVerdict",
    "PositionView",
    "Resolution",
    "ViaView",
    "explain",
    "fetch_hops_view",
    "parse_destination",
    "render_json",
    "render_text",
]

DEFAULT_PORT = 443
ViaForm = Literal["chain", "inline", "proxy", "direct", "reject"]
Where = Literal["last_hop", "here", "nothing", "cannot", "nowhere"]
_NAME_COLUMN = 4 + 6 + 1 + 11 + 1  # indent, "hop N", strategy: where candidate names start


class HealthView(Protocol):
    """Breaker state ("closed", "open", "half_open") and moving-average set-up latency
    (seconds, None when never measured) of the edge from `via` ("" = this machine)."""

    def state(self, via: str, proxy_name: str) -> str: ...

    def latency(self, via: str, proxy_name: str) -> float | None: ...


@runtime_checkable
class _EdgeNotes(Protocol):
    """Optional extra of a HealthView: a short note (when the circuit closes, last failure)."""

    def note(self, via: str, proxy_name: str) -> str: ...


class LiveHealthView:
    """A HealthView over the `Health` object of a router running in this process."""

    def __init__(self, health: Health, proxies: Iterable[Proxy]) -> None:
        self._health = health
        self._proxies = {p.name: p for p in proxies}

    def state(self, via: str, proxy_name: str) -> str:
        proxy = self._proxies.get(proxy_name)
        return "closed" if proxy is None else self._health.state(via, proxy)

    def latency(self, via: str, proxy_name: str) -> float | None:
        proxy = self._proxies.get(proxy_name)
        return None if proxy is None else self._health.latency(proxy, via)

    def note(self, via: str, proxy_name: str) -> str:
        for edge in self._health.edges():
            if (edge.via, edge.proxy) == (via, proxy_name):
                failing = edge.state != "closed" or edge.failures
                return _note(edge.closes_in, edge.last_reason if failing else "", edge.failures)
        return ""


class HopsView:
    """A HealthView over the admin endpoint's `/hops` JSON:
    {"edges": [{"from", "hop", "state", "latency_ms", "closes_in", "failures", "last_reason"}]},
    where "from" is "-" for hop 1 (this machine).
    An edge the endpoint does not list has never been used: closed, not measured."""

    def __init__(self, edges: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self._edges = dict(edges)

    @classmethod
    def from_json(cls, data: object) -> HopsView:
        """Raises ValueError when `data` does not have the /hops shape."""
        if not isinstance(data, Mapping) or not isinstance(data.get("edges"), list):
            raise ValueError('expected {"edges": [...]}')
        edges: dict[tuple[str, str], Mapping[str, Any]] = {}
        for i, edge in enumerate(data["edges"]):
            if not isinstance(edge, Mapping):
                raise ValueError(f"edges[{i}]: expected an object")
            source, hop = edge.get("from"), edge.get("hop")
            if not isinstance(source, str) or not isinstance(hop, str):
                raise ValueError(f'edges[{i}]: "from" and "hop" must be strings')
            edges[("" if source == "-" else source, hop)] = edge  # "-": this machine
        return cls(edges)

    def state(self, via: str, proxy_name: str) -> str:
        edge = self._edges.get((via, proxy_name))
        return str(edge.get("state", "closed")) if edge else "closed"

    def latency(self, via: str, proxy_name: str) -> float | None:
        edge = self._edges.get((via, proxy_name))
        ms = edge.get("latency_ms") if edge else None
        return float(ms) / 1000 if isinstance(ms, int | float) else None

    def note(self, via: str, proxy_name: str) -> str:
        edge = self._edges.get((via, proxy_name))
        if not edge:
            return ""
        closes_in = edge.get("closes_in")
        failures = edge.get("failures")
        failures = failures if isinstance(failures, int) else 0
        reason = edge.get("last_reason") if edge.get("state") != "closed" or failures else ""
        return _note(
            float(closes_in) if isinstance(closes_in, int | float) else None,
            reason if isinstance(reason, str) else "",
            failures,
        )


class LiveUnavailable(ChainerError):
    """The admin endpoint could not be read (not running, no `admin:`, bad answer)."""


def fetch_hops_view(admin: Address, timeout: float = 3.0) -> HopsView:
    """GET http://ADMIN/hops from a running instance, bypassing any *_PROXY variables
    (they may well point at that very instance)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(admin.host, admin.host)
    url = f"http://{Address(host, admin.port)}/hops"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as answer:
            data = json.loads(answer.read(4 * 1024 * 1024))
        return HopsView.from_json(data)
    except urllib.error.HTTPError as exc:
        raise LiveUnavailable(f"{url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise LiveUnavailable(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, bad JSON, wrong shape
        raise LiveUnavailable(f"{url}: {exc}") from None


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


def _policy(config: Config, target: Address) -> tuple[PolicyVerdict, ...]:
    """The server's destination policy on each configured listener (deny, allow_ports,
    loops to chainer itself, what exposed listeners protect). Addresses a `direct` name
    resolves to are checked again by the server when it connects; that cannot be shown
    here, since explain resolves nothing."""
    bound = [(ln.address.host, ln.address.port) for ln in config.listeners]
    verdicts = []
    for listener in config.listeners:
        guard = Guard.for_listener(config.policy, listener, bound)
        try:
            guard.check(target)
        except Refused as exc:
            verdicts.append(PolicyVerdict(str(listener.address), str(exc)))
        else:
            verdicts.append(PolicyVerdict(str(listener.address), None))
    return tuple(verdicts)


def explain(config: Config, target: Address | str, health: HealthView | None = None) -> Explanation:
    """What the route table does with `target` (a string is parsed as HOST[:PORT], port
    443 assumed when omitted; raises BadTarget when it is not a valid destination)."""
    if isinstance(target, str):
        given = target
        address, assumed = parse_destination(target)
    else:
        given, address, assumed = str(target), target, False
    match = RouteTable(config.routes).match(address)
    route = match.route if match is not None else None
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
        policy=_policy(config, address),
    )


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
        notes = health if isinstance(health, _EdgeNotes) else None
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


# -- rendering ----------------------------------------------------------------------------


def _note(closes_in: float | None, reason: str, failures: int = 0) -> str:
    parts = []
    if failures:
        parts.append(f"{failures} failure{'s' if failures != 1 else ''} since it last worked")
    if closes_in is not None:
        parts.append(
            f"closes in {fmt_seconds(math.ceil(closes_in) if closes_in >= 1 else closes_in)}"
        )
    if reason:
        parts.append(f"last: {reason}")
    return "; ".join(parts)


def _via_title(v: ViaView) -> str:
    if v.form in ("direct", "reject"):
        return v.form
    if v.form == "inline":
        return f"inline [{v.name}]"
    return f"{v.form} {v.name}"


def _resolution_text(v: ViaView) -> str:
    single = len(v.resolution) == 1
    parts = []
    for r in v.resolution:
        if r.where == "last_hop":
            parts.append(f"{r.text} ({', '.join(r.hops)})")
        elif single or not r.hops:
            parts.append(r.text)
        else:
            parts.append(f"{r.text} when the last hop is {' or '.join(r.hops)}")
    return "; ".join(parts)


def _target_kind(a: Address) -> str:
    if not a.is_ip:
        return "a name"
    return "an IPv6 literal" if a.is_ipv6 else "an IPv4 literal"


def render_text(e: Explanation) -> str:
    """Aligned text, first line a one-line summary (like `ip route get`)."""
    title = "refused (403)" if e.via is None else _via_title(e.via)
    if e.policy_refused is not None:
        title = "refused by policy (403)"
    head = (
        f"{e.target} -> no route matches -> {title}"
        if e.route is None
        else f'{e.target} -> {e.route} ({e.where}) match "{e.pattern}" -> {title}'
    )
    lines = [head]
    what = _target_kind(e.target)
    if e.port_assumed:
        what += f"; port omitted, {DEFAULT_PORT} assumed"
    lines.append(f"  {'destination':<12} {e.target} ({what})")
    if e.route is None:
        lines.append(f"  {'rule':<12} none of the {e.routes_total} routes in {e.file} matches")
    else:
        lines.append(f'  {"rule":<12} {e.route} at {e.where}, pattern "{e.pattern}"')
    refusing = [verdict for verdict in e.policy if verdict.refused]
    if refusing and e.policy_refused is None:
        for verdict in refusing:
            why = printable(verdict.refused or "")
            lines.append(f"  {'policy':<12} refused on {verdict.listener}: {why}")
    elif e.policy_refused is not None:
        lines.append(f"  {'policy':<12} refused: {printable(e.policy_refused)}")
    if e.refused:
        lines.append(
            f"  {'result':<12} refused, no connection made: HTTP 403, SOCKS5 0x02, SOCKS4 91"
        )
        return "\n".join(lines) + "\n"
    assert e.via is not None
    lines.append(
        f"  {'deadline':<12} {fmt_seconds(e.deadline)} for the whole set-up, "
        "failover and fallbacks included"
    )
    every = [e.via, *e.fallbacks]
    name_w = max((len(c.name) for v in every for p in v.positions for c in p.candidates), default=0)
    url_w = max((len(c.url) for v in every for p in v.positions for c in p.candidates), default=0)
    for n, v in enumerate(every):
        label = "via" if n == 0 else f"fallback {n}"
        detail = _via_title(v)
        if v.positions:
            chain = " > ".join(
                p.candidates[0].name
                if len(p.candidates) == 1
                else "[" + ", ".join(c.name for c in p.candidates) + "]"
                for p in v.positions
            )
            detail += f": {chain}" if v.form == "chain" else ""
        lines.append(f"  {label:<12} {detail}")
        for p in v.positions:
            strategy = p.strategy if len(p.candidates) > 1 else "-"
            for i, c in enumerate(p.candidates):
                lead = f"hop {p.index}" if i == 0 else ""
                strat = strategy if i == 0 else ""
                auth = "  auth" if c.auth else ""
                lines.append(
                    f"    {lead:<6} {strat:<11} {c.name:<{name_w}}  {c.url:<{url_w}}  "
                    f"connect {fmt_seconds(c.connect_timeout)}  "
                    f"handshake {fmt_seconds(c.handshake_timeout)}{auth}"
                )
                for edge in c.edges:
                    source = edge.source or "this machine"
                    note = f" ({printable(edge.note)})" if edge.note else ""
                    lines.append(
                        f"{'':<{_NAME_COLUMN + 2}}from {source}: {edge.state}, "
                        f"{fmt_ms(edge.latency, missing='not measured')}{note}"
                    )
        lines.append(f"    {'resolve':<10} {_resolution_text(v)}")
    return "\n".join(lines) + "\n"


def _via_json(v: ViaView) -> dict[str, Any]:
    return {
        "kind": v.form,
        "name": v.name,
        "hops": [
            {
                "position": p.index,
                "strategy": p.strategy,
                "candidates": [
                    {
                        "name": c.name,
                        "url": c.url,
                        "connect_timeout": c.connect_timeout,
                        "handshake_timeout": c.handshake_timeout,
                        "auth": c.auth,
                        "health": [
                            {
                                "from": edge.source,
                                "state": edge.state,
                                "latency_ms": None
                                if edge.latency is None
                                else round(edge.latency * 1000, 3),
                                "note": edge.note,
                            }
                            for edge in c.edges
                        ],
                    }
                    for c in p.candidates
                ],
            }
            for p in v.positions
        ],
        "resolve": [{"where": r.where, "text": r.text, "hops": list(r.hops)} for r in v.resolution],
        "resolve_text": _resolution_text(v),
    }


def render_json(e: Explanation) -> dict[str, Any]:
    """Plain data for `json.dumps`; no credentials (only whether a hop has them)."""
    t = e.target
    return {
        "destination": {
            "given": e.given,
            "host": t.host,
            "port": t.port,
            "authority": str(t),
            "kind": "name" if not t.is_ip else ("ipv6" if t.is_ipv6 else "ipv4"),
            "port_assumed": e.port_assumed,
        },
        "route": None
        if e.route is None
        else {"label": e.route, "pattern": e.pattern, "file": e.file, "line": e.line},
        "refused": e.refused,
        "status": e.status,
        "policy": [{"listener": pv.listener, "refused": pv.refused} for pv in e.policy],
        "deadline": e.deadline,
        "via": None if e.via is None else _via_json(e.via),
        "fallbacks": [_via_json(v) for v in e.fallbacks],
        "live": e.live,
    }
