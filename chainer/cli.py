"""Command line: argument parsing, logging set-up, anyio.run. The only sys.exit."""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import signal
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import cast

import anyio

from .config import load_config
from .errors import BadTarget, ConfigErrors
from .models import Config, Transparent
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
        sys.exit(_demo())
    if args.command in ("run", "env") and args.via:
        sys.exit(_run(args, None) if args.command == "run" else _env(None, args.via))
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
        sys.exit(_explain(config, args.destination, args.live, args.json, args.sni))
    if args.command == "rules":
        sys.exit(_rules(config, args.mode, args.delete, args.routing))
    if args.command == "check":
        sys.exit(_check(config, args.selector, args.target, args.json, args.sni))
    if args.command == "run":
        sys.exit(_run(args, config))
    if args.command == "env":
        sys.exit(_env(config, None))
    if args.command == "pac":
        sys.exit(_pac(config, args.proxy))
    setup_logging(args.log_level, args.log_file, args.log_format)
    sys.exit(_run_server(config, args.grace, args.watch, _relay_options(), args.loop))


def _error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def _explain(
    config: Config, destination: str, live: bool, as_json: bool, sni: str | None = None
) -> int:
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
        explanation = explain(config, destination, health, sni=sni)
    except BadTarget as exc:
        _error(exc)
        return EXIT_USAGE
    if as_json:
        print(json.dumps(render_json(explanation), indent=2))
    else:
        print(render_text(explanation), end="")
    return EXIT_OK


def _check(
    config: Config,
    selector: str | None,
    target_text: str | None,
    as_json: bool,
    sni: str | None = None,
) -> int:
    from .ops.check import ProbeResult, UnknownSelector, check, render_json, render_table
    from .ops.explain import explain, parse_destination

    try:
        target = parse_destination(target_text)[0] if target_text else None
        if sni is not None:
            if target is None:
                raise BadTarget("--sni needs --target ADDRESS:PORT, the captured destination")
            named = explain(config, target, sni=sni)  # the name, as the server takes it
            target = named.target
            if selector is None and named.route is None:
                raise BadTarget(f"no route matches {target}")
            selector = selector or named.route
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


def _rules(config: Config, mode: str | None, delete: bool, routing: bool) -> int:
    from .ops.rules import RulesError, rules

    try:
        ruleset = rules(config, cast("Transparent | None", mode), delete=delete)
    except RulesError as exc:
        _error(exc)
        return EXIT_USAGE
    if routing and not ruleset.routing:
        print("# no tproxy listener: no policy routing is needed", file=sys.stderr)
    elif routing:
        print("\n".join(ruleset.routing))
    else:
        print(ruleset.nft, end="")
    return EXIT_OK


def _demo() -> int:
    from .ops.demo import run_demo

    try:
        ok = anyio.run(run_demo, sys.stdout)
    except KeyboardInterrupt:
        ok = False
    return EXIT_OK if ok else EXIT_RUNTIME


def _loop_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--loop",
        default="auto",
        choices=["auto", "asyncio", "uvloop"],
        help="the event loop: uvloop when installed (pip install 'chainer[fast]'), else "
        "asyncio's own (default auto)",
    )


def _backend_options(loop: str) -> dict[str, bool]:
    """anyio.run's options for the chosen loop. `uvloop` fails when it is not installed;
    `auto` takes it only when it is."""
    if loop == "asyncio":
        return {"use_uvloop": False}
    if loop == "uvloop" or importlib.util.find_spec("uvloop") is not None:
        return {"use_uvloop": True}
    return {"use_uvloop": False}


def _relay_options() -> RelayOptions:
    """CHAINER_RELAY=generic turns the splice fast path off (for comparisons and tests)."""
    return RelayOptions(mode="generic" if os.environ.get("CHAINER_RELAY") == "generic" else "auto")


def _run_server(
    config: Config, grace: float, watch: bool, relay: RelayOptions, loop: str = "auto"
) -> int:
    status = EXIT_OK
    try:
        anyio.run(
            functools.partial(run_server, config, grace=grace, watch=watch, relay=relay),
            backend="asyncio",
            backend_options=_backend_options(loop),
        )
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


def _default_run_log() -> str:
    """$XDG_STATE_HOME/chainer/run.log, else ~/.local/state/chainer/run.log."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(state, "chainer", "run.log")


def _run(args: argparse.Namespace, config: Config | None) -> int:
    from .ops.run import parse_via, run_command

    argv = list(args.cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        _error("chainer run needs a command: chainer run [-c routes.yaml] -- CMD [ARG...]")
        return EXIT_USAGE
    via = None
    if args.via:
        try:
            via = parse_via(args.via)
        except BadTarget as exc:
            _error(exc)
            return EXIT_USAGE
    else:
        log_file = args.log_file or _default_run_log()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            setup_logging(args.log_level, log_file, args.log_format)
        except OSError as exc:
            _error(f"cannot write the log {log_file}: {exc.strerror or exc}")
            return EXIT_USAGE
    run = functools.partial(
        run_command,
        argv,
        dict(os.environ),
        config=config,
        via=via,
        relay=_relay_options(),
        foreground=_in_terminal_foreground(),
    )
    status = EXIT_RUNTIME
    try:
        status = anyio.run(run, backend="asyncio", backend_options=_backend_options("auto"))
    except* FileNotFoundError:
        _error(f"{argv[0]}: command not found")
        status = 127  # as a shell says it
    except* PermissionError:
        _error(f"{argv[0]}: permission denied")
        status = 126
    except* OSError as group:
        for failure in _leaves(group):
            _error(failure)
    except* KeyboardInterrupt:  # before CMD started (after, signals go to CMD)
        status = 128 + signal.SIGINT
    return status


def _in_terminal_foreground() -> bool:
    """Whether this process group is the foreground of the terminal on stdin."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal, or stdin closed
        return False


def _env(config: Config | None, via_text: str | None) -> int:
    from .ops.run import export_lines, listener_endpoint, parse_via, proxy_variables

    try:
        if via_text:
            endpoint = parse_via(via_text)
        else:
            assert config is not None
            endpoint = listener_endpoint(config.listeners[0])
    except BadTarget as exc:
        _error(exc)
        return EXIT_USAGE
    print(export_lines(proxy_variables(endpoint)), end="")
    return EXIT_OK


def _pac(config: Config, proxy_text: str | None) -> int:
    from .ops.pac import pac_for_config

    try:
        script = pac_for_config(config, proxy_text)
    except BadTarget as exc:
        _error(exc)
        return EXIT_USAGE
    print(script, end="")
    return EXIT_OK
