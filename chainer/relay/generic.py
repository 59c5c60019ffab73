"""Moves bytes both ways between a client and the chain built for it.

How this works. Two paths with the same semantics; the server picks one per tunnel:
  - the fast path, when `RelayOptions.can_splice` (both legs plain TCP sockets, Linux,
    asyncio, not turned off): the tunnel is handed to a splice.Tunnel and the kernel
    moves the bytes;
  - the generic path, `relay`, for everything else (a TLS leg, the plain-HTTP
    forwarding adapter): one task per direction reads up to 256 KiB and writes it on,
    with no cancel scope per chunk, so a client that stops reading stalls its direction
    (backpressure).
End of stream in one direction is passed on as a half-close where the other side can
carry one. A TLS leg cannot: the other direction then goes on only while bytes keep
moving (LINGER), because the far side may itself be waiting for an end of stream that
cannot reach it. An error in either direction ends both. Idleness is watched by a
third task that samples the byte counters by the rule in result.py (closed between
`idle` and 1.25 x `idle` after the last byte).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import ByteStream

from ..text import transport_reason
from .result import BadRequestBody, ClientClosed, RelayResult, StillCounter

CHUNK = 262144
LINGER = 1.0  # after an end that cannot be passed on (TLS), the rest must move this often
# A forwarded exchange: a client that has read its whole answer (by Content-Length) may
# close before the upstream's own end reaches us. This long for that end tells a
# finished exchange from one the client gave up on.
ANSWER_GRACE = 0.25


async def relay(
    client: ByteStream,
    upstream: ByteStream,
    idle: float,
    *,
    end_with_upstream: bool = False,
    result: RelayResult | None = None,
    client_fin: float | None = None,
) -> RelayResult:
    """The generic path: relay until both directions have ended (or, with
    end_with_upstream, until the upstream has finished: a forwarded plain-HTTP exchange
    ends with the origin's answer). `result`, when given, counts the bytes as they move
    (so a caller that is cancelled still knows them) and is returned. Once the client
    has ended its side, the tunnel may stand idle only `client_fin` seconds."""
    result = result if result is not None else RelayResult()
    rule = [StillCounter.idle(idle)]  # the idle rule in force; client_fin may replace it

    async def direction(src: ByteStream, dst: ByteStream, index: int, linger: Linger) -> None:
        while True:
            try:
                data = await src.receive(CHUNK)
            except anyio.EndOfStream:
                break
            if index:
                result.down += len(data)
            else:
                result.up += len(data)
            await dst.send(data)
        if index == 0 and client_fin is not None and client_fin < rule[0].window:
            rule[0] = StillCounter.idle(client_fin)
        try:
            await dst.send_eof()
        except NotImplementedError:
            # A TLS leg cannot half-close. Waiting for the other direction to end could
            # wait forever (the peer may be waiting for our EOF in turn), so it may go
            # on only while it keeps moving.
            linger()

    await _run(
        lambda linger: direction(client, upstream, 0, linger),
        lambda linger: direction(upstream, client, 1, linger),
        rule,
        end_with_upstream,
        result,
    )
    return result


Linger = Callable[[], None]


async def _run(
    up: Callable[[Linger], Awaitable[None]],
    down: Callable[[Linger], Awaitable[None]],
    rule: list[StillCounter],
    end_with_upstream: bool,
    result: RelayResult,
) -> None:
    open_directions = 2
    answered = anyio.Event()  # the upstream's side has ended normally

    async def run(direction: Callable[[Linger], Awaitable[None]], upward: bool) -> None:
        nonlocal open_directions
        try:
            await direction(linger)
        except ClientClosed:
            with anyio.move_on_after(ANSWER_GRACE):
                await answered.wait()
            if answered.is_set():
                return  # a finished exchange: the other direction ends the relay
            result.client_closed = True
            result.error = result.error or "client closed before the answer ended"
            tg.cancel_scope.cancel()
            return
        except BadRequestBody as exc:
            result.bad_request = True
            result.error = result.error or f"client: {exc}"
            tg.cancel_scope.cancel()
            return
        except (OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if result.error is None:
                result.error = f"{'client' if upward else 'upstream'}: {transport_reason(exc)}"
            tg.cancel_scope.cancel()
            return
        open_directions -= 1
        if not upward:
            answered.set()
        if open_directions == 0 or (end_with_upstream and not upward):
            tg.cancel_scope.cancel()

    def linger() -> None:
        tg.start_soon(watch, StillCounter(LINGER, 1), False)

    async def watch(still: StillCounter, is_idle: bool) -> None:
        """End the relay once the counters stood still long enough."""
        while True:
            await anyio.sleep(still.step)
            if still.sample((result.up, result.down)):
                result.idle_closed = is_idle
                tg.cancel_scope.cancel()
                return

    async def watch_idle() -> None:
        """The idle rule, which a client's end of stream may shorten (client_fin)."""
        while True:
            still = rule[0]
            await anyio.sleep(still.step)
            if still.sample((result.up, result.down)):
                result.idle_closed = True
                tg.cancel_scope.cancel()
                return

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, up, True)
        tg.start_soon(run, down, False)
        tg.start_soon(watch_idle)
