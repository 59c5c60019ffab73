"""A bounded soak: a few thousand connections with random faults, then no leaks (issue 6).

About 3000 connections, 50 at a time, to an in-process chainer: good tunnels (HTTP and
SOCKS5), half-closes, plain-HTTP forwards, and the ways clients and hops go wrong —
closing mid-request, garbage, resets (SO_LINGER 0), slowloris, clients that stop reading,
chains to a hop that refuses and to one that never answers. Every connection's answer is
checked. Afterwards, once things settle, this process's open file descriptors and
asyncio tasks must be back at their baseline, and chainer must have logged no traceback.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest
from anyio.abc import SocketAttribute, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteStream
from fakes import free_port, running_chainer, start_echo, start_hop, task_group

from chainer.relay import PipePool, RelayOptions

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LOOPBACK = "127.0.0.1"
CONNECTIONS = 3000
CONCURRENCY = 50
SEED = int(os.environ.get("CHAINER_SOAK_SEED", "6"))
FD_SLACK = 5
TASK_SLACK = 2


def open_fds(pipes: PipePool) -> int:
    """Open descriptors, less the empty pipes the splice relay keeps pooled for reuse
    (bounded by design; not a leak)."""
    return len(os.listdir("/proc/self/fd")) - 2 * len(pipes.free)


def tasks() -> int:
    return len(asyncio.all_tasks())


@dataclass
class Env:
    port: int  # chainer
    echo: int  # echo origin
    origin: int  # tiny HTTP origin


class Unexpected(AssertionError):
    """A connection was answered otherwise than its scenario expects."""


def expect(condition: bool, what: str) -> None:
    if not condition:
        raise Unexpected(what)


# --------------------------------------------------------------------------- peers


async def serve_http_origin(tg: TaskGroup) -> int:
    """An origin that answers any request head with a fixed page and closes."""

    async def handle(client: SocketStream) -> None:
        async with client:
            try:
                await BufferedByteStream(client).receive_until(b"\r\n\r\n", 65536)
                await client.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                pass

    listener = await anyio.create_tcp_listener(local_host=LOOPBACK)

    async def serve() -> None:
        async with listener:
            await listener.serve(handle)

    tg.start_soon(serve)
    port: int = listener.extra(SocketAttribute.local_port)
    return port


# --------------------------------------------------------------------------- client helpers


async def read_head(s: SocketStream) -> bytes:
    got = b""
    while b"\r\n\r\n" not in got:
        got += await s.receive()
    return got


async def read_until_closed(s: SocketStream, limit: int = 1 << 20) -> bytes:
    got = b""
    try:
        while len(got) < limit:
            got += await s.receive()
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass
    return got


async def read_exactly(s: SocketStream, n: int) -> bytes:
    got = b""
    while len(got) < n:
        got += await s.receive()
    return got


def connect_request(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


async def reset(s: SocketStream) -> None:
    """Close with an RST instead of a FIN."""
    raw = s.extra(SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await s.aclose()


# --------------------------------------------------------------------------- scenarios


async def tunnel_ok(env: Env, rng: random.Random) -> None:
    payload = rng.randbytes(rng.randint(1, 8192))
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(connect_request(f"{LOOPBACK}:{env.echo}"))
        head = await read_head(s)
        expect(head.startswith(b"HTTP/1.1 200 "), f"tunnel: {head[:80]!r}")
        rest = head.split(b"\r\n\r\n", 1)[1]
        await s.send(payload)
        rest += await read_exactly(s, len(payload) - len(rest))
        expect(rest == payload, "tunnel: echo differs")


async def socks5_ok(env: Env, rng: random.Random) -> None:
    payload = rng.randbytes(rng.randint(1, 4096))
    request = b"\x05\x01\x00\x05\x01\x00\x01" + socket.inet_aton(LOOPBACK)
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(request + env.echo.to_bytes(2, "big") + payload)
        reply = await read_exactly(s, 12)
        expect(reply[:4] == b"\x05\x00\x05\x00", f"socks5: {reply!r}")
        got = reply[12:] + await read_exactly(s, len(payload) - len(reply[12:]))
        expect(got == payload, "socks5: echo differs")


async def half_close(env: Env, rng: random.Random) -> None:
    early = rng.randbytes(rng.randint(1, 2048))
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(connect_request(f"{LOOPBACK}:{env.echo}") + early)
        await s.send_eof()
        got = await read_until_closed(s)
        expect(got.startswith(b"HTTP/1.1 200 "), f"half-close: {got[:80]!r}")
        expect(got.split(b"\r\n\r\n", 1)[1] == early, "half-close: early data lost")


async def forward_ok(env: Env, rng: random.Random) -> None:
    url = f"http://{LOOPBACK}:{env.origin}/{rng.randint(0, 10**6)}"
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(f"GET {url} HTTP/1.1\r\nHost: {LOOPBACK}:{env.origin}\r\n\r\n".encode())
        got = await read_until_closed(s)
        expect(got.startswith(b"HTTP/1.0 200 OK") and got.endswith(b"ok"), f"fwd: {got!r}")


async def close_mid_request(env: Env, rng: random.Random) -> None:
    request = connect_request(f"{LOOPBACK}:{env.echo}")
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(request[: rng.randint(1, len(request) - 1)])
        await anyio.sleep(rng.random() * 0.05)


async def garbage(env: Env, rng: random.Random) -> None:
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(rng.randbytes(rng.randint(1, 600)))
        got = await read_until_closed(s)
        # an answer, if any, is an HTTP error or a SOCKS refusal: never a success
        expect(not got.startswith((b"HTTP/1.1 200", b"\x05\x00\x05\x00", b"\x00\x5a")), repr(got))


async def reset_early(env: Env, rng: random.Random) -> None:
    s = await anyio.connect_tcp(LOOPBACK, env.port)
    request = connect_request(f"{LOOPBACK}:{env.echo}")
    await s.send(request[: rng.randint(0, len(request))] or b"C")
    await reset(s)


async def reset_mid_tunnel(env: Env, rng: random.Random) -> None:
    s = await anyio.connect_tcp(LOOPBACK, env.port)
    try:
        await s.send(connect_request(f"{LOOPBACK}:{env.echo}"))
        head = await read_head(s)
        expect(head.startswith(b"HTTP/1.1 200 "), f"reset mid-tunnel: {head[:80]!r}")
        await s.send(rng.randbytes(rng.randint(1, 65536)))
    finally:
        await reset(s)


async def stops_reading(env: Env, rng: random.Random) -> None:
    """Sends a lot through the echo and leaves without reading any of it."""
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(connect_request(f"{LOOPBACK}:{env.echo}"))
        with anyio.move_on_after(0.2):
            for _ in range(rng.randint(1, 16)):
                await s.send(bytes(65536))


async def slowloris(env: Env, rng: random.Random) -> None:
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(f"CONNECT {LOOPBACK}:{env.echo} HTTP/1.1\r\nHost: x\r\n".encode())
        got = await read_until_closed(s)
        expect(got.startswith(b"HTTP/1.1 408 "), f"slowloris: {got[:80]!r}")


async def refused_chain(env: Env, rng: random.Random) -> None:
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(connect_request("refused.test:443"))
        got = await read_until_closed(s)
        expect(got.startswith(b"HTTP/1.1 502 "), f"refused hop: {got[:80]!r}")


async def silent_chain(env: Env, rng: random.Random) -> None:
    async with await anyio.connect_tcp(LOOPBACK, env.port) as s:
        await s.send(connect_request("silent.test:443"))
        got = await read_until_closed(s)
        expect(got.startswith(b"HTTP/1.1 504 "), f"silent hop: {got[:80]!r}")


Scenario = Callable[[Env, random.Random], Awaitable[None]]
SCENARIOS: list[tuple[Scenario, int]] = [
    (tunnel_ok, 20),
    (socks5_ok, 10),
    (half_close, 8),
    (forward_ok, 8),
    (close_mid_request, 10),
    (garbage, 10),
    (reset_early, 8),
    (reset_mid_tunnel, 6),
    (stops_reading, 4),
    (slowloris, 4),
    (refused_chain, 6),
    (silent_chain, 6),
]


async def run_one(scenario: Scenario, env: Env, rng: random.Random) -> str | None:
    """None when the connection went as its scenario expects; otherwise what happened."""
    try:
        with anyio.fail_after(10):
            await scenario(env, rng)
    except Unexpected as exc:
        return f"{scenario.__name__}: {exc}"
    except TimeoutError:
        return f"{scenario.__name__}: no end within 10s"
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
        # resets and garbage may meet a closed connection; the others must not
        if scenario in (reset_early, reset_mid_tunnel, garbage, close_mid_request, stops_reading):
            return None
        return f"{scenario.__name__}: {type(exc).__name__}: {exc}"
    return None


async def settle(
    pipes: PipePool, baseline_fds: int, baseline_tasks: int, within: float
) -> tuple[int, int]:
    deadline = time.monotonic() + within
    while True:
        fds, now_tasks = open_fds(pipes), tasks()
        done = fds <= baseline_fds + FD_SLACK and now_tasks <= baseline_tasks + TASK_SLACK
        if done or time.monotonic() >= deadline:
            return fds, now_tasks
        await anyio.sleep(0.1)


async def test_soak_leaves_no_descriptors_or_tasks_behind(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        origin = await serve_http_origin(tg)
        silent = await start_hop(tg, "silent")
        text = (
            f"listen: ['{LOOPBACK}:0']\n"
            "defaults: {connect_timeout: 1s, handshake_timeout: 1s, deadline: 3s, "
            "idle_timeout: 5s}\n"
            "limits: {client_timeout: 300ms, max_connections: 1000}\n"
            "proxies:\n"
            f"  dead: http://{LOOPBACK}:{free_port()}\n"
            f"  quiet: {{url: '{silent.url()}', handshake_timeout: 200ms}}\n"
            "routes:\n"
            "  - {match: refused.test, via: [dead]}\n"
            "  - {match: silent.test, via: [quiet]}\n"
            "  - {match: '*', via: direct}\n"
        )
        relay = RelayOptions()
        async with running_chainer(text, tmp_path, relay=relay) as bound:
            env = Env(bound[0][1], echo.port, origin)
            # warm up: every kind once, so lazily made things (thread pools, caches) exist
            warm_rng = random.Random(SEED - 1)
            problems = [await run_one(s, env, warm_rng) for s, _ in SCENARIOS]
            assert not any(problems), problems
            await anyio.sleep(0.5)
            base_fds, base_tasks = open_fds(relay.pipes), tasks()

            rng = random.Random(SEED)
            kinds = rng.choices([s for s, _ in SCENARIOS], [w for _, w in SCENARIOS], k=CONNECTIONS)
            seeds = [rng.randrange(1 << 30) for _ in kinds]
            outcomes: Counter[str] = Counter()
            problems = []
            limiter = anyio.CapacityLimiter(CONCURRENCY)
            peak = {"fds": 0}

            async def one(i: int) -> None:
                async with limiter:
                    problem = await run_one(kinds[i], env, random.Random(seeds[i]))
                    peak["fds"] = max(peak["fds"], open_fds(relay.pipes))
                outcomes[kinds[i].__name__] += 1
                if problem:
                    problems.append(problem)

            started = time.monotonic()
            with anyio.fail_after(90):
                async with anyio.create_task_group() as clients:
                    for i in range(CONNECTIONS):
                        clients.start_soon(one, i)
            elapsed = time.monotonic() - started

            fds, now_tasks = await settle(relay.pipes, base_fds, base_tasks, within=5.0)
            assert not problems, f"{len(problems)} unexpected answers, e.g. {problems[:5]}"
            assert sum(outcomes.values()) == CONNECTIONS
            assert fds <= base_fds + FD_SLACK, (
                f"descriptors: {base_fds} before, {fds} after {CONNECTIONS} connections "
                f"(peak {peak['fds']}, {elapsed:.1f}s)"
            )
            assert now_tasks <= base_tasks + TASK_SLACK, (
                f"asyncio tasks: {base_tasks} before, {now_tasks} after"
            )
    crashes = [r for r in caplog.records if r.name.startswith("chainer") and r.exc_info]
    assert not crashes, [r.getMessage() for r in crashes[:5]]
