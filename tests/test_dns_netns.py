"""DNS that follows the routes, for real: plain apps in captured namespaces reach a name
that only the far end of a chain can resolve, and no query for it leaves chainer's
namespace.

::

    lan ──── gateway (chainer) ──── hopa (tinyproxy) ──── hopb (microsocks) ──── origin
    .14  .13                 .1   .2                  .5 .6                  .9  .10

The gateway runs chainer: two transparent listeners (its own processes, and the LAN
behind it) with the rules `chainer rules | nft -f -` prints, and its DNS server on
127.0.0.1:53 (the gateway's resolv.conf) and on 198.18.0.13:53 (the LAN's resolv.conf).
`origin.internal` is in hop B's hosts file and nowhere else; the resolvers the others
have are chainer's. chainer's own upstream is a spy resolver written here, on
127.0.0.2:53 in the gateway — the only DNS server its namespace can reach — and it must
never hear of origin.internal. The listeners do not sniff (`sniff: false`): a fetch that
works was routed by the name its fake address stands for, not by a Host header.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dnspeers import Dug, Spy, dig_argv, read_dig, spy_resolver
from netns import (
    MICROSOCKS,
    TINYPROXY,
    SegmentedNetwork,
    add_route,
    free_port_in,
    leaf_namespace,
    netns_curl,
    netns_popen,
    netns_run,
    netns_socket,
    segmented_network,
    set_resolv_conf,
    start_banner_in,
    start_origin_in,
)
from realproxies import require_binary

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

ORIGIN = "origin.internal"  # only hop B can resolve it
RESOLVED = "db.internal"  # only the resolver beside the origin knows it (chain_resolve)
FAKE_RANGE = "198.19.0.0/16"  # outside every link of the test network (198.18.0.0/22)
GW_LAN, LAN = "198.18.0.13", "198.18.0.14"
SPY = "127.0.0.2"
BANNER_PORT = 2222
DIRECT_PORT = 8080
LINE_WAIT = 10.0


@dataclass(frozen=True)
class Lab:
    net: SegmentedNetwork
    lan: str
    workdir: Path
    spy: Spy  # chainer's upstream: what left chainer's namespace as a DNS query
    resolver: Spy  # beside the origin: chain_resolve's server
    log: Path

    @property
    def gateway(self) -> str:
        return self.net.client

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def access_line(self, needle: str, since: int) -> str:
        deadline = time.monotonic() + LINE_WAIT
        while True:
            lines = [ln for ln in self.text()[since:].splitlines() if "chainer.access" in ln]
            found = [ln for ln in lines if needle in ln]
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no access line with {needle!r}:\n{self.text()[since:]}")
            time.sleep(0.05)

    def dig(self, ns: str, server: str, *args: str) -> Dug:
        done = netns_run(ns, dig_argv(server, 53, *args), timeout=20)
        return read_dig(done.stdout.decode("utf-8", "replace"))


def routes_yaml(net: SegmentedNetwork, local_port: int, lan_port: int, ports: list[int]) -> str:
    tinyproxy, microsocks = ports
    return f"""\
listen:
  - {{address: 127.0.0.1:{local_port}, transparent: redirect, capture: {{uids: all}}, sniff: false}}
  - address: 0.0.0.0:{lan_port}
    transparent: redirect
    capture: {{from: [{LAN}/30], interfaces: [to-lan]}}
    sniff: false
dns:
  listen: [127.0.0.1:53, {GW_LAN}:53]
  allow: [127.0.0.0/8, {LAN}/30]
  upstream: [{SPY}:53]
  fake_ip: {{v4: {FAKE_RANGE}, v6: "fd00:c8::/64"}}
  chain_resolve: {{match: {RESOLVED}, server: "{net.origin_addr}:53", via: lab}}
defaults: {{connect_timeout: 2s, handshake_timeout: 3s, deadline: 8s}}
proxies:
  tinyproxy: http://{net.hopa_addr}:{tinyproxy}
  microsocks: socks5h://{net.hopb_addr}:{microsocks}
chains:
  lab: [tinyproxy, microsocks]
routes:
  - {{match: .internal, via: lab}}
  - {{match: direct.test, via: direct}}
  - {{match: "{net.hopa_addr}:{DIRECT_PORT}", via: direct}}
  - {{match: "{net.origin_addr}", via: lab}}
  - {{match: blocked.test, via: reject}}
  - {{match: "*", via: reject}}
"""


def shell_in(ns: str, command: str) -> None:
    done = netns_run(ns, ["sh", "-c", command], timeout=20)
    assert done.returncode == 0, (command, done.stderr.decode(errors="replace"))


def _in(ns: str) -> Callable[[int], socket.socket]:
    return lambda kind: netns_socket(ns, socket.AF_INET, kind)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    require_binary("nft")
    workdir = tmp_path_factory.mktemp("dns")
    with segmented_network(ORIGIN) as net:
        gw = net.client
        start_origin_in(net.origin, net.origin_addr, workdir / "origin", 80, "origin:")
        start_banner_in(net.origin, net.origin_addr, workdir / "banner", BANNER_PORT, "SSH-2.0-x")
        start_origin_in(net.hopa, net.hopa_addr, workdir / "direct", DIRECT_PORT, "direct:")
        ports = [
            TINYPROXY.start(net.hopa, net.hopa_addr, workdir / "hopa"),
            MICROSOCKS.start(net.hopb, net.hopb_addr, workdir / "hopb"),
        ]
        # The gateway's own connections to fake addresses and to the origin need a route
        # to leave by (the rules then redirect them); the LAN's go to the gateway.
        for prefix in (FAKE_RANGE, "198.18.0.8/30"):
            add_route(gw, prefix, net.hopa_addr)
        spy_records = {"direct.test": net.hopa_addr}
        with (
            spy_resolver(spy_records, SPY, 53, _in(gw)) as spy,
            spy_resolver(
                {RESOLVED: net.origin_addr}, net.origin_addr, 53, _in(net.origin)
            ) as resolver,
            leaf_namespace(gw, GW_LAN, LAN, role="lan") as lan,
        ):
            for prefix in (FAKE_RANGE, "198.18.0.8/30", "198.18.0.0/30"):
                add_route(lan, prefix, GW_LAN)
            set_resolv_conf(lan, f"nameserver {GW_LAN}\noptions timeout:2 attempts:1\n")
            # the gateway's resolv.conf already says 127.0.0.1: chainer's DNS from now on
            local_port, lan_port = free_port_in(gw, "127.0.0.1"), free_port_in(gw, "0.0.0.0")
            config = workdir / "routes.yaml"
            config.write_text(routes_yaml(net, local_port, lan_port, ports))
            log = workdir / "chainer.log"
            chainer = [sys.executable, "-m", "chainer"]
            proc = netns_popen(
                gw,
                [*chainer, "serve", "-c", str(config), "--log-level", "debug"],
                log,
                ready=("127.0.0.1", local_port),
            )
            rules = " ".join([*chainer, "rules", "-c", str(config)])
            with proc:
                shell_in(gw, f"{rules} | nft -f -")
                try:
                    yield Lab(net, lan, workdir, spy, resolver, log)
                finally:
                    shell_in(gw, f"{rules} --delete | nft -f -")


# --------------------------------------------------------------------------- what DNS says


def test_the_lan_asks_chainer_and_gets_an_answer_of_each_kind(lab: Lab) -> None:
    origin = lab.dig(lab.lan, GW_LAN, ORIGIN, "A")
    assert origin.status == "NOERROR", origin.text
    (fake,) = origin.data()
    assert fake.startswith("198.19."), fake
    direct = lab.dig(lab.lan, GW_LAN, "direct.test", "A")
    assert direct.data() == [lab.net.hopa_addr]  # the spy's answer, passed on
    blocked = lab.dig(lab.lan, GW_LAN, "blocked.test", "A")
    assert blocked.status == "NXDOMAIN"
    resolved = lab.dig(lab.lan, GW_LAN, "+tcp", RESOLVED, "A")
    assert resolved.data() == [lab.net.origin_addr]  # asked beside the origin, through the chain
    assert (RESOLVED, "A", "tcp") in lab.resolver.asked


def test_plain_apps_resolve_the_name_through_chainer(lab: Lab) -> None:
    for ns in (lab.lan, lab.gateway):
        done = netns_run(ns, ["getent", "ahostsv4", ORIGIN], timeout=10)
        assert done.returncode == 0, (ns, done.stderr)
        assert done.stdout.split()[0].startswith(b"198.19."), (ns, done.stdout)


# --------------------------------------------------------------------------- plain curl


def test_curl_in_the_lan_reaches_origin_internal(lab: Lab) -> None:
    since = len(lab.text())
    result = netns_curl(lab.lan, f"http://{ORIGIN}/from-the-lan")
    assert (result.returncode, result.body) == (0, b"origin:/from-the-lan"), (
        result.stderr,
        lab.text()[since:],
    )
    line = lab.access_line(f"dest={ORIGIN}:80", since)
    assert " fake_ip=198.19." in line, line
    assert "inbound=redirect sniffed=fake_ip" in line, line
    assert f"client={LAN}:" in line, line
    assert "hops=tinyproxy:" in line, line
    assert ",microsocks:" in line, line
    assert "outcome=ok" in line, line


def test_curl_on_the_gateway_itself_reaches_origin_internal(lab: Lab) -> None:
    since = len(lab.text())
    result = netns_curl(lab.gateway, f"http://{ORIGIN}/from-the-gateway")
    assert (result.returncode, result.body) == (0, b"origin:/from-the-gateway"), (
        result.stderr,
        lab.text()[since:],
    )
    line = lab.access_line(f"dest={ORIGIN}:80", since)
    assert "sniffed=fake_ip" in line, line
    assert f"client={lab.net.client_addr}:" in line, line  # its own address on the way out


def test_a_server_that_speaks_first_is_reached_by_name_at_once(lab: Lab) -> None:
    """SSH-like: the client sends nothing first. By address it would wait for a sniff
    timeout (or be routed by an address the route table cannot place); by its fake
    address it is routed by name at once."""
    since = len(lab.text())
    script = (
        "import socket, sys\n"
        f"s = socket.create_connection(({ORIGIN!r}, {BANNER_PORT}), timeout=8)\n"
        "sys.stdout.write(s.recv(100).decode())\n"
    )
    done = netns_run(lab.lan, [sys.executable, "-c", script], timeout=20)
    assert done.stdout == b"SSH-2.0-x\r\n", done.stderr
    line = lab.access_line(f"dest={ORIGIN}:{BANNER_PORT}", since)
    assert "sniffed=fake_ip" in line, line


def test_a_direct_name_gets_its_real_address(lab: Lab) -> None:
    since = len(lab.text())
    result = netns_curl(lab.lan, f"http://direct.test:{DIRECT_PORT}/real")
    assert (result.returncode, result.body) == (0, b"direct:/real"), result.stderr
    line = lab.access_line(f"original={lab.net.hopa_addr}:{DIRECT_PORT}", since)
    assert "via=direct" in line, line
    assert "fake_ip=" not in line, line


def test_a_chain_resolved_name_is_reached_by_its_real_address(lab: Lab) -> None:
    since = len(lab.text())
    result = netns_curl(lab.lan, f"http://{RESOLVED}/real-address")
    assert (result.returncode, result.body) == (0, b"origin:/real-address"), result.stderr
    line = lab.access_line(f"dest={lab.net.origin_addr}:80", since)
    assert "route=routes[3]" in line, line


# --------------------------------------------------------------------------- no leak


def test_no_query_for_a_chained_name_left_chainers_namespace(lab: Lab) -> None:
    """Runs last: everything above asked for origin.internal, db.internal and
    blocked.test, by dig, getent, curl and Python; the only resolver chainer's namespace
    can reach heard only of the direct name."""
    asked = set(lab.spy.names())
    assert "direct.test" in asked  # the spy was reachable and used
    for name in (ORIGIN, RESOLVED, "blocked.test"):
        assert name not in asked, lab.spy.asked
    assert asked == {"direct.test"}, lab.spy.asked
