"""SOCKS on both sides: real SOCKS hops (microsocks, dante, chainer itself), SOCKS clients
(curl, python-socks, raw bytes) on chainer's one port, and no local name resolution."""

from __future__ import annotations

import itertools
import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from fakes import free_port, running_chainer, start_echo, start_hop, task_group
from python_socks import ProxyError
from python_socks.async_.anyio import Proxy as ClientProxy
from realproxies import Endpoint, Origin, curl

pytestmark = pytest.mark.anyio


def routes_yaml(
    routes: str, proxies: str = "", listen: str | None = None, defaults: str = ""
) -> str:
    listen = listen or f"['127.0.0.1:{free_port()}']"
    return (
        f"listen: {listen}\n"
        f"defaults: {{connect_timeout: 2s, handshake_timeout: 2s, deadline: 8s{defaults}}}\n"
        + (f"proxies:\n{proxies}\n" if proxies else "")
        + f"routes:\n{routes}\n"
    )


async def run_curl(*args: str) -> tuple[int, bytes, str]:
    result = await anyio.to_thread.run_sync(lambda: curl(*args))
    return result.returncode, result.body, result.stderr


def yaml_proxy(name: str, endpoint: Endpoint, scheme: str) -> str:
    return f"  {name}: {endpoint.url(scheme)}\n"


REAL_HOPS = {
    "squid": "http",
    "danted": "socks5",
    "microsocks_auth": "socks5h",
}


@pytest.mark.interop
@pytest.mark.parametrize("order", list(itertools.permutations(REAL_HOPS)), ids="-".join)
async def test_curl_reaches_tls_origin_through_squid_dante_microsocks_in_any_order(
    order: tuple[str, ...], request: pytest.FixtureRequest, tmp_path: Path, tls_origin: Origin
) -> None:
    proxies = "".join(
        yaml_proxy(name, request.getfixturevalue(name), REAL_HOPS[name]) for name in order
    )
    chain = ", ".join(order)
    text = routes_yaml(f"  - {{match: '*', via: [{chain}]}}", proxies)
    async with running_chainer(text, tmp_path) as bound:
        rc, body, err = await run_curl(
            "-x",
            f"http://127.0.0.1:{bound[0][1]}",
            "--cacert",
            tls_origin.ca_pem or "",
            tls_origin.url("/any-order", host="localhost"),
        )
    assert (rc, body) == (0, b"origin:/any-order"), err


@pytest.mark.interop
@pytest.mark.parametrize(
    "client_args",
    [
        ("--socks5-hostname",),
        ("--socks4a",),
        ("--socks5",),  # curl resolves, sends an IP
        ("--socks4",),
        ("-x",),
    ],
    ids=lambda a: a[0],
)
async def test_curl_speaks_socks_and_http_to_one_port(
    client_args: tuple[str, ...], tmp_path: Path, tls_origin: Origin, microsocks: Endpoint
) -> None:
    text = routes_yaml("  - {match: '*', via: [ms]}", yaml_proxy("ms", microsocks, "socks5"))
    async with running_chainer(text, tmp_path) as bound:
        port = bound[0][1]
        proxy = f"http://127.0.0.1:{port}" if client_args[0] == "-x" else f"127.0.0.1:{port}"
        rc, body, err = await run_curl(
            client_args[0],
            proxy,
            "--cacert",
            tls_origin.ca_pem or "",
            tls_origin.url("/one-port", host="localhost"),
        )
    assert (rc, body) == (0, b"origin:/one-port"), err


@pytest.mark.parametrize("scheme", ["socks5", "socks4"])
async def test_python_socks_clients_and_early_data(tmp_path: Path, scheme: str) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg, banner=b"HELLO\n")
        text = routes_yaml("  - {match: '*', via: direct}")
        async with running_chainer(text, tmp_path) as bound:
            client = ClientProxy.from_url(f"{scheme}://127.0.0.1:{bound[0][1]}")
            stream = await client.connect("127.0.0.1", echo.port)
            async with stream:
                await stream.send(b"ping")
                got = b""
                with anyio.fail_after(3):
                    while len(got) < 10:
                        got += await stream.receive()
                assert got == b"HELLO\nping"


async def raw_socks(port: int, data: bytes, want: int) -> bytes:
    got = b""
    with anyio.fail_after(5):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(data)
            try:
                while len(got) < want:
                    got += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return got


def socks5_connect_bytes(host: str, port: int) -> bytes:
    name = host.encode()
    return (
        b"\x05\x01\x00" + b"\x05\x01\x00\x03" + bytes([len(name)]) + name + struct.pack(">H", port)
    )


async def test_socks5_early_data_sent_with_the_request_arrives_once(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        async with running_chainer(routes_yaml("  - {match: '*', via: direct}"), tmp_path) as b:
            request = socks5_connect_bytes("127.0.0.1", echo.port) + b"EARLY"
            got = await raw_socks(b[0][1], request, 2 + 10 + 5)
    assert got == b"\x05\x00" + b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"EARLY"


@pytest.mark.parametrize(
    ("target", "reply"),
    [
        ("blocked.test", 0x02),  # reject route
        ("refused.test", 0x05),  # the direct connection is refused
        ("silent.test", 0x06),  # the hop never answers: TTL expired
        ("nowhere.invalid", 0x04),  # a direct name that does not resolve
    ],
)
async def test_socks5_failures_answer_the_matching_reply_code(
    tmp_path: Path, target: str, reply: int
) -> None:
    async with task_group() as tg:
        silent = await start_hop(tg, "silent")
        closed = free_port()
        routes = (
            "  - {match: blocked.test, via: reject}\n"
            "  - {match: silent.test, via: [quiet]}\n"
            "  - {match: '*', via: direct}\n"
        )
        proxies = f"  quiet: {{url: '{silent.url()}', handshake_timeout: 200ms}}\n"
        async with running_chainer(routes_yaml(routes, proxies), tmp_path) as bound:
            port = bound[0][1]
            host = "127.0.0.1" if target == "refused.test" else target
            got = await raw_socks(port, socks5_connect_bytes(host, closed), 12)
            assert got[:2] == b"\x05\x00"
            assert got[2:4] == bytes([5, reply])
            # python-socks sees the same code, and the server still serves
            client = ClientProxy.from_url(f"socks5://127.0.0.1:{port}")
            with pytest.raises(ProxyError) as info:
                await client.connect(host, closed)
            assert info.value.error_code == reply


async def test_socks5_bind_and_udp_are_not_supported(tmp_path: Path) -> None:
    async with running_chainer(routes_yaml("  - {match: '*', via: direct}"), tmp_path) as bound:
        for command in (2, 3):
            request = b"\x05\x01\x00\x05" + bytes([command]) + b"\x00\x01\x7f\x00\x00\x01\x00\x50"
            got = await raw_socks(bound[0][1], request, 12)
            assert got[2:4] == b"\x05\x07"


async def test_socks4_failure_is_91(tmp_path: Path) -> None:
    closed = free_port()
    async with running_chainer(routes_yaml("  - {match: '*', via: direct}"), tmp_path) as bound:
        request = b"\x04\x01" + struct.pack(">H", closed) + socket.inet_aton("127.0.0.1") + b"\x00"
        got = await raw_socks(bound[0][1], request, 8)
    assert got[:2] == b"\x00\x5b"


async def test_socks5_listener_auth(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        port = free_port()
        listen = f"\n  - address: 127.0.0.1:{port}\n    auth: {{users: {{alice: 's3cret'}}}}"
        text = routes_yaml("  - {match: '*', via: direct}", listen=listen)
        async with running_chainer(text, tmp_path):
            good = ClientProxy.from_url(f"socks5://alice:s3cret@127.0.0.1:{port}")
            stream = await good.connect("127.0.0.1", echo.port)
            async with stream:
                await stream.send(b"authed")
                assert await stream.receive() == b"authed"
            for url in (
                f"socks5://alice:wrong@127.0.0.1:{port}",
                f"socks5://127.0.0.1:{port}",
                f"socks4://127.0.0.1:{port}",
            ):
                with pytest.raises(ProxyError):
                    await ClientProxy.from_url(url).connect("127.0.0.1", echo.port)


async def test_chainer_as_socks4a_and_socks5_hops_with_auth(tmp_path: Path) -> None:
    """A chain of two chainer instances as SOCKS hops: socks5 with RFC 1929 auth, then
    socks4a, which is sent the destination's name."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        hop5, hop4 = free_port(), free_port()
        listen5 = f"\n  - address: 127.0.0.1:{hop5}\n    auth: {{users: {{bob: 'pa55'}}}}"
        hop_routes = "  - {match: '*', via: direct}"
        async with (
            running_chainer(routes_yaml(hop_routes, listen=listen5), tmp_path, "h5.yaml"),
            running_chainer(
                routes_yaml(hop_routes, listen=f"['127.0.0.1:{hop4}']"), tmp_path, "h4.yaml"
            ),
        ):
            proxies = (
                f"  five: socks5://bob:pa55@127.0.0.1:{hop5}\n  four: socks4a://127.0.0.1:{hop4}\n"
            )
            text = routes_yaml("  - {match: '*', via: [five, four]}", proxies)
            async with running_chainer(text, tmp_path) as bound:
                client = ClientProxy.from_url(f"http://127.0.0.1:{bound[0][1]}")
                stream = await client.connect("localhost", echo.port)
                async with stream:
                    await stream.send(b"socks in socks")
                    assert await stream.receive() == b"socks in socks"


@pytest.mark.interop
async def test_socks_inside_https_inside_http(
    tmp_path: Path, tls_origin: Origin, microsocks_auth: Endpoint, ca: Any, ca_pem: str
) -> None:
    """[fake http hop, chainer as HTTPS proxy, microsocks with auth] -> TLS origin by name."""
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "hop.pem"))
    async with task_group() as tg:
        first = await start_hop(tg, "ok")
        tls_port = free_port()
        tls_hop = routes_yaml(
            "  - {match: '*', via: direct}",
            listen=f"\n  - address: 127.0.0.1:{tls_port}\n    tls: {{cert: hop.pem, key: hop.pem}}",
        )
        async with running_chainer(tls_hop, tmp_path, "tls.yaml"):
            proxies = (
                f"  one: {first.url()}\n"
                f"  two: {{url: 'https://127.0.0.1:{tls_port}', ca: '{ca_pem}'}}\n"
                + yaml_proxy("three", microsocks_auth, "socks5h")
            )
            text = routes_yaml("  - {match: '*', via: [one, two, three]}", proxies)
            async with running_chainer(text, tmp_path) as bound:
                rc, body, err = await run_curl(
                    "--socks5-hostname",
                    f"127.0.0.1:{bound[0][1]}",
                    "--cacert",
                    tls_origin.ca_pem or "",
                    tls_origin.url("/nested", host="localhost"),
                )
    assert (rc, body) == (0, b"origin:/nested"), err


@pytest.mark.interop
async def test_socks_hop_refusal_is_charged_to_the_destination(
    tmp_path: Path, microsocks: Endpoint
) -> None:
    closed = free_port()
    text = routes_yaml("  - {match: '*', via: [ms]}", yaml_proxy("ms", microsocks, "socks5"))
    async with running_chainer(text, tmp_path) as bound:
        client = ClientProxy.from_url(f"http://127.0.0.1:{bound[0][1]}")
        with pytest.raises(ProxyError) as info:
            await client.connect("127.0.0.1", closed)
    assert info.value.error_code == 502


@pytest.mark.interop
async def test_dante_as_socks4_hop(tmp_path: Path, plain_origin: Origin, danted: Endpoint) -> None:
    text = routes_yaml("  - {match: '*', via: [d4]}", yaml_proxy("d4", danted, "socks4"))
    async with running_chainer(text, tmp_path) as bound:
        rc, body, err = await run_curl(
            "-x", f"http://127.0.0.1:{bound[0][1]}", plain_origin.url("/four")
        )
    assert (rc, body) == (0, b"origin:/four"), err


async def test_socks4_hop_cannot_send_a_name(tmp_path: Path) -> None:
    async with running_chainer(routes_yaml("  - {match: '*', via: direct}"), tmp_path) as hop:
        text = routes_yaml(
            "  - {match: '*', via: [four]}", f"  four: socks4://127.0.0.1:{hop[0][1]}\n"
        )
        async with running_chainer(text, tmp_path, "r.yaml") as bound:
            got = await raw_socks(bound[0][1], socks5_connect_bytes("localhost", 80), 12)
    # The name cannot be carried to the destination this way: host unreachable, and the
    # hop is not blamed (it was never asked).
    assert got[2:4] == b"\x05\x04"


class _ResolverSpy:
    """Records every name this process asks the resolver for."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real
        self.names: list[str] = []

    def __call__(self, host: Any, *args: Any, **kwargs: Any) -> Any:
        self.names.append(host.decode() if isinstance(host, bytes) else str(host))
        return self.real(host, *args, **kwargs)


@pytest.mark.interop
@pytest.mark.parametrize("via", ["[ms]", "direct"])
async def test_names_are_resolved_locally_only_for_direct(
    tmp_path: Path, tls_origin: Origin, microsocks: Endpoint, via: str, monkeypatch: Any
) -> None:
    """With a chain, chainer's process never calls the resolver for the destination; the
    control case (direct) shows the spy does see lookups."""
    spy = _ResolverSpy(socket.getaddrinfo)
    text = routes_yaml(f"  - {{match: '*', via: {via}}}", yaml_proxy("ms", microsocks, "socks5"))
    async with running_chainer(text, tmp_path) as bound:
        monkeypatch.setattr(socket, "getaddrinfo", spy)
        rc, body, err = await run_curl(
            "--socks5-hostname",
            f"127.0.0.1:{bound[0][1]}",
            "--cacert",
            tls_origin.ca_pem or "",
            tls_origin.url("/dns", host="localhost"),
        )
        monkeypatch.undo()
    assert (rc, body) == (0, b"origin:/dns"), err
    if via == "direct":
        assert "localhost" in spy.names
    else:
        assert spy.names == []
