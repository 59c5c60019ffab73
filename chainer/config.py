"""routes.yaml -> frozen models, with every problem reported at once.

How this works: the YAML text is *composed*, not constructed, so every node keeps the line
it came from. Each section is read by a small method that records a ConfigError (file,
line, key path) for each problem and carries on with whatever else it can check. A proxy
or chain whose own definition failed is remembered as "broken", so a reference to it stays
quiet instead of adding a second, misleading "not defined" error. Sections are read in
dependency order (defaults, proxies, chains, routes) whatever their order in the file.

Credentials never reach a message: a URL is quoted with its userinfo replaced by `***`, and
password values are never quoted at all.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal
from urllib.parse import unquote

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .duration import parse_duration
from .errors import BadTarget, ConfigError, ConfigErrors
from .models import (
    DEFAULT_PORTS,
    DIRECT,
    REJECT,
    SCHEMES,
    STRATEGIES,
    Address,
    Config,
    HopGroup,
    HttpOptions,
    Limits,
    Listener,
    Pattern,
    Policy,
    Proxy,
    Route,
    Scheme,
    Strategy,
    Timeouts,
    TLSFiles,
    Via,
)
from .routing import compile_pattern
from .target import normalize_host, parse_authority

__all__ = ["load_config", "parse_config", "parse_duration"]

_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_T + t for t in ("str", "int", "float", "bool", "null"))
_SCALAR_TAGS = frozenset((_STR, _INT, _FLOAT, _BOOL, _T + "timestamp"))
_CONSTRUCTOR = yaml.constructor.SafeConstructor()

_TOP_KEYS = (
    "listen",
    "admin",
    "defaults",
    "limits",
    "deny",
    "allow_ports",
    "http",
    "proxies",
    "chains",
    "routes",
)
_DEFAULT_KEYS = {
    "connect_timeout": "connect",
    "handshake_timeout": "handshake",
    "idle_timeout": "idle",
    "deadline": "deadline",
    "fail_window": "fail_window",
    "fail_timeout": "fail_timeout",
}
_BREAKER_KEYS = ("max_fails", "fail_window", "fail_timeout")
_PROXY_KEYS = (
    "url",
    "username",
    "password",
    "connect_timeout",
    "handshake_timeout",
    "ca",
    "insecure",
    "sni",
    "resolve",
    *_BREAKER_KEYS,
)
_LISTEN_KEYS = ("address", "tls", "auth", "allow", "open")
_ROUTE_KEYS = ("match", "via", "fallback", "anonymous")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_SCHEME_OF: dict[str, Scheme] = {s: s for s in SCHEMES}
_STRATEGY_OF: dict[str, Strategy] = {s: s for s in STRATEGIES}
_DEFAULT_LISTENER = Listener(Address("127.0.0.1", 8080))

_Entries = dict[str, tuple[Node, Node]]
_ParsedURL = tuple[Scheme, Address, str | None, str | None]


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a routes.yaml. Raises ConfigErrors holding every problem found."""
    file = os.fspath(path)
    try:
        with open(file, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ConfigErrors([ConfigError(file, 0, "", f"cannot read: {reason}")]) from None
    except UnicodeDecodeError:
        raise ConfigErrors([ConfigError(file, 0, "", "cannot read: not UTF-8 text")]) from None
    return parse_config(text, file)


def parse_config(text: str, file: str, base_dir: str | None = None) -> Config:
    """Validate YAML text. Relative paths (`ca:`, `cert:`, `key:`) are taken from base_dir,
    by default the directory of `file`. Raises ConfigErrors holding every problem found."""
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(file))
    parser = _Parser(file, base_dir)
    config = parser.parse(text)
    if parser.errors or config is None:
        raise ConfigErrors(parser.sorted_errors())
    return config


class _Parser:
    def __init__(self, file: str, base_dir: str) -> None:
        self.file = file
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self.columns: list[int] = []
        self.defaults = Timeouts()
        self.proxies: dict[str, Proxy] = {}
        self.chains: dict[str, Via] = {}
        self.chain_names: set[str] = set()
        # Defined, but with errors of their own: a reference to one adds no error.
        self.broken: set[str] = set()

    def error(self, node: Node | None, path: str, message: str) -> None:
        mark = node.start_mark if node is not None else None
        self.add(mark.line + 1 if mark else 0, mark.column if mark else 0, path, message)

    def add(self, line: int, column: int, path: str, message: str) -> None:
        self.errors.append(ConfigError(self.file, line, path, message))
        self.columns.append(column)

    def sorted_errors(self) -> list[ConfigError]:
        """In file order (sections are read in dependency order, not file order)."""
        order = sorted(
            range(len(self.errors)), key=lambda i: (self.errors[i].line, self.columns[i])
        )
        return [self.errors[i] for i in order]

    # -- the file -----------------------------------------------------------------------

    def parse(self, text: str) -> Config | None:
        root = self.compose(text)
        if root is None:
            return None
        if _is_null(root):
            self.error(None, "", "empty config")
            return None
        top = self.mapping(root, "")
        if top is None:
            return None
        self.known(top, _TOP_KEYS, "")
        section = {key: top[key][1] for key in _TOP_KEYS if key in top}
        if "defaults" in section:
            self.defaults = self.read_defaults(section["defaults"])
        if "proxies" in section:
            self.read_proxies(section["proxies"])
        if "chains" in section:
            self.read_chains(section["chains"])
        routes = self.read_routes(section.get("routes"))
        listeners = self.read_listeners(section.get("listen"))
        limits = self.read_limits(section["limits"]) if "limits" in section else Limits()
        policy = Policy(
            deny=self.patterns(section["deny"], "deny") or () if "deny" in section else (),
            allow_ports=self.read_ports(section["allow_ports"], "allow_ports")
            if "allow_ports" in section
            else (),
        )
        http = self.read_http(section["http"]) if "http" in section else HttpOptions()
        admin = None
        if "admin" in section and not _is_null(section["admin"]):
            admin = self.listen_address(section["admin"], "admin")
            if admin is not None and admin.port and any(ln.address == admin for ln in listeners):
                self.error(section["admin"], "admin", f"{admin} is also a listener")
        if self.errors:
            return None
        return Config(
            path=self.file,
            listeners=listeners,
            defaults=self.defaults,
            proxies=tuple(self.proxies.values()),
            chains=tuple(self.chains.items()),
            routes=routes,
            admin=admin,
            limits=limits,
            policy=policy,
            http=http,
        )

    def compose(self, text: str) -> Node | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            line = e.problem_mark.line + 1 if e.problem_mark else 0
            self.add(line, 0, "", _yaml_problem(e))
            return None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, int(e.position)) + 1
            self.add(line, 0, "", "a character YAML does not allow")
            return None
        except RecursionError:
            self.add(0, 0, "", "YAML nested too deeply")
            return None
        if root is None:
            self.error(None, "", "empty config")
        return root

    # -- node helpers -------------------------------------------------------------------

    def mapping(self, node: Node, path: str) -> _Entries | None:
        if not isinstance(node, MappingNode):
            self.error(node, path, f"expected a mapping, got {_what(node)}")
            return None
        entries: _Entries = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or _is_null(key_node):
                self.error(key_node, path, "a key must be a plain name")
                continue
            key = str(key_node.value)
            if key in entries:
                first = entries[key][0].start_mark.line + 1
                self.error(key_node, _join(path, key), f"duplicate key (first at line {first})")
                continue
            entries[key] = (key_node, value_node)
        return entries

    def known(self, entries: _Entries, allowed: Iterable[str], path: str) -> None:
        allowed = list(allowed)
        for key, (key_node, _) in entries.items():
            if key not in allowed:
                self.error(key_node, path, f"unknown key {_q(key)}{_did_you_mean(key, allowed)}")

    def text(self, node: Node, path: str) -> str | None:
        """A scalar's text as written (so `0123` stays `0123`); never echoed in errors."""
        if isinstance(node, ScalarNode) and node.tag in _SCALAR_TAGS:
            return str(node.value)
        self.error(node, path, f"expected a string, got {_what(node)}")
        return None

    def items(self, node: Node) -> list[Node]:
        """A list, or one item written without the list."""
        return list(node.value) if isinstance(node, SequenceNode) else [node]

    def duration(self, node: Node, path: str) -> float | None:
        value: object = None
        if isinstance(node, ScalarNode):
            if node.tag == _INT:
                value = _CONSTRUCTOR.construct_yaml_int(node)
            elif node.tag == _FLOAT:
                value = _CONSTRUCTOR.construct_yaml_float(node)
            elif node.tag == _STR:
                value = node.value
        if value is None:
            self.error(node, path, f"expected a duration like 5s, got {_what(node)}")
            return None
        try:
            return parse_duration(value)
        except ValueError as e:
            self.error(node, path, str(e))
            return None

    def count(self, node: Node, path: str, maximum: int = 1000) -> int | None:
        """A whole number from 1 to `maximum`."""
        if isinstance(node, ScalarNode) and node.tag == _INT:
            value = int(_CONSTRUCTOR.construct_yaml_int(node))
            if 1 <= value <= maximum:
                return value
        self.error(node, path, f"expected a whole number from 1 to {maximum}, got {_what(node)}")
        return None

    def flag(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return _CONSTRUCTOR.construct_yaml_bool(node)
        self.error(node, path, f"expected true or false, got {_what(node)}")
        return None

    def file_path(self, node: Node, path: str) -> str | None:
        text = self.text(node, path)
        if text is None:
            return None
        full = os.path.abspath(os.path.join(self.base_dir, os.path.expanduser(text)))
        if not os.path.isfile(full):
            self.error(node, path, f"no such file: {_q(text)} (looked for {full})")
            return None
        return full

    def name_ok(self, name: str, node: Node, path: str, what: str) -> bool:
        if not _NAME.match(name):
            self.error(node, path, f"bad {what} name {_q(name)}: use letters, digits, _ . -")
            return False
        if name.lower() in ("direct", "reject"):
            self.error(node, path, f"{_q(name)} is reserved")
            return False
        return True

    # -- sections -----------------------------------------------------------------------

    def read_defaults(self, node: Node) -> Timeouts:
        base = Timeouts()
        if _is_null(node):
            return base
        entries = self.mapping(node, "defaults")
        if entries is None:
            return base
        self.known(entries, [*_DEFAULT_KEYS, "max_fails"], "defaults")
        values: dict[str, float] = {}
        for key, field in _DEFAULT_KEYS.items():
            if key in entries:
                seconds = self.duration(entries[key][1], f"defaults.{key}")
                if seconds is not None:
                    values[field] = seconds
        max_fails = base.max_fails
        if "max_fails" in entries:
            max_fails = self.count(entries["max_fails"][1], "defaults.max_fails") or max_fails
        return Timeouts(**values, max_fails=max_fails)

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
        if address is None or not ok:
            return None
        listener = Listener(address, tls, users or (), allow or (), line, is_open)
        self.check_exposure(listener, node, path)
        return listener

    def check_exposure(self, listener: Listener, node: Node, path: str) -> None:
        """A listener others can reach must say who may use it, or say open: true."""
        if listener.loopback or listener.users or listener.allow or listener.open:
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

    def read_limits(self, node: Node) -> Limits:
        entries = self.mapping(node, "limits") or {}
        self.known(
            entries,
            ("max_connections", "client_timeout", "header_bytes", "header_fields"),
            "limits",
        )
        values: dict[str, float] = {}
        for key in ("max_connections", "header_fields"):
            if key in entries:
                number = self.count(entries[key][1], f"limits.{key}", maximum=1_000_000)
                if number is not None:
                    values[key] = number
        if "header_bytes" in entries:
            number = self.count(entries["header_bytes"][1], "limits.header_bytes", maximum=1 << 20)
            if number is not None:
                values["header_bytes"] = max(number, 1024)
        if "client_timeout" in entries:
            seconds = self.duration(entries["client_timeout"][1], "limits.client_timeout")
            if seconds is not None:
                values["client_timeout"] = seconds
        return Limits(**values)  # type: ignore[arg-type]

    def read_ports(self, node: Node, path: str) -> tuple[tuple[int, int], ...]:
        ranges: list[tuple[int, int]] = []
        for i, item in enumerate(self.items(node)):
            where = f"{path}[{i}]" if isinstance(node, SequenceNode) else path
            text = item.value if isinstance(item, ScalarNode) else ""
            low, _, high = str(text).partition("-")
            try:
                lo, hi = int(low), int(high or low)
            except ValueError:
                lo = hi = 0
            if not (1 <= lo <= hi <= 65535):
                self.error(
                    item, where, f"expected a port or a range like 8000-8999, got {_what(item)}"
                )
                continue
            ranges.append((lo, hi))
        return tuple(ranges)

    def read_http(self, node: Node) -> HttpOptions:
        entries = self.mapping(node, "http") or {}
        self.known(entries, ("via", "x_forwarded_for"), "http")
        via: str | None = "chainer"
        if "via" in entries:
            value = entries["via"][1]
            if isinstance(value, ScalarNode) and value.tag == _BOOL:
                via = "chainer" if self.flag(value, "http.via") else None
            else:
                via = self.text(value, "http.via")
                if via is not None and not _NAME.match(via):
                    self.error(value, "http.via", "a pseudonym is a token like chainer or gw-1")
                    via = None
        xff = False
        if "x_forwarded_for" in entries:
            xff = bool(self.flag(entries["x_forwarded_for"][1], "http.x_forwarded_for"))
        return HttpOptions(via, xff)

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

    def read_proxies(self, node: Node) -> None:
        if _is_null(node):
            return
        entries = self.mapping(node, "proxies")
        for name, (key_node, value_node) in (entries or {}).items():
            path = f"proxies.{name}"
            name_ok = self.name_ok(name, key_node, path, "proxy")
            proxy = self.read_proxy(name, key_node, value_node, path)
            if proxy is not None and name_ok:
                self.proxies[name] = proxy
            else:
                self.broken.add(name)

    def read_proxy(self, name: str, key_node: Node, node: Node, path: str) -> Proxy | None:
        entries: _Entries = {}
        url_node: Node | None = None
        url_path = path
        if isinstance(node, ScalarNode) and not _is_null(node):
            url_node = node
        elif isinstance(node, MappingNode):
            entries = self.mapping(node, path) or {}
            self.known(entries, _PROXY_KEYS, path)
            if "url" in entries:
                url_node, url_path = entries["url"][1], f"{path}.url"
            else:
                self.error(node, path, 'missing "url"')
        else:
            self.error(node, path, f"expected a URL or a mapping with url:, got {_what(node)}")
            return None
        parsed = None if url_node is None else self.proxy_url(url_node, url_path)
        # Without a good URL the other keys are still checked, minus the scheme-specific rules.
        scheme = parsed[0] if parsed else None
        options = _ProxyOptions(self, entries, path, scheme)
        credentials = options.credentials(parsed, url_node)
        connect = options.duration("connect_timeout", self.defaults.connect)
        handshake = options.duration("handshake_timeout", self.defaults.handshake)
        fail_window = options.duration("fail_window", self.defaults.fail_window)
        fail_timeout = options.duration("fail_timeout", self.defaults.fail_timeout)
        max_fails = options.count("max_fails", self.defaults.max_fails)
        tls = options.tls()
        resolve = options.resolve()
        if (
            parsed is None
            or not options.ok
            or credentials is None
            or connect is None
            or handshake is None
            or fail_window is None
            or fail_timeout is None
            or max_fails is None
            or tls is None
            or resolve is None
        ):
            return None
        scheme, address, _, _ = parsed
        username, password = credentials
        ca, insecure, sni = tls
        return Proxy(
            name=name,
            scheme=scheme,
            address=address,
            username=username,
            password=password,
            connect_timeout=connect,
            handshake_timeout=handshake,
            ca=ca,
            insecure=insecure,
            sni=sni,
            resolve=resolve,
            max_fails=max_fails,
            fail_window=fail_window,
            fail_timeout=fail_timeout,
            line=key_node.start_mark.line + 1,
        )

    def proxy_url(self, node: Node, path: str) -> _ParsedURL | None:
        url = self.text(node, path)
        if url is None:
            return None
        try:
            return _parse_url(url.strip())
        except ValueError as e:
            self.error(node, path, str(e))
            return None

    def sni(self, node: Node, path: str) -> str | None:
        text = self.text(node, path)
        if text is None:
            return None
        try:
            host = normalize_host(text.strip())
        except BadTarget as e:
            self.error(node, path, str(e))
            return None
        if Address(host, 443).is_ip:
            self.error(node, path, f"expected a DNS name, not an IP address: {_q(text)}")
            return None
        return host

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
            hops = self.hops(value_node, path)
            if hops is not None and ok:
                self.chains[name] = Via("chain", name, hops)
            else:
                self.broken.add(name)

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


class _ProxyOptions:
    """The optional keys of one proxy mapping, each checked against the URL's scheme."""

    def __init__(self, parser: _Parser, entries: _Entries, path: str, scheme: Scheme | None):
        self.parser = parser
        self.entries = entries
        self.path = path
        self.scheme = scheme
        self.ok = True  # False once a key is found that the scheme does not take

    def get(self, key: str, *only: Scheme) -> Node | None:
        """The value node of `key`; an error when the scheme is known and not in `only`."""
        if key not in self.entries:
            return None
        key_node, value_node = self.entries[key]
        if only and self.scheme is not None and self.scheme not in only:
            message = f"only for {' or '.join(only)} proxies, not {self.scheme}"
            self.parser.error(key_node, f"{self.path}.{key}", message)
            self.ok = False
            return None
        return value_node

    def credentials(
        self, parsed: _ParsedURL | None, url_node: Node | None
    ) -> tuple[str | None, str | None] | None:
        p, path = self.parser, self.path
        username, password = (parsed[2], parsed[3]) if parsed else (None, None)
        user_node, pass_node = self.get("username"), self.get("password")
        if user_node is None and pass_node is None:
            pass
        elif username is not None:
            where = "username" if user_node is not None else "password"
            p.error(user_node or pass_node, f"{path}.{where}", "credentials both here and in url")
            return None
        elif user_node is None:
            p.error(pass_node, f"{path}.password", 'a password needs a "username"')
            return None
        else:
            username = p.text(user_node, f"{path}.username")
            password = None if pass_node is None else p.text(pass_node, f"{path}.password")
            if username is None or (pass_node is not None and password is None):
                return None
        if self.scheme in ("socks4", "socks4a"):
            if password is not None:
                node = pass_node or url_node
                p.error(node, f"{path}.password", "socks4 sends a user id but no password")
                return None
        elif username is not None and password is None:
            password = ""
        return username, password

    def duration(self, key: str, default: float) -> float | None:
        node = self.get(key)
        return default if node is None else self.parser.duration(node, f"{self.path}.{key}")

    def count(self, key: str, default: int) -> int | None:
        node = self.get(key)
        return default if node is None else self.parser.count(node, f"{self.path}.{key}")

    def tls(self) -> tuple[str | None, bool, str | None] | None:
        p, path = self.parser, self.path
        ok = True
        ca = sni = None
        insecure: bool | None = False
        if (ca_node := self.get("ca", "https")) is not None:
            ca = p.file_path(ca_node, f"{path}.ca")
            ok &= ca is not None
        if (insecure_node := self.get("insecure", "https")) is not None:
            insecure = p.flag(insecure_node, f"{path}.insecure")
            if insecure and ca_node is not None:
                p.error(insecure_node, f"{path}.insecure", "contradicts ca: (nothing verified)")
                ok = False
        if (sni_node := self.get("sni", "https")) is not None:
            sni = p.sni(sni_node, f"{path}.sni")
            ok &= sni is not None
        if not ok or insecure is None:
            return None
        return ca, insecure, sni

    def resolve(self) -> Literal["remote", "local"] | None:
        node = self.get("resolve", "socks4")
        if node is None:
            return "remote"
        text = self.parser.text(node, f"{self.path}.resolve")
        if text == "remote":
            return "remote"
        if text == "local":
            return "local"
        if text is not None:
            self.parser.error(node, f"{self.path}.resolve", 'expected "remote" or "local"')
        return None


def _parse_url(url: str) -> _ParsedURL:
    """`scheme://[user[:password]@]host[:port]` -> parts; ValueError messages hide userinfo."""
    shown = _q(_redact(url))
    scheme_text, sep, rest = url.partition("://")
    if not sep or not _URL_SCHEME.match(scheme_text):
        raise ValueError(f"not a proxy URL: {shown} (expected scheme://host:port)")
    scheme = _SCHEME_OF.get(scheme_text.lower())
    if scheme is None:
        choices = ", ".join(SCHEMES)
        raise ValueError(f"unknown scheme {_q(scheme_text)} in {shown} (expected {choices})")
    # The last "@" ends the userinfo, so an unencoded "@" or "/" in a password still parses.
    userinfo, at, host_part = rest.rpartition("@")
    cut = _path_start(host_part)
    authority, tail = host_part[:cut], host_part[cut:]
    if tail not in ("", "/"):
        raise ValueError(f"a proxy URL has no path, query or fragment: {shown}")
    if not authority:
        raise ValueError(f"no host in {shown}")
    try:
        address = parse_authority(authority, DEFAULT_PORTS[scheme])
    except BadTarget as e:
        if "port" in str(e):  # the text is not shown: it may be a password, see _redact
            raise ValueError(f"bad port in {shown} (1-65535)") from None
        raise ValueError(f"bad address in {shown}: {e}") from None
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text)
        password = unquote(password_text) if colon else None
        if not username:
            raise ValueError(f"empty user name in {shown}")
    return scheme, address, username, password


def _redact(url: str) -> str:
    """The URL with everything before the host's "@" shown as `***`, and a port that is not
    a number too: `http://alice:secret` (the host forgotten) holds a password, not a port."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    cut = _path_start(rest)
    host, colon, port = rest[:cut].rpartition(":")
    if colon and "]" not in port and not port.isdigit():
        rest = f"{host}:***"
    return f"{scheme}{sep}{rest}"


def _path_start(text: str) -> int:
    return min((i for i in (text.find(c) for c in "/?#") if i >= 0), default=len(text))


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


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    problem = e.problem or "invalid YAML"
    context = e.context or ""
    # Alias and anchor errors quote the token, which may be a value such as a password.
    if "alias" in problem or "alias" in context:
        return 'bad alias: quote a value that starts with *, as in "*.example.com"'
    if "anchor" in problem or "anchor" in context:
        return "bad anchor: quote a value that starts with &"
    if context.startswith("expected"):
        return f"{context} {problem}"
    return problem


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _what(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing"
    if node.tag in (_INT, _FLOAT):
        return "a number"
    if node.tag == _BOOL:
        return "true/false"
    return "a string" if node.tag in _SCALAR_TAGS else f"a {node.tag.replace(_T, '!!')} value"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _q(text: str) -> str:
    """Quoted for a message: double quotes, control characters escaped, bounded."""
    return json.dumps(text if len(text) <= 80 else text[:77] + "...", ensure_ascii=False)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {_q(close[0])}?)" if close else ""
