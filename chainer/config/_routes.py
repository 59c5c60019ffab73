"""The `routes:` section: each route's match patterns (also used for `deny:`), its `via`
(direct, reject, a chain or proxy name, or an inline list of hops), its fallbacks and
whether it is anonymous. `list:NAME` among the patterns stands for every pattern of that
list (`_lists.py`), expanded in place: Route.patterns holds what a scan would test.
"""

from __future__ import annotations

import ipaddress

from yaml.nodes import Node, ScalarNode, SequenceNode

from ..models import DIRECT, REJECT, HopGroup, Pattern, Route, Via
from ..routing.table import compile_pattern
from ._chains import _Chains
from ._lists import _Lists
from ._yaml import _SCALAR_TAGS, _did_you_mean, _is_null, _q, _what

_ROUTE_KEYS = ("match", "via", "fallback", "anonymous")


class _Routes(_Chains, _Lists):
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
        items = self.pattern_items(node, path)
        if items is None:
            return None
        if len(items) == 1:
            return items[0][2]
        return tuple(p for _, _, patterns in items for p in patterns)

    def pattern_items(
        self, node: Node, path: str
    ) -> list[tuple[Node, int, tuple[Pattern, ...]]] | None:
        """Per item of a `match` (or `deny`) value: its node, its index and its patterns
        (one, or a list's). None when any item is bad (each error recorded). Kept cheap
        per item: a table may write 100,000 patterns inline."""
        items = self.items(node)
        if not items:
            self.error(node, path, "empty list: the route would match nothing")
            return None
        many = isinstance(node, SequenceNode)
        out: list[tuple[Node, int, tuple[Pattern, ...]]] = []
        failed = False
        for i, item in enumerate(items):
            if isinstance(item, ScalarNode) and item.tag in _SCALAR_TAGS:
                text = str(item.value)
            else:
                item_path = f"{path}[{i}]" if many else path
                if _is_null(item):
                    self.error(item, item_path, "empty pattern")
                else:
                    self.text(item, item_path)  # records what it is instead
                failed = True
                continue
            if text.startswith("list:"):
                listed = self.listed(text[5:].strip(), item, f"{path}[{i}]" if many else path)
                if listed is None:
                    failed = True
                else:
                    out.append((item, i, listed))
                continue
            try:
                out.append((item, i, (compile_pattern(text),)))
            except ValueError as e:
                self.error(item, f"{path}[{i}]" if many else path, str(e))
                failed = True
        return None if failed else out

    def listed(self, name: str, node: Node, path: str) -> tuple[Pattern, ...] | None:
        """The patterns of list `name`, or None (an error recorded unless the list is
        defined but broken: its own errors say why)."""
        found = self.lists.get(name)
        if found is not None:
            return found.patterns
        if name not in self.broken_lists:
            known = _did_you_mean(name, self.lists)
            self.error(node, path, f"no list named {_q(name)}{known}")
        return None

    def local_patterns(self, node: Node) -> tuple[Pattern, ...]:
        """`allow_local:` IPs and ranges (with ports, if wanted): addresses, not names."""
        items = self.pattern_items(node, "allow_local") or []
        many = isinstance(node, SequenceNode)
        for _, i, patterns in items:
            for pattern in patterns:
                if pattern.kind not in ("cidr", "exact") or not _is_address(pattern.value):
                    where = f"allow_local[{i}]" if many else "allow_local"
                    origin = f" (list {pattern.list_name}, line {pattern.line})"
                    origin = origin if pattern.list_name else ""
                    self.error(node, where, f"{pattern.text!r}{origin}: name an address or a range")
        return tuple(p for _, _, patterns in items for p in patterns)

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
