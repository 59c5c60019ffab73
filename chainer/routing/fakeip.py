"""The fake-IP table: the addresses chainer's DNS answers for chained names, remembered
both ways, so that a connection to one is routed — and sent down its chain — by the
name it stands for.

How this works. The table has `size` slots; slot i is the (i+1)-th address of the v4
range and of the v6 range (the first address of each, the network's own, is never lent),
so one slot gives a name both its A and its AAAA answer and an address maps back to its
slot by subtraction. A name keeps its slot while it is among the `size` most recently
used names — asking for the name (DNS) or for the address (a connection) counts as a
use — and, whatever its age, while a live tunnel holds it (`claim` ... `release`): a
tunnel's address is never lent to another name under it. A new name takes a never-used
slot, or the least recently used one that no tunnel holds; when every slot is held, there
is no address to give (the DNS server answers SERVFAIL). Reloads keep the table: the
server owns it, not the route table. Pure data, no I/O.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass

from ..models import FakeIp

__all__ = ["Claim", "FakeIps"]

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Claim:
    """A live tunnel's hold on a slot: its name keeps the slot until released."""

    slot: int
    name: str


class FakeIps:
    def __init__(self, options: FakeIp) -> None:
        self.options = options
        self._v4 = ipaddress.IPv4Network(options.v4) if options.v4 else None
        self._v6 = ipaddress.IPv6Network(options.v6) if options.v6 else None
        self.size = options.size
        self._slots: OrderedDict[str, int] = OrderedDict()  # name -> slot, oldest first
        self._names: dict[int, str] = {}  # slot -> name
        self._held: dict[int, int] = {}  # slot -> live tunnels holding it
        self._unused = 0  # slots from here on have never been lent

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def ranges(self) -> tuple[str, ...]:
        return tuple(str(n) for n in (self._v4, self._v6) if n is not None)

    def covers(self, host: str) -> bool:
        """Whether `host` (an IP literal) lies in a fake range."""
        return self._network_of(_ip(host)) is not None

    def addresses(self, name: str) -> tuple[str | None, str | None] | None:
        """The name's (v4, v6) fake addresses, lending it a slot if it has none; None
        when every slot is held by a live tunnel."""
        slot = self._slots.get(name)
        if slot is None:
            slot = self._lend(name)
            if slot is None:
                return None
        else:
            self._slots.move_to_end(name)
        return self._address(self._v4, slot), self._address(self._v6, slot)

    def name_of(self, host: str) -> str | None:
        """The name a fake address stands for; None if it stands for none (never lent,
        lent to a name since forgotten, or not a fake address at all)."""
        slot = self._slot_of(host)
        name = None if slot is None else self._names.get(slot)
        if name is not None:
            self._slots.move_to_end(name)
        return name

    def claim(self, host: str) -> Claim | None:
        """Hold the slot of a fake address for a live tunnel (see `release`)."""
        slot = self._slot_of(host)
        name = None if slot is None else self._names.get(slot)
        if slot is None or name is None:
            return None
        self._held[slot] = self._held.get(slot, 0) + 1
        self._slots.move_to_end(name)
        return Claim(slot, name)

    def release(self, claim: Claim) -> None:
        held = self._held.get(claim.slot, 0) - 1
        if held > 0:
            self._held[claim.slot] = held
        else:
            self._held.pop(claim.slot, None)
        if self._names.get(claim.slot) == claim.name:
            self._slots.move_to_end(claim.name)  # just used: the last to be forgotten

    def _lend(self, name: str) -> int | None:
        if self._unused < self.size:
            slot = self._unused
            self._unused += 1
        else:
            # The least recently used slot no tunnel holds. Held slots are skipped; there
            # are at most as many as live tunnels, so the walk is bounded by them.
            old = next((n for n, s in self._slots.items() if s not in self._held), None)
            if old is None:
                return None
            slot = self._slots.pop(old)
        self._slots[name] = slot
        self._names[slot] = name
        return slot

    def _slot_of(self, host: str) -> int | None:
        ip = _ip(host)
        network = self._network_of(ip)
        if network is None or ip is None:
            return None
        slot = int(ip) - int(network.network_address) - 1
        return slot if 0 <= slot < self.size else None

    def _network_of(self, ip: IP | None) -> Network | None:
        for network in (self._v4, self._v6):
            if network is not None and ip is not None and ip.version == network.version:
                if ip in network:
                    return network
        return None

    @staticmethod
    def _address(network: Network | None, slot: int) -> str | None:
        if network is None:
            return None
        return str(network.network_address + 1 + slot)


def _ip(host: str) -> IP | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None
