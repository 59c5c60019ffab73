"""The owner of a server's spliced tunnels.

How this works. A spliced tunnel (relay/splice.py) has no task: once its handshake
leftovers are delivered it runs on event-loop callbacks, and the connection's task ends.
Nothing would then cancel it, so something else must bound its life (trio's rule: all
concurrent work has an owner whose lifetime bounds it). `Tunnels` is that owner: the
server enters it around its connection task group, so it is entered before any
connection can hand a tunnel over and exited only after every connection task has
ended. It starts each tunnel, counts them, and reports each end through the callback
the connection gave (the access line, the metrics). When its block exits — drained,
grace over, cancelled, an error — it aborts every tunnel still open: abort closes the
sockets and reports the end at once, so when `__aexit__` returns no tunnel is left and
each has been reported exactly once. Then the pipes its tunnels pooled are closed.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType

from anyio.abc import ByteStream

from ..relay import splice
from ..relay.result import RelayResult
from ..relay.splice import PipePool

OnEnd = Callable[[RelayResult], None]


class Tunnels:
    def __init__(self, pipes: PipePool) -> None:
        self._pipes = pipes
        self._open: set[splice.Tunnel] = set()
        self._closed = False  # no new tunnel may start

    def __len__(self) -> int:
        return len(self._open)

    async def __aenter__(self) -> Tunnels:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Nothing here awaits: a cancelled exit must still end every tunnel.
        self.close("shutting down")

    def close(self, reason: str) -> None:
        """Abort every open tunnel (each reports its end with `reason` as its error, and
        as ended by the server's shutdown)."""
        self._closed = True
        for tunnel in list(self._open):
            tunnel.abort(reason, shutdown=True)
        self._pipes.clear()

    async def hand_off(
        self,
        client: ByteStream,
        upstream: ByteStream,
        idle: float,
        on_end: OnEnd,
        client_fin: float | None = None,
    ) -> splice.Tunnel | None:
        """Splice two plain-socket streams (check RelayOptions.can_splice first). The
        tunnel when it runs here (its `count` moves as bytes do): `on_end(result)` will
        report its end once — possibly before this returns, if it ends at once. None
        when the owner is closing; the sockets are closed either way, or if this fails
        or is cancelled."""
        a, b = splice.detach(client), splice.detach(upstream)
        sent = await splice.send_pending(a, b)
        if self._closed:
            splice.close_legs(a, b)
            return None

        def ended(result: RelayResult) -> None:
            self._open.discard(tunnel)
            on_end(result)

        try:
            tunnel = splice.Tunnel(a, b, idle, ended, self._pipes, sent, client_fin)
        except BaseException:
            splice.close_legs(a, b)
            raise
        self._open.add(tunnel)
        tunnel.start()
        return tunnel
