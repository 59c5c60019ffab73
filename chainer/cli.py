"""Command line: argument parsing and dispatch to commands.py. The only sys.exit."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from importlib import metadata

from . import commands
from .commands import EXIT_OK, EXIT_USAGE
from .config import load_config
from .errors import ConfigErrors
from .models import Config
from .server.logs import setup_logging
from .text import parse_duration, plural


def _seconds(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


EXAMPLES = """\
examples:
  chainer serve                          serve ./routes.yaml (or $CHAINER_CONFIG)
  chainer serve -c /etc/chainer/routes.yaml --log-format json
  chainer validate -c routes.yaml        check a table; errors name file:line: key
  chainer explain db.lab.corp.example:5432
                                         which rule, chain and hops it would get
  chainer check lab --target db.lab.corp.example:5432
                                         probe chain "lab" hop by hop
  chainer explain 203.0.113.7:443 --sni app.corp.example
                                         what a captured connection would get
  chainer rules | nft -f -               capture TCP into the transparent listeners
  chainer demo                           a chained topology in one process
  chainer run -- curl https://example.com/
                                         one command through the route table
  eval "$(chainer env)"                  this shell through a running chainer
  chainer pac > proxy.pac                a PAC file for browsers
"""


def _version() -> str:
    try:
        return metadata.version("chainer")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chainer",
        description="A proxy-chaining router: each destination through its own chain of proxies.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"chainer {_version()}")
    sub = parser.add_subparsers(dest="command")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            default=os.environ.get("CHAINER_CONFIG", "routes.yaml"),
            help="route table (default: $CHAINER_CONFIG or ./routes.yaml)",
        )
        return p

    serve = with_config(sub.add_parser("serve", help="run the router"))
    serve.add_argument("--log-file", help="write logs here instead of stderr")
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug adds port probes and breaker detail; warning keeps only problems "
        "(default info: one access line per connection)",
    )
    serve.add_argument("--log-format", default="text", choices=["text", "json"])
    serve.add_argument(
        "--grace",
        type=_seconds,
        default=10.0,
        help="on SIGTERM/SIGINT, how long live tunnels may finish (default 10s)",
    )
    serve.add_argument("--watch", action="store_true", help="reload when the file changes")
    _loop_argument(serve)
    with_config(sub.add_parser("validate", help="check the route table and exit"))

    explain = with_config(
        sub.add_parser("explain", help="which rule, chain and hops a destination gets")
    )
    explain.add_argument("destination", metavar="HOST[:PORT]|URL")
    explain.add_argument(
        "--live", action="store_true", help="add hop health from the running admin endpoint"
    )
    explain.add_argument("--json", action="store_true", help="machine-readable output")
    explain.add_argument(
        "--sni",
        metavar="NAME",
        help="a captured connection to HOST:PORT whose first flight named NAME (TLS SNI "
        "or HTTP Host)",
    )

    check = with_config(
        sub.add_parser("check", help="probe each chain hop by hop, through the hops before it")
    )
    check.add_argument("selector", nargs="?", metavar="CHAIN|ROUTE", help="e.g. lab or routes[2]")
    check.add_argument("--target", metavar="HOST[:PORT]", help="finally ask for this")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument(
        "--sni",
        metavar="NAME",
        help="with --target ADDRESS:PORT: ask for NAME:PORT, as for a captured connection "
        "whose first flight named NAME; without CHAIN|ROUTE, the route NAME matches",
    )

    rules = with_config(
        sub.add_parser("rules", help="the nftables ruleset for the transparent listeners")
    )
    rules.add_argument("--mode", choices=["redirect", "tproxy"], help="only these listeners")
    rules.add_argument("--delete", action="store_true", help="what removes them instead")
    rules.add_argument(
        "--routing",
        action="store_true",
        help="only tproxy's policy routing (ip rule, ip route), as shell commands",
    )

    sub.add_parser("demo", help="a local chained topology in one process, and its trace")

    run = with_config(
        sub.add_parser(
            "run",
            help="run one command with its traffic routed by the table",
            usage="chainer run [-c routes.yaml] [--via URL] [--log-file F] -- CMD [ARG...]",
        )
    )
    run.add_argument("--via", metavar="URL", help="use the chainer running at URL instead")
    run.add_argument(
        "--log-file",
        help="the router's log (default: $XDG_STATE_HOME/chainer/run.log, "
        "else ~/.local/state/chainer/run.log)",
    )
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    run.add_argument("--log-format", default="text", choices=["text", "json"])
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARG...]")

    env = with_config(
        sub.add_parser("env", help='print export lines for a shell: eval "$(chainer env)"')
    )
    env.add_argument(
        "--via", metavar="URL", help="the chainer to use (default: the config's first listener)"
    )

    pac = with_config(sub.add_parser("pac", help="print a PAC file generated from the table"))
    pac.add_argument(
        "--proxy",
        metavar="HOST:PORT",
        help="the address browsers reach chainer at (default: the first listener's)",
    )
    return parser


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        if not os.path.exists(path):
            print(
                "hint: name the route table with -c FILE or $CHAINER_CONFIG "
                "(the default is ./routes.yaml)",
                file=sys.stderr,
            )
        return None


def main(argv: Sequence[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        sys.exit(EXIT_USAGE)
    if args.command == "demo":
        sys.exit(commands.demo())
    if args.command in ("run", "env") and args.via:
        sys.exit(
            commands.run(args, None) if args.command == "run" else commands.env(None, args.via)
        )
    config = _load(args.config)
    if config is None:
        sys.exit(EXIT_USAGE)
    if args.command == "validate":
        counts = (
            f"{plural(len(config.routes), 'route')}, "
            f"{plural(len(config.proxies), 'proxy', 'proxies')}, "
            f"{plural(len(config.chains), 'chain')}"
        )
        if config.lists:
            listed = sum(len(pl.patterns) for pl in config.lists)
            counts += f", {plural(len(config.lists), 'list')} of {plural(listed, 'pattern')}"
        print(f"{args.config}: ok ({counts})")
        sys.exit(EXIT_OK)
    if args.command == "explain":
        sys.exit(commands.explain(config, args.destination, args.live, args.json, args.sni))
    if args.command == "rules":
        sys.exit(commands.rules(config, args.mode, args.delete, args.routing))
    if args.command == "check":
        sys.exit(commands.check(config, args.selector, args.target, args.json, args.sni))
    if args.command == "run":
        sys.exit(commands.run(args, config))
    if args.command == "env":
        sys.exit(commands.env(config, None))
    if args.command == "pac":
        sys.exit(commands.pac(config, args.proxy))
    setup_logging(args.log_level, args.log_file, args.log_format)
    sys.exit(commands.serve(config, args.grace, args.watch, commands.relay_options(), args.loop))


def _loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="the event loop: uvloop when installed (pip install 'chainer[fast]'), else "
        "asyncio's own (default auto)",
    )
