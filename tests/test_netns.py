"""chainer in a segmented network, for real: four network namespaces (see ``netns.py``).

    curl -> chainer (client ns, 127.0.0.1) -> tinyproxy A (hopa ns) -> hop B (hopb ns)
         -> origin.lab.test:80 (origin ns)

The client reaches only A, A only B, B only the origin; ``origin.lab.test`` resolves in
B's namespace only. So a fetch that works proves chainer built the chain hop by hop
through real proxies and sent the name, unresolved, to the hop that could resolve it.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import (
    DANTED,
    MICROSOCKS,
    TINYPROXY,
    HopKind,
    SegmentedNetwork,
    TimedCurl,
    free_port_in,
    netns_curl,
    netns_popen,
    netns_run,
    netns_socket,
    segmented_network_fixture,  # noqa: F401  (the `segmented_network` fixture)
    start_origin_in,
    start_tinyproxy_in,
)

# slow: four namespaces and their peers take ~6 s to build and tear down, per module
pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

# What may serve as hop B behind chainer. SOCKS hops: add MICROSOCKS and DANTED here.
HOP_B_KINDS = [TINYPROXY, MICROSOCKS, DANTED]
# What is checked to work as hop B from A's namespace, without chainer.
ALL_HOP_KINDS = [TINYPROXY, MICROSOCKS, DANTED]

BODY_PREFIX = "behind-hop-b:"
FAST = 3.0  # seconds: "fails at once", with room for a slow machine


@dataclass(frozen=True)
class Lab:
    net: SegmentedNetwork
    workdir: Path
    hopa_port: int  # tinyproxy on net.hopa_addr

    def origin_url(self, path: str) -> str:
        return f"http://{self.net.origin_name}{path}"


@dataclass(frozen=True)
class Chainer:
    port: int  # on 127.0.0.1 in the client namespace
    hop_b: HopKind
    log: Path

    @property
    def proxy(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def lab(segmented_network: SegmentedNetwork, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    """The network with its origin (port 80) and hop A running; all stop with it."""
    net = segmented_network
    workdir = tmp_path_factory.mktemp("netns")
    start_origin_in(net.origin, net.origin_addr, workdir / "origin", 80, BODY_PREFIX)
    hopa_port = start_tinyproxy_in(net.hopa, net.hopa_addr, workdir / "hopa")
    return Lab(net, workdir, hopa_port)


def routes_yaml(lab: Lab, port: int, hop_b: HopKind, hopb_port: int) -> str:
    net = lab.net
    return (
        f"listen: ['127.0.0.1:{port}']\n"
        "defaults: {connect_timeout: 2s, handshake_timeout: 3s, deadline: 8s}\n"
        "proxies:\n"
        f"  a: http://{net.hopa_addr}:{lab.hopa_port}\n"
        f"  b: {hop_b.url(net.hopb_addr, hopb_port)}\n"
        "routes:\n"
        f"  - {{match: '{net.origin_name}', via: [a, b]}}\n"
        "  - {match: 'unknown.lab.test', via: [a, b]}\n"
        "  - {match: 'direct.lab.test', via: direct}\n"
        "  - {match: '198.18.0.0/15', via: direct}\n"
    )


@pytest.fixture(scope="module", params=HOP_B_KINDS, ids=lambda kind: kind.name)
def chainer(request: pytest.FixtureRequest, lab: Lab) -> Iterator[Chainer]:
    """Hop B of this kind, and `chainer serve` in the client namespace routing through A, B."""
    hop_b: HopKind = request.param
    net = lab.net
    workdir = lab.workdir / f"chainer-{hop_b.name}"
    hopb_port = hop_b.start(net.hopb, net.hopb_addr, workdir / "hopb")
    port = free_port_in(net.client, "127.0.0.1")
    config = workdir / "routes.yaml"
    config.write_text(routes_yaml(lab, port, hop_b, hopb_port))
    log = workdir / "chainer.log"
    proc = netns_popen(
        net.client,
        [sys.executable, "-m", "chainer", "serve", "-c", str(config)],
        log,
        ready=("127.0.0.1", port),
        name="chainer",
    )
    with proc:
        yield Chainer(port, hop_b, log)


def split_response(result: TimedCurl) -> tuple[bytes, bytes]:
    """(head, body) of what `curl -D -` printed."""
    head, _, body = result.body.partition(b"\r\n\r\n")
    return head, body


def proxy_status(head: bytes) -> str:
    for line in head.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        if name.lower() == "proxy-status":
            return value.strip()
    return ""


# --------------------------------------------------------------------------- the network


def test_the_origin_name_resolves_in_hop_b_namespace_only(lab: Lab) -> None:
    net = lab.net
    for ns in (net.client, net.hopa, net.origin):
        done = netns_run(ns, ["getent", "hosts", net.origin_name], timeout=10)
        assert done.returncode == 2, (ns, done.stdout, done.stderr)  # 2: not found
    done = netns_run(net.hopb, ["getent", "hosts", net.origin_name], timeout=10)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == [net.origin_addr.encode(), net.origin_name.encode()]


def test_each_namespace_reaches_only_its_neighbours(lab: Lab) -> None:
    net = lab.net

    def connect_errno(ns: str, host: str, port: int) -> int:
        with netns_socket(ns) as sock:
            sock.settimeout(FAST)
            return sock.connect_ex((host, port))

    assert connect_errno(net.client, net.hopa_addr, lab.hopa_port) == 0
    assert connect_errno(net.hopb, net.origin_addr, 80) == 0
    unreachable = [
        (net.client, net.hopa_out_addr),
        (net.client, net.hopb_addr),
        (net.client, net.origin_addr),
        (net.hopa, net.origin_addr),
        (net.origin, net.hopa_addr),
    ]
    for ns, host in unreachable:
        assert connect_errno(ns, host, 80) == errno.ENETUNREACH, (ns, host)
    for ns in net.namespaces:
        forwarding = netns_run(ns, ["cat", "/proc/sys/net/ipv4/ip_forward"], timeout=10)
        assert forwarding.stdout.strip() == b"0", ns
        routes = netns_run(ns, ["ip", "-4", "route", "show", "default"], timeout=10)
        assert (routes.returncode, routes.stdout.strip()) == (0, b""), ns


@pytest.mark.parametrize("hop_b", ALL_HOP_KINDS, ids=lambda kind: kind.name)
def test_hop_b_fetches_the_origin_by_name_for_hop_a(lab: Lab, hop_b: HopKind) -> None:
    """Without chainer: curl in A's namespace through B alone (B resolves the name)."""
    net = lab.net
    port = hop_b.start(net.hopb, net.hopb_addr, lab.workdir / f"direct-{hop_b.name}")
    result = netns_curl(net.hopa, "-x", hop_b.url(net.hopb_addr, port), lab.origin_url("/b"))
    assert (result.returncode, result.body) == (0, b"behind-hop-b:/b"), result.stderr


# --------------------------------------------------------------------------- chainer


def test_absolute_form_reaches_the_origin_through_a_and_b(lab: Lab, chainer: Chainer) -> None:
    result = netns_curl(lab.net.client, "-x", chainer.proxy, lab.origin_url("/absolute"))
    assert (result.returncode, result.body) == (0, b"behind-hop-b:/absolute"), result.stderr


def test_connect_tunnel_reaches_the_origin_through_a_and_b(lab: Lab, chainer: Chainer) -> None:
    result = netns_curl(
        lab.net.client,
        "-p",
        "-x",
        chainer.proxy,
        "-w",
        "%{stderr}connect=%{http_connect}\n",
        lab.origin_url("/tunnel"),
    )
    assert (result.returncode, result.body) == (0, b"behind-hop-b:/tunnel"), result.stderr
    assert "connect=200" in result.stderr


@pytest.mark.parametrize("flag", ["--socks5-hostname", "--socks4a"])
def test_socks_clients_reach_the_origin_by_name_through_a_and_b(
    lab: Lab, chainer: Chainer, flag: str
) -> None:
    """A SOCKS client in the client namespace hands chainer the name; only hop B resolves it."""
    result = netns_curl(lab.net.client, flag, f"127.0.0.1:{chainer.port}", lab.origin_url("/s"))
    assert (result.returncode, result.body) == (0, b"behind-hop-b:/s"), result.stderr


def test_a_name_hop_b_cannot_resolve_fails_at_hop_b(lab: Lab, chainer: Chainer) -> None:
    """Through a tunnel (CONNECT), chainer answers and names the hop. (A plain-HTTP
    request to an HTTP last hop is that hop's to answer: see the next test.)"""
    result = netns_curl(
        lab.net.client, "-p", "-x", chainer.proxy, "-D", "-", "http://unknown.lab.test/"
    )
    head, _ = split_response(result)
    assert result.returncode == 56, result.stderr  # curl: CONNECT tunnel failed
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert "hop 2 (b)" in proxy_status(head), head
    assert result.seconds < FAST


def test_plain_http_to_an_unresolvable_name_is_answered_by_the_last_hop(
    lab: Lab, chainer: Chainer
) -> None:
    result = netns_curl(lab.net.client, "-x", chainer.proxy, "-D", "-", "http://unknown.lab.test/")
    head, body = split_response(result)
    assert result.returncode == 0, result.stderr
    assert result.seconds < FAST
    if chainer.hop_b.scheme == "http":
        # the HTTP hop got the request itself and answered it
        assert head.startswith(b"HTTP/1.1 5"), head
        assert b"chainer" not in head
    else:
        # a SOCKS hop was asked for a tunnel: chainer answers and names it
        assert head.startswith(b"HTTP/1.1 502 "), head
        assert b"hop 2 (b)" in body, body


def test_direct_route_to_a_name_fails_fast_with_dns_error(lab: Lab, chainer: Chainer) -> None:
    """direct.lab.test resolves nowhere in the client namespace: chainer says so at once."""
    result = netns_curl(lab.net.client, "-x", chainer.proxy, "-D", "-", "http://direct.lab.test/")
    head, body = split_response(result)
    assert result.returncode == 0, result.stderr
    assert head.startswith(b"HTTP/1.1 502 "), head
    status = proxy_status(head)
    assert "error=dns_error" in status, head
    assert "direct.lab.test" in status, head
    assert b"not resolved" in body, body
    assert result.seconds < FAST

    tunnel = netns_curl(lab.net.client, "-p", "-v", "-x", chainer.proxy, "http://direct.lab.test/")
    assert tunnel.returncode == 56, tunnel.stderr  # CONNECT answered with a failure
    assert "< HTTP/1.1 502 " in tunnel.stderr, tunnel.stderr
    assert "error=dns_error" in tunnel.stderr, tunnel.stderr
    assert tunnel.seconds < FAST


def test_direct_route_to_the_origin_address_fails_fast_unreachable(
    lab: Lab, chainer: Chainer
) -> None:
    """The client namespace has no route to the origin (and no default route)."""
    url = f"http://{lab.net.origin_addr}/"
    result = netns_curl(lab.net.client, "-x", chainer.proxy, "-D", "-", url)
    head, body = split_response(result)
    assert result.returncode == 0, result.stderr
    assert head.startswith(b"HTTP/1.1 502 "), head
    assert "network is unreachable" in proxy_status(head), head
    assert "error=destination_ip_unroutable;" in proxy_status(head), head
    assert b"network is unreachable" in body, body
    assert result.seconds < FAST
