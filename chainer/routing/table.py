"""The route table: the first route with a matching pattern wins. Pure, no I/O.

`RouteTable.match` answers from a `PatternIndex` over every route's patterns in table
order (route by route, each route's patterns in the order written, lists expanded in
place), so the lowest position that matches is exactly the (route, pattern) the plain
scan `scan_match` stops at — in time that does not grow with the table. Patterns
themselves (parsing, one pattern against one destination) live in `patterns.py`.

A big table takes a while to index, so the server builds it in a worker thread during a
reload (`RouteTable.of` there), and whoever asks for the same routes next — the new
Router, `explain` — gets that table instead of building another one on the event loop.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from ..models import Address, Pattern, Route
from .index import PatternIndex, Recent
from .patterns import compile_pattern, pattern_matches

__all__ = ["Match", "RouteTable", "compile_pattern", "pattern_matches", "scan_match"]


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    pattern: Pattern


class RouteTable:
    """The routes in file order; the first route with a matching pattern wins."""

    __slots__ = ("_index", "_route_of", "routes")

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        flat: list[Pattern] = []
        self._route_of = array("I")  # position -> index into self.routes
        for n, route in enumerate(self.routes):
            flat.extend(route.patterns)
            self._route_of.extend(array("I", [n]) * len(route.patterns))
        self._index = PatternIndex(flat)

    @classmethod
    def of(cls, routes: tuple[Route, ...]) -> RouteTable:
        """The table for `routes`, reusing one recently built for the same tuple."""
        return _RECENT.get(routes, cls)

    def match(self, addr: Address) -> Match | None:
        pos = self._index.first(addr)
        if pos is None:
            return None
        return Match(self.routes[self._route_of[pos]], self._index.pattern(pos))

    def __repr__(self) -> str:
        return f"RouteTable({len(self.routes)} routes, {len(self._index)} patterns)"


def scan_match(routes: Sequence[Route], addr: Address) -> Match | None:
    """The plain scan, route by route and pattern by pattern: what `match` must equal."""
    for route in routes:
        for pattern in route.patterns:
            if pattern_matches(pattern, addr):
                return Match(route, pattern)
    return None


_RECENT: Recent[tuple[Route, ...], RouteTable] = Recent()
