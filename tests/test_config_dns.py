"""Config: the `dns:` section. Defaults, every key, and every error with file:line: path."""

from __future__ import annotations

import textwrap

import pytest

from chainer.config import parse_config
from chainer.errors import ConfigErrors
from chainer.models import Address, Config, FakeIp

ROUTES = "routes: [{match: '*', via: direct}]\n"


def parse(text: str) -> Config:
    return parse_config(textwrap.dedent(text) + ROUTES, "routes.yaml")


def errors(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse(text)
    return [str(e) for e in info.value.errors]


def test_no_dns_section_no_dns() -> None:
    assert parse("listen: 127.0.0.1:8080\n").dns is None


def test_the_defaults() -> None:
    dns = parse("dns: {listen: 127.0.0.1:5353}\n").dns
    assert dns is not None
    assert dns.listen == (Address("127.0.0.1", 5353),)
    assert dns.fake_ip == FakeIp("198.18.0.0/15", "fc00:c8::/32", 5, 65536)
    assert dns.upstream == ()  # /etc/resolv.conf's, when serving
    assert dns.chain_resolve == ()
    assert dns.reject_rcode == "NXDOMAIN"
    assert dns.timeout == 5.0
    assert dns.loopback


def test_every_key() -> None:
    config = parse("""\
        proxies: {corp: "http://10.0.0.1:3128"}
        chains: {lab: [corp]}
        dns:
          listen: [127.0.0.1:5353, "[::1]:5353", 192.168.1.1:53]
          allow: [192.168.1.0/24]
          fake_ip: {v4: 198.19.0.0/16, v6: "fd00:c8::/64", ttl: 1500ms, size: 1000}
          upstream: [192.0.2.53, "[2001:db8::53]:5300"]
          chain_resolve:
            - {match: ["*.lab.corp.example", "lab.corp.example"], server: 10.0.0.53, via: lab}
            - {match: ".other.example", server: "dns.other.example:5353", via: [corp]}
          reject_rcode: refused
          timeout: 2s
        """)
    dns = config.dns
    assert dns is not None
    assert dns.listen[1] == Address("::1", 5353)
    assert not dns.loopback
    assert dns.allow == ("192.168.1.0/24",)
    assert dns.fake_ip == FakeIp("198.19.0.0/16", "fd00:c8::/64", 2, 1000)  # TTLs: whole seconds
    assert dns.upstream == (Address("192.0.2.53", 53), Address("2001:db8::53", 5300))
    first, second = dns.chain_resolve
    assert [p.text for p in first.patterns] == ["*.lab.corp.example", "lab.corp.example"]
    assert first.server == Address("10.0.0.53", 53)
    assert first.via.label == "lab"
    assert second.server == Address("dns.other.example", 5353)
    assert second.via.label == "corp"
    assert second.index == 1
    assert dns.reject_rcode == "REFUSED"
    assert dns.timeout == 2.0


def test_fake_ip_off_or_one_family() -> None:
    off = parse("dns: {listen: 127.0.0.1:53, fake_ip: false}\n").dns
    assert off is not None
    assert off.fake_ip is None
    dns = parse("dns: {listen: 127.0.0.1:53, fake_ip: {v6: false}}\n").dns
    assert dns is not None
    assert dns.fake_ip == FakeIp("198.18.0.0/15", None, 5, 65536)


def test_the_size_fits_a_small_range_unless_given() -> None:
    dns = parse("dns: {listen: 127.0.0.1:53, fake_ip: {v4: 198.19.0.0/24, v6: false}}\n").dns
    assert dns is not None
    assert dns.fake_ip is not None
    assert dns.fake_ip.size == 254
    assert errors("dns: {listen: 127.0.0.1:53, fake_ip: {v4: 198.19.0.0/24, size: 300}}\n") == [
        "routes.yaml:1: dns.fake_ip.size: 300 names do not fit: the ranges hold 254 addresses"
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dns: 127.0.0.1:53\n", "routes.yaml:1: dns: expected a mapping, got a string"),
        (
            "dns: {allow: [10.0.0.0/8]}\n",
            'routes.yaml:1: dns: missing "listen" (such as [127.0.0.1:5353])',
        ),
        ("dns: {listen: []}\n", "routes.yaml:1: dns.listen: empty list: nothing would listen"),
        (
            "dns: {listen: name.example:53}\n",
            'routes.yaml:1: dns.listen: listen on an IP address, not a name: "name.example"',
        ),
        (
            "dns: {listen: 127.0.0.1:53, lsiten: 1}\n",
            'routes.yaml:1: dns: unknown key "lsiten" (did you mean "listen"?)',
        ),
        (
            "dns:\n  listen: 0.0.0.0:53\n",
            "routes.yaml:2: dns: 0.0.0.0:53 is reachable from other machines and dns has no "
            "allow:, so anyone could use it as a resolver (an open resolver amplifies "
            "attacks); add allow: [CIDR...], or open: true if you mean it",
        ),
        (
            "dns: {listen: 127.0.0.1:53, fake_ip: {v4: 'fd00::/64'}}\n",
            "routes.yaml:1: dns.fake_ip.v4: expected an IPv4 range of /30 or wider, or false, "
            "got a string",
        ),
        (
            "dns: {listen: 127.0.0.1:53, fake_ip: {v4: 198.19.0.0/31}}\n",
            "routes.yaml:1: dns.fake_ip.v4: expected an IPv4 range of /30 or wider, or false, "
            "got a string",
        ),
        (
            "dns: {listen: 127.0.0.1:53, fake_ip: {v4: false, v6: false}}\n",
            "routes.yaml:1: dns.fake_ip: v4 and v6 both false: say fake_ip: false instead",
        ),
        (
            "dns: {listen: 127.0.0.1:53, fake_ip: {ttl: 25h}}\n",
            "routes.yaml:1: dns.fake_ip.ttl: from 1s to 1 day",
        ),
        (
            "dns: {listen: 127.0.0.1:53, upstream: [resolver.example]}\n",
            "routes.yaml:1: dns.upstream[0]: a resolver is an IP address, not a name: "
            '"resolver.example"',
        ),
        (
            "dns: {listen: 127.0.0.1:53, upstream: [127.0.0.1:53]}\n",
            "routes.yaml:1: dns.upstream[0]: 127.0.0.1:53 is dns.listen: a loop",
        ),
        (
            "dns: {listen: 127.0.0.1:53, reject_rcode: SERVFAIL}\n",
            "routes.yaml:1: dns.reject_rcode: expected NXDOMAIN or REFUSED, got a string",
        ),
        (
            "dns: {listen: 127.0.0.1:53, timeout: 2m}\n",
            "routes.yaml:1: dns.timeout: from 1ms to 60s",
        ),
        (
            "listen: 127.0.0.1:8080\ndns: {listen: 127.0.0.1:8080}\n",
            "routes.yaml:2: dns.listen: 127.0.0.1:8080 is also a listener",
        ),
    ],
)
def test_errors_name_the_line_and_the_key(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_an_exposed_dns_server_with_allow_or_open_is_fine() -> None:
    assert parse("dns: {listen: 0.0.0.0:53, allow: [10.0.0.0/8]}\n").dns is not None
    assert parse("dns: {listen: 0.0.0.0:53, open: true}\n").dns is not None


@pytest.mark.parametrize(
    ("resolve", "expected"),
    [
        (
            "{match: '*.lab:53', server: 10.0.0.53, via: lab}",
            "routes.yaml:4: dns.chain_resolve.match: '*.lab:53': a DNS name has no port",
        ),
        (
            "{match: '*.lab', server: 10.0.0.53, via: direct}",
            "routes.yaml:4: dns.chain_resolve.via: chain_resolve goes through a chain, not "
            "direct (names routed direct are resolved by dns.upstream)",
        ),
        (
            "{match: '*.lab', server: 10.0.0.53, via: nolab}",
            'routes.yaml:4: dns.chain_resolve.via: no chain or proxy named "nolab" (did you '
            'mean "lab"?)',
        ),
        ("{match: '*.lab', via: lab}", 'routes.yaml:4: dns.chain_resolve: missing "server"'),
        (
            "[{match: '*.lab', server: 'bad host', via: lab}]",
            "routes.yaml:4: dns.chain_resolve[0].server: expected IP:PORT: not a DNS name or "
            "IP literal: 'bad host'",
        ),
    ],
)
def test_chain_resolve_errors(resolve: str, expected: str) -> None:
    text = f"""\
        proxies: {{corp: "http://10.0.0.1:3128"}}
        chains: {{lab: [corp]}}
        dns:
          {{listen: 127.0.0.1:53, chain_resolve: {resolve}}}
        """
    # the mapping is on line 4 (dedented): errors point into it
    assert errors(text.replace("dns:\n          {", "dns:\n          {", 1)) == [expected]


def test_a_hop_inside_a_fake_range_is_refused() -> None:
    assert errors("""\
        proxies: {squid: "http://198.18.0.2:3128"}
        dns: {listen: 127.0.0.1:53}
        """) == [
        "routes.yaml:2: dns.fake_ip: 198.18.0.2 (proxies.squid) is inside the fake range "
        "198.18.0.0/15: pick a range that your networks do not use"
    ]
    config = parse("""\
        proxies: {squid: "http://198.18.0.2:3128"}
        dns: {listen: 127.0.0.1:53, fake_ip: {v4: 198.19.0.0/16}}
        """)
    assert config.dns is not None
