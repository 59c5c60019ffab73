"""`chainer explain`: the rule, the via, each hop's candidates, where the name is resolved,
and live health — from the route table alone, with nothing sent anywhere."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fakes import free_port

from chainer.config import parse_config
from chainer.errors import BadTarget
from chainer.models import Address, Admin, Config
from chainer.ops.explain import explain, parse_destination
from chainer.ops.explain_render import render_json, render_text
from chainer.ops.liveview import HopsView, LiveHealthView, LiveUnavailable, fetch_hops_view
from chainer.outbound.health import Health

YAML = """\
defaults:
  deadline: 20s
proxies:
  corp: http://alice:topsecret@proxy.corp.example:3128
  corp2: http://10.0.0.2:3128
  bastion: socks5://10.1.0.5:1080
  bastion2: {url: "socks5://10.1.0.6:1080", connect_timeout: 2s, handshake_timeout: 750ms}
  exit-a: https://exit-a.example.net
  exit-b: {url: "https://exit-b.example.net:8443", username: bob, password: hunter2}
  s4: socks4://10.9.0.1:1080
  s4l: {url: "socks4://10.9.0.2:1080", resolve: local}
  s4a: socks4a://10.9.0.3:1080
chains:
  lab: [corp, [bastion, bastion2]]
  private:
    - corp
    - {pick: [exit-a, exit-b], strategy: random}
  old: [corp, s4]
  oldlocal: [corp, s4l]
  mixed: [corp, [bastion, s4l]]
  wide: [[corp, corp2], bastion]
  four: [corp, s4a]
routes:
  - {match: "*.lab.corp.example", via: lab}
  - {match: ["10.20.0.0/16", "db.corp.example:5432"], via: [corp, bastion]}
  - {match: ".ads.example", via: reject}
  - {match: "*.old.example", via: old}
  - {match: ["*.oldl.example", "10.30.0.0/16"], via: oldlocal}
  - {match: "*.mixed.example", via: mixed}
  - {match: "*.one.example", via: exit-b}
  - {match: "*.wide.example", via: wide}
  - {match: ["re:^v6", "2001:db8::/32"], via: four}
  - {match: ["192.0.2.0/24", "*.direct.example"], via: direct}
  - {match: "*.example", via: private, fallback: [direct, lab]}
"""
SECRETS = ("alice", "topsecret", "bob", "hunter2")


def line_of(text: str) -> int:
    return next(i for i, line in enumerate(YAML.splitlines(), 1) if text in line)


@pytest.fixture
def config() -> Config:
    return parse_config(YAML, "routes.yaml", base_dir="/")


def test_names_the_rule_its_file_line_and_the_chain(config: Config) -> None:
    e = explain(config, "db.lab.corp.example:5432")
    text = render_text(e)
    first = text.splitlines()[0]
    line = line_of("*.lab.corp.example")
    assert first == (
        f'db.lab.corp.example:5432 -> routes[0] (routes.yaml:{line}) match "*.lab.corp.example"'
        " -> chain lab"
    )
    assert e.route == "routes[0]"
    assert e.pattern == "*.lab.corp.example"
    assert not e.port_assumed
    assert "chain lab: corp > [bastion, bastion2]" in text
    assert "http://proxy.corp.example:3128" in text
    assert "socks5://10.1.0.6:1080" in text
    assert "connect 2s  handshake 750ms" in text  # bastion2's own timeouts
    assert "by the last hop (bastion, bastion2)" in text
    assert "deadline     20s" in text


def test_the_pattern_that_matched_is_the_one_shown(config: Config) -> None:
    e = explain(config, "db.corp.example:5432")
    assert (e.route, e.pattern) == ("routes[1]", "db.corp.example:5432")
    # the same host on another port falls through to the last route
    other = explain(config, "db.corp.example:22")
    assert (other.route, other.pattern) == ("routes[10]", "*.example")


def test_inline_chain_and_an_ip_literal(config: Config) -> None:
    e = explain(config, "10.20.1.1:22")
    text = render_text(e)
    assert text.splitlines()[0].endswith('match "10.20.0.0/16" -> inline [corp > bastion]')
    assert e.via is not None
    assert e.via.form == "inline"
    assert [r.where for r in e.via.resolution] == ["nothing"]
    assert "nothing to resolve (an IP literal)" in text
    assert "(an IPv4 literal)" in text


def test_a_proxy_as_via_is_a_one_hop_chain(config: Config) -> None:
    e = explain(config, "x.one.example:443")
    assert e.via is not None
    assert (e.via.form, e.via.name) == ("proxy", "exit-b")
    assert "-> proxy exit-b" in render_text(e)
    assert "https://exit-b.example.net:8443" in render_text(e)


def test_direct_resolves_here_with_happy_eyeballs_unless_an_ip(config: Config) -> None:
    text = render_text(explain(config, "www.direct.example:80"))
    assert "-> direct" in text.splitlines()[0]
    assert "on this machine (happy eyeballs)" in text
    assert "nothing to resolve" in render_text(explain(config, "192.0.2.7:80"))


def test_reject_and_no_match_are_refused_with_403(config: Config) -> None:
    rejected = explain(config, "tracker.ads.example")
    assert rejected.refused
    assert rejected.status == 403
    text = render_text(rejected)
    assert text.splitlines()[0].endswith('match ".ads.example" -> reject')
    assert "refused" in text
    assert "HTTP 403" in text
    nothing = explain(config, "example.org:80")
    assert nothing.route is None
    assert nothing.refused
    assert nothing.status == 403
    text = render_text(nothing)
    assert text.splitlines()[0] == "example.org:80 -> no route matches -> refused (403)"
    assert "none of the 11 routes in routes.yaml matches" in text
    data = render_json(nothing)
    assert data["route"] is None
    assert data["status"] == 403


def test_fallbacks_in_order_each_explained(config: Config) -> None:
    e = explain(config, "www.example:443")
    assert e.via is not None
    assert e.via.name == "private"
    assert [f.form for f in e.fallbacks] == ["direct", "chain"]
    text = render_text(e)
    assert "random" in text  # the strategy of private's hop 2
    assert text.index("fallback 1   direct") < text.index("fallback 2   chain lab")
    assert text.count("resolve") == 3
    assert "by the last hop (exit-a, exit-b)" in text
    data = render_json(e)
    assert [f["kind"] for f in data["fallbacks"]] == ["direct", "chain"]
    assert data["via"]["hops"][1]["strategy"] == "random"


def test_default_port_is_443_and_said(config: Config) -> None:
    e = explain(config, "www.example")
    assert e.target == Address("www.example", 443)
    assert e.port_assumed
    assert "port omitted, 443 assumed" in render_text(e)
    assert render_json(e)["destination"]["port_assumed"] is True
    assert "assumed" not in render_text(explain(config, "www.example:443"))
    assert parse_destination("[2001:db8::1]") == (Address("2001:db8::1", 443), True)


def test_destination_is_normalized_and_validated(config: Config) -> None:
    e = explain(config, "DB.Lab.Corp.Example.:5432")
    assert e.target == Address("db.lab.corp.example", 5432)
    assert e.route == "routes[0]"
    for bad in ("exa mple.example", "127.1:80", "host:0", "host:99999", "a@b.example"):
        with pytest.raises(BadTarget):
            explain(config, bad)
    # An Address is taken as it is.
    assert explain(config, Address("www.example", 8443)).target.port == 8443


@pytest.mark.parametrize(
    ("destination", "where", "text"),
    [
        ("a.old.example", "cannot", "cannot: socks4 sends IPv4 only"),
        ("a.oldl.example", "here", "on this machine (socks4 resolve: local)"),
        ("10.30.0.1:80", "nothing", "nothing to resolve (an IP literal)"),
        ("v6.example", "last_hop", "by the last hop (s4a)"),
        ("[2001:db8::5]:80", "cannot", "cannot: socks4 carries no IPv6 address"),
    ],
)
def test_socks4_last_hops(config: Config, destination: str, where: str, text: str) -> None:
    e = explain(config, destination)
    assert e.via is not None
    assert [r.where for r in e.via.resolution] == [where]
    assert text in render_text(e)


def test_a_mixed_last_group_resolves_in_two_places(config: Config) -> None:
    e = explain(config, "x.mixed.example")
    text = render_text(e)
    assert (
        "by the last hop (bastion); on this machine (socks4 resolve: local) "
        "when the last hop is s4l"
    ) in text


@pytest.mark.parametrize(
    "destination",
    ["db.lab.corp.example", "x.one.example", "www.example", "a.old.example", "10.20.0.1"],
)
def test_no_credentials_in_text_or_json(config: Config, destination: str) -> None:
    health = Health()
    corp = config.proxy("corp")
    assert corp is not None
    health.record_failure("", corp, "hop 1 (corp): connection refused", denied=False)
    e = explain(config, destination, LiveHealthView(health, config.proxies))
    for out in (render_text(e), json.dumps(render_json(e))):
        for secret in SECRETS:
            assert secret not in out
    data = render_json(e)
    assert data["via"]["hops"][0]["candidates"][0]["auth"] is True  # that they exist, only


def test_live_view_from_a_health_object(config: Config) -> None:
    now = [1000.0]
    health = Health(clock=lambda: now[0])
    corp, bastion, bastion2 = (config.proxy(n) for n in ("corp", "bastion", "bastion2"))
    assert corp is not None
    assert bastion is not None
    assert bastion2 is not None
    health.record_success("", corp, 0.0123)
    health.record_success("corp", bastion2, 0.040)
    health.record_failure("corp", bastion, "no answer in 10s", denied=False)
    now[0] += 3
    e = explain(config, "db.lab.corp.example:5432", LiveHealthView(health, config.proxies))
    assert e.live
    text = render_text(e)
    assert "from this machine: closed, 12ms" in text
    assert "from corp: open" in text
    assert "closes in 7s; last: no answer in 10s" in text
    assert "from corp: closed, 40ms" in text
    assert e.via is not None
    edges = e.via.positions[1].candidates[0].edges
    assert [(x.source, x.state) for x in edges] == [("corp", "open")]
    # after fail_timeout the edge is due a trial
    now[0] += 10
    e = explain(config, "db.lab.corp.example:5432", LiveHealthView(health, config.proxies))
    assert e.via is not None
    assert e.via.positions[1].candidates[0].edges[0].state == "half_open"


def test_one_health_line_per_previous_candidate(config: Config) -> None:
    e = explain(config, "x.wide.example", LiveHealthView(Health(), config.proxies))
    assert e.via is not None
    bastion = e.via.positions[1].candidates[0]
    assert [edge.source for edge in bastion.edges] == ["corp", "corp2"]
    text = render_text(e)
    assert "from corp: closed, not measured" in text
    assert "from corp2: closed, not measured" in text


HOPS = {
    "edges": [
        {
            "from": "",
            "hop": "corp",
            "state": "closed",
            "latency_ms": 25.0,
            "closes_in": None,
            "last_reason": "",
        },
        {
            "from": "corp",
            "hop": "bastion",
            "state": "open",
            "latency_ms": None,
            "closes_in": 4.2,
            "last_reason": "hop 1 (corp) could not reach it: 502 Bad Gateway",
        },
    ]
}


def test_live_view_from_the_admin_hops_json(config: Config) -> None:
    e = explain(config, "db.lab.corp.example:5432", HopsView.from_json(HOPS))
    text = render_text(e)
    assert "from this machine: closed, 25ms" in text
    assert "from corp: open, not measured (closes in 5s; last: hop 1 (corp)" in text
    assert "from corp: closed, not measured" in text  # bastion2: never used, not listed
    data = render_json(e)
    assert data["live"] is True
    health = data["via"]["hops"][0]["candidates"][0]["health"]
    assert health == [{"from": "", "state": "closed", "latency_ms": 25.0, "note": ""}]


@pytest.mark.parametrize(
    "bad",
    [[], {"edges": {}}, {"edges": [1]}, {"edges": [{"from": "", "hop": 3}]}],
)
def test_a_hops_document_of_the_wrong_shape_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="edges"):
        HopsView.from_json(bad)


@pytest.fixture
def admin() -> Iterator[Address]:
    body = json.dumps(HOPS).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path != "/hops":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Address("127.0.0.1", server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_fetch_hops_view_ignores_proxy_variables(
    config: Config, admin: Address, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy variable that points nowhere: going through it would fail.
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
    view = fetch_hops_view(Admin(admin))
    assert view.state("corp", "bastion") == "open"
    assert view.latency("", "corp") == pytest.approx(0.025)


def test_fetch_hops_view_from_nothing_listening_says_so() -> None:
    with pytest.raises(LiveUnavailable, match="/hops"):
        fetch_hops_view(Admin(Address("127.0.0.1", free_port())), timeout=2)


# -- explain agrees with serve ------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "authority", "assumed"),
    [
        ("http://www.example/path?q=1", "www.example:80", False),
        ("https://www.example", "www.example:443", False),
        ("HTTPS://user:secret@www.example:8443/x", "www.example:8443", False),
        ("http://[2001:db8::1]/", "[2001:db8::1]:80", False),
        ("www.example", "www.example:443", True),
    ],
)
def test_explain_takes_a_url(given: str, authority: str, assumed: bool) -> None:
    address, was_assumed = parse_destination(given)
    assert (str(address), was_assumed) == (authority, assumed)


@pytest.mark.parametrize("bad", ["ftp://www.example/", "http://", "http://exa mple/"])
def test_a_url_that_is_no_destination_is_refused(bad: str) -> None:
    with pytest.raises(BadTarget):
        parse_destination(bad)


@pytest.mark.anyio
async def test_explain_says_what_the_server_does_with_policy(tmp_path: Any) -> None:
    """For each destination, explain's verdict (refused or not) is the server's answer:
    a loop to chainer's own listener, deny patterns and CIDRs, allow_ports."""
    import anyio
    from fakes import running_chainer

    own, other = free_port(), free_port()
    text = (
        f"listen: ['127.0.0.1:{own}', '127.0.0.1:{other}']\n"
        "deny: ['*.denied.test', '127.0.0.2/32']\n"
        f"allow_ports: [80, 443, {own}, {other}, 9]\n"
        "defaults: {connect_timeout: 1s}\n"
        "routes: [{match: '*', via: direct}]\n"
    )
    config = parse_config(text, str(tmp_path / "routes.yaml"), base_dir=str(tmp_path))
    destinations = [
        f"127.0.0.1:{own}",  # chainer itself: a loop
        f"[::ffff:127.0.0.1]:{other}",
        "x.denied.test:443",
        "127.0.0.2:443",
        "127.0.0.1:22",  # not in allow_ports
        "127.0.0.1:9",  # allowed: nothing listens there, so the chain fails (502)
    ]
    async with running_chainer(text, tmp_path):
        for destination in destinations:
            explanation = explain(config, destination)
            with anyio.fail_after(10):
                stream = await anyio.connect_tcp("127.0.0.1", own)
                async with stream:
                    request = f"CONNECT {destination} HTTP/1.1\r\nHost: x\r\n\r\n"
                    await stream.send(request.encode())
                    head = b""
                    while b"\r\n\r\n" not in head:
                        head += await stream.receive()
            status = int(head.split(b" ", 2)[1])
            assert (status == 403) == explanation.refused, (destination, head)
            assert (explanation.status == 403) == (status == 403), destination
