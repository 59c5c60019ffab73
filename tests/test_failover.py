"""Failover that knows which hop failed: breakers, strategies, per-edge health, failover
in place, reporting. Breakers run on a fake clock; dialer scenarios on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from pathlib import Path

import anyio
import pytest
from fakes import (
    FakeClock,
    FakeHop,
    free_port,
    running_chainer,
    start_echo,
    start_hop,
    task_group,
)

from chainer.errors import ChainFailed
from chainer.models import Address, HopGroup, Proxy, Timeouts, Via
from chainer.outbound.breaker import Breaker
from chainer.outbound.dialer import Dialer
from chainer.outbound.health import Health

FAST = Timeouts(connect=1.0, handshake=0.5, idle=5.0, deadline=5.0)


def node(name: str, port: int = 1, **kw: object) -> Proxy:
    return Proxy(name, "http", Address("127.0.0.1", port), **kw)  # type: ignore[arg-type]


# -- the breaker state machine -----------------------------------------------------------


def test_breaker_opens_after_max_fails_within_the_window() -> None:
    b = Breaker(max_fails=3, fail_window=10, fail_timeout=5)
    assert not b.failure(0, "x")
    assert not b.failure(4, "x")
    assert not b.failure(15, "x")  # the first two fell out of the window
    assert not b.failure(16, "x")
    assert b.failure(17, "x")
    assert b.state == "open"
    assert not b.allow(21.9)
    assert b.allow(22.0)  # half-open: one trial
    # mypy keeps `b.state` narrowed to "open" by the assert above, across allow()
    assert b.state == "half_open"  # type: ignore[comparison-overlap]
    assert not b.allow(22.1)  # a second connection does not get a trial
    assert b.success()
    assert b.state == "closed"
    assert b.allow(22.2)


def test_breaker_backs_off_and_caps() -> None:
    b = Breaker(max_fails=1, fail_window=10, fail_timeout=2)
    t = 0.0
    periods = []
    for _ in range(8):
        assert b.failure(t, "down")
        periods.append(b.open_for)
        t = b.closes_at
        assert b.allow(t)  # the trial...
    assert periods == [2, 4, 8, 16, 32, 64, 64, 64]  # doubling, capped at 32x
    assert b.success()
    assert b.failure(t, "down")
    assert b.open_for == 2  # a success resets the backoff


def test_a_lost_trial_frees_its_slot() -> None:
    b = Breaker(max_fails=1, fail_window=10, fail_timeout=1)
    b.failure(0, "x")
    assert b.allow(1)
    assert not b.allow(2)
    assert b.allow(62)  # the trial's outcome never came back (cancelled): lease over


# -- strategies ----------------------------------------------------------------------------


def test_round_robin_rotates_per_connection() -> None:
    a, b, c = node("a"), node("b"), node("c")
    group = HopGroup((a, b, c), "round_robin")
    health = Health()
    firsts = [health.order(group)[0].name for _ in range(6)]
    assert firsts == ["a", "b", "c", "a", "b", "c"]


def test_random_shuffles_per_connection() -> None:
    group = HopGroup(tuple(node(n) for n in "abcd"), "random")
    health = Health(rng=random.Random(7))
    orders = {tuple(p.name for p in health.order(group)) for _ in range(40)}
    assert len(orders) > 5
    assert all(sorted(o) == list("abcd") for o in orders)


def test_fastest_measures_unknowns_then_keeps_its_leader_through_noise() -> None:
    a, b = node("a"), node("b")
    group = HopGroup((a, b), "fastest")
    health = Health()
    assert [p.name for p in health.order(group)] == ["a", "b"]  # nothing measured
    health.record_success("", a, 0.010)
    assert [p.name for p in health.order(group)] == ["b", "a"]  # b unmeasured: try it
    health.record_success("", b, 0.011)
    assert health.order(group)[0] is a
    health.record_success("", b, 0.007)  # b's average now a hair below a's: noise
    assert health.latency(b) is not None
    assert health.latency(b) < health.latency(a)  # type: ignore[operator]
    assert health.order(group)[0] is a  # the leader keeps its place
    for _ in range(10):
        health.record_success("", b, 0.002)  # b clearly faster now
    assert health.order(group)[0] is b


# -- candidates and trials, on a fake clock ------------------------------------------------


def _opened(health: Health, *proxies: Proxy, via: str = "") -> None:
    for p in proxies:
        health.record_failure(via, p, "down", denied=False)


def _half_open(*names: str) -> tuple[FakeClock, Health, list[Proxy]]:
    """Hops whose circuits opened 5s ago and are due a trial now."""
    clock = FakeClock()
    health = Health(clock=clock)
    proxies = [node(name, fail_timeout=5.0) for name in names]
    _opened(health, *proxies)
    clock.advance(5.0)
    return clock, health, proxies


def test_candidates_pass_over_open_circuits_and_say_which() -> None:
    a, b, c = node("a"), node("b"), node("c")
    health = Health(clock=FakeClock())
    _opened(health, b)
    skipped: list[str] = []
    got = health.candidates(HopGroup((a, b, c)), "", on_skip=lambda p: skipped.append(p.name))
    assert [p.name for p in got] == ["a", "c"]
    assert skipped == ["b"]


def test_candidates_leave_out_the_excluded() -> None:
    a, b = node("a"), node("b")
    got = Health().candidates(HopGroup((a, b)), "", exclude={"a"})
    assert [p.name for p in got] == ["b"]


def test_when_every_circuit_is_open_the_soonest_to_close_is_let_through_once() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    x, y = node("x", fail_timeout=30.0), node("y", fail_timeout=5.0)
    _opened(health, x, y)
    skipped: list[str] = []
    got = health.candidates(HopGroup((x, y)), "", on_skip=lambda p: skipped.append(p.name))
    assert [p.name for p in got] == ["y"]
    assert skipped == ["x", "y"]
    assert not health.allow("", y)  # this connection holds y's trial
    clock.advance(60.0)  # the trial's lease ran out: the next connection may take it
    assert health.allow("", y)


def test_candidates_claim_a_half_open_trial_only_when_its_turn_comes() -> None:
    _, health, (a, b) = _half_open("a", "b")
    got = health.candidates(HopGroup((a, b)), "")
    assert next(got) is a
    assert not health.allow("", a)  # a's trial is taken...
    assert health.allow("", b)  # ...b's was not: nobody asked for b


@pytest.mark.parametrize(
    "exc", [None, RuntimeError("failed elsewhere"), asyncio.CancelledError()], ids=repr
)
def test_a_trial_left_without_an_outcome_gives_the_half_open_slot_back(
    exc: BaseException | None,
) -> None:
    _, health, (x,) = _half_open("x")
    (candidate,) = health.candidates(HopGroup((x,)), "")
    assert not health.allow("", x)  # this connection holds the trial
    with contextlib.suppress(RuntimeError, asyncio.CancelledError), health.trial("", candidate):
        if exc is not None:
            raise exc
    assert health.allow("", x)  # the clock has not moved: given back, not expired
    assert health.state("", x) == "half_open"


def test_a_trials_outcome_drives_the_breaker_and_the_latency() -> None:
    clock, health, (x,) = _half_open("x")
    (candidate,) = health.candidates(HopGroup((x,)), "")
    with health.trial("", candidate) as trial:
        trial.failure("still down", denied=False)
    assert health.state("", x) == "open"  # failed its trial: open again, for twice as long
    clock.advance(9.9)
    assert health.state("", x) == "open"
    clock.advance(0.1)
    (candidate,) = health.candidates(HopGroup((x,)), "")
    with health.trial("", candidate) as trial:
        trial.success(0.020)
    assert health.state("", x) == "closed"
    assert health.latency(x) == pytest.approx(0.020)  # failures never enter the latency
    with health.trial("", x) as trial:  # reached, then its answer failed: both count
        trial.success(0.010)
        trial.failure("answered garbage", denied=False)
    assert health.state("", x) == "open"


# -- dialer scenarios ----------------------------------------------------------------------


def proxy(hop: FakeHop, name: str, **kw: object) -> Proxy:
    kw.setdefault("connect_timeout", 1.0)
    kw.setdefault("handshake_timeout", 0.5)
    return Proxy(name, "http", Address("127.0.0.1", hop.port), **kw)  # type: ignore[arg-type]


def chain(*groups: tuple[Proxy, ...]) -> Via:
    return Via("chain", "t", tuple(HopGroup(g) for g in groups))


async def dial(
    dialer: Dialer, via: Via, port: int
) -> tuple[str, list[tuple[int, str, str]], list[tuple[int, str]]]:
    """Dial once; the outcome, the charged failures (index, hop, phase) and the skips."""
    try:
        dialed = await dialer.dial("r", [via], Address("127.0.0.1", port))
    except ChainFailed as exc:
        return "failed", [(a.index, a.hop, a.phase) for a in exc.attempts], list(exc.skipped)
    await dialed.stream.aclose()
    return "ok", [(a.index, a.hop, a.phase) for a in dialed.attempts], list(dialed.skipped)


@pytest.mark.anyio
async def test_silent_candidate_costs_its_timeout_once_then_is_skipped() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        first, silent, good = [await start_hop(tg, b) for b in ("ok", "silent", "ok")]
        via = chain(
            (proxy(first, "first"),),
            (proxy(silent, "silent", handshake_timeout=0.4), proxy(good, "good")),
        )
        dialer = Dialer(FAST, Health())
        started = time.monotonic()
        assert await dial(dialer, via, echo.port) == ("ok", [(2, "silent", "handshake")], [])
        assert 0.4 <= time.monotonic() - started < 1.5
        for _ in range(3):
            started = time.monotonic()
            assert await dial(dialer, via, echo.port) == ("ok", [], [(2, "silent")])
            assert time.monotonic() - started < 0.3
        assert silent.accepted == 1


@pytest.mark.anyio
async def test_refused_and_502_candidates_cost_no_timeout() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        first = await start_hop(tg, "ok")
        bad502 = await start_hop(tg, "status:502")
        good = await start_hop(tg, "ok")
        via = chain(
            (proxy(first, "first"),),
            (node("gone", free_port()), proxy(bad502, "bad502"), proxy(good, "good")),
        )
        started = time.monotonic()
        outcome, charged, _ = await dial(Dialer(FAST, max_attempts=16), via, echo.port)
        assert time.monotonic() - started < 0.4
    assert outcome == "ok"
    # "gone" is charged with the 502 hop 1 gave about it; bad502 with nothing: its 502
    # was about the destination, and the next candidate reached it.
    assert charged == [(2, "gone", "connect"), (2, "bad502", "destination")]


@pytest.mark.anyio
async def test_denied_hop_is_not_retried_for_the_same_connection_and_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        corp = await start_hop(tg, "status:407")
        spare = await start_hop(tg, "ok")
        second = await start_hop(tg, "ok")
        # corp denies us when asked for hop 2; hop 2 has two candidates, but corp
        # must be asked only once in this connection.
        via = chain((proxy(corp, "corp"), proxy(spare, "spare")), (proxy(second, "second"),))
        with caplog.at_level(logging.WARNING, logger="chainer.health"):
            outcome, charged, _ = await dial(Dialer(FAST), via, echo.port)
    assert outcome == "ok"
    assert charged == [(1, "corp", "handshake")]
    assert len(corp.requests) == 1
    assert "circuit open: corp denied us (check its credentials or policy)" in caplog.text


@pytest.mark.anyio
async def test_health_is_per_edge() -> None:
    """bastion unreachable from corp-a says nothing about bastion from corp-b."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        corp_a = await start_hop(tg, "ok")
        corp_b = await start_hop(tg, "ok")
        bastion_hop = await start_hop(tg, "ok")
        health = Health()
        dialer = Dialer(FAST, health)
        bastion = proxy(bastion_hop, "bastion")
        a, b = proxy(corp_a, "corp-a"), proxy(corp_b, "corp-b")
        health.record_failure("corp-a", bastion, "unreachable from a", denied=False)
        assert health.state("corp-a", bastion) == "open"
        assert health.state("corp-b", bastion) == "closed"
        assert health.state("", bastion) == "closed"
        # via corp-a: bastion's circuit is open, and since it is the only candidate it is
        # still tried (most likely to recover), and works: its circuit closes. The log
        # line must not call it skipped: it was used.
        assert await dial(dialer, chain((a,), (bastion,)), echo.port) == ("ok", [], [])
        assert health.state("corp-a", bastion) == "closed"
        assert await dial(dialer, chain((b,), (bastion,)), echo.port) == ("ok", [], [])


@pytest.mark.anyio
async def test_when_every_candidate_is_open_the_soonest_to_recover_is_tried() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    x, y = node("x", free_port(), fail_timeout=30.0), node("y", free_port(), fail_timeout=5.0)
    health.record_failure("", x, "down", denied=False)
    health.record_failure("", y, "down", denied=False)
    outcome, charged, skipped = await dial(Dialer(FAST, health), chain((x, y)), 9)
    assert outcome == "failed"
    assert skipped == [(1, "x")]  # y was tried after all: not "skipped"
    assert charged == [(1, "y", "connect")]  # y reopens sooner: it alone was tried


@pytest.mark.anyio
async def test_failover_in_place_reuses_the_previous_hops_connection() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        corp = await start_hop(tg, "keepalive")
        good = await start_hop(tg, "ok")
        via = chain((proxy(corp, "corp"),), (node("gone", free_port()), proxy(good, "good")))
        outcome, charged, _ = await dial(Dialer(FAST), via, echo.port)
    assert outcome == "ok"
    assert charged == [(2, "gone", "connect")]
    assert corp.accepted == 1  # one TCP connection to corp...
    assert len(corp.requests) == 2  # ...asked twice


@pytest.mark.anyio
async def test_a_hop_that_closes_its_kept_connection_is_asked_again_on_a_new_one() -> None:
    """The fake "ok" hop says 502 without Connection: close, then closes: chainer must
    rebuild the prefix rather than blame hop 1 for closing."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        corp = await start_hop(tg, "ok")
        good = await start_hop(tg, "ok")
        via = chain((proxy(corp, "corp"),), (node("gone", free_port()), proxy(good, "good")))
        outcome, charged, _ = await dial(Dialer(FAST), via, echo.port)
    assert outcome == "ok"
    assert charged == [(2, "gone", "connect")]
    assert corp.accepted == 2


@pytest.mark.anyio
async def test_backtracking_tries_hop_2_from_each_hop_1_candidate() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        blind = await start_hop(tg, "ok")
        other = await start_hop(tg, "ok")
        exit_node = node("exit", free_port())  # nothing listens: both hop-1s say 502
        health = Health()
        via = chain((proxy(blind, "blind"), proxy(other, "other")), (exit_node,))
        outcome, charged, _ = await dial(Dialer(FAST, health), via, echo.port)
    assert outcome == "failed"
    assert charged == [(2, "exit", "connect"), (2, "exit", "connect")]
    assert (len(blind.requests), len(other.requests)) == (1, 1)
    # each failure was charged to its own edge; hop 1 candidates stay healthy
    assert health.state("blind", exit_node) == "open"
    assert health.state("other", exit_node) == "open"
    assert health.state("", exit_node) == "closed"
    assert health.state("", proxy(blind, "blind")) == "closed"


# -- reporting, end to end ---------------------------------------------------------------


@pytest.mark.anyio
async def test_client_error_and_log_list_every_attempt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with task_group() as tg:
        first = await start_hop(tg, "ok")
        silent = await start_hop(tg, "silent")
        gone = free_port()
        yaml = (
            f"listen: ['127.0.0.1:{free_port()}']\n"
            "defaults: {handshake_timeout: 300ms, deadline: 5s}\n"
            f"proxies:\n  first: {first.url()}\n  silent: {silent.url()}\n"
            f"  gone: http://127.0.0.1:{gone}\n"
            "routes:\n  - {match: '*', via: [first, [gone, silent]]}\n"
        )
        async with running_chainer(yaml, tmp_path) as bound:
            with anyio.fail_after(5):
                async with await anyio.connect_tcp("127.0.0.1", bound[0][1]) as s:
                    await s.send(b"CONNECT example.test:443 HTTP/1.1\r\nHost: x\r\n\r\n")
                    answer = b""
                    try:
                        while True:
                            answer += await s.receive()
                    except anyio.EndOfStream:
                        pass
    head = answer.split(b"\r\n\r\n")[0].decode()
    assert head.startswith("HTTP/1.1 504 ")
    status = next(line for line in head.split("\r\n") if line.startswith("Proxy-Status:"))
    assert "error=connection_read_timeout" in status
    assert (
        "hop 2 (gone): hop 1 (first) could not reach it: answered 502 Bad Gateway (connect, at "
        in status
    )
    assert "hop 2 (silent): no answer in 300ms (handshake, at " in status
    access = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    assert len(access) == 1
    assert "outcome=timeout" in access[0]
    assert "hop 2 (gone)" in access[0]
    assert "hop 2 (silent)" in access[0]
    assert "circuit open: gone (from first)" in caplog.text
    assert "circuit open: silent (from first)" in caplog.text


@pytest.mark.anyio
async def test_a_successful_connection_logs_the_failovers_it_took(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chainer.access")
    async with task_group() as tg:
        echo = await start_echo(tg)
        good = await start_hop(tg, "ok")
        yaml = (
            f"listen: ['127.0.0.1:{free_port()}']\n"
            f"proxies:\n  good: {good.url()}\n  gone: http://127.0.0.1:{free_port()}\n"
            "routes:\n  - {match: '*', via: [[gone, good]]}\n"
        )
        async with running_chainer(yaml, tmp_path) as bound:
            with anyio.fail_after(5):
                async with await anyio.connect_tcp("127.0.0.1", bound[0][1]) as s:
                    await s.send(
                        f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                    )
                    assert (await s.receive()).startswith(b"HTTP/1.1 200 ")
            # the line is written when the connection ends
            with anyio.fail_after(2):
                while not any(r.name == "chainer.access" for r in caplog.records):  # noqa: ASYNC110 (a log record has no event)
                    await anyio.sleep(0.01)
    line = next(r.getMessage() for r in caplog.records if r.name == "chainer.access")
    assert "outcome=ok" in line
    assert "hops=good:" in line
    assert 'failovers="hop 1 (gone): ' in line


@pytest.mark.interop
@pytest.mark.anyio
async def test_silent_hop_in_a_group_of_real_proxies_costs_one_second_once(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The issue's own acceptance case, with curl as the client: [tinyproxy] then
    [a silent proxy, squid], handshake_timeout 1s."""
    from realproxies import Origin, curl

    tinyproxy = request.getfixturevalue("tinyproxy")
    squid = request.getfixturevalue("squid")
    origin: Origin = request.getfixturevalue("tls_origin")
    async with task_group() as tg:
        silent = await start_hop(tg, "silent")
        yaml = (
            f"listen: ['127.0.0.1:{free_port()}']\n"
            "defaults: {handshake_timeout: 1s}\n"
            f"proxies:\n  tiny: http://{tinyproxy.hostport}\n  silent: {silent.url()}\n"
            f"  squid: http://{squid.hostport}\n"
            "routes:\n  - {match: '*', via: [tiny, [silent, squid]]}\n"
        )
        async with running_chainer(yaml, tmp_path) as bound:
            times = []
            for i in range(4):
                started = time.monotonic()
                result = await anyio.to_thread.run_sync(
                    curl,
                    "-x",
                    f"http://127.0.0.1:{bound[0][1]}",
                    "--cacert",
                    origin.ca_pem or "",
                    origin.url(f"/try{i}"),
                )
                times.append(time.monotonic() - started)
                assert (result.returncode, result.body) == (0, f"origin:/try{i}".encode())
    assert 0.9 < times[0] < 2.5
    assert all(t < 0.5 for t in times[1:]), times
    assert silent.accepted == 1


# -- regressions from review ---------------------------------------------------------------


@pytest.mark.anyio
async def test_a_kept_connection_failing_during_a_rebuild_is_charged_not_leaked() -> None:
    """[A keep-alive] -> [B] -> [C1 gone, C2]: B says 502 about C1 and goes away; the
    rebuild of [A, B] then meets A's kept-alive 502 about B. That must be an ordinary
    failure of B, not an escaped internal signal."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        a = await start_hop(tg, "keepalive")
        b = await start_hop(tg, "dies")
        c2 = await start_hop(tg, "ok")
        via = chain((proxy(a, "a"),), (proxy(b, "b"),), (node("c1", free_port()), proxy(c2, "c2")))
        outcome, charged, _ = await dial(Dialer(FAST), via, echo.port)
    assert outcome == "failed"
    assert (2, "b", "connect") in charged


@pytest.mark.anyio
async def test_a_half_open_candidate_retried_after_a_stale_connection_is_not_skipped() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        a = await start_hop(tg, "ok")  # 502 about c1 without Connection: close, then closes
        c2_hop = await start_hop(tg, "ok")
        clock = FakeClock()
        health = Health(clock=clock)
        c2 = proxy(c2_hop, "c2", fail_timeout=5.0)
        health.record_failure("a", c2, "earlier trouble", denied=False)
        clock.advance(5.0)  # c2 is half-open now: one trial allowed
        assert health.state("a", c2) == "half_open"
        via = chain((proxy(a, "a"),), (node("c1", free_port()), c2))
        outcome, charged, skipped = await dial(Dialer(FAST, health), via, echo.port)
    assert (outcome, charged, skipped) == ("ok", [(2, "c1", "connect")], [])
    assert health.state("a", c2) == "closed"


@pytest.mark.anyio
async def test_a_denied_hop_is_not_asked_again_after_backtracking() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        a1, a2 = await start_hop(tg, "ok"), await start_hop(tg, "ok")
        corp = await start_hop(tg, "status:407")
        x = await start_hop(tg, "ok")
        via = chain((proxy(a1, "a1"), proxy(a2, "a2")), (proxy(corp, "corp"),), (proxy(x, "x"),))
        outcome, charged, _ = await dial(Dialer(FAST), via, echo.port)
    assert outcome == "failed"
    assert charged == [(2, "corp", "handshake")]
    assert len(corp.requests) == 1


@pytest.mark.anyio
async def test_a_silent_inner_hop_is_blamed_when_nothing_is_reached_through_it() -> None:
    """hop 1 accepts and never answers; the hop-2 candidates' connect_timeout fires first.
    Once no hop-2 candidate was reached through it, hop 1 itself is charged and its
    alternative used."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        silent = await start_hop(tg, "silent")
        good = await start_hop(tg, "ok")
        x1, x2 = await start_hop(tg, "ok"), await start_hop(tg, "ok")
        health = Health()
        via = chain(
            (proxy(silent, "silent", handshake_timeout=5.0), proxy(good, "good")),
            (proxy(x1, "x1", connect_timeout=0.2), proxy(x2, "x2", connect_timeout=0.2)),
        )
        outcome, charged, _ = await dial(Dialer(FAST, health), via, echo.port)
    assert outcome == "ok"
    assert charged == [(2, "x1", "connect"), (2, "x2", "connect"), (1, "silent", "handshake")]
    assert health.state("", proxy(silent, "silent")) == "open"


@pytest.mark.anyio
async def test_running_out_of_attempts_moves_on_to_the_fallback() -> None:
    from chainer.models import DIRECT
    from chainer.outbound.dialer import MAX_ATTEMPTS

    async with task_group() as tg:
        echo = await start_echo(tg)
        firsts = [proxy(await start_hop(tg, "ok"), f"a{i}") for i in range(5)]
        seconds = tuple(node(f"b{i}", free_port()) for i in range(4))
        via = chain(tuple(firsts), seconds)
        dialed = await Dialer(FAST).dial("r", [via, DIRECT], Address("127.0.0.1", echo.port))
        await dialed.stream.aclose()
    assert dialed.via is DIRECT
    assert len(dialed.attempts) <= MAX_ATTEMPTS


@pytest.mark.anyio
async def test_a_trial_cut_short_by_the_deadline_is_released() -> None:
    async with task_group() as tg:
        silent_hop = await start_hop(tg, "silent")
        clock = FakeClock()
        health = Health(clock=clock)
        silent = proxy(silent_hop, "silent", handshake_timeout=30.0, fail_timeout=5.0)
        health.record_failure("", silent, "earlier", denied=False)
        clock.advance(5.0)  # half-open: this dial takes the one trial
        with pytest.raises(ChainFailed):
            await Dialer(Timeouts(deadline=0.3), health).dial(
                "r", [chain((silent,))], Address("example.test", 443)
            )
        # the deadline ended the trial without a verdict: the next connection may try at
        # once (the clock has not moved: not the trial's lease running out)
        assert health.allow("", silent)


@pytest.mark.anyio
async def test_circuit_closing_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        hop = await start_hop(tg, "ok")
        clock = FakeClock()
        health = Health(clock=clock)
        p = proxy(hop, "flappy", fail_timeout=5.0)
        health.record_failure("", p, "earlier", denied=False)
        clock.advance(5.0)
        with caplog.at_level(logging.INFO, logger="chainer.health"):
            assert (await dial(Dialer(FAST, health), chain((p,)), echo.port))[0] == "ok"
    assert "circuit closed: flappy" in caplog.text


# -- a success is an answer; failures are not latency; generic failures -------------------


@pytest.mark.anyio
@pytest.mark.parametrize("behaviour", ["silent", "garbage", "close_mid"])
async def test_a_hop_that_accepts_tcp_but_never_answers_backs_off_as_promised(
    behaviour: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Reaching a hop is not a success: its circuit never logs "closed", and each time its
    trial fails it reopens for twice as long (10s, 20s, 40s, 80s)."""
    clock = FakeClock()
    health = Health(clock=clock)
    async with task_group() as tg:
        echo = await start_echo(tg)
        bad = await start_hop(tg, behaviour)
        hop = proxy(bad, "bad", handshake_timeout=0.2, fail_timeout=10.0)
        dialer = Dialer(FAST, health)
        open_for = []
        with caplog.at_level(logging.DEBUG, logger="chainer.health"):
            for _ in range(4):
                assert (await dial(dialer, chain((hop,)), echo.port))[0] == "failed"
                (edge,) = health.edges()
                assert edge.state == "open"
                assert edge.closes_in is not None
                open_for.append(round(edge.closes_in))
                clock.advance(edge.closes_in)
    assert open_for == [10, 20, 40, 80]
    assert "circuit closed" not in caplog.text
    opened = [r for r in caplog.records if r.getMessage().startswith("circuit open: bad")]
    assert len(opened) == 1, "one warning per episode"
    assert opened[0].levelno == logging.WARNING
    assert health.latency(hop) is None  # it never answered: no set-up time measured


@pytest.mark.anyio
async def test_latency_is_only_successful_set_ups_and_failures_are_counted_apart() -> None:
    clock = FakeClock()
    health = Health(clock=clock)
    async with task_group() as tg:
        echo = await start_echo(tg)
        good = await start_hop(tg, "ok")
        silent = await start_hop(tg, "silent")
        fast = proxy(good, "good")
        slow = proxy(silent, "silent", handshake_timeout=0.3)
        dialer = Dialer(FAST, health)
        assert (await dial(dialer, chain((fast,)), echo.port))[0] == "ok"
        assert (await dial(dialer, chain((slow,)), echo.port))[0] == "failed"
    edges = {e.proxy: e for e in health.edges()}
    assert edges["good"].latency is not None
    assert edges["good"].latency < 0.1  # loopback: well under the 0.3s timeout
    assert edges["good"].failures == 0
    assert edges["silent"].latency is None  # not "as slow as its timeout"
    assert edges["silent"].failures == 1


def test_fastest_puts_candidates_that_failed_since_their_last_success_last() -> None:
    health = Health()
    a, b, c = node("a"), node("b"), node("c")
    group = HopGroup((a, b, c), "fastest")
    health.record_success("", a, 0.010)
    health.record_success("", b, 0.002)
    health.record_failure("", b, "down", denied=False)
    # c was never measured: tried first, once; b is fastest on paper but failed since
    assert [p.name for p in health.order(group)] == ["c", "a", "b"]
    health.record_success("", b, 0.002)
    assert [p.name for p in health.order(group)][1:] == ["b", "a"]


@pytest.mark.anyio
async def test_a_mistyped_destination_takes_no_healthy_hop_down() -> None:
    """A last hop's generic failure (here HTTP 500, as tinyproxy answers for a name it
    cannot resolve) is the destination's: destination_unavailable, and no circuit opens
    however often the same name is asked for."""
    health = Health()
    async with task_group() as tg:
        a = await start_hop(tg, "status:500")
        b = await start_hop(tg, "status:500")
        group = (proxy(a, "a"), proxy(b, "b"))
        dialer = Dialer(FAST, health)
        for _ in range(2):
            try:
                await dialer.dial("r", [chain(group)], Address("typo.example", 443))
            except ChainFailed as exc:
                last = exc.last
                assert last is not None
                assert (last.phase, last.proxy_status, last.generic) == (
                    "destination",
                    "destination_unavailable",
                    True,
                )
            else:
                pytest.fail("a 500 about the destination cannot be a tunnel")
        assert health.state("", group[0]) == "closed"
        assert health.state("", group[1]) == "closed"


@pytest.mark.anyio
async def test_a_hop_that_fails_every_destination_is_still_found_out() -> None:
    health = Health()
    async with task_group() as tg:
        broken = await start_hop(tg, "status:500")
        hop = proxy(broken, "broken")
        dialer = Dialer(FAST, health)
        states = []
        for name in ("one.example", "two.example", "one.example", "three.example"):
            with contextlib.suppress(ChainFailed):
                await dialer.dial("r", [chain((hop,))], Address(name, 443))
            states.append(health.state("", hop))
    # two distinct destinations: still theirs; the third distinct one: the hop's
    assert states == ["closed", "closed", "closed", "open"]


@pytest.mark.anyio
async def test_one_request_costs_at_most_max_attempts_upstream(tmp_path: Path) -> None:
    """A chain [first, [six dead candidates]] whose last position is all down: every
    connection to `first` and every CONNECT sent to it counts, rebuilds included."""
    del tmp_path
    async with task_group() as tg:
        first = await start_hop(tg, "ok")
        dead = tuple(node(f"dead{i}", free_port()) for i in range(6))
        via = chain((proxy(first, "first"),), dead)
        dialer = Dialer(FAST, Health(), max_attempts=8)
        outcome, charged, _ = await dial(dialer, via, 9)
    assert outcome == "failed"
    assert first.accepted + len(first.requests) <= 8, (first.accepted, len(first.requests))
    assert len(charged) < 6  # the budget ran out before every candidate was tried
