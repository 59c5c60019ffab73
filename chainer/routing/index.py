"""Which of many patterns matches first, in time that does not grow with their number.

How this works: the patterns are numbered in table order (their *position*) and each is
filed once, at load, where a destination can find it by a few hash lookups:

  exact    `example.com`, `10.1.2.3`    one dict, host text -> positions
  suffix   `*.x` and `.x`               two dicts, name -> positions; a destination
                                        `a.b.c` looks up `a.b.c` (apex, `.x` only), then
                                        `b.c` and `c` in both: one lookup per label
  cidr     `10.0.0.0/8`, `2001:db8::/32` per IP version and prefix length, a dict from
                                        the network's top bits -> positions; an address
                                        looks up its own top bits once per prefix length
                                        in use (at most 33 / 129: O(prefix length))
  scan     `*`, `*:22`, `re:`           a list, tested one by one as before

A key may hold several positions (the same name with different ports, or in two
routes); they are kept ascending. Ports are checked after a key is found. Every bucket
offers its lowest matching position and the answer is the lowest of those — the pattern
a plain scan in table order would have stopped at, whichever structure found it; the
scan list is only walked below the best position found so far. A property test holds
`first` to the plain scan (`pattern_matches` in order) on random tables.

An index is built off the event loop (reloads run in a worker thread) and never changes
afterwards: readers need no lock, and a new table replaces an old one by one assignment.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import threading
from array import array
from collections.abc import Callable, Collection, Sequence
from typing import Generic, TypeVar

from ..models import Address, Pattern
from .patterns import pattern_matches

__all__ = ["PatternIndex", "Recent"]

# A dict value: one position (the common case: no list object) or several, ascending.
_Slot = int | tuple[int, ...]


class PatternIndex:
    """Patterns by position; `first(addr)` is the lowest position whose pattern matches."""

    __slots__ = ("_dom", "_exact", "_hi", "_lo", "_patterns", "_scan", "_sub", "_v4", "_v6")

    def __init__(self, patterns: Sequence[Pattern], kinds: Collection[str] | None = None) -> None:
        """Index `patterns` (positions 0..n-1). With `kinds`, patterns of other kinds are
        left out, as if they never matched (their positions stay as they were)."""
        self._patterns = tuple(patterns)
        n = len(self._patterns)
        # Port ranges by position: 0-65535 for "any port" (destination ports are 1-65535).
        self._lo = array("H", bytes(2 * n))
        self._hi = array("H", [65535]) * n
        exact: dict[str, list[int]] = {}
        sub: dict[str, list[int]] = {}
        dom: dict[str, list[int]] = {}
        nets: dict[int, dict[int, dict[int, list[int]]]] = {4: {}, 6: {}}
        scan: list[int] = []
        for pos, p in enumerate(self._patterns):
            kind = p.kind
            if kinds is not None and kind not in kinds:
                continue
            if p.ports is not None:
                self._lo[pos], self._hi[pos] = p.ports
            if kind == "exact":
                exact.setdefault(p.value, []).append(pos)
            elif kind == "subdomain":
                sub.setdefault(p.value, []).append(pos)
            elif kind == "domain":
                dom.setdefault(p.value, []).append(pos)
            elif kind == "cidr":
                version, bits, length = _network(p.value)
                width = 32 if version == 4 else 128
                by_len = nets[version].setdefault(length, {})
                by_len.setdefault(bits >> (width - length), []).append(pos)
            else:
                scan.append(pos)
        self._exact = _slots(exact)
        self._sub = _slots(sub)
        self._dom = _slots(dom)
        # (shift, table) per prefix length in use: the key is the address >> shift.
        self._v4 = tuple((32 - n, _slots(t)) for n, t in sorted(nets[4].items()))
        self._v6 = tuple((128 - n, _slots(t)) for n, t in sorted(nets[6].items()))
        self._scan = tuple(scan)

    def __len__(self) -> int:
        return len(self._patterns)

    def pattern(self, position: int) -> Pattern:
        return self._patterns[position]

    def first(self, addr: Address) -> int | None:
        """The lowest position whose pattern matches `addr`, or None."""
        host, port = addr.host, addr.port
        best = len(self._patterns)  # "none yet": above every position
        slot = self._exact.get(host)
        if slot is not None:
            best = self._pick(slot, port, best)
        ip = _ip_key(host)
        if ip is None:
            best = self._names(host, port, best)
        else:
            version, value = ip
            for shift, table in self._v4 if version == 4 else self._v6:
                slot = table.get(value >> shift)
                if slot is not None:
                    best = self._pick(slot, port, best)
        lo, hi, patterns = self._lo, self._hi, self._patterns
        for pos in self._scan:
            if pos >= best:
                break
            if lo[pos] <= port <= hi[pos] and pattern_matches(patterns[pos], addr):
                best = pos
                break
        return best if best < len(patterns) else None

    def _names(self, host: str, port: int, best: int) -> int:
        """`.x` on the apex, then `*.x` and `.x` on each parent of `host`."""
        sub, dom = self._sub, self._dom
        if not sub and not dom:
            return best
        slot = dom.get(host)
        if slot is not None:
            best = self._pick(slot, port, best)
        dot = host.find(".")
        while dot >= 0:
            parent = host[dot + 1 :]
            slot = sub.get(parent)
            if slot is not None:
                best = self._pick(slot, port, best)
            slot = dom.get(parent)
            if slot is not None:
                best = self._pick(slot, port, best)
            dot = host.find(".", dot + 1)
        return best

    def _pick(self, slot: _Slot, port: int, best: int) -> int:
        """The lowest position in `slot` below `best` whose ports take `port`, else best."""
        lo, hi = self._lo, self._hi
        if isinstance(slot, int):
            return slot if slot < best and lo[slot] <= port <= hi[slot] else best
        for pos in slot:
            if pos >= best:
                break
            if lo[pos] <= port <= hi[pos]:
                return pos
        return best


def _slots(table: dict[int, list[int]] | dict[str, list[int]]) -> dict[object, _Slot]:
    """Lists of positions (built ascending) as compact slots."""
    return {key: pos[0] if len(pos) == 1 else tuple(pos) for key, pos in table.items()}


def _network(value: str) -> tuple[int, int, int]:
    """(version, address as an int, prefix length) of a normalized range `addr/len`."""
    addr, _, length = value.partition("/")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    bits = int.from_bytes(socket.inet_pton(family, addr), "big")
    return (6 if family == socket.AF_INET6 else 4), bits, int(length)


@functools.lru_cache(maxsize=8192)
def _ip_key(host: str) -> tuple[int, int] | None:
    """(version, int) of an IP literal host, as `ipaddress` reads it; None for a name."""
    if not host or (":" not in host and not host[-1].isdigit()):
        return None  # a name: IPv4 literals end in a digit, IPv6 ones hold a colon
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    return ip.version, int(ip)


K = TypeVar("K")
V = TypeVar("V")


class Recent(Generic[K, V]):
    """The value last made from a key, found again by the key's identity (a routes or
    deny tuple: hashing 100,000 patterns to find their index would cost what the index
    saves). The entry holds its key, so the id cannot be reused while it is here.

    A reload builds the new table's indexes in its worker thread; the event loop then
    asks for the same tuple and gets them at once. One entry only: the running table's
    index is referenced by the Router anyway, and an older one kept here would keep a
    whole table alive after a reload."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entry: tuple[K, V] | None = None

    def get(self, key: K, make: Callable[[K], V]) -> V:
        with self._lock:
            entry = self._entry
        if entry is not None and entry[0] is key:
            return entry[1]
        value = make(key)  # outside the lock: a big index takes a while
        with self._lock:
            self._entry = (key, value)
        return value
