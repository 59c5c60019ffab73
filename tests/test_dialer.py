"""The dialer against scripted fake hops over real loopback sockets.

Each scenario row: the chain (a list of positions, each a list of fake-hop behaviours),
what must come out (ok, or the client-facing status), and which failures were recorded,
in order, as (hop index, behaviour of the charged candidate, phase).
"""

from __future__ import annotations

import time

import anyio
import pytest
from fakes import FakeHop, start_echo, start_hop, task_group

from chainer.errors import ChainFailed, HopError, Refused
from chainer.models import DIRECT, REJECT, Address, HopGroup, Proxy, Timeouts, Via
from chainer.outbound.dialer import Dialer

pytestmark = pytest.mark.anyio

FAST = Timeouts(connect=1.0, handshake=0.5, idle=5.0, deadline=5.0)


def proxy(hop: FakeHop, name: str, **kw: object) -> Proxy:
    return Proxy(
        name,
        "http",
        Address("127.0.0.1", hop.port),
        connect_timeout=float(kw.pop("connect_timeout", 1.0)),  # type: ignore[arg-type]
        handshake_timeout=float(kw.pop("handshake_timeout", 0.5)),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


async def build(tg: anyio.abc.TaskGroup, layout: list[list[str]]) -> tuple[Via, dict[str, str]]:
    """Start fake hops for a layout; names are `p<pos>c<cand>`; returns the Via and
    a map name -> behaviour."""
    groups = []
    behaviours: dict[str, str] = {}
    for pos, cands in enumerate(layout):
        proxies = []
        for c, behaviour in enumerate(cands):
            hop = await start_hop(tg, behaviour)
            name = f"p{pos + 1}c{c + 1}"
            behaviours[name] = behaviour
            proxies.append(proxy(hop, name))
        groups.append(HopGroup(tuple(proxies)))
    return Via("chain", "test", tuple(groups)), behaviours


SCENARIOS = [
    # layout, expected outcome, recorded failures (index, behaviour, phase)
    ([["ok"]], "ok", []),
    ([["ok"], ["ok"], ["ok"]], "ok", []),
    ([["refused", "ok"]], "ok", [(1, "refused", "connect")]),
    ([["ok"], ["silent", "ok"]], "ok", [(2, "silent", "handshake")]),
    ([["ok"], ["status:502", "ok"]], "ok", [(2, "status:502", "destination")]),
    ([["ok"], ["refused", "ok"]], "ok", [(2, "refused", "connect")]),
    ([["split"], ["ok"]], "ok", []),
    ([["garbage", "ok"]], "ok", [(1, "garbage", "handshake")]),
    ([["close_mid"]], 502, [(1, "close_mid", "handshake")]),
    ([["close"]], 502, [(1, "close", "handshake")]),
    ([["status:407"], ["ok"]], 502, [(1, "status:407", "handshake")]),
    ([["silent"]], 504, [(1, "silent", "handshake")]),
    ([["status:504"]], 504, [(1, "status:504", "destination")]),
    # hop 1's 502 about hop 2 is hop 2's failure; both candidates of hop 2 are tried
    ([["ok"], ["refused", "refused"]], 502, [(2, "refused", "connect"), (2, "refused", "connect")]),
    # the destination fails from the only last hop: other hop-1 candidates would reach
    # the same last hop, so they are not tried
    ([["ok", "ok"], ["status:502"]], 502, [(2, "status:502", "destination")]),
    # but a last hop unreachable from hop 1's first candidate sends us to its second
    ([["ok", "ok"], ["refused"]], 502, [(2, "refused", "connect"), (2, "refused", "connect")]),
]


@pytest.mark.parametrize(("layout", "expected", "failures"), SCENARIOS)
async def test_scenario(
    layout: list[list[str]], expected: object, failures: list[tuple[int, str, str]]
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        via, behaviours = await build(tg, layout)
        dialer = Dialer(FAST)
        started = time.monotonic()
        target = Address("127.0.0.1", echo.port)
        if expected == "ok":
            dialed = await dialer.dial("r", [via], target)
            async with dialed.stream:
                await dialed.stream.send(b"ping")
                assert await dialed.stream.receive() == b"ping"
            attempts = dialed.attempts
            assert [t.index for t in dialed.trace] == list(range(1, len(layout) + 1))
        else:
            with pytest.raises(ChainFailed) as info:
                await dialer.dial("r", [via], target)
            attempts = info.value.attempts
            assert (504 if info.value.timeout else 502) == expected
        got = [(a.index, behaviours[a.hop], a.phase) for a in attempts]
        assert got == failures
        assert time.monotonic() - started < 3.0


async def test_silent_candidate_costs_its_handshake_timeout_only() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        first = await start_hop(tg, "ok")
        silent = await start_hop(tg, "silent")
        good = await start_hop(tg, "ok")
        via = Via(
            "chain",
            "t",
            (
                HopGroup((proxy(first, "first"),)),
                HopGroup((proxy(silent, "silent", handshake_timeout=0.3), proxy(good, "good"))),
            ),
        )
        started = time.monotonic()
        dialed = await Dialer(FAST).dial("r", [via], Address("127.0.0.1", echo.port))
        elapsed = time.monotonic() - started
        await dialed.stream.aclose()
        assert 0.3 <= elapsed < 2.0
        (attempt,) = dialed.attempts
        assert (attempt.hop, attempt.phase, attempt.timeout) == ("silent", "handshake", True)
        assert str(attempt) == "hop 2 (silent): no answer in 300ms"


async def test_answer_coalesced_with_destination_bytes_loses_nothing() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg, banner=b"SSH-2.0-banner\r\n")
        hop = await start_hop(tg, "coalesced")
        via = Via("chain", "t", (HopGroup((proxy(hop, "h"),)),))
        dialed = await Dialer(FAST).dial("r", [via], Address("127.0.0.1", echo.port))
        async with dialed.stream:
            got = b""
            with anyio.fail_after(2):
                while len(got) < 16:
                    got += await dialed.stream.receive()
            assert got == b"SSH-2.0-banner\r\n"
            await dialed.stream.send(b"after")
            assert await dialed.stream.receive() == b"after"


async def test_credentials_go_only_to_their_hop() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        a = await start_hop(tg, "ok")
        b = await start_hop(tg, "ok")
        via = Via(
            "chain",
            "t",
            (
                HopGroup((proxy(a, "a", username="alice", password="s3cret"),)),
                HopGroup((proxy(b, "b"),)),
            ),
        )
        dialed = await Dialer(FAST).dial("r", [via], Address("127.0.0.1", echo.port))
        await dialed.stream.aclose()
        # base64("alice:s3cret")
        assert b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n" in a.requests[0]
        assert b"Proxy-Authorization" not in b.requests[0]
        assert a.requests[0].startswith(f"CONNECT 127.0.0.1:{b.port} HTTP/1.1\r\n".encode())
        assert b.requests[0].startswith(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\n".encode())


async def test_denied_hop_is_reported_as_denied_without_credentials() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        hop = await start_hop(tg, "status:407")
        via = Via("chain", "t", (HopGroup((proxy(hop, "corp", username="u", password="pw9"),)),))
        with pytest.raises(ChainFailed) as info:
            await Dialer(FAST).dial("r", [via], Address("127.0.0.1", echo.port))
        (attempt,) = info.value.attempts
        assert attempt.denied
        assert attempt.status == 407
        assert "pw9" not in str(info.value)
        assert "pw9" not in repr(attempt)
        assert str(attempt) == "hop 1 (corp): answered 407 Nope (denied)"


async def test_names_are_sent_to_the_hop_not_resolved() -> None:
    async with task_group() as tg:
        hop = await start_hop(tg, "ok")
        via = Via("chain", "t", (HopGroup((proxy(hop, "h"),)),))
        with pytest.raises(ChainFailed) as info:
            await Dialer(FAST).dial("r", [via], Address("only-the-hop-knows.invalid", 443))
        # the fake hop could not resolve it and said 502: the name went to the hop
        assert hop.requests[0].startswith(b"CONNECT only-the-hop-knows.invalid:443 HTTP/1.1")
        (attempt,) = info.value.attempts
        assert (attempt.phase, attempt.status) == ("destination", 502)


async def test_fallback_after_chain_fails() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        dead = await start_hop(tg, "refused")
        via = Via("chain", "t", (HopGroup((proxy(dead, "dead"),)),))
        dialed = await Dialer(FAST).dial("r", [via, DIRECT], Address("127.0.0.1", echo.port))
        async with dialed.stream:
            assert dialed.via is DIRECT
            assert [a.hop for a in dialed.attempts] == ["dead"]


async def test_reject_is_refused() -> None:
    with pytest.raises(Refused):
        await Dialer(FAST).dial("r", [REJECT], Address("example.com", 443))


async def test_overall_deadline_bounds_everything() -> None:
    async with task_group() as tg:
        silent = await start_hop(tg, "silent")
        slow = Proxy("s", "http", Address("127.0.0.1", silent.port), handshake_timeout=30)
        via = Via("chain", "t", (HopGroup((slow,)),))
        started = time.monotonic()
        with pytest.raises(ChainFailed) as info:
            await Dialer(Timeouts(deadline=0.3)).dial("r", [via], Address("example.com", 1))
        assert time.monotonic() - started < 2.0
        assert info.value.timeout
        assert "deadline 300ms exceeded" in str(info.value)


async def test_direct_refused_is_clear() -> None:
    from fakes import free_port

    port = free_port()
    with pytest.raises(ChainFailed) as info:
        await Dialer(FAST).dial("r", [DIRECT], Address("127.0.0.1", port))
    (attempt,) = info.value.attempts
    assert isinstance(attempt, HopError)
    assert attempt.index == 0
    assert str(attempt) == f"direct: 127.0.0.1:{port}: connection refused"


async def test_cancelling_a_dial_closes_the_half_built_chain() -> None:
    async with task_group() as tg:
        first = await start_hop(tg, "ok")
        silent = await start_hop(tg, "silent")
        via = Via(
            "chain",
            "t",
            (
                HopGroup((proxy(first, "first"),)),
                HopGroup((proxy(silent, "silent", handshake_timeout=30),)),
            ),
        )
        with anyio.move_on_after(0.3):
            await Dialer(Timeouts(deadline=30)).dial("r", [via], Address("example.com", 1))
        # the silent hop sees its connection closed once the dial is cancelled
        with anyio.fail_after(2):
            await silent.closed_event.wait()
        assert (silent.accepted, silent.closed) == (1, 1)
