"""The `listen:` section (and the `admin:` address): listener addresses, TLS files, users
inline or from a users file, allowed client ranges, and the rule that a listener reachable
from other machines must say who may use it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from pathlib import Path

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import BadTarget
from ..models import Address, Admin, Listener, TLSFiles
from ..routing.target import parse_authority
from ._transparent import _Transparent
from ._yaml import _Entries, _is_null, _q, _what

_LISTEN_KEYS = (
    "address",
    "tls",
    "auth",
    "allow",
    "open",
    "proxy_protocol",
    "proxy_protocol_from",
    "transparent",
    "capture",
    "sniff",
)
_ADMIN_KEYS = ("address", "auth", "open")

_DEFAULT_LISTENER = Listener(Address("127.0.0.1", 8080))


class _Listeners(_Transparent):
    def read_listeners(self, node: Node | None) -> tuple[Listener, ...]:
        if node is None or _is_null(node):
            return (_DEFAULT_LISTENER,)
        if isinstance(node, SequenceNode) and not node.value:
            self.error(node, "listen", "empty list: nothing would listen")
            return ()
        listeners: list[Listener] = []
        many = isinstance(node, SequenceNode)
        for i, item in enumerate(self.items(node)):
            path = f"listen[{i}]" if many else "listen"
            listener = self.read_listener(item, path)
            if listener is None:
                continue
            if listener.address.port and any(ln.address == listener.address for ln in listeners):
                self.error(item, path, f"{listener.address} is listed twice")
            listeners.append(listener)
        return tuple(listeners)

    def read_listener(self, node: Node, path: str) -> Listener | None:
        line = node.start_mark.line + 1
        if isinstance(node, ScalarNode):
            address = self.listen_address(node, path)
            if address is None:
                return None
            listener = Listener(address, line=line)
            self.check_exposure(listener, node, path)
            return listener
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.known(entries, _LISTEN_KEYS, path)
        if "address" not in entries:
            self.error(node, path, 'missing "address"')
            return None
        address = self.listen_address(entries["address"][1], f"{path}.address")
        tls: TLSFiles | None = None
        users: tuple[tuple[str, str], ...] | None = ()
        allow: tuple[str, ...] | None = ()
        ok = True
        if "tls" in entries:
            tls = self.read_tls(entries["tls"][1], f"{path}.tls")
            ok &= tls is not None
        if "auth" in entries:
            users = self.read_auth(entries["auth"][1], f"{path}.auth")
            ok &= users is not None
        if "allow" in entries:
            allow = self.read_allow(entries["allow"][1], f"{path}.allow")
            ok &= allow is not None
        is_open = False
        if "open" in entries:
            is_open = bool(self.flag(entries["open"][1], f"{path}.open"))
        proxy_protocol, proxy_from = self.read_proxy_protocol(node, entries, path)
        if address is None or not ok or proxy_from is None:
            return None
        listener = Listener(
            address, tls, users or (), allow or (), line, is_open, proxy_protocol, proxy_from
        )
        transparent = self.read_transparent(entries, listener, path)
        if transparent is None:
            return None
        mode, capture, sniff = transparent
        if mode is not None:
            listener = dataclasses.replace(listener, transparent=mode, capture=capture, sniff=sniff)
        self.check_exposure(listener, node, path)
        return listener

    def read_proxy_protocol(
        self, node: Node, entries: _Entries, path: str
    ) -> tuple[bool, tuple[str, ...] | None]:
        """`proxy_protocol: true` needs `proxy_protocol_from:` (who may name clients);
        either without the other is an error. None: an error was reported."""
        enabled: bool | None = False
        if "proxy_protocol" in entries:
            enabled = self.flag(entries["proxy_protocol"][1], f"{path}.proxy_protocol")
            if enabled is None:  # reported
                return False, None
        if "proxy_protocol_from" not in entries:
            if enabled:
                self.error(
                    node,
                    f"{path}.proxy_protocol",
                    "proxy_protocol: true needs proxy_protocol_from: [CIDR...] naming the "
                    "load balancers allowed to send the header (anyone else could claim "
                    "any client address)",
                )
                return False, None
            return False, ()
        from_node = entries["proxy_protocol_from"][1]
        ranges = self.read_allow(from_node, f"{path}.proxy_protocol_from")
        if ranges is not None and not enabled:
            self.error(
                from_node,
                f"{path}.proxy_protocol_from",
                "has no effect without proxy_protocol: true",
            )
            return False, None
        return bool(enabled), ranges

    def read_admin(self, node: Node) -> Admin | None:
        """`admin: 127.0.0.1:9090`, or `{address, auth: {users|users_file}, open}`."""
        line = node.start_mark.line + 1
        users: tuple[tuple[str, str], ...] | None = ()
        is_open = False
        if isinstance(node, ScalarNode):
            address = self.listen_address(node, "admin")
        elif not isinstance(node, MappingNode):
            self.error(node, "admin", f"expected IP:PORT or a mapping, got {_what(node)}")
            return None
        else:
            entries = self.mapping(node, "admin")
            if entries is None:
                return None
            self.known(entries, _ADMIN_KEYS, "admin")
            if "address" not in entries:
                self.error(node, "admin", 'missing "address"')
                return None
            address = self.listen_address(entries["address"][1], "admin.address")
            if "auth" in entries:
                users = self.read_auth(entries["auth"][1], "admin.auth")
            if "open" in entries:
                is_open = bool(self.flag(entries["open"][1], "admin.open"))
        if address is None or users is None:
            return None
        admin = Admin(address, users, is_open, line)
        if not (admin.loopback or admin.users or admin.open):
            self.error(
                node,
                "admin",
                f"{address} is reachable from other machines and has no auth:, so anyone "
                "could read the route table and hop health; add auth: {users: ...}, or "
                "open: true if you mean it",
            )
        return admin

    def check_exposure(self, listener: Listener, node: Node, path: str) -> None:
        """A listener others can reach must say who may use it, or say open: true. A
        transparent one serves only what the firewall steers to it (_transparent.py)."""
        if listener.loopback or listener.users or listener.allow or listener.open:
            return
        if listener.transparent is not None:
            return
        self.error(
            node,
            path,
            f"{listener.address} is reachable from other machines and has neither auth: nor "
            "allow:, so anyone could use it as a proxy; add one, or open: true if you mean it",
        )

    def listen_address(self, node: Node, path: str) -> Address | None:
        text = self.text(node, path)
        if text is None:
            return None
        text = text.strip()
        try:
            if text.endswith(":0"):  # port 0: the kernel picks one (tests, demos)
                address = parse_authority(text[:-2], default_port=0)
            else:
                address = parse_authority(text)
        except BadTarget as e:
            self.error(node, path, f"expected IP:PORT or [IPv6]:PORT: {e}")
            return None
        if address.host == "localhost":
            return Address("127.0.0.1", address.port)
        if not address.is_ip:
            self.error(node, path, f"listen on an IP address, not a name: {_q(address.host)}")
            return None
        return address

    def read_tls(self, node: Node, path: str) -> TLSFiles | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.known(entries, ("cert", "key"), path)
        files: dict[str, str | None] = {}
        for key in ("cert", "key"):
            if key not in entries:
                self.error(node, path, f"missing {_q(key)}")
                files[key] = None
            else:
                files[key] = self.file_path(entries[key][1], f"{path}.{key}")
        cert, key_file = files["cert"], files["key"]
        return TLSFiles(cert, key_file) if cert and key_file else None

    def read_auth(self, node: Node, path: str) -> tuple[tuple[str, str], ...] | None:
        entries = self.mapping(node, path)
        if entries is None:
            return None
        self.known(entries, ("users", "users_file"), path)
        if "users" not in entries and "users_file" not in entries:
            self.error(node, path, 'missing "users" or "users_file"')
            return None
        out: list[tuple[str, str]] = []
        if "users_file" in entries:
            from_file = self.users_file(entries["users_file"][1], f"{path}.users_file")
            if from_file is None:
                return None
            out.extend(from_file)
            if "users" not in entries:
                return tuple(out)
        users_node = entries["users"][1]
        users = self.mapping(users_node, f"{path}.users")
        if users is None:
            return None
        if not users:
            self.error(users_node, f"{path}.users", "no users: nobody could log in")
            return None
        expected = len(users) + len(out)
        for name, (key_node, value_node) in users.items():
            if not name or ":" in name:
                self.error(key_node, f"{path}.users", f"bad user name {_q(name)}")
                continue
            password = self.text(value_node, f"{path}.users.{name}")
            if password is not None:
                out.append((name, password))
        return tuple(out) if len(out) == expected else None

    def users_file(self, node: Node, path: str) -> list[tuple[str, str]] | None:
        """`name:password` per line; blank lines and `#` comments skipped."""
        file = self.file_path(node, path)
        if file is None:
            return None
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.error(node, path, f"cannot read {_q(file)}: {type(e).__name__}")
            return None
        users: list[tuple[str, str]] = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, password = line.partition(":")
            if not sep or not name:
                # never quote the line: it may hold a password
                self.error(node, path, f"{file}:{number}: expected name:password")
                return None
            users.append((name, password))
        if not users:
            self.error(node, path, f"{file}: no users: nobody could log in")
            return None
        return users

    def read_allow(self, node: Node, path: str) -> tuple[str, ...] | None:
        items = self.items(node)
        many = isinstance(node, SequenceNode)
        if not items:
            self.error(node, path, "empty list: no client would be let in")
            return None
        out: list[str] = []
        for i, item in enumerate(items):
            item_path = f"{path}[{i}]" if many else path
            text = self.text(item, item_path)
            if text is None:
                continue
            try:
                ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                self.error(item, item_path, f"not an IP range: {_q(text)}")
                continue
            out.append(text.strip())
        return tuple(out) if len(out) == len(items) else None
