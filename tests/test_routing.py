from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chainer.errors import BadTarget
from chainer.models import DIRECT, REJECT, Address, Pattern, Route
from chainer.routing.table import Match, RouteTable, compile_pattern, pattern_matches
from chainer.routing.target import normalize_host


def matches(pattern: str, host: str, port: int = 443) -> bool:
    return pattern_matches(compile_pattern(pattern), Address(host, port))


MATCH_TABLE = [
    # exact names
    ("example.com", "example.com", 443, True),
    ("example.com", "www.example.com", 443, False),
    ("example.com", "notexample.com", 443, False),
    ("Example.COM.", "example.com", 443, True),
    # *.x: subdomains only
    ("*.example.com", "www.example.com", 443, True),
    ("*.example.com", "a.b.example.com", 443, True),
    ("*.example.com", "example.com", 443, False),
    ("*.example.com", "badexample.com", 443, False),
    # .x: apex and subdomains
    (".example.com", "example.com", 443, True),
    (".example.com", "www.example.com", 443, True),
    (".example.com", "badexample.com", 443, False),
    (".example.com", "example.com.evil", 443, False),
    # CIDR: IP literals only, names never
    ("10.0.0.0/8", "10.1.2.3", 443, True),
    ("10.0.0.0/8", "11.1.2.3", 443, False),
    ("10.0.0.0/8", "localhost", 443, False),
    ("10.1.2.3/8", "10.200.0.1", 443, True),  # host bits set: accepted, normalized
    ("2001:db8::/32", "2001:db8::1", 443, True),
    ("2001:db8::/32", "2001:db9::1", 443, False),
    ("2001:db8::/32", "10.1.2.3", 443, False),
    ("10.0.0.0/8", "2001:db8::1", 443, False),
    ("[2001:db8::]/32:443", "2001:db8::5", 443, True),
    ("[2001:db8::/32]:443", "2001:db8::5", 80, False),
    ("10.0.0.0/8:22", "10.9.9.9", 22, True),
    ("10.0.0.0/8:22", "10.9.9.9", 23, False),
    # exact IP literals
    ("10.1.2.3", "10.1.2.3", 443, True),
    ("10.1.2.3", "10.1.2.4", 443, False),
    ("[2001:db8::1]", "2001:db8::1", 443, True),
    ("[2001:DB8:0::1]:443", "2001:db8::1", 443, True),
    ("[2001:db8::1]:443", "2001:db8::1", 80, False),
    ("2001:db8::1", "2001:db8::1", 8080, True),
    # ports and ranges
    ("example.com:443", "example.com", 443, True),
    ("example.com:443", "example.com", 80, False),
    ("example.com:8000-8999", "example.com", 8000, True),
    ("example.com:8000-8999", "example.com", 8999, True),
    ("example.com:8000-8999", "example.com", 9000, False),
    ("example.com:8000-8999", "example.com", 7999, False),
    ("*.example.com:22", "git.example.com", 22, True),
    (".example.com:22", "example.com", 2222, False),
    ("10.1.2.3:22", "10.1.2.3", 22, True),
    # any
    ("*", "anything.example", 1, True),
    ("*", "2001:db8::1", 65535, True),
    ("*:22", "host.example", 22, True),
    ("*:22", "10.0.0.1", 22, True),
    ("*:22", "host.example", 443, False),
    # regex: search semantics, anchored by the user
    (r"re:^api[0-9]+\.example\.com$", "api12.example.com", 443, True),
    (r"re:^api[0-9]+\.example\.com$", "api.example.com", 443, False),
    (r"re:^api[0-9]+\.example\.com$", "xapi1.example.com", 443, False),
    ("re:corp", "www.corp.example", 443, True),
    (r"re:^10\.", "10.0.0.1", 443, True),
    (r"re:\.internal$:8000-8999", "svc.internal", 8080, True),
    (r"re:\.internal$:8000-8999", "svc.internal", 443, False),
]


@pytest.mark.parametrize(("pattern", "host", "port", "expected"), MATCH_TABLE)
def test_pattern_matches(pattern: str, host: str, port: int, expected: bool) -> None:
    assert matches(pattern, host, port) is expected


@pytest.mark.parametrize(
    ("text", "kind", "value", "ports"),
    [
        ("*", "any", "", None),
        ("*:22", "any", "", (22, 22)),
        ("Example.COM.", "exact", "example.com", None),
        ("*.Example.com", "subdomain", "example.com", None),
        (".example.com.", "domain", "example.com", None),
        ("10.1.2.3/8", "cidr", "10.0.0.0/8", None),
        ("2001:DB8::/32", "cidr", "2001:db8::/32", None),
        ("[2001:db8:0::1]:443", "exact", "2001:db8::1", (443, 443)),
        ("host.example:8000-8999", "exact", "host.example", (8000, 8999)),
        ("re:^a$", "regex", "^a$", None),
        ("  spaced.example  ", "exact", "spaced.example", None),
    ],
)
def test_compile_pattern_normalizes(
    text: str, kind: str, value: str, ports: tuple[int, int] | None
) -> None:
    p = compile_pattern(text)
    assert (p.kind, p.value, p.ports) == (kind, value, ports)
    assert p.text == text.strip()


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "exa mple.com",
        "a*.example.com",
        "*.*.example.com",
        "*.",
        ".",
        "*.10.0.0.1",
        "example.com:0",
        "example.com:65536",
        "example.com:",
        "example.com:http",
        "example.com:9000-8000",
        "example.com:1-2-3",
        "10.0.0.0/33",
        "10.0.0.0/abc",
        "example.com/8",
        "2001:db8::/129",
        "[2001:db8::1",
        "[10.1.2.3]",
        "[2001:db8::1]x",
        "2001:db8::zz",
        "re:",
        "re:(unclosed",
        "re:[a-",
        ":443",
    ],
)
def test_bad_patterns_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        compile_pattern(text)


def test_bad_pattern_message_is_short() -> None:
    with pytest.raises(ValueError, match="backwards"):
        compile_pattern("example.com:9000-8000")
    with pytest.raises(ValueError, match="bad regex"):
        compile_pattern("re:(unclosed")


def _route(index: int, *patterns: str, via: str = "direct") -> Route:
    return Route(
        index, tuple(compile_pattern(p) for p in patterns), DIRECT if via == "direct" else REJECT
    )


def test_first_match_wins() -> None:
    routes = [
        _route(0, "*.ads.example", via="reject"),
        _route(1, "10.0.0.0/8", ".example.com:443"),
        _route(2, "*"),
    ]
    table = RouteTable(routes)
    assert table.routes == tuple(routes)

    found = table.match(Address("tracker.ads.example", 443))
    assert found == Match(routes[0], routes[0].patterns[0])

    found = table.match(Address("www.example.com", 443))
    assert found is not None
    assert found.route.index == 1
    assert found.pattern.text == ".example.com:443"

    found = table.match(Address("www.example.com", 80))
    assert found is not None
    assert found.route.index == 2


def test_no_match_is_none() -> None:
    table = RouteTable([_route(0, ".example.com"), _route(1, "10.0.0.0/8")])
    assert table.match(Address("example.org", 443)) is None
    assert table.match(Address("192.168.1.1", 443)) is None
    assert RouteTable([]).match(Address("example.com", 443)) is None


def test_pattern_is_frozen_data() -> None:
    p = compile_pattern("re:^a")
    assert isinstance(p, Pattern)
    assert p == compile_pattern("re:^a")
    assert hash(p) == hash(compile_pattern("re:^a"))


_labels = st.from_regex(r"[a-z][a-z0-9-]{0,8}[a-z0-9]|[a-z]", fullmatch=True)
_hosts = st.lists(_labels, min_size=1, max_size=5).map(".".join)


@given(
    prefix=st.lists(_labels, max_size=3).map(".".join),
    tail=st.sampled_from(["example.com", "xample.com", "example.co", "example.com.evil", "com"]),
)
def test_domain_pattern_matches_apex_and_subdomains(prefix: str, tail: str) -> None:
    host = f"{prefix}.{tail}" if prefix else tail
    expected = host == "example.com" or host.endswith(".example.com")
    assert matches(".example.com", host) is expected
    assert matches("*.example.com", host) is (expected and host != "example.com")


@given(host=_hosts)
def test_domain_pattern_on_arbitrary_names(host: str) -> None:
    expected = host == "example.com" or host.endswith(".example.com")
    assert matches(".example.com", host) is expected


@given(port=st.integers(1, 65535), lo=st.integers(1, 65535), hi=st.integers(1, 65535))
def test_port_range(port: int, lo: int, hi: int) -> None:
    lo, hi = min(lo, hi), max(lo, hi)
    assert matches(f"*:{lo}-{hi}", "h.example", port) is (lo <= port <= hi)


@pytest.mark.parametrize(
    ("pattern", "host", "matches"),
    [
        ("127.0.0.1", "::ffff:127.0.0.1", True),
        ("[::ffff:10.0.0.1]", "10.0.0.1", True),
        ("::ffff:10.0.0.1", "::ffff:a00:1", True),
        ("[::ffff:10.0.0.0]/104", "10.9.9.9", True),
        ("::ffff:10.0.0.0/104", "11.0.0.1", False),
        ("[2001:db8::1]", "2001:db8:0:0::1", True),
    ],
)
def test_an_address_pattern_matches_every_spelling_of_it(
    pattern: str, host: str, matches: bool
) -> None:
    assert pattern_matches(compile_pattern(pattern), Address(normalize_host(host), 80)) is matches


@pytest.mark.parametrize("text", ["[fe80::1%eth0]", "fe80::1%1", "[::1%1]/128"])
def test_a_zone_id_is_no_pattern(text: str) -> None:
    with pytest.raises(ValueError, match=r"\S"):
        compile_pattern(text)


@pytest.mark.parametrize("host", ["::1%1", "[::1%lo]", "fe80::1%eth0", "::ffff:127.0.0.1%\n"])
def test_a_zone_id_is_no_destination(host: str) -> None:
    with pytest.raises(BadTarget):
        normalize_host(host)


@pytest.mark.parametrize("text", ["\u00b9", "\u0663", "\uff18\uff10", "1\u00b2"])
def test_a_port_is_ascii_digits_only(text: str) -> None:
    from chainer.routing.target import parse_port

    with pytest.raises(BadTarget):
        parse_port(text)
