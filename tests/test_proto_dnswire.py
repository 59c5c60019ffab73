"""proto/dnswire: queries read or found unreadable (never an exception, whatever the
bytes), answers built, replies matched to questions, UDP size limits."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chainer.proto import dnswire
from chainer.proto.dnswire import Query, Unreadable


def query(name: str = "app.chained.test", kind: str = "A", **kw: object) -> bytes:
    return dns.message.make_query(name, kind, **kw).to_wire()  # type: ignore[arg-type]


def read(data: bytes) -> Query:
    parsed = dnswire.read_query(data)
    assert isinstance(parsed, Query), parsed
    return parsed


def test_a_query_is_read() -> None:
    q = read(query("App.Chained.Test.", "AAAA"))
    assert (q.name, q.qtype, q.served) == ("App.Chained.Test", dnswire.AAAA, True)
    assert q.udp_limit == 512
    assert read(query(use_edns=0, payload=1232)).udp_limit == 1232


def test_another_opcode_or_class_is_read_but_not_served() -> None:
    chaos = dns.message.make_query("version.bind", "TXT", "CH").to_wire()
    assert not read(chaos).served
    notify = dns.message.make_query("x.test", "SOA")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert not read(notify.to_wire()).served


def test_answers() -> None:
    q = read(query())
    reply = dns.message.from_wire(dnswire.addresses(q, ["198.19.0.1"], 5))
    assert reply.id == q.message.id
    assert reply.flags & dns.flags.QR
    assert reply.flags & dns.flags.RA
    assert [str(rr) for rr in reply.answer[0]] == ["198.19.0.1"]
    assert reply.answer[0].ttl == 5
    empty = dns.message.from_wire(dnswire.addresses(q, [], 5))
    assert (empty.rcode(), empty.answer) == (dns.rcode.NOERROR, [])
    nx = dns.message.from_wire(dnswire.rcode(q, "NXDOMAIN"))
    assert nx.rcode() == dns.rcode.NXDOMAIN
    ptr = dns.message.from_wire(
        dnswire.pointer(read(query("1.0.19.198.in-addr.arpa", "PTR")), "app.test", 5)
    )
    assert [str(rr) for rr in ptr.answer[0]] == ["app.test."]


def test_reverse_names() -> None:
    assert dnswire.reverse_address("1.0.19.198.in-addr.arpa") == "198.19.0.1"
    assert dnswire.reverse_address("example.com") is None
    assert dnswire.reverse_address("19.198.in-addr.arpa") is None  # not a whole address


def test_a_reply_too_big_for_udp_is_cut_to_a_truncated_one() -> None:
    q = read(query())
    big = dnswire.addresses(q, [f"198.19.0.{i}" for i in range(1, 60)], 5)
    assert len(big) > 512
    cut = dns.message.from_wire(dnswire.udp_fit(q, big))
    assert cut.flags & dns.flags.TC
    assert cut.answer == []
    small = dnswire.addresses(q, ["198.19.0.1"], 5)
    assert dnswire.udp_fit(q, small) == small


def test_replies_are_matched_to_their_question() -> None:
    asked = query()
    q = read(asked)
    answer = dnswire.addresses(q, ["198.19.0.1"], 5)
    assert dnswire.matches(asked, answer)
    assert not dnswire.matches(asked, dnswire.with_id(answer, (q.message.id + 1) % 65536))
    other = dnswire.addresses(read(dnswire.with_id(query("other.test"), q.message.id)), [], 5)
    assert not dnswire.matches(asked, other)
    assert not dnswire.matches(asked, answer[:-2])
    assert dnswire.header_id(dnswire.with_id(asked, 77)) == 77
    assert dnswire.frame(b"abc") == b"\x00\x03abc"


@pytest.mark.parametrize(
    ("packet", "answered"),
    [
        (b"", False),
        (b"\x12\x34", False),
        (query()[:11], False),
        (query()[:-1], True),
        (query() + b"\x00", True),
        (query()[:12] + b"\xc0\x0c\x00\x01\x00\x01", True),
        (dnswire.rcode(read(query()), "NOERROR"), False),  # a response
    ],
)
def test_unreadable_packets(packet: bytes, answered: bool) -> None:
    parsed = dnswire.read_query(packet)
    assert isinstance(parsed, Unreadable)
    assert (parsed.reply is not None) == answered
    if parsed.reply is not None:
        reply = dns.message.from_wire(parsed.reply)
        assert reply.id == int.from_bytes(packet[:2], "big")
        assert reply.rcode() == dns.rcode.FORMERR


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_any_bytes_are_read_or_refused_never_raised(data: bytes) -> None:
    parsed = dnswire.read_query(data)
    assert isinstance(parsed, Query | Unreadable)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 28), st.binary(min_size=1, max_size=4))
def test_a_query_with_bytes_overwritten_is_read_or_refused(at: int, junk: bytes) -> None:
    good = bytearray(query())
    good[at : at + len(junk)] = junk
    parsed = dnswire.read_query(bytes(good))
    if isinstance(parsed, Query):
        dnswire.rcode(parsed, "NXDOMAIN")  # whatever was read can be answered
