"""The `defaults:` and `proxies:` sections: timeouts and breaker settings every proxy
inherits, then each proxy as a URL or a mapping, with `_ProxyOptions` checking each optional
key against the URL's scheme. A proxy whose definition fails is remembered as broken.
"""

from __future__ import annotations

from typing import Literal

from yaml.nodes import MappingNode, Node, ScalarNode

from ..errors import BadTarget
from ..models import Address, Proxy, Scheme, Timeouts
from ..routing.target import normalize_host
from ._ssh import SSH_KEYS, ssh_options
from ._urls import _explicit_port, _parse_url, _ParsedURL
from ._yaml import _Entries, _is_null, _q, _Reader, _what

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
    "pipeline",
    *_BREAKER_KEYS,
    *SSH_KEYS,
)


class _Proxies(_Reader):
    defaults: Timeouts
    proxies: dict[str, Proxy]
    broken: set[str]

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
        pipeline_ok, pipeline = options.pipeline()
        ssh_nodes = {key: options.get(key, "ssh") for key in SSH_KEYS}
        ssh = None
        if parsed is not None and parsed[0] == "ssh" and credentials is not None:
            written = url_node.value if isinstance(url_node, ScalarNode) else ""
            explicit = _explicit_port(str(written))
            ssh = ssh_options(self, path, ssh_nodes, parsed[1], explicit, credentials[0])
            if ssh is None:
                return None
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
            or not pipeline_ok
        ):
            return None
        scheme, address, _, _ = parsed
        username, password = credentials
        ssh_settings = None
        if ssh is not None:
            ssh_settings, address, username = ssh
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
            ssh=ssh_settings,
            pipeline=pipeline,
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


class _ProxyOptions:
    """The optional keys of one proxy mapping, each checked against the URL's scheme."""

    def __init__(self, parser: _Proxies, entries: _Entries, path: str, scheme: Scheme | None):
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
        elif username is not None and password is None and self.scheme != "ssh":
            password = ""  # (an ssh hop without a password does not try password auth)
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

    def pipeline(self) -> tuple[bool, bool | None]:
        """`pipeline:` — whether the hop takes the next stage's bytes right behind its
        request, in a pipelined chain (an ssh hop is asked over its session: no bytes).
        (ok, the value or None when not given)."""
        node = self.get("pipeline")
        if node is None:
            return True, None
        if self.scheme == "ssh":
            key_node = self.entries["pipeline"][0]
            message = "not for ssh proxies: they are asked over their session, not in bytes"
            self.parser.error(key_node, f"{self.path}.pipeline", message)
            return False, None
        value = self.parser.flag(node, f"{self.path}.pipeline")
        return value is not None, value

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
