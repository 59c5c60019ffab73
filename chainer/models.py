"""The route table as frozen data: built and validated once in config.py, trusted after that."""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from typing import Literal

Scheme = Literal["http", "https", "socks5", "socks5h", "socks4", "socks4a", "ssh"]
Strategy = Literal["failover", "round_robin", "random", "fastest"]
ViaKind = Literal["chain", "direct", "reject"]
Transparent = Literal["redirect", "tproxy"]  # how a transparent listener learns the destination

SCHEMES: tuple[Scheme, ...] = ("http", "https", "socks5", "socks5h", "socks4", "socks4a", "ssh")
STRATEGIES: tuple[Strategy, ...] = ("failover", "round_robin", "random", "fastest")
DEFAULT_PORTS: dict[str, int] = {
    "http": 8080,
    "https": 443,
    "socks5": 1080,
    "socks5h": 1080,
    "socks4": 1080,
    "socks4a": 1080,
    "ssh": 22,
}


@functools.lru_cache(maxsize=4096)
def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@functools.lru_cache(maxsize=256)
def _is_loopback(host: str) -> bool:
    return ipaddress.ip_address(host).is_loopback


@dataclass(frozen=True, slots=True)
class Address:
    """A destination or hop address. `host` is a lower-case DNS name or an IP literal
    (IPv6 without brackets); validation lives in `chainer.target`."""

    host: str
    port: int

    @property
    def is_ip(self) -> bool:
        return _is_ip(self.host)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def authority(self) -> str:
        """`host:port` as it goes into a CONNECT request line (IPv6 in brackets)."""
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.authority()


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds. connect: reach the hop (TCP for hop 1, the previous hop's tunnel for inner
    hops, TLS included). handshake: the hop's answer to our request. idle: an open tunnel
    with no bytes either way. deadline: one connection's whole chain, failover included."""

    connect: float = 5.0
    handshake: float = 10.0
    idle: float = 600.0
    deadline: float = 30.0
    # circuit breaker, per hop (see health.py): max_fails failures within fail_window
    # open the circuit for fail_timeout, doubling on each reopening up to 32x.
    max_fails: int = 1
    fail_window: float = 10.0
    fail_timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class SshOptions:
    """An ssh hop's authentication, host key and session settings (see outbound/ssh.py).
    Paths are absolute; `known_hosts` None with neither `host_key` nor `insecure_host_key`
    means ~/.ssh/known_hosts. The passphrase is excluded from repr like every secret."""

    identities: tuple[str, ...] = ()  # private key files, tried in order
    passphrase: str | None = field(default=None, repr=False)
    agent: bool = True  # use the ssh-agent at $SSH_AUTH_SOCK when it is set
    known_hosts: str | None = None
    host_key: str | None = None  # a pinned public key, "ssh-ed25519 AAAA..."
    insecure_host_key: bool = False  # accept any host key (logged at every start)
    keepalive: float | None = 30.0  # seconds between keepalives; None: none sent
    session_idle: float = 300.0  # a session with no channel this long is closed
    alias: str | None = None  # the ssh_config Host alias the URL named, when one did


@dataclass(frozen=True, slots=True)
class Proxy:
    """One upstream hop. Credentials are excluded from repr and never formatted into text."""

    name: str
    scheme: Scheme
    address: Address
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    ca: str | None = None
    insecure: bool = False
    sni: str | None = None
    resolve: Literal["remote", "local"] = "remote"
    max_fails: int = 1
    fail_window: float = 10.0
    fail_timeout: float = 10.0
    line: int = 0
    ssh: SshOptions | None = None  # an ssh hop's own settings (None for every other scheme)
    # In a pipelined chain: may bytes for the next stage follow this hop's request in the
    # same write (it reads its request exactly and relays what follows)? None: by scheme
    # (outbound/pipeline.py: yes for HTTP and SOCKS4, no for SOCKS5).
    pipeline: bool | None = None

    @property
    def has_credentials(self) -> bool:
        return self.username is not None

    def describe(self) -> str:
        """The hop as it may appear in logs and errors: scheme and address, never credentials."""
        return f"{self.scheme}://{self.address}"


@dataclass(frozen=True, slots=True)
class HopGroup:
    """One position of a chain: candidates tried per `strategy`."""

    candidates: tuple[Proxy, ...]
    strategy: Strategy = "failover"

    def label(self) -> str:
        names = ", ".join(p.name for p in self.candidates)
        return names if len(self.candidates) == 1 else f"[{names}]"


@dataclass(frozen=True, slots=True)
class Via:
    """Where a route sends traffic: a chain of hop groups, `direct`, or `reject`."""

    kind: ViaKind
    label: str
    hops: tuple[HopGroup, ...] = ()
    # A chain's requests are sent without waiting for each answer where that is safe
    # (`pipeline: true`; see outbound/pipeline.py).
    pipeline: bool = False

    @property
    def resolves_locally(self) -> bool:
        return self.kind == "direct"


DIRECT = Via("direct", "direct")
REJECT = Via("reject", "reject")


@dataclass(frozen=True, slots=True)
class Pattern:
    """One `match` pattern, parsed. kind is one of: any, exact, subdomain (`*.x`),
    domain (`.x`: apex and subdomains), cidr, regex. `ports` is an inclusive range or None.
    A pattern read from a `lists:` file names its list and its line there."""

    text: str
    kind: Literal["any", "exact", "subdomain", "domain", "cidr", "regex"]
    value: str = ""
    ports: tuple[int, int] | None = None
    list_name: str = ""  # the `lists:` entry it came from; "" when written in routes.yaml
    line: int = 0  # its line in that list's file


@dataclass(frozen=True, slots=True)
class PatternList:
    """A `lists:` entry: the patterns of one file, one a line, in file order. `match:
    "list:NAME"` stands for all of them (Route.patterns holds them, expanded in place)."""

    name: str
    file: str  # as shown in messages: relative to where routes.yaml was named from
    patterns: tuple[Pattern, ...]


@dataclass(frozen=True, slots=True)
class Route:
    index: int  # 0-based position in `routes`
    patterns: tuple[Pattern, ...]
    via: Via
    fallback: tuple[Via, ...] = ()
    line: int = 0
    anonymous: bool = False  # no Via / X-Forwarded-For on forwarded plain-HTTP requests

    def label(self) -> str:
        return f"routes[{self.index}]"


@dataclass(frozen=True, slots=True)
class TLSFiles:
    cert: str
    key: str


@dataclass(frozen=True, slots=True)
class Sniff:
    """How much of a transparent client's first flight is read for its destination's name
    (TLS SNI, HTTP Host), and for how long, before it is routed by the address."""

    timeout: float = 0.3
    bytes: int = 16384


@dataclass(frozen=True, slots=True)
class Capture:
    """Whose TCP connections `chainer rules` sends into a transparent listener: a LAN's
    (by source range and incoming interface: prerouting) and this machine's own
    processes (by owner; `all_uids` for every one: output)."""

    sources: tuple[str, ...] = ()  # `from:` CIDRs, normalized
    interfaces: tuple[str, ...] = ()
    uids: tuple[int | str, ...] = ()  # numbers or user names
    all_uids: bool = False

    @property
    def lan(self) -> bool:
        return bool(self.sources or self.interfaces)

    @property
    def local(self) -> bool:
        return bool(self.uids) or self.all_uids


DEFAULT_MARK = 0x2C8  # SO_MARK on chainer's upstream sockets, so the capture rules skip them


@dataclass(frozen=True, slots=True)
class Listener:
    address: Address
    tls: TLSFiles | None = None
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    allow: tuple[str, ...] = ()  # CIDRs, as written
    line: int = 0
    open: bool = False  # a non-loopback listener with neither auth nor allow, on purpose
    # Connections start with a PROXY protocol header (v1 or v2) naming the real client;
    # accepted only from these balancers' ranges (CIDRs, as written).
    proxy_protocol: bool = False
    proxy_protocol_from: tuple[str, ...] = ()
    # Transparent: no proxy protocol, every connection a tunnel to where it was going.
    transparent: Transparent | None = None
    capture: Capture | None = None
    sniff: Sniff | None = None  # transparent only; None: route by the address alone

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.address.host)


@dataclass(frozen=True, slots=True)
class Admin:
    """The operators' endpoint. With `users`, every path but /healthz needs Basic auth."""

    address: Address
    users: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    open: bool = False  # a non-loopback endpoint without auth, on purpose
    line: int = 0

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.address.host)


@dataclass(frozen=True, slots=True)
class Limits:
    max_connections: int = 4096  # above it: 503 (HTTP) or close
    client_timeout: float = 10.0  # a client's whole request must arrive within this: 408
    header_bytes: int = 16384  # request line + header fields: 431 above it
    header_fields: int = 100  # more fields: 431
    # Upstream connections and requests one client request may cost, every hop, failover,
    # rebuild and fallback included (haproxy retries 3 times).
    max_attempts: int = 8
    per_client: int = 256  # concurrent per client address on exposed listeners; 503 above
    # A client that has closed its side keeps its tunnel (and its slot) at most this long
    # while the other direction finishes (haproxy's `timeout client-fin`).
    client_fin: float = 30.0


@dataclass(frozen=True, slots=True)
class Policy:
    """Where clients may not go, whatever the routes say."""

    deny: tuple[Pattern, ...] = ()
    allow_ports: tuple[tuple[int, int], ...] = ()  # empty: every port
    # This machine's own addresses (and loopback) that exposed listeners may still reach.
    allow_local: tuple[Pattern, ...] = ()


@dataclass(frozen=True, slots=True)
class HttpOptions:
    """Plain-HTTP forwarding: what chainer adds to a forwarded request."""

    via: str | None = "chainer"  # `Via: 1.1 <pseudonym>`; None adds nothing
    x_forwarded_for: bool = False


ReplyCode = Literal["NXDOMAIN", "REFUSED"]


@dataclass(frozen=True, slots=True)
class FakeIp:
    """The addresses chainer's DNS answers for chained names (see routing/fakeip.py): a
    name holds one slot, the same offset into each range, while it is among the `size`
    most recently used (or in use by a live tunnel). None: no answers of that family."""

    v4: str | None = "198.18.0.0/15"
    v6: str | None = "fc00:c8::/32"
    ttl: int = 5  # seconds, in every fake answer
    size: int = 65536


@dataclass(frozen=True, slots=True)
class ChainResolve:
    """`dns.chain_resolve`: names matching `patterns` are resolved for real by `server`,
    over TCP through the chain `via` (its last hop connects to the server)."""

    index: int
    patterns: tuple[Pattern, ...]
    server: Address
    via: Via
    line: int = 0


@dataclass(frozen=True, slots=True)
class Dns:
    """chainer's DNS server (server/dns.py); what it answers is routing/dnsanswer.py's."""

    listen: tuple[Address, ...]
    allow: tuple[str, ...] = ()  # client CIDRs, as written; empty: everyone
    open: bool = False  # a non-loopback listener with no allow:, on purpose
    fake_ip: FakeIp | None = FakeIp()  # None: chained names get no fake address
    upstream: tuple[Address, ...] = ()  # empty: the nameservers of /etc/resolv.conf
    chain_resolve: tuple[ChainResolve, ...] = ()
    reject_rcode: ReplyCode = "NXDOMAIN"  # for names a `reject` route or `deny` refuses
    timeout: float = 5.0  # one upstream or chain_resolve exchange
    line: int = 0

    @property
    def loopback(self) -> bool:
        return all(_is_loopback(a.host) for a in self.listen)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated routes.yaml."""

    path: str
    listeners: tuple[Listener, ...]
    defaults: Timeouts
    proxies: tuple[Proxy, ...]
    chains: tuple[tuple[str, Via], ...]
    routes: tuple[Route, ...]
    admin: Admin | None = None
    limits: Limits = Limits()
    policy: Policy = Policy()
    http: HttpOptions = HttpOptions()
    mark: int | None = None  # SO_MARK for upstream sockets (defaults.mark); None: unmarked
    dns: Dns | None = None  # chainer's DNS server, when `dns:` is configured
    lists: tuple[PatternList, ...] = ()

    def pattern_list(self, name: str) -> PatternList | None:
        for pl in self.lists:
            if pl.name == name:
                return pl
        return None

    def proxy(self, name: str) -> Proxy | None:
        for p in self.proxies:
            if p.name == name:
                return p
        return None
