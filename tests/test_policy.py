"""Destination policy (deny, ports, loops, the protected ranges of exposed listeners) and
the strict request-head checks, as pure functions."""

from __future__ import annotations

import pytest

from chainer.errors import Refused
from chainer.models import Address, Listener, Policy
from chainer.proto.request import check_request_head, find_head_end
from chainer.routing.policy import Guard
from chainer.routing.table import compile_pattern

LOOPBACK = Listener(Address("127.0.0.1", 8080))
EXPOSED = Listener(Address("0.0.0.0", 8080), open=True)
BOUND = [("127.0.0.1", 8080), ("0.0.0.0", 3128)]


def guard(
    listener: Listener, deny: tuple[str, ...] = (), ports: tuple[tuple[int, int], ...] = ()
) -> Guard:
    policy = Policy(tuple(compile_pattern(p) for p in deny), ports)
    return Guard.for_listener(policy, listener, BOUND)


@pytest.mark.parametrize(
    ("listener", "target", "refused"),
    [
        (LOOPBACK, "127.0.0.1:22", False),  # a loopback listener may reach this machine
        (EXPOSED, "127.0.0.1:22", True),
        (EXPOSED, "127.8.9.10:22", True),
        (EXPOSED, "localhost:22", True),
        (EXPOSED, "db.localhost:5432", True),
        (EXPOSED, "169.254.169.254:80", True),  # cloud metadata
        (EXPOSED, "0.0.0.0:80", True),
        (EXPOSED, "[::1]:22", True),
        (EXPOSED, "[fe80::1]:22", True),
        (EXPOSED, "[::ffff:127.0.0.1]:22", True),
        (EXPOSED, "10.1.2.3:22", False),
        (EXPOSED, "example.com:443", False),
        (LOOPBACK, "127.0.0.1:8080", True),  # ourselves: a loop
        (LOOPBACK, "127.0.0.1:3128", True),  # bound to 0.0.0.0: loopback reaches it
        (LOOPBACK, "127.0.0.2:8080", False),
    ],
)
def test_address_rules(listener: Listener, target: str, refused: bool) -> None:
    host, _, port = target.rpartition(":")
    address = Address(host.strip("[]").replace("::ffff:127.0.0.1", "::ffff:7f00:1"), int(port))
    g = guard(listener)
    if refused:
        with pytest.raises(Refused):
            g.check(address)
    else:
        g.check(address)


def test_deny_patterns_and_ports() -> None:
    g = guard(
        LOOPBACK, deny=("*.internal.example", "10.0.0.0/8", "*:25"), ports=((80, 80), (443, 443))
    )
    for bad in ("a.internal.example:443", "10.9.9.9:443", "mail.example.com:25", "x.test:8443"):
        host, _, port = bad.rpartition(":")
        with pytest.raises(Refused):
            g.check(Address(host, int(port)))
    g.check(Address("example.com", 443))


def test_resolved_addresses_are_screened_for_direct_routes() -> None:
    g = guard(EXPOSED, deny=("203.0.113.0/24",))
    with pytest.raises(Refused):
        g.check_address("127.0.0.1", 80)  # a name that resolved (or was rebound) to loopback
    with pytest.raises(Refused):
        g.check_address("203.0.113.7", 80)
    g.check_address("198.51.100.1", 80)


GOOD = b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (GOOD, None),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n", None),
        (b"GET http://a/ HTTP/1.1\nHost: a\n\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nX: 1\r\n  folded\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost : a\r\n\r\n", 400),
        (b"GET http://a/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (
            b"POST http://a/ HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"POST http://a/ HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST http://a/ HTTP/1.1\r\nContent-Length: 1, 2\r\n\r\n", 400),
        (b"POST http://a/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"GET http://a/" + b"x" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414),
        (b"GET http://a/ HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431),
    ],
)
def test_request_head_checks(head: bytes, expected: int | None) -> None:
    problem = check_request_head(head, max_fields=100)
    assert (problem[0] if problem else None) == expected


def test_find_head_end_sees_crlf_and_bare_lf_ends() -> None:
    assert find_head_end(GOOD + b"EARLY") == len(GOOD)
    assert find_head_end(b"GET / HTTP/1.1\nHost: a\n\nrest") == 24
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: a\r\n") == -1


def test_allow_local_lets_an_exposed_listener_reach_what_it_names() -> None:
    policy = Policy(allow_local=(compile_pattern("127.0.0.1:5432"), compile_pattern("[::1]")))
    exposed = Guard.for_listener(policy, EXPOSED, BOUND)
    exposed.check(Address("127.0.0.1", 5432))
    exposed.check(Address("::1", 22))
    with pytest.raises(Refused):
        exposed.check(Address("127.0.0.1", 22))
    with pytest.raises(Refused):  # never a loop, whatever allow_local says
        Guard.for_listener(
            Policy(allow_local=(compile_pattern("0.0.0.0/0"),)), EXPOSED, BOUND
        ).check(Address("127.0.0.1", 3128))


def test_the_head_ends_at_the_first_blank_line_whatever_follows() -> None:
    # bare LFs first, a CRLF blank line later in the body: the head ends at the first
    assert find_head_end(b"CONNECT a:1 HTTP/1.1\n\n5\r\nhello\r\n0\r\n\r\n") == 22
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody\n\n") == 27
