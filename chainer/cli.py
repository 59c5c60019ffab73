"""Command line: argument parsing, logging set-up, anyio.run. The only sys.exit."""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from collections.abc import Sequence
from importlib import metadata

import anyio

from .config import load_config
from .errors import BadTarget, ConfigErrors
from .models import Config
from .relay import RelayOptions
from .server.logs import setup_logging
from .server.run import run_server
from .text import parse_duration, plural

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


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
  chainer demo                           a chained topology in one process
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
    with_config(sub.add_parser("validate", help="check the route table and exit"))

    explain = with_config(
        sub.add_parser("explain", help="which rule, chain and hops a destination gets")
    )
    explain.add_argument("destination", metavar="HOST[:PORT]|URL")
    explain.add_argument(
        "--live", action="store_true", help="add hop health from the running admin endpoint"
    )
    explain.add_argument("--json", action="store_true", help="machine-readable output")

    check = with_config(
        sub.add_parser("check", help="probe each chain hop by hop, through the hops before it")
    )
    check.add_argument("selector", nargs="?", metavar="CHAIN|ROUTE", help="e.g. lab or routes[2]")
    check.add_argument("--target", metavar="HOST[:PORT]", help="finally ask for this")
    check.add_argument("--json", action="store_true", help="machine-readable output")

    sub.add_parser("demo", help="a local chained topology in one process, and its trace")
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
        sys.exit(_demo())
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
        sys.exit(_explain(config, args.destination, args.live, args.json))
    if args.command == "check":
        sys.exit(_check(config, args.selector, args.target, args.json))
    setup_logging(args.log_level, args.log_file, args.log_format)
    sys.exit(_run_server(config, args.grace, args.watch, _relay_options()))


def _error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def _explain(config: Config, destination: str, live: bool, as_json: bool) -> int:
    from .ops.explain import explain
    from .ops.explain_render import render_json, render_text
    from .ops.liveview import LiveUnavailable, fetch_hops_view

    health = None
    if live:
        if config.admin is None:
            _error("--live needs an admin: address in the config")
            return EXIT_USAGE
        try:
            health = fetch_hops_view(config.admin)
        except LiveUnavailable as exc:
            _error(exc)
            return EXIT_RUNTIME
    try:
        explanation = explain(config, destination, health)
    except BadTarget as exc:
        _error(exc)
        return EXIT_USAGE
    if as_json:
        print(json.dumps(render_json(explanation), indent=2))
    else:
        print(render_text(explanation), end="")
    return EXIT_OK


def _check(config: Config, selector: str | None, target_text: str | None, as_json: bool) -> int:
    from .ops.check import ProbeResult, UnknownSelector, check, render_json, render_table
    from .ops.explain import parse_destination

    try:
        target = parse_destination(target_text)[0] if target_text else None
    except BadTarget as exc:
        _error(exc)
        return EXIT_USAGE

    def progress(result: ProbeResult) -> None:
        print(
            f"  {result.chain} hop {result.hop} {result.candidate}: {result.outcome}",
            file=sys.stderr,
        )

    show = progress if sys.stderr.isatty() and not as_json else None
    try:
        report = anyio.run(functools.partial(check, config, selector, target=target, progress=show))
    except UnknownSelector as exc:
        _error(exc)
        return EXIT_USAGE
    if as_json:
        print(json.dumps(render_json(report), indent=2))
    else:
        print(render_table(report), end="")
    return EXIT_OK if report.ok else EXIT_RUNTIME


def _demo() -> int:
    from .ops.demo import run_demo

    try:
        ok = anyio.run(run_demo, sys.stdout)
    except KeyboardInterrupt:
        ok = False
    return EXIT_OK if ok else EXIT_RUNTIME


def _relay_options() -> RelayOptions:
    """CHAINER_RELAY=generic turns the splice fast path off (for comparisons and tests)."""
    return RelayOptions(mode="generic" if os.environ.get("CHAINER_RELAY") == "generic" else "auto")


def _run_server(config: Config, grace: float, watch: bool, relay: RelayOptions) -> int:
    status = EXIT_OK
    try:
        anyio.run(functools.partial(run_server, config, grace=grace, watch=watch, relay=relay))
    except* OSError as group:
        for exc in _leaves(group):
            print(f"error: {exc}", file=sys.stderr)
        status = EXIT_RUNTIME
    except* KeyboardInterrupt:
        pass
    return status


def _leaves(group: BaseExceptionGroup[OSError]) -> list[OSError]:
    found: list[OSError] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            found.extend(_leaves(exc))
        else:
            found.append(exc)
    return found
