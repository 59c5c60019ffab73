"""Small helpers shared by the benchmark's processes (orchestrator, backend, load generator).

Everything here is blocking, standard-library only, and loopback only.
"""

from __future__ import annotations

import resource
import socket
import struct

LOOPBACK = "127.0.0.1"
TUNNEL_TIMEOUT = 10.0  # the longest one tunnel's set-up may take in the set-up and open loops
BIG_BUFFER = 4 * 1024 * 1024  # SO_SNDBUF / SO_RCVBUF for bulk sockets (the kernel doubles it)

# The bulk server's request: one op byte and a length.
#   D n  discard n bytes, then answer the 8-byte count (a throughput sample ends there)
#   E n  echo n bytes back (the 1 KiB check that a contender really carries data)
BULK_HEADER = struct.Struct("!cQ")
BULK_ACK = struct.Struct("!Q")


def connect_request(host: str, port: int) -> bytes:
    authority = f"{host}:{port}"
    return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode("ascii")


def connect_status(head: bytes) -> int:
    """The status code of a proxy's answer head (0 when it is not HTTP)."""
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        return 0
    return int(parts[1])


def read_head(sock: socket.socket, limit: int = 16384) -> bytes:
    """Read a proxy's answer head one byte at a time past the first chunk, so no tunnel
    byte is consumed (our peers send nothing before we do, but the check should not
    depend on it)."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise ConnectionError(f"proxy closed during its answer: {head[:80]!r}")
        head += byte
        if len(head) > limit:
            raise ConnectionError("proxy answer head too long")
    return head


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise ConnectionError(f"closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


def open_tunnel(port: int, target: tuple[str, int] | None, timeout: float) -> socket.socket:
    """A blocking socket through the proxy on `port` (CONNECT to `target`, or a plain TCP
    connection for a port forwarder such as socat when `target` is None)."""
    sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    try:
        big_buffers(sock)
        if target is not None:
            sock.sendall(connect_request(*target))
            head = read_head(sock)
            if connect_status(head) != 200:
                raise ConnectionError(f"proxy answered {head.splitlines()[0]!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def big_buffers(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BIG_BUFFER)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BIG_BUFFER)


def free_port() -> int:
    """A port free on loopback now (another process could take it before we bind it; the
    contenders' start-up check catches that)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def nofile_limit(want: int) -> int:
    """The RLIMIT_NOFILE children can be given: `want` when this user may raise the hard
    limit that far (root), else the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(want, soft)  # never lower it
    if want <= hard or hard == resource.RLIM_INFINITY:
        return want
    try:
        # Raising our own hard limit is the probe: it succeeds only with CAP_SYS_RESOURCE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, want))
    except (ValueError, OSError):
        return hard
    return want


def raise_nofile(limit: int) -> None:
    """Set soft and hard RLIMIT_NOFILE to `limit` (or as close as allowed). Used as a
    Popen preexec_fn and by the worker processes on themselves."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, max(hard, limit)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
