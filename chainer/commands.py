"""What each command does once its arguments are parsed; each returns the exit code.

cli.py parses the arguments, sets up logging and calls one of these; it is the only
place that calls sys.exit. Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import signal
import sys
from typing import cast

import anyio

from .errors import BadTarget
from .models import Config, Transparent
from .relay import RelayOptions
from .server.logs import setup_logging
from .server.run import run_server

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def error(message: object) -> None:
    print(f"error: {message}", file=sys.stderr)


def explain(
    config: Config, destination: str, live: bool, as_json: bool, sni: str | None = None
) -> int:
    from .ops.explain import explain
    from .ops.explain_render import render_json, render_text
    from .ops.liveview import LiveUnavailable, fetch_hops_view

    health = None
    if live:
        if config.admin is None:
            error("--live needs an admin: address in the config")
            return EXIT_USAGE
        try:
            health = fetch_hops_view(config.admin)
        except LiveUnavailable as exc:
            error(exc)
            return EXIT_RUNTIME
    try:
        explanation = explain(config, destination, health, sni=sni)
    except BadTarget as exc:
        error(exc)
        return EXIT_USAGE
    if as_json:
        print(json.dumps(render_json(explanation), indent=2))
    else:
        print(render_text(explanation), end="")
    return EXIT_OK


def check(
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
        error(exc)
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
        error(exc)
        return EXIT_USAGE
    if as_json:
        print(json.dumps(render_json(report), indent=2))
    else:
        print(render_table(report), end="")
    return EXIT_OK if report.ok else EXIT_RUNTIME


def rules(config: Config, mode: str | None, delete: bool, routing: bool) -> int:
    from .ops.rules import RulesError, rules

    try:
        ruleset = rules(config, cast("Transparent | None", mode), delete=delete)
    except RulesError as exc:
        error(exc)
        return EXIT_USAGE
    if routing and not ruleset.routing:
        print("# no tproxy listener: no policy routing is needed", file=sys.stderr)
    elif routing:
        print("\n".join(ruleset.routing))
    else:
        print(ruleset.nft, end="")
    return EXIT_OK


def demo() -> int:
    from .ops.demo import run_demo

    try:
        ok = anyio.run(run_demo, sys.stdout)
    except KeyboardInterrupt:
        ok = False
    return EXIT_OK if ok else EXIT_RUNTIME


def _backend_options(loop: str) -> dict[str, bool]:
    """anyio.run's options for the chosen loop. `uvloop` fails when it is not installed;
    `auto` takes it only when it is."""
    if loop == "asyncio":
        return {"use_uvloop": False}
    if loop == "uvloop" or importlib.util.find_spec("uvloop") is not None:
        return {"use_uvloop": True}
    return {"use_uvloop": False}


def relay_options() -> RelayOptions:
    """CHAINER_RELAY=generic turns the splice fast path off (for comparisons and tests)."""
    return RelayOptions(mode="generic" if os.environ.get("CHAINER_RELAY") == "generic" else "auto")


def serve(
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


def run(args: argparse.Namespace, config: Config | None) -> int:
    from .ops.run import parse_via, run_command

    argv = list(args.cmd)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        error("chainer run needs a command: chainer run [-c routes.yaml] -- CMD [ARG...]")
        return EXIT_USAGE
    via = None
    if args.via:
        try:
            via = parse_via(args.via)
        except BadTarget as exc:
            error(exc)
            return EXIT_USAGE
    else:
        log_file = args.log_file or _default_run_log()
        try:
            os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
            setup_logging(args.log_level, log_file, args.log_format)
        except OSError as exc:
            error(f"cannot write the log {log_file}: {exc.strerror or exc}")
            return EXIT_USAGE
    run = functools.partial(
        run_command,
        argv,
        dict(os.environ),
        config=config,
        via=via,
        relay=relay_options(),
        foreground=_in_terminal_foreground(),
    )
    status = EXIT_RUNTIME
    try:
        status = anyio.run(run, backend="asyncio", backend_options=_backend_options("auto"))
    except* FileNotFoundError:
        error(f"{argv[0]}: command not found")
        status = 127  # as a shell says it
    except* PermissionError:
        error(f"{argv[0]}: permission denied")
        status = 126
    except* OSError as group:
        for failure in _leaves(group):
            error(failure)
    except* KeyboardInterrupt:  # before CMD started (after, signals go to CMD)
        status = 128 + signal.SIGINT
    return status


def _in_terminal_foreground() -> bool:
    """Whether this process group is the foreground of the terminal on stdin."""
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, ValueError, AttributeError):  # no terminal, or stdin closed
        return False


def env(config: Config | None, via_text: str | None) -> int:
    from .ops.run import export_lines, listener_endpoint, parse_via, proxy_variables

    try:
        if via_text:
            endpoint = parse_via(via_text)
        else:
            assert config is not None
            endpoint = listener_endpoint(config.listeners[0])
    except BadTarget as exc:
        error(exc)
        return EXIT_USAGE
    print(export_lines(proxy_variables(endpoint)), end="")
    return EXIT_OK


def pac(config: Config, proxy_text: str | None) -> int:
    from .ops.pac import pac_for_config

    try:
        script = pac_for_config(config, proxy_text)
    except BadTarget as exc:
        error(exc)
        return EXIT_USAGE
    print(script, end="")
    return EXIT_OK
