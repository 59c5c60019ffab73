"""End to end over loopback: real clients (curl, python-socks, raw sockets) -> chainer ->
chains of hops (fake, chainer itself as an HTTPS proxy, real squid/tinyproxy/stunnel) ->
origins."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path

import anyio
import pytest
from fakes import free_port, running_chainer, start_echo, start_hop, task_group
from python_socks.async_.anyio import Proxy as SocksClientProxy
from realproxies import Endpoint, Origin, curl

pytestmark = pytest.mark.anyio


def config(routes: str, proxies: str = "", extra: str = "", port: int | None = None) -> str:
    port = port or free_port()
    return (
        f"listen: ['127.0.0.1:{port}']\n"
        "defaults: {connect_timeout: 2s, handshake_timeout: 2s, deadline: 8s}\n"
        f"{extra}\n" + (f"proxies:\n{proxies}\n" if proxies else "") + f"routes:\n{routes}\n"
    )


async def raw_request(port: int, data: bytes, *, until_close: bool = True) -> bytes:
    """Send bytes to chainer, return everything it answers until it closes (bounded)."""
    got = b""
    with anyio.fail_after(5):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(data)
            try:
                while True:
                    got += await s.receive()
                    if not until_close and b"\r\n\r\n" in got:
                        break
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return got


async def run_curl(*args: str) -> tuple[int, bytes, str]:
    result = await anyio.to_thread.run_sync(lambda: curl(*args))
    return result.returncode, result.body, result.stderr


@pytest.mark.interop
async def test_curl_through_three_hops_with_https_hop_inside_a_tunnel(
    tmp_path: Path, tls_origin: Origin, ca_pem: str, ca: object
) -> None:
    """curl -> chainer -> [http hop, chainer as an HTTPS proxy, http hop] -> TLS origin.
    The HTTPS hop is reached through hop 1's tunnel: TLS inside a CONNECT."""
    cert = ca.issue_cert("127.0.0.1", "proxy.test")  # type: ignore[attr-defined]
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "hop.pem"))
    async with task_group() as tg:
        hop1 = await start_hop(tg, "ok")
        hop3 = await start_hop(tg, "ok")
        tls_port = free_port()
        hop_tls = (
            "listen:\n"
            f"  - address: 127.0.0.1:{tls_port}\n"
            f"    tls: {{cert: hop.pem, key: hop.pem}}\n"
            "routes:\n  - {match: '*', via: direct}\n"
        )
        async with running_chainer(hop_tls, tmp_path, "hop.yaml"):
            proxies = (
                f"  one: {hop1.url()}\n"
                f"  two: {{url: 'https://127.0.0.1:{tls_port}', ca: '{ca_pem}'}}\n"
                f"  three: {hop3.url()}\n"
            )
            router = config("  - {match: '*', via: [one, two, three]}", proxies)
            async with running_chainer(router, tmp_path) as bound:
                port = bound[0][1]
                rc, body, err = await run_curl(
                    "-x",
                    f"http://127.0.0.1:{port}",
                    "--cacert",
                    tls_origin.ca_pem or "",
                    tls_origin.url("/deep"),
                )
                assert (rc, body) == (0, b"origin:/deep"), err
    assert hop1.requests[0].startswith(f"CONNECT 127.0.0.1:{tls_port} ".encode())
    assert hop3.requests[0].startswith(f"CONNECT 127.0.0.1:{tls_origin.port} ".encode())


async def test_python_socks_http_client_through_a_chain(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        a = await start_hop(tg, "ok")
        b = await start_hop(tg, "split")
        proxies = f"  a: {a.url()}\n  b: {b.url()}\n"
        async with running_chainer(
            config("  - {match: '*', via: [a, b]}", proxies), tmp_path
        ) as bound:
            client = SocksClientProxy.from_url(f"http://127.0.0.1:{bound[0][1]}")
            stream = await client.connect("127.0.0.1", echo.port)
            async with stream:
                await stream.send(b"hello through two hops")
                assert await stream.receive() == b"hello through two hops"


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        (b"CONNECT example.com HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # no port
        (b"CONNECT example.com:0 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT example.com:65536 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT exa\x00mple.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT user@example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT 2130706433:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT [::1:443 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 400),  # origin-form: not a proxy request
        (b"CONNECT blocked.example:443 HTTP/1.1\r\nHost: x\r\n\r\n", 403),  # reject route
        (b"CONNECT unrouted.test:443 HTTP/1.1\r\nHost: x\r\n\r\n", 403),  # matches nothing
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # TLS ClientHello, plain port
        (b"\x00\xff\xfe garbage", 400),
    ],
)
async def test_bad_and_refused_requests_answer_at_once(
    tmp_path: Path, request_line: bytes, status: int
) -> None:
    routes = (
        "  - {match: blocked.example, via: reject}\n"
        "  - {match: ['.example.com', '127.0.0.0/8'], via: direct}\n"
    )
    async with running_chainer(config(routes), tmp_path) as bound:
        port = bound[0][1]
        started = time.monotonic()
        answer = await raw_request(port, request_line)
        assert answer.startswith(f"HTTP/1.1 {status} ".encode()), answer[:200]
        assert time.monotonic() - started < 2.0
        # and the server still serves
        assert (
            await raw_request(port, b"CONNECT blocked.example:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        ).startswith(b"HTTP/1.1 403 ")


async def test_failed_and_timed_out_hops_are_named_in_proxy_status(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        ok = await start_hop(tg, "ok")
        silent = await start_hop(tg, "silent")
        dead = await start_hop(tg, "refused")
        proxies = (
            f"  corp: http://alice:pw-secret@{ok.address}\n"
            f"  bastion: {{url: '{silent.url()}', handshake_timeout: 300ms}}\n"
            f"  gone: {dead.url()}\n"
        )
        routes = (
            "  - {match: 'slow.test', via: [corp, bastion]}\n  - {match: '*', via: [corp, gone]}\n"
        )
        async with running_chainer(config(routes, proxies), tmp_path) as bound:
            port = bound[0][1]
            answer = await raw_request(
                port, b"CONNECT slow.test:443 HTTP/1.1\r\nHost: slow.test:443\r\n\r\n"
            )
            assert answer.startswith(b"HTTP/1.1 504 Gateway Timeout\r\n")
            assert (
                b"Proxy-Status: chainer; error=connection_read_timeout; "
                b'details="hop 2 (bastion): no answer in 300ms"\r\n'
            ) in answer
            target = f"127.0.0.1:{echo.port}".encode()
            answer = await raw_request(port, b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
            assert b"error=connection_refused; received-status=502;" in answer
            assert b"hop 2 (gone): hop 1 (corp) could not reach it" in answer
            assert b"pw-secret" not in answer


async def test_early_data_half_close_and_coalesced_answer(tmp_path: Path) -> None:
    """Bytes sent with the CONNECT arrive once; a half-close passes through; the
    origin's banner coalesced with hop's 200 reaches the client."""
    async with task_group() as tg:
        echo = await start_echo(tg, banner=b"BANNER\n")
        hop = await start_hop(tg, "coalesced")
        proxies = f"  h: {hop.url()}\n"
        async with running_chainer(
            config("  - {match: '*', via: [h]}", proxies), tmp_path
        ) as bound:
            with anyio.fail_after(5):
                async with await anyio.connect_tcp("127.0.0.1", bound[0][1]) as s:
                    target = f"127.0.0.1:{echo.port}".encode()
                    await s.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\nEARLY")
                    await s.send_eof()
                    got = b""
                    try:
                        while True:
                            got += await s.receive()
                    except anyio.EndOfStream:
                        pass
    assert got == b"HTTP/1.1 200 Connection established\r\n\r\nBANNER\nEARLY"


async def test_idle_tunnel_is_closed(tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = config("  - {match: '*', via: direct}").replace(
            "deadline: 8s}", "deadline: 8s, idle_timeout: 300ms}"
        )
        async with running_chainer(text, tmp_path) as bound:
            async with await anyio.connect_tcp("127.0.0.1", bound[0][1]) as s:
                await s.send(f"CONNECT 127.0.0.1:{echo.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                started = time.monotonic()
                got = b""
                with anyio.fail_after(3):
                    try:
                        while True:
                            got += await s.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        pass
                assert got.startswith(b"HTTP/1.1 200 ")
                assert 0.25 < time.monotonic() - started < 2.0


@pytest.mark.interop
async def test_absolute_form_is_forwarded_without_hop_by_hop_headers(
    tmp_path: Path, plain_origin: Origin
) -> None:
    async with task_group() as tg:
        hop = await start_hop(tg, "ok")
        proxies = f"  h: {hop.url()}\n"
        async with running_chainer(
            config("  - {match: '*', via: [h]}", proxies), tmp_path
        ) as bound:
            rc, body, err = await run_curl(
                "-x",
                f"http://127.0.0.1:{bound[0][1]}",
                "-U",
                "someone:proxy-pass",
                "-H",
                "Proxy-Connection: keep-alive",
                "-H",
                "X-Keep: yes",
                plain_origin.url("/headers"),
            )
    assert rc == 0, err
    headers = {k.lower(): v for k, v in json.loads(body).items()}
    assert headers["x-keep"] == "yes"
    assert "proxy-authorization" not in headers
    assert "proxy-connection" not in headers
    assert headers["host"] == f"127.0.0.1:{plain_origin.port}"
    # an HTTP last hop gets the request itself, in absolute form (squid's default config
    # refuses to CONNECT to port 80), without the client's proxy credentials
    request_line = f"GET http://127.0.0.1:{plain_origin.port}/headers HTTP/1.1\r\n"
    assert hop.requests[0].startswith(request_line.encode())
    assert b"proxy-pass" not in hop.requests[0]
    assert b"Proxy-Authorization" not in hop.requests[0]


@pytest.mark.interop
async def test_post_body_is_forwarded(tmp_path: Path, plain_origin: Origin) -> None:
    async with running_chainer(config("  - {match: '*', via: direct}"), tmp_path) as bound:
        rc, body, err = await run_curl(
            "-x",
            f"http://127.0.0.1:{bound[0][1]}",
            "--data-binary",
            "x" * 100000,
            plain_origin.url("/echo-body"),
        )
    assert rc == 0, err
    assert body == b"x" * 100000


async def test_library_connect_uses_the_route_table(tmp_path: Path) -> None:
    from chainer import Refused, Router

    async with task_group() as tg:
        echo = await start_echo(tg)
        hop = await start_hop(tg, "ok")
        path = tmp_path / "lib.yaml"
        path.write_text(
            config(
                "  - {match: 'nope.test', via: reject}\n  - {match: '*', via: [h]}",
                f"  h: {hop.url()}\n",
            )
        )
        router = Router.from_file(path)
        async with await router.connect("127.0.0.1", echo.port) as stream:
            await stream.send(b"lib")
            assert await stream.receive() == b"lib"
        assert len(hop.requests) == 1
        with pytest.raises(Refused):
            await router.connect("nope.test", 443)


@pytest.mark.interop
async def test_real_proxies_as_hops(
    tmp_path: Path,
    tls_origin: Origin,
    tinyproxy: Endpoint,
    stunnel_https_proxy: Endpoint,
    squid: Endpoint,
) -> None:
    """curl -> chainer -> [tinyproxy, stunnel+squid (an HTTPS proxy), squid] -> TLS origin."""
    proxies = (
        f"  tiny: http://{tinyproxy.hostport}\n"
        f"  secure: {{url: 'https://{stunnel_https_proxy.hostport}', "
        f"ca: '{stunnel_https_proxy.ca_pem}'}}\n"
        f"  squid: http://{squid.hostport}\n"
    )
    async with running_chainer(
        config("  - {match: '*', via: [tiny, secure, squid]}", proxies), tmp_path
    ) as bound:
        rc, body, err = await run_curl(
            "-x",
            f"http://127.0.0.1:{bound[0][1]}",
            "--cacert",
            tls_origin.ca_pem or "",
            tls_origin.url("/real"),
        )
    assert (rc, body) == (0, b"origin:/real"), err


@pytest.mark.slow
async def test_a_tunnel_through_an_https_hop_ends_when_the_client_is_done(
    tmp_path: Path, ca: object, ca_pem: str
) -> None:
    """A TLS leg cannot carry a half-close; the tunnel must still end soon after the client
    has sent its last byte and got its answer, not at the idle timeout."""
    cert = ca.issue_cert("127.0.0.1")  # type: ignore[attr-defined]
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "hop.pem"))
    async with task_group() as tg:
        echo = await start_echo(tg)
        tls_port = free_port()
        hop = (
            f"listen:\n  - address: 127.0.0.1:{tls_port}\n"
            "    tls: {cert: hop.pem, key: hop.pem}\n"
            "routes:\n  - {match: '*', via: direct}\n"
        )
        async with running_chainer(hop, tmp_path, "hop.yaml"):
            proxies = f"  secure: {{url: 'https://127.0.0.1:{tls_port}', ca: '{ca_pem}'}}\n"
            async with running_chainer(
                config("  - {match: '*', via: [secure]}", proxies), tmp_path
            ) as bound:
                started = time.monotonic()
                got = b""
                with anyio.fail_after(5):
                    async with await anyio.connect_tcp("127.0.0.1", bound[0][1]) as s:
                        target = f"127.0.0.1:{echo.port}".encode()
                        await s.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\nbye")
                        await s.send_eof()
                        try:
                            while True:
                                got += await s.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            pass
    assert got == b"HTTP/1.1 200 Connection established\r\n\r\nbye"
    assert time.monotonic() - started < 4.0


@pytest.mark.interop
async def test_plain_http_through_a_chain_goes_to_the_last_hop_in_absolute_form(
    tmp_path: Path, plain_origin: Origin
) -> None:
    """[CONNECT hop, HTTP hop with credentials]: hop 1 is asked for a tunnel to hop 2,
    hop 2 is sent the request itself with its own Proxy-Authorization."""
    async with task_group() as tg:
        first = await start_hop(tg, "ok")
        last = await start_hop(tg, "ok")
        proxies = f"  a: {first.url()}\n  b: http://bob:hop2pass@{last.address}\n"
        async with running_chainer(
            config("  - {match: '*', via: [a, b]}", proxies), tmp_path
        ) as bound:
            rc, body, err = await run_curl(
                "-x", f"http://127.0.0.1:{bound[0][1]}", plain_origin.url("/abs")
            )
    assert (rc, body) == (0, b"origin:/abs"), err
    assert first.requests[0].startswith(f"CONNECT {last.address} ".encode())
    assert b"hop2pass" not in first.requests[0]
    head = last.requests[0]
    assert head.startswith(f"GET http://127.0.0.1:{plain_origin.port}/abs HTTP/1.1\r\n".encode())
    assert b"Proxy-Authorization: Basic Ym9iOmhvcDJwYXNz\r\n" in head  # bob:hop2pass


@pytest.mark.interop
async def test_plain_http_reaches_real_squid_as_a_request_not_a_connect(
    tmp_path: Path, plain_origin: Origin, tinyproxy: Endpoint, squid: Endpoint
) -> None:
    proxies = f"  tiny: http://{tinyproxy.hostport}\n  squid: http://{squid.hostport}\n"
    text = config("  - {match: '*', via: [tiny, squid]}", proxies)
    async with running_chainer(text, tmp_path) as bound:
        rc, body, err = await run_curl(
            "-x", f"http://127.0.0.1:{bound[0][1]}", plain_origin.url("/via-squid")
        )
    assert (rc, body) == (0, b"origin:/via-squid"), err
    access = anyio.Path(next(p for p in squid.log_files if p.endswith("access.log")))
    text = ""
    with anyio.fail_after(5):
        while "/via-squid" not in text:
            await anyio.sleep(0.05)
            text = await access.read_text()
    line = next(ln for ln in text.splitlines() if "/via-squid" in ln)
    assert f" GET http://127.0.0.1:{plain_origin.port}/via-squid " in line


async def _late_answer_origin(tg: object, delay: float) -> int:
    """An origin that reads until the client's end of stream, waits `delay`, then
    answers and closes: only a tunnel that really passes a half-close on delivers it."""

    async def handle(client: anyio.abc.SocketStream) -> None:
        async with client:
            got = b""
            with contextlib.suppress(anyio.EndOfStream):
                while True:
                    got += await client.receive()
            await anyio.sleep(delay)
            await client.send(b"late answer to " + got)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port: int = listener.extra(anyio.abc.SocketAttribute.local_port)

    async def serve() -> None:
        async with listener:
            await listener.serve(handle)

    tg.start_soon(serve)  # type: ignore[attr-defined]
    return port


@pytest.mark.slow
async def test_a_half_close_crosses_tls_legs_both_ways(
    tmp_path: Path, ca: object, ca_pem: str, caplog: pytest.LogCaptureFixture
) -> None:
    """client -TCP-> chainer -TLS-> chainer (https hop) -TCP-> origin. The client sends,
    then half-closes; the origin answers only 1.5 s after that end of stream reached it.
    The end crosses both TLS legs as close_notify, and the answer comes back whole —
    which the old linger (a TLS leg could not half-close: the rest had to keep moving
    every second) cut off."""
    caplog.set_level(logging.INFO, logger="chainer.access")
    cert = ca.issue_cert("127.0.0.1")  # type: ignore[attr-defined]
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "hop.pem"))
    async with task_group() as tg:
        origin = await _late_answer_origin(tg, 1.5)
        tls_port = free_port()
        hop = (
            f"listen:\n  - address: 127.0.0.1:{tls_port}\n"
            "    tls: {cert: hop.pem, key: hop.pem}\n"
            "routes:\n  - {match: '*', via: direct}\n"
        )
        async with running_chainer(hop, tmp_path, "hop.yaml"):
            proxies = f"  secure: {{url: 'https://127.0.0.1:{tls_port}', ca: '{ca_pem}'}}\n"
            async with running_chainer(
                config("  - {match: '*', via: [secure]}", proxies), tmp_path
            ) as bound:
                got = b""
                with anyio.fail_after(10):
                    async with await anyio.connect_tcp("127.0.0.1", bound[0][1]) as s:
                        target = f"127.0.0.1:{origin}".encode()
                        await s.send(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\nhi")
                        await s.send_eof()
                        with contextlib.suppress(anyio.EndOfStream):
                            while True:
                                got += await s.receive()
    assert got == b"HTTP/1.1 200 Connection established\r\n\r\nlate answer to hi"
    lines = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    assert len(lines) == 2  # the hop's and ours
    assert all("outcome=ok" in line for line in lines), lines


async def test_library_connect_applies_the_destination_policy(tmp_path: Path) -> None:
    from chainer import Refused, Router

    async with task_group() as tg:
        echo = await start_echo(tg)
        path = tmp_path / "lib.yaml"
        path.write_text(
            "deny: ['*.denied.test', '127.0.0.2']\n"
            f"allow_ports: [{echo.port}, 443]\n"
            "routes: [{match: '*', via: direct}]\n"
        )
        router = Router.from_file(path)
        for host, port in (("x.denied.test", 443), ("127.0.0.2", echo.port), ("127.0.0.1", 22)):
            with pytest.raises(Refused):
                await router.connect(host, port)
        async with await router.connect("127.0.0.1", echo.port) as stream:
            await stream.send(b"allowed")
            assert await stream.receive() == b"allowed"
