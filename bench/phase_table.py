"""The big route table (issue 16): loading it, one match in it, and reloading it under
live tunnels. Its set-ups are measured with everyone else's in `phases.setups`, against
chainer with a one-rule table in the same round.

- load: `table.py measure` in a fresh process, the table written inline in routes.yaml
  and as list files: seconds to read, validate and index it, and the process's RSS;
- serving: the chainer that serves the table (from lists): RSS once it listens;
- reload: one tunnel echoes a byte every 2 ms while chainer is sent SIGHUP (a list file
  gained or lost a line: `127.0.0.1:1` in a rejected list, so a CONNECT to it is
  answered 403 once the new table is in, 502 before); the longest round trip during the
  reload, beside the longest in a window of the same length without one.
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
from procs import BENCH, ROOT, Contender, Lab, Worker, rss_kib
from report import median_or_none

Log = Callable[[str], None]
PING_INTERVAL = 0.002
HUP_AT = 0.5


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
