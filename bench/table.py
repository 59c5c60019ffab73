"""The big route table (issue 16): generated here, loaded and matched in a fresh process.

    python bench/table.py measure CONFIG --patterns N --seed S

prints one JSON line: how long `load_config` and the indexes took, the process's RSS
after and at its peak (VmHWM: the interpreter and chainer's imports included), and how
long one `RouteTable.match` takes for destinations that hit each kind of pattern and for
ones that match only the final `*` — beside the plain scan on a few, for scale.

The table: N patterns, mixed like real lists — exact names (35%), `*.x` (20%), `.x`
(15%), IPv4 ranges (18%), IPv6 ranges (12%), 10% of them with a port — split over four
routes (two through a chain, two rejected) before `{match: "*", via: direct}`, either
written inline in routes.yaml or as four list files. No pattern covers 127.0.0.0/8:
the set-up and reload measurements CONNECT to 127.0.0.1 and must reach the final route.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

LISTS = 4
SENTINEL = "127.0.0.1:1"  # added to a rejected list to see a reload take effect


def patterns(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        port = f":{rng.choice([443, 80, 8443, 22])}" if rng.random() < 0.1 else ""
        r = rng.random()
        if r < 0.35:
            out.append(f"h{i}.d{rng.randrange(10**6)}.example{port}")
        elif r < 0.55:
            out.append(f"*.d{i}.corp{rng.randrange(100)}.example{port}")
        elif r < 0.70:
            out.append(f".s{i}.net{rng.randrange(100)}.example{port}")
        elif r < 0.88:
            first = rng.choice([rng.randrange(1, 127), rng.randrange(128, 224)])
            length = rng.choice([8, 12, 16, 20, 24, 28, 32])
            ip = f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}"
            out.append(f"{ip}/{length}{port}")
        else:
            length = rng.choice([32, 48, 56, 64, 128])
            a, b = rng.randrange(65536), rng.randrange(65536)
            ip = f"2001:db8:{a:x}:{b:x}::{i & 0xFFFF:x}"
            out.append(f"[{ip}]/{length}{port}" if port else f"{ip}/{length}")
    return out


def _head(port: int) -> list[str]:
    return [
        f"listen: [127.0.0.1:{port}]",
        "limits: {max_connections: 100000}",
        "proxies: {corp: 'http://127.0.0.1:9'}",  # never dialed: 127.0.0.1 goes direct
    ]


def _via(k: int) -> str:
    return "corp" if k % 2 == 0 else "reject"


def write_inline(path: Path, port: int, texts: list[str]) -> Path:
    lines = [*_head(port), "routes:"]
    for k, chunk in enumerate(_chunks(texts)):
        lines += [f"  - via: {_via(k)}", "    match:"]
        lines += [f'      - "{t}"' for t in chunk]
    lines.append('  - {match: "*", via: direct}')
    path.write_text("\n".join(lines) + "\n")
    return path


def write_lists(path: Path, port: int, texts: list[str], *, sentinel: bool = False) -> Path:
    folder = path.parent / f"{path.stem}-lists"
    folder.mkdir(exist_ok=True)
    lines = [*_head(port), "lists:"]
    routes = ["routes:"]
    for k, chunk in enumerate(_chunks(texts)):
        extra = [SENTINEL] if sentinel and _via(k) == "reject" else []
        (folder / f"l{k}.txt").write_text("\n".join(["# generated", *chunk, *extra]) + "\n")
        lines.append(f"  l{k}: {folder.name}/l{k}.txt")
        routes.append(f'  - {{match: "list:l{k}", via: {_via(k)}}}')
    routes.append('  - {match: "*", via: direct}')
    path.write_text("\n".join(lines + routes) + "\n")
    return path


def _chunks(texts: list[str]) -> list[list[str]]:
    size = -(-len(texts) // LISTS)
    return [texts[i : i + size] for i in range(0, len(texts), size)]


# ------------------------------------------------------------------------- measure


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _hit(text: str, rng: random.Random) -> tuple[str, int]:
    """A destination that `text` matches."""
    port = 443
    if text.startswith("["):
        text = text[1:].replace("]", "")
    host, _, rest = text.partition("/")
    if rest:
        length, _, port_text = rest.partition(":")
        port = int(port_text) if port_text else port
        net = ipaddress.ip_network(f"{host}/{length}", strict=False)
        return str(net.network_address + (net.num_addresses > 1)), port
    name, _, port_text = host.partition(":")
    port = int(port_text) if port_text else port
    if name.startswith("*."):
        return f"w{rng.randrange(9)}.{name[2:]}", port
    if name.startswith("."):
        return rng.choice([name[1:], f"a.b{rng.randrange(9)}.{name[1:]}"]), port
    return name, port


def _misses(rng: random.Random, n: int) -> list[tuple[str, int]]:
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append((f"www.site{rng.randrange(10**6)}.example.org", 443))
        elif kind == 1:
            out.append((f"127.{rng.randrange(256)}.{rng.randrange(256)}.1", 443))
        else:
            out.append((f"2001:db9::{rng.randrange(65536):x}", 443))
    return out


def measure(config: str, n: int, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    from chainer.config import load_config
    from chainer.models import Address
    from chainer.routing import policy
    from chainer.routing.table import RouteTable, scan_match

    imported = time.perf_counter()
    loaded = load_config(config)
    parsed = time.perf_counter()
    table = RouteTable.of(loaded.routes)
    policy.prepare(loaded.policy)
    indexed = time.perf_counter()
    rss = _status_kib("VmRSS")
    hwm = _status_kib("VmHWM")

    rng = random.Random(seed + 1)
    texts = patterns(n, seed)
    hits = [Address(*_hit(t, rng)) for t in rng.sample(texts, min(2000, n))]
    misses = [Address(*d) for d in _misses(rng, 2000)]
    wrong = [a for a in hits if (m := table.match(a)) is None or m.route.via.kind == "direct"]
    if wrong:
        raise SystemExit(f"generated hits that do not hit: {wrong[:3]}")

    # As `chainer serve` does once its table is loaded: the collector never walks it.
    gc.collect()
    gc.freeze()

    def per_match(addrs: list[Address], repeat: int, passes: int = 5) -> list[float]:
        """µs per match of each destination: the best of `passes` runs of `repeat`, the
        passes going over every destination in turn (as timeit takes the best: a run the
        OS preempted says nothing about the lookup, and a preemption of a few ms spans
        one pass for a few destinations, not every run of them)."""
        best = [float("inf")] * len(addrs)
        for _ in range(passes):
            for n, a in enumerate(addrs):
                t0 = time.perf_counter()
                for _ in range(repeat):
                    table.match(a)
                best[n] = min(best[n], time.perf_counter() - t0)
        return [b / repeat * 1e6 for b in best]

    hit_us, miss_us = per_match(hits, 10), per_match(misses, 10)
    scan_us = []
    for a in misses[:5]:
        t0 = time.perf_counter()
        scan_match(loaded.routes, a)
        scan_us.append((time.perf_counter() - t0) * 1e6)
    return {
        "patterns": sum(len(r.patterns) for r in loaded.routes),
        "import_s": imported - started,
        "load_s": parsed - imported,
        "index_s": indexed - parsed,
        "total_s": indexed - imported,
        "rss_mib": rss / 1024,
        "peak_rss_mib": hwm / 1024,
        "match_hit_us": _spread(hit_us),
        "match_miss_us": _spread(miss_us),
        "scan_miss_us": statistics.median(scan_us),
    }


def _spread(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"median": statistics.median(values), "p99": cuts[98], "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("config")
    m.add_argument("--patterns", type=int, required=True)
    m.add_argument("--seed", type=int, required=True)
    args = parser.parse_args()
    print(json.dumps(measure(args.config, args.patterns, args.seed)), flush=True)


if __name__ == "__main__":
    main()
