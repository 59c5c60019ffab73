"""The owner of a server's connection tasks.

How this works. Every accepted connection runs as one task. An anyio task group could
own them, but spawning into one costs about 35 us a task here (a handle, an event and
their bookkeeping) against about 5 us for the loop's own `create_task` — a tenth of a
tunnel's whole set-up CPU. So the tasks are created on the event loop directly and
owned here, as `tunnels.py` owns spliced tunnels (trio's rule still holds: an owner
whose lifetime bounds them). Each task runs its work inside an anyio CancelScope that
the owner holds, so anyio's rules hold within it: shielded closes stay shielded, and a
connection sees the same cancellation it would in a task group. The server enters the
owner inside serve(); leaving it cancels every scope and waits, shielded, until every
task has ended, so no connection outlives serve(). A connection's own code catches
everything it expects; anything else that escapes a task is logged, and the server
keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

import anyio

log = logging.getLogger("chainer")


class ConnectionTasks:
    def __init__(self) -> None:
        self._scopes: dict[asyncio.Task[None], anyio.CancelScope] = {}
        self._closing = False
        self._exited = False

    def __len__(self) -> int:
        return len(self._scopes)

    async def __aenter__(self) -> ConnectionTasks:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
        interrupted: BaseException | None = None
        with anyio.CancelScope(shield=True):
            while self._scopes:
                try:
                    await asyncio.wait(list(self._scopes))
                except asyncio.CancelledError as exc:
                    # A plain asyncio cancel of the serving task (the runner's, at
                    # Ctrl-C) passes anyio's shield: wait on regardless, as anyio's task
                    # groups do, and pass it on once every task has ended.
                    interrupted = exc
        self._exited = True
        if interrupted is not None:
            raise interrupted

    def cancel(self) -> None:
        """Cancel every task (each ends as it would when its task group is cancelled);
        one started after this runs cancelled, closing what it was given."""
        self._closing = True
        for scope in self._scopes.values():
            scope.cancel()

    def start_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._exited:
            raise RuntimeError("no connection task may start once their owner has exited")
        scope = anyio.CancelScope()
        if self._closing:
            scope.cancel()  # it still runs, cancelled at its first wait, and closes up
        task = asyncio.get_running_loop().create_task(_run(scope, fn, args))
        self._scopes[task] = scope
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        del self._scopes[task]
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("a connection task failed", exc_info=error)


async def _run(scope: anyio.CancelScope, fn: Callable[..., Awaitable[None]], args: Any) -> None:
    with scope:
        await fn(*args)
