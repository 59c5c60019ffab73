"""Transparent capture for real: nftables rules printed by `chainer rules` and applied in
network namespaces, clients with no proxy settings at all, a chain of real proxies.

::

    lan ──── client/gateway (chainer) ──── hopa (squid) ──── hopb (dante) ──── origin
    .14  .13                       .1   .2               .5 .6            .9  .10

The gateway namespace runs chainer with two transparent listeners: one for its own
processes (the "this machine only" set-up: `capture: {uids: all}`, output hook) and one
for the LAN namespace behind it (the "gateway" set-up: `capture: {from, interfaces}`,
prerouting). Both set-ups come from one `chainer rules | nft -f -`, in `redirect` mode
and again in `tproxy` mode (the module's tests run once per mode).

Names resolve to addresses that lead nowhere: the LAN's and the gateway's hosts files
say `origin.lab.test` is 198.18.200.10, which no namespace has (a route sends it
towards hop A, whose forwarding is off). Only hop B knows the origin's real address. So
a fetch that works proves the connection was captured, its name recovered from the
first flight, routed by that name, and carried by the chain to the last hop, which
resolved it.
"""

from __future__ import annotations

import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from netns import (
    DANTED_VERBOSE,
    SQUID,
    SegmentedNetwork,
    add_hosts,
    add_route,
    free_port_in,
    leaf_namespace,
    netns_curl,
    netns_popen,
    netns_run,
    netns_socket,
    nft_counter,
    segmented_network_fixture,  # noqa: F401  (the `segmented_network` fixture)
    start_banner_in,
    start_origin_in,
    start_tls_origin_in,
)
from realproxies import require_binary

# slow: five namespaces, squid and dante take ~8 s to build per module
pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

FAKE = "198.18.200.10"  # what origin.lab.test resolves to where clients are: nowhere
BLOCKED_FAKE = "198.18.200.11"
CAPTURED_RANGE = "198.18.200.0/24"
GW_LAN, LAN = "198.18.0.13", "198.18.0.14"
BANNER_PORT = 2222
DIRECT_PORT = 8080  # an origin on hop A's address, reached `direct` (not hop 1's port)
SNIFF_TIMEOUT = 0.5
LINE_WAIT = 10.0  # seconds for an access line or a hop's log line to appear


@dataclass(frozen=True)
class Lab:
    net: SegmentedNetwork
    lan: str  # the LAN namespace behind the gateway (the client namespace)
    workdir: Path
    ca_pem: str
    squid_port: int
    dante_port: int

    @property
    def origin(self) -> str:
        return self.net.origin_name

    def squid_log(self) -> str:
        return _read(self.workdir / "hopa" / "access.log")

    def dante_log(self) -> str:
        return _read(self.workdir / "hopb" / "danted.log")


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def wait_for(what: str, read: Callable[[], str], needle: str, since: int = 0) -> str:
    """Poll `read()` (bounded) until `needle` appears after offset `since`."""
    deadline = time.monotonic() + LINE_WAIT
    while True:
        text = read()
        if needle in text[since:]:
            return text[since:]
        if time.monotonic() >= deadline:
            raise AssertionError(f"{needle!r} never appeared in {what}:\n{text[since:][-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def lab(
    segmented_network: SegmentedNetwork,
    tmp_path_factory: pytest.TempPathFactory,
    ca: trustme.CA,
    ca_pem: str,
) -> Iterator[Lab]:
    net = segmented_network
    workdir = tmp_path_factory.mktemp("transparent")
    names = f"{FAKE}\t{net.origin_name}\n{BLOCKED_FAKE}\tblocked.lab.test\n"
    add_hosts(net.client, names)
    for prefix in (CAPTURED_RANGE, "198.18.0.8/30"):
        add_route(net.client, prefix, net.hopa_addr)
    cert = ca.issue_cert(net.origin_name)
    cert_pem, key_pem = workdir / "origin.pem", workdir / "origin.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_pem))
    cert.private_key_pem.write_to_path(str(key_pem))
    start_tls_origin_in(net.origin, net.origin_addr, workdir / "origin", cert_pem, key_pem)
    start_origin_in(net.origin, net.origin_addr, workdir / "origin", 80, "plain-origin:")
    start_banner_in(net.origin, net.origin_addr, workdir / "banner", BANNER_PORT, "SSH-2.0-lab")
    start_origin_in(net.hopa, net.hopa_addr, workdir / "direct", DIRECT_PORT, "direct:")
    squid_port = SQUID.start(net.hopa, net.hopa_addr, workdir / "hopa")
    dante_port = DANTED_VERBOSE.start(net.hopb, net.hopb_addr, workdir / "hopb")
    with leaf_namespace(net.client, GW_LAN, LAN, role="lan", hosts_extra=names) as lan:
        for prefix in (CAPTURED_RANGE, "198.18.0.8/30"):
            add_route(lan, prefix, GW_LAN)
        yield Lab(net, lan, workdir, ca_pem, squid_port, dante_port)


def routes_yaml(lab: Lab, mode: str, local_port: int, lan_port: int) -> str:
    net = lab.net
    return f"""\
listen:
  - address: 127.0.0.1:{local_port}     # this machine's own processes
    transparent: {mode}
    capture: {{uids: all}}
  - address: 0.0.0.0:{lan_port}         # the LAN behind it
    transparent: {mode}
    capture: {{from: [{LAN}/30], interfaces: [to-lan]}}
defaults:
  connect_timeout: 2s
  handshake_timeout: 3s
  deadline: 8s
  sniff: {{timeout: {int(SNIFF_TIMEOUT * 1000)}ms}}
proxies:
  squid: http://{net.hopa_addr}:{lab.squid_port}
  dante: socks5h://{net.hopb_addr}:{lab.dante_port}
routes:
  - {{match: {net.origin_name}, via: [squid, dante]}}
  - {{match: blocked.lab.test, via: reject}}
  - {{match: "{net.hopa_addr}:{DIRECT_PORT}", via: direct}}
  - {{match: "198.18.0.8/30", via: [squid, dante]}}
  - {{match: "*", via: reject}}
"""


@dataclass(frozen=True)
class Chainer:
    mode: str
    config: Path
    log: Path
    local_port: int
    lan_port: int

    def text(self) -> str:
        return _read(self.log)

    def access_lines(self, since: int) -> list[str]:
        return [line for line in self.text()[since:].splitlines() if "chainer.access" in line]

    def wait_line(self, needle: str, since: int) -> str:
        """The first new access line holding `needle`."""
        wait_for("chainer's log", self.text, needle, since)
        return next(line for line in self.access_lines(since) if needle in line)


def shell_in(ns: str, command: str) -> None:
    done = netns_run(ns, ["sh", "-c", command], timeout=20)
    assert done.returncode == 0, (command, done.stderr.decode(errors="replace"))


@pytest.fixture(scope="module", params=["redirect", "tproxy"])
def chainer(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Chainer]:
    """`chainer serve` in the gateway namespace, and `chainer rules | nft -f -` there
    (plus `chainer rules --routing | sh` for tproxy): the README's two commands."""
    require_binary("nft")
    mode: str = request.param
    ns = lab.net.client
    workdir = lab.workdir / f"chainer-{mode}"
    workdir.mkdir()
    local_port = free_port_in(ns, "127.0.0.1")
    lan_port = free_port_in(ns, "0.0.0.0")
    config = workdir / "routes.yaml"
    config.write_text(routes_yaml(lab, mode, local_port, lan_port))
    log = workdir / "chainer.log"
    chainer = [sys.executable, "-m", "chainer"]
    proc = netns_popen(
        ns, [*chainer, "serve", "-c", str(config)], log, ready=("127.0.0.1", local_port)
    )
    rules = " ".join([*chainer, "rules", "-c", str(config)])
    with proc:
        shell_in(ns, f"{rules} | nft -f -")
        if mode == "tproxy":
            shell_in(ns, f"{rules} --routing | sh")
        try:
            yield Chainer(mode, config, log, local_port, lan_port)
        finally:
            shell_in(ns, f"{rules} --delete | nft -f -")
            if mode == "tproxy":
                shell_in(ns, f"{rules} --routing --delete | sh")


def client_hello(name: str) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


# --------------------------------------------------------------------------- the set-up


def test_the_clients_resolve_the_name_to_an_address_that_leads_nowhere(lab: Lab) -> None:
    for ns in (lab.lan, lab.net.client):
        done = netns_run(ns, ["getent", "hosts", lab.origin], timeout=10)
        assert done.stdout.split()[:1] == [FAKE.encode()], ns
    for ns in (lab.net.hopa, lab.net.hopb, lab.net.origin):
        addresses = netns_run(ns, ["ip", "-o", "addr"], timeout=10).stdout.decode()
        assert FAKE not in addresses, ns


def test_the_rules_are_in_place(lab: Lab, chainer: Chainer) -> None:
    listing = netns_run(lab.net.client, ["nft", "list", "table", "inet", "chainer"])
    text = listing.stdout.decode()
    assert listing.returncode == 0, listing.stderr
    assert f"{chainer.mode}_lan" in text
    assert f"{chainer.mode}_local" in text
    assert "meta mark 0x000002c8" in text  # chainer's own connections are let through


# --------------------------------------------------------------------------- the LAN (gateway)


def test_https_is_routed_by_sni_through_squid_and_dante(lab: Lab, chainer: Chainer) -> None:
    since, squid_since, dante_since = (
        len(chainer.text()),
        len(lab.squid_log()),
        len(lab.dante_log()),
    )
    url = f"https://{lab.origin}/sni-{chainer.mode}"
    result = netns_curl(lab.lan, "--cacert", lab.ca_pem, url)
    assert (result.returncode, result.body) == (0, f"tls-origin:/sni-{chainer.mode}".encode()), (
        result.stderr,
        chainer.text()[since:],
    )
    line = chainer.wait_line(f"original={FAKE}:443", since)
    assert f"dest={lab.origin}:443" in line
    assert f"inbound={chainer.mode} sniffed=sni" in line
    assert "hops=squid:" in line
    assert ",dante:" in line
    assert "outcome=ok" in line
    assert f"client={LAN}:" in line
    # The hops' own logs: squid carried the tunnel to dante, dante was asked for the name
    # (a SOCKS5 domain-name request) and never for an address.
    wait_for("squid's access.log", lab.squid_log, f"CONNECT {lab.net.hopb_addr}:", squid_since)
    asked = f"ATYP: 3 address: {lab.origin}.443"
    dante = wait_for("dante's log", lab.dante_log, asked, dante_since)
    received = [line for line in dante.splitlines() if "request received from client" in line]
    assert received, dante
    assert all(asked in line for line in received), received


def test_plain_http_is_routed_by_host(lab: Lab, chainer: Chainer) -> None:
    since, dante_since = len(chainer.text()), len(lab.dante_log())
    result = netns_curl(lab.lan, f"http://{lab.origin}/host-{chainer.mode}")
    assert (result.returncode, result.body) == (0, f"plain-origin:/host-{chainer.mode}".encode())
    line = chainer.wait_line(f"original={FAKE}:80", since)
    assert f"dest={lab.origin}:80" in line, line
    assert "sniffed=host" in line, line
    wait_for("dante's log", lab.dante_log, f"ATYP: 3 address: {lab.origin}.80", dante_since)


def test_a_server_that_speaks_first_is_routed_by_address_after_the_sniff_timeout(
    lab: Lab, chainer: Chainer
) -> None:
    since = len(chainer.text())
    origin = lab.net.origin_addr
    with netns_socket(lab.lan) as sock:
        sock.settimeout(8.0)
        started = time.monotonic()
        sock.connect((origin, BANNER_PORT))
        banner = sock.recv(100)
        waited = time.monotonic() - started
        sock.sendall(b"hello through the chain\n")
        echo = sock.recv(100)
    assert banner == b"SSH-2.0-lab\r\n"
    assert echo == b"echo: hello through the chain\n"
    assert waited >= SNIFF_TIMEOUT * 0.9  # the client said nothing: chainer waited, then routed
    line = chainer.wait_line(f"original={origin}:{BANNER_PORT}", since)
    assert f"dest={origin}:{BANNER_PORT}" in line, line
    assert "sniffed=none" in line, line
    assert "route=routes[3]" in line, line
    assert "outcome=ok" in line, line


def test_a_rejected_name_gets_a_reset_and_a_log_line(lab: Lab, chainer: Chainer) -> None:
    since = len(chainer.text())
    with netns_socket(lab.lan) as sock:
        sock.settimeout(8.0)
        sock.connect((BLOCKED_FAKE, 443))
        sock.sendall(client_hello("blocked.lab.test"))
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    line = chainer.wait_line(f"original={BLOCKED_FAKE}:443", since)
    assert "dest=blocked.lab.test:443" in line, line
    assert "sniffed=sni" in line, line
    assert "route=routes[1] via=reject" in line, line
    assert "outcome=refused" in line, line


def test_curl_sees_the_reset_too(lab: Lab, chainer: Chainer) -> None:
    result = netns_curl(lab.lan, "--cacert", lab.ca_pem, "https://blocked.lab.test/")
    assert result.returncode == 35, result.stderr  # curl: SSL connect error
    assert "reset" in result.stderr.lower(), result.stderr


def test_a_connection_to_chainers_own_listener_is_refused_not_looped(
    lab: Lab, chainer: Chainer
) -> None:
    """Made straight to the listener, its original destination is the listener."""
    since = len(chainer.text())
    with netns_socket(lab.lan) as sock:
        sock.settimeout(8.0)
        sock.connect((GW_LAN, chainer.lan_port))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {lab.origin}\r\n\r\n".encode())
        with pytest.raises(ConnectionResetError):
            sock.recv(100)
    line = chainer.wait_line(f"original={GW_LAN}:{chainer.lan_port}", since)
    assert "outcome=refused" in line, line
    assert "refusing a loop" in line, line
    time.sleep(0.3)
    assert len(chainer.access_lines(since)) == 1, chainer.access_lines(since)


# --------------------------------------------------------------------------- this machine


def test_this_machines_own_https_is_routed_by_sni(lab: Lab, chainer: Chainer) -> None:
    since = len(chainer.text())
    url = f"https://{lab.origin}/local-{chainer.mode}"
    result = netns_curl(lab.net.client, "--cacert", lab.ca_pem, url)
    assert (result.returncode, result.body) == (0, f"tls-origin:/local-{chainer.mode}".encode()), (
        result.stderr,
        chainer.text()[since:],
    )
    line = chainer.wait_line(f"original={FAKE}:443", since)
    assert "sniffed=sni" in line, line
    assert f"dest={lab.origin}:443" in line, line


def test_chainers_own_upstream_connections_are_not_captured_again(
    lab: Lab, chainer: Chainer
) -> None:
    """A `direct` route to an address the rules capture: chainer's own connection there
    carries the mark and goes out as it is (without the mark it would come back in, a
    loop). The rule that lets marked packets through counted it."""
    ns, hopa = lab.net.client, lab.net.hopa_addr
    chain = f"{chainer.mode}_local"
    before = nft_counter(ns, chain, "chainer itself")
    since = len(chainer.text())
    result = netns_curl(ns, f"http://{hopa}:{DIRECT_PORT}/own-{chainer.mode}")
    assert (result.returncode, result.body) == (0, f"direct:/own-{chainer.mode}".encode())
    line = chainer.wait_line(f"original={hopa}:{DIRECT_PORT}", since)
    assert "via=direct" in line, line
    assert "outcome=ok" in line, line
    time.sleep(0.3)
    lines = chainer.access_lines(since)
    assert len(lines) == 1, lines  # the upstream connection never came back as a client
    assert nft_counter(ns, chain, "chainer itself") > before
    assert nft_counter(ns, chain, "listen[0]") > 0  # and curl's connection was captured


def test_nothing_is_resolved_by_the_gateway(lab: Lab, chainer: Chainer) -> None:
    """The gateway's hosts file lies about the origin; its answer was never used: the
    chain carried the name to dante, which resolved it (above). Here: squid never saw
    the name, nor the address the gateway would have resolved it to."""
    log = lab.squid_log()
    assert lab.origin not in log
    assert FAKE not in log, log
