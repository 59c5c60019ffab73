"""Command line: argument parsing, logging set-up, anyio.run. The only sys.exit."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import anyio

from .config import load_config
from .errors import ConfigErrors
from .models import Config
from .router import Router
from .server import Server

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chainer", description="A proxy-chaining router.")
    sub = parser.add_subparsers(dest="command", required=True)

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
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    with_config(sub.add_parser("validate", help="check the route table and exit"))
    return parser


def _load(path: str) -> Config | None:
    try:
        return load_config(path)
    except ConfigErrors as exc:
        for error in exc.errors:
            print(f"error: {error}", file=sys.stderr)
        return None


def _setup_logging(level: str, log_file: str | None) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("chainer")
    root.addHandler(handler)
    root.setLevel(level.upper())


async def _serve(config: Config) -> None:
    server = Server(Router(config))
    async with anyio.create_task_group() as tg:
        await tg.start(server.serve)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                logging.getLogger("chainer").info(
                    "%s received, shutting down", signal.Signals(signum).name
                )
                tg.cancel_scope.cancel()
                break


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    config = _load(args.config)
    if config is None:
        sys.exit(EXIT_USAGE)
    if args.command == "validate":
        print(
            f"{args.config}: ok ({len(config.routes)} routes, {len(config.proxies)} proxies, "
            f"{len(config.chains)} chains)"
        )
        sys.exit(EXIT_OK)
    _setup_logging(args.log_level, args.log_file)
    sys.exit(_run_server(config))


def _run_server(config: Config) -> int:
    status = EXIT_OK
    try:
        anyio.run(_serve, config)
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
