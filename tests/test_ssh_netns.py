"""SSH hops in a segmented network, for real (see netns.py):

    curl -> chainer (client ns) -> sshd A (hopa ns) -> sshd B (hopb ns) -> origin.lab.test
    curl -> chainer (client ns) -> tinyproxy (hopa) -> sshd (hopb) -> microsocks (origin ns)

B is reachable only from A, the origin only from B, and origin.lab.test resolves in B's
namespace only: a fetch that works proves the second SSH session ran inside a channel
of the first, and that the name went unresolved to the SSH server that could resolve it.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import (
    SegmentedNetwork,
    free_port_in,
    netns_curl,
    netns_popen,
    netns_socket,
    segmented_network_fixture,  # noqa: F401  (the `segmented_network` fixture)
    start_microsocks_in,
    start_origin_in,
    start_tinyproxy_in,
)
from sshpeer import Sshd, make_keys, start_sshd_in

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

BODY = "lab-origin:"


@dataclass(frozen=True)
class Lab:
    net: SegmentedNetwork
    workdir: Path
    ssh_a: Sshd
    ssh_b: Sshd
    corp_port: int  # tinyproxy in hopa
    socks_port: int  # microsocks in the origin's namespace


@pytest.fixture(scope="module")
def lab(segmented_network: SegmentedNetwork, tmp_path_factory: pytest.TempPathFactory) -> Lab:
    net = segmented_network
    workdir = tmp_path_factory.mktemp("ssh-netns")
    keys = make_keys(workdir / "keys")
    start_origin_in(net.origin, net.origin_addr, workdir / "origin", 80, BODY)
    ssh_a = start_sshd_in(net.hopa, net.hopa_addr, workdir / "ssh-a", keys)
    ssh_b = start_sshd_in(net.hopb, net.hopb_addr, workdir / "ssh-b", keys)
    corp = start_tinyproxy_in(net.hopa, net.hopa_addr, workdir / "corp")
    socks = start_microsocks_in(net.origin, net.origin_addr, workdir / "socks")
    return Lab(net, workdir, ssh_a, ssh_b, corp, socks)


def ssh_hop(sshd: Sshd) -> str:
    return (
        f"{{url: 'ssh://root@{sshd.host}:{sshd.port}', identity: '{sshd.keys.user_key}',"
        f" host_key: '{sshd.keys.host_pub}', agent: false}}"
    )


@pytest.fixture(scope="module")
def chainer(lab: Lab) -> Iterator[str]:
    net = lab.net
    port = free_port_in(net.client, "127.0.0.1")
    config = lab.workdir / "routes.yaml"
    config.write_text(
        f"listen: ['127.0.0.1:{port}']\n"
        "defaults: {connect_timeout: 3s, handshake_timeout: 3s, deadline: 10s}\n"
        "proxies:\n"
        f"  ssh-a: {ssh_hop(lab.ssh_a)}\n"
        f"  ssh-b: {ssh_hop(lab.ssh_b)}\n"
        f"  corp-proxy: http://{net.hopa_addr}:{lab.corp_port}\n"
        f"  lab-socks: socks5h://{net.origin_addr}:{lab.socks_port}\n"
        "routes:\n"
        f"  - {{match: '{net.origin_name}', via: [ssh-a, ssh-b]}}\n"
        f"  - {{match: '{net.origin_addr}', via: [corp-proxy, ssh-b, lab-socks]}}\n"
    )
    proc = netns_popen(
        net.client,
        [sys.executable, "-m", "chainer", "serve", "-c", str(config)],
        lab.workdir / "chainer.log",
        ready=("127.0.0.1", port),
        name="chainer",
    )
    with proc:
        yield f"http://127.0.0.1:{port}"


def test_b_is_reachable_only_from_a(lab: Lab) -> None:
    net = lab.net
    with netns_socket(net.client) as sock:
        sock.settimeout(3)
        assert sock.connect_ex((net.hopb_addr, lab.ssh_b.port)) == errno.ENETUNREACH
    with netns_socket(net.hopa) as sock:
        sock.settimeout(3)
        assert sock.connect_ex((net.hopb_addr, lab.ssh_b.port)) == 0


def test_ssh_a_then_ssh_b_reaches_the_origin_by_name(lab: Lab, chainer: str) -> None:
    for path in ("/one", "/two"):
        result = netns_curl(
            lab.net.client, "-p", "-x", chainer, f"http://{lab.net.origin_name}{path}"
        )
        assert (result.returncode, result.body) == (0, f"{BODY}{path}".encode()), result.stderr
    # one login on each server, the second made through the first: sessions shared
    assert lab.ssh_a.logins() == 1
    assert lab.ssh_b.logins() == 1
    assert f"from {lab.net.hopa_out_addr}" in lab.ssh_b.log()


def test_corp_proxy_then_bastion_ssh_then_lab_socks(lab: Lab, chainer: str) -> None:
    """The issue's own chain: via: [corp-proxy, bastion-ssh, lab-socks]."""
    url = f"http://{lab.net.origin_addr}/done"
    result = netns_curl(lab.net.client, "-p", "-x", chainer, url)
    assert (result.returncode, result.body) == (0, f"{BODY}/done".encode()), result.stderr
    # plain HTTP through the chain too (the request goes as-is down the tunnel)
    result = netns_curl(lab.net.client, "-x", chainer, f"http://{lab.net.origin_addr}/plain")
    assert (result.returncode, result.body) == (0, f"{BODY}/plain".encode()), result.stderr
