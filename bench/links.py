"""Time to first byte through chains of 1-4 real hops on links with a real delay.

    python bench/links.py [--rounds 11] [--delay 5ms] [--json out.json] [--quick]

How this works. Six network namespaces — the client, hops h1..h4 and the origin — are
joined by links that hold every packet `--delay` each way (netlab.py, delayline.py):

    client ── h1 (squid) ── h2 (tinyproxy) ── h3 (dante) ── h4 (microsocks)
               └──────────────┴──────────────────┴──────────────┴── origin (HTTPS)

A chain of N hops is h1..hN; the origin's name resolves only inside the hops' own
namespaces, each to its own link to the origin, so the last hop of every chain reaches
it over one more delayed link, and names are never resolved on the client. In the
client namespace run: curl (the client, a fresh process per fetch), chainer (one
process; a route per chain, each chain by its own name for the origin), pproxy (one
process per N, `-r` with the hops joined by `__`) and proxychains4 (`strict_chain`,
`proxy_dns`, wrapping curl). Every fetch is `curl https://cN-origin.lab.test/` through
one contender; what is measured is curl's own `time_starttransfer` (first byte of the
answer) and `time_appconnect` (TLS with the origin established).

Rounds: each round fetches once through every (contender, N) in a fresh shuffled
order; the table shows medians, and ratios are taken inside each round (a contender
over proxychains4 at the same N in the same round), then their median. The slope per
hop is the least-squares slope of the medians over N = 1..4.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netlab
import peers
from netlab import NetLab
from procs import Lab, ensure_pproxy

ROOT = Path(__file__).resolve().parent.parent
HOPS = ("h1", "h2", "h3", "h4")
KINDS = ("squid", "tinyproxy", "dante", "microsocks")  # h1..h4
SCHEMES = ("http", "http", "socks5", "socks5")
ORIGIN = "origin.lab.test"
CHAINER_PORT = 8080
PPROXY_PORTS = (8101, 8102, 8103, 8104)
FETCH_TIMEOUT = 30.0
TARGET_PIPELINED = 0.6  # 3-hop TTFB with pipelining, x proxychains4


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_delay(text: str) -> float:
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    if text.endswith("s"):
        return float(text[:-1])
    return float(text)


# -------------------------------------------------------------------------- the lab


@dataclass(frozen=True)
class Topology:
    """Where everything listens, from the links netlab numbered."""

    net: NetLab

    def hop_addr(self, k: int) -> str:
        """Where hop k listens: its end of the link from the namespace before it."""
        return self.net.links[k - 1].right_addr

    def origin_link(self, k: int) -> netlab.Link:
        return self.net.links[len(HOPS) + k - 1]

    def hop_port(self, k: int) -> int:
        return (peers.SQUID_PORT, peers.TINYPROXY_PORT, peers.DANTE_PORT, peers.MICROSOCKS_PORT)[
            k - 1
        ]

    def hop_url(self, k: int) -> str:
        return f"{SCHEMES[k - 1]}://{self.hop_addr(k)}:{self.hop_port(k)}"


def origin_name(prefix: str, n: int) -> str:
    """The origin's name for one contender and chain length (all the same length)."""
    return f"{prefix}{n}-{ORIGIN}"


PREFIXES = ("c", "p", "x", "y")  # chainer, chainer pipelined, proxychains4, pproxy
ALL_NAMES = [origin_name(p, n) for p in PREFIXES for n in range(1, 5)]


def build_roles() -> tuple[list[str], list[tuple[str, str]]]:
    roles = ["client", *HOPS, "origin"]
    links = [("client", "h1"), ("h1", "h2"), ("h2", "h3"), ("h3", "h4")]
    links += [(hop, "origin") for hop in HOPS]
    return roles, links


def hosts_files() -> dict[str, str]:
    """Each hop resolves the origin's names to the origin's end of its own link to it
    (links 5..8, right side: 198.18.(4+k).2)."""
    names = " ".join(ALL_NAMES)
    return {hop: f"198.18.{4 + k}.2\t{names}\n" for k, hop in enumerate(HOPS, 1)}


def start_peers(top: Topology, workdir: Path, tickets: int) -> Path:
    net = top.net
    ca_pem, cert, key = peers.certificates(workdir, ALL_NAMES)
    proc = net.spawn(
        "origin", "origin", peers.origin("0.0.0.0", peers.ORIGIN_PORT, cert, key, tickets)
    )
    starts = []
    allow = netlab.LAB_RANGE
    for k, (hop, kind) in enumerate(zip(HOPS, KINDS, strict=True), 1):
        addr, port = top.hop_addr(k), top.hop_port(k)
        if kind == "squid":
            argv = peers.squid(addr, port, workdir, allow)
        elif kind == "tinyproxy":
            argv = peers.tinyproxy(addr, port, workdir, allow)
        elif kind == "dante":
            externals = [net.links[k].left_addr, top.origin_link(k).left_addr]
            argv = peers.dante(addr, port, externals, workdir, allow)
        else:
            argv = peers.microsocks(addr, port)
        starts.append((hop, addr, port, net.spawn(hop, kind, argv)))
    net.wait_listening("origin", top.origin_link(1).right_addr, peers.ORIGIN_PORT, proc)
    for hop, addr, port, p in starts:
        net.wait_listening(hop, addr, port, p)
    return ca_pem


def chainer_config(top: Topology, pipeline: bool) -> str:
    lines = [
        f"listen: [127.0.0.1:{CHAINER_PORT}]",
        "defaults: {connect_timeout: 10s, handshake_timeout: 10s, deadline: 30s}",
        "proxies:",
    ]
    for k in range(1, 5):
        extra = ", pipeline: true" if pipeline and KINDS[k - 1] == "dante" else ""
        lines.append(f'  h{k}: {{url: "{top.hop_url(k)}"{extra}}}')
    lines.append("chains:")
    for n in range(1, 5):
        hops = ", ".join(f"h{k}" for k in range(1, n + 1))
        lines.append(f"  c{n}: [{hops}]")
        if pipeline:
            lines.append(f"  p{n}: {{hops: [{hops}], pipeline: true}}")
    lines.append("routes:")
    for n in range(1, 5):
        lines.append(f"  - {{match: {origin_name('c', n)}, via: c{n}}}")
        if pipeline:
            lines.append(f"  - {{match: {origin_name('p', n)}, via: p{n}}}")
    return "\n".join(lines) + "\n"


def proxychains_config(top: Topology, n: int) -> str:
    lines = [
        "strict_chain",
        "quiet_mode",
        "proxy_dns",
        "remote_dns_subnet 224",
        "tcp_read_time_out 15000",
        "tcp_connect_time_out 8000",
        "[ProxyList]",
    ]
    for k in range(1, n + 1):
        kind = "http" if SCHEMES[k - 1] == "http" else "socks5"
        lines.append(f"{kind} {top.hop_addr(k)} {top.hop_port(k)}")
    return "\n".join(lines) + "\n"


def pproxy_remote(top: Topology, n: int) -> str:
    """pproxy's `-r`: the hops in order, joined by `__` (its jump syntax)."""
    return "__".join(
        f"{'http' if SCHEMES[k - 1] == 'http' else 'socks5'}://{top.hop_addr(k)}:{top.hop_port(k)}"
        for k in range(1, n + 1)
    )


# ------------------------------------------------------------------------ contenders


@dataclass(frozen=True)
class Contender:
    name: str
    prefix: str
    command: Callable[[int, list[str]], list[str]]  # (N, curl argv) -> argv to run


def curl_argv(ca_pem: Path, url: str, proxy: str | None) -> list[str]:
    argv = [
        peers.binary("curl") or "curl",
        "-q",
        "-sS",
        "--http1.1",
        "--max-time",
        f"{FETCH_TIMEOUT:g}",
        "--cacert",
        str(ca_pem),
        "-o",
        "/dev/null",
        "-w",
        "%{json}",
    ]
    if proxy is not None:
        argv += ["-x", proxy]
    return [*argv, url]


def fetch(net: NetLab, contender: Contender, n: int, ca_pem: Path) -> dict[str, Any]:
    url = f"https://{origin_name(contender.prefix, n)}/"
    argv = contender.command(n, curl_argv(ca_pem, url, None))
    try:
        done = net.run("client", argv, timeout=FETCH_TIMEOUT + 10)
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    try:
        info = json.loads(done.stdout.decode() or "{}")
    except ValueError:
        info = {}
    if done.returncode != 0 or info.get("http_code") != 200:
        err = done.stderr.decode("utf-8", "replace").strip()[-200:]
        return {"error": f"exit {done.returncode}, http {info.get('http_code')}: {err}"}
    return {
        "ttfb_ms": info["time_starttransfer"] * 1000,
        "tls_ms": info["time_appconnect"] * 1000,
        "total_ms": info["time_total"] * 1000,
    }


def start_contenders(
    top: Topology, workdir: Path, pproxy: Path | None, pipeline: bool
) -> list[Contender]:
    net = top.net
    config = workdir / "chainer.yaml"
    config.write_text(chainer_config(top, pipeline))
    chainer = net.spawn(
        "client",
        "chainer",
        [
            "env",
            f"PYTHONPATH={ROOT}",
            sys.executable,
            "-m",
            "chainer",
            "serve",
            "-c",
            str(config),
            "--log-level",
            "warning",
        ],
    )
    net.wait_listening("client", "127.0.0.1", CHAINER_PORT, chainer)
    proxy = f"http://127.0.0.1:{CHAINER_PORT}"

    def through_chainer(n: int, argv: list[str]) -> list[str]:
        return [*argv[:-1], "-x", proxy, argv[-1]]

    contenders = [Contender("chainer", "c", through_chainer)]
    if pipeline:
        contenders.append(Contender("chainer pipelined", "p", through_chainer))
    confs = []
    for n in range(1, 5):
        path = workdir / f"proxychains-{n}.conf"
        path.write_text(proxychains_config(top, n))
        confs.append(path)
    exe = peers.binary("proxychains4") or "proxychains4"
    contenders.append(
        Contender("proxychains4", "x", lambda n, argv: [exe, "-q", "-f", str(confs[n - 1]), *argv])
    )
    if pproxy is not None:
        for n, port in enumerate(PPROXY_PORTS, 1):
            command = [str(pproxy), "-l", f"http://127.0.0.1:{port}", "-r", pproxy_remote(top, n)]
            proc = net.spawn("client", f"pproxy-{n}", command)
            net.wait_listening("client", "127.0.0.1", port, proc)

        def through_pproxy(n: int, argv: list[str]) -> list[str]:
            return [*argv[:-1], "-x", f"http://127.0.0.1:{PPROXY_PORTS[n - 1]}", argv[-1]]

        contenders.append(Contender("pproxy", "y", through_pproxy))
    return contenders


# ------------------------------------------------------------------------- analysis


def slope(points: dict[int, float]) -> float | None:
    """Least-squares slope of y over n."""
    if len(points) < 2:
        return None
    xs, ys = list(points), list(points.values())
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den


REFERENCES = ("proxychains4", "pproxy")


def same_round_ratios(rounds: list[dict[str, Any]], name: str, ref: str) -> dict[int, float]:
    """Per N: the median over rounds of (name's TTFB / ref's TTFB in the same round)."""
    out = {}
    for n in range(1, 5):
        ratios = []
        for r in rounds:
            mine, theirs = r["samples"].get(f"{name}|{n}"), r["samples"].get(f"{ref}|{n}")
            if mine and theirs and "error" not in mine and "error" not in theirs:
                ratios.append(mine["ttfb_ms"] / theirs["ttfb_ms"])
        if ratios:
            out[n] = statistics.median(ratios)
    return out


def summarize(rounds: list[dict[str, Any]], names: list[str], delay: float) -> dict[str, Any]:
    out: dict[str, Any] = {"contenders": {}, "targets": []}
    for name in names:
        row: dict[str, Any] = {"ttfb_ms": {}, "tls_ms": {}, "errors": {}}
        for n in range(1, 5):
            key = f"{name}|{n}"
            samples = [r["samples"][key] for r in rounds if key in r["samples"]]
            good = [s for s in samples if "error" not in s]
            row["errors"][n] = len(samples) - len(good)
            if good:
                row["ttfb_ms"][n] = statistics.median(s["ttfb_ms"] for s in good)
                row["tls_ms"][n] = statistics.median(s["tls_ms"] for s in good)
        for ref in REFERENCES:
            row[f"x_{ref}"] = same_round_ratios(rounds, name, ref)
        row["slope_ms_per_hop"] = slope(row["ttfb_ms"])
        out["contenders"][name] = row
    rows = out["contenders"]
    if "chainer pipelined" in rows:
        ratio = rows["chainer pipelined"]["x_proxychains4"].get(3)
        out["targets"].append(
            {
                "target": "3-hop TTFB with pipelining <= 0.6x proxychains4",
                "value": ratio,
                "met": ratio is not None and ratio <= TARGET_PIPELINED,
            }
        )
    peers_seen = [p for p in ("proxychains4", "pproxy") if p in rows]
    worst = None
    for n in range(1, 5):
        best_peer = [rows[p]["ttfb_ms"][n] for p in peers_seen if n in rows[p]["ttfb_ms"]]
        mine = rows["chainer"]["ttfb_ms"].get(n)
        if best_peer and mine is not None:
            extra = mine - min(best_peer)
            worst = extra if worst is None else max(worst, extra)
    # The shortest round trip in the lab is to hop 1 and back: two link delays.
    out["targets"].append(
        {
            "target": "chainer (step by step) adds no round trip a peer does not "
            f"(ms over the fastest peer, worst N; one round trip = {2 * delay * 1000:g} ms)",
            "value": worst,
            "met": worst is not None and worst < 2 * delay * 1000,
        }
    )
    return out


def render(summary: dict[str, Any]) -> str:
    lines = [
        "time to first byte, ms: median (x proxychains4, median of same-round ratios)",
        f"{'contender':<20}" + "".join(f"{f'N={n}':>18}" for n in range(1, 5)) + f"{'per hop':>10}",
    ]
    for name, row in summary["contenders"].items():
        cells = []
        for n in range(1, 5):
            value = row["ttfb_ms"].get(n)
            ratio = row["x_proxychains4"].get(n)
            cell = "-" if value is None else f"{value:.1f}"
            if ratio is not None and name != "proxychains4":
                cell += f" ({ratio:.2f})"
            if row["errors"].get(n):
                cell += f" {row['errors'][n]}err"
            cells.append(f"{cell:>18}")
        per_hop = row["slope_ms_per_hop"]
        lines.append(
            f"{name:<20}" + "".join(cells) + f"{'-' if per_hop is None else f'{per_hop:.1f}':>10}"
        )
    lines.append("")
    lines.append("x pproxy (median of same-round ratios)")
    for name, row in summary["contenders"].items():
        if name != "pproxy" and row.get("x_pproxy"):
            ratios = "".join(f"{row['x_pproxy'].get(n, float('nan')):>18.2f}" for n in range(1, 5))
            lines.append(f"{name:<20}" + ratios)
    lines.append("")
    lines.append("time to TLS established with the origin, ms (median)")
    for name, row in summary["contenders"].items():
        tls = "".join(f"{row['tls_ms'].get(n, float('nan')):>18.1f}" for n in range(1, 5))
        lines.append(f"{name:<20}" + tls)
    lines.append("")
    for target in summary["targets"]:
        value = target["value"]
        shown = "not measured" if value is None else f"{value:.2f}"
        verdict = "met" if target["met"] else ("not measured" if value is None else "MISSED")
        lines.append(f"{target['target']}: {shown} -> {verdict}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ main


def meta(args: argparse.Namespace, pproxy_note: str) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "chainer"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "commit": commit,
        "chainer_modified": bool(dirty),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "delay_each_way_s": args.delay,
        "rounds": args.rounds,
        "tickets": args.tickets,
        "pproxy": pproxy_note,
        "seed": args.seed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    parser.add_argument("--delay", type=parse_delay, default=0.005, help="each way, per link")
    parser.add_argument("--tickets", type=int, default=2, help="TLS 1.3 tickets the origin sends")
    parser.add_argument("--no-pproxy", action="store_true")
    parser.add_argument("--no-pipeline", action="store_true", help="leave out chainer pipelined")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "chainer-bench")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 3
    args.seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    problem = netlab.available()
    lacking = peers.missing()
    if problem or lacking:
        _log(f"cannot run: {problem or ''} {('missing: ' + ', '.join(lacking)) if lacking else ''}")
        _log(f"({peers.APT})")
        return 2
    pproxy, pproxy_note = (None, "left out (--no-pproxy)")
    if not args.no_pproxy:
        pproxy, pproxy_note = ensure_pproxy(args.cache_dir, _log)
    _log(pproxy_note)
    rng = random.Random(args.seed)
    started = time.monotonic()
    load_before = os.getloadavg()
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chainer-links-", dir="/dev/shm") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        lab = Lab(workdir, nofile=4096)
        roles, links = build_roles()
        try:
            with netlab.netlab(lab, roles, links, args.delay, hosts_files()) as net:
                top = Topology(net)
                ca_pem = start_peers(top, workdir, args.tickets)
                contenders = start_contenders(top, workdir, pproxy, not args.no_pipeline)
                plan = [(c, n) for c in contenders for n in range(1, 5)]
                _log("warm-up: one fetch through each contender and chain")
                for contender, n in plan:
                    warm = fetch(net, contender, n, ca_pem)
                    if "error" in warm:
                        _log(f"  {contender.name} N={n}: {warm['error']}")
                for i in range(args.rounds):
                    order = plan[:]
                    rng.shuffle(order)
                    samples = {}
                    for contender, n in order:
                        samples[f"{contender.name}|{n}"] = fetch(net, contender, n, ca_pem)
                    load = os.getloadavg()[0]
                    rounds.append(
                        {
                            "order": [f"{c.name}|{n}" for c, n in order],
                            "samples": samples,
                            "load1": load,
                        }
                    )
                    _log(f"round {i + 1}/{args.rounds} done (load {load:.2f})")
        finally:
            lab.stop_all()
    names = [c.name for c in contenders]
    summary = summarize(rounds, names, args.delay)
    load_after = os.getloadavg()
    print(render(summary))
    print(
        f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} (2-core machine: "
        "other work shares it); {:.0f} s".format(time.monotonic() - started)
    )
    if args.json is not None:
        record = {
            "meta": {
                **meta(args, pproxy_note),
                "load_before": load_before,
                "load_after": load_after,
            },
            "rounds": rounds,
            "summary": summary,
            "table": render(summary),
        }
        args.json.write_text(json.dumps(record, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
