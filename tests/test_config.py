from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path

import pytest

from chainer.config import load_config, parse_config, parse_duration
from chainer.errors import ConfigError, ConfigErrors
from chainer.models import DIRECT, REJECT, Address, Config, HopGroup, Timeouts

DESIGN_EXAMPLE = """\
listen:
  - 127.0.0.1:8080            # one port speaks HTTP (CONNECT + absolute-form), SOCKS4/4a and SOCKS5
  # - address: 0.0.0.0:8443
  #   tls: {cert: server.pem, key: server.key}     # clients reach us over TLS
  #   auth: {users: {alice: "s3cret"}}             # Basic for HTTP, RFC 1929 for SOCKS5
  #   allow: [10.0.0.0/8]                          # client source addresses let in

admin: 127.0.0.1:9090         # optional: /metrics /healthz /routes /hops

defaults:                     # every hop inherits these; each proxy may override them
  connect_timeout: 5s         # reach this hop
  handshake_timeout: 10s      # this hop's answer to our CONNECT/SOCKS request
  idle_timeout: 10m           # an established tunnel with no bytes either way is closed
  deadline: 30s               # building one connection's whole chain, every failover included

proxies:                      # the upstream hops, by name
  corp:     http://alice:secret@proxy.corp.example:3128
  bastion:  socks5://10.1.0.5:1080
  bastion2: {url: "socks5://10.1.0.6:1080", connect_timeout: 2s}
  exit-a:   {url: "https://exit-a.example.net:443", ca: exit-ca.pem}
  exit-b:   {url: "https://exit-b.example.net:443", ca: exit-ca.pem}

chains:                       # ordered hops; a list at one position is that hop's failover group
  lab: [corp, [bastion, bastion2]]
  private:
    - corp
    - {pick: [exit-a, exit-b], strategy: random}   # failover (default) | round_robin | random

routes:                       # first match wins; a destination that matches nothing is refused
  - {match: "*.lab.corp.example", via: lab}
  - {match: ["10.20.0.0/16", "db.corp.example:5432"], via: [corp, bastion]}   # an inline chain
  - {match: ".ads.example", via: reject}
  - {match: "*", via: private, fallback: [direct]}
"""


@pytest.fixture
def base(tmp_path: Path) -> str:
    (tmp_path / "exit-ca.pem").write_text("not checked here\n")
    (tmp_path / "server.pem").write_text("cert\n")
    (tmp_path / "server.key").write_text("key\n")
    return str(tmp_path)


def parse(text: str, base_dir: str | None = None) -> Config:
    return parse_config(textwrap.dedent(text), "routes.yaml", base_dir=base_dir)


def errors(text: str, base_dir: str | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse(text, base_dir)
    assert all(isinstance(e, ConfigError) for e in info.value.errors)
    assert str(info.value) == "\n".join(str(e) for e in info.value.errors)
    return [str(e) for e in info.value.errors]


def test_design_example_parses(base: str) -> None:
    config = parse_config(DESIGN_EXAMPLE, "routes.yaml", base_dir=base)
    assert config.path == "routes.yaml"
    assert [ln.address for ln in config.listeners] == [Address("127.0.0.1", 8080)]
    assert config.listeners[0].line == 2
    assert config.admin is not None
    assert config.admin.address == Address("127.0.0.1", 9090)
    assert config.defaults == Timeouts(connect=5.0, handshake=10.0, idle=600.0, deadline=30.0)

    assert [p.name for p in config.proxies] == ["corp", "bastion", "bastion2", "exit-a", "exit-b"]
    corp = config.proxy("corp")
    assert corp is not None
    assert (corp.scheme, corp.address) == ("http", Address("proxy.corp.example", 3128))
    assert (corp.username, corp.password) == ("alice", "secret")
    assert corp.line == 17
    bastion2 = config.proxy("bastion2")
    assert bastion2 is not None
    assert (bastion2.connect_timeout, bastion2.handshake_timeout) == (2.0, 10.0)
    exit_a = config.proxy("exit-a")
    assert exit_a is not None
    assert exit_a.ca == str(Path(base) / "exit-ca.pem")
    assert exit_a.address == Address("exit-a.example.net", 443)

    chains = dict(config.chains)
    assert list(chains) == ["lab", "private"]
    lab = chains["lab"]
    assert (lab.kind, lab.label) == ("chain", "lab")
    assert [g.label() for g in lab.hops] == ["corp", "[bastion, bastion2]"]
    assert [g.strategy for g in lab.hops] == ["failover", "failover"]
    private = chains["private"]
    assert private.hops[1].strategy == "random"
    assert [p.name for p in private.hops[1].candidates] == ["exit-a", "exit-b"]

    r0, r1, r2, r3 = config.routes
    assert [r.index for r in config.routes] == [0, 1, 2, 3]
    assert [r.line for r in config.routes] == [30, 31, 32, 33]
    assert r0.via is lab
    assert [p.kind for p in r0.patterns] == ["subdomain"]
    assert [p.kind for p in r1.patterns] == ["cidr", "exact"]
    assert r1.patterns[1].ports == (5432, 5432)
    assert (r1.via.kind, r1.via.label) == ("chain", "corp > bastion")
    assert r2.via == REJECT
    assert (r2.patterns[0].kind, r2.patterns[0].value) == ("domain", "ads.example")
    assert r3.via is private
    assert r3.fallback == (DIRECT,)


def test_load_config_reads_file_relative_to_its_directory(base: str) -> None:
    path = Path(base) / "routes.yaml"
    path.write_text(DESIGN_EXAMPLE)
    config = load_config(path)
    assert config.path == str(path)
    assert config.proxy("exit-b") is not None


def test_load_config_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigErrors) as info:
        load_config(missing)
    (error,) = info.value.errors
    assert (error.file, error.line, error.path) == (str(missing), 0, "")
    assert str(error).startswith(f"{missing}: cannot read: ")


MINIMAL = """\
routes:
  - {match: "*", via: direct}
"""


def test_minimal_config_defaults() -> None:
    config = parse(MINIMAL)
    assert [ln.address for ln in config.listeners] == [Address("127.0.0.1", 8080)]
    assert config.admin is None
    assert config.defaults == Timeouts(5.0, 10.0, 600.0, 30.0)
    assert config.proxies == ()
    assert config.chains == ()
    assert config.routes[0].via == DIRECT


# Each error kind, with its exact "file:line: path: message" text.
ERROR_CASES = [
    ("", ["routes.yaml: empty config"]),
    ("# only a comment\n", ["routes.yaml: empty config"]),
    ("- a\n- b\n", ["routes.yaml:1: expected a mapping, got a list"]),
    (
        MINIMAL + "---\nroutes: []\n",
        ["routes.yaml:3:1: expected a single document in the stream but found another document"],
    ),
    (
        "routes:\n  - {match: !!binary aGk=, via: direct}\n",
        ["routes.yaml:2: routes[0].match: expected a string, got a !!binary value"],
    ),
    (
        "routes: [\n",
        ["routes.yaml:2:1: expected the node content, but found '<stream end>'"],
    ),
    (
        "routes:\n  - via: direct\n    match: *.lab.example\n",
        ['routes.yaml:3:13: bad alias: quote a value that starts with *, as in "*.example.com"'],
    ),
    ("listen: 127.0.0.1:8080\n", ["routes.yaml: no routes: every destination would be refused"]),
    ("routes: []\n", ["routes.yaml:1: routes: no routes: every destination would be refused"]),
    (
        MINIMAL + "proxy:\n  a: http://h\n",
        ['routes.yaml:3: unknown key "proxy" (did you mean "proxies"?)'],
    ),
    (
        MINIMAL + "defaults: {connect_timeout: 5s, connect_timeout: 6s}\n",
        ["routes.yaml:3: defaults.connect_timeout: duplicate key (first at line 3)"],
    ),
    (
        MINIMAL + "defaults:\n  deadline: soon\n",
        [
            "routes.yaml:4: defaults.deadline: not a duration: 'soon' "
            "(write e.g. 250ms, 5s, 1m30s, 1h)"
        ],
    ),
    (
        MINIMAL + "defaults:\n  idle_timeout: 0\n",
        ["routes.yaml:4: defaults.idle_timeout: duration must be positive, got 0"],
    ),
    (
        MINIMAL + "defaults:\n  idel_timeout: 5s\n",
        ['routes.yaml:4: defaults: unknown key "idel_timeout" (did you mean "idle_timeout"?)'],
    ),
    (
        MINIMAL + "listen: [localhost:8080, proxy.example:8080]\n",
        ['routes.yaml:3: listen[1]: listen on an IP address, not a name: "proxy.example"'],
    ),
    (
        MINIMAL + "listen:\n  - 127.0.0.1\n",
        ["routes.yaml:4: listen[0]: expected IP:PORT or [IPv6]:PORT: no port: '127.0.0.1'"],
    ),
    (
        MINIMAL + "listen:\n  - {address: 127.0.0.1:1, allow: [10.0.0.0/8, nope]}\n",
        ['routes.yaml:4: listen[0].allow[1]: not an IP range: "nope"'],
    ),
    (
        MINIMAL + "listen:\n  - {tls: {cert: server.pem, key: server.key}}\n",
        ['routes.yaml:4: listen[0]: missing "address"'],
    ),
    (
        MINIMAL + "admin: [1]\n",
        ["routes.yaml:3: admin: expected IP:PORT or a mapping, got a list"],
    ),
    (
        "proxies:\n  corp: ftp://proxy.example\nroutes:\n  - {match: '*', via: corp}\n",
        [
            'routes.yaml:2: proxies.corp: unknown scheme "ftp" in "ftp://proxy.example"'
            " (expected http, https, socks5, socks5h, socks4, socks4a, ssh)"
        ],
    ),
    (
        "proxies:\n  corp: {url: 'http://proxy.example/path'}\nroutes:\n"
        "  - {match: '*', via: corp}\n",
        [
            "routes.yaml:2: proxies.corp.url: a proxy URL has no path, query or fragment:"
            ' "http://proxy.example/path"'
        ],
    ),
    (
        "proxies:\n  corp: http://proxy.example:99999\nroutes:\n  - {match: '*', via: corp}\n",
        ['routes.yaml:2: proxies.corp: bad port in "http://proxy.example:99999" (1-65535)'],
    ),
    (
        "proxies:\n  corp:\n    uri: http://p.example\nroutes:\n  - {match: '*', via: direct}\n",
        [
            'routes.yaml:3: proxies.corp: unknown key "uri" (did you mean "url"?)',
            'routes.yaml:3: proxies.corp: missing "url"',
        ],
    ),
    (
        "proxies:\n  direct: http://p.example\nroutes:\n  - {match: '*', via: direct}\n",
        ['routes.yaml:2: proxies.direct: "direct" is reserved'],
    ),
    (
        "proxies:\n  'a b': http://p.example\nroutes:\n  - {match: '*', via: direct}\n",
        ['routes.yaml:2: proxies.a b: bad proxy name "a b": use letters, digits, _ . -'],
    ),
    (
        "proxies:\n  p: {url: 'socks5://p.example', insecure: true}\nroutes:\n"
        "  - {match: '*', via: p}\n",
        ["routes.yaml:2: proxies.p.insecure: only for https proxies, not socks5"],
    ),
    (
        "proxies:\n  p: {url: 'socks5://p.example', resolve: local}\nroutes:\n"
        "  - {match: '*', via: p}\n",
        ["routes.yaml:2: proxies.p.resolve: only for socks4 proxies, not socks5"],
    ),
    (
        "proxies:\n  p: {url: 'https://p.example', ca: missing.pem}\nroutes:\n"
        "  - {match: '*', via: p}\n",
        [
            'routes.yaml:2: proxies.p.ca: no such file: "missing.pem"'
            " (looked for {base}/missing.pem)"
        ],
    ),
    (
        "proxies:\n  p: {url: 'https://p.example', insecure: 'yes please'}\nroutes:\n"
        "  - {match: '*', via: p}\n",
        ["routes.yaml:2: proxies.p.insecure: expected true or false, got a string"],
    ),
    (
        "proxies:\n  p:\n    url: http://p.example\n    handshake_timeout: 1d\nroutes:\n"
        "  - {match: '*', via: p}\n",
        [
            "routes.yaml:4: proxies.p.handshake_timeout: not a duration: '1d'"
            " (write e.g. 250ms, 5s, 1m30s, 1h)"
        ],
    ),
    (
        "proxies:\n  p: {url: 'ftp://p.example', connect_timeout: never, sni: 10.0.0.1}\n"
        "routes:\n  - {match: '*', via: p}\n",
        [
            'routes.yaml:2: proxies.p.url: unknown scheme "ftp" in "ftp://p.example"'
            " (expected http, https, socks5, socks5h, socks4, socks4a, ssh)",
            "routes.yaml:2: proxies.p.connect_timeout: not a duration: 'never'"
            " (write e.g. 250ms, 5s, 1m30s, 1h)",
            'routes.yaml:2: proxies.p.sni: expected a DNS name, not an IP address: "10.0.0.1"',
        ],
    ),
    (
        "proxies:\n  p: {url: 'http://u:pw@p.example', password: pw}\n"
        "routes:\n  - {match: '*', via: p}\n",
        ["routes.yaml:2: proxies.p.password: credentials both here and in url"],
    ),
    (
        "proxies:\n  p: socks4://u:pw@p.example\nroutes:\n  - {match: '*', via: p}\n",
        ["routes.yaml:2: proxies.p.password: socks4 sends a user id but no password"],
    ),
    (
        "proxies:\n  p: http://p.example\nchains:\n  p: [p]\nroutes:\n  - {match: '*', via: p}\n",
        ['routes.yaml:4: chains.p: "p" is already a proxy name'],
    ),
    (
        "proxies:\n  p: http://p.example\nchains:\n  c: []\nroutes:\n  - {match: '*', via: p}\n",
        ["routes.yaml:4: chains.c: empty chain"],
    ),
    (
        "proxies:\n  p: http://p.example\nchains:\n  c: [p, []]\nroutes:\n"
        "  - {match: '*', via: p}\n",
        ["routes.yaml:4: chains.c[1]: empty failover group"],
    ),
    (
        "proxies:\n  p: http://p.example\nchains:\n  c: [p, [p, q]]\nroutes:\n"
        "  - {match: '*', via: p}\n",
        ['routes.yaml:4: chains.c[1][1]: no proxy named "q"'],
    ),
    (
        "proxies:\n  p: http://p.example\nchains:\n  c: [p]\n  d: [c]\nroutes:\n"
        "  - {match: '*', via: p}\n",
        ['routes.yaml:5: chains.d[0]: "c" is a chain; a chain position takes proxy names'],
    ),
    (
        "proxies:\n  p: http://p.example\nchains:\n  c:\n    - {pick: [p], strategy: best}\n"
        "routes:\n  - {match: '*', via: c}\n",
        [
            'routes.yaml:5: chains.c[0].strategy: "best" is not one of'
            " failover, round_robin, random, fastest"
        ],
    ),
    (
        "proxies:\n  p: http://p.example\nchains:\n  c:\n    - {choose: [p]}\n"
        "routes:\n  - {match: '*', via: c}\n",
        [
            'routes.yaml:5: chains.c[0]: missing "pick"',
            'routes.yaml:5: chains.c[0]: unknown key "choose"',
        ],
    ),
    (
        "proxies:\n  p: http://p.example\nroutes:\n  - {match: '*', via: bastoin}\n",
        ['routes.yaml:4: routes[0].via: no chain or proxy named "bastoin"'],
    ),
    (
        "routes:\n  - {match: '*', via: direkt}\n",
        ['routes.yaml:2: routes[0].via: no chain or proxy named "direkt" (did you mean "direct"?)'],
    ),
    (
        "routes:\n  - {match: [a.example, 'b.example:0'], via: direct}\n",
        ["routes.yaml:2: routes[0].match[1]: bad port in pattern: port out of range: 0"],
    ),
    (
        "routes:\n  - match: '10.0.0.0/33'\n    via: direct\n",
        [
            "routes.yaml:2: routes[0].match: bad IP range: '10.0.0.0/33' does not appear"
            " to be an IPv4 or IPv6 network"
        ],
    ),
    (
        "routes:\n  - {match: '*', via: direct, fallbak: [direct]}\n",
        ['routes.yaml:2: routes[0]: unknown key "fallbak" (did you mean "fallback"?)'],
    ),
    (
        "routes:\n  - {via: direct}\n",
        ['routes.yaml:2: routes[0]: missing "match"'],
    ),
    (
        "routes:\n  - {match: '*', via: reject, fallback: direct}\n",
        ["routes.yaml:2: routes[0].fallback: a reject route has no fallback"],
    ),
    (
        "routes:\n  - {match: '*', via: direct, fallback: [direct, nowhere]}\n",
        ['routes.yaml:2: routes[0].fallback[1]: no chain or proxy named "nowhere"'],
    ),
    (
        "routes:\n  - {match: '*', via: {pick: [a]}}\n",
        ["routes.yaml:2: routes[0].via: expected a chain or proxy name or a list, got a mapping"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), ERROR_CASES)
def test_error_names_file_line_and_path(text: str, expected: list[str], base: str) -> None:
    assert errors(text, base) == [e.format(base=base) for e in expected]


def test_yaml_syntax_error_has_the_line() -> None:
    (error,) = errors("routes:\n  - {match: '*', via: direct}\nproxies:\n  a: [\n  b: ]]\n")
    assert re.match(r"routes\.yaml:5:[0-9]+: ", error), error


def test_yaml_syntax_error_has_line_and_column() -> None:
    (error,) = errors("routes:\n  - {match: '*', via: direct\n")
    assert error.startswith("routes.yaml:3:1: "), error


def test_a_tab_says_indent_with_spaces() -> None:
    (error,) = errors("routes:\n\t- {match: '*', via: direct}\n")
    assert error == "routes.yaml:2:1: a tab character: indent with spaces, not tabs"


def test_a_misspelt_top_level_key_comes_before_what_follows_from_it() -> None:
    assert errors("route:\n  - {match: '*', via: direct}\n") == [
        'routes.yaml:1: unknown key "route" (did you mean "routes"?)',
        "routes.yaml: no routes: every destination would be refused",
    ]


def test_every_error_is_reported() -> None:
    text = """\
        listen: [localhost:80, "foo:1"]
        defaults: {connect_timeout: -1s, idel_timeout: 5}
        proxies:
          corp: http://alice:pw@proxy.corp.example:3128/x
          reject: socks5://h.example
          ok: socks5://h.example
        chains:
          c: [ok, missing]
          d: []
        routes:
          - {match: "*.lab", via: bastoin}
          - {match: ["10.0.0.0/33", "h.example:0"], via: corp}
          - {match: "h.example", via: c}
          - {match: "*", vai: direct}
        """
    assert errors(text) == [
        'routes.yaml:1: listen[1]: listen on an IP address, not a name: "foo"',
        "routes.yaml:2: defaults.connect_timeout: not a duration: '-1s'"
        " (write e.g. 250ms, 5s, 1m30s, 1h)",
        'routes.yaml:2: defaults: unknown key "idel_timeout" (did you mean "idle_timeout"?)',
        "routes.yaml:4: proxies.corp: a proxy URL has no path, query or fragment:"
        ' "http://***@proxy.corp.example:3128/x"',
        'routes.yaml:5: proxies.reject: "reject" is reserved',
        'routes.yaml:8: chains.c[1]: no proxy named "missing"',
        "routes.yaml:9: chains.d: empty chain",
        'routes.yaml:11: routes[0].via: no chain or proxy named "bastoin"',
        "routes.yaml:12: routes[1].match[0]: bad IP range: '10.0.0.0/33' does not appear"
        " to be an IPv4 or IPv6 network",
        "routes.yaml:12: routes[1].match[1]: bad port in pattern: port out of range: 0",
        'routes.yaml:14: routes[3]: missing "via"',
        'routes.yaml:14: routes[3]: unknown key "vai" (did you mean "via"?)',
    ]


def test_references_to_broken_definitions_stay_quiet() -> None:
    text = """\
        proxies:
          corp: http://proxy.example:0
        chains:
          lab: [corp]
        routes:
          - {match: "*", via: lab}
          - {match: "*", via: corp}
        """
    assert errors(text) == [
        'routes.yaml:2: proxies.corp: bad port in "http://proxy.example:0" (1-65535)'
    ]


SECRET = "Sup3rS3cret"
SECRET_CASES = [
    f"proxies:\n  p: http://alice:{SECRET}@proxy.example:3128/path\n",
    f"proxies:\n  p: http://alice:{SECRET}@proxy.example:http\n",
    f"proxies:\n  p: ftp://alice:{SECRET}@proxy.example\n",
    f"proxies:\n  p: alice:{SECRET}@proxy.example:3128\n",
    f"proxies:\n  p: http://alice:{SECRET}@bad host\n",
    f"proxies:\n  p: http://alice:{SECRET}@\n",
    f"proxies:\n  p: http://alice:{SECRET}\n",
    f"proxies:\n  p: http://alice:{SECRET}/\n",
    f"proxies:\n  p: alice:{SECRET}\n",
    f"proxies:\n  p: http://alice:{SECRET}/more\n",
    f"proxies:\n  p: http://:{SECRET}@proxy.example\n",
    f"proxies:\n  p: http://alice:{SECRET}@proxy.example:3128?x=1\n",
    f"proxies:\n  p: http://al%40ce:{SECRET}/x@proxy.example:3128/\n  p: socks5://h.example\n",
    f"proxies:\n  p: {{url: 'http://alice:{SECRET}@p.example', password: '{SECRET}'}}\n",
    f"proxies:\n  p: {{url: 'http://p.example', password: '{SECRET}'}}\n",
    f"proxies:\n  p: {{url: 'socks4://p.example', username: u, password: '{SECRET}'}}\n",
    f"proxies:\n  p: {{url: 'http://p.example', username: u, password: [{SECRET}]}}\n",
    f"proxies:\n  p: {{url: 'http://u:{SECRET}@p.example', ca: x.pem}}\n",
    f"proxies:\n  p: {{url: 'http://p.example', username: u, password: *{SECRET}}}\n",
    f"listen:\n  - {{address: 'x:1', auth: {{users: {{alice: [{SECRET}]}}}}}}\n",
    # the host forgotten, a ":" inside the password
    f"proxies:\n  p: 'http://alice:{SECRET}:x'\n",
    f"proxies:\n  p: 'http://alice:{SECRET}:x:1'\n",
    f"proxies:\n  p: 'http://alice:x:{SECRET}'\n",
]


@pytest.mark.parametrize("text", SECRET_CASES)
def test_credentials_never_appear_in_errors(text: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse(text + "routes:\n  - {match: '*', via: nowhere}\n")
    assert info.value.errors
    assert SECRET not in str(info.value)
    assert SECRET not in repr(info.value)
    for error in info.value.errors:
        assert SECRET not in str(error)
        assert SECRET not in error.message


def test_credentials_never_appear_in_reprs(base: str) -> None:
    text = f"""\
        listen:
          - {{address: "127.0.0.1:8080", auth: {{users: {{alice: "{SECRET}"}}}}}}
        proxies:
          url: http://alice:{SECRET}@proxy.example:3128
          keys: {{url: "socks5://s.example", username: bob, password: "{SECRET}"}}
        routes:
          - {{match: "*", via: [url, keys]}}
        """
    config = parse(text, base)
    url_proxy, key_proxy = config.proxies
    assert (url_proxy.username, url_proxy.password) == ("alice", SECRET)
    assert (key_proxy.username, key_proxy.password) == ("bob", SECRET)
    assert config.listeners[0].users == (("alice", SECRET),)
    for shown in (repr(config), str(config), repr(url_proxy), url_proxy.describe()):
        assert SECRET not in shown
        assert "alice" not in shown


def test_url_credentials_are_percent_decoded() -> None:
    config = parse(
        """\
        proxies:
          p: "http://al%40ce:p%3Ass@w/rd@proxy.example"
        routes:
          - {match: "*", via: p}
        """
    )
    (proxy,) = config.proxies
    assert (proxy.username, proxy.password) == ("al@ce", "p:ss@w/rd")
    assert proxy.address == Address("proxy.example", 8080)


def test_username_without_password() -> None:
    config = parse(
        """\
        proxies:
          h: http://user@proxy.example
          s4: socks4a://userid@s4.example
        routes:
          - {match: "*", via: [h, s4]}
        """
    )
    h, s4 = config.proxies
    assert (h.username, h.password) == ("user", "")
    assert (s4.username, s4.password) == ("userid", None)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("250ms", 0.25),
        ("5s", 5.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0.5h", 1800.0),
        ("10", 10.0),
        ("2.5", 2.5),
        (" 5s ", 5.0),
        (7, 7.0),
        (0.1, 0.1),
        ("1m30s", 90.0),
        ("1h30m", 5400.0),
        ("2s500ms", 2.5),
        ("1h0m5s", 3605.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        *("", "s", "5 sec", "-1s", "0", "0s", "0ms", "1d", "5S", "1e3", "inf", "nan"),
        *("30s1m", "1m1m", "1m30", "1m 30s", "5s-1s"),
        *(True, 0, -3, math.inf, math.nan, 10**400, None, [5]),
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        parse_duration(value)


def test_durations_in_config() -> None:
    config = parse(
        """\
        defaults:
          connect_timeout: 250ms
          handshake_timeout: 3
          idle_timeout: 1.5
          deadline: 1h
        proxies:
          a: http://a.example
          b: {url: "http://b.example", connect_timeout: 2m}
        routes:
          - {match: "*", via: [a, b]}
        """
    )
    assert config.defaults == Timeouts(connect=0.25, handshake=3.0, idle=1.5, deadline=3600.0)
    a, b = config.proxies
    assert (a.connect_timeout, a.handshake_timeout) == (0.25, 3.0)
    assert (b.connect_timeout, b.handshake_timeout) == (120.0, 3.0)


def test_ipv6_listen_and_proxy_addresses(base: str) -> None:
    config = parse(
        """\
        listen:
          - "[::1]:8080"
          - address: "[2001:DB8::1]:8443"
            tls: {cert: server.pem, key: server.key}
            auth: {users: {alice: "pw", bob: 1234}}
            allow: [10.0.0.0/8, "2001:db8::/32"]
          - localhost:8081
        admin: "[::1]:9090"
        proxies:
          v6: socks5://[2001:db8::5]:1081
          v6default: "http://[::1]"
        routes:
          - {match: "[2001:db8::/32]:443", via: [v6, v6default]}
        """,
        base,
    )
    plain, tls, local = config.listeners
    assert plain.address == Address("::1", 8080)
    assert tls.address == Address("2001:db8::1", 8443)
    assert tls.tls is not None
    assert tls.tls.cert == str(Path(base) / "server.pem")
    assert tls.tls.key == str(Path(base) / "server.key")
    assert tls.users == (("alice", "pw"), ("bob", "1234"))
    assert tls.allow == ("10.0.0.0/8", "2001:db8::/32")
    assert local.address == Address("127.0.0.1", 8081)
    assert config.admin is not None
    assert config.admin.address == Address("::1", 9090)
    v6, v6default = config.proxies
    assert v6.address == Address("2001:db8::5", 1081)
    assert v6default.address == Address("::1", 8080)
    assert config.routes[0].patterns[0].value == "2001:db8::/32"


def test_single_listener_without_a_list() -> None:
    config = parse("listen: 127.0.0.2:3128\n" + MINIMAL)
    assert [ln.address for ln in config.listeners] == [Address("127.0.0.2", 3128)]


def test_port_zero_lets_the_kernel_choose() -> None:
    config = parse("listen: ['127.0.0.1:0', '[::1]:0']\nadmin: 127.0.0.1:0\n" + MINIMAL)
    assert [ln.address for ln in config.listeners] == [
        Address("127.0.0.1", 0),
        Address("::1", 0),
    ]
    assert config.admin is not None
    assert config.admin.address == Address("127.0.0.1", 0)


def test_listener_files_must_exist(base: str) -> None:
    text = """\
        listen:
          - address: 127.0.0.1:8443
            tls: {cert: server.pem, key: nope.key}
        routes:
          - {match: "*", via: direct}
        """
    assert errors(text, base) == [
        f'routes.yaml:3: listen[0].tls.key: no such file: "nope.key" (looked for {base}/nope.key)'
    ]


def test_fallback_forms() -> None:
    config = parse(
        """\
        proxies:
          a: http://a.example
          b: socks5://b.example
        chains:
          ab: [a, b]
        routes:
          - {match: one.example, via: a, fallback: direct}
          - {match: two.example, via: ab, fallback: [b, direct]}
          - {match: three.example, via: direct, fallback: [[a, [a, b]]]}
          - {match: four.example, via: [b, a]}
        """
    )
    one, two, three, four = config.routes
    chains = dict(config.chains)
    assert one.via.label == "a"
    assert one.via.hops == (HopGroup((config.proxies[0],)),)
    assert one.fallback == (DIRECT,)
    assert two.via is chains["ab"]
    assert [v.label for v in two.fallback] == ["b", "direct"]
    assert three.via == DIRECT
    (inline,) = three.fallback
    assert inline.label == "a > [a, b]"
    assert four.fallback == ()
    assert four.via.label == "b > a"


def test_match_accepts_a_list_and_a_string() -> None:
    config = parse(
        """\
        routes:
          - match: ["a.example", ".b.example:443", "re:^c[0-9]$"]
            via: direct
          - {match: "*", via: reject}
        """
    )
    assert [p.kind for p in config.routes[0].patterns] == ["exact", "domain", "regex"]
    assert config.routes[1].patterns[0].kind == "any"


SOCKS4_PREFIX = """\
proxies:
  s4: socks4://10.0.0.4:1080
  s4local: {url: "socks4://10.0.0.5:1080", resolve: local}
  s4a: socks4a://10.0.0.6:1080
  named: http://named.example:3128
  ip: http://10.0.0.7:3128
  v6: http://[2001:db8::7]:3128
"""


@pytest.mark.parametrize(
    ("via", "problem"),
    [
        ("[s4, ip]", None),
        ("[s4local, named]", None),
        ("[s4a, named]", None),
        ("[named, s4]", None),
        (
            "[s4, named]",
            'routes.yaml:9: routes[0].via[1]: socks4 proxy "s4" cannot send the name'
            ' "named.example" of "named"; use socks4a or resolve: local',
        ),
        (
            "[ip, [s4a, s4], [ip, named]]",
            'routes.yaml:9: routes[0].via[2]: socks4 proxy "s4" cannot send the name'
            ' "named.example" of "named"; use socks4a or resolve: local',
        ),
        (
            "[s4local, v6]",
            'routes.yaml:9: routes[0].via[1]: socks4 proxy "s4local" cannot reach'
            ' the IPv6 hop "v6"',
        ),
    ],
)
def test_socks4_cannot_send_names(via: str, problem: str | None) -> None:
    text = SOCKS4_PREFIX + f"routes:\n  - {{match: '*', via: {via}}}\n"
    if problem is None:
        parse(text)
    else:
        assert errors(text) == [problem]


def test_socks4_rule_applies_to_named_chains() -> None:
    text = (
        SOCKS4_PREFIX + "chains:\n  c:\n    - s4\n    - named\nroutes:\n  - {match: '*', via: c}\n"
    )
    assert errors(text) == [
        'routes.yaml:11: chains.c[1]: socks4 proxy "s4" cannot send the name "named.example"'
        ' of "named"; use socks4a or resolve: local'
    ]


def test_https_options(base: str) -> None:
    config = parse(
        """\
        proxies:
          h: {url: "HTTPS://h.example", insecure: true, sni: Front.Example.}
        routes:
          - {match: "*", via: h}
        """,
        base,
    )
    (h,) = config.proxies
    assert (h.scheme, h.address, h.insecure, h.sni) == (
        "https",
        Address("h.example", 443),
        True,
        "front.example",
    )


def test_errors_are_sorted_by_line() -> None:
    text = """\
        routes:
          - {match: "*", via: nowhere}
        proxies:
          p: ftp://x.example
        """
    lines = [int(e.split(":")[1]) for e in errors(text)]
    assert lines == sorted(lines) == [2, 4]


def test_breaker_settings_in_defaults_and_per_proxy() -> None:
    config = parse(
        """\
        defaults: {max_fails: 3, fail_window: 30s, fail_timeout: 1m}
        proxies:
          a: http://10.0.0.1:3128
          b: {url: "http://10.0.0.2:3128", max_fails: 1, fail_timeout: 5s}
        routes:
          - {match: "*", via: [[a, b]]}
        """
    )
    assert (config.defaults.max_fails, config.defaults.fail_window) == (3, 30.0)
    a, b = config.proxies
    assert (a.max_fails, a.fail_window, a.fail_timeout) == (3, 30.0, 60.0)
    assert (b.max_fails, b.fail_window, b.fail_timeout) == (1, 30.0, 5.0)


def test_bad_breaker_settings_are_located() -> None:
    got = errors(
        """\
        defaults: {max_fails: 0}
        proxies:
          a: {url: "http://10.0.0.1:3128", max_fails: many, fail_timeout: soon}
        routes:
          - {match: "*", via: a}
        """
    )
    assert got[0].startswith("routes.yaml:1: defaults.max_fails: expected a whole number")
    assert got[1].startswith("routes.yaml:3: proxies.a.max_fails: expected a whole number")
    assert got[2].startswith("routes.yaml:3: proxies.a.fail_timeout: ")


@pytest.mark.parametrize("address", ["0.0.0.0:8080", "'[::]:8080'", "192.0.2.10:3128"])
def test_a_listener_others_can_reach_must_not_be_open_by_accident(address: str) -> None:
    got = errors(f"listen: [{address}]\n" + MINIMAL)
    assert len(got) == 1
    assert got[0].startswith("routes.yaml:1: listen[0]: ")
    assert "neither auth: nor allow:" in got[0]
    for ok in (
        f"listen:\n  - {{address: {address}, open: true}}\n",
        f"listen:\n  - {{address: {address}, allow: [10.0.0.0/8]}}\n",
        f"listen:\n  - {{address: {address}, auth: {{users: {{a: b}}}}}}\n",
    ):
        assert str(parse(ok + MINIMAL).listeners[0].address) == address.strip("'")


def test_users_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "users.txt").write_text("# operators\nalice:s3cret\n\nbob:pa:ss\n")
    config = parse(
        "listen:\n  - {address: 0.0.0.0:8080, auth: {users_file: users.txt}}\n" + MINIMAL,
        str(tmp_path),
    )
    assert dict(config.listeners[0].users) == {"alice": "s3cret", "bob": "pa:ss"}
    assert "s3cret" not in repr(config)
    (tmp_path / "bad.txt").write_text("alice-without-password-secret\n")
    got = errors(
        "listen:\n  - {address: 0.0.0.0:8080, auth: {users_file: bad.txt}}\n" + MINIMAL,
        str(tmp_path),
    )
    assert got[0].endswith("bad.txt:1: expected name:password")
    assert "secret" not in got[0].replace("bad.txt", "")


def test_limits_policy_and_http_options() -> None:
    config = parse(
        "limits: {max_connections: 50, client_timeout: 2s, header_bytes: 8192, header_fields: 40}\n"
        "deny: ['*.internal.example', '10.0.0.0/8', '*:25']\n"
        "allow_ports: [80, 443, '8000-8999']\n"
        "http: {via: gw-1, x_forwarded_for: true}\n"
        "routes:\n  - {match: '*', via: direct, anonymous: true}\n"
    )
    assert (config.limits.max_connections, config.limits.client_timeout) == (50, 2.0)
    assert (config.limits.header_bytes, config.limits.header_fields) == (8192, 40)
    assert [p.text for p in config.policy.deny] == ["*.internal.example", "10.0.0.0/8", "*:25"]
    assert config.policy.allow_ports == ((80, 80), (443, 443), (8000, 8999))
    assert (config.http.via, config.http.x_forwarded_for) == ("gw-1", True)
    assert config.routes[0].anonymous
    assert parse("http: {via: false}\n" + MINIMAL).http.via is None


def test_bad_policy_values_are_located() -> None:
    got = errors(
        "limits: {max_connections: 0, client_timeout: never}\n"
        "deny: ['re:[']\n"
        "allow_ports: [0, '9-1', http]\n"
        "http: {via: 'two words'}\n" + MINIMAL
    )
    text = "\n".join(got)
    assert "routes.yaml:1: limits.max_connections: " in text
    assert "routes.yaml:1: limits.client_timeout: " in text
    assert "routes.yaml:2: deny[0]: " in text
    assert "routes.yaml:3: allow_ports[0]: " in text
    assert "routes.yaml:3: allow_ports[1]: " in text
    assert "routes.yaml:3: allow_ports[2]: " in text
    assert "routes.yaml:4: http.via: " in text


# -- loading cannot be made to hang or explode --------------------------------------------


def test_a_billion_laughs_is_refused() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    text = "\n".join(lines) + "\nroutes: [{match: '*', via: direct}]\n"
    assert errors(text) == ["routes.yaml: aliases expand the file to over 100,000 more nodes"]


def test_an_alias_loop_is_refused() -> None:
    text = "x: &a [*a]\nroutes: [{match: '*', via: direct}]\n"
    assert errors(text) == ["routes.yaml: an alias refers to a node that contains it (a loop)"]


def test_a_shared_mapping_through_an_alias_still_works() -> None:
    config = parse(
        "proxies:\n"
        "  a: &hop {url: 'http://10.0.0.1:3128', connect_timeout: 1s}\n"
        "  b: *hop\n"
        "routes: [{match: '*', via: [[a, b]]}]\n"
    )
    assert [p.connect_timeout for p in config.proxies] == [1.0, 1.0]


@pytest.mark.parametrize("special", ["fifo", "directory", "/dev/zero"])
def test_only_a_regular_file_is_read(tmp_path: Path, special: str) -> None:
    if special == "fifo":
        path = tmp_path / "routes.yaml"
        os.mkfifo(path)  # no writer: opening it for reading would block forever
    elif special == "directory":
        path = tmp_path
    else:
        path = Path(special)
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert [str(e) for e in caught.value.errors] == [f"{path}: cannot read: not a regular file"]


def test_a_file_over_4_mib_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "routes.yaml"
    path.write_text("routes: [{match: '*', via: direct}]\n" + "# padding\n" * (1 << 19))
    with pytest.raises(ConfigErrors) as caught:
        load_config(path)
    assert [str(e) for e in caught.value.errors] == [f"{path}: cannot read: larger than 4 MiB"]


def test_allow_local_takes_addresses_not_names() -> None:
    config = parse(MINIMAL + "allow_local: ['10.0.0.5', '192.168.0.0/16:22', '[::1]']\n")
    assert [p.text for p in config.policy.allow_local] == [
        "10.0.0.5",
        "192.168.0.0/16:22",
        "[::1]",
    ]
    assert errors(MINIMAL + "allow_local: ['db.example']\n") == [
        "routes.yaml:3: allow_local[0]: 'db.example': name an address or a range"
    ]


def test_an_admin_endpoint_others_can_reach_must_have_auth_or_say_open() -> None:
    assert errors(MINIMAL + "admin: 0.0.0.0:9090\n") == [
        "routes.yaml:3: admin: 0.0.0.0:9090 is reachable from other machines and has no "
        "auth:, so anyone could read the route table and hop health; add auth: {users: ...}, "
        "or open: true if you mean it"
    ]
    with_auth = parse(MINIMAL + "admin: {address: 0.0.0.0:9090, auth: {users: {ops: pw}}}\n")
    assert with_auth.admin is not None
    assert with_auth.admin.users == (("ops", "pw"),)
    assert "pw" not in repr(with_auth.admin)
    opened = parse(MINIMAL + "admin: {address: '0.0.0.0:9090', open: true}\n")
    assert opened.admin is not None
    assert opened.admin.open
