"""The library face of chainer: a route table plus a dialer, the server's own code path."""

from __future__ import annotations

import os

from anyio.abc import ByteStream

from .config import load_config
from .errors import Refused
from .models import Address, Config
from .outbound.dialer import Dialed, Dialer, Forward
from .outbound.health import Health
from .outbound.ssh import SshSessions
from .outbound.tcp import Screen
from .routing.policy import Guard
from .routing.table import Match, RouteTable
from .routing.target import normalize_host, parse_port


class Router:
    """Routes destinations and builds their chains.

    >>> router = Router.from_file("routes.yaml")
    >>> async with await router.connect("example.com", 443) as stream: ...
    """

    def __init__(
        self, config: Config, health: Health | None = None, sessions: SshSessions | None = None
    ) -> None:
        self.config = config
        self.table = RouteTable.of(config.routes)  # built by a reload's worker thread
        self.dialer = Dialer(
            config.defaults,
            health,
            max_attempts=config.limits.max_attempts,
            sessions=sessions,
            mark=config.mark,
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Router:
        return cls(load_config(path))

    def route(self, target: Address) -> Match:
        match = self.table.match(target)
        if match is None:
            raise Refused(f"no route matches {target}")
        return match

    async def open(
        self,
        target: Address,
        screen: Screen | None = None,
        *,
        forward: Forward | None = None,
        match: Match | None = None,
    ) -> tuple[Match, Dialed]:
        """Route `target` (unless `match` says how it was routed already) and build its
        chain (fallbacks included). `screen(ip, port)` vets the addresses a `direct` route
        resolves the name to. With `forward`, a plain-HTTP request whose chain ends at an
        HTTP proxy is sent to that proxy as it is (`Dialed.forward_to` names it);
        otherwise the chain reaches the destination."""
        match = match if match is not None else self.route(target)
        route = match.route
        vias = (route.via, *route.fallback)
        dialed = await self.dialer.dial(route.label(), vias, target, screen, forward=forward)
        return match, dialed

    async def aclose(self) -> None:
        """Close the SSH sessions kept for SSH hops (tunnels through them end). Other hops
        keep no connection between tunnels: without SSH hops this does nothing."""
        await self.dialer.sessions.aclose()

    async def connect(self, host: str, port: int | str) -> ByteStream:
        """A byte stream to host:port through the routed chain. Raises BadTarget for a
        bad host or port, Refused for a destination the policy (`deny`, `allow_ports`)
        or a `reject` route refuses, ChainFailed when every way the route offers failed."""
        target = Address(normalize_host(host), parse_port(str(port)))
        # The table's destination policy holds here as in the server: deny, allow_ports,
        # and deny ranges again on the addresses a `direct` name resolves to.
        guard = Guard(self.config.policy, own=(), exposed=False)
        guard.check(target)
        _match, dialed = await self.open(target, guard.check_address)
        return dialed.stream
