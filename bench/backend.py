"""The servers every tunnel ends at, in a process of their own: `python bench/backend.py`.

Prints one JSON line `{"bulk": PORT, "echo": PORT}` once both listen, then serves until
its stdin closes (the orchestrator went away) or `--lifetime` seconds pass.

- bulk (threads, blocking sockets, C-speed loops): a request is `BULK_HEADER` (op, n).
  `D` discards n bytes with `recv_into` a 1 MiB buffer and answers the count; `E` echoes
  n bytes. One thread per connection: there is one stream at a time.
- echo (asyncio Protocol): echoes whatever arrives; holds thousands of idle tunnels
  cheaply. Set-up and idle-tunnel tests end here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import threading

from common import BULK_ACK, BULK_HEADER, LOOPBACK, big_buffers, raise_nofile, recv_exactly

CHUNK = 1024 * 1024
IO_TIMEOUT = 120.0  # a stalled bulk stream is dropped after this long


def _bulk_connection(conn: socket.socket) -> None:
    with conn:
        conn.settimeout(IO_TIMEOUT)
        big_buffers(conn)
        try:
            op, n = BULK_HEADER.unpack(recv_exactly(conn, BULK_HEADER.size))
            if op == b"D":
                conn.sendall(BULK_ACK.pack(_discard(conn, n)))
            elif op == b"E":
                conn.sendall(recv_exactly(conn, n))
        except (OSError, ConnectionError):
            pass  # the client reports what it saw; a bulk server has no one to tell


def _discard(conn: socket.socket, n: int) -> int:
    view = memoryview(bytearray(CHUNK))
    got = 0
    while got < n:
        k = conn.recv_into(view, min(CHUNK, n - got))
        if k == 0:
            break
        got += k
    return got


def _serve_bulk(listener: socket.socket) -> None:
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_bulk_connection, args=(conn,), daemon=True).start()


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close our side too


def _watch_stdin() -> None:
    """Exit with the orchestrator, however it ended."""
    sys.stdin.buffer.read()
    os._exit(0)


async def _main(lifetime: float) -> None:
    bulk = socket.create_server((LOOPBACK, 0), backlog=64)
    threading.Thread(target=_serve_bulk, args=(bulk,), daemon=True).start()
    loop = asyncio.get_running_loop()
    echo = await loop.create_server(_Echo, LOOPBACK, 0, backlog=4096)
    ports = {"bulk": bulk.getsockname()[1], "echo": echo.sockets[0].getsockname()[1]}
    print(json.dumps(ports), flush=True)
    await asyncio.sleep(lifetime)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nofile", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=1800.0)
    args = parser.parse_args()
    if args.nofile:
        raise_nofile(args.nofile)
    threading.Thread(target=_watch_stdin, daemon=True).start()
    asyncio.run(_main(args.lifetime))


if __name__ == "__main__":
    main()
