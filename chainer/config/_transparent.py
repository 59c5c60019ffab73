"""Transparent listeners' part of `listen:` (`transparent`, `capture`, `sniff`) and of
`defaults:` (`sniff`, `mark`).

A transparent listener speaks no proxy protocol, so it takes neither `tls:` nor `auth:`;
it serves only connections that firewall rules steered to it (one made to its own
address is a loop, refused), so unlike a proxy listener it need not say who may use it.
Its `capture:` must fit its address: nftables' `redirect` sends a LAN's connections to
the address of the interface they came in by (a loopback listener never sees them) and
this machine's own to 127.0.0.1 or ::1 (a listener on one specific other address never
sees them).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import TypeVar, cast

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..models import Capture, Listener, Sniff, Transparent
from ._yaml import _BOOL, _CONSTRUCTOR, _INT, _STR, _Entries, _is_null, _q, _Reader, _what

_MODES = ("redirect", "tproxy")
_CAPTURE_KEYS = ("from", "interfaces", "uids")
_SNIFF_KEYS = ("timeout", "bytes")
_INTERFACE = re.compile(r"^[A-Za-z0-9_.:@+-]{1,15}\*?$")  # `eth*`: nft's wildcard
_USER = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}\$?$")
_SIZE = re.compile(r"^([0-9]+)\s*(B|KiB|MiB)?$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}
MIN_SNIFF_BYTES, MAX_SNIFF_BYTES = 256, 1 << 20
MAX_SNIFF_TIMEOUT = 60.0
MAX_UID = 2**32 - 2
_T = TypeVar("_T")


class _Transparent(_Reader):
    default_sniff: Sniff | None
    mark_given: bool
    mark: int | None

    def split_defaults(self, node: Node) -> Node:
        """Read `defaults.sniff` and `defaults.mark`; the node without them, for the
        hop defaults' reader."""
        if not isinstance(node, MappingNode):
            return node
        rest: list[tuple[Node, Node]] = []
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, ScalarNode) else None
            if key not in ("sniff", "mark"):
                rest.append((key_node, value_node))
                continue
            line = key_node.start_mark.line + 1
            if key in seen:
                self.error(
                    key_node, f"defaults.{key}", f"duplicate key (first at line {seen[key]})"
                )
                continue
            seen[key] = line
            if key == "sniff":
                self.default_sniff = self.read_sniff(value_node, "defaults.sniff", Sniff())
            else:
                self.mark_given = True
                self.mark = self.read_mark(value_node)
        return MappingNode(node.tag, rest, node.start_mark, node.end_mark, node.flow_style)

    def read_mark(self, node: Node) -> int | None:
        """A number from 1 to 0xffffffff (`0x2c8` or `712`), or false: no mark."""
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            if not _CONSTRUCTOR.construct_yaml_bool(node):
                return None
        elif isinstance(node, ScalarNode) and node.tag in (_INT, _STR):
            try:
                value = int(str(node.value).replace("_", ""), 0)
            except ValueError:
                value = 0
            if 1 <= value <= 0xFFFFFFFF:
                return value
        self.error(
            node, "defaults.mark", f"expected a mark like 0x2c8, or false, got {_what(node)}"
        )
        return None

    def read_sniff(self, node: Node, path: str, base: Sniff | None) -> Sniff | None:
        """`false` (off), `true` (base, or the built-in one), or `{timeout, bytes}`, each
        missing key taken from `base`."""
        base = base or Sniff()
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return base if _CONSTRUCTOR.construct_yaml_bool(node) else None
        entries = self.mapping(node, path)
        if entries is None:
            return base
        self.known(entries, _SNIFF_KEYS, path)
        timeout, size = base.timeout, base.bytes
        if "timeout" in entries:
            value = self.duration(entries["timeout"][1], f"{path}.timeout")
            if value is not None and value > MAX_SNIFF_TIMEOUT:
                self.error(entries["timeout"][1], f"{path}.timeout", "at most 60s")
            elif value is not None:
                timeout = value
        if "bytes" in entries:
            size = self.size(entries["bytes"][1], f"{path}.bytes") or size
        return Sniff(timeout, size)

    def size(self, node: Node, path: str) -> int | None:
        """A byte count: `16384`, `16KiB`, `1MiB`, within the sniffing bounds."""
        text = str(node.value).strip() if isinstance(node, ScalarNode) else ""
        m = _SIZE.match(text) if node.tag in (_INT, _STR) else None
        value = int(m.group(1)) * _SIZE_UNITS[m.group(2)] if m else 0
        if not MIN_SNIFF_BYTES <= value <= MAX_SNIFF_BYTES:
            self.error(
                node, path, f"expected a size from 256B to 1MiB like 16KiB, got {_what(node)}"
            )
            return None
        return value

    def read_transparent(
        self, entries: _Entries, listener: Listener, path: str
    ) -> tuple[Transparent | None, Capture | None, Sniff | None] | None:
        """The listener's transparent settings; None when one of them is wrong."""
        mode: Transparent | None = None
        if "transparent" in entries:
            node = entries["transparent"][1]
            text = node.value if isinstance(node, ScalarNode) and node.tag == _STR else None
            if text not in _MODES:
                self.error(
                    node, f"{path}.transparent", f"expected redirect or tproxy, got {_what(node)}"
                )
                return None
            mode = cast(Transparent, text)
        if mode is None:
            misplaced = [key for key in ("capture", "sniff") if key in entries]
            for key in misplaced:
                self.error(entries[key][0], f"{path}.{key}", "only for a transparent listener")
            return None if misplaced else (None, None, None)
        spoken = [key for key in ("tls", "auth", "proxy_protocol") if key in entries]
        for protocol in spoken:
            self.error(
                entries[protocol][0],
                f"{path}.{protocol}",
                "a transparent listener speaks no protocol to its clients: no tls:, auth: "
                "or proxy_protocol:",
            )
        ok = not spoken
        capture = None
        if "capture" in entries:
            capture = self.read_capture(entries["capture"][1], f"{path}.capture")
            ok &= capture is not None
            if capture is not None:
                ok &= self.capture_fits(capture, mode, listener, entries["capture"][1], path)
        sniff = self.default_sniff
        if "sniff" in entries:
            sniff = self.read_sniff(entries["sniff"][1], f"{path}.sniff", self.default_sniff)
        return (mode, capture, sniff) if ok else None

    def read_capture(self, node: Node, path: str) -> Capture | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.known(entries, _CAPTURE_KEYS, path)
        if not entries.keys() & set(_CAPTURE_KEYS):
            self.error(node, path, "captures nothing: give from:, interfaces: or uids:")
            return None
        sources = self.names(entries, "from", path, self.cidr)
        interfaces = self.names(entries, "interfaces", path, self.interface)
        all_uids = False
        uids: tuple[int | str, ...] | None = ()
        if "uids" in entries:
            value = entries["uids"][1]
            if isinstance(value, ScalarNode) and value.tag == _STR and value.value == "all":
                all_uids = True
            else:
                uids = self.names(entries, "uids", path, self.uid)
        if sources is None or interfaces is None or uids is None:
            return None
        return Capture(sources, interfaces, uids, all_uids)

    def names(
        self, entries: _Entries, key: str, path: str, one: Callable[[Node, str], _T | None]
    ) -> tuple[_T, ...] | None:
        """A list (or one item) under `key`, each read by `one`; () when absent."""
        if key not in entries:
            return ()
        node = entries[key][1]
        if _is_null(node) or (isinstance(node, SequenceNode) and not node.value):
            self.error(node, f"{path}.{key}", "empty: leave the key out instead")
            return None
        many = isinstance(node, SequenceNode)
        items = self.items(node)
        out = [
            one(item, f"{path}.{key}[{i}]" if many else f"{path}.{key}")
            for i, item in enumerate(items)
        ]
        kept = [value for value in out if value is not None]
        return tuple(kept) if len(kept) == len(items) else None

    def cidr(self, node: Node, path: str) -> str | None:
        text = self.text(node, path)
        if text is None:
            return None
        try:
            return str(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            self.error(node, path, f"not an IP range: {_q(text)}")
            return None

    def interface(self, node: Node, path: str) -> str | None:
        text = self.text(node, path)
        if text is not None and not _INTERFACE.match(text):
            self.error(node, path, f"not an interface name: {_q(text)}")
            return None
        return text

    def uid(self, node: Node, path: str) -> int | str | None:
        if isinstance(node, ScalarNode) and node.tag == _INT:
            value = int(_CONSTRUCTOR.construct_yaml_int(node))
            if 0 <= value <= MAX_UID:
                return value
        elif isinstance(node, ScalarNode) and node.tag == _STR and _USER.match(node.value):
            return str(node.value)
        self.error(node, path, f"expected a uid or a user name, got {_what(node)}")
        return None

    def capture_fits(
        self, capture: Capture, mode: Transparent, listener: Listener, node: Node, path: str
    ) -> bool:
        host = listener.address.host
        wildcard = host in ("0.0.0.0", "::")
        takes_v6 = listener.address.is_ipv6
        takes_v4 = not takes_v6 or host == "::"
        for cidr in capture.sources:
            v6 = ":" in cidr
            if (v6 and not takes_v6) or (not v6 and not takes_v4):
                family = "IPv6" if v6 else "IPv4"
                self.error(
                    node,
                    f"{path}.capture.from",
                    f"{cidr} is {family} but {listener.address} does not take {family} "
                    "connections (listen on [::] for both)",
                )
                return False
        if mode != "redirect":
            return True
        if capture.lan and listener.loopback:
            self.error(
                node,
                f"{path}.capture",
                "redirect sends a LAN's connections to the address of the interface they "
                f"came in by, which {listener.address} never sees: listen on 0.0.0.0 or [::]",
            )
            return False
        if capture.local and not (listener.loopback or wildcard):
            self.error(
                node,
                f"{path}.capture.uids",
                "redirect sends this machine's own connections to 127.0.0.1 or ::1, which "
                f"{listener.address} never sees: listen on loopback, 0.0.0.0 or [::]",
            )
            return False
        return True
