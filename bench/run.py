"""chainer's benchmark: `python bench/run.py [--quick|--smoke] [--json OUT] [--chart PNG]`.

Starts every contender (chainer with 0, 1 and 3 chainer hops, socat -b 262144, pproxy
from its own venv, and chainer and pproxy each through one SSH hop to a real sshd), a
backend (bulk sink and echo servers) and a load generator, each in
its own process on loopback; checks each contender with a 1 KiB echo; then measures
throughput, tunnel set-ups and idle memory in rounds that visit the contenders in a
shuffled order, and prints medians and same-round ratios. See bench/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import phase_table
import sshhop
from common import LOOPBACK, nofile_limit
from phases import Plan, chainer_name, memory, setups, throughput
from procs import ROOT, Contender, Lab, ensure_pproxy
from report import NO_PROXY, Row, Target, draw_chart, format_table, format_targets, row, target

ZERO_FILE_SIZE = 64 * 2**20


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    plan = Plan.for_mode(mode)
    if args.no_pproxy:
        plan = dataclasses.replace(plan, with_pproxy=False)
    started = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    source = _source()  # what the contenders run: read before any of them starts

    def log(message: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {message}", file=sys.stderr, flush=True)

    notes: list[str] = []
    nofile = nofile_limit(2 * max(plan.memory_steps) + 512)
    shm = Path("/dev/shm")
    workdir = Path(tempfile.mkdtemp(prefix="chainer-bench-", dir=shm if shm.is_dir() else None))
    lab = Lab(workdir, nofile)
    try:
        result, rows, targets = _run(plan, lab, args, notes, log)
    finally:
        lab.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    result["meta"]["started"] = started_at
    result["meta"]["duration_s"] = round(time.monotonic() - started, 1)
    result["meta"].update(source)
    # Instances started later in the run (the memory phase's fresh ones) run whatever
    # is there then: say whether that moved.
    result["meta"]["chainer_changed_during_run"] = _source() != source

    big = phase_table.targets(result["big_table"], result["setups"])
    result["table"] = [r.as_json() for r in rows]
    result["targets"] = [t.as_json() for t in [*targets, *big]]
    meta = result["meta"]
    tree = " + local changes" if meta["chainer_modified"] else ""
    print(
        f"\nchainer benchmark ({mode}), {meta['duration_s']}s, "
        f"chainer {meta['chainer_commit'] or '?'}{tree}, {meta['machine']['cpus']} CPUs\n"
    )
    print(format_table(rows))
    print("\nTargets (issues 7 and 18):\n" + format_targets(targets))
    print("\nTargets (issue 16, a table of " + f"{plan.table_patterns:,} patterns):")
    print(format_targets(big))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"JSON written to {args.json}")
    if args.chart:
        print(draw_chart(rows, Path(args.chart), f"chainer benchmark ({mode}) — ratios"))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes: about 1 minute")
    size.add_argument("--smoke", action="store_true", help="tiny sizes, for the test suite")
    parser.add_argument("--json", metavar="OUT", help="write every raw sample and the summary")
    parser.add_argument("--chart", metavar="PNG", help="bar chart of the ratios (matplotlib)")
    parser.add_argument("--no-pproxy", action="store_true", help="leave pproxy out")
    parser.add_argument("--seed", type=int, default=None, help="order of the contenders")
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache")) + "/chainer-bench",
        help="where pproxy's venv lives (default ~/.cache/chainer-bench)",
    )
    return parser


def _run(
    plan: Plan,
    lab: Lab,
    args: argparse.Namespace,
    notes: list[str],
    log: Callable[[str], None],
) -> tuple[dict[str, Any], list[Row], list[Target]]:
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    zero_file = lab.workdir / "zeros"
    zero_file.write_bytes(bytes(min(ZERO_FILE_SIZE, plan.throughput_bytes)))

    ports = lab.start_backend()
    bulk, echo = (LOOPBACK, ports["bulk"]), (LOOPBACK, ports["echo"])
    worker = lab.start_loadgen()

    pproxy_exe: Path | None = None
    if plan.with_pproxy:
        pproxy_exe, note = ensure_pproxy(Path(args.cache_dir), log)
        notes.append(note)
    else:
        notes.append("pproxy: --no-pproxy" if args.no_pproxy else "pproxy left out in this mode")
    has_socat = shutil.which("socat") is not None
    if not has_socat:
        notes.append("socat not installed: no throughput reference (apt-get install socat)")

    starters: dict[str, Callable[[], Contender]] = {}
    for hops in plan.hops:
        starters[chainer_name(hops)] = functools.partial(
            lab.start_chainer, chainer_name(hops), hops
        )
    if _has_uvloop() and plan.mode != "smoke":
        # chainer-0hop runs on uvloop (auto, as `pip install 'chainer[fast]'` gives it);
        # the same on asyncio's own loop, beside pproxy, for the report of both.
        starters[ASYNCIO] = functools.partial(lab.start_chainer, ASYNCIO, 0, "asyncio", "pproxy")
    if has_socat:
        starters["socat"] = functools.partial(lab.start_socat, "socat", bulk[1])
    if pproxy_exe is not None:
        starters["pproxy"] = functools.partial(lab.start_pproxy, "pproxy", pproxy_exe)
    if plan.with_ssh:
        starters.update(_ssh_starters(lab, pproxy_exe, notes, log))

    contenders: dict[str, Contender] = {}
    for name, start in starters.items():
        log(f"starting {name}")
        try:
            c = start()
        except RuntimeError as exc:
            if name.startswith("chainer"):
                raise
            notes.append(f"{name} skipped: {exc}")
            continue
        check = worker.call(30, op="check", port=c.port, target=c.target(bulk), size=1024)
        if "error" in check:
            if name.startswith("chainer"):
                raise RuntimeError(f"{name} failed its 1 KiB echo: {check['error']}")
            notes.append(f"{name} skipped: 1 KiB echo failed: {check['error']}")
            for proc in c.procs:
                lab.stop(proc)
            continue
        contenders[name] = c
    log("every contender echoed 1 KiB: " + ", ".join(contenders))

    log(f"throughput: {plan.throughput_rounds} rounds of {plan.throughput_bytes >> 20} MiB")
    tp = throughput(plan, worker, contenders, bulk, str(zero_file), rng, log)
    big, big_loads, big_serving = phase_table.start(plan, lab, worker, bulk, seed, log)
    log(f"set-ups: {plan.setup_rounds} rounds of {plan.setup_seconds:g}s per contender")
    su = setups(plan, worker, {**contenders, big.name: big}, echo, rng, log)
    log(f"reloads of {big.name}: {plan.reload_rounds} rounds of {plan.reload_seconds:g}s")
    reloads = phase_table.reloads(
        plan.reload_rounds, plan.reload_seconds, lab, worker, big, echo, log
    )
    big_table = {
        "name": big.name,
        "patterns": plan.table_patterns,
        "load": big_loads,
        "serving_at_start": big_serving,
        "serving_at_end": phase_table.serving(big),
        "reload": reloads,
    }
    for c in [*contenders.values(), big]:  # memory runs on fresh instances, one at a time
        for proc in c.procs:
            lab.stop(proc)
    memory_starters = {
        name: start
        for name, start in starters.items()
        if name in contenders and name in (chainer_name(0), "pproxy")
    }
    mem = memory(plan, lab, worker, memory_starters, bulk, echo, rng, log)
    notes.extend(mem["notes"])
    if "pproxy" not in contenders:
        notes.append("no pproxy: set-up and memory ratios have no reference")

    result = {
        "meta": _meta(plan, seed, lab.nofile, list(contenders), notes),
        "throughput": tp,
        "setups": su,
        "hop_cost": su["hop_cost"],
        "idle_memory": mem,
        "big_table": big_table,
    }
    return result, _rows(tp, su, mem) + phase_table.rows(big_table), _targets(tp, su, mem)


def _ssh_starters(
    lab: Lab, pproxy_exe: Path | None, notes: list[str], log: Callable[[str], None]
) -> dict[str, Callable[[], Contender]]:
    """chainer-ssh and pproxy-ssh, through one sshd started here (see sshhop.py)."""
    exe, why = sshhop.find_sshd()
    if exe is None:
        notes.append(f"SSH hop contenders left out: {why}")
        return {}
    log("starting sshd for the SSH-hop contenders")
    try:
        target = lab.start_sshd(exe)
    except RuntimeError as exc:
        notes.append(f"SSH hop contenders left out: sshd did not start: {exc}")
        return {}
    starters: dict[str, Callable[[], Contender]] = {
        "chainer-ssh": functools.partial(lab.start_chainer_ssh, "chainer-ssh", target)
    }
    if pproxy_exe is not None:
        problem = sshhop.ensure_asyncssh(pproxy_exe, log)
        if problem:
            notes.append(f"pproxy-ssh skipped: {problem}")
        else:
            remote = sshhop.pproxy_remote(target)
            starters["pproxy-ssh"] = functools.partial(
                lab.start_pproxy, "pproxy-ssh", pproxy_exe, remote
            )
    return starters


_ORDER = (
    "chainer-0hop",
    "chainer-0hop-asyncio",
    "chainer-1hop",
    "chainer-3hop",
    "chainer-ssh",
    "socat",
    "pproxy",
    "pproxy-ssh",
    NO_PROXY,
)


def _by_contender(items: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) pairs in the table's order: by concurrency, then contender."""

    def key(item: tuple[str, Any]) -> tuple[int, int]:
        name, _, conc = item[0].partition("@c")
        rank = _ORDER.index(name) if name in _ORDER else len(_ORDER)
        return (int(conc or 0), rank)

    return sorted(items.items(), key=key)


def _rows(tp: dict[str, Any], su: dict[str, Any], mem: dict[str, Any]) -> list[Row]:
    rows = [row(name, "1-stream MiB/s", s) for name, s in _by_contender(tp["summary"])]
    for name, s in _by_contender(tp["summary"]):
        cpu = s.get("cpu_s_per_gib")
        if cpu is not None:
            rows.append(Row(name, "CPU s/GiB (proxy)", cpu, None, None, None, None))
    for metric, title in (
        ("per_s", "set-ups/s"),
        ("p50_ms", "p50 ms"),
        ("p99_ms", "p99 ms"),
        ("cpu_us_per_setup", "CPU µs/set-up"),
    ):
        for label, s in _by_contender(su["summary"][metric]):
            name, conc = label.split("@c")
            if s["median"] is not None:  # CPU: not for the load generator alone
                rows.append(row(name, f"{title} @{conc}", s))
    for key, cost in su["hop_cost"].items():
        rows.append(
            Row(
                chainer_name(int(key[0])),
                "ms per added hop",
                cost["ms_per_hop"],
                min(cost["per_round"]),
                max(cost["per_round"]),
                None,
                None,
            )
        )
    for name, s in mem["summary"].items():
        for step, st in s["steps"].items():
            ratio = mem["ratio_to_pproxy"].get(name, {}).get(step)
            ref = "pproxy" if ratio is not None else None
            rows.append(
                Row(
                    name,
                    f"KiB/idle tunnel @{step}",
                    st["per_tunnel_kib"],
                    None,
                    None,
                    ratio,
                    ref,
                    _memory_note(step, st),
                )
            )
        for step, st in s["steps"].items():
            rows.append(Row(name, f"RSS MiB @{step}", st["rss_mib"], None, None, None, None))
        rows.append(
            Row(
                name,
                "tunnels held, linear memory",
                float(s["linear_up_to"]),
                None,
                None,
                None,
                None,
            )
        )
    return rows


def _memory_note(step: str, st: dict[str, Any]) -> str:
    if st["held"] < int(step):
        return f"only {st['held']} opened"
    return "" if st["linear"] else "not linear (>30% off the first step)"


ASYNCIO = "chainer-0hop-asyncio"


def _has_uvloop() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def _targets(tp: dict[str, Any], su: dict[str, Any], mem: dict[str, Any]) -> list[Target]:
    direct = chainer_name(0)
    tput = tp["summary"].get(direct, {}).get("ratio")
    rate = su["summary"]["per_s"].get(f"{direct}@c50", {}).get("ratio")
    rate_asyncio = su["summary"]["per_s"].get(f"{ASYNCIO}@c50", {}).get("ratio")
    p50 = su["summary"]["p50_ms"].get(f"{direct}@c1", {}).get("ratio")
    hop = su["hop_cost"].get("3hop", {}).get("ms_per_hop")
    steps = mem["summary"].get(direct, {}).get("steps", {})
    kib = [steps[s]["per_tunnel_kib"] for s in ("1000", "5000") if s in steps]
    kib = [k for k in kib if k is not None]
    held = mem["summary"].get(direct, {}).get("linear_up_to")
    return [
        target("1-stream throughput, direct", ">= 1.00x socat", tput, lambda v: v >= 1.0, "x"),
        target("set-ups/s @50 (uvloop)", ">= 1.20x pproxy", rate, lambda v: v >= 1.2, "x"),
        target("set-ups/s @50 (asyncio)", ">= 1.20x pproxy", rate_asyncio, lambda v: v >= 1.2, "x"),
        target("p50 set-up @1", "<= 1.00x pproxy", p50, lambda v: v <= 1.0, "x"),
        target(
            "KiB per idle tunnel (1k, 5k)",
            "<= 10 KiB",
            max(kib) if kib else None,
            lambda v: v <= 10.0,
            " KiB (worst)",
        ),
        target("set-up cost per hop", "<= 0.30 ms", hop, lambda v: v <= 0.3, " ms"),
        Target(
            "10,000 tunnels, linear memory",
            "linear to 10000",
            f"linear to {held}" if held is not None else "-",
            held == 10000 if "10000" in steps else None,
        ),
    ]


def _out(argv: list[str], having: str = "") -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = [line for line in done.stdout.splitlines() if having in line]
    return lines[0].strip() if done.returncode == 0 and lines else ""


def _source() -> dict[str, Any]:
    """The chainer commit, and whether chainer/ differs from it (read-only)."""
    return {
        "chainer_commit": _out(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "chainer_modified": bool(
            _out(["git", "-C", str(ROOT), "status", "--porcelain", "--", "chainer"])
        ),
    }


def _meta(
    plan: Plan, seed: int, nofile: int, contenders: list[str], notes: list[str]
) -> dict[str, Any]:
    out = _out

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "mode": plan.mode,
        "plan": dataclasses.asdict(plan),
        "seed": seed,
        "machine": {
            "cpu": cpu,
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "socat": out(["socat", "-V"], "socat version") if shutil.which("socat") else None,
        "rlimit_nofile": nofile,
        "contenders": contenders,
        "notes": notes,
    }


if __name__ == "__main__":
    sys.exit(main())
