"""The indexed route table decides exactly as the plain scan does, and the fast pattern
parser reads exactly what the general one reads (hypothesis, on random tables,
destinations and pattern texts)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainer.models import DIRECT, Address, Pattern, Route
from chainer.routing.index import PatternIndex
from chainer.routing.patterns import _compile_fast, _compile_general, compile_pattern
from chainer.routing.table import Match, RouteTable, scan_match
from chainer.routing.target import normalize_host

# Few labels and addresses, so that random patterns and destinations often meet.
_LABELS = st.sampled_from(["a", "b", "corp", "x-1", "_svc", "0a"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=4).map(".".join)
_OCTETS = st.sampled_from([0, 1, 10, 128, 255])
_V4 = st.tuples(_OCTETS, _OCTETS, _OCTETS, _OCTETS).map(lambda t: ".".join(map(str, t)))
_V6 = st.tuples(
    st.sampled_from([0x2001, 0xFE80, 0]), st.sampled_from([0xDB8, 0, 0xFFFF]), _OCTETS, _OCTETS
).map(lambda t: str(ipaddress.IPv6Address(t[0] << 112 | t[1] << 96 | t[2] << 8 | t[3])))
# Pattern texts also get spellings that are refused or read differently.
_ODD_V4 = st.tuples(*[st.sampled_from(["0", "10", "255", "010", "256", "00"])] * 4).map(".".join)
_PORT_LIST = [22, 80, 443, 8080]
_PORTS = st.sampled_from(["", ":443", ":80", ":22", ":80-443", ":1-65535", ":8000-8999"])


@st.composite
def patterns(draw: st.DrawFn) -> str:
    ports = draw(_PORTS)
    kind = draw(st.sampled_from(["exact", "sub", "dom", "v4", "v4net", "v6", "v6net", "other"]))
    if kind == "exact":
        return draw(_NAMES) + ports
    if kind == "sub":
        return "*." + draw(_NAMES) + ports
    if kind == "dom":
        return "." + draw(_NAMES) + ports
    if kind == "v4":
        return draw(st.one_of(_V4, _ODD_V4)) + ports
    if kind == "v4net":
        return f"{draw(st.one_of(_V4, _ODD_V4))}/{draw(st.integers(0, 33))}{ports}"
    if kind == "v6":
        address = draw(_V6)
        return f"[{address}]{ports}" if ports else address
    if kind == "v6net":
        spelled = draw(st.sampled_from(["[{a}]/{n}{p}", "[{a}/{n}]{p}", "{a}/{n}{p}"]))
        return spelled.format(a=draw(_V6), n=draw(st.integers(0, 129)), p=ports)
    return draw(st.sampled_from(["*", "*:22", "re:^a\\.", "re:corp$", r"re:^10\.", "re:b:80"]))


def _compiled(text: str) -> Pattern | None:
    try:
        return compile_pattern(text)
    except ValueError:
        return None


@st.composite
def tables(draw: st.DrawFn) -> list[Route]:
    routes = []
    for index in range(draw(st.integers(0, 8))):
        texts = draw(st.lists(patterns(), min_size=1, max_size=6))
        compiled = tuple(p for p in map(_compiled, texts) if p is not None)
        routes.append(Route(index, compiled, DIRECT))
    return routes


destinations = st.builds(
    Address,
    st.one_of(_NAMES, _V4, _V6, st.just("::ffff:10.0.0.1")),
    st.sampled_from(_PORT_LIST),
)


@settings(max_examples=400)
@given(routes=tables(), addrs=st.lists(destinations, min_size=1, max_size=10))
def test_the_index_answers_as_the_scan_does(routes: list[Route], addrs: list[Address]) -> None:
    table = RouteTable(routes)
    for addr in addrs:
        assert table.match(addr) == scan_match(routes, addr)


@settings(max_examples=200)
@given(texts=st.lists(patterns(), max_size=30), addrs=st.lists(destinations, max_size=10))
def test_a_kind_filter_leaves_the_other_patterns_out(
    texts: list[str], addrs: list[Address]
) -> None:
    compiled = [p for p in map(_compiled, texts) if p is not None]
    only = PatternIndex(compiled, kinds=("cidr", "exact"))
    for addr in addrs:
        expected = next(
            (
                n
                for n, p in enumerate(compiled)
                if p.kind in ("cidr", "exact") and scan_match([Route(0, (p,), DIRECT)], addr)
            ),
            None,
        )
        assert only.first(addr) == expected


def test_the_lowest_position_wins_whichever_structure_finds_it() -> None:
    texts = ["re:^www\\.", "*.example.com:443", "www.example.com", ".example.com", "*"]
    routes = [Route(i, (compile_pattern(t),), DIRECT) for i, t in enumerate(reversed(texts))]
    table = RouteTable(routes)
    for addr in (Address("www.example.com", 443), Address("www.example.com", 80)):
        found = table.match(addr)
        assert found is not None
        assert found == scan_match(routes, addr)
    found = table.match(Address("www.example.com", 443))
    assert found == Match(routes[0], routes[0].patterns[0])  # "*" is first in this table


# -- the fast parser ------------------------------------------------------------------------

_NOISE = st.text(alphabet="0123456789abcdefABx:.[]/*-_%", max_size=24)
_PORTS_NOISE = st.sampled_from([":0", ":65536", ":443-80", ":00443", ":1-", ":-1", ":"])


@settings(max_examples=1500)
@given(
    text=st.one_of(
        patterns(),
        _NOISE,
        patterns().map(str.upper),
        st.tuples(patterns(), _PORTS_NOISE).map("".join),
        st.tuples(_NAMES, st.sampled_from([".", "..", "-", "*"])).map("".join),
    )
)
def test_the_fast_parser_reads_what_the_general_one_reads(text: str) -> None:
    fast = _compile_fast(text)
    if fast is not None:
        assert _compile_general(text) == fast


@pytest.mark.parametrize(
    "text",
    [
        "example.com",
        "*.example.com:443",
        ".example.com:8000-8999",
        "10.1.2.3",
        "10.1.2.3:22",
        "10.1.2.3/8",
        "10.0.0.0/8:443-444",
        "2001:db8::1",
        "2001:db8::/32",
        "2001:db8::/32:443",
        "[2001:db8::1]:443",
        "[2001:db8::]/32:443",
        "[2001:db8::/32]:443",
        "[2001:DB8:0::1]",
    ],
)
def test_the_common_shapes_take_the_fast_path(text: str) -> None:
    fast = _compile_fast(text)
    assert fast is not None
    assert fast == _compile_general(text)


@pytest.mark.parametrize(
    "text",
    ["Example.COM", "example.com.", "010.1.2.3", "::ffff:10.0.0.1", "::1", "127.1", "a:0"],
)
def test_uncommon_spellings_go_to_the_general_parser(text: str) -> None:
    assert _compile_fast(text) is None


def test_a_destination_is_looked_up_as_normalized() -> None:
    table = RouteTable([Route(0, (compile_pattern("[::ffff:10.0.0.0]/104"),), DIRECT)])
    assert table.match(Address(normalize_host("::ffff:10.9.9.9"), 443)) is not None
