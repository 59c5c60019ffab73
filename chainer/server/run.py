"""`chainer serve` at run time: the server, the admin endpoint, signals, reloads.

SIGHUP (or, with --watch, a change of the contents of the file or of a list file it
names) reloads the route table: the new file is validated first; a bad one is reported
with file:line and the running table stays. Reading, validating and indexing a table all
happen in a worker thread; the event loop only swaps the finished table in.
SIGTERM/SIGINT stop accepting and give live tunnels the grace period; a second signal
closes them at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
from anyio.abc import TaskGroup

from ..config import collector_paused, load_config
from ..errors import ConfigErrors
from ..models import Config
from ..relay import RelayOptions
from ..router import Router
from ..routing import policy
from ..routing.table import RouteTable
from .admin import AdminView, serve_admin
from .dns import serve_dns
from .server import Server

log = logging.getLogger("chainer")

WATCH_INTERVAL = 1.0
SETTLE = 0.05
RELOAD_SLICE = 0.0005  # seconds


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
    seen = await anyio.to_thread.run_sync(_digests, _watched_of(config)) if watch else None
    # Everything alive now (modules, the table and its index) lives as long as the
    # process: the cyclic collector need never walk it again. Nothing is serving yet,
    # so nothing short-lived is frozen with it. (A reloaded table is not frozen: live
    # connections would be frozen with it, and their cycles never collected.)
    gc.collect()
    gc.freeze()
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
            tg.start_soon(_watch, server, seen)
        await _signals(server, tg)


_preparing = threading.Lock()  # one table built at a time (SIGHUP and --watch may race)


def _prepare(path: str) -> Config:
    """Everything a big table costs before it can serve: reading, validating, and
    indexing its routes and deny patterns (found again by the Router it goes into),
    with the cyclic collector paused (see `collector_paused`)."""
    with _preparing, collector_paused(), _short_slices():
        config = load_config(path)
        RouteTable.of(config.routes)
        policy.prepare(config.policy)
        # The new table is the young generation now: walk it once here, into the old
        # generation, rather than twice (young, then middle) from the event loop later.
        gc.collect(1)
    return config


@contextlib.contextmanager
def _short_slices() -> Iterator[None]:
    """While a table is built in a worker thread, the interpreter is handed back every
    RELOAD_SLICE instead of every 5 ms. The event loop gives it up at each socket call
    and must wait a whole slice of the busy worker to get it back, several times per
    byte a tunnel moves (measured: echoes of 30-75 ms during a 100k reload, 5-10 ms
    with 0.5 ms slices). Process-wide, so only while a reload runs."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(RELOAD_SLICE)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


async def reload(server: Server, path: str) -> bool:
    """Read, validate and index `path` in a worker thread — a large table takes a while,
    and live tunnels must not wait for it — then swap it in on the event loop, at once."""
    try:
        config = await anyio.to_thread.run_sync(_prepare, path)
    except ConfigErrors as exc:
        for error in exc.errors:
            log.error("reload refused, keeping the running table: %s", error)
        server.metrics.reloaded(False)
        return False
    # Two things hold the interpreter for tens of milliseconds at the end of a big
    # reload: the collector's walk of the new table (just done, in the worker) and
    # freeing the old one (when the swap drops it). A moment between them lets every
    # tunnel move its bytes, so none waits through both.
    await anyio.sleep(SETTLE)
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


_Seen = dict[str, bytes | None]  # path -> digest of its contents (None: unreadable)


def _digests(paths: list[str]) -> _Seen:
    seen: _Seen = {}
    for path in paths:
        try:
            seen[path] = hashlib.sha256(Path(path).read_bytes()).digest()
        except OSError:
            seen[path] = None
    return seen


def _watched(server: Server) -> list[str]:
    return _watched_of(server.router.config)


def _watched_of(config: Config) -> list[str]:
    return [config.path, *(pl.file for pl in config.lists)]


async def _watch(server: Server, seen: _Seen | None) -> None:
    """Reload when the contents of routes.yaml or of a list it names change (checked
    every second, off the loop). The lists watched are those of the running table; a
    list that becomes unreadable is a change too (the reload then says why), routes.yaml
    being unreadable is not (an editor replacing it). `seen` is what was read before
    serving began, so a change made as soon as the port answers is still a change."""
    if seen is None:
        seen = await anyio.to_thread.run_sync(_digests, _watched(server))
    while True:
        await anyio.sleep(WATCH_INTERVAL)
        paths = _watched(server)
        now = await anyio.to_thread.run_sync(_digests, paths)
        if now[paths[0]] is None:
            continue  # being replaced: compare again when it is back
        changed = [p for p in paths if now[p] != seen.get(p, now[p])]
        if not changed:
            seen = now  # lists named since the last look (SIGHUP) start from here
            continue
        log.info("%s changed: reloading", changed[0])
        await reload(server, paths[0])
        seen = now
        if _watched(server) != paths:  # the new table names other lists
            seen = await anyio.to_thread.run_sync(_digests, _watched(server))
