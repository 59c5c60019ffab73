"""Transparent listeners on loopback: the first flight read for a name and delivered
exactly once, the original destination, resets, loops refused and logged, and SO_MARK
on the sockets that need it.

Capture itself needs nftables and lives in test_transparent_netns.py; here a connection
made straight to a transparent listener stands in for a captured one (its original
destination is then the listener's own address).
"""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import ci
import pytest
from anyio.abc import SocketStream
from fakes import running_chainer, start_echo, task_group

from chainer.config import parse_config
from chainer.inbound.transparent import (
    TransparentInbound,
    destination_name,
    original_destination,
    read_first_flight,
)
from chainer.models import DEFAULT_MARK, Address, Listener, Sniff
from chainer.proto.servername import Unnamed
from chainer.relay import sockstream
from chainer.relay.sockstream import SockStream
from chainer.router import Router
from chainer.server.listeners import bind

pytestmark = pytest.mark.anyio

SNIFF = Sniff(timeout=0.3, bytes=16384)
GET = b"GET /x HTTP/1.1\r\nHost: app.example:8080\r\nAccept: */*\r\n\r\n"


def client_hello(name: str) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


@asynccontextmanager
async def accepted_pair() -> AsyncIterator[tuple[SocketStream, SockStream]]:
    """A client stream and the server side of its connection, as a listener accepts it."""
    listener = sockstream.listen("127.0.0.1", 0)
    try:
        port = listener.getsockname()[1]
        client = await anyio.connect_tcp("127.0.0.1", port)
        server = await sockstream.accept(listener)
    finally:
        listener.close()
    async with client:
        try:
            yield client, server
        finally:
            server.close()


async def receive_all(stream: anyio.abc.ByteStream, size: int) -> bytes:
    data = b""
    with anyio.fail_after(5):
        while len(data) < size:
            data += await stream.receive()
    return data


# --------------------------------------------------------------------------- the first flight


async def test_an_http_host_names_the_destination_and_every_byte_is_delivered_once() -> None:
    async with accepted_pair() as (client, server):
        await client.send(GET)
        inbound = TransparentInbound(server, "redirect", SNIFF)
        request = await inbound.read_request()
        port = server.sock.getsockname()[1]
        assert request.target == Address("app.example", port)  # the connection's own port
        assert request.original == Address("127.0.0.1", port)
        assert request.sniffed == "host"
        stream = await inbound.established()
        await client.send(b"and a body")
        assert await receive_all(stream, len(GET) + 10) == GET + b"and a body"


async def test_a_tls_client_hello_names_the_destination() -> None:
    hello = client_hello("app.corp.example")
    async with accepted_pair() as (client, server):
        # the hello in three segments, the last one after a pause
        await client.send(hello[:5])
        await client.send(hello[5:100])
        async with anyio.create_task_group() as tg:
            tg.start_soon(_send_later, client, hello[100:], 0.05)
            request = await TransparentInbound(server, "tproxy", SNIFF).read_request()
        assert request.target.host == "app.corp.example"
        assert request.sniffed == "sni"


async def _send_later(client: SocketStream, data: bytes, delay: float) -> None:
    await anyio.sleep(delay)
    await client.send(data)


async def test_a_client_that_waits_for_the_server_is_routed_by_address_after_the_timeout() -> None:
    async with accepted_pair() as (client, server):
        inbound = TransparentInbound(server, "redirect", Sniff(timeout=0.2, bytes=16384))
        started = time.monotonic()
        request = await inbound.read_request()
        waited = time.monotonic() - started
        assert request.target == request.original
        assert request.sniffed == "none"
        assert 0.18 <= waited < 3.0
        stream = await inbound.established()
        await stream.send(b"SSH-2.0-server\r\n")
        assert await receive_all(client, 16) == b"SSH-2.0-server\r\n"


async def test_a_hello_cut_short_is_delivered_as_it_came_after_the_timeout() -> None:
    hello = client_hello("app.corp.example")
    async with accepted_pair() as (client, server):
        await client.send(hello[:200])
        flight, event = await read_first_flight(server, Sniff(timeout=0.2, bytes=16384))
        assert flight == hello[:200]
        assert isinstance(event, Unnamed)
        assert "within 0.2s" in event.reason


async def test_the_read_stops_at_the_byte_limit() -> None:
    padded = b"GET / HTTP/1.1\r\nX-Pad: " + b"p" * 2000 + b"\r\nHost: late.example\r\n\r\n"
    async with accepted_pair() as (client, server):
        await client.send(padded)
        flight, event = await read_first_flight(server, Sniff(timeout=2.0, bytes=512))
        assert flight == padded[:512]
        assert event == Unnamed("no name in the first 512 bytes")
        # the rest is still in the socket, for the tunnel
        assert await receive_all(server, len(padded) - 512) == padded[512:]


async def test_a_client_that_closes_at_once_is_not_waited_for() -> None:
    async with accepted_pair() as (client, server):
        await client.send(b"GET")
        await client.send_eof()
        started = time.monotonic()
        flight, event = await read_first_flight(server, Sniff(timeout=5.0, bytes=16384))
        assert time.monotonic() - started < 2.0
        assert flight == b"GET"
        assert isinstance(event, Unnamed)


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("app.example", "app.example"),
        ("App.Example.", "app.example"),
        ("198.51.100.7", None),  # an address is not a name: the original address stands
        ("[2001:db8::1]", None),
        ("127.1", None),  # numeric aliases are refused as destinations
        ("bad..name", None),
        ("a" * 70 + ".example", None),
    ],
)
async def test_only_a_dns_name_is_a_recovered_name(host: str, name: str | None) -> None:
    assert destination_name(host) == name


async def test_a_host_that_is_an_address_leaves_the_original_destination() -> None:
    async with accepted_pair() as (client, server):
        await client.send(b"GET / HTTP/1.1\r\nHost: 198.51.100.7\r\n\r\n")
        request = await TransparentInbound(server, "redirect", SNIFF).read_request()
        assert request.target == request.original
        assert request.sniffed == "none"


async def test_with_sniffing_off_nothing_is_read() -> None:
    async with accepted_pair() as (client, server):
        await client.send(GET)
        inbound = TransparentInbound(server, "redirect", None)
        request = await inbound.read_request()
        assert (request.target, request.sniffed) == (request.original, "none")
        stream = await inbound.established()
        assert stream is server
        assert await receive_all(stream, len(GET)) == GET


async def test_a_refusal_resets_the_connection() -> None:
    async with accepted_pair() as (client, server):
        inbound = TransparentInbound(server, "redirect", None)
        await inbound.refuse(None)  # type: ignore[arg-type]  # the failure is not looked at
        server.close()
        with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(5):
            await client.receive()


async def test_without_nat_the_original_destination_is_the_listener_itself() -> None:
    async with accepted_pair() as (_client, server):
        local = server.sock.getsockname()
        for mode in ("redirect", "tproxy"):
            assert original_destination(server.sock, mode) == Address(local[0], local[1])


async def test_an_ipv4_client_of_a_dual_stack_listener_is_written_as_ipv4() -> None:
    listener = sockstream.listen("::", 0)
    try:
        port = listener.getsockname()[1]
        async with await anyio.connect_tcp("127.0.0.1", port):
            server = await sockstream.accept(listener)
            try:
                assert original_destination(server.sock, "redirect") == Address("127.0.0.1", port)
            finally:
                server.close()
    finally:
        listener.close()


# --------------------------------------------------------------------------- the server


def transparent_yaml(mode: str, mark: str = "false") -> str:
    return (
        "listen:\n"
        "  - 127.0.0.1:0\n"
        f"  - {{address: '127.0.0.1:0', transparent: {mode}, capture: {{uids: all}}}}\n"
        f"defaults: {{mark: {mark}, sniff: {{timeout: 200ms}}}}\n"
        "routes: [{match: '*', via: direct}]\n"
    )


@pytest.mark.parametrize("mode", ["redirect", "tproxy"])
async def test_a_connection_straight_to_the_listener_is_a_loop_refused_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: str
) -> None:
    if mode == "tproxy" and not _may_admin():
        ci.unavailable("IP_TRANSPARENT needs CAP_NET_ADMIN or CAP_NET_RAW (root)")
    caplog.set_level(logging.INFO, logger="chainer.access")
    async with running_chainer(transparent_yaml(mode), tmp_path) as bound:
        host, port = bound[1]
        async with await anyio.connect_tcp(host, port) as client:
            await client.send(b"GET / HTTP/1.1\r\nHost: app.example\r\n\r\n")
            with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(5):
                await client.receive()  # reset: there is no protocol to answer in
        with anyio.fail_after(5):
            while not [r for r in caplog.records if r.name == "chainer.access"]:  # noqa: ASYNC110
                await anyio.sleep(0.02)  # the line is logged as the server closes its side
    (line,) = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    assert f"dest=app.example:{port} original=127.0.0.1:{port}" in line
    assert f"inbound={mode} sniffed=host" in line
    assert "outcome=refused" in line
    assert "is chainer itself: refusing a loop" in line


def _may_admin() -> bool:
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, 1)
        except PermissionError:
            return False
    return True


def _require_admin() -> None:
    if not _may_admin():
        ci.unavailable("SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW (root)")


async def test_upstream_sockets_carry_the_mark_of_a_transparent_config(tmp_path: Path) -> None:
    _require_admin()
    config = parse_config(transparent_yaml("redirect", "0x1234"), str(tmp_path / "r.yaml"))
    unmarked = parse_config("routes: [{match: '*', via: direct}]\n", str(tmp_path / "p.yaml"))
    async with task_group() as tg:
        echo = await start_echo(tg)
        for cfg, mark in ((config, 0x1234), (unmarked, 0)):
            stream = await Router(cfg).connect("127.0.0.1", echo.port)
            async with stream:
                raw = stream.extra(anyio.abc.SocketAttribute.raw_socket)
                assert raw.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == mark


async def test_the_default_mark_is_set_only_with_a_transparent_listener(tmp_path: Path) -> None:
    path = str(tmp_path / "r.yaml")
    assert parse_config(transparent_yaml("redirect", "0x2c8"), path).mark == DEFAULT_MARK
    text = transparent_yaml("redirect").replace("defaults: {mark: false, ", "defaults: {")
    assert parse_config(text, path).mark == DEFAULT_MARK
    assert parse_config("routes: [{match: '*', via: direct}]\n", path).mark is None


async def test_a_transparent_listeners_connections_carry_the_mark() -> None:
    """Their packets, replies to captured clients included, pass the rules untouched."""
    _require_admin()
    for mode in ("redirect", "tproxy"):
        listener = Listener(Address("127.0.0.1", 0), transparent=mode)
        ((_, sock),) = bind([listener], mark=0x2C8)
        with sock:
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x2C8
            transparent = sock.getsockopt(socket.SOL_IP, socket.IP_TRANSPARENT)
            assert transparent == (1 if mode == "tproxy" else 0)
            port = sock.getsockname()[1]
            async with await anyio.connect_tcp("127.0.0.1", port):
                accepted = await sockstream.accept(sock)
                try:
                    assert accepted.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x2C8
                finally:
                    accepted.close()


@pytest.mark.interop
def test_without_cap_net_admin_serve_says_so_and_exits_1(tmp_path: Path) -> None:
    _require_admin()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        ci.unavailable("setpriv (util-linux) not installed")
    config = tmp_path / "routes.yaml"
    config.write_text(transparent_yaml("redirect", "0x2c8"))
    # Root without either capability: both dropped from the bounding set before exec.
    drop = "--bounding-set=-net_admin,-net_raw"
    argv = [setpriv, drop, sys.executable, "-m", "chainer", "serve"]
    done = subprocess.run(
        [*argv, "-c", str(config)], capture_output=True, timeout=30, check=False, text=True
    )
    assert done.returncode == 1, done.stderr
    assert "SO_MARK needs CAP_NET_ADMIN or CAP_NET_RAW" in done.stderr


async def test_over_the_connection_limit_a_captured_client_is_reset_not_answered_in_http(
    tmp_path: Path,
) -> None:
    text = (
        "listen: [{address: '127.0.0.1:0', transparent: redirect}]\n"
        "defaults: {mark: false, sniff: {timeout: 5s}}\n"
        "limits: {max_connections: 1}\n"
        "routes: [{match: '*', via: direct}]\n"
    )
    async with running_chainer(text, tmp_path) as bound:
        host, port = bound[0]
        async with await anyio.connect_tcp(host, port):  # holds the one slot, sniffed
            await anyio.sleep(0.2)
            async with await anyio.connect_tcp(host, port) as second:
                with pytest.raises(anyio.BrokenResourceError), anyio.fail_after(3):
                    await second.receive()


def test_the_access_line_and_its_json_say_how_a_connection_was_captured() -> None:
    from chainer.server.logs import ConnRecord

    record = ConnRecord(7, "192.168.1.23:50312", target=Address("app.corp.example", 443))
    plain = ConnRecord(8, "127.0.0.1:1", target=Address("app.corp.example", 443))
    record.inbound, record.sniffed = "redirect", "sni"
    record.original = Address("203.0.113.7", 443)
    assert (
        "dest=app.corp.example:443 original=203.0.113.7:443 inbound=redirect sniffed=sni "
        "route=-" in record.line()
    )
    fields = record.fields()
    assert (fields["original"], fields["inbound"], fields["sniffed"]) == (
        "203.0.113.7:443",
        "redirect",
        "sni",
    )
    assert "original=" not in plain.line()
    assert "inbound" not in plain.fields()
