"""Moves bytes both ways between a client and the chain built for it.

How this works: one task per direction reads up to 256 KiB and writes it on, with no
cancel scope per chunk. End of stream in one direction is passed on as a half-close
(`send_eof`) where the other side can carry one. A TLS leg cannot: the other direction
then goes on only while bytes keep moving (LINGER), because the far side may itself be
waiting for an end of stream that cannot reach it. An error in either direction ends
both. Idleness is watched by a third task that samples the byte counters every quarter
of `idle` seconds and ends the relay once they have not moved for four samples in a
row, so an idle tunnel is closed between `idle` and 1.25 x `idle` after its last byte.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from anyio.abc import ByteStream

CHUNK = 262144
LINGER = 1.0  # after an end that cannot be passed on (TLS), the rest must move this often


@dataclass(slots=True)
class RelayResult:
    up: int = 0  # client -> upstream
    down: int = 0  # upstream -> client
    idle_closed: bool = False
    error: str | None = None


async def relay(
    client: ByteStream, upstream: ByteStream, idle: float, *, end_with_upstream: bool = False
) -> RelayResult:
    """Relay until both directions have ended (or, with end_with_upstream, until the
    upstream has finished: a forwarded plain-HTTP exchange ends with the origin's answer)."""
    result = RelayResult()
    open_directions = 2

    async def pump(src: ByteStream, dst: ByteStream, upward: bool) -> None:
        nonlocal open_directions
        try:
            while True:
                try:
                    data = await src.receive(CHUNK)
                except anyio.EndOfStream:
                    break
                if upward:
                    result.up += len(data)
                else:
                    result.down += len(data)
                await dst.send(data)
            try:
                await dst.send_eof()
            except NotImplementedError:
                # A TLS leg cannot half-close. Waiting for the other direction to end
                # could wait forever (the peer may be waiting for our EOF in turn), so it
                # may go on only while it keeps moving.
                tg.start_soon(linger)
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if result.error is None:
                result.error = f"{'client' if src is client else 'upstream'}: {_why(exc)}"
            tg.cancel_scope.cancel()
            return
        open_directions -= 1
        if open_directions == 0 or (end_with_upstream and not upward):
            tg.cancel_scope.cancel()

    async def linger() -> None:
        last = (-1, -1)
        while True:
            await anyio.sleep(LINGER)
            now = (result.up, result.down)
            if now == last:
                tg.cancel_scope.cancel()
                return
            last = now

    async def watch_idle() -> None:
        step = idle / 4
        last = (-1, -1)
        still = 0
        while True:
            await anyio.sleep(step)
            now = (result.up, result.down)
            still = still + 1 if now == last else 0
            last = now
            if still >= 4:
                result.idle_closed = True
                tg.cancel_scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(pump, client, upstream, True)
        tg.start_soon(pump, upstream, client, False)
        tg.start_soon(watch_idle)
    return result


def _why(exc: BaseException) -> str:
    if isinstance(exc, anyio.BrokenResourceError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return type(exc).__name__
