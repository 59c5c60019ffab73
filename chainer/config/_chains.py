"""The `chains:` section: named chains of hops, each position a proxy, a failover list or
`{pick: [...], strategy: ...}`; references to proxies; and the socks4 rule that a socks4
hop can only be asked for an IPv4 address (or a name, with `resolve: local`). A chain is
a list of positions, or `{hops: [...], pipeline: true}` for a pipelined set-up.
"""

from __future__ import annotations

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..models import STRATEGIES, HopGroup, Proxy, Strategy, Via
from ._yaml import _did_you_mean, _is_null, _q, _Reader, _what

_STRATEGY_OF: dict[str, Strategy] = {s: s for s in STRATEGIES}


class _Chains(_Reader):
    proxies: dict[str, Proxy]
    chains: dict[str, Via]
    chain_names: set[str]
    broken: set[str]

    def read_chains(self, node: Node) -> None:
        if _is_null(node):
            return
        entries = self.mapping(node, "chains") or {}
        self.chain_names = set(entries)
        for name, (key_node, value_node) in entries.items():
            path = f"chains.{name}"
            ok = self.name_ok(name, key_node, path, "chain")
            if ok and (name in self.proxies or name in self.broken):
                self.error(key_node, path, f"{_q(name)} is already a proxy name")
                ok = False
            pipeline: bool | None = False
            hops_node: Node | None = value_node
            if isinstance(value_node, MappingNode):
                hops_node, pipeline = self.chain_options(value_node, path)
                path = f"{path}.hops"
            hops = None if hops_node is None else self.hops(hops_node, path)
            if hops is not None and pipeline is not None and ok:
                self.chains[name] = Via("chain", name, hops, pipeline=pipeline)
            else:
                self.broken.add(name)

    def chain_options(self, node: MappingNode, path: str) -> tuple[Node | None, bool | None]:
        """`{hops: [...], pipeline: true}`: the hops' node and the pipeline flag (None: bad)."""
        entries = self.mapping(node, path) or {}
        self.known(entries, ("hops", "pipeline"), path)
        pipeline: bool | None = False
        if "pipeline" in entries:
            pipeline = self.flag(entries["pipeline"][1], f"{path}.pipeline")
        if "hops" not in entries:
            self.error(node, path, 'missing "hops"')
            return None, pipeline
        return entries["hops"][1], pipeline

    def hops(self, node: Node, path: str) -> tuple[HopGroup, ...] | None:
        """A chain: positions in order, each a proxy name, a list of names (failover) or
        {pick: [names], strategy: ...}."""
        if _is_null(node) or isinstance(node, MappingNode):
            self.error(node, path, f"expected a list of hops, got {_what(node)}")
            return None
        items = self.items(node)
        if not items:
            self.error(node, path, "empty chain")
            return None
        many = isinstance(node, SequenceNode)
        paths = [f"{path}[{i}]" if many else path for i in range(len(items))]
        groups = [self.position(item, p) for item, p in zip(items, paths, strict=True)]
        for k in range(1, len(groups)):
            before, after = groups[k - 1], groups[k]
            if before is not None and after is not None:
                problem = _socks4_problem(before, after)
                if problem:
                    self.error(items[k], paths[k], problem)
                    groups[k] = None
        if any(g is None for g in groups):
            return None
        return tuple(g for g in groups if g is not None)

    def position(self, node: Node, path: str) -> HopGroup | None:
        if isinstance(node, ScalarNode):
            proxy = self.proxy_ref(node, path)
            return None if proxy is None else HopGroup((proxy,))
        if isinstance(node, SequenceNode):
            candidates = self.candidates(node, path)
            return None if candidates is None else HopGroup(candidates)
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.known(entries, ("pick", "strategy"), path)
        strategy: Strategy | None = "failover"
        if "strategy" in entries:
            value_node = entries["strategy"][1]
            text = self.text(value_node, f"{path}.strategy")
            strategy = _STRATEGY_OF.get(text or "")
            if text is not None and strategy is None:
                choices = ", ".join(STRATEGIES)
                self.error(value_node, f"{path}.strategy", f"{_q(text)} is not one of {choices}")
        if "pick" not in entries:
            self.error(node, path, 'missing "pick"')
            return None
        candidates = self.candidates(entries["pick"][1], f"{path}.pick")
        if candidates is None or strategy is None:
            return None
        return HopGroup(candidates, strategy)

    def candidates(self, node: Node, path: str) -> tuple[Proxy, ...] | None:
        items = self.items(node)
        if not items:
            self.error(node, path, "empty failover group")
            return None
        many = isinstance(node, SequenceNode)
        out: list[Proxy] = []
        ok = True
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]" if many else path
            if not isinstance(item, ScalarNode):
                self.error(item, item_path, f"expected a proxy name, got {_what(item)}")
                ok = False
                continue
            proxy = self.proxy_ref(item, item_path)
            if proxy is not None and proxy in out:
                self.error(item, item_path, f"{_q(proxy.name)} is listed twice")
                ok = False
            elif proxy is not None:
                out.append(proxy)
            else:
                ok = False
        return tuple(out) if ok else None

    def proxy_ref(self, node: Node, path: str) -> Proxy | None:
        name = self.text(node, path)
        if name is None or name in self.broken:
            return None
        if name in self.proxies:
            return self.proxies[name]
        if name in self.chain_names:
            self.error(node, path, f"{_q(name)} is a chain; a chain position takes proxy names")
        elif name in ("direct", "reject"):
            self.error(node, path, f"{_q(name)} cannot be a hop in a chain")
        else:
            hint = _did_you_mean(name, self.proxies)
            self.error(node, path, f"no proxy named {_q(name)}{hint}")
        return None


def _socks4_problem(before: HopGroup, after: HopGroup) -> str | None:
    """A socks4 hop must be asked for an IPv4 address; the next hop's address is what it is
    asked for. `resolve: local` lets it look names up here first."""
    for s4 in before.candidates:
        if s4.scheme != "socks4":
            continue
        for nxt in after.candidates:
            if nxt.address.is_ipv6:
                return f"socks4 proxy {_q(s4.name)} cannot reach the IPv6 hop {_q(nxt.name)}"
            if s4.resolve != "local" and not nxt.address.is_ip:
                return (
                    f"socks4 proxy {_q(s4.name)} cannot send the name {_q(nxt.address.host)}"
                    f" of {_q(nxt.name)}; use socks4a or resolve: local"
                )
    return None
