"""The benchmark runs end to end (`bench/run.py --smoke`): a smoke test, not a performance
assertion. It starts chainer, socat (when installed), a backend and a load generator on
loopback, and must exit 0 and write JSON with every section."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_runs_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Targets (issues 7 and 18)" in done.stdout

    result = json.loads(out.read_text())
    sections = {"meta", "throughput", "setups", "hop_cost", "idle_memory", "table", "targets"}
    assert sections | {"big_table"} <= set(result)
    assert result["meta"]["mode"] == "smoke"

    expected = {"chainer-0hop", "no-proxy"} | ({"socat"} if shutil.which("socat") else set())
    throughput = result["throughput"]
    assert set(throughput["summary"]) == expected
    for sample in throughput["rounds"][0]["samples"].values():
        assert sample["mib_s"] > 0, sample
    if "socat" in expected:
        assert throughput["summary"]["socat"]["ratio"] == 1.0

    per_s = result["setups"]["summary"]["per_s"]
    assert per_s["chainer-0hop@c1"]["median"] > 0
    assert per_s["chainer-0hop@c50"]["median"] > 0

    memory = result["idle_memory"]["summary"]["chainer-0hop"]
    assert memory["steps"], memory
    for step in memory["steps"].values():
        assert step["held"] > 0

    assert {row["metric"] for row in result["table"]} >= {"1-stream MiB/s", "set-ups/s @50"}
    assert {t["target"] for t in result["targets"]} >= {"set-up cost per hop"}

    # issue 16: the big table (5,000 patterns in smoke mode) loaded, matched and reloaded
    big = result["big_table"]
    assert big["name"] == "chainer-5k"
    for form in ("lists", "inline"):
        assert big["load"][form]["patterns"] == 5001, big["load"][form]
        assert big["load"][form]["total_s"] > 0
    assert per_s["chainer-5k@c50"]["reference"] == "chainer-0hop@c50"
    assert per_s["chainer-5k@c50"]["ratio"] is not None
    reload = big["reload"]["rounds"][0]["reload"]
    assert reload["count"] > 0, reload
    assert reload["reload_applied_s"] is not None, reload  # the new table took effect
    assert "Targets (issue 16" in done.stdout
