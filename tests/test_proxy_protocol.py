"""`proxy_protocol: true` listeners over loopback: the header names the client for the
access log, `allow:` and limits.per_client; no header, or a header from outside
`proxy_protocol_from`, and the connection is closed; the bytes after the header are the
client's request, none lost. (HAProxy itself in front of chainer: test_fleet.py.)"""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from fakes import running_chainer, start_echo, task_group

from chainer.config import parse_config
from chainer.errors import ConfigErrors
from chainer.proto.proxy_protocol import encode_v1, encode_v2

pytestmark = pytest.mark.anyio

LOOPBACK = "127.0.0.1"


def table(listener: str, top: str = "") -> str:
    return (
        f"listen:\n  - {listener}\n{top}"
        "routes:\n  - {match: blocked.example, via: reject}\n  - {match: '*', via: direct}\n"
    )


def pp_listener(balancers: str = "[127.0.0.1/32]", extra: str = "") -> str:
    return (
        f"{{address: '{LOOPBACK}:0', proxy_protocol: true, proxy_protocol_from: {balancers}"
        f"{extra}}}"
    )


def connect(target: str) -> bytes:
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()


async def exchange(
    port: int, data: bytes, *, local_host: str | None = None, wait: float = 4.0
) -> tuple[bytes, bool]:
    """Send `data`, read until an answer head, a close or `wait`; (received, closed)."""
    got, closed = b"", False
    async with await anyio.connect_tcp(LOOPBACK, port, local_host=local_host) as s:
        await s.send(data)
        with anyio.move_on_after(wait):
            try:
                while b"\r\n\r\n" not in got:
                    got += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                closed = True
    return got, closed


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chainer.access"]


@pytest.mark.parametrize(
    ("header", "client"),
    [
        (encode_v1(("192.0.2.7", 40001), ("198.51.100.1", 8080)), "192.0.2.7:40001"),
        (encode_v2(("192.0.2.8", 40002), ("198.51.100.1", 8080)), "192.0.2.8:40002"),
        (encode_v2(("2001:db8::9", 40003), ("2001:db8::1", 8080)), "[2001:db8::9]:40003"),
        (encode_v1(("::ffff:192.0.2.10", 40004), ("::1", 8080)), "192.0.2.10:40004"),
    ],
    ids=["v1", "v2", "v2-ipv6", "v1-mapped"],
)
async def test_the_access_log_names_the_client_from_the_header(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, header: bytes, client: str
) -> None:
    caplog.set_level(logging.INFO)
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(pp_listener()), tmp_path) as bound:
            # header, request and the tunnel's first bytes in one write: none may be lost
            data = header + connect(f"{LOOPBACK}:{echo.port}") + b"early"
            async with await anyio.connect_tcp(LOOPBACK, bound[0][1]) as s:
                await s.send(data)
                got = b""
                with anyio.fail_after(5):
                    while not got.endswith(b"early"):
                        got += await s.receive()
                assert got.startswith(b"HTTP/1.1 200 ")
        lines = access_lines(caplog)
    assert len(lines) == 1, lines
    assert f"client={client} " in lines[0]
    assert "up=5 down=5" in lines[0]


async def test_a_local_header_is_the_balancer_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(table(pp_listener()), tmp_path) as bound:
            header = encode_v2(None, None, local=True)
            got, _ = await exchange(bound[0][1], header + connect(f"{LOOPBACK}:{echo.port}"))
            assert got.startswith(b"HTTP/1.1 200 ")
        lines = access_lines(caplog)
    assert "client=127.0.0.1:" in lines[0], lines


async def test_allow_and_per_client_use_the_real_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    listener = pp_listener(extra=", allow: [192.0.2.0/24]")
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table(listener, "limits: {per_client: 1}\n")
        async with running_chainer(text, tmp_path) as bound:
            port, target = bound[0][1], f"{LOOPBACK}:{echo.port}"
            # outside allow: although the balancer (127.0.0.1) connects
            outsider = encode_v1(("198.51.100.9", 5000), ("127.0.0.1", port))
            got, _ = await exchange(port, outsider + connect(target))
            assert not got.startswith(b"HTTP/1.1 200"), got
            held = await anyio.connect_tcp(LOOPBACK, port)
            async with held:
                await held.send(encode_v2(("192.0.2.7", 5001), ("127.0.0.1", port)))
                await held.send(connect(target))
                assert (await held.receive()).startswith(b"HTTP/1.1 200 ")
                # the same client again, through the same balancer: over per_client
                again = encode_v2(("192.0.2.7", 5002), ("127.0.0.1", port))
                got, _ = await exchange(port, again + connect(target))
                assert got.startswith(b"HTTP/1.1 503 "), got
                assert b"from your address" in got
                # another client through the same balancer is let in
                other = encode_v1(("192.0.2.8", 5003), ("127.0.0.1", port))
                got, _ = await exchange(port, other + connect(target))
                assert got.startswith(b"HTTP/1.1 200 "), got
        lines = access_lines(caplog)
    denied = [line for line in lines if "outcome=denied" in line]
    assert len(denied) == 1, lines
    assert "client=198.51.100.9:5000 " in denied[0]


async def test_no_header_or_a_stranger_is_closed_unanswered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with task_group() as tg:
        echo = await start_echo(tg)
        listener = pp_listener("[127.0.0.2/32]")
        async with running_chainer(table(listener), tmp_path) as bound:
            port, target = bound[0][1], f"{LOOPBACK}:{echo.port}"
            # from the balancer, but no header: the request is not served
            got, closed = await exchange(port, connect(target), local_host="127.0.0.2")
            assert (got, closed) == (b"", True)
            # a valid header from an address not in proxy_protocol_from: closed unread
            forged = encode_v1(("192.0.2.7", 1), ("127.0.0.1", port))
            got, closed = await exchange(port, forged + connect(target))
            assert (got, closed) == (b"", True)
            # the balancer with a header is served
            real = encode_v1(("192.0.2.7", 2), ("127.0.0.1", port))
            got, _ = await exchange(port, real + connect(target), local_host="127.0.0.2")
            assert got.startswith(b"HTTP/1.1 200 ")
        assert echo.connections == 1
        logged = [r.getMessage() for r in caplog.records if r.name == "chainer"]
    assert any("sent no valid PROXY header" in m and "127.0.0.2" in m for m in logged), logged
    assert any("127.0.0.1" in m and "not in proxy_protocol_from" in m for m in logged), logged
    assert [line for line in access_lines(caplog) if "192.0.2.7:1 " in line] == []


@pytest.mark.parametrize(
    ("listener", "message"),
    [
        (
            "{address: 127.0.0.1:0, proxy_protocol: true}",
            "routes.yaml:2: listen[0].proxy_protocol: proxy_protocol: true needs "
            "proxy_protocol_from",
        ),
        (
            "{address: 127.0.0.1:0, proxy_protocol_from: [10.0.0.0/8]}",
            "routes.yaml:2: listen[0].proxy_protocol_from: has no effect without "
            "proxy_protocol: true",
        ),
        (
            "{address: 127.0.0.1:0, proxy_protocol: true, proxy_protocol_from: [nope]}",
            'routes.yaml:2: listen[0].proxy_protocol_from[0]: not an IP range: "nope"',
        ),
        (
            "{address: 127.0.0.1:0, proxy_protocol: yes please, proxy_protocol_from: ['::1']}",
            "routes.yaml:2: listen[0].proxy_protocol: expected true or false",
        ),
    ],
)
def test_config_errors_name_the_line(listener: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        parse_config(table(listener), "routes.yaml")
    assert any(str(e).startswith(message) for e in caught.value.errors), caught.value.errors


def test_config_reads_the_keys() -> None:
    config = parse_config(table(pp_listener("[10.0.0.0/8, '::1']")), "routes.yaml")
    listener = config.listeners[0]
    assert listener.proxy_protocol is True
    assert listener.proxy_protocol_from == ("10.0.0.0/8", "::1")
