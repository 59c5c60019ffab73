"""Turns raw rounds into medians and ratios, the printed table, the targets and the chart.

A ratio is taken inside each round (a contender's sample over the reference's sample of
the same round) and the median of those per-round ratios is reported, so slow drift of
the machine during the run cancels out.
"""

from __future__ import annotations

import importlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NO_PROXY = "no-proxy"  # the load generator straight to the backend: its own ceiling
Rounds = list[dict[str, Any]]  # [{"order": [label, ...], "samples": {label: {...}}}]


def summarize(
    rounds: Rounds, key: str, reference: Callable[[str], str | None]
) -> dict[str, dict[str, Any]]:
    """Median, spread and median per-round ratio of `key` for every label."""
    labels = sorted({label for r in rounds for label in r["samples"]})
    out: dict[str, dict[str, Any]] = {}
    for label in labels:
        values: list[float] = []
        ratios: list[float] = []
        ref = reference(label)
        for r in rounds:
            value = _value(r["samples"].get(label), key)
            if value is None:
                continue
            values.append(value)
            ref_value = _value(r["samples"].get(ref), key) if ref else None
            if ref_value:
                ratios.append(value / ref_value)
        out[label] = {
            "n": len(values),
            "median": statistics.median(values) if values else None,
            "min": min(values, default=None),
            "max": max(values, default=None),
            "reference": ref,
            "ratio": statistics.median(ratios) if ratios else None,
            "ratios": ratios,
        }
    return out


def _value(sample: dict[str, Any] | None, key: str) -> float | None:
    if sample is None or "error" in sample:
        return None
    value = sample.get(key)
    return float(value) if isinstance(value, int | float) else None


def median_or_none(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


# ---------------------------------------------------------------------------- table


@dataclass(frozen=True, slots=True)
class Row:
    contender: str
    metric: str
    median: float | None
    low: float | None
    high: float | None
    ratio: float | None
    reference: str | None
    note: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "contender": self.contender,
            "metric": self.metric,
            "median": self.median,
            "min": self.low,
            "max": self.high,
            "ratio": self.ratio,
            "reference": self.reference,
            "note": self.note,
        }


def row(contender: str, metric: str, summary: dict[str, Any], note: str = "") -> Row:
    return Row(
        contender,
        metric,
        summary.get("median"),
        summary.get("min"),
        summary.get("max"),
        summary.get("ratio"),
        summary.get("reference"),
        note,
    )


def format_table(rows: list[Row]) -> str:
    header = ("contender", "metric", "median", "min-max", "ratio", "vs", "note")
    cells = [header] + [
        (
            r.contender,
            r.metric,
            _num(r.median),
            f"{_num(r.low)}-{_num(r.high)}" if r.low is not None else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            r.reference or "",
            r.note,
        )
        for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    right = {2, 3, 4}
    lines = []
    for n, c in enumerate(cells):
        parts = [c[i].rjust(widths[i]) if i in right else c[i].ljust(widths[i]) for i in range(7)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


# -------------------------------------------------------------------------- targets


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    goal: str
    value: str
    met: bool | None  # None: not measured in this run

    def as_json(self) -> dict[str, Any]:
        return {"target": self.name, "goal": self.goal, "value": self.value, "met": self.met}


def target(
    name: str, goal: str, value: float | None, ok: Callable[[float], bool], unit: str
) -> Target:
    if value is None:
        return Target(name, goal, "-", None)
    return Target(name, goal, f"{value:.2f}{unit}", ok(value))


def format_targets(targets: list[Target]) -> str:
    verdict = {True: "met", False: "MISSED", None: "not measured"}
    cells = [(t.name, t.goal, t.value, verdict[t.met]) for t in targets]
    widths = [max(len(c[i]) for c in cells) for i in range(3)]
    return "\n".join(
        "  ".join(c[i].ljust(widths[i]) for i in range(3)) + "  " + c[3] for c in cells
    )


# ---------------------------------------------------------------------------- chart


CHARTED = ("1-stream MiB/s", "set-ups/s", "KiB/idle tunnel")  # the headline ratios


def draw_chart(rows: list[Row], path: Path, title: str) -> str:
    """Horizontal bars of the headline ratios; returns what happened, for the log."""
    try:
        # Imported by name: matplotlib is optional and has no stubs here.
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return "chart skipped: matplotlib is not importable (pip install matplotlib)"
    bars = [
        r
        for r in rows
        if r.ratio is not None
        and r.metric.startswith(CHARTED)
        and r.contender != NO_PROXY
        and r.contender != (r.reference or "").partition("@")[0]
    ]
    if not bars:
        return "chart skipped: no ratios in this run"
    bars.reverse()  # barh draws bottom-up: keep the table's order top-down
    labels = [
        f"{r.contender}  {r.metric}  vs {r.reference}"
        + ("  (lower is better)" if r.metric.startswith("KiB") else "")
        for r in bars
    ]
    fig, ax = plt.subplots(figsize=(9.0, 1.0 + 0.35 * len(bars)))
    colours = ["tab:blue" if r.contender.startswith("chainer") else "tab:grey" for r in bars]
    ratios = [r.ratio or 0.0 for r in bars]
    ax.barh(range(len(bars)), ratios, color=colours)
    for y, ratio in enumerate(ratios):
        ax.text(ratio, y, f" {ratio:.2f}", va="center", fontsize=8)
    ax.axvline(1.0, color="black", linewidth=1, linestyle="--")
    ax.margins(x=0.08)
    ax.set_yticks(range(len(bars)), labels, fontsize=8)
    ax.set_xlabel("ratio to the reference (median of same-round ratios)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return f"chart written to {path}"
