"""`chainer check`: path-aware probes against scripted fake hops on loopback.

Hops are named `p<position><letter>` after their place in the chain, so a table row can be
read against the layout that produced it.
"""

from __future__ import annotations

import json
import time

import anyio
import pytest
from anyio.abc import TaskGroup
from fakes import start_echo, start_hop, task_group

from chainer.config import parse_config
from chainer.models import Address, Config
from chainer.ops.check import (
    NOT_REACHED,
    CheckReport,
    ProbeResult,
    UnknownSelector,
    check,
    render_json,
    render_table,
    select_chains,
)

pytestmark = pytest.mark.anyio


async def table(
    tg: TaskGroup, chains: dict[str, list[list[str]]], routes: str = '  - {match: "*", via: direct}'
) -> Config:
    """A config whose chains are fake hops with the given behaviours; connect 1s,
    handshake 300ms per hop."""
    proxies, chain_lines = [], []
    for chain, layout in chains.items():
        positions = []
        for pos, candidates in enumerate(layout, 1):
            names = []
            for c, behaviour in enumerate(candidates):
                hop = await start_hop(tg, behaviour)
                name = f"{chain}{pos}{'abcdefgh'[c]}"
                proxies.append(
                    f"  {name}: {{url: {hop.url()}, connect_timeout: 1s, handshake_timeout: 300ms}}"
                )
                names.append(name)
            positions.append(f"[{', '.join(names)}]")
        chain_lines.append(f"  {chain}: [{', '.join(positions)}]")
    text = (
        "defaults: {deadline: 5s}\nproxies:\n"
        + "\n".join(proxies)
        + "\nchains:\n"
        + "\n".join(chain_lines)
        + "\nroutes:\n"
        + routes
        + "\n"
    )
    return parse_config(text, "routes.yaml", base_dir="/")


def rows(report: CheckReport) -> list[tuple[str, str, tuple[str, ...], str]]:
    return [(r.hop, r.candidate, r.path, r.outcome) for r in report.results]


async def test_every_candidate_probed_through_the_hops_before_it() -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        config = await table(tg, {"p": [["ok"], ["refused", "ok"], ["ok"]]})
        target = Address("127.0.0.1", echo.port)
        report = await check(config, "p", target=target)
    assert rows(report) == [
        ("1", "p1a", (), "ok"),
        ("2", "p2a", ("p1a",), "failed"),
        ("2", "p2b", ("p1a",), "ok"),
        ("3", "p3a", ("p1a", "p2b"), "ok"),
        ("target", str(target), ("p1a", "p2b", "p3a"), "ok"),
    ]
    assert report.ok
    assert report.chains[0].working == ("p1a", "p2b", "p3a")
    assert echo.connections == 1
    refused = report.results[1]
    assert "hop 2 (p2a)" in refused.error
    assert refused.latency is None
    assert all(r.latency is not None and r.latency < 1 for r in report.results if r.outcome == "ok")
    text = render_table(report)
    header = text.splitlines()[0].split()
    assert header == ["chain", "hop", "candidate", "via", "result", "latency", "ms", "detail"]
    failed_line = next(line for line in text.splitlines() if " p2a " in line)
    assert "failed" in failed_line
    assert "hop 2 (p2a)" in failed_line
    ok_line = next(line for line in text.splitlines() if " p3a " in line)
    assert "p1a > p2b" in ok_line
    assert " ok " in ok_line
    assert "p: ok via p1a > p2b > p3a" in text


@pytest.mark.parametrize(
    ("layout", "expected"),
    [
        # hop 2 is reached (hop 1 connects to it) but never answers: the step through it
        # times out and names it; everything after it is not reached
        (
            [["ok"], ["silent"], ["ok"]],
            [("1", "ok"), ("2", "ok"), ("3", "timeout"), ("target", "skipped")],
        ),
        ([["ok"], ["silent"]], [("1", "ok"), ("2", "ok"), ("target", "timeout")]),
    ],
)
async def test_a_silent_hop_2_breaks_the_chain_within_its_handshake_timeout(
    layout: list[list[str]], expected: list[tuple[str, str]]
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        config = await table(tg, {"s": layout})
        started = time.monotonic()
        report = await check(config, None, target=Address("127.0.0.1", echo.port))
        took = time.monotonic() - started
    assert took < 1.5
    assert not report.ok
    assert [(r.hop, r.outcome) for r in report.results] == expected
    timed_out = next(r for r in report.results if r.outcome == "timeout")
    assert "hop 2 (s2a): no answer in 300ms" in timed_out.error
    assert 0.25 < timed_out.elapsed < 1.0
    skipped = [r for r in report.results if r.outcome == "skipped"]
    assert all(r.error == NOT_REACHED for r in skipped)
    chain = report.chains[0]
    assert chain.working == ()
    assert "hop 2 (s2a): no answer in 300ms" in chain.problem
    text = render_table(report)
    assert "s: CANNOT BE BUILT" in text
    assert "not reached" in text or len(layout) == 2


async def test_no_working_candidate_means_later_positions_are_not_reached() -> None:
    async with task_group() as tg:
        config = await table(tg, {"r": [["ok"], ["refused", "refused"], ["ok", "ok"]]})
        report = await check(config, "r", target=None)
    assert rows(report) == [
        ("1", "r1a", (), "ok"),
        ("2", "r2a", ("r1a",), "failed"),
        ("2", "r2b", ("r1a",), "failed"),
        ("3", "r3a", ("r1a",), "skipped"),
        ("3", "r3b", ("r1a",), "skipped"),
    ]
    assert not report.ok
    assert report.chains[0].problem.startswith("no working candidate at hop 2: hop 2 (r2b)")


async def test_a_silent_node_is_replaced_by_the_next_one_that_worked() -> None:
    # both hop-2 candidates accept connections; only the second answers requests
    async with task_group() as tg:
        echo = await start_echo(tg)
        config = await table(tg, {"b": [["ok"], ["silent", "ok"], ["ok"]]})
        target = Address("127.0.0.1", echo.port)
        report = await check(config, "b", target=target)
    assert rows(report) == [
        ("1", "b1a", (), "ok"),
        ("2", "b2a", ("b1a",), "ok"),
        ("2", "b2b", ("b1a",), "ok"),
        ("3", "b3a", ("b1a", "b2a"), "timeout"),
        ("3", "b3a", ("b1a", "b2b"), "ok"),
        ("target", str(target), ("b1a", "b2b", "b3a"), "ok"),
    ]
    assert report.ok


async def test_the_last_hop_that_cannot_reach_the_target_fails_the_chain() -> None:
    async with task_group() as tg:
        config = await table(tg, {"t": [["ok"], ["status:502"]]})
        report = await check(config, "t", target=Address("127.0.0.1", 9))
    assert [r.outcome for r in report.results] == ["ok", "ok", "failed"]
    assert not report.ok
    assert report.chains[0].problem.startswith("target 127.0.0.1:9 not reached: hop 2 (t2a)")


ROUTES = """\
  - {match: "*.a.example", via: a}
  - {match: "*.b.example", via: [b1a, a2a]}
  - {match: "*.c.example", via: a, fallback: [direct, b]}
  - {match: "*.d.example", via: b1a}
  - {match: "*", via: direct}
"""


async def test_selection_by_chain_route_or_everything_deduplicated() -> None:
    async with task_group() as tg:
        config = await table(tg, {"a": [["ok"], ["ok"]], "b": [["ok"]]}, ROUTES)
        every = select_chains(config, None)
        assert [(name, routes) for name, _, routes in every] == [
            ("a", ("routes[0]", "routes[2]")),
            ("b", ("routes[2].fallback[1]", "routes[3]")),  # b is [b1a]: so is routes[3]
            ("routes[1]", ("routes[1]",)),
        ]
        by_name = await check(config, "a", target=None)
        assert [c.name for c in by_name.chains] == ["a"]
        assert by_name.chains[0].routes == ("routes[0]", "routes[2]")
        assert {r.chain for r in by_name.results} == {"a"}
        by_route = await check(config, "routes[1]", target=None)
        assert [c.name for c in by_route.chains] == ["routes[1]"]
        assert [r.candidate for r in by_route.results] == ["b1a", "a2a"]
        assert by_route.ok
        with_fallbacks = await check(config, "routes[2]", target=None)
        assert [c.name for c in with_fallbacks.chains] == ["a", "b"]
        every_report = await check(config, None, target=None)
        assert [c.name for c in every_report.chains] == ["a", "b", "routes[1]"]
        assert every_report.ok
    for selector, message in [
        ("nope", "no chain, proxy or route 'nope'"),
        ("routes[9]", "the table has 5 routes"),
        ("routes[4]", "routes[4] sends direct"),
    ]:
        with pytest.raises(UnknownSelector, match=message.replace("[", r"\[")):
            select_chains(config, selector)


async def test_json_shape_and_progress_once_per_probe() -> None:
    seen: list[ProbeResult] = []
    async with task_group() as tg:
        echo = await start_echo(tg)
        config = await table(
            tg, {"j": [["ok"], ["refused", "ok"]], "k": [["refused"], ["ok"]], "m": [["ok"]]}
        )
        report = await check(
            config, None, target=Address("127.0.0.1", echo.port), progress=seen.append
        )
    probed = [r for r in report.results if r.outcome != "skipped"]
    assert sorted(seen, key=id) == sorted(probed, key=id)
    assert len(seen) == len(probed) == 7  # j: 1 + 2 + target, k: 1, m: 1 + target
    data = render_json(report)
    json.dumps(data)  # plain data
    assert data["ok"] is False
    assert data["target"] == f"127.0.0.1:{echo.port}"
    assert [c["name"] for c in data["chains"]] == ["j", "k", "m"]
    j, k, m = data["chains"]
    assert (j["ok"], k["ok"], m["ok"]) == (True, False, True)
    assert j["working"] == ["j1a", "j2b"]
    assert j["hops"] == "j1a > [j2a, j2b]"
    first = j["results"][0]
    assert set(first) == {
        "hop",
        "position",
        "candidate",
        "via",
        "outcome",
        "latency_ms",
        "elapsed_ms",
        "error",
        "ssh",  # an SSH hop's host key and login; "" for other hops
    }
    assert first["ssh"] == ""
    assert (first["hop"], first["candidate"], first["via"], first["outcome"]) == (
        "1",
        "j1a",
        [],
        "ok",
    )
    assert [r["outcome"] for r in k["results"]] == ["failed", "skipped", "skipped"]
    assert k["results"][-1]["error"] == NOT_REACHED
    assert k["problem"].startswith("no working candidate at hop 1")


async def test_chains_are_probed_concurrently() -> None:
    # five chains whose one hop is silent behind a good hop: each costs one 300ms
    # handshake timeout; four at a time, so well under five in a row
    async with task_group() as tg:
        layout = {f"c{i}": [["ok"], ["silent"], ["ok"]] for i in range(5)}
        config = await table(tg, layout)
        started = anyio.current_time()
        report = await check(config, None, target=None)
        took = anyio.current_time() - started
    assert not report.ok
    assert len(report.chains) == 5
    assert took < 5 * 0.3


async def test_a_table_with_no_chains_says_so() -> None:
    config = parse_config('routes:\n  - {match: "*", via: direct}\n', "routes.yaml", base_dir="/")
    report = await check(config, None, target=None)
    assert report.ok
    assert report.chains == ()
    assert render_table(report).startswith("no chains to check")
