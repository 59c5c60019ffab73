"""`chainer rules`: the nftables ruleset that sends TCP connections into the config's
transparent listeners, ready for `nft -f -`.

How this works. Everything lives in one table, `inet chainer` (IPv4 and IPv6 together),
written as "create, delete, define" so that applying it again replaces it atomically and
`--delete` removes it whole. Each mode gets a chain per source of traffic:

  - a LAN (`capture.from`, `capture.interfaces`) is caught in prerouting;
  - this machine's own processes (`capture.uids`) in output;
  - `redirect` NATs the connection to the listener's port (nat hooks); chainer reads
    the original destination back from conntrack;
  - `tproxy` (filter/route hooks) hands a LAN's packets to the listener's socket as
    they are; this machine's own are marked in output so that policy routing
    (`ip rule fwmark … lookup …`, `ip route add local … dev lo`) loops them back in
    through `lo`, where prerouting hands them over. nft cannot express that routing:
    it is printed as commands (`--routing` for just them, as a shell script).

Never captured, before any listener's rule: chainer's own upstream connections (their
sockets carry SO_MARK `defaults.mark`; a transparent listener's accepted connections
carry it too, so its replies are never caught either), loopback, every address of this
machine itself (`fib daddr type local`: its DNS server, its admin port), and hop 1 of
every chain the routes use, when it is written as an address. Only TCP is captured.
Rules that capture or skip chainer's traffic carry counters: `nft list table inet
chainer` shows what was caught.
"""

from __future__ import annotations

import ipaddress
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import ChainerError
from ..models import DEFAULT_MARK, Config, Listener, Transparent

__all__ = ["ROUTE_TABLE", "RulesError", "Ruleset", "route_mark", "rules"]

TABLE = "inet chainer"
_TCP = "meta l4proto tcp "  # redirect and tproxy need a transport protocol match
ROUTE_TABLE = 712  # tproxy's policy routing table (0x2c8)
_CHAINS: tuple[tuple[Transparent, str], ...] = (
    ("redirect", "lan"),
    ("redirect", "local"),
    ("tproxy", "lan"),
    ("tproxy", "local"),
)
_FAMILIES = {4: ("ip", "0.0.0.0/0", "127.0.0.0/8"), 6: ("ip6", "::/0", "::1")}


class RulesError(ChainerError, ValueError):
    """The config's transparent listeners cannot be turned into rules as they are."""


@dataclass(frozen=True, slots=True)
class Ruleset:
    nft: str  # for `nft -f -`
    routing: tuple[str, ...]  # shell commands tproxy needs besides (none for redirect)


@dataclass(frozen=True, slots=True)
class _Selected:
    label: str  # listen[i]
    listener: Listener
    mode: Transparent
    families: tuple[int, ...]


def route_mark(config: Config) -> int:
    """The mark that sends this machine's captured packets to the tproxy listener."""
    return ((config.mark or DEFAULT_MARK) + 1) & 0xFFFFFFFF


def rules(config: Config, mode: Transparent | None = None, *, delete: bool = False) -> Ruleset:
    """The ruleset for the config's transparent listeners (of `mode` only, when given).
    Raises RulesError when there is none, or one cannot be captured as configured."""
    selected = _select(config, mode)
    tproxy_families = sorted({f for s in selected if s.mode == "tproxy" for f in s.families})
    routing = _routing(config, tproxy_families, delete)
    head = [
        f"# chainer rules for {config.path}: "
        + ", ".join(f"{s.label} ({s.mode} {s.listener.address})" for s in selected),
    ]
    if config.mark is None:
        head.append(
            "# defaults.mark is false: chainer's own connections carry no mark for these "
            "rules to skip"
        )
    if routing:
        how = f"chainer rules -c {config.path} --routing{' --delete' if delete else ''} | sh"
        what = "remove tproxy's policy routing too" if delete else "tproxy needs policy routing too"
        head.append(f"# {what} ({how}):")
        head += [f"#   {command}" for command in routing]
    if delete:
        return Ruleset("\n".join([*head, f"table {TABLE}", f"delete table {TABLE}", ""]), routing)
    body = [f"table {TABLE}", f"delete table {TABLE}", f"table {TABLE} {{"]
    skips = _skips(config)
    for chain_mode, where in _CHAINS:
        chosen = [s for s in selected if s.mode == chain_mode]
        if chain_mode == "tproxy" and where == "lan" and chosen:
            body += _chain(config, chain_mode, where, chosen, skips)  # also lo for "local"
        elif any(_captures(s, where) for s in chosen):
            body += _chain(config, chain_mode, where, chosen, skips)
    body.append("}")
    return Ruleset("\n".join([*head, *body, ""]), routing)


def _select(config: Config, mode: Transparent | None) -> list[_Selected]:
    selected = []
    for i, listener in enumerate(config.listeners):
        if listener.transparent is None or (mode is not None and listener.transparent != mode):
            continue
        label = f"listen[{i}]"
        if listener.capture is None:
            raise RulesError(
                f"{label} ({listener.address}) has no capture: say whose connections to "
                "capture (from:, interfaces:, uids:)"
            )
        if listener.address.port == 0:
            raise RulesError(f"{label} listens on port 0: rules need its real port")
        host = listener.address.host
        families = (4, 6) if host == "::" else (6,) if listener.address.is_ipv6 else (4,)
        selected.append(_Selected(label, listener, listener.transparent, families))
    if not selected:
        which = f"{mode} " if mode else ""
        raise RulesError(f"no {which}transparent listener in {config.path}")
    locals_ = [s.label for s in selected if s.mode == "tproxy" and _captures(s, "local")]
    if len(locals_) > 1:
        raise RulesError(
            f"{' and '.join(locals_)} both capture this machine's connections with tproxy: "
            "one mark routes them, so only one listener can"
        )
    if config.mark is None and any(
        s.listener.capture and s.listener.capture.all_uids for s in selected
    ):
        raise RulesError(
            "uids: all with defaults.mark: false would capture chainer's own connections: "
            "keep the mark, or list the uids to capture"
        )
    return selected


def _captures(s: _Selected, where: str) -> bool:
    capture = s.listener.capture
    assert capture is not None
    return capture.lan if where == "lan" else capture.local


def _skips(config: Config) -> list[str]:
    """Rules that let through what is never captured (mark and loopback come first in
    each chain, since they differ per hook)."""
    out = ['fib daddr type local return comment "this machine\'s own addresses"']
    for host, port, name in _hop1(config):
        family = "ip6" if ":" in host else "ip"
        out.append(f'{family} daddr {host} tcp dport {port} return comment "hop 1 {name}"')
    return out


def _hop1(config: Config) -> list[tuple[str, int, str]]:
    """(address, port, name) of every first-position candidate of the routes' chains
    that is written as an IP address."""
    seen: dict[tuple[str, int], str] = {}
    for route in config.routes:
        for via in (route.via, *route.fallback):
            if via.kind != "chain" or not via.hops:
                continue
            for proxy in via.hops[0].candidates:
                if proxy.address.is_ip:
                    seen.setdefault((proxy.address.host, proxy.address.port), proxy.name)
    return [(host, port, name) for (host, port), name in seen.items()]


def _chain(
    config: Config, mode: Transparent, where: str, chosen: Sequence[_Selected], skips: list[str]
) -> list[str]:
    hook = "prerouting" if where == "lan" else "output"
    if mode == "redirect":
        kind, priority = "nat", -100
    else:
        kind, priority = ("filter" if where == "lan" else "route"), -150
    rm = route_mark(config)
    lines = [
        f"type {kind} hook {hook} priority {priority}; policy accept;",
        "meta l4proto != tcp return",
    ]
    if mode == "tproxy" and where == "lan":
        lines.append(
            f'socket transparent 1 meta mark set {rm:#x} accept comment "connections chainer holds"'
        )
    if where == "local":
        if config.mark is not None:
            lines.append(f'meta mark {config.mark:#x} counter return comment "chainer itself"')
        lines += ["ip daddr 127.0.0.0/8 return", "ip6 daddr ::1 return"]
    else:
        lines += ["ip daddr 127.0.0.0/8 return", "ip6 daddr ::1 return"]
    lines += skips
    for s in chosen:
        lines += _capture_rules(s, mode, where, rm)
    name = f"{mode}_{where}"
    return [f"\tchain {name} {{", *(f"\t\t{line}" for line in lines), "\t}"]


def _capture_rules(s: _Selected, mode: Transparent, where: str, rm: int) -> list[str]:
    capture = s.listener.capture
    assert capture is not None
    port = s.listener.address.port
    comment = f'comment "{s.label}"'
    out: list[str] = []
    if where == "local" and capture.local:
        who = "" if capture.all_uids else f"meta skuid {_set(map(str, _uids(s)))} "
        for _, only in _family_matches(s, mode):
            if mode == "redirect":
                out.append(f"{only}{who}{_TCP}counter redirect to :{port} {comment}")
            else:
                out.append(f"{only}{who}{_TCP}counter meta mark set {rm:#x} {comment}")
    if where == "lan" and mode == "tproxy" and capture.local:
        for family in s.families:
            target = _tproxy_target(s, family)
            out.append(
                f'iifname "lo" meta mark {rm:#x} {_TCP}{target} accept '
                f'comment "{s.label}: this machine, looped back by policy routing"'
            )
    if where == "lan" and capture.lan:
        iif = f"iifname {_set(_quoted(capture.interfaces))} " if capture.interfaces else ""
        matches = _family_matches(s, mode)
        if capture.sources:
            matches = []
            for family in s.families:
                sources = [c for c in capture.sources if ipaddress.ip_network(c).version == family]
                if sources:  # else no source of this family is captured
                    matches.append((family, f"{_FAMILIES[family][0]} saddr {_set(sources)} "))
        for family, src in matches:
            if mode == "redirect":
                out.append(f"{iif}{src}{_TCP}counter redirect to :{port} {comment}")
            else:
                target = _tproxy_target(s, family)
                out.append(
                    f"{iif}{src}{_TCP}counter {target} meta mark set {rm:#x} accept {comment}"
                )
    return out


def _family_matches(s: _Selected, mode: Transparent) -> list[tuple[int, str]]:
    """(family, match) for each family the listener takes; a redirect to a dual-stack
    listener needs no match (one rule serves both)."""
    if mode == "redirect" and len(s.families) == 2:
        return [(0, "")]
    return [(family, f"meta nfproto ipv{family} ") for family in s.families]


def _tproxy_target(s: _Selected, family: int) -> str:
    host, port = s.listener.address.host, s.listener.address.port
    name = _FAMILIES[family][0]
    if host in ("0.0.0.0", "::"):
        return f"tproxy {name} to :{port}"
    return f"tproxy {name} to {f'[{host}]' if family == 6 else host}:{port}"


def _uids(s: _Selected) -> list[int]:
    capture = s.listener.capture
    assert capture is not None
    out = []
    for uid in capture.uids:
        if isinstance(uid, int):
            out.append(uid)
            continue
        try:
            out.append(pwd.getpwnam(uid).pw_uid)
        except KeyError:
            raise RulesError(f"{s.label}.capture.uids: no user {uid!r} on this machine") from None
    return out


def _set(items: Iterable[str]) -> str:
    values = list(dict.fromkeys(items))  # nft refuses a set with an element twice
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _quoted(names: Iterable[str]) -> list[str]:
    return [f'"{name}"' for name in names]


def _routing(config: Config, families: Sequence[int], delete: bool) -> tuple[str, ...]:
    """Policy routing for tproxy: packets carrying the route mark are delivered locally."""
    rm = route_mark(config)
    out: list[str] = []
    for family in families:
        ip = "ip" if family == 4 else "ip -6"
        everything = _FAMILIES[family][1]
        rule = f"{ip} rule del fwmark {rm:#x} lookup {ROUTE_TABLE}"
        route = f"local {everything} dev lo table {ROUTE_TABLE}"
        if delete:
            out += [rule, f"{ip} route del {route}"]
        else:
            # rule first deleted so that running it again adds no duplicate
            out += [
                f"{rule} 2>/dev/null",
                f"{ip} rule add fwmark {rm:#x} lookup {ROUTE_TABLE}",
                f"{ip} route replace {route}",
            ]
    return tuple(out)
