"""The three measurements, each run in rounds that visit every contender in a new order.

Each phase returns its raw rounds (every sample, errors included) and a summary.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from common import TUNNEL_TIMEOUT
from procs import Contender, Lab, Worker, cpu_seconds, rss_kib
from report import NO_PROXY, Rounds, median_or_none, summarize

Log = Callable[[str], None]
GIB = 2**30
FD_MARGIN = 256
SETTLE = 0.3  # after a sample: let socat reap its child, let RSS settle


@dataclass(frozen=True, slots=True)
class Plan:
    mode: str
    throughput_rounds: int
    throughput_bytes: int
    setup_rounds: int
    setup_seconds: float
    setup_warmup: float
    memory_rounds: int
    memory_steps: tuple[int, ...]
    hops: tuple[int, ...]
    with_pproxy: bool
    table_patterns: int = 100_000  # the big route table (issue 16)
    reload_rounds: int = 3
    reload_seconds: float = 3.0
    with_ssh: bool = False  # chainer-ssh and pproxy-ssh through one real sshd

    @staticmethod
    def for_mode(mode: str) -> Plan:
        if mode == "smoke":
            return Plan(mode, 1, 8 * 2**20, 1, 0.3, 0.1, 1, (50, 100), (0,), False, 5000, 1, 1.0)
        if mode == "quick":
            steps = (1000, 2000, 5000)
            return Plan(
                mode,
                3,
                256 * 2**20,
                3,
                1.0,
                0.2,
                1,
                steps,
                (0, 1, 3),
                True,
                100_000,
                1,
                with_ssh=True,
            )
        full = (1000, 2000, 5000, 10000)
        return Plan(mode, 5, GIB, 9, 1.0, 0.3, 3, full, (0, 1, 3), True, with_ssh=True)


# Whom a contender's set-up figures are compared with (default: pproxy, same concurrency).
REFERENCE = {"chainer-ssh": "pproxy-ssh", "pproxy-ssh": "pproxy-ssh"}


DIRECT_PREFIX = "chainer-0hop"  # chainer-0hop, chainer-0hop-asyncio: the targets' rows


def chainer_name(hops: int) -> str:
    return f"chainer-{hops}hop"


def _shuffled(rng: random.Random, items: Sequence[str]) -> list[str]:
    order = list(items)
    rng.shuffle(order)
    return order


# ----------------------------------------------------------------------- throughput


def throughput(
    plan: Plan,
    worker: Worker,
    contenders: dict[str, Contender],
    bulk: tuple[str, int],
    zero_file: str,
    rng: random.Random,
    log: Log,
) -> dict[str, Any]:
    contenders = {**contenders, NO_PROXY: Contender(NO_PROXY, bulk[1], False, [])}
    rounds: Rounds = []
    timeout = 60 + plan.throughput_bytes / (20 * 2**20)  # 20 MiB/s is surely broken
    for n in range(plan.throughput_rounds):
        order = _shuffled(rng, list(contenders))
        samples: dict[str, dict[str, Any]] = {}
        for name in order:
            c = contenders[name]
            cpu_before = sum(cpu_seconds(p.pid) for p in c.procs)
            reply = worker.call(
                timeout,
                op="throughput",
                port=c.port,
                target=c.target(bulk),
                bytes=plan.throughput_bytes,
                file=zero_file,
            )
            time.sleep(SETTLE)
            if "error" not in reply and c.procs:
                cpu = sum(cpu_seconds(p.pid) for p in c.procs) - cpu_before
                reply["cpu_s"] = cpu
                reply["cpu_s_per_gib"] = cpu / (plan.throughput_bytes / GIB)
            samples[name] = reply
        rounds.append({"order": order, "samples": samples})
        log(f"throughput round {n + 1}: " + _brief(samples, "mib_s", "MiB/s"))
    summary = summarize(rounds, "mib_s", lambda label: "socat" if "socat" in contenders else None)
    cpu_summary = summarize(rounds, "cpu_s_per_gib", lambda label: None)
    for label, s in summary.items():
        s["cpu_s_per_gib"] = cpu_summary[label]["median"]
    return {"unit": "MiB/s", "bytes": plan.throughput_bytes, "rounds": rounds, "summary": summary}


# --------------------------------------------------------------------------- set-ups


def setups(
    plan: Plan,
    worker: Worker,
    contenders: dict[str, Contender],
    echo: tuple[str, int],
    rng: random.Random,
    log: Log,
) -> dict[str, Any]:
    """Set-ups/s and latency at concurrency 1 for every CONNECT contender and at 50 for
    chainer direct and pproxy; the per-hop cost comes from the concurrency-1 p50s."""
    no_proxy = Contender(NO_PROXY, echo[1], False, [])
    jobs: dict[str, tuple[Contender, int]] = {f"{NO_PROXY}@c1": (no_proxy, 1)}
    jobs[f"{NO_PROXY}@c50"] = (no_proxy, 50)
    for name, c in contenders.items():
        if not c.speaks_connect:
            continue
        jobs[f"{name}@c1"] = (c, 1)
        if name in (chainer_name(0), "pproxy") or c.reference is not None:
            jobs[f"{name}@c50"] = (c, 50)

    def reference(label: str) -> str | None:
        return reference_of(label, contenders, jobs)

    rounds: Rounds = []
    for n in range(plan.setup_rounds):
        order = _beside_references(_shuffled(rng, list(jobs)), reference, contenders, rng)
        samples: dict[str, dict[str, Any]] = {}
        for label in order:
            c, concurrency = jobs[label]
            cpu_before = sum(cpu_seconds(p.pid) for p in c.procs)
            samples[label] = worker.call(
                60 + plan.setup_seconds + plan.setup_warmup,
                op="setups",
                port=c.port,
                target=c.target(echo),
                concurrency=concurrency,
                seconds=plan.setup_seconds,
                warmup=plan.setup_warmup,
            )
            sample = samples[label]
            tunnels = sample.get("count", 0) + sample.get("warmup_count", 0)
            if c.procs and tunnels and "error" not in sample:
                cpu = sum(cpu_seconds(p.pid) for p in c.procs) - cpu_before
                sample["cpu_us_per_setup"] = cpu / tunnels * 1e6  # every hop's process
            time.sleep(SETTLE)
        rounds.append({"order": order, "samples": samples})
        log(f"set-up round {n + 1}: " + _brief(samples, "per_s", "/s"))

    summary = {
        "per_s": summarize(rounds, "per_s", reference),
        "p50_ms": summarize(rounds, "p50_ms", reference),
        "p99_ms": summarize(rounds, "p99_ms", reference),
        "cpu_us_per_setup": summarize(rounds, "cpu_us_per_setup", reference),
    }
    return {"rounds": rounds, "summary": summary, "hop_cost": _hop_cost(rounds)}


def reference_of(
    label: str, contenders: dict[str, Contender], labels: Collection[str]
) -> str | None:
    """The set-up sample `label` ("name@cN") is compared with, if it is in `labels`."""
    name, _, conc = label.partition("@")
    c = contenders.get(name)
    if c is not None and c.reference:
        ref = f"{c.reference}@{conc}"  # another chainer, run beside it
    else:
        ref = f"{REFERENCE.get(name, 'pproxy')}@{conc}"
    return ref if ref in labels and ref != label else None


def _beside_references(
    order: list[str],
    reference: Callable[[str], str | None],
    contenders: dict[str, Contender],
    rng: random.Random,
) -> list[str]:
    """Every sample runs right before or after the sample it is compared with, on a
    random side: the two samples of a ratio are taken seconds apart, not a whole round
    apart. This VM's speed drifts by up to 1.5x between moments (the same process's CPU
    per set-up moved from 480 to 710 us across rounds), and a ratio of two moments
    measures the drift. Those compared with pproxy are placed first — the targets'
    direct chainers last among them, so that they end up nearest — then those compared
    with another chainer (beside that one, wherever it went)."""

    def turn(label: str) -> tuple[bool, bool]:
        name = label.split("@")[0]
        c = contenders.get(name)
        return c is not None and c.reference is not None, name.startswith(DIRECT_PREFIX)

    for label in sorted(order, key=turn):
        ref = reference(label)
        if ref is None or ref not in order:
            continue
        order.remove(label)
        at = order.index(ref) + rng.randrange(2)
        order.insert(at, label)
    return order


def _hop_cost(rounds: Rounds) -> dict[str, Any]:
    """Set-up time each added hop costs, from the same round's concurrency-1 p50s."""
    out: dict[str, Any] = {}
    base = f"{chainer_name(0)}@c1"
    for hops in (1, 3):
        label = f"{chainer_name(hops)}@c1"
        per_round: list[float] = []
        for r in rounds:
            t0, tn = r["samples"].get(base, {}), r["samples"].get(label, {})
            if t0.get("p50_ms") is not None and tn.get("p50_ms") is not None:
                per_round.append((tn["p50_ms"] - t0["p50_ms"]) / hops)
        if per_round:
            out[f"{hops}hop"] = {
                "ms_per_hop": median_or_none(per_round),
                "per_round": per_round,
                "formula": f"(p50[{hops} hops] - p50[0 hops]) / {hops}, concurrency 1",
            }
    return out


# ---------------------------------------------------------------------- idle memory


def memory(
    plan: Plan,
    lab: Lab,
    worker: Worker,
    starters: dict[str, Callable[[], Contender]],
    bulk: tuple[str, int],
    echo: tuple[str, int],
    rng: random.Random,
    log: Log,
) -> dict[str, Any]:
    """RSS of a freshly started proxy with 0, then each step's number of idle tunnels."""
    # A proxy holds 2 descriptors per tunnel, plus a few of its own.
    fits = (lab.nofile - FD_MARGIN) // 2 // 100 * 100
    steps = [s for s in plan.memory_steps if s <= fits]
    notes = [
        f"{s} tunnels skipped: they need RLIMIT_NOFILE >= {2 * s + FD_MARGIN}, "
        f"the hard limit here is {lab.nofile}"
        for s in plan.memory_steps
        if s > fits
    ]
    if len(steps) < len(plan.memory_steps) and fits > max(steps, default=0):
        steps.append(fits)
        notes.append(f"{fits} tunnels (the most that fit) measured in their place")
    log(f"idle memory: {plan.memory_rounds} rounds, steps {steps}")
    rounds: Rounds = []
    for n in range(plan.memory_rounds):
        order = _shuffled(rng, list(starters))
        samples: dict[str, dict[str, Any]] = {}
        for name in order:
            samples[name] = _memory_sample(lab, worker, starters[name], steps, bulk, echo)
        rounds.append({"order": order, "samples": samples})
        log(
            f"memory round {n + 1}: "
            + "; ".join(
                f"{name} "
                + ", ".join(
                    f"{s['tunnels']}:{s['per_tunnel_kib']:.1f}KiB" for s in sample.get("steps", [])
                )
                for name, sample in samples.items()
            )
        )
    return {"steps": steps, "notes": notes, "rounds": rounds, **_memory_summary(rounds, steps)}


def _memory_sample(
    lab: Lab,
    worker: Worker,
    start: Callable[[], Contender],
    steps: list[int],
    bulk: tuple[str, int],
    echo: tuple[str, int],
) -> dict[str, Any]:
    c = start()
    try:
        check = worker.call(30, op="check", port=c.port, target=c.target(bulk), size=1024)
        if "error" in check:
            return {"error": f"check failed: {check['error']}"}
        time.sleep(SETTLE)
        pid = c.procs[0].pid
        rss0 = rss_kib(pid)
        held = 0
        out: list[dict[str, Any]] = []
        for step in steps:
            deadline = 20 + step * 0.005
            reply = worker.call(
                deadline + TUNNEL_TIMEOUT + 15,
                op="open",
                port=c.port,
                target=echo,
                n=step - held,
                parallel=100,
                deadline=deadline,
            )
            if "error" in reply:
                return {"rss0_kib": rss0, "steps": out, "error": reply["error"]}
            held = int(reply["held"])
            time.sleep(SETTLE)
            rss = rss_kib(pid)
            out.append(
                {
                    "step": step,
                    "tunnels": held,
                    "rss_kib": rss,
                    "per_tunnel_kib": (rss - rss0) / held if held else 0.0,
                    "errors": reply["errors"],
                    "error_kinds": reply["error_kinds"],
                    "open_seconds": reply["seconds"],
                }
            )
            if reply["errors"]:
                break  # the proxy refused tunnels: larger steps would not mean what they say
        return {"rss0_kib": rss0, "steps": out}
    finally:
        worker.call(60, op="close_all")
        for proc in c.procs:
            lab.stop(proc)


def _memory_summary(rounds: Rounds, steps: list[int]) -> dict[str, Any]:
    """Per contender and step: median KiB per tunnel; growth is linear at a step when
    its per-tunnel cost is within 30% of the first step's (and no tunnel was refused)."""
    names = sorted({name for r in rounds for name in r["samples"]})
    summary: dict[str, Any] = {}
    for name in names:
        per_step: dict[str, Any] = {}
        first: float | None = None
        linear_up_to = 0
        still_linear = True
        for step in steps:
            rows = [
                s
                for r in rounds
                for s in r["samples"].get(name, {}).get("steps", [])
                if s["step"] == step
            ]
            per_tunnel = median_or_none([s["per_tunnel_kib"] for s in rows])
            rss = median_or_none([s["rss_kib"] for s in rows])
            complete = len(rows) == len(rounds) and not any(s["errors"] for s in rows)
            first = per_tunnel if first is None else first
            linear = (
                complete
                and per_tunnel is not None
                and first is not None
                and abs(per_tunnel - first) <= 0.3 * abs(first)
            )
            still_linear = still_linear and linear
            if still_linear:
                linear_up_to = step
            per_step[str(step)] = {
                "held": min((s["tunnels"] for s in rows), default=0),
                "per_tunnel_kib": per_tunnel,
                "rss_mib": rss / 1024 if rss is not None else None,
                "complete": complete,
                "linear": linear,
            }
        summary[name] = {"steps": per_step, "linear_up_to": linear_up_to}
    ratios: dict[str, dict[str, float | None]] = {}
    for name in names:
        ratios[name] = {}
        for step in steps:
            per_round = []
            for r in rounds:
                mine = _step(r["samples"].get(name), step)
                ref = _step(r["samples"].get("pproxy"), step)
                if mine is not None and ref:
                    per_round.append(mine / ref)
            ratios[name][str(step)] = median_or_none(per_round)
    return {"summary": summary, "ratio_to_pproxy": ratios}


def _step(sample: dict[str, Any] | None, step: int) -> float | None:
    for s in (sample or {}).get("steps", []):
        if s["step"] == step and not s["errors"]:
            return float(s["per_tunnel_kib"])
    return None


def _brief(samples: dict[str, dict[str, Any]], key: str, unit: str) -> str:
    return ", ".join(
        f"{label} {s[key]:.0f}{unit}" if key in s else f"{label} ERROR {s.get('error')}"
        for label, s in samples.items()
    )
