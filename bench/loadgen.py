"""The load generator, in a process of its own: `python bench/loadgen.py`.

Reads one JSON command per line on stdin and answers one JSON line on stdout, so the
orchestrator can read the proxy's memory between steps while tunnels stay open here.
Every command is bounded in time. Commands (`port` is the proxy's; `target` the
`[host, port]` to CONNECT to, or null for a plain port forwarder):

  check       {port, target, size}            echo `size` random bytes through the bulk server
  throughput  {port, target, bytes, file}     send `bytes` from `file` with sendfile; time it
  setups      {port, target, concurrency, seconds, warmup}
              tunnels set up, 1 byte echoed and closed, in a loop, by `concurrency` clients
  open        {port, target, n, parallel, deadline}
              open n more idle tunnels (1 byte echoed) and hold them; none is
              started after `deadline` seconds
  close_all   {}                              close every held tunnel
  pingpong    {port, target, seconds, interval, hup_pid, hup_at, probe, expect}
              one open tunnel carries 1 byte there and back every `interval` seconds
              for `seconds`, each round trip timed; with `hup_pid`, that process gets
              SIGHUP at `hup_at`, then `probe` ([host, port]) is CONNECTed every 50 ms
              until the proxy answers status `expect` — the reload has taken effect —
              and the pings go on 0.5 s past that (at most 20 s past `seconds`)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import time
from typing import Any

from common import (
    BULK_ACK,
    BULK_HEADER,
    LOOPBACK,
    TUNNEL_TIMEOUT,
    connect_request,
    connect_status,
    open_tunnel,
    raise_nofile,
    recv_exactly,
)

Target = tuple[str, int] | None
BULK_TIMEOUT = 60.0  # socket timeout of a bulk stream (no progress for this long)

_held: list[socket.socket] = []


def _target(cmd: dict[str, Any]) -> Target:
    target = cmd.get("target")
    return None if target is None else (str(target[0]), int(target[1]))


def check(cmd: dict[str, Any]) -> dict[str, Any]:
    size = int(cmd["size"])
    payload = os.urandom(size)
    with open_tunnel(int(cmd["port"]), _target(cmd), BULK_TIMEOUT) as sock:
        sock.sendall(BULK_HEADER.pack(b"E", size) + payload)
        echoed = recv_exactly(sock, size)
    if echoed != payload:
        raise ConnectionError(f"{size} bytes came back altered")
    return {"ok": True}


def throughput(cmd: dict[str, Any]) -> dict[str, Any]:
    """One stream: the clock starts once the tunnel is open and stops when the sink has
    counted every byte (its answer comes back through the tunnel)."""
    total = int(cmd["bytes"])
    with open(cmd["file"], "rb") as source:
        file_size = os.fstat(source.fileno()).st_size
        with open_tunnel(int(cmd["port"]), _target(cmd), BULK_TIMEOUT) as sock:
            started = time.perf_counter()
            sock.sendall(BULK_HEADER.pack(b"D", total))
            left = total
            while left > 0:
                # socket.sendfile is os.sendfile in a loop: the bytes never enter Python.
                sent = sock.sendfile(source, 0, min(left, file_size))
                if sent == 0:
                    raise ConnectionError("sendfile sent nothing")
                left -= sent
            (counted,) = BULK_ACK.unpack(recv_exactly(sock, BULK_ACK.size))
            seconds = time.perf_counter() - started
    if counted != total:
        raise ConnectionError(f"sink counted {counted} of {total} bytes")
    return {"bytes": total, "seconds": seconds, "mib_s": total / seconds / 2**20}


# ----------------------------------------------------------------- asyncio tunnels


async def _tunnel(port: int, target: Target) -> socket.socket:
    """Open a tunnel, carry one byte there and back; the caller closes or holds it."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, (LOOPBACK, port))
        if target is not None:
            await loop.sock_sendall(sock, connect_request(*target))
            head = b""
            while b"\r\n\r\n" not in head:
                data = await loop.sock_recv(sock, 4096)
                if not data:
                    raise ConnectionError("proxy closed during its answer")
                head += data
            if connect_status(head) != 200:
                raise ConnectionError(f"proxy answered {head.splitlines()[0]!r}")
            if not head.endswith(b"\r\n\r\n"):
                raise ConnectionError("bytes after the proxy's answer")
        await loop.sock_sendall(sock, b"x")
        if await loop.sock_recv(sock, 1) != b"x":
            raise ConnectionError("echo lost")
    except BaseException:
        sock.close()
        raise
    return sock


async def _setups(cmd: dict[str, Any]) -> dict[str, Any]:
    port, target = int(cmd["port"]), _target(cmd)
    concurrency = int(cmd["concurrency"])
    latencies: list[float] = []
    errors: list[str] = []
    recording = False
    warm = 0

    async def client(until: float) -> None:
        nonlocal warm
        while time.perf_counter() < until:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(TUNNEL_TIMEOUT):
                    sock = await _tunnel(port, target)
                sock.close()
            except (OSError, TimeoutError) as exc:
                if recording:
                    errors.append(type(exc).__name__)
                continue
            if recording:
                latencies.append(time.perf_counter() - started)
            else:
                warm += 1

    warmup_until = time.perf_counter() + float(cmd["warmup"])
    await asyncio.gather(*(client(warmup_until) for _ in range(concurrency)))
    recording = True
    started = time.perf_counter()
    until = started + float(cmd["seconds"])
    await asyncio.gather(*(client(until) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return {
        "count": len(latencies),
        "warmup_count": warm,
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": elapsed,
        "per_s": len(latencies) / elapsed,
        **_latency_summary(latencies),
    }


def _latency_summary(latencies: list[float]) -> dict[str, float | None]:
    if len(latencies) < 2:
        return {"p50_ms": None, "p99_ms": None, "mean_ms": None, "max_ms": None}
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": cuts[98] * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "max_ms": max(latencies) * 1000,
    }


async def _open(cmd: dict[str, Any]) -> dict[str, Any]:
    port, target, n = int(cmd["port"]), _target(cmd), int(cmd["n"])
    gate = asyncio.Semaphore(int(cmd["parallel"]))
    errors: list[str] = []
    started = time.perf_counter()
    until = started + float(cmd["deadline"])

    async def one() -> None:
        async with gate:
            if time.perf_counter() > until:
                errors.append("deadline")  # a stalled proxy must not hold the run
                return
            try:
                async with asyncio.timeout(TUNNEL_TIMEOUT):
                    _held.append(await _tunnel(port, target))
            except (OSError, TimeoutError) as exc:
                errors.append(type(exc).__name__)

    await asyncio.gather(*(one() for _ in range(n)))
    return {
        "held": len(_held),
        "errors": len(errors),
        "error_kinds": sorted(set(errors)),
        "seconds": time.perf_counter() - started,
    }


async def _status(port: int, target: tuple[str, int]) -> int:
    """The status a CONNECT to `target` is answered with (the tunnel is then closed)."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, (LOOPBACK, port))
        await loop.sock_sendall(sock, connect_request(*target))
        head = b""
        while b"\r\n" not in head:
            data = await loop.sock_recv(sock, 4096)
            if not data:
                break
            head += data
        return connect_status(head)


async def _pingpong(cmd: dict[str, Any]) -> dict[str, Any]:
    port, target = int(cmd["port"]), _target(cmd)
    seconds, interval = float(cmd["seconds"]), float(cmd["interval"])
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(TUNNEL_TIMEOUT):
        sock = await _tunnel(port, target)
    started = time.perf_counter()
    applied: float | None = None

    async def reload_and_probe() -> None:
        nonlocal applied
        await asyncio.sleep(float(cmd["hup_at"]))
        os.kill(int(cmd["hup_pid"]), signal.SIGHUP)
        sent = time.perf_counter()
        probe = (str(cmd["probe"][0]), int(cmd["probe"][1]))
        while time.perf_counter() - started < seconds + 20:
            try:
                async with asyncio.timeout(TUNNEL_TIMEOUT):
                    status = await _status(port, probe)
            except (OSError, TimeoutError):
                status = 0
            if status == int(cmd["expect"]):
                applied = time.perf_counter() - sent
                return
            await asyncio.sleep(0.05)

    prober = asyncio.create_task(reload_and_probe()) if cmd.get("hup_pid") else None
    hup_at = float(cmd.get("hup_at", 0))

    def done(now: float) -> bool:
        if now > seconds + 20 or (now > seconds and prober is None):
            return True
        if prober is None or not prober.done() or now < seconds:
            return False
        return applied is None or now > hup_at + applied + 0.5

    rtts: list[float] = []
    try:
        while not done(time.perf_counter() - started):
            t0 = time.perf_counter()
            async with asyncio.timeout(TUNNEL_TIMEOUT):
                await loop.sock_sendall(sock, b"x")
                if await loop.sock_recv(sock, 1) != b"x":
                    raise ConnectionError("echo lost")
            rtts.append(time.perf_counter() - t0)
            await asyncio.sleep(interval)
    finally:
        sock.close()
        if prober is not None:
            prober.cancel()
    return {
        "count": len(rtts),
        "seconds": time.perf_counter() - started,
        "reload_applied_s": applied,
        **_latency_summary(rtts),
    }


def close_all(cmd: dict[str, Any]) -> dict[str, Any]:
    for sock in _held:
        sock.close()
    closed = len(_held)
    _held.clear()
    return {"closed": closed}


def handle(cmd: dict[str, Any]) -> dict[str, Any]:
    op = cmd["op"]
    if op == "check":
        return check(cmd)
    if op == "throughput":
        return throughput(cmd)
    if op == "setups":
        return asyncio.run(_setups(cmd))
    if op == "open":
        return asyncio.run(_open(cmd))
    if op == "close_all":
        return close_all(cmd)
    if op == "pingpong":
        return asyncio.run(_pingpong(cmd))
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nofile", type=int, default=0)
    args = parser.parse_args()
    if args.nofile:
        raise_nofile(args.nofile)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            reply = handle(cmd)
        except (OSError, TimeoutError, ValueError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
