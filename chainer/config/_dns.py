"""The `dns:` section: chainer's DNS server — where it listens and who may ask, the fake
addresses for chained names (`fake_ip`), the resolvers for direct names (`upstream`),
names resolved for real through a chain (`chain_resolve`), and the answer for names the
table refuses (`reject_rcode`).

A DNS listener that other machines can reach must say who may ask (`allow:`) or say
`open: true`, as proxy listeners must: an open resolver is an amplification tool. A
fake range must leave room for `size` names, and must not hold an address chainer is
configured to reach (a hop, an upstream resolver): a connection to an address in a fake
range is taken for a fake one.
"""

from __future__ import annotations

import ipaddress
import math
from typing import cast

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import BadTarget
from ..models import Address, ChainResolve, Dns, FakeIp, Pattern, ReplyCode, Via
from ..routing.target import parse_authority
from ._listeners import _Listeners
from ._routes import _Routes
from ._yaml import _BOOL, _CONSTRUCTOR, _Entries, _q, _what

_DNS_KEYS = (
    "listen",
    "allow",
    "open",
    "fake_ip",
    "upstream",
    "chain_resolve",
    "reject_rcode",
    "timeout",
)
_FAKE_KEYS = ("v4", "v6", "ttl", "size")
_RESOLVE_KEYS = ("match", "server", "via")
_RCODES = ("NXDOMAIN", "REFUSED")
DNS_PORT = 53
MAX_TIMEOUT = 60.0
MAX_TTL = 86400
DEFAULT_SIZE = FakeIp().size

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Dns(_Listeners, _Routes):
    def read_dns(self, node: Node) -> Dns | None:
        entries = self.mapping(node, "dns")
        if entries is None:
            return None
        self.known(entries, _DNS_KEYS, "dns")
        if "listen" not in entries:
            self.error(node, "dns", 'missing "listen" (such as [127.0.0.1:5353])')
            return None
        listen = self._dns_listen(entries["listen"][1])
        allow: tuple[str, ...] | None = ()
        if "allow" in entries:
            allow = self.read_allow(entries["allow"][1], "dns.allow")
        is_open = bool(self.flag(entries["open"][1], "dns.open")) if "open" in entries else False
        fake_ip: FakeIp | None = FakeIp()
        fake_ok = True
        if "fake_ip" in entries:
            fake_ip, fake_ok = self._fake_ip(entries["fake_ip"][1])
        upstream: tuple[Address, ...] | None = ()
        if "upstream" in entries:
            upstream = self._servers(entries["upstream"][1], "dns.upstream")
        resolve: tuple[ChainResolve, ...] | None = ()
        if "chain_resolve" in entries:
            resolve = self._chain_resolve(entries["chain_resolve"][1])
        rcode: ReplyCode | None = "NXDOMAIN"
        if "reject_rcode" in entries:
            rcode = self._rcode(entries["reject_rcode"][1])
        timeout: float | None = 5.0
        if "timeout" in entries:
            timeout = self.duration(entries["timeout"][1], "dns.timeout")
            if timeout is not None and not 0 < timeout <= MAX_TIMEOUT:
                self.error(entries["timeout"][1], "dns.timeout", "from 1ms to 60s")
                timeout = None
        if (
            listen is None
            or allow is None
            or not fake_ok
            or upstream is None
            or resolve is None
            or rcode is None
            or timeout is None
        ):
            return None
        dns = Dns(
            listen,
            allow,
            is_open,
            fake_ip,
            upstream,
            resolve,
            rcode,
            timeout,
            node.start_mark.line + 1,
        )
        ok = self._exposure(dns, node)
        ok &= self._no_loop(dns, entries)
        ok &= self._outside_fakes(dns, entries, node)
        return dns if ok else None

    def _dns_listen(self, node: Node) -> tuple[Address, ...] | None:
        items = self.items(node)
        if not items:
            self.error(node, "dns.listen", "empty list: nothing would listen")
            return None
        many = isinstance(node, SequenceNode)
        out: list[Address] = []
        for i, item in enumerate(items):
            path = f"dns.listen[{i}]" if many else "dns.listen"
            address = self.listen_address(item, path)
            if address is None:
                continue
            if address.port and address in out:
                self.error(item, path, f"{address} is listed twice")
                continue
            out.append(address)
        return tuple(out) if len(out) == len(items) else None

    def _exposure(self, dns: Dns, node: Node) -> bool:
        if dns.loopback or dns.allow or dns.open:
            return True
        exposed = next(a for a in dns.listen if not ipaddress.ip_address(a.host).is_loopback)
        self.error(
            node,
            "dns",
            f"{exposed} is reachable from other machines and dns has no allow:, so anyone "
            "could use it as a resolver (an open resolver amplifies attacks); add allow: "
            "[CIDR...], or open: true if you mean it",
        )
        return False

    def _fake_ip(self, node: Node) -> tuple[FakeIp | None, bool]:
        """`false` (no fake addresses), or `{v4, v6, ttl, size}`; (value, whether ok)."""
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return (FakeIp() if _CONSTRUCTOR.construct_yaml_bool(node) else None), True
        entries = self.mapping(node, "dns.fake_ip")
        if entries is None:
            return None, False
        self.known(entries, _FAKE_KEYS, "dns.fake_ip")
        base = FakeIp()
        ok = True
        ranges: dict[str, str | None] = {"v4": base.v4, "v6": base.v6}
        for key, version in (("v4", 4), ("v6", 6)):
            if key in entries:
                value = self._fake_range(entries[key][1], f"dns.fake_ip.{key}", version)
                ok &= value is not False
                ranges[key] = value if isinstance(value, str) else None
        v4, v6 = ranges["v4"], ranges["v6"]
        if ok and v4 is None and v6 is None:
            self.error(node, "dns.fake_ip", "v4 and v6 both false: say fake_ip: false instead")
            return None, False
        ttl = base.ttl
        if "ttl" in entries:
            seconds = self.duration(entries["ttl"][1], "dns.fake_ip.ttl")
            if seconds is not None and not 0 < seconds <= MAX_TTL:
                self.error(entries["ttl"][1], "dns.fake_ip.ttl", "from 1s to 1 day")
                seconds = None
            ok &= seconds is not None
            ttl = max(1, math.ceil(seconds or 1))  # DNS TTLs are whole seconds
        room = min(_capacity(r) for r in (v4, v6) if r is not None) if ok else DEFAULT_SIZE
        size = min(DEFAULT_SIZE, room)
        if "size" in entries:
            given = self.count(entries["size"][1], "dns.fake_ip.size", maximum=1 << 24)
            if given is not None and given > room:
                self.error(
                    entries["size"][1],
                    "dns.fake_ip.size",
                    f"{given} names do not fit: the ranges hold {room} addresses",
                )
                given = None
            ok &= given is not None
            size = given or size
        if not ok:
            return None, False
        return FakeIp(v4, v6, ttl, size), True

    def _fake_range(self, node: Node, path: str, version: int) -> str | bool | None:
        """A CIDR of the family, with room for some addresses; None for `false`; False
        when wrong (reported)."""
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            if not _CONSTRUCTOR.construct_yaml_bool(node):
                return None
        text = self.text(node, path) if isinstance(node, ScalarNode) else None
        try:
            network = ipaddress.ip_network((text or "").strip(), strict=False)
        except ValueError:
            network = None
        longest = 30 if version == 4 else 126
        if network is None or network.version != version or network.prefixlen > longest:
            self.error(
                node,
                path,
                f"expected an IPv{version} range of /{longest} or wider, or false, "
                f"got {_what(node)}",
            )
            return False
        return str(network)

    def _servers(self, node: Node, path: str) -> tuple[Address, ...] | None:
        """IP[:PORT] entries, port 53 by default."""
        items = self.items(node)
        if not items:
            self.error(node, path, "empty list: leave the key out for the system's resolvers")
            return None
        many = isinstance(node, SequenceNode)
        out: list[Address] = []
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if many else path
            address = self._server(item, where, names=False)
            if address is not None:
                out.append(address)
        return tuple(out) if len(out) == len(items) else None

    def _server(self, node: Node, path: str, *, names: bool) -> Address | None:
        text = self.text(node, path)
        if text is None:
            return None
        try:
            address = parse_authority(text.strip(), default_port=DNS_PORT)
        except BadTarget as e:
            self.error(node, path, f"expected IP:PORT: {e}")
            return None
        if not names and not address.is_ip:
            self.error(node, path, f"a resolver is an IP address, not a name: {_q(address.host)}")
            return None
        return address

    def _chain_resolve(self, node: Node) -> tuple[ChainResolve, ...] | None:
        items = node.value if isinstance(node, SequenceNode) else [node]
        many = isinstance(node, SequenceNode)
        if not items:
            self.error(node, "dns.chain_resolve", "empty list: leave the key out instead")
            return None
        out: list[ChainResolve] = []
        for i, item in enumerate(items):
            path = f"dns.chain_resolve[{i}]" if many else "dns.chain_resolve"
            entry = self._one_resolve(i, item, path)
            if entry is not None:
                out.append(entry)
        return tuple(out) if len(out) == len(items) else None

    def _one_resolve(self, index: int, node: Node, path: str) -> ChainResolve | None:
        entries = self.mapping(node, path) if isinstance(node, MappingNode) else None
        if entries is None:
            if not isinstance(node, MappingNode):
                self.error(node, path, f"expected {{match, server, via}}, got {_what(node)}")
            return None
        self.known(entries, _RESOLVE_KEYS, path)
        missing = [key for key in _RESOLVE_KEYS if key not in entries]
        for key in missing:
            self.error(node, path, f"missing {_q(key)}")
        if missing:
            return None
        patterns = self._name_patterns(entries, f"{path}.match")
        server = self._server(entries["server"][1], f"{path}.server", names=True)
        via = self._resolve_via(entries, f"{path}.via")
        if patterns is None or server is None or via is None:
            return None
        return ChainResolve(index, patterns, server, via, node.start_mark.line + 1)

    def _name_patterns(self, entries: _Entries, path: str) -> tuple[Pattern, ...] | None:
        node = entries["match"][1]
        patterns = self.patterns(node, path)
        if patterns is None:
            return None
        for i, pattern in enumerate(patterns):
            if pattern.ports is not None:
                where = f"{path}[{i}]" if isinstance(node, SequenceNode) else path
                self.error(node, where, f"{pattern.text!r}: a DNS name has no port")
                return None
        return patterns

    def _resolve_via(self, entries: _Entries, path: str) -> Via | None:
        node = entries["via"][1]
        via = self.via(node, path)
        if via is not None and via.kind != "chain":
            self.error(
                node,
                path,
                f"chain_resolve goes through a chain, not {via.kind} (names routed direct "
                "are resolved by dns.upstream)",
            )
            return None
        return via

    def _rcode(self, node: Node) -> ReplyCode | None:
        text = node.value if isinstance(node, ScalarNode) else None
        if not isinstance(text, str) or text.upper() not in _RCODES:
            self.error(node, "dns.reject_rcode", f"expected NXDOMAIN or REFUSED, got {_what(node)}")
            return None
        return cast(ReplyCode, text.upper())

    def _no_loop(self, dns: Dns, entries: _Entries) -> bool:
        """An upstream that is this DNS server itself would ask itself forever."""
        for i, server in enumerate(dns.upstream):
            if server in dns.listen:
                node = entries["upstream"][1]
                self.error(node, f"dns.upstream[{i}]", f"{server} is dns.listen: a loop")
                return False
        return True

    def _outside_fakes(self, dns: Dns, entries: _Entries, node: Node) -> bool:
        """Hops and resolvers chainer must reach cannot sit in a fake range: a
        connection there would be taken for one to a fake address."""
        fake = dns.fake_ip
        if fake is None:
            return True
        ranges = [ipaddress.ip_network(r) for r in (fake.v4, fake.v6) if r is not None]
        reached = [(f"proxies.{p.name}", p.address) for p in self.proxies.values()]
        reached += [(f"dns.upstream[{i}]", a) for i, a in enumerate(dns.upstream)]
        reached += [(f"dns.chain_resolve[{c.index}].server", c.server) for c in dns.chain_resolve]
        for what, address in reached:
            network = _inside(address, ranges)
            if network is not None:
                self.error(
                    entries["fake_ip"][1] if "fake_ip" in entries else node,
                    "dns.fake_ip",
                    f"{address.host} ({what}) is inside the fake range {network}: pick a "
                    "range that your networks do not use",
                )
                return False
        return True


def _capacity(cidr: str) -> int:
    """Addresses a range lends: all but its first and last."""
    return ipaddress.ip_network(cidr).num_addresses - 2


def _inside(address: Address, ranges: list[IPNetwork]) -> IPNetwork | None:
    if not address.is_ip:
        return None
    ip = ipaddress.ip_address(address.host)
    return next((n for n in ranges if ip.version == n.version and ip in n), None)
