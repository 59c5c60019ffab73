"""`chainer check [CHAIN|ROUTE]`: probe chains hop by hop, each hop through the ones before.

How this works. For one chain, every candidate of hop 1 is probed directly (TCP, and TLS
for an https hop). The first candidate that worked becomes the path's first node; every
candidate of hop 2 is then probed *through* it (hop 1 is asked to CONNECT to it), and so
on. With a target, the last hop of the working path is finally asked for it. Each probe
rebuilds its path from scratch (`Dialer.probe`), so every row is one real attempt.

A hop's own answer is only tested by the step after it: a hop that accepts connections but
never answers shows as reached, and the next row fails with a detail that names it
(`hop 2 (bastion): no answer in 10s`). So when no candidate of a position works through the
chosen previous node, the next candidate of the previous position that worked is tried as
the previous node instead (one level, as the dialer would fail over), and the position is
probed again. When nothing works, the later positions are "not reached".

Chains are probed concurrently (a few at a time); probes within one chain run in order.
SSH hops keep their sessions for the whole check (as the router would): a row for an SSH
hop shows the host key fingerprint it offered and the authentication that worked, and
later rows through it cost a channel each.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio

from ..errors import ChainerError, ChainFailed, HopError
from ..models import Address, Config, HopGroup, Proxy, Via
from ..outbound.dialer import Dialer
from ..relay.sockstream import check_mark
from ..text import printable

__all__ = [
    "ChainReport",
    "CheckReport",
    "ProbeResult",
    "UnknownSelector",
    "check",
    "render_json",
    "render_table",
    "select_chains",
]

Outcome = Literal["ok", "failed", "timeout", "skipped"]
NOT_REACHED = "not reached (no working hop before it)"
CONCURRENCY = 4
_ROUTE_LABEL = re.compile(r"^routes\[([0-9]+)\]$")


class UnknownSelector(ChainerError, ValueError):
    """`chainer check NAME`: NAME is no chain, proxy or `routes[N]` with a chain."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One probe: `candidate` (a hop's name, or the target's host:port) reached through
    `path` (names of the hops before it; empty for hop 1)."""

    chain: str
    position: int  # 1-based hop position; len(chain) + 1 for the target
    candidate: str
    path: tuple[str, ...]
    outcome: Outcome
    latency: float | None  # seconds of the last step (reaching the candidate), when ok
    error: str = ""
    is_target: bool = False
    elapsed: float = 0.0  # the whole probe, path rebuilt included
    ssh: str = ""  # an SSH hop reached: its host key fingerprint and the auth that worked

    @property
    def hop(self) -> str:
        return "target" if self.is_target else str(self.position)


@dataclass(frozen=True, slots=True)
class ChainReport:
    name: str  # the chain's name, or the label of the route that holds it
    hops: str  # corp > [bastion, bastion2]
    routes: tuple[str, ...]  # routes that use it (fallbacks as routes[3].fallback[0])
    results: tuple[ProbeResult, ...]
    working: tuple[str, ...]  # the path that worked end to end (empty when none did)
    problem: str = ""  # why it cannot be built; "" when it can

    @property
    def ok(self) -> bool:
        return not self.problem


@dataclass(frozen=True, slots=True)
class CheckReport:
    chains: tuple[ChainReport, ...]
    target: Address | None = None

    @property
    def ok(self) -> bool:
        """False when any chain cannot be built end to end (target included, if given)."""
        return all(c.ok for c in self.chains)

    @property
    def results(self) -> tuple[ProbeResult, ...]:
        return tuple(r for c in self.chains for r in c.results)


@dataclass(slots=True)
class _Selected:
    name: str
    via: Via
    routes: list[str] = field(default_factory=list)


def select_chains(config: Config, selector: str | None) -> list[tuple[str, Via, tuple[str, ...]]]:
    """(name, via, routes using it) for each chain to check, identical chains once.
    `selector`: a chain name, a proxy name (a one-hop chain), `routes[N]` (its via and any
    chain among its fallbacks), or None for every chain and every route's chains."""
    picked: dict[tuple[HopGroup, ...], _Selected] = {}

    def add(name: str, via: Via, route: str | None = None) -> None:
        if via.kind != "chain":
            return
        entry = picked.setdefault(via.hops, _Selected(name, via))
        if route is not None and route not in entry.routes:
            entry.routes.append(route)

    def add_route(index: int) -> None:
        route = config.routes[index]
        label = route.label()
        add(_chain_name(config, route.via, label), route.via, label)
        for n, fallback in enumerate(route.fallback):
            where = f"{label}.fallback[{n}]"
            add(_chain_name(config, fallback, where), fallback, where)

    if selector is None:
        for name, via in config.chains:
            add(name, via)
        for index in range(len(config.routes)):
            add_route(index)
    elif (m := _ROUTE_LABEL.match(selector)) is not None:
        index = int(m.group(1))
        if index >= len(config.routes):
            raise UnknownSelector(f"no {selector}: the table has {len(config.routes)} routes")
        add_route(index)
        if not picked:
            route = config.routes[index]
            raise UnknownSelector(f"{selector} sends {route.via.kind}: no chain to check")
    else:
        chains = dict(config.chains)
        proxy = config.proxy(selector)
        if selector in chains:
            add(selector, chains[selector])
        elif proxy is not None:
            add(selector, Via("chain", selector, (HopGroup((proxy,)),)))
        else:
            names = ", ".join([*chains, "routes[N]"])
            raise UnknownSelector(f"no chain, proxy or route {selector!r} (try: {names})")
        for route in config.routes:
            for n, via in enumerate((route.via, *route.fallback)):
                if via.kind == "chain" and via.hops in picked:
                    label = route.label() if n == 0 else f"{route.label()}.fallback[{n - 1}]"
                    picked[via.hops].routes.append(label)
    return [(s.name, s.via, tuple(s.routes)) for s in picked.values()]


def _probe_mark(config: Config) -> int | None:
    """The probes carry chainer's mark, so that transparent capture rules on this machine
    let them out as they let the server's connections out; where this process may not
    set it, they go unmarked (and may be captured) rather than fail."""
    if config.mark is None:
        return None
    try:
        check_mark(config.mark)
    except PermissionError:
        return None
    return config.mark


def _chain_name(config: Config, via: Via, where: str) -> str:
    """A named chain or proxy keeps its name; an inline chain is named by its route."""
    if (via.label, via) in config.chains or config.proxy(via.label) is not None:
        return via.label
    return where


async def check(
    config: Config,
    selector: str | None,
    *,
    target: Address | None,
    progress: Callable[[ProbeResult], None] | None = None,
) -> CheckReport:
    """Probe the selected chains (see `select_chains`; raises UnknownSelector before any
    traffic). `progress` is called after each probe that was actually sent, as it ends."""
    selected = select_chains(config, selector)
    dialer = Dialer(config.defaults, mark=_probe_mark(config))
    limiter = anyio.CapacityLimiter(CONCURRENCY)
    reports: list[ChainReport | None] = [None] * len(selected)

    async def one(i: int, name: str, via: Via, routes: tuple[str, ...]) -> None:
        async with limiter:
            reports[i] = await _ChainCheck(dialer, name, via, target, progress).run(routes)

    try:
        async with anyio.create_task_group() as tg:
            for i, (name, via, routes) in enumerate(selected):
                tg.start_soon(one, i, name, via, routes)
    finally:
        await dialer.sessions.aclose()
    return CheckReport(tuple(r for r in reports if r is not None), target)


class _ChainCheck:
    def __init__(
        self,
        dialer: Dialer,
        name: str,
        via: Via,
        target: Address | None,
        progress: Callable[[ProbeResult], None] | None,
    ) -> None:
        self.dialer = dialer
        self.name = name
        self.via = via
        self.target = target
        self.progress = progress
        self.results: list[ProbeResult] = []

    async def run(self, routes: tuple[str, ...]) -> ChainReport:
        path: list[Proxy] = []
        # the other candidates of the previous position that worked (path[-1] is the first)
        spare: list[Proxy] = []
        problem = ""
        steps: list[Sequence[Proxy | Address]] = [g.candidates for g in self.via.hops]
        if self.target is not None:
            steps.append((self.target,))
        for position, step in enumerate(steps, 1):
            if problem:
                for node in step:
                    self._record(self._skipped(position, node, path))
                continue
            worked = await self._position(position, step, path)
            while not worked and spare:
                path[-1] = spare.pop(0)  # the next previous node that worked
                worked = await self._position(position, step, path)
            if not worked:
                problem = self._problem(position)
                continue
            hops = [node for node in worked if isinstance(node, Proxy)]
            if hops:  # (the target's step adds no node)
                path.append(hops[0])
            spare = hops[1:]
        working = () if problem else tuple(p.name for p in path)
        return ChainReport(
            self.name,
            " > ".join(g.label() for g in self.via.hops),
            routes,
            tuple(self.results),
            working,
            problem,
        )

    async def _position(
        self, position: int, step: Sequence[Proxy | Address], path: list[Proxy]
    ) -> list[Proxy | Address]:
        worked: list[Proxy | Address] = []
        for node in step:
            result = await self._probe(position, node, path)
            self._record(result)
            if result.outcome == "ok":
                worked.append(node)
        return worked

    async def _probe(self, position: int, node: Proxy | Address, path: list[Proxy]) -> ProbeResult:
        is_target = isinstance(node, Address)
        names = tuple(p.name for p in path)
        label = str(node) if isinstance(node, Address) else node.name
        started = anyio.current_time()
        outcome: Outcome = "ok"
        latency: float | None = None
        error = ssh = ""
        try:
            stream, trace = await self.dialer.probe(list(path), node)
        except (HopError, ChainFailed) as exc:
            outcome = "timeout" if exc.timeout else "failed"
            error = str(exc)
        else:
            with anyio.CancelScope(shield=True):
                await anyio.aclose_forcefully(stream)
            latency = trace[-1].seconds if trace else None
            if isinstance(node, Proxy) and node.scheme == "ssh":
                info = self.dialer.sessions.info(path, node)
                ssh = "" if info is None else info.describe()
        elapsed = anyio.current_time() - started
        return ProbeResult(
            self.name, position, label, names, outcome, latency, error, is_target, elapsed, ssh
        )

    def _skipped(self, position: int, node: Proxy | Address, path: list[Proxy]) -> ProbeResult:
        is_target = isinstance(node, Address)
        label = str(node) if isinstance(node, Address) else node.name
        names = tuple(p.name for p in path)
        return ProbeResult(
            self.name, position, label, names, "skipped", None, NOT_REACHED, is_target
        )

    def _record(self, result: ProbeResult) -> None:
        self.results.append(result)
        if self.progress is not None and result.outcome != "skipped":
            self.progress(result)

    def _problem(self, position: int) -> str:
        last = next(r for r in reversed(self.results) if r.position == position)
        if last.is_target:
            return f"target {last.candidate} not reached: {last.error}"
        return f"no working candidate at hop {position}: {last.error}"


# -- rendering ----------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds * 1000:.1f}"


def render_table(report: CheckReport) -> str:
    """Aligned columns: chain, hop, candidate, via, result, latency ms, detail; then one
    verdict line per chain."""
    if not report.chains:
        return "no chains to check: every route selected goes direct or is rejected\n"
    header = ("chain", "hop", "candidate", "via", "result", "latency ms", "detail")
    rows = [
        (
            r.chain,
            r.hop,
            r.candidate,
            " > ".join(r.path) if r.path else "-",
            "not reached" if r.outcome == "skipped" else r.outcome,
            _ms(r.latency),
            "" if r.outcome == "skipped" else printable(r.error or r.ssh),
        )
        for r in report.results
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [
            cell.rjust(widths[i]) if i == 5 else cell.ljust(widths[i])
            for i, cell in enumerate(row[:-1])
        ]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    lines.append("")
    for c in report.chains:
        used = f" (used by {', '.join(c.routes)})" if c.routes else ""
        if c.ok:
            lines.append(f"{c.name}: ok via {' > '.join(c.working)}{used}")
        else:
            lines.append(f"{c.name}: CANNOT BE BUILT: {printable(c.problem)}{used}")
    broken = sum(not c.ok for c in report.chains)
    total = len(report.chains)
    lines.append(
        f"{total} chain{'s' if total != 1 else ''} checked: "
        + ("all ok" if not broken else f"{broken} cannot be built")
        + (f", target {report.target}" if report.target else "")
    )
    return "\n".join(lines) + "\n"


def render_json(report: CheckReport) -> dict[str, Any]:
    return {
        "ok": report.ok,
        "target": None if report.target is None else str(report.target),
        "chains": [
            {
                "name": c.name,
                "hops": c.hops,
                "routes": list(c.routes),
                "ok": c.ok,
                "working": list(c.working),
                "problem": c.problem,
                "results": [
                    {
                        "hop": r.hop,
                        "position": r.position,
                        "candidate": r.candidate,
                        "via": list(r.path),
                        "outcome": r.outcome,
                        "latency_ms": None if r.latency is None else round(r.latency * 1000, 3),
                        "elapsed_ms": round(r.elapsed * 1000, 3),
                        "error": r.error,
                        "ssh": r.ssh,
                    }
                    for r in c.results
                ],
            }
            for c in report.chains
        ],
    }
