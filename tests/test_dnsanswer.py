"""What chainer's DNS answers for a name, decided by the route table and the destination
policy as a connection would be — table by table."""

from __future__ import annotations

from pathlib import Path

import pytest

from chainer.config import parse_config
from chainer.models import Config
from chainer.routing.dnsanswer import DnsPolicy, dns_name
from chainer.routing.table import RouteTable

HEAD = """\
dns:
  listen: 127.0.0.1:5353
  chain_resolve: {match: "*.resolved.internal", server: "10.0.0.53:53", via: lab}
proxies:
  corp: http://10.0.0.1:3128
chains:
  lab: [corp]
"""


def config(routes: str, extra: str = "", tmp: Path | None = None) -> Config:
    return parse_config(HEAD + extra + "routes:\n" + routes, "routes.yaml", "/")


def decide(cfg: Config, name: str) -> tuple[str, str]:
    answer = DnsPolicy(cfg, RouteTable(cfg.routes)).decide(name)
    return answer.kind, answer.why


ROUTES = """\
  - {match: ".lab.example", via: lab}
  - {match: "ads.example", via: reject}
  - {match: "git.example:22", via: lab}
  - {match: "mail.example:25", via: reject}
  - {match: ".resolved.internal", via: lab}
  - {match: "odd.example:8000-8999", via: reject}
  - {match: "odd.example", via: direct}
  - {match: "*.example", via: direct}
"""


@pytest.mark.parametrize(
    ("name", "kind", "why"),
    [
        ("db.lab.example", "fake", "chained on every port (routes[0] via lab)"),
        ("ads.example", "refuse", "routes[1] rejects it"),
        # chained on one port, direct on the others: kept remote (a real answer would leak it)
        ("git.example", "fake", "chained on port 22 (routes[2] via lab)"),
        # refused on one port, direct on the others: real answers
        ("mail.example", "upstream", "direct on ports 1-24 (routes[7] via direct)"),
        ("www.example", "upstream", "direct on every port (routes[7] via direct)"),
        ("odd.example", "upstream", "direct on ports 1-7999 (routes[6] via direct)"),
        ("a.resolved.internal", "chain_resolve", 'dns.chain_resolve[0] match "*.resolved.'),
        ("nowhere.test", "refuse", "no route matches"),
    ],
)
def test_the_table_decides(name: str, kind: str, why: str) -> None:
    got_kind, got_why = decide(config(ROUTES), name)
    assert got_kind == kind
    assert got_why.startswith(why), got_why


def test_deny_refuses_a_name_on_every_port() -> None:
    cfg = config("  - {match: '*', via: lab}\n", 'deny: ["*.blocked.example"]\n')
    kind, why = decide(cfg, "x.blocked.example")
    assert kind == "refuse"
    assert "deny" in why


def test_deny_of_one_port_leaves_the_others() -> None:
    cfg = config("  - {match: '*', via: lab}\n", 'deny: ["*:25"]\n')
    assert decide(cfg, "mail.example")[0] == "fake"


def test_allow_ports_refuses_the_others_only() -> None:
    cfg = config("  - {match: '*', via: direct}\n", "allow_ports: [443]\n")
    kind, why = decide(cfg, "www.example")
    assert (kind, why) == ("upstream", "direct on port 443 (routes[0] via direct)")
    routes = "  - {match: '*:80', via: direct}\n  - {match: '*', via: lab}\n"
    cfg = config(routes, "allow_ports: [80]\n")
    assert decide(cfg, "www.example")[0] == "upstream"  # only port 80 is reachable, and direct


def test_a_fallback_does_not_change_the_answer() -> None:
    cfg = config("  - {match: '*', via: lab, fallback: [direct]}\n")
    assert decide(cfg, "www.example")[0] == "fake"
    cfg = config("  - {match: '*', via: direct, fallback: [lab]}\n")
    assert decide(cfg, "www.example")[0] == "upstream"


def test_a_chained_name_without_fake_addresses_is_refused() -> None:
    cfg = parse_config(
        HEAD.replace("listen: 127.0.0.1:5353", "listen: 127.0.0.1:5353\n  fake_ip: false")
        + "routes:\n  - {match: '*', via: lab}\n",
        "routes.yaml",
        "/",
    )
    kind, why = decide(cfg, "www.example")
    assert kind == "refuse"
    assert why.endswith("and fake_ip is false")


def test_chain_resolve_does_not_resolve_a_refused_name() -> None:
    cfg = config("  - {match: '.resolved.internal', via: reject}\n  - {match: '*', via: lab}\n")
    assert decide(cfg, "a.resolved.internal")[0] == "refuse"


def test_a_regex_route_decides_by_the_name() -> None:
    cfg = config("  - {match: 're:^api[0-9]+[.]', via: lab}\n  - {match: '*', via: direct}\n")
    assert decide(cfg, "api7.example")[0] == "fake"
    assert decide(cfg, "www.example")[0] == "upstream"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Origin.Internal", "origin.internal"),
        ("_sip._tcp.example", "_sip._tcp.example"),
        ("198.18.0.1", None),  # an address is no name
        ("127.1", None),
        ("a\\032b.example", None),  # dnspython's escape for a space
        ("", None),
    ],
)
def test_question_names(text: str, name: str | None) -> None:
    assert dns_name(text) == name
