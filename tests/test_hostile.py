"""Hostile input, on both sides of chainer: a bad-input battery for the HTTP and SOCKS
inbound, hostile upstream answers, the destination policy, limits, plain-HTTP forwarding
done right, and a privacy chain that must leak nothing (issue 6).

Every case asserts the exact answer and that the server still serves afterwards. Nothing
here leaves the machine: names are resolved by a fake resolver (unknown names fail at
once), and the non-loopback listener runs in a private network namespace.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import ci
import pytest
from anyio.abc import ByteStream, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteStream
from fakes import EchoOrigin, free_port, running_chainer, start_echo, task_group
from python_socks.async_.anyio import Proxy as SocksClient
from realproxies import Origin

from chainer.config import parse_config
from chainer.errors import ConfigErrors
from chainer.models import Address

pytestmark = pytest.mark.anyio

LOOPBACK = "127.0.0.1"
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
POLICY_ERRORS = (b"error=destination_ip_prohibited", b"error=http_request_denied")


# --------------------------------------------------------------------------- resolver


class FakeDNS:
    """`socket.getaddrinfo` for these tests: IP literals and `localhost` as usual, the
    names in `names` from that table, anything else fails at once, so no query ever
    leaves the machine. `asked` records every host looked up in this process."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.names: dict[str, str] = {}
        self.asked: list[str | None] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else host
        self.asked.append(text)
        if text is None or text == "localhost" or _is_ip(text):
            return self.real(host, port, *args, **kwargs)
        if text in self.names:
            return self.real(self.names[text], port, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@pytest.fixture(autouse=True)
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture(autouse=True)
def _no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Hostile input is answered, never a crash: no chainer log line carries a traceback."""
    yield
    crashes = [r for r in caplog.records if r.name.startswith("chainer") and r.exc_info]
    assert not crashes, "chainer logged a traceback: " + "; ".join(
        f"{r.name}: {r.getMessage()}" for r in crashes
    )


# --------------------------------------------------------------------------- config


DIRECT_ROUTES = "  - {match: blocked.example, via: reject}\n  - {match: '*', via: direct}\n"
DEFAULTS = "connect_timeout: 2s, handshake_timeout: 2s, deadline: 5s"


def table(
    routes: str = DIRECT_ROUTES,
    *,
    listen: str = f"['{LOOPBACK}:0']",
    proxies: str = "",
    top: str = "",
    defaults: str = DEFAULTS,
) -> str:
    return (
        f"listen: {listen}\n"
        f"defaults: {{{defaults}}}\n"
        + (f"{top}\n" if top else "")
        + (f"proxies:\n{proxies}" if proxies else "")
        + f"routes:\n{routes}"
    )


def auth_listener(user: str, password: str, port: int = 0) -> str:
    return f"\n  - address: {LOOPBACK}:{port}\n    auth: {{users: {{{user}: '{password}'}}}}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# --------------------------------------------------------------------------- clients


@dataclass
class Answer:
    """What a client received: bytes, when it stopped, and whether chainer closed."""

    data: bytes
    seconds: float
    closed: bool

    @property
    def status(self) -> int | None:
        m = re.match(rb"HTTP/1\.[01] ([0-9]{3}) ", self.data)
        return int(m.group(1)) if m else None

    @property
    def head(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[0]

    @property
    def body(self) -> bytes:
        return self.data.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in self.data else b""

    def headers(self, name: str) -> list[str]:
        found = []
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                found.append(value.strip().decode("latin-1"))
        return found

    def shown(self) -> str:
        return repr(self.data[:300]) + f" after {self.seconds:.2f}s, closed={self.closed}"


def head_complete(got: bytes) -> bool:
    return b"\r\n\r\n" in got


def never(got: bytes) -> bool:
    return False


def at_least(n: int) -> Callable[[bytes], bool]:
    return lambda got: len(got) >= n


async def converse(
    port: int,
    data: bytes,
    *,
    host: str = LOOPBACK,
    done: Callable[[bytes], bool] = head_complete,
    eof: bool = False,
    wait: float = 4.0,
) -> Answer:
    """Send `data` (then EOF if asked), read until `done(received)`, chainer closes, or
    `wait` seconds pass. The connection is closed on return."""
    started = time.monotonic()
    got = b""
    closed = False
    async with await anyio.connect_tcp(host, port) as s:
        with contextlib.suppress(anyio.BrokenResourceError, OSError):
            if data:
                await s.send(data)
            if eof:
                await s.send_eof()
        with anyio.move_on_after(wait):
            try:
                while not done(got):
                    got += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                closed = True
    return Answer(got, time.monotonic() - started, closed)


def connect_request(target: str, extra: bytes = b"") -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode() + extra + b"\r\n"


async def tunnel_works(port: int, echo_port: int, host: str = LOOPBACK) -> str | None:
    """None when a CONNECT through chainer to the echo origin carries bytes both ways;
    otherwise what went wrong."""
    try:
        with anyio.fail_after(4):
            async with await anyio.connect_tcp(host, port) as s:
                await s.send(connect_request(f"{LOOPBACK}:{echo_port}"))
                got = b""
                while b"\r\n\r\n" not in got:
                    got += await s.receive()
                if not got.startswith(b"HTTP/1.1 200 "):
                    return f"answered {got[:120]!r}"
                rest = got.split(b"\r\n\r\n", 1)[1]
                await s.send(b"still serving")
                while len(rest) < len(b"still serving"):
                    rest += await s.receive()
                return None if rest == b"still serving" else f"echoed {rest!r}"
    except (TimeoutError, OSError, anyio.EndOfStream, anyio.BrokenResourceError) as exc:
        return f"{type(exc).__name__}: {exc}"


async def assert_still_serves(port: int, echo_port: int, *, within: float = 0.0) -> None:
    deadline = time.monotonic() + within
    while True:
        problem = await tunnel_works(port, echo_port)
        if problem is None:
            return
        if time.monotonic() >= deadline:
            pytest.fail(f"the server no longer serves a good request: {problem}")
        await anyio.sleep(0.1)


async def serve_on(
    tg: TaskGroup, handler: Callable[[SocketStream], Awaitable[None]], host: str = LOOPBACK
) -> int:
    """Serve `handler` on a kernel-chosen port of `host` until `tg` is cancelled."""
    listener = await anyio.create_tcp_listener(local_host=host)

    async def serve() -> None:
        async with listener:
            await listener.serve(handler)

    tg.start_soon(serve)
    port: int = listener.extra(anyio.abc.SocketAttribute.local_port)
    return port


# =========================================================================== HTTP inbound

BASE = b"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: 127.0.0.1:{echo}\r\n"


def pad_fields(count: int, size: int) -> bytes:
    """`count` header fields of `size` bytes each, CRLF included."""
    lines = []
    for i in range(count):
        prefix = f"X-Pad-{i:03d}: ".encode()
        lines.append(prefix + b"a" * (size - len(prefix) - 2) + b"\r\n")
    return b"".join(lines)


def small_fields(count: int) -> bytes:
    return b"".join(b"X-F-%03d: 1\r\n" % i for i in range(count))


FORWARD = b"GET http://blocked.example/ HTTP/1.1\r\nHost: blocked.example\r\n"
POST = b"POST http://blocked.example/ HTTP/1.1\r\nHost: blocked.example\r\n"

HTTP_CASES: list[tuple[str, bytes, int]] = [
    # controls: the same requests without the defect are served
    ("control-connect", BASE + b"\r\n", 200),
    ("control-forward", FORWARD + b"\r\n", 403),  # reached routing: blocked.example is rejected
    ("control-head-of-15k", BASE + pad_fields(30, 512) + b"\r\n", 200),
    ("control-100-fields", BASE + small_fields(99) + b"\r\n", 200),
    # the CONNECT target
    ("connect-without-port", b"CONNECT 127.0.0.1 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("connect-port-0", b"CONNECT 127.0.0.1:0 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("connect-port-65536", b"CONNECT 127.0.0.1:65536 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("connect-absolute-form", b"CONNECT http://127.0.0.1:{echo}/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("connect-origin-form", b"CONNECT /x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("connect-userinfo", b"CONNECT user@127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("connect-nul-in-host", b"CONNECT 127.0.0.1\x00.x.example:{echo} HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 400),
    ("connect-space-in-host", b"CONNECT 127.0.0.1 .x.example:{echo} HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 400),
    ("connect-numeric-alias", b"CONNECT 2130706433:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("connect-short-alias", b"CONNECT 127.1:{echo} HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    # a CONNECT has no body: answered at once, not when a timeout fires
    ("connect-content-length", BASE + b"Content-Length: 5\r\n\r\n", 400),
    ("connect-transfer-encoding", BASE + b"Transfer-Encoding: chunked\r\n\r\n", 400),
    # framing of the head
    ("bare-lf", BASE.replace(b"\r\n", b"\n") + b"\n", 400),
    ("obs-fold-space", BASE + b"X-A: 1\r\n folded\r\n\r\n", 400),
    ("obs-fold-tab", BASE + b"X-A: 1\r\n\tfolded\r\n\r\n", 400),
    ("whitespace-before-colon", BASE + b"X-A : 1\r\n\r\n", 400),
    ("two-host-headers", b"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("lowercase-method", b"connect 127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)), 400),
    ("binary-garbage", b"\x00\xff\xfe garbage \x80\x81", 400),
    # sizes
    ("head-over-16k-one-write", BASE + pad_fields(34, 512) + b"\r\n", 431),
    ("101-fields", BASE + small_fields(100) + b"\r\n", 431),
    ("target-over-8k", b"GET http://blocked.example/" + b"a" * 9000 + b" HTTP/1.1\r\n"
     b"Host: blocked.example\r\n\r\n", 414),
    # plain-HTTP forwarding
    ("forward-content-length-and-chunked", POST + b"Content-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", 400),
    ("forward-content-length-abc", POST + b"Content-Length: abc\r\n\r\n", 400),
    ("forward-content-length-negative", POST + b"Content-Length: -1\r\n\r\n", 400),
    ("forward-content-length-list", POST + b"Content-Length: 1, 2\r\n\r\nab", 400),
    ("forward-two-content-lengths", POST + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
     400),
    ("nul-in-header-value", BASE + b"X-A: a\x00b\r\n\r\n", 400),
    ("bare-cr-in-header-value", BASE + b"X-A: a\rb\r\n\r\n", 400),
    ("forward-https-url", b"GET https://blocked.example/ HTTP/1.1\r\nHost: blocked.example\r\n\r\n",
     400),
    ("forward-userinfo", b"GET http://user:pw@blocked.example/ HTTP/1.1\r\n"
     b"Host: blocked.example\r\n\r\n", 400),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_bytes", "status"), [c[1:] for c in HTTP_CASES], ids=[c[0] for c in HTTP_CASES]
)
async def test_http_inbound_answers_exactly_and_keeps_serving(
    tmp_path: Path, request_bytes: bytes, status: int
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(), tmp_path) as bound:
            port = bound[0][1]
            data = request_bytes.replace(b"{echo}", str(echo.port).encode())
            answer = await converse(port, data)
            assert answer.status == status, answer.shown()
            assert answer.seconds < 2.0, f"not answered at once: {answer.shown()}"
            await assert_still_serves(port, echo.port)


async def test_head_over_16k_in_many_writes_is_431(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(), tmp_path) as bound:
            port = bound[0][1]
            head = BASE.replace(b"{echo}", str(echo.port).encode()) + pad_fields(40, 512) + b"\r\n"
            got = b""
            closed = False
            with anyio.fail_after(6):
                async with await anyio.connect_tcp(LOOPBACK, port) as s:

                    async def read() -> None:
                        nonlocal got, closed
                        try:
                            while b"\r\n\r\n" not in got:
                                got += await s.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            closed = True

                    async with anyio.create_task_group() as tg2:
                        tg2.start_soon(read)
                        for i in range(0, len(head), 400):
                            if got or closed:
                                break
                            try:
                                await s.send(head[i : i + 400])
                            except (anyio.BrokenResourceError, OSError):
                                break
                            await anyio.sleep(0.002)
            assert got.startswith(b"HTTP/1.1 431 "), (got[:200], closed)
            await assert_still_serves(port, echo.port)


@pytest.mark.parametrize("style", ["held-open", "trickle"])
async def test_slowloris_gets_408_after_client_timeout(tmp_path: Path, style: str) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table(top="limits: {client_timeout: 500ms}")
        async with running_chainer(text, tmp_path) as bound:
            port = bound[0][1]
            started = time.monotonic()
            got = b""
            with anyio.move_on_after(4):
                async with await anyio.connect_tcp(LOOPBACK, port) as s:
                    await s.send(BASE.replace(b"{echo}", str(echo.port).encode()))

                    async def trickle() -> None:
                        for i in range(40):
                            await anyio.sleep(0.1)
                            try:
                                await s.send(b"X-Slow-%d: 1\r\n" % i)
                            except (anyio.BrokenResourceError, OSError):
                                return

                    async with anyio.create_task_group() as tg2:
                        if style == "trickle":
                            tg2.start_soon(trickle)
                        try:
                            while b"\r\n\r\n" not in got:
                                got += await s.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                            pass
                        tg2.cancel_scope.cancel()
            elapsed = time.monotonic() - started
            assert got.startswith(b"HTTP/1.1 408 "), (got[:200], elapsed)
            assert 0.4 < elapsed < 2.0, elapsed
            await assert_still_serves(port, echo.port)


async def test_over_max_connections_the_next_client_gets_503_at_once(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table(top="limits: {max_connections: 5}")
        async with running_chainer(text, tmp_path) as bound:
            port = bound[0][1]
            idle: list[SocketStream] = []
            try:
                for _ in range(5):
                    idle.append(await anyio.connect_tcp(LOOPBACK, port))
                await anyio.sleep(0.3)
                answer = await converse(port, connect_request(f"{LOOPBACK}:{echo.port}"))
                assert answer.status == 503, answer.shown()
                assert answer.seconds < 1.5, answer.shown()
                # the connections already in are still served
                await idle[0].send(connect_request(f"{LOOPBACK}:{echo.port}"))
                got = b""
                with anyio.fail_after(3):
                    while b"\r\n\r\n" not in got:
                        got += await idle[0].receive()
                assert got.startswith(b"HTTP/1.1 200 "), got[:200]
            finally:
                for s in idle:
                    await s.aclose()
            await assert_still_serves(port, echo.port, within=3.0)


def reset_burst(port: int, count: int) -> None:
    for _ in range(count):
        with socket.create_connection((LOOPBACK, port)) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def test_clients_that_reset_at_once_do_not_stop_the_server(tmp_path: Path) -> None:
    """A port scan's RST (SO_LINGER 0, nothing sent) may arrive before chainer has looked
    at the connection: it costs that connection, never the listener."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(), tmp_path) as bound:
            port = bound[0][1]
            # Blocking on purpose: all of them are reset before chainer's loop runs again,
            # so it accepts connections that are already gone.
            reset_burst(port, 50)
            await anyio.sleep(0.2)
            await assert_still_serves(port, echo.port)


# --------------------------------------------------------------------------- listener auth


async def test_http_auth_407_and_credentials_never_forwarded_nor_logged(
    tmp_path: Path, plain_origin: Origin, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good, wrong = "pw-good-8d1e4f", "pw-wrong-2b7c9a"
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table(listen=auth_listener("alice", good))
        async with running_chainer(text, tmp_path) as bound:
            port = bound[0][1]
            target = f"{LOOPBACK}:{echo.port}"
            refused = {
                "no credentials": connect_request(target),
                "wrong password": connect_request(
                    target, f"Proxy-Authorization: {basic('alice', wrong)}\r\n".encode()
                ),
                "unknown user": connect_request(
                    target, f"Proxy-Authorization: {basic('mallory', good)}\r\n".encode()
                ),
                "not base64": connect_request(target, b"Proxy-Authorization: Basic !!!\r\n"),
                "other scheme": connect_request(target, b"Proxy-Authorization: Bearer abc\r\n"),
                "forward without credentials": FORWARD + b"\r\n",
            }
            for why, data in refused.items():
                answer = await converse(port, data)
                assert answer.status == 407, (why, answer.shown())
                assert answer.headers("Proxy-Authenticate") == ['Basic realm="chainer"'], why
            authorization = f"Proxy-Authorization: {basic('alice', good)}\r\n".encode()
            answer = await converse(port, connect_request(target, authorization))
            assert answer.status == 200, answer.shown()
            url = f"http://{LOOPBACK}:{plain_origin.port}/headers"
            forward = (
                f"GET {url} HTTP/1.1\r\nHost: {LOOPBACK}:{plain_origin.port}\r\n".encode()
                + authorization
                + b"\r\n"
            )
            answer = await converse(port, forward, done=never, wait=5)
            assert answer.status == 200, answer.shown()
            headers = json.loads(answer.body)
            assert "proxy-authorization" not in headers
            for secret in (good, basic("alice", good).split()[1]):
                assert secret.encode() not in answer.body
    for secret in (good, wrong, basic("alice", good).split()[1], basic("alice", wrong).split()[1]):
        assert secret not in caplog.text, "a credential reached chainer's log"


async def test_users_file_with_comments(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# the team\nbob:pa55-from-file\n\n# carol:commented-out\n")
    async with task_group() as tg:
        echo = await start_echo(tg)
        listen = f"\n  - address: {LOOPBACK}:0\n    auth: {{users_file: '{users}'}}"
        async with running_chainer(table(listen=listen), tmp_path) as bound:
            port = bound[0][1]
            target = f"{LOOPBACK}:{echo.port}"
            for user, password, status in [
                ("bob", "pa55-from-file", 200),
                ("carol", "commented-out", 407),
                ("# carol", "commented-out", 407),
                ("bob", "wrong", 407),
            ]:
                authorization = f"Proxy-Authorization: {basic(user, password)}\r\n".encode()
                answer = await converse(port, connect_request(target, authorization))
                assert answer.status == status, (user, password, answer.shown())
            # and the same users for SOCKS5 (RFC 1929)
            client = SocksClient.from_url(f"socks5://bob:pa55-from-file@{LOOPBACK}:{port}")
            stream = await client.connect(LOOPBACK, echo.port)
            async with stream:
                await stream.send(b"socks via users_file")
                assert await stream.receive() == b"socks via users_file"


# =========================================================================== SOCKS inbound

GREETING = b"\x05\x01\x00"
V4_REQ = b"\x00\x01\x7f\x00\x00\x01\x00\x50"  # RSV, ATYP IPv4, 127.0.0.1, port 80


def domain_request(name: bytes, port: int = 80) -> bytes:
    return GREETING + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")


SOCKS_CASES: list[tuple[str, bytes, bool, str]] = [
    # (id, bytes, then EOF, expected: "reply:XX" | "closed" | "no-success")
    ("socks5-bind", GREETING + b"\x05\x02" + V4_REQ, False, "reply:07"),
    ("socks5-udp-associate", GREETING + b"\x05\x03" + V4_REQ, False, "reply:07"),
    ("socks5-unknown-atyp", GREETING + b"\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50", False,
     "reply:08"),
    ("socks5-wrong-version-in-request", GREETING + b"\x04\x01" + V4_REQ, False, "closed"),
    ("socks5-nmethods-zero", b"\x05\x00", False, "closed"),
    ("socks5-zero-length-domain", GREETING + b"\x05\x01\x00\x03\x00\x00\x50", False, "closed"),
    ("socks5-nul-in-domain", domain_request(b"127.0.0.1\x00.x.example.com"), False, "no-success"),
    ("socks5-numeric-alias-domain", domain_request(b"2130706433"), False, "no-success"),
    ("socks5-truncated-request-then-eof", GREETING + b"\x05\x01\x00\x01\x7f\x00", True, "closed"),
    ("socks5-truncated-greeting-then-eof", b"\x05\x02\x00", True, "closed"),
    ("socks4-user-id-over-255", b"\x04\x01\x00\x50\x7f\x00\x00\x01" + b"u" * 300, False, "closed"),
    ("socks4a-domain-over-255", b"\x04\x01\x00\x50\x00\x00\x00\x01u\x00" + b"d" * 300, False,
     "closed"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "eof", "expected"), [c[1:] for c in SOCKS_CASES], ids=[c[0] for c in SOCKS_CASES]
)
async def test_socks_inbound_answers_exactly_and_keeps_serving(
    tmp_path: Path, data: bytes, eof: bool, expected: str
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(), tmp_path) as bound:
            port = bound[0][1]
            if expected == "no-success":
                answer = await converse(port, data, done=at_least(12), eof=eof)
                assert answer.data[:2] == b"\x05\x00", answer.shown()
                assert answer.data[2:4] not in (b"", b"\x05\x00"), answer.shown()
            elif expected.startswith("reply:"):
                answer = await converse(port, data, done=at_least(12), eof=eof)
                code = bytes.fromhex(expected[6:])
                assert answer.data[:2] == b"\x05\x00", answer.shown()
                assert answer.data[2:4] == b"\x05" + code, answer.shown()
            else:
                answer = await converse(port, data, done=never, eof=eof, wait=3)
                assert answer.closed, f"not closed: {answer.shown()}"
                assert answer.seconds < 2.0, answer.shown()
                if data[0] == 5:
                    assert not answer.data[2:].startswith(b"\x05\x00"), answer.shown()
                else:
                    assert answer.data[1:2] != b"\x5a", answer.shown()
            await assert_still_serves(port, echo.port)
            client = SocksClient.from_url(f"socks5://{LOOPBACK}:{port}")
            stream = await client.connect(LOOPBACK, echo.port)
            async with stream:
                await stream.send(b"socks still serves")
                assert await stream.receive() == b"socks still serves"


async def test_socks_slowloris_is_closed_after_client_timeout(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table(top="limits: {client_timeout: 500ms}")
        async with running_chainer(text, tmp_path) as bound:
            port = bound[0][1]
            # a greeting that announces two methods and sends one
            answer = await converse(port, b"\x05\x02\x00", done=never, wait=4)
            assert answer.closed, answer.shown()
            assert 0.4 < answer.seconds < 2.0, answer.shown()
            assert answer.data == b"", answer.shown()
            await assert_still_serves(port, echo.port)


# =========================================================================== destination policy


def socks5_request(host: str, port: int) -> bytes:
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.encode()
        address = b"\x03" + bytes([len(name)]) + name
    else:
        address = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    return GREETING + b"\x05\x01\x00" + address + port.to_bytes(2, "big")


def socks4_request(host: str, port: int) -> bytes:
    if _is_ip(host):
        return b"\x04\x01" + port.to_bytes(2, "big") + socket.inet_aton(host) + b"\x00"
    return b"\x04\x01" + port.to_bytes(2, "big") + b"\x00\x00\x00\x01\x00" + host.encode() + b"\x00"


def assert_http_refused_by_policy(answer: Answer) -> None:
    assert answer.status == 403, answer.shown()
    assert any(b"Proxy-Status: chainer; " + e in answer.head for e in POLICY_ERRORS), answer.shown()


async def test_a_loop_to_chainers_own_listener_is_refused(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        own, other = free_port(), free_port()
        text = table(listen=f"['{LOOPBACK}:{own}', '{LOOPBACK}:{other}']")
        async with running_chainer(text, tmp_path):
            not_refused: list[str] = []
            for target in (
                f"{LOOPBACK}:{own}",
                f"{LOOPBACK}:{other}",
                f"localhost:{own}",
                # each of these also reaches 127.0.0.1 on Linux
                f"0.0.0.0:{own}",
                f"[::ffff:127.0.0.1]:{own}",
                f"[::ffff:0.0.0.0]:{own}",
            ):
                answer = await converse(own, connect_request(target))
                if answer.status != 403 or not any(e in answer.head for e in POLICY_ERRORS):
                    not_refused.append(f"{target} -> {answer.data[:60]!r}")
            assert not not_refused, f"loops not refused: {not_refused}"
            forward = f"GET http://{LOOPBACK}:{own}/ HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            assert_http_refused_by_policy(await converse(own, forward))
            answer = await converse(own, socks5_request(LOOPBACK, own), done=at_least(12))
            assert answer.data[2:4] == b"\x05\x02", answer.shown()
            answer = await converse(own, socks4_request(LOOPBACK, other), done=at_least(8))
            assert answer.data[:2] == b"\x00\x5b", answer.shown()
            await assert_still_serves(own, echo.port)


async def test_deny_list_and_allowed_ports(tmp_path: Path, dns: FakeDNS) -> None:
    dns.names["alias.test"] = "127.0.0.2"  # a name for an address the deny list names
    async with task_group() as tg:
        echo = await start_echo(tg)
        top = (
            "deny: ['*.denied.test', '127.0.0.2/32']\n"
            f"allow_ports: [80, 443, '8000-8999', {echo.port}]"
        )
        async with running_chainer(table(top=top), tmp_path) as bound:
            port = bound[0][1]
            for target in (
                "x.denied.test:443",  # a name pattern
                f"127.0.0.2:{echo.port}",  # a CIDR, on the literal
                f"alias.test:{echo.port}",  # a CIDR, on the resolved address (direct route)
                f"{LOOPBACK}:1",  # a port not allowed
            ):
                assert_http_refused_by_policy(await converse(port, connect_request(target)))
            forward = b"GET http://x.denied.test/ HTTP/1.1\r\nHost: x.denied.test\r\n\r\n"
            assert_http_refused_by_policy(await converse(port, forward))
            for host, dport in (("x.denied.test", 443), ("alias.test", echo.port), (LOOPBACK, 1)):
                answer = await converse(port, socks5_request(host, dport), done=at_least(12))
                assert answer.data[2:4] == b"\x05\x02", (host, answer.shown())
            answer = await converse(port, socks4_request("127.0.0.2", echo.port), done=at_least(8))
            assert answer.data[:2] == b"\x00\x5b", answer.shown()
            # an allowed port (not refused by policy; nothing need listen there)
            answer = await converse(port, connect_request(f"{LOOPBACK}:8999"))
            assert answer.status in (200, 502), answer.shown()
            await assert_still_serves(port, echo.port)


# --------------------------------------------------------------------------- non-loopback

NL_HOST = "198.18.99.1"  # not loopback: put on `lo` inside a private network namespace

# (id, listener, protocol, host, port: a number or the name of one, expected)
NON_LOOPBACK_CASES: list[tuple[str, str, str, str, str | int, str]] = [
    ("http-127.0.0.1", "nl", "http", "127.0.0.1", "echo", "refused"),
    ("http-127.9.9.9", "nl", "http", "127.9.9.9", "echo", "refused"),
    ("http-localhost", "nl", "http", "localhost", "echo", "refused"),
    ("http-LocalHost.", "nl", "http", "LocalHost.", "echo", "refused"),
    ("http-ipv6-loopback", "nl", "http", "[::1]", "echo", "refused"),
    ("http-ipv4-mapped-loopback", "nl", "http", "[::ffff:127.0.0.1]", "echo", "refused"),
    ("http-ipv4-mapped-unspecified", "nl", "http", "[::ffff:0.0.0.0]", "echo", "refused"),
    ("http-0.0.0.0", "nl", "http", "0.0.0.0", "echo", "refused"),
    ("http-ipv6-unspecified", "nl", "http", "[::]", "echo", "refused"),
    ("http-metadata-169.254.169.254", "nl", "http", "169.254.169.254", 80, "refused"),
    ("http-link-local-fe80", "nl", "http", "[fe80::1]", 80, "refused"),
    ("http-name-resolving-to-loopback", "nl", "http", "rebind.test", "echo", "refused"),
    ("http-fallback-direct-rebound-to-loopback", "nl", "http", "fallback.test", "echo", "refused"),
    ("forward-127.0.0.1", "nl", "forward", "127.0.0.1", "echo", "refused"),
    ("forward-localhost", "nl", "forward", "localhost", "echo", "refused"),
    ("socks5-127.0.0.1", "nl", "socks5", "127.0.0.1", "echo", "refused"),
    ("socks5-localhost", "nl", "socks5", "localhost", "echo", "refused"),
    ("socks5-ipv6-loopback", "nl", "socks5", "::1", "echo", "refused"),
    ("socks5-ipv4-mapped-loopback", "nl", "socks5", "::ffff:127.0.0.1", "echo", "refused"),
    ("socks5-name-resolving-to-loopback", "nl", "socks5", "rebind.test", "echo", "refused"),
    ("socks4-127.0.0.1", "nl", "socks4", "127.0.0.1", "echo", "refused"),
    ("socks4a-localhost", "nl", "socks4", "localhost", "echo", "refused"),
    ("http-loop-to-itself", "nl", "http", NL_HOST, "nl", "refused"),
    ("http-loop-through-a-wildcard-listener", "nl", "http", NL_HOST, "any", "refused"),
    # this machine's own non-loopback address: refused too, unless named in allow_local
    ("http-own-non-loopback-address", "nl", "http", NL_HOST, "echo_nl", "refused"),
    ("socks5-own-non-loopback-address", "nl", "socks5", NL_HOST, "echo_nl", "refused"),
    ("http-own-address-in-allow-local", "nl", "http", NL_HOST, "echo_allowed", "ok"),
    ("socks5-own-address-in-allow-local", "nl", "socks5", NL_HOST, "echo_allowed", "ok"),
    ("loopback-listener-loopback-destination", "lo", "http", "127.0.0.1", "echo", "ok"),
    ("loopback-listener-loop-to-the-other-listener", "lo", "http", NL_HOST, "nl", "refused"),
]


def _unavailable(reason: str) -> None:
    ci.unavailable(f"private network namespace unavailable: {reason}")


@pytest.fixture(scope="module")
def non_loopback(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Runs `_non_loopback_child` in a fresh network namespace (only `lo`, which also
    carries NL_HOST), so a listener on a non-loopback address is reachable from nowhere
    else. Returns what the child saw."""
    ci.check_marked("netns", "a private network namespace")
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/usr/sbin/ip"
    if unshare is None or not os.access(ip, os.X_OK):
        _unavailable("needs unshare and ip (util-linux, iproute2)")
    prefix = [str(unshare), "--net"] + ([] if os.geteuid() == 0 else ["--map-root-user"])
    probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
    if probe.returncode != 0:
        _unavailable(probe.stderr.decode(errors="replace").strip())
    setup = f'{ip} link set lo up && {ip} addr add {NL_HOST}/32 dev lo && exec "$@"'
    code = (
        "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; "
        "import test_hostile; test_hostile.non_loopback_child(sys.argv[3])"
    )
    tmp = tmp_path_factory.mktemp("nonloopback")
    argv = [*prefix, "sh", "-c", setup, "sh", sys.executable, "-c", code, str(TESTS), str(ROOT)]
    done = subprocess.run(
        [*argv, str(tmp)], capture_output=True, text=True, timeout=90, cwd=ROOT, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    pytest.fail(f"the namespace child failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def non_loopback_child(tmp: str) -> None:
    """Entry point inside the namespace: run every NON_LOOPBACK_CASES case, print JSON."""
    real = socket.getaddrinfo
    fake = FakeDNS(real)
    fake.names["rebind.test"] = LOOPBACK
    fake.names["fallback.test"] = LOOPBACK
    socket.getaddrinfo = fake
    result = anyio.run(_non_loopback_scenario, Path(tmp), backend="asyncio")
    print("RESULT " + json.dumps(result), flush=True)


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def _non_loopback_scenario(tmp: Path) -> dict[str, Any]:
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    cases: dict[str, Any] = {}
    async with task_group() as tg:
        echo = await start_echo(tg)
        echo_nl = EchoOrigin()
        echo_nl.port = await serve_on(tg, echo_nl.handle, NL_HOST)
        allowed = EchoOrigin()
        allowed.port = await serve_on(tg, allowed.handle, NL_HOST)
        ports = {"echo": echo.port, "echo_nl": echo_nl.port, "echo_allowed": allowed.port}
        where = {"nl": NL_HOST, "lo": LOOPBACK, "open": NL_HOST, "any": "0.0.0.0", "dead": LOOPBACK}
        for name, host in where.items():
            with socket.socket() as s:
                s.bind((host, 0))
                ports[name] = s.getsockname()[1]
        allow = f"allow: [{NL_HOST}/32, 127.0.0.0/8]"
        listen = (
            f"\n  - address: {NL_HOST}:{ports['nl']}\n    {allow}"
            f"\n  - {LOOPBACK}:{ports['lo']}"
            f"\n  - {{address: '{NL_HOST}:{ports['open']}', open: true}}"
            f"\n  - address: 0.0.0.0:{ports['any']}\n    {allow}"
        )
        routes = (
            "  - {match: fallback.test, via: [dead], fallback: [direct]}\n"
            "  - {match: '*', via: direct}\n"
        )
        proxies = f"  dead: http://{LOOPBACK}:{ports['dead']}\n"
        top = f"allow_local: ['{NL_HOST}:{allowed.port}']"
        text = table(routes, listen=listen, proxies=proxies, top=top)
        async with running_chainer(text, tmp):
            for case, listener, protocol, host, port_ref, expected in NON_LOOPBACK_CASES:
                dport = ports[port_ref] if isinstance(port_ref, str) else port_ref
                at = (NL_HOST, ports["nl"]) if listener == "nl" else (LOOPBACK, ports["lo"])
                before = echo.connections + echo_nl.connections + allowed.connections
                cases[case] = await _one_non_loopback_case(
                    at, protocol, host, dport, expected == "ok"
                )
                await anyio.sleep(0.05)
                reached = echo.connections + echo_nl.connections + allowed.connections - before
                cases[case]["reached_an_origin"] = reached > 0
    logging.getLogger().removeHandler(collect)
    return {"cases": cases, "warnings": collect.messages}


async def _one_non_loopback_case(
    at: tuple[str, int], protocol: str, host: str, port: int, ping: bool
) -> dict[str, Any]:
    done: Callable[[bytes], bool]
    if protocol == "http":
        data, done = connect_request(f"{host}:{port}"), head_complete
    elif protocol == "forward":
        data = f"GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
        done = head_complete
    elif protocol == "socks5":
        data, done = socks5_request(host, port), at_least(12)
    else:
        data, done = socks4_request(host, port), at_least(8)
    out: dict[str, Any] = {"answer": "", "echo": None, "error": None}
    try:
        with anyio.fail_after(6):
            async with await anyio.connect_tcp(*at) as s:
                await s.send(data)
                got = b""
                try:
                    while not done(got):
                        got += await s.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    pass
                out["answer"] = got.decode("latin-1")
                if ping and got.startswith((b"HTTP/1.1 200 ", b"\x05\x00\x05\x00")):
                    await s.send(b"ping")
                    out["echo"] = (await s.receive()).decode("latin-1")
    except (TimeoutError, OSError) as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
    return out


@pytest.mark.netns
@pytest.mark.slow  # the `non_loopback` child runs every case: ~2.5 s
@pytest.mark.parametrize(
    ("case", "protocol", "expected"),
    [(c[0], c[2], c[5]) for c in NON_LOOPBACK_CASES],
    ids=[c[0] for c in NON_LOOPBACK_CASES],
)
def test_non_loopback_listener_protects_local_destinations(
    non_loopback: dict[str, Any], case: str, protocol: str, expected: str
) -> None:
    seen = non_loopback["cases"][case]
    assert seen["error"] is None, seen
    answer = seen["answer"].encode("latin-1")
    if expected == "ok":
        assert answer.startswith((b"HTTP/1.1 200 ", b"\x05\x00\x05\x00")), seen
        assert seen["echo"] == "ping", seen
        return
    assert not seen["reached_an_origin"], f"a refused destination was connected to: {seen}"
    if protocol in ("http", "forward"):
        assert_http_refused_by_policy(Answer(answer, 0.0, False))
    elif protocol == "socks5":
        assert answer[2:4] == b"\x05\x02", seen
    else:
        assert answer[:2] == b"\x00\x5b", seen


@pytest.mark.netns
@pytest.mark.slow
def test_an_open_listener_logs_a_warning_at_start(non_loopback: dict[str, Any]) -> None:
    warnings = non_loopback["warnings"]
    assert any(NL_HOST in m and "open" in m.lower() for m in warnings), warnings


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("text", "line", "path"),
    [
        ("listen:\n  - 0.0.0.0:8080\n", 2, "listen[0]"),
        ("listen:\n  - address: '[::]:8080'\n", 2, "listen[0]"),
        ("listen:\n  - {address: 192.0.2.10:8080}\n", 2, "listen[0]"),
        ("limits: {max_conections: 5}\n", 1, "limits"),
        ("limits:\n  client_timeout: soon\n", 2, "limits.client_timeout"),
        ("limits:\n  header_bytes: -1\n", 2, "limits.header_bytes"),
        ("allow_ports: [80, 70000]\n", 1, "allow_ports"),
        ("allow_ports:\n  - '9000-8000'\n", 2, "allow_ports"),
        ("deny:\n  - 're:('\n", 2, "deny"),
        ("http:\n  x_forwarded_for: maybe\n", 2, "http.x_forwarded_for"),
        ("listen:\n  - address: 127.0.0.1:8080\n    auth: {users_file: /nonexistent/u}\n", 3,
         "listen[0].auth"),
    ],
    ids=[
        "wildcard-v4-listener-without-auth-or-allow",
        "wildcard-v6-listener-without-auth-or-allow",
        "public-listener-without-auth-or-allow",
        "limits-unknown-key",
        "limits-bad-duration",
        "limits-negative-size",
        "allow-ports-out-of-range",
        "allow-ports-reversed-range",
        "deny-bad-regex",
        "http-x-forwarded-for-not-a-flag",
        "users-file-missing",
    ],
)  # fmt: skip
def test_new_keys_are_validated_with_file_and_line(text: str, line: int, path: str) -> None:
    if "listen" not in text:
        text = "listen: ['127.0.0.1:8080']\n" + text
        line += 1
    text += "routes:\n  - {match: '*', via: direct}\n"
    with pytest.raises(ConfigErrors) as info:
        parse_config(text, "routes.yaml")
    assert f"routes.yaml:{line}: {path}" in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("listener", "host", "guard"),
    [
        ("{address: 0.0.0.0:8080, open: true}", "0.0.0.0", "open"),
        ("{address: 0.0.0.0:8080, allow: [10.0.0.0/8]}", "0.0.0.0", "allow"),
        ("{address: '[::]:8080', auth: {users: {alice: pw}}}", "::", "auth"),
        ("127.0.0.1:8080", "127.0.0.1", "loopback"),
    ],
)
def test_a_non_loopback_listener_with_auth_allow_or_open_is_accepted(
    listener: str, host: str, guard: str
) -> None:
    """The listener is taken as written, with the one guard that makes it safe to open."""
    text = (
        f"listen:\n  - {listener}\n"
        "limits: {max_connections: 10, client_timeout: 10s, header_bytes: 16384, "
        "header_fields: 100}\n"
        "deny: ['.internal.example', '10.0.0.0/8']\n"
        "allow_ports: [80, 443, '8000-8999']\n"
        "http: {via: chainer, x_forwarded_for: false}\n"
        "routes:\n  - {match: '*', via: direct, anonymous: true}\n"
    )
    (only,) = parse_config(text, "routes.yaml").listeners
    assert only.address == Address(host, 8080)
    guards = {
        "open": only.open,
        "allow": only.allow == ("10.0.0.0/8",),
        "auth": only.users == (("alice", "pw"),),
        "loopback": only.loopback,
    }
    assert [name for name, on in guards.items() if on] == [guard], only


def test_validate_refuses_an_open_proxy_by_accident_with_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "routes.yaml"
    bad.write_text("listen:\n  - 0.0.0.0:18080\nroutes:\n  - {match: '*', via: direct}\n")
    exe = shutil.which("chainer")
    argv = [exe] if exe else [sys.executable, "-m", "chainer"]
    done = subprocess.run(
        [*argv, "validate", "-c", str(bad)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2, done
    assert f"{bad}:2: listen[0]" in done.stderr, done.stderr


# =========================================================================== hostile upstream

READ_HEAD = "read-head"  # an HTTP request head
READ_GREETING = "read-greeting"  # a SOCKS5 greeting without credentials: 3 bytes
READ_SOME = "read-some"  # whatever arrives next
CLOSE = "close"


@dataclass(eq=False)
class ScriptedHop:
    """A hop that reads and answers by a script, then holds the connection open (so a
    client that waits for a timeout instead of judging the answer shows up as slow)."""

    script: tuple[bytes | str, ...]
    port: int = 0
    accepted: int = 0

    async def handle(self, client: SocketStream) -> None:
        self.accepted += 1
        buffered = BufferedByteStream(client)
        async with client:
            try:
                for step in self.script:
                    if isinstance(step, bytes):
                        await client.send(step)
                    elif step == READ_HEAD:
                        await buffered.receive_until(b"\r\n\r\n", 65536)
                    elif step == READ_GREETING:
                        await buffered.receive_exactly(3)
                    elif step == READ_SOME:
                        await buffered.receive()
                    elif step == CLOSE:
                        return
                with anyio.move_on_after(10):
                    while await buffered.receive():
                        pass
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                pass


async def start_scripted(tg: TaskGroup, script: tuple[bytes | str, ...]) -> ScriptedHop:
    hop = ScriptedHop(script)
    hop.port = await serve_on(tg, hop.handle)
    return hop


HUGE_HEAD = b"HTTP/1.1 200 OK\r\n" + pad_fields(40, 1000) + b"\r\n"  # ~40 KB

UPSTREAM_CASES: list[tuple[str, str, tuple[bytes | str, ...]]] = [
    ("http-head-over-32k", "http", (READ_HEAD, HUGE_HEAD)),
    ("http-status-2OO", "http", (READ_HEAD, b"HTTP/1.1 2OO OK\r\n\r\n")),
    ("http-ssh-banner", "http", (READ_HEAD, b"SSH-2.0-x\r\n")),
    ("http-header-without-colon", "http", (READ_HEAD, b"HTTP/1.1 200 OK\r\nNoColonHere\r\n\r\n")),
    ("socks5-version-4-method-reply", "socks5", (READ_GREETING, b"\x04\x00")),
    ("socks5-version-4-connect-reply", "socks5",
     (READ_GREETING, b"\x05\x00", READ_SOME, b"\x04\x00\x00\x01" + bytes(6))),
    ("socks5-truncated-method-reply", "socks5", (READ_GREETING, b"\x05", CLOSE)),
    ("socks5-truncated-connect-reply", "socks5",
     (READ_GREETING, b"\x05\x00", READ_SOME, b"\x05\x00\x00\x01\x7f", CLOSE)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("scheme", "script"), [c[1:] for c in UPSTREAM_CASES], ids=[c[0] for c in UPSTREAM_CASES]
)
async def test_hostile_upstream_answers_are_502_naming_the_hop(
    tmp_path: Path, scheme: str, script: tuple[bytes | str, ...]
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        hop = await start_scripted(tg, script)
        text = table(
            "  - {match: via-bad.test, via: [bad]}\n  - {match: '*', via: direct}\n",
            proxies=f"  bad: {scheme}://{LOOPBACK}:{hop.port}\n",
            defaults="connect_timeout: 2s, handshake_timeout: 5s, deadline: 8s",
        )
        async with running_chainer(text, tmp_path) as bound:
            port = bound[0][1]
            answer = await converse(port, connect_request("via-bad.test:443"), wait=8)
            assert answer.status == 502, answer.shown()
            assert answer.seconds < 2.0, f"waited for a timeout: {answer.shown()}"
            assert b"hop 1 (bad)" in answer.head, answer.shown()
            if scheme == "http":
                assert b"Proxy-Status: chainer; error=http_protocol_error" in answer.head, (
                    answer.shown()
                )
            assert hop.accepted == 1
            await assert_still_serves(port, echo.port)


# =========================================================================== forwarding


def forward_headers_request(origin: Origin, extra: bytes = b"") -> bytes:
    authority = f"{LOOPBACK}:{origin.port}"
    return (
        (
            f"GET http://{authority}/headers HTTP/1.1\r\nHost: {authority}\r\n"
            "User-Agent: hostile-test\r\n"
        ).encode()
        + extra
        + b"\r\n"
    )


async def origin_sees(port: int, origin: Origin, extra: bytes = b"") -> dict[str, str]:
    answer = await converse(port, forward_headers_request(origin, extra), done=never, wait=5)
    assert answer.status == 200, answer.shown()
    headers: dict[str, str] = json.loads(answer.body)
    return headers


@pytest.mark.parametrize(
    ("top", "route_extra", "via", "xff"),
    [
        ("", "", "1.1 chainer", None),
        ("http: {via: gw-7}", "", "1.1 gw-7", None),
        ("http: {via: false}", "", None, None),
        ("", ", anonymous: true", None, None),
        ("http: {x_forwarded_for: true}", "", "1.1 chainer", LOOPBACK),
        ("http: {x_forwarded_for: true}", ", anonymous: true", None, None),
    ],
    ids=["default", "pseudonym", "via-off", "anonymous-route", "xff-on", "xff-on-anonymous"],
)
async def test_via_and_x_forwarded_for_on_forwarded_requests(
    tmp_path: Path,
    plain_origin: Origin,
    top: str,
    route_extra: str,
    via: str | None,
    xff: str | None,
) -> None:
    text = table(f"  - {{match: '*', via: direct{route_extra}}}\n", top=top)
    async with running_chainer(text, tmp_path) as bound:
        headers = await origin_sees(bound[0][1], plain_origin)
    assert headers.get("via") == via, headers
    assert headers.get("x-forwarded-for") == xff, headers
    assert headers["user-agent"] == "hostile-test"


async def test_hop_by_hop_headers_never_reach_the_origin(
    tmp_path: Path, plain_origin: Origin
) -> None:
    extra = (
        b"Connection: keep-alive, Upgrade, X-Secret-Hop\r\n"
        b"X-Secret-Hop: must-not-pass\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: websocket\r\n"
        b"Proxy-Authorization: Basic dXNlcjpodW50ZXIy\r\n"
        b"X-End-To-End: kept\r\n"
    )
    async with running_chainer(table(), tmp_path) as bound:
        headers = await origin_sees(bound[0][1], plain_origin, extra)
    for name in (
        "x-secret-hop",
        "proxy-connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
    ):
        assert name not in headers, headers
    assert headers.get("connection", "close").lower() == "close", headers
    assert headers["x-end-to-end"] == "kept"
    assert headers["host"] == f"{LOOPBACK}:{plain_origin.port}"


# =========================================================================== privacy chain


@dataclass(eq=False)
class Recorder:
    """A TCP relay in front of a hop that keeps every byte the hop was sent."""

    target_port: int
    port: int = 0
    sent: list[bytearray] = field(default_factory=list)

    async def handle(self, client: SocketStream) -> None:
        record = bytearray()
        self.sent.append(record)
        async with client:
            try:
                upstream = await anyio.connect_tcp(LOOPBACK, self.target_port)
            except OSError:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(_copy, client, upstream, record)
                tg.start_soon(_copy, upstream, client, None)


async def _copy(src: ByteStream, dst: ByteStream, record: bytearray | None) -> None:
    try:
        while True:
            data = await src.receive()
            if record is not None:
                record += data
            await dst.send(data)
    except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await dst.send_eof()


async def start_recorder(tg: TaskGroup, target_port: int) -> Recorder:
    rec = Recorder(target_port)
    rec.port = await serve_on(tg, rec.handle)
    return rec


@dataclass(eq=False)
class ResolvingExit:
    """A SOCKS5 exit (no auth) that resolves names from its own table, never through this
    process's resolver: the only place in the privacy chain where a name becomes an
    address."""

    names: dict[str, str]
    port: int = 0
    asked: list[tuple[int, str, int]] = field(default_factory=list)

    async def handle(self, client: SocketStream) -> None:
        buffered = BufferedByteStream(client)
        async with client:
            try:
                greeting = await buffered.receive_exactly(2)
                await buffered.receive_exactly(greeting[1])
                await client.send(b"\x05\x00")
                request = await buffered.receive_exactly(4)
                atyp = request[3]
                if atyp == 1:
                    host = socket.inet_ntoa(await buffered.receive_exactly(4))
                elif atyp == 3:
                    size = (await buffered.receive_exactly(1))[0]
                    host = (await buffered.receive_exactly(size)).decode("ascii", "replace")
                else:
                    host = socket.inet_ntop(socket.AF_INET6, await buffered.receive_exactly(16))
                port = int.from_bytes(await buffered.receive_exactly(2), "big")
                self.asked.append((atyp, host, port))
                ip = self.names.get(host, host if atyp == 1 else None)
                if ip is None:
                    await client.send(b"\x05\x04\x00\x01" + bytes(6))
                    return
                upstream = await anyio.connect_tcp(ip, port)
                async with upstream, anyio.create_task_group() as tg:
                    await client.send(b"\x05\x00\x00\x01" + bytes(6))
                    tg.start_soon(_copy, buffered, upstream, None)
                    tg.start_soon(_copy, upstream, client, None)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                pass


def split_socks5(
    data: bytes,
) -> tuple[bytes, bytes, tuple[bytes, bytes] | None, tuple[int, str, int]]:
    """A SOCKS5 client's handshake as its server received it:
    (handshake bytes, what followed, RFC 1929 credentials, (ATYP, host, port))."""
    assert data[:1] == b"\x05", data[:40]
    pos = 2 + data[1]
    credentials = None
    if data[pos : pos + 1] == b"\x01":
        ulen = data[pos + 1]
        user = data[pos + 2 : pos + 2 + ulen]
        plen_at = pos + 2 + ulen
        password = data[plen_at + 1 : plen_at + 1 + data[plen_at]]
        credentials = (user, password)
        pos = plen_at + 1 + data[plen_at]
    assert data[pos : pos + 2] == b"\x05\x01", data[pos : pos + 40]
    atyp, addr = data[pos + 3], pos + 4
    if atyp == 1:
        host, end = socket.inet_ntoa(data[addr : addr + 4]), addr + 4
    elif atyp == 3:
        end = addr + 1 + data[addr]
        host = data[addr + 1 : end].decode("ascii", "replace")
    else:
        host, end = socket.inet_ntop(socket.AF_INET6, data[addr : addr + 16]), addr + 16
    port = int.from_bytes(data[end : end + 2], "big")
    return data[: end + 2], data[end + 2 :], credentials, (atyp, host, port)


@contextlib.asynccontextmanager
async def chainer_hop(
    tmp_path: Path, name: str, user: str, password: str, routes: str, proxies: str = ""
) -> AsyncIterator[int]:
    """A chainer instance as a SOCKS5 hop with RFC 1929 auth; yields its port."""
    text = table(routes, listen=auth_listener(user, password), proxies=proxies)
    async with running_chainer(text, tmp_path, f"{name}.yaml") as bound:
        yield bound[0][1]


async def test_privacy_chain_leaks_nothing(
    tmp_path: Path, plain_origin: Origin, caplog: pytest.LogCaptureFixture, dns: FakeDNS
) -> None:
    """client -> router (anonymous route) -> chainer hop A (socks5, alice) -> chainer hop B
    (socks5, bob) -> exit that resolves `origin.test` -> origin. Each hop is fronted by a
    recorder, so every byte each one was sent can be checked."""
    caplog.set_level(logging.DEBUG)
    pw_a, pw_b, pw_client = "pw-A-7f3a9c", "pw-B-51d2e8", "pw-client-c0ffee"
    secrets: dict[str, list[bytes]] = {
        "A": [pw_a.encode(), basic("alice", pw_a).split()[1].encode()],
        "B": [pw_b.encode(), basic("bob", pw_b).split()[1].encode()],
        "client": [pw_client.encode(), basic("carol", pw_client).split()[1].encode()],
    }
    every_secret = [secret for group in secrets.values() for secret in group]
    async with task_group() as tg:
        exit_hop = ResolvingExit({"origin.test": LOOPBACK})
        exit_hop.port = await serve_on(tg, exit_hop.handle)
        rec_exit = await start_recorder(tg, exit_hop.port)
        b_routes = "  - {match: '*.test', via: [exit]}\n  - {match: '*', via: direct}\n"
        b_proxies = f"  exit: socks5://{LOOPBACK}:{rec_exit.port}\n"
        async with chainer_hop(tmp_path, "b", "bob", pw_b, b_routes, b_proxies) as b_port:
            rec_b = await start_recorder(tg, b_port)
            a_routes = "  - {match: '*', via: direct}\n"
            async with chainer_hop(tmp_path, "a", "alice", pw_a, a_routes) as a_port:
                rec_a = await start_recorder(tg, a_port)
                text = table(
                    "  - {match: '*.test', via: [a, b], anonymous: true}\n",
                    listen=auth_listener("carol", pw_client),
                    proxies=(
                        f"  a: socks5://alice:{pw_a}@{LOOPBACK}:{rec_a.port}\n"
                        f"  b: socks5://bob:{pw_b}@{LOOPBACK}:{rec_b.port}\n"
                    ),
                    top="http: {via: chainer, x_forwarded_for: true}",
                )
                async with running_chainer(text, tmp_path, "router.yaml") as bound:
                    authority = f"origin.test:{plain_origin.port}"
                    request = (
                        f"GET http://{authority}/headers HTTP/1.1\r\nHost: {authority}\r\n"
                        f"Proxy-Authorization: {basic('carol', pw_client)}\r\n"
                        "User-Agent: privacy-test\r\n\r\n"
                    ).encode()
                    answer = await converse(bound[0][1], request, done=never, wait=8)

    # what the origin saw: no client address, no chainer identity, no proxy headers
    assert answer.status == 200, answer.shown()
    headers = json.loads(answer.body)
    assert headers["host"] == authority
    for name in ("via", "x-forwarded-for", "forwarded", "x-real-ip", "proxy-authorization"):
        assert name not in headers, headers
    seen = answer.body.lower()
    assert b"chainer" not in seen, headers
    assert LOOPBACK.encode() not in seen, headers
    for secret in every_secret:
        assert secret not in answer.body

    # hop A: its own credentials in its handshake, asked for hop B's address; hop B's
    # credentials only inside A's tunnel, and nobody else's anywhere
    assert len(rec_a.sent) == 1
    handshake, tunnel, creds, target = split_socks5(bytes(rec_a.sent[0]))
    assert creds == (b"alice", pw_a.encode())
    assert target == (1, LOOPBACK, rec_b.port)
    for secret in secrets["B"] + secrets["client"] + [b"origin.test"]:
        assert secret not in handshake
    for secret in secrets["A"] + secrets["client"]:
        assert secret not in tunnel
    # hop B: its own credentials, and the destination's name for the next hop to resolve
    assert len(rec_b.sent) == 1
    sent_b = bytes(rec_b.sent[0])
    _, _, creds, target = split_socks5(sent_b)
    assert creds == (b"bob", pw_b.encode())
    assert target == (3, "origin.test", plain_origin.port)
    for secret in secrets["A"] + secrets["client"]:
        assert secret not in sent_b
    # the exit: no credentials at all, the name (not an address)
    assert len(rec_exit.sent) == 1
    sent_exit = bytes(rec_exit.sent[0])
    _, _, creds, target = split_socks5(sent_exit)
    assert creds is None
    assert target == (3, "origin.test", plain_origin.port)
    for secret in every_secret:
        assert secret not in sent_exit
    assert exit_hop.asked == [(3, "origin.test", plain_origin.port)]

    # no name was resolved in this process (the exit resolves from its own table)
    assert "origin.test" not in dns.asked
    assert all(name is None or _is_ip(name) for name in dns.asked), dns.asked
    # and no credential reached any log line
    for secret in every_secret:
        assert secret.decode() not in caplog.text


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_connect_without_host_is_served_like_squid(tmp_path: Path, version: str) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(), tmp_path) as bound:
            request = f"CONNECT {LOOPBACK}:{echo.port} {version}\r\n\r\nping".encode()
            answer = await converse(bound[0][1], request, done=lambda got: got.endswith(b"ping"))
            assert answer.data.startswith(b"HTTP/1.1 200 "), answer.shown()
            assert answer.data.endswith(b"\r\n\r\nping"), answer.shown()


async def test_a_plain_request_without_host_is_still_refused(tmp_path: Path) -> None:
    async with running_chainer(table(), tmp_path) as bound:
        request = f"GET http://{LOOPBACK}:1/ HTTP/1.1\r\n\r\n".encode()
        answer = await converse(bound[0][1], request)
        assert answer.status == 400, answer.shown()


def test_the_library_prints_nothing_unless_logging_is_configured() -> None:
    code = (
        "import logging, chainer\n"
        "logging.getLogger('chainer.health').warning('circuit open: x')\n"
        "logging.getLogger('chainer.access').error('a line')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# --------------------------------------------------------------------------- one address, one text


async def test_deny_of_one_ip_holds_however_the_address_is_spelt(
    tmp_path: Path, dns: FakeDNS, caplog: pytest.LogCaptureFixture
) -> None:
    """deny: ["127.0.0.1"] refuses the mapped IPv6 spellings, the SOCKS5 IPv6 form and a
    name that resolves to it on a direct route; another loopback address still works."""
    dns.names["alias.test"] = LOOPBACK
    async with task_group() as tg:
        echo = await start_echo(tg)
        top = "deny: ['127.0.0.1', '[::ffff:127.0.0.3]']"
        listen = "['127.0.0.2:0']"  # chainer itself is not on the denied address
        async with running_chainer(table(top=top, listen=listen), tmp_path) as bound:
            port = bound[0][1]

            async def ask(data: bytes, done: Callable[[bytes], bool] = head_complete) -> Answer:
                return await converse(port, data, host="127.0.0.2", done=done)

            for target in (
                f"{LOOPBACK}:{echo.port}",
                f"[::ffff:127.0.0.1]:{echo.port}",
                f"[::ffff:7f00:1]:{echo.port}",
                f"[0:0:0:0:0:ffff:7f00:0001]:{echo.port}",
                f"alias.test:{echo.port}",
                f"127.0.0.3:{echo.port}",  # denied as a mapped address in the file
            ):
                answer = await ask(connect_request(target))
                assert answer.status == 403, (target, answer.shown())
            mapped = (
                GREETING + b"\x05\x01\x00\x04" + ipaddress.IPv6Address("::ffff:127.0.0.1").packed
            )
            answer = await ask(mapped + echo.port.to_bytes(2, "big"), done=at_least(12))
            assert answer.data[2:4] == b"\x05\x02", answer.shown()
            # another loopback address passes the policy (and finds nothing listening)
            other = await ask(connect_request(f"127.0.0.4:{echo.port}"))
            assert other.status == 502, other.shown()
            assert b"error=connection_refused" in other.head, other.shown()


@pytest.mark.parametrize(
    "target",
    [
        "[::1%1]:{port}",
        "[fe80::1%eth0]:{port}",
        "[::ffff:127.0.0.1%lo]:{port}",
        "[::1%25lo]:{port}",
    ],
)
async def test_a_zone_id_is_refused_as_a_bad_target(tmp_path: Path, target: str) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(), tmp_path) as bound:
            port = bound[0][1]
            answer = await converse(port, connect_request(target.format(port=echo.port)))
            assert answer.status == 400, answer.shown()
            await assert_still_serves(port, echo.port)


async def test_a_socks_name_with_a_zone_id_and_a_newline_forges_no_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    proxies = "  hop: {url: 'http://127.0.0.1:9', connect_timeout: 1s}\n"
    routes = "  - {match: '*', via: hop}\n"
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table(routes, proxies=proxies)
        with caplog.at_level(logging.DEBUG, logger="chainer"):
            async with running_chainer(text, tmp_path) as bound:
                port = bound[0][1]
                name = b"::1%\nchainer.access client=1.2.3.4 outcome=ok"
                answer = await converse(port, domain_request(name, 80), done=at_least(12))
                assert answer.data[:2] == b"\x05\x00", answer.shown()
                assert answer.data[2:4] == b"\x05\x01", answer.shown()
                await converse(port, connect_request("[::1%0a]:80"))
                del echo
    for record in caplog.records:
        text = record.getMessage()
        assert "\n" not in text, text
        assert "\r" not in text, text


async def test_a_backtracking_regex_route_cannot_freeze_the_router(tmp_path: Path) -> None:
    """With Python's re this pattern takes time doubling per character of the label; the
    request would hang and stall every other tunnel. RE2 answers at once."""
    routes = (
        "  - {match: 're:^([a-z0-9-]+\\.?)+\\.corp\\.example$', via: reject}\n"
        "  - {match: '*', via: direct}\n"
    )
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(routes), tmp_path) as bound:
            port = bound[0][1]
            evil = "a" * 60 + ".corp.examplx:443"
            answer = await converse(port, connect_request(evil), wait=10)
            assert answer.status == 502, answer.shown()  # not matched; the name resolves nowhere
            await assert_still_serves(port, echo.port)
            hit = await converse(port, connect_request("db-1.corp.example:443"))
            assert hit.status == 403, hit.shown()


def test_a_regex_re2_cannot_run_is_refused_when_loading() -> None:
    from chainer.config import parse_config

    with pytest.raises(ConfigErrors) as caught:
        parse_config("routes:\n  - {match: 're:^(a)\\1$', via: direct}\n", "routes.yaml")
    (error,) = caught.value.errors
    assert str(error).startswith("routes.yaml:2: routes[0].match: bad regex")
    assert "RE2" in str(error)


async def test_proxy_status_names_hops_but_never_their_addresses(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gone = free_port()
    proxies = f"  corp: 'http://127.0.0.1:{gone}'\n"
    routes = "  - {match: '*', via: corp}\n"
    caplog.set_level(logging.INFO, logger="chainer.access")
    async with running_chainer(table(routes, proxies=proxies), tmp_path) as bound:
        answer = await converse(bound[0][1], connect_request("example.test:443"))
    assert answer.status == 502, answer.shown()
    assert b"hop 1 (corp)" in answer.data
    assert f":{gone}".encode() not in answer.data  # not in Proxy-Status, not in the body
    logged = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    assert any(f"http://127.0.0.1:{gone}" in line for line in logged)  # the log has it


@pytest.mark.parametrize("protocol", ["http", "socks5"])
async def test_a_tls_listener_accepts_only_tls(tmp_path: Path, ca: Any, protocol: str) -> None:
    """Plaintext CONNECT with Basic credentials or a SOCKS5 login on the TLS port would
    put the password on the wire in clear: refused before anything is read."""
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "tls.pem"))
    listen = (
        "\n  - address: 127.0.0.1:0\n    tls: {cert: tls.pem, key: tls.pem}"
        "\n    auth: {users: {alice: 's3cret'}}"
    )
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(listen=listen), tmp_path) as bound:
            port = bound[0][1]
            if protocol == "http":
                request = connect_request(
                    f"{LOOPBACK}:{echo.port}",
                    f"Proxy-Authorization: {basic('alice', 's3cret')}\r\n".encode(),
                )
                answer = await converse(port, request)
                assert answer.status == 400, answer.shown()
                assert b"speaks TLS" in answer.data
            else:
                login = b"\x05\x01\x02" + b"\x01\x05alice\x06s3cret"
                answer = await converse(port, login, done=never, wait=2)
                assert answer.closed, answer.shown()
                assert answer.data == b"", answer.shown()  # not even a method choice
            assert echo.connections == 0


async def test_allow_on_a_dual_stack_listener_matches_ipv4_clients(tmp_path: Path) -> None:
    """On [::], an IPv4 client's address is ::ffff:127.0.0.1; allow: [127.0.0.0/8] must
    still let it in, and allow: [10.0.0.0/8] must still keep it out."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        for allow, admitted in (("127.0.0.0/8", True), ("10.0.0.0/8", False)):
            listen = f"\n  - address: '[::]:0'\n    allow: ['{allow}']"
            # an exposed listener; the echo origin on loopback is let through explicitly
            text = table(listen=listen, top=f"allow_local: ['{LOOPBACK}:{echo.port}']")
            async with running_chainer(text, tmp_path) as bound:
                port = bound[0][1]
                problem = await tunnel_works(port, echo.port)  # over IPv4, to 127.0.0.1
                assert (problem is None) is admitted, (allow, problem)


async def test_a_malformed_request_chunk_is_one_log_line_not_a_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chainer")
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(), tmp_path) as bound:
            port = bound[0][1]
            for _ in range(3):
                request = (
                    f"POST http://{LOOPBACK}:{echo.port}/ HTTP/1.1\r\nHost: x\r\n"
                    "Transfer-Encoding: chunked\r\n\r\nzz\r\nnot a chunk\r\n"
                ).encode()
                await converse(port, request, wait=2)
            await assert_still_serves(port, echo.port)
    lines = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    bad = [line for line in lines if "POST" in line or "outcome=bad_request" in line]
    assert len(bad) == 3, lines
    assert all('error="client: bad request body' in line for line in bad), bad


async def test_per_client_limit_turns_away_one_address_only(tmp_path: Path) -> None:
    """On a listener other machines can reach, one address may hold per_client tunnels;
    the next from it gets 503, another address is not affected."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        listen = "\n  - address: 0.0.0.0:0\n    allow: [127.0.0.0/8]"
        top = f"limits: {{per_client: 2}}\nallow_local: ['{LOOPBACK}:{echo.port}']"
        async with running_chainer(table(listen=listen, top=top), tmp_path) as bound:
            port = bound[0][1]
            held = []
            for _ in range(2):  # two tunnels held open from 127.0.0.1
                s = await anyio.connect_tcp(LOOPBACK, port)
                held.append(s)
                await s.send(connect_request(f"{LOOPBACK}:{echo.port}"))
                assert (await s.receive()).startswith(b"HTTP/1.1 200 ")
            third = await converse(port, connect_request(f"{LOOPBACK}:{echo.port}"))
            assert third.status == 503, third.shown()
            assert b"from your address" in third.data
            # another client address is not affected
            other = await anyio.connect_tcp(LOOPBACK, port, local_host="127.0.0.2")
            async with other:
                await other.send(connect_request(f"{LOOPBACK}:{echo.port}"))
                assert (await other.receive()).startswith(b"HTTP/1.1 200 ")
            for s in held:
                await s.aclose()
            await assert_still_serves(port, echo.port, within=2)


async def test_per_client_does_not_limit_a_loopback_listener(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(top="limits: {per_client: 1}"), tmp_path) as bound:
            port = bound[0][1]
            async with await anyio.connect_tcp(LOOPBACK, port) as first:
                await first.send(connect_request(f"{LOOPBACK}:{echo.port}"))
                assert (await first.receive()).startswith(b"HTTP/1.1 200 ")
                await assert_still_serves(port, echo.port)  # a second one from here
