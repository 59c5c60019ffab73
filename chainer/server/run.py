"""`chainer serve` at run time: the server, the admin endpoint, signals, reloads.

SIGHUP (or, with --watch, a change of the file's contents) reloads the route table: the
new file is validated first; a bad one is reported with file:line and the running table
stays. SIGTERM/SIGINT stop accepting and give live tunnels the grace period; a second
signal closes them at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ..config import load_config
from ..errors import ConfigErrors
from ..models import Config
from ..relay import RelayOptions
from ..router import Router
from .admin import AdminView, serve_admin
from .dns import serve_dns
from .server import Server

log = logging.getLogger("chainer")

WATCH_INTERVAL = 1.0


async def run_server(
    config: Config,
    *,
    grace: float = 10.0,
    watch: bool = False,
    relay: RelayOptions | None = None,
) -> None:
    server = Server(Router(config), grace=grace, relay=relay)
    loop = type(asyncio.get_running_loop())
    log.info("event loop: %s", "uvloop" if loop.__module__.startswith("uvloop") else "asyncio")
    # Read before serving: a change made as soon as the port answers is still a change.
    seen = await anyio.to_thread.run_sync(_digest, config.path) if watch else None
    async with anyio.create_task_group() as tg:
        if config.admin is not None:
            started = config.admin

            def admin_users() -> dict[str, str]:
                # A reload may change the users; the address needs a restart.
                return dict((server.router.config.admin or started).users)

            view = AdminView(
                config=lambda: server.router.config,
                health=lambda: server.router.dialer.health,
                registry=server.metrics.registry,
                draining=lambda: server.draining,
                users=admin_users,
                tunnels=server.registry.snapshot,
                listening=server.listening,
            )
            await tg.start(serve_admin, config.admin, view)
        if config.dns is not None:
            await tg.start(serve_dns, server)
        await tg.start(server.serve)
        if watch:
            tg.start_soon(_watch, server, config.path, seen)
        await _signals(server, tg)


async def reload(server: Server, path: str) -> bool:
    """Read and validate `path` in a worker thread — a large table takes a while to parse,
    and live tunnels must not wait for it — then swap it in on the event loop, at once."""
    try:
        config = await anyio.to_thread.run_sync(load_config, path)
    except ConfigErrors as exc:
        for error in exc.errors:
            log.error("reload refused, keeping the running table: %s", error)
        server.metrics.reloaded(False)
        return False
    server.reload(config)
    return True


async def _signals(server: Server, tg: TaskGroup) -> None:
    stopping = False
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading %s", server.router.config.path)
                await reload(server, server.router.config.path)
            elif not stopping:
                stopping = True
                log.info("%s: stopping (grace %gs; again to close now)", name, server.grace)
                server.shutdown()
                tg.start_soon(_cancel_when_served, server, tg)
            else:
                log.info("%s again: closing every connection now", name)
                tg.cancel_scope.cancel()


async def _cancel_when_served(server: Server, tg: TaskGroup) -> None:
    """Once the server has drained (or its grace ran out), end the admin and watchers."""
    await server.stopped.wait()
    tg.cancel_scope.cancel()


def _digest(path: str) -> bytes | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).digest()
    except OSError:
        return None


async def _watch(server: Server, path: str, seen: bytes | None) -> None:
    """Reload when the file's contents change from `seen` (checked every second, off the
    loop)."""
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        now = await anyio.to_thread.run_sync(_digest, path)
        if now is not None and now != seen:
            seen = now
            log.info("%s changed: reloading", path)
            await reload(server, path)
