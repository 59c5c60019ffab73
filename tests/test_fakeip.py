"""The fake-IP table: a name's addresses in both families, remembered both ways, the least
recently used forgotten first, never one a live tunnel holds."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from chainer.models import FakeIp
from chainer.routing.fakeip import Claim, FakeIps

OPTIONS = FakeIp(v4="198.19.0.0/16", v6="fd00:c8::/64", ttl=5, size=3)


def test_a_name_gets_one_slot_in_both_families_and_keeps_it() -> None:
    fakes = FakeIps(OPTIONS)
    assert fakes.addresses("a.internal") == ("198.19.0.1", "fd00:c8::1")
    assert fakes.addresses("b.internal") == ("198.19.0.2", "fd00:c8::2")
    assert fakes.addresses("a.internal") == ("198.19.0.1", "fd00:c8::1")
    assert len(fakes) == 2


def test_an_address_maps_back_to_its_name_in_either_family() -> None:
    fakes = FakeIps(OPTIONS)
    fakes.addresses("a.internal")
    assert fakes.name_of("198.19.0.1") == "a.internal"
    assert fakes.name_of("fd00:c8::1") == "a.internal"
    assert fakes.name_of("198.19.0.2") is None  # never lent
    assert fakes.name_of("198.19.0.0") is None  # the network's own address is never lent
    assert fakes.name_of("10.0.0.1") is None
    assert fakes.covers("198.19.255.254")
    assert not fakes.covers("198.18.0.1")


def test_the_least_recently_used_name_is_forgotten_first() -> None:
    fakes = FakeIps(OPTIONS)
    for name in ("a", "b", "c"):
        fakes.addresses(name)
    fakes.name_of("198.19.0.1")  # a connection to a's address counts as a use
    assert fakes.addresses("d") == ("198.19.0.2", "fd00:c8::2")  # b's slot
    assert fakes.name_of("198.19.0.2") == "d"
    assert fakes.addresses("a") == ("198.19.0.1", "fd00:c8::1")
    assert len(fakes) == 3


def test_a_slot_held_by_a_live_tunnel_is_not_lent_to_another_name() -> None:
    fakes = FakeIps(OPTIONS)
    for name in ("a", "b", "c"):
        fakes.addresses(name)
    claim = fakes.claim("198.19.0.1")
    assert claim is not None
    assert claim.name == "a"
    for name in ("d", "e", "f", "g"):  # every other slot turns over, a's stays
        fakes.addresses(name)
    assert fakes.name_of("198.19.0.1") == "a"
    fakes.release(claim)
    assert fakes.addresses("h") is not None


def test_when_every_slot_is_held_there_is_no_address_to_give() -> None:
    fakes = FakeIps(OPTIONS)
    claims = []
    for i, name in enumerate(("a", "b", "c"), 1):
        fakes.addresses(name)
        claims.append(fakes.claim(f"198.19.0.{i}"))
    assert fakes.addresses("d") is None
    assert fakes.addresses("a") == ("198.19.0.1", "fd00:c8::1")  # held names still answer
    claim = claims[1]
    assert claim is not None
    fakes.release(claim)
    assert fakes.addresses("d") == ("198.19.0.2", "fd00:c8::2")


def test_an_address_of_no_name_cannot_be_claimed() -> None:
    fakes = FakeIps(OPTIONS)
    assert fakes.claim("198.19.0.1") is None
    assert fakes.claim("192.0.2.1") is None


def test_one_family_only() -> None:
    fakes = FakeIps(FakeIp(v4="198.19.0.0/30", v6=None, ttl=5, size=2))
    assert fakes.addresses("a") == ("198.19.0.1", None)
    assert fakes.addresses("b") == ("198.19.0.2", None)
    assert not fakes.covers("fd00:c8::1")
    assert fakes.ranges == ("198.19.0.0/30",)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["ask", "claim", "release"]), st.integers(0, 7)),
        max_size=60,
    )
)
def test_the_table_stays_a_bounded_two_way_map_whatever_happens(
    steps: list[tuple[str, int]],
) -> None:
    fakes = FakeIps(OPTIONS)
    held: dict[int, list[Claim]] = {}
    for action, n in steps:
        name = f"n{n}"
        if action == "ask":
            pair = fakes.addresses(name)
            if pair is not None:
                assert fakes.name_of(pair[0] or "") == name
                assert fakes.name_of(pair[1] or "") == name
        elif action == "claim":
            pair = fakes.addresses(name)
            if pair is not None and pair[0] is not None:
                claim = fakes.claim(pair[0])
                assert claim is not None
                assert claim.name == name
                held.setdefault(claim.slot, []).append(claim)
        elif held:
            slot = sorted(held)[n % len(held)]
            fakes.release(held[slot].pop())
            if not held[slot]:
                del held[slot]
        assert len(fakes) <= OPTIONS.size
        for slot, claims in held.items():
            address = str(ipaddress.IPv4Address("198.19.0.1") + slot)
            assert fakes.name_of(address) == claims[0].name
