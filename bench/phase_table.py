"""The big route table (issue 16): loading it, one match in it, and reloading it under
live tunnels. Its set-ups are measured with everyone else's in `phases.setups`, against
chainer with a one-rule table in the same round.

- load: `table.py measure` in a fresh process, the table written inline in routes.yaml
  and as list files: seconds to read, validate and index it, and the process's RSS;
- serving: the chainer that serves the table (from lists): RSS once it listens;
- reload: one tunnel echoes a byte every 2 ms while chainer is sent SIGHUP (every list
  file changed, so the whole table is parsed and indexed again — the worst case: a
  list whose text did not change keeps its parsed patterns — and a rejected one gained
  or lost `127.0.0.1:1`, so a CONNECT to it is answered 403 once the new table is in,
  502 before); the longest round trip during the reload, beside the longest in a
  window of the same length without one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import table
from phases import Plan, chainer_name
from procs import BENCH, ROOT, Contender, Lab, Worker, rss_kib
from report import Row, Target, median_or_none, target

Log = Callable[[str], None]
PING_INTERVAL = 0.002
HUP_AT = 0.5

# A reload of the big table takes about a second; a live tunnel it paused would wait
# that long. What remains is the interpreter's: threads switch in 5 ms slices while the
# worker parses, and the collector's one walk of the new table and freeing the old one
# each hold it for some milliseconds (tens on a busy 2-core machine).
RELOAD_PAUSE_MS = 50.0


def table_name(patterns: int) -> str:
    return f"chainer-{patterns // 1000}k" if patterns >= 1000 else f"chainer-{patterns}"


def writer(texts: list[str]) -> Callable[[Path, int], Path]:
    """What the serving chainer's route table is written with: the list form."""
    return lambda path, port: table.write_lists(path, port, texts)


def loads(lab: Lab, texts: list[str], seed: int, log: Log) -> dict[str, Any]:
    """Each form loaded once in a fresh process."""
    out: dict[str, Any] = {}
    for form in ("lists", "inline"):
        path = lab.workdir / f"load-{form}.yaml"
        write = table.write_lists if form == "lists" else table.write_inline
        write(path, 1, texts)
        argv = [sys.executable, str(BENCH / "table.py"), "measure", str(path)]
        argv += ["--patterns", str(len(texts)), "--seed", str(seed)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=300, env=env, check=False
            )
        except subprocess.TimeoutExpired:
            out[form] = {"error": "no answer in 300 s"}
            continue
        if done.returncode != 0:
            out[form] = {"error": (done.stderr.strip().splitlines() or ["?"])[-1][:300]}
        else:
            out[form] = json.loads(done.stdout)
        sample = out[form]
        if "error" in sample:
            log(f"table load ({form}): ERROR {sample['error']}")
        else:
            log(
                f"table load ({form}): {sample['total_s']:.2f}s, "
                f"peak RSS {sample['peak_rss_mib']:.0f} MiB, match p99 "
                f"{sample['match_hit_us']['p99']:.1f}/{sample['match_miss_us']['p99']:.1f} µs"
            )
    return out


def serving(c: Contender) -> dict[str, float]:
    pid = c.procs[0].pid
    return {"rss_mib": rss_kib(pid) / 1024, "peak_rss_mib": rss_kib(pid, "VmHWM") / 1024}


def reloads(
    rounds: int,
    seconds: float,
    lab: Lab,
    worker: Worker,
    c: Contender,
    echo: tuple[str, int],
    log: Log,
) -> dict[str, Any]:
    lists = lab.workdir / f"{c.name}-lists"
    rejected = lists / "l1.txt"
    timeout = seconds + 60
    samples: list[dict[str, Any]] = []
    for n in range(rounds):
        common = {"port": c.port, "target": echo, "seconds": seconds, "interval": PING_INTERVAL}
        quiet = worker.call(timeout, op="pingpong", **common)
        adding = n % 2 == 0
        _toggle(rejected, table.SENTINEL, adding)
        for other in sorted(lists.glob("l*.txt")):  # every list changes: all 100,000 reparsed
            _toggle(other, "# changed", adding)
        sentinel_host, sentinel_port = table.SENTINEL.rsplit(":", 1)
        reload = worker.call(
            timeout,
            op="pingpong",
            **common,
            hup_pid=c.procs[0].pid,
            hup_at=HUP_AT,
            probe=[sentinel_host, int(sentinel_port)],
            expect=403 if adding else 502,
        )
        samples.append({"quiet": quiet, "reload": reload})
        log(f"reload round {n + 1}: " + _brief(quiet, reload))
    return {"rounds": samples, "summary": _summary(samples), "interval_s": PING_INTERVAL}


def _toggle(path: Path, line: str, present: bool) -> None:
    """Add or remove a line, replacing the file at once (a reload never reads half)."""
    lines = [x for x in path.read_text().splitlines() if x != line]
    if present:
        lines.append(line)
    temp = path.with_suffix(".tmp")
    temp.write_text("\n".join(lines) + "\n")
    os.replace(temp, path)


def _brief(quiet: dict[str, Any], reload: dict[str, Any]) -> str:
    if "error" in quiet or "error" in reload:
        return f"ERROR {quiet.get('error') or reload.get('error')}"
    applied = reload.get("reload_applied_s")
    took = f"{applied:.2f}s" if applied is not None else "not seen"
    return (
        f"longest echo {quiet['max_ms']:.1f} ms quiet, {reload['max_ms']:.1f} ms during a "
        f"reload (p99 {reload['p99_ms']:.1f} ms; new table in after {took})"
    )


def _summary(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    def values(which: str, key: str) -> list[float]:
        return [
            float(s[which][key])
            for s in samples
            if "error" not in s[which] and s[which].get(key) is not None
        ]

    return {
        "quiet_max_ms": median_or_none(values("quiet", "max_ms")),
        "quiet_p99_ms": median_or_none(values("quiet", "p99_ms")),
        "reload_max_ms": median_or_none(values("reload", "max_ms")),
        "reload_worst_ms": max(values("reload", "max_ms"), default=None),
        "reload_p99_ms": median_or_none(values("reload", "p99_ms")),
        "applied_s": median_or_none(values("reload", "reload_applied_s")),
        "applied_in": float(len(values("reload", "reload_applied_s"))),
        "rounds": float(len(samples)),
    }


def start(
    plan: Plan,
    lab: Lab,
    worker: Worker,
    bulk: tuple[str, int],
    seed: int,
    log: Log,
) -> tuple[Contender, dict[str, Any], dict[str, float]]:
    """Load the big table in fresh processes, then start chainer serving it."""
    texts = table.patterns(plan.table_patterns, seed)
    log(f"big table: {len(texts):,} patterns, loaded inline and from lists")
    loaded = loads(lab, texts, seed, log)
    name = table_name(len(texts))
    log(f"starting {name} (the table from lists; set-ups compared with chainer-0hop)")
    c = lab.start_chainer_with(name, writer(texts), chainer_name(0))
    check = worker.call(30, op="check", port=c.port, target=c.target(bulk), size=1024)
    if "error" in check:
        raise RuntimeError(f"{name} failed its 1 KiB echo: {check['error']}")
    return c, loaded, serving(c)


def rows(big: dict[str, Any]) -> list[Row]:
    name = big["name"]

    def one(metric: str, value: float | None, note: str = "") -> Row:
        return Row(name, metric, value, None, None, None, None, note)

    rows = []
    for form in ("lists", "inline"):
        m = big["load"].get(form, {})
        note = m.get("error", f"{m.get('patterns', 0):,} patterns")
        rows.append(one(f"table load s ({form})", m.get("total_s"), note))
        rows.append(one(f"table load peak RSS MiB ({form})", m.get("peak_rss_mib")))
    m = big["load"].get("lists", {})
    for kind in ("hit", "miss"):
        spread = m.get(f"match_{kind}_us", {})
        rows.append(one(f"match µs p50 ({kind})", spread.get("median")))
        rows.append(one(f"match µs p99 ({kind})", spread.get("p99")))
    rows.append(one("plain scan µs (miss)", m.get("scan_miss_us"), "what the index replaces"))
    rows.append(one("RSS MiB serving", big["serving_at_start"]["rss_mib"], "once listening"))
    rows.append(
        one("peak RSS MiB serving", big["serving_at_end"]["peak_rss_mib"], "reloads included")
    )
    r = big["reload"]["summary"]
    rows.append(one("longest echo ms, no reload", r["quiet_max_ms"], "1 byte every 2 ms"))
    worst = r["reload_worst_ms"]
    rows.append(
        one(
            "longest echo ms, during a reload",
            r["reload_max_ms"],
            "" if worst is None else f"median of rounds; worst {worst:.1f}",
        )
    )
    rows.append(one("echo p99 ms, during a reload", r["reload_p99_ms"]))
    seen = f"seen in {r['applied_in']:.0f} of {r['rounds']:.0f} rounds"
    rows.append(one("reload in effect after s", r["applied_s"], seen))
    return rows


def targets(big: dict[str, Any], su: dict[str, Any]) -> list[Target]:
    loads = [big["load"].get(f, {}) for f in ("lists", "inline")]
    seconds = [m["total_s"] for m in loads if "total_s" in m]
    rss = [m["peak_rss_mib"] for m in loads if "peak_rss_mib" in m]
    rss.append(big["serving_at_start"]["rss_mib"])
    p99 = [
        m[f"match_{kind}_us"]["p99"] for m in loads if "total_s" in m for kind in ("hit", "miss")
    ]
    rate = su["summary"]["per_s"].get(f"{big['name']}@c50", {}).get("ratio")
    pause = big["reload"]["summary"]["reload_max_ms"]
    complete = len(seconds) == len(loads)
    return [
        target(
            "load (inline and from lists)",
            "<= 3 s",
            max(seconds) if complete else None,
            lambda v: v <= 3.0,
            " s (worst)",
        ),
        target(
            "RSS with the table loaded",
            "<= 150 MiB",
            max(rss) if complete else None,
            lambda v: v <= 150.0,
            " MiB (worst)",
        ),
        target(
            "one match", "<= 20 µs", max(p99) if p99 else None, lambda v: v <= 20.0, " µs (p99)"
        ),
        target("set-ups/s @50", ">= 0.90x one rule", rate, lambda v: v >= 0.9, "x"),
        target(
            "longest echo during a reload",
            f"<= {RELOAD_PAUSE_MS:g} ms",
            pause,
            lambda v: v <= RELOAD_PAUSE_MS,
            " ms (median round)",
        ),
    ]
