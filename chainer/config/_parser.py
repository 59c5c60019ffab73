"""`_Parser`, the whole file: the top-level keys, read in dependency order (defaults,
proxies, chains, lists, routes, then listeners, limits, policy, http, admin, dns) whatever
their order in the file, combined into one Config when no section recorded an error.
"""

from __future__ import annotations

from ..models import (
    DEFAULT_MARK,
    Config,
    Dns,
    HttpOptions,
    Limits,
    PatternList,
    Policy,
    Proxy,
    Sniff,
    Timeouts,
    Via,
)
from ._dns import _Dns
from ._listeners import _Listeners
from ._policy import _Policy
from ._proxies import _Proxies
from ._routes import _Routes
from ._yaml import _is_null

_TOP_KEYS = (
    "listen",
    "admin",
    "defaults",
    "limits",
    "deny",
    "allow_ports",
    "allow_local",
    "http",
    "proxies",
    "chains",
    "lists",
    "routes",
    "dns",
)


class _Parser(_Dns, _Listeners, _Proxies, _Routes, _Policy):
    def __init__(self, file: str, base_dir: str) -> None:
        super().__init__(file, base_dir)
        self.defaults = Timeouts()
        self.proxies: dict[str, Proxy] = {}
        self.chains: dict[str, Via] = {}
        self.chain_names: set[str] = set()
        # Defined, but with errors of their own: a reference to one adds no error.
        self.broken: set[str] = set()
        self.default_sniff: Sniff | None = Sniff()  # defaults.sniff (_transparent.py)
        self.mark: int | None = None  # defaults.mark, when given
        self.mark_given = False
        self.lists: dict[str, PatternList] = {}
        self.broken_lists: set[str] = set()

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
            self.defaults = self.read_defaults(self.split_defaults(section["defaults"]))
        if "proxies" in section:
            self.read_proxies(section["proxies"])
        if "chains" in section:
            self.read_chains(section["chains"])
        self.read_lists(section.get("lists"))
        routes = self.read_routes(section.get("routes"))
        listeners = self.read_listeners(section.get("listen"))
        limits = self.read_limits(section["limits"]) if "limits" in section else Limits()
        policy = Policy(
            deny=self.patterns(section["deny"], "deny") or () if "deny" in section else (),
            allow_ports=self.read_ports(section["allow_ports"], "allow_ports")
            if "allow_ports" in section
            else (),
            allow_local=self.local_patterns(section["allow_local"])
            if "allow_local" in section
            else (),
        )
        http = self.read_http(section["http"]) if "http" in section else HttpOptions()
        admin = None
        if "admin" in section and not _is_null(section["admin"]):
            admin = self.read_admin(section["admin"])
            at = None if admin is None else admin.address
            if at is not None and at.port and any(ln.address == at for ln in listeners):
                self.error(section["admin"], "admin", f"{at} is also a listener")
        dns: Dns | None = None
        if "dns" in section and not _is_null(section["dns"]):
            dns = self.read_dns(section["dns"])
            taken = [ln.address for ln in listeners] + ([admin.address] if admin else [])
            for address in dns.listen if dns else ():
                if address.port and address in taken:
                    self.error(section["dns"], "dns.listen", f"{address} is also a listener")
        if self.errors:
            return None
        if not self.mark_given and any(ln.transparent for ln in listeners):
            self.mark = DEFAULT_MARK  # only then: SO_MARK needs privileges
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
            mark=self.mark,
            dns=dns,
            lists=tuple(self.lists.values()),
        )
