"""The `routes:` section: each route's match patterns (also used for `deny:`), its `via`
(direct, reject, a chain or proxy name, or an inline list of hops), its fallbacks and
whether it is anonymous.
"""

from __future__ import annotations

import ipaddress

from yaml.nodes import Node, ScalarNode, SequenceNode

from ..models import DIRECT, REJECT, HopGroup, Pattern, Route, Via
from ..routing.table import compile_pattern
from ._chains import _Chains
from ._yaml import _did_you_mean, _is_null, _q, _what

_ROUTE_KEYS = ("match", "via", "fallback", "anonymous")


class _Routes(_Chains):
    def read_routes(self, node: Node | None) -> tuple[Route, ...]:
        message = "no routes: every destination would be refused"
        if node is None:
            self.error(None, "", message)
            return ()
        if _is_null(node) or (isinstance(node, SequenceNode) and not node.value):
            self.error(node, "routes", message)
            return ()
        if not isinstance(node, SequenceNode):
            self.error(node, "routes", f"expected a list of routes, got {_what(node)}")
            return ()
        routes = [self.read_route(i, item) for i, item in enumerate(node.value)]
        return tuple(r for r in routes if r is not None)

    def read_route(self, index: int, node: Node) -> Route | None:
        path = f"routes[{index}]"
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.known(entries, _ROUTE_KEYS, path)
        for key in ("match", "via"):
            if key not in entries:
                self.error(node, path, f"missing {_q(key)}")
        patterns: tuple[Pattern, ...] | None = None
        via: Via | None = None
        if "match" in entries:
            patterns = self.patterns(entries["match"][1], f"{path}.match")
        if "via" in entries:
            via = self.via(entries["via"][1], f"{path}.via")
        fallback: tuple[Via, ...] | None = ()
        if "fallback" in entries:
            fallback_node = entries["fallback"][1]
            fallback = self.fallback(fallback_node, f"{path}.fallback")
            if via is REJECT and fallback:
                self.error(fallback_node, f"{path}.fallback", "a reject route has no fallback")
                fallback = None
        anonymous = False
        if "anonymous" in entries:
            anonymous = bool(self.flag(entries["anonymous"][1], f"{path}.anonymous"))
        if patterns is None or via is None or fallback is None:
            return None
        return Route(index, patterns, via, fallback, node.start_mark.line + 1, anonymous)

    def patterns(self, node: Node, path: str) -> tuple[Pattern, ...] | None:
        items = self.items(node)
        if not items:
            self.error(node, path, "empty list: the route would match nothing")
            return None
        many = isinstance(node, SequenceNode)
        out: list[Pattern] = []
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]" if many else path
            if _is_null(item):
                self.error(item, item_path, "empty pattern")
                continue
            text = self.text(item, item_path)
            if text is None:
                continue
            try:
                out.append(compile_pattern(text))
            except ValueError as e:
                self.error(item, item_path, str(e))
        return tuple(out) if len(out) == len(items) else None

    def local_patterns(self, node: Node) -> tuple[Pattern, ...]:
        """`allow_local:` IPs and ranges (with ports, if wanted): addresses, not names."""
        patterns = self.patterns(node, "allow_local") or ()
        for i, pattern in enumerate(patterns):
            if pattern.kind not in ("cidr", "exact") or not _is_address(pattern.value):
                where = f"allow_local[{i}]" if isinstance(node, SequenceNode) else "allow_local"
                self.error(node, where, f"{pattern.text!r}: name an address or a range")
        return patterns

    def via(self, node: Node, path: str) -> Via | None:
        if isinstance(node, SequenceNode):
            hops = self.hops(node, path)
            if hops is None:
                return None
            return Via("chain", " > ".join(g.label() for g in hops), hops)
        if not isinstance(node, ScalarNode) or _is_null(node):
            self.error(node, path, f"expected a chain or proxy name or a list, got {_what(node)}")
            return None
        name = str(node.value)
        if name == "direct":
            return DIRECT
        if name == "reject":
            return REJECT
        if name in self.chains:
            return self.chains[name]
        if name in self.proxies:
            return Via("chain", name, (HopGroup((self.proxies[name],)),))
        if name not in self.broken:
            names = [*self.chains, *self.proxies, "direct", "reject"]
            self.error(
                node, path, f"no chain or proxy named {_q(name)}{_did_you_mean(name, names)}"
            )
        return None

    def fallback(self, node: Node, path: str) -> tuple[Via, ...] | None:
        if not isinstance(node, SequenceNode):
            via = self.via(node, path)
            return None if via is None else (via,)
        vias = [self.via(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        if any(v is None for v in vias):
            return None
        return tuple(v for v in vias if v is not None)


def _is_address(value: str) -> bool:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError:
        return False
    return True
