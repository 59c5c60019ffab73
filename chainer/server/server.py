"""The server's face: serve the listeners of one route table, reload it, shut down.

serve() owns everything that runs for it: the accept loops, one task per connection
(connection.py) and, around them, the owner of spliced tunnels (tunnels.py) — so when
serve() returns, by drain, grace over or cancellation, nothing it started is left.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
from collections.abc import Sequence

import anyio
from anyio.abc import TaskStatus

from ..models import Config, Listener, Proxy
from ..outbound.ssh import insecure_host_keys
from ..relay import RelayOptions
from ..router import Router
from ..routing.fakeip import FakeIps
from ..text import plural
from .connection import Shared, handle
from .listeners import Occupancy, accept, address, bind
from .metrics import Metrics
from .registry import Registry
from .tasks import ConnectionTasks
from .throttle import LoginThrottle
from .tunnels import Tunnels

log = logging.getLogger("chainer")


class Server:
    """Serves the listeners of one route table; `reload` swaps the table for new
    connections, `shutdown` stops accepting and lets live tunnels finish."""

    def __init__(
        self,
        router: Router,
        *,
        metrics: Metrics | None = None,
        grace: float = 10.0,
        relay: RelayOptions | None = None,
    ) -> None:
        self.router = router
        self.metrics = metrics or Metrics(lambda: self.router.dialer.health)
        self.grace = grace
        self.relay = relay if relay is not None else RelayOptions()
        self.occupancy = Occupancy(lambda: self.router.config.limits)
        self._ids = itertools.count(1)
        self.logins = LoginThrottle()
        self.registry = Registry()  # open tunnels, for the admin endpoint
        self._stopping = anyio.Event()
        self.stopped = anyio.Event()  # set once serve() has returned
        # The listeners actually served (a reload cannot change them): what a reloaded
        # file's listeners are compared with.
        self._serving: tuple[Listener, ...] = tuple(router.config.listeners)
        self.bound: list[tuple[str, int]] = []  # every listening (host, port)
        # The DNS server's fake addresses (dns.py): kept across reloads, like listeners.
        dns = router.config.dns
        self._dns_started = None if dns is None else (dns.listen, dns.fake_ip)
        self.fakes = FakeIps(dns.fake_ip) if dns is not None and dns.fake_ip else None
        if self.fakes is not None:
            self.metrics.fake_ip_entries(self.fakes.__len__)

    @property
    def active(self) -> int:
        """Connections open now, spliced tunnels included."""
        return self.occupancy.count

    def reload(self, config: Config) -> None:
        """New connections use `config`; live ones keep what they had. Health is kept for
        hops whose definition did not change."""
        old = self.router.config
        changed = {p.name for p in old.proxies} - {
            p.name for p in old.proxies if _same_proxy(p, config.proxy(p.name))
        }
        health = self.router.dialer.health
        health.forget(changed)
        sessions = self.router.dialer.sessions
        sessions.forget(changed)  # live tunnels keep theirs; new ones get new sessions
        self.router = Router(config, health, sessions)
        insecure_host_keys(config.proxies)
        if _unlined(config.listeners) != _unlined(self._serving):
            log.warning("listener changes take effect at the next restart")
        dns = config.dns
        if (None if dns is None else (dns.listen, dns.fake_ip)) != self._dns_started:
            log.warning("dns.listen and dns.fake_ip changes take effect at the next restart")
        log.info(
            "reloaded %s: %d routes, %d proxies (%d changed)",
            config.path,
            len(config.routes),
            len(config.proxies),
            len(changed),
        )
        self.metrics.reloaded(True)

    def listening(self) -> list[tuple[Listener, tuple[str, int]]]:
        """Each listener served, with the address it is bound to (ports chosen)."""
        return list(zip(self._serving, self.bound, strict=False))

    @property
    def draining(self) -> bool:
        return self._stopping.is_set()

    def shutdown(self) -> None:
        """Stop accepting; live connections get `grace` seconds to finish."""
        self._stopping.set()

    async def serve(
        self,
        listeners: Sequence[Listener] | None = None,
        *,
        task_status: TaskStatus[list[tuple[str, int]]] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve until cancelled or shut down; reports the bound (host, port) of each
        listener once all are listening."""
        try:
            await self._serve(listeners, task_status)
        finally:
            self.stopped.set()

    async def _serve(
        self,
        listeners: Sequence[Listener] | None,
        task_status: TaskStatus[list[tuple[str, int]]],
    ) -> None:
        listeners = listeners if listeners is not None else self.router.config.listeners
        self._serving = tuple(listeners)
        insecure_host_keys(self.router.config.proxies)
        sockets = bind(listeners, self.router.config.mark)
        self.bound.extend(address(sock) for _, sock in sockets)
        try:
            # Tunnels is entered outside the connection group: it outlives every task that
            # could hand it a tunnel, and its exit ends the tunnels however serve() ends.
            async with Tunnels(self.relay.pipes) as tunnels:
                shared = Shared(
                    lambda: self.router,
                    self.metrics,
                    self.bound,
                    self.relay,
                    tunnels,
                    self.occupancy,
                    self._ids,
                    self.logins,
                    self.registry,
                    self.fakes,
                )
                connect = functools.partial(handle, shared)
                # Leaving it cancels every connection still open and waits for each.
                async with ConnectionTasks() as connections:
                    async with anyio.create_task_group() as accepting:
                        for listener, sock in sockets:
                            accepting.start_soon(
                                accept, sock, listener, self.occupancy, connections, connect
                            )
                        task_status.started(list(self.bound))
                        await self._stopping.wait()
                        accepting.cancel_scope.cancel()
                    await self._drain()
        finally:
            # Each accept loop closes its socket as it stops; one cancelled before it
            # ever ran did not.
            for _, sock in sockets:
                sock.close()
            await self.router.aclose()  # the SSH sessions (shielded, bounded)

    async def _drain(self) -> None:
        log.info("stopped accepting; %s open", plural(self.active, "connection"))
        if self.active:
            with anyio.move_on_after(self.grace):
                await self.occupancy.drained()
            if self.active:
                log.info("grace period over: closing %s", plural(self.active, "connection"))


__all__ = ["Server"]


def _unlined(listeners: Sequence[Listener]) -> tuple[Listener, ...]:
    """Listeners as configured, whatever line of the file they are on."""
    return tuple(dataclasses.replace(listener, line=0) for listener in listeners)


def _same_proxy(old: Proxy, new: Proxy | None) -> bool:
    return new is not None and dataclasses.replace(old, line=0) == dataclasses.replace(new, line=0)
