"""`chainer explain` shown: aligned text for a terminal, plain data for `--json`."""

from __future__ import annotations

from typing import Any

from ..models import Address
from ..text import fmt_ms, fmt_seconds, printable
from .explain import DEFAULT_PORT, Explanation, ViaView

__all__ = ["render_json", "render_text"]

_NAME_COLUMN = 4 + 6 + 1 + 11 + 1  # indent, "hop N", strategy: where candidate names start


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
    listed = "" if e.listed is None else f" (list {e.listed.name}, {e.listed.where})"
    head = (
        f"{e.target} -> no route matches -> {title}"
        if e.route is None
        else f'{e.target} -> {e.route} ({e.where}) match "{e.pattern}"{listed} -> {title}'
    )
    lines = [head]
    what = _target_kind(e.target)
    if e.port_assumed:
        what += f"; port omitted, {DEFAULT_PORT} assumed"
    lines.append(f"  {'destination':<12} {e.target} ({what})")
    if e.captured is not None:
        lines.append(
            f"  {'captured':<12} on its way to {e.captured}; routed by the name its first "
            "flight gave, which the chain carries; policy judges both"
        )
        if not e.sniffing:
            lines.append(
                f"  {'':<12} but no transparent listener sniffs (sniff: false): it would be "
                f"routed as {e.captured}"
            )
    if e.route is None:
        lines.append(f"  {'rule':<12} none of the {e.routes_total} routes in {e.file} matches")
    else:
        lines.append(f'  {"rule":<12} {e.route} at {e.where}, pattern "{e.pattern}"')
        if e.listed is not None:
            lines.append(f"  {'list':<12} {e.listed.name}, line {e.listed.line} of {e.listed.file}")
    refusing = [verdict for verdict in e.policy if verdict.refused]
    if refusing and e.policy_refused is None:
        for verdict in refusing:
            why = printable(verdict.refused or "")
            lines.append(f"  {'policy':<12} refused on {verdict.listener}: {why}")
    elif e.policy_refused is not None:
        lines.append(f"  {'policy':<12} refused: {printable(e.policy_refused)}")
    if e.dns is not None:
        lines.append(f"  {'dns':<12} {printable(e.dns.text)}")
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
        else {
            "label": e.route,
            "pattern": e.pattern,
            "file": e.file,
            "line": e.line,
            "list": None
            if e.listed is None
            else {"name": e.listed.name, "file": e.listed.file, "line": e.listed.line},
        },
        "refused": e.refused,
        "status": e.status,
        "policy": [{"listener": pv.listener, "refused": pv.refused} for pv in e.policy],
        "deadline": e.deadline,
        "via": None if e.via is None else _via_json(e.via),
        "fallbacks": [_via_json(v) for v in e.fallbacks],
        "live": e.live,
        "captured": None if e.captured is None else str(e.captured),
        "dns": None if e.dns is None else {"answer": e.dns.answer, "text": e.dns.text},
    }
