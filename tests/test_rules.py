"""`chainer rules`: the nftables ruleset for the transparent listeners, read as text and
then given to the real `nft` inside a namespace of its own (applied twice, deleted
twice), with tproxy's policy routing run by `sh` there too."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator

import pytest
from netns import lone_namespace, netns_run, nft_apply
from test_examples import BLOCKS

from chainer.config import parse_config
from chainer.models import Config
from chainer.ops.rules import RulesError, route_mark, rules

TABLE = ("table inet chainer", "delete table inet chainer", "table inet chainer {")


def config(text: str) -> Config:
    return parse_config(textwrap.dedent(text), "routes.yaml")


LOCAL = config("""\
    listen:
      - 127.0.0.1:8080
      - {address: 127.0.0.1:12345, transparent: redirect, capture: {uids: all}}
    proxies:
      corp: http://10.0.0.1:3128
      bastion: socks5://[2001:db8::5]:1080
      named: http://proxy.corp.example:3128
      inner: http://10.9.9.9:3128
    routes:
      - {match: "*.corp.example", via: [corp, inner]}
      - {match: "*.lab", via: [[bastion, named]]}
      - {match: "*", via: direct}
    """)

GATEWAY = config("""\
    listen:
      - address: "[::]:12345"
        transparent: redirect
        capture: {from: [192.168.1.0/24, "fd00::/64"], interfaces: [eth1]}
      - address: 127.0.0.1:12346
        transparent: tproxy
        capture: {uids: [0, 1000]}
      - address: 0.0.0.0:12347
        transparent: tproxy
        capture: {interfaces: [eth2]}
    defaults: {mark: 0x100}
    routes: [{match: "*", via: direct}]
    """)


def chain(ruleset: str, name: str) -> list[str]:
    lines = ruleset.splitlines()
    start = lines.index(f"\tchain {name} {{")
    end = lines.index("\t}", start)
    return [line.strip() for line in lines[start + 1 : end]]


def test_this_machine_only() -> None:
    ruleset = rules(LOCAL)
    assert ruleset.routing == ()
    text = ruleset.nft
    assert [line for line in text.splitlines() if not line.startswith(("#", "\t", "}"))] == list(
        TABLE
    )
    assert "\tchain redirect_lan {" not in text
    assert chain(text, "redirect_local") == [
        "type nat hook output priority -100; policy accept;",
        "meta l4proto != tcp return",
        'meta mark 0x2c8 counter return comment "chainer itself"',
        "ip daddr 127.0.0.0/8 return",
        "ip6 daddr ::1 return",
        'fib daddr type local return comment "this machine\'s own addresses"',
        'ip daddr 10.0.0.1 tcp dport 3128 return comment "hop 1 corp"',
        'ip6 daddr 2001:db8::5 tcp dport 1080 return comment "hop 1 bastion"',
        'meta nfproto ipv4 meta l4proto tcp counter redirect to :12345 comment "listen[1]"',
    ]
    # Hop 1 only, and only where it is an address: `inner` is reached through `corp`,
    # `named` would be resolved (the mark keeps chainer's own connections out anyway).
    assert "10.9.9.9" not in text
    assert "proxy.corp.example" not in text


def test_a_gateway_with_both_modes() -> None:
    ruleset = rules(GATEWAY)
    text = ruleset.nft
    rm = route_mark(GATEWAY)
    assert rm == 0x101
    assert chain(text, "redirect_lan")[-2:] == [
        'iifname "eth1" ip saddr 192.168.1.0/24 meta l4proto tcp counter redirect to :12345 '
        'comment "listen[0]"',
        'iifname "eth1" ip6 saddr fd00::/64 meta l4proto tcp counter redirect to :12345 '
        'comment "listen[0]"',
    ]
    assert "\tchain redirect_local {" not in text  # nobody captures this machine by redirect
    lan = chain(text, "tproxy_lan")
    assert lan[0] == "type filter hook prerouting priority -150; policy accept;"
    assert (
        'socket transparent 1 meta mark set 0x101 accept comment "connections chainer holds"'
        in (lan)
    )
    assert lan[-2:] == [
        'iifname "lo" meta mark 0x101 meta l4proto tcp tproxy ip to 127.0.0.1:12346 accept '
        'comment "listen[1]: this machine, looped back by policy routing"',
        'iifname "eth2" meta nfproto ipv4 meta l4proto tcp counter tproxy ip to :12347 '
        'meta mark set 0x101 accept comment "listen[2]"',
    ]
    local = chain(text, "tproxy_local")
    assert local[0] == "type route hook output priority -150; policy accept;"
    assert 'meta mark 0x100 counter return comment "chainer itself"' in local
    assert local[-1] == (
        "meta nfproto ipv4 meta skuid { 0, 1000 } meta l4proto tcp counter meta mark set 0x101 "
        'comment "listen[1]"'
    )
    assert ruleset.routing == (
        "ip rule del fwmark 0x101 lookup 712 2>/dev/null",
        "ip rule add fwmark 0x101 lookup 712",
        "ip route replace local 0.0.0.0/0 dev lo table 712",
    )
    assert "#   ip rule add fwmark 0x101 lookup 712" in text  # shown, as a comment


def test_mode_selects_listeners() -> None:
    assert "tproxy_" not in rules(GATEWAY, "redirect").nft
    assert rules(GATEWAY, "redirect").routing == ()
    assert "redirect_" not in rules(GATEWAY, "tproxy").nft


def test_delete() -> None:
    ruleset = rules(GATEWAY, delete=True)
    body = [line for line in ruleset.nft.splitlines() if not line.startswith("#")]
    assert body == ["table inet chainer", "delete table inet chainer"]
    assert ruleset.routing == (
        "ip rule del fwmark 0x101 lookup 712",
        "ip route del local 0.0.0.0/0 dev lo table 712",
    )


def test_a_dual_stack_tproxy_listener_gets_both_families() -> None:
    cfg = config("""\
        listen: [{address: "[::]:9", transparent: tproxy, capture: {uids: all, from: "::/0"}}]
        routes: [{match: "*", via: direct}]
        """)
    ruleset = rules(cfg)
    assert "tproxy ip to :9" in ruleset.nft
    assert "tproxy ip6 to :9" in ruleset.nft
    assert "ip6 saddr ::/0 meta l4proto tcp counter tproxy ip6 to :9" in ruleset.nft
    assert "ip -6 route replace local ::/0 dev lo table 712" in ruleset.routing


def test_without_a_mark_the_rules_say_so() -> None:
    cfg = config("""\
        listen: [{address: 127.0.0.1:9, transparent: redirect, capture: {uids: [1000]}}]
        defaults: {mark: false}
        routes: [{match: "*", via: direct}]
        """)
    text = rules(cfg).nft
    assert "chainer itself" not in text
    assert "# defaults.mark is false" in text


@pytest.mark.parametrize(
    ("text", "mode", "message"),
    [
        ("listen: [127.0.0.1:1]", None, "no transparent listener in routes.yaml"),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, capture: {uids: all}}]",
            "tproxy",
            "no tproxy transparent listener in routes.yaml",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect}]",
            None,
            "listen[0] (127.0.0.1:1) has no capture:",
        ),
        (
            "listen: [{address: 127.0.0.1:0, transparent: redirect, capture: {uids: all}}]",
            None,
            "listen[0] listens on port 0",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, capture: {uids: [nosuch9]}}]",
            None,
            "listen[0].capture.uids: no user 'nosuch9' on this machine",
        ),
        (
            "listen:\n"
            "  - {address: 127.0.0.1:1, transparent: tproxy, capture: {uids: all}}\n"
            "  - {address: 127.0.0.1:2, transparent: tproxy, capture: {uids: [0]}}",
            None,
            "listen[0] and listen[1] both capture this machine's connections with tproxy",
        ),
        (
            "listen: [{address: 127.0.0.1:1, transparent: redirect, capture: {uids: all}}]\n"
            "defaults: {mark: false}",
            None,
            "uids: all with defaults.mark: false would capture chainer's own connections",
        ),
    ],
)
def test_what_cannot_be_turned_into_rules(text: str, mode: str | None, message: str) -> None:
    cfg = config(text + "\nroutes: [{match: '*', via: direct}]\n")
    with pytest.raises(RulesError) as info:
        rules(cfg, mode)  # type: ignore[arg-type]
    assert message in str(info.value)


# --------------------------------------------------------------------------- the real nft


@pytest.fixture
def namespace() -> Iterator[str]:
    with lone_namespace() as ns:
        yield ns


def tables(ns: str) -> str:
    done = netns_run(ns, ["nft", "list", "tables"])
    assert done.returncode == 0, done.stderr
    return done.stdout.decode()


def sh(ns: str, commands: tuple[str, ...]) -> None:
    done = netns_run(ns, ["sh", "-c", "\n".join(commands)])
    assert done.returncode == 0, done.stderr


@pytest.mark.interop
@pytest.mark.netns
@pytest.mark.parametrize("cfg", [LOCAL, GATEWAY], ids=["local", "gateway"])
def test_nft_takes_the_ruleset_again_and_again_and_deletes_it(namespace: str, cfg: Config) -> None:
    ruleset = rules(cfg)
    nft_apply(namespace, ruleset.nft)
    nft_apply(namespace, ruleset.nft)  # applying it again replaces it
    listing = netns_run(namespace, ["nft", "list", "table", "inet", "chainer"]).stdout.decode()
    assert listing.count("\tchain ") == ruleset.nft.count("\tchain ")
    sh(namespace, ruleset.routing)
    sh(namespace, ruleset.routing)  # so may the routing commands
    if ruleset.routing:
        rule_list = netns_run(namespace, ["ip", "rule", "list"]).stdout.decode()
        assert rule_list.count(f"fwmark {route_mark(cfg):#x} lookup 712") == 1
        local = netns_run(namespace, ["ip", "route", "show", "table", "712"]).stdout.decode()
        assert "local default dev lo" in local
    removal = rules(cfg, delete=True)
    nft_apply(namespace, removal.nft)
    nft_apply(namespace, removal.nft)  # deleting what is gone is fine too
    assert "chainer" not in tables(namespace)
    sh(namespace, removal.routing)
    assert "lookup 712" not in netns_run(namespace, ["ip", "rule", "list"]).stdout.decode()


README_TRANSPARENT = [
    (doc, line, block)
    for doc, line, block in BLOCKS
    if doc == "README.md" and "transparent:" in block and not block.startswith("# fragment")
]


def test_the_readme_shows_both_set_ups() -> None:
    assert len(README_TRANSPARENT) >= 2
    kinds = [
        rules(parse_config(block, f"README.md:{line}")).nft for _, line, block in README_TRANSPARENT
    ]
    assert any("\tchain redirect_local {" in text for text in kinds)
    assert any("\tchain redirect_lan {" in text for text in kinds)


@pytest.mark.interop
@pytest.mark.netns
def test_nft_takes_the_readmes_rulesets(namespace: str) -> None:
    for _, line, block in README_TRANSPARENT:
        nft_apply(namespace, rules(parse_config(block, f"README.md:{line}")).nft)
        for mode in ("redirect", "tproxy"):  # the same listeners in the other mode too
            other = block.replace("transparent: redirect", f"transparent: {mode}")
            nft_apply(namespace, rules(parse_config(other, f"README.md:{line}")).nft)
