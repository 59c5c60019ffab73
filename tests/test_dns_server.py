"""chainer's DNS server on loopback, asked by the real `dig`: every kind of answer (fake
addresses, upstream answers, chain_resolve through a hop, NXDOMAIN and REFUSED, NOTIMP,
PTR), over UDP and TCP; hostile packets that must not stop it; a CONNECT or SOCKS request
to a fake address routed by its name; the table kept across a reload; /metrics.

Everything it talks to is written here: the upstream is a spy resolver (dnspeers.py),
the hops are scripted fake hops (fakes.py), the chain_resolve server is another spy
reached through one of them.
"""

from __future__ import annotations

import logging
import socket
import struct
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import dns.message
import pytest
from dnspeers import Dug, Spy, dig, spy_resolver
from fakes import FakeHop, start_hop
from python_socks import ProxyError
from python_socks.async_.anyio import Proxy

from chainer.config import load_config
from chainer.router import Router
from chainer.server import dns as dns_server
from chainer.server.dns import serve_dns
from chainer.server.metrics import exposition
from chainer.server.server import Server

pytestmark = [pytest.mark.anyio, pytest.mark.interop]

FAKE_V4, FAKE_V6 = "198.19.0.0/16", "fd00:c8::/64"
DIRECT = {"www.direct.test": "192.0.2.10"}
RESOLVED = {"db.resolved.test": "10.20.3.4"}


@dataclass
class Lab:
    server: Server
    config: Path
    dns_port: int
    proxy_port: int
    upstream: Spy
    resolver: Spy
    named: FakeHop  # the chained names' hop: records what it is asked, answers 503
    tunnel: FakeHop  # chain_resolve's hop: a working CONNECT proxy

    async def dig(self, *args: str) -> Dug:
        return await anyio.to_thread.run_sync(lambda: dig("127.0.0.1", self.dns_port, *args))


def routes_yaml(lab_ports: dict[str, int], extra: str = "") -> str:
    return f"""\
listen: [127.0.0.1:0]
dns:
  listen: [127.0.0.1:0]
  upstream: [127.0.0.1:{lab_ports["upstream"]}]
  fake_ip: {{v4: {FAKE_V4}, v6: "{FAKE_V6}", ttl: 7s, size: 100}}
  chain_resolve: {{match: .resolved.test, server: "127.0.0.1:{lab_ports["resolver"]}", via: tunnel}}
{extra}\
defaults: {{connect_timeout: 2s, handshake_timeout: 2s, deadline: 5s}}
proxies:
  named: http://127.0.0.1:{lab_ports["named"]}
  tunnel: http://127.0.0.1:{lab_ports["tunnel"]}
routes:
  - {{match: .chained.test, via: named}}
  - {{match: .resolved.test, via: named}}
  - {{match: blocked.test, via: reject}}
  - {{match: .direct.test, via: direct}}
  - {{match: "*", via: reject}}
"""


@pytest.fixture
def spies() -> Iterator[tuple[Spy, Spy]]:
    with spy_resolver(DIRECT) as upstream, spy_resolver(RESOLVED) as resolver:
        yield upstream, resolver


@asynccontextmanager
async def running(tmp_path: Path, spies: tuple[Spy, Spy], extra: str = "") -> AsyncIterator[Lab]:
    upstream, resolver = spies
    async with anyio.create_task_group() as tg:
        named = await start_hop(tg, "status:503")
        tunnel = await start_hop(tg, "ok")
        ports = {
            "upstream": upstream.port,
            "resolver": resolver.port,
            "named": named.port,
            "tunnel": tunnel.port,
        }
        config = tmp_path / "routes.yaml"
        config.write_text(routes_yaml(ports, extra))
        server = Server(Router(load_config(config)))
        (proxy,) = await tg.start(server.serve)
        ((_, dns_port),) = await tg.start(serve_dns, server)
        yield Lab(server, config, dns_port, proxy[1], upstream, resolver, named, tunnel)
        tg.cancel_scope.cancel()


# --------------------------------------------------------------------------- answers


async def test_a_chained_name_gets_a_fake_address_in_each_family(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        a = await lab.dig("app.chained.test", "A")
        aaaa = await lab.dig("app.chained.test", "AAAA")
        again = await lab.dig("APP.Chained.Test.", "A")
        other = await lab.dig("db.chained.test", "A")
    assert a.status == "NOERROR"
    assert a.answers == [("app.chained.test.", 7, "A", "198.19.0.1")]
    assert aaaa.answers == [("app.chained.test.", 7, "AAAA", "fd00:c8::1")]
    assert again.data() == ["198.19.0.1"]  # the same name keeps its address, any case
    assert again.answers[0][0] == "APP.Chained.Test."  # the question as asked
    assert other.data() == ["198.19.0.2"]
    assert "ra" in a.flags.split()
    assert lab.upstream.asked == []  # no query for a chained name left this machine


async def test_a_direct_name_is_answered_by_the_upstream(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        a = await lab.dig("www.direct.test", "A")
        mx = await lab.dig("www.direct.test", "MX")
        missing = await lab.dig("gone.direct.test", "A")
        tcp = await lab.dig("+tcp", "www.direct.test", "A")
    assert (a.status, a.data()) == ("NOERROR", ["192.0.2.10"])
    assert a.answers[0][1] == 60  # the upstream's own TTL, passed on
    assert mx.status == "NOERROR"  # other types of a direct name are asked upstream too
    assert missing.status == "NXDOMAIN"  # the upstream's verdict
    assert tcp.data() == ["192.0.2.10"]
    assert lab.upstream.asked == [
        ("www.direct.test", "A", "udp"),
        ("www.direct.test", "MX", "udp"),
        ("gone.direct.test", "A", "udp"),
        ("www.direct.test", "A", "tcp"),  # asked over TCP, forwarded over TCP
    ]


async def test_rejected_and_unrouted_names_do_not_exist(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        blocked = await lab.dig("blocked.test", "A")
        unrouted = await lab.dig("elsewhere.example", "AAAA")
        mx = await lab.dig("blocked.test", "MX")
    assert (blocked.status, blocked.answers) == ("NXDOMAIN", [])
    assert unrouted.status == "NXDOMAIN"
    assert mx.status == "NXDOMAIN"
    assert lab.upstream.asked == []


async def test_reject_rcode_refused(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    async with running(tmp_path, spies, "  reject_rcode: REFUSED\n") as lab:
        assert (await lab.dig("blocked.test", "A")).status == "REFUSED"


async def test_other_types_of_a_chained_name_have_no_records(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        for kind in ("MX", "TXT", "HTTPS", "SRV"):
            dug = await lab.dig("app.chained.test", kind)
            assert (dug.status, dug.answers) == ("NOERROR", []), kind
        chaos = await lab.dig("version.bind", "TXT", "CH")
    assert chaos.status == "NOTIMP"  # not a question of class IN
    assert lab.upstream.asked == []


async def test_a_fake_address_looked_up_backwards_names_its_name(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        await lab.dig("app.chained.test", "A")
        ptr = await lab.dig("-x", "198.19.0.1")
        ptr6 = await lab.dig("-x", "fd00:c8::1")
        unlent = await lab.dig("-x", "198.19.0.77")
    assert ptr.answers == [("1.0.19.198.in-addr.arpa.", 7, "PTR", "app.chained.test.")]
    assert ptr6.data() == ["app.chained.test."]
    assert unlent.status == "NXDOMAIN"


async def test_chain_resolve_asks_the_server_through_the_chain_over_tcp(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        a = await lab.dig("db.resolved.test", "A")
        missing = await lab.dig("+tcp", "nope.resolved.test", "A")
    assert (a.status, a.data()) == ("NOERROR", ["10.20.3.4"])
    assert missing.status == "NXDOMAIN"
    assert lab.resolver.asked == [
        ("db.resolved.test", "A", "tcp"),
        ("nope.resolved.test", "A", "tcp"),
    ]
    # each question built a tunnel through the hop to the server, like any CONNECT
    assert [r.split(b"\r\n")[0] for r in lab.tunnel.requests] == [
        f"CONNECT 127.0.0.1:{lab.resolver.port} HTTP/1.1".encode()
    ] * 2
    assert lab.upstream.asked == []


async def test_a_failing_chain_resolve_is_servfail(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    async with running(tmp_path, spies) as lab:
        lab.tunnel.behaviour = "status:502"
        assert (await lab.dig("db.resolved.test", "A")).status == "SERVFAIL"


async def test_an_upstream_that_never_answers_is_servfail(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read
    silent.bind(("127.0.0.1", 0))
    with silent:
        extra = "  timeout: 500ms\n"
        async with running(tmp_path, spies, extra) as lab:
            text = lab.config.read_text().replace(
                f"127.0.0.1:{lab.upstream.port}]", f"127.0.0.1:{silent.getsockname()[1]}]"
            )
            lab.config.write_text(text)
            lab.server.reload(load_config(lab.config))
            assert (await lab.dig("www.direct.test", "A")).status == "SERVFAIL"


async def test_clients_outside_allow_get_no_answer(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    async with running(tmp_path, spies, "  allow: [10.0.0.0/8]\n") as lab:
        refused = await lab.dig("app.chained.test", "A")
        assert refused.status is None  # dropped, not answered: no amplification
        metrics = exposition(lab.server.metrics.registry).decode()
    assert 'chainer_dns_queries_total{answer="dropped"} 1.0' in metrics


# --------------------------------------------------------------------------- connections


async def test_a_connect_to_a_fake_address_goes_down_the_chain_by_name(
    tmp_path: Path, spies: tuple[Spy, Spy], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "chainer.access")
    async with running(tmp_path, spies) as lab:
        (fake,) = (await lab.dig("app.chained.test", "A")).data()
        with anyio.fail_after(10):
            client = await anyio.connect_tcp("127.0.0.1", lab.proxy_port)
            async with client:
                await client.send(
                    f"CONNECT {fake}:443 HTTP/1.1\r\nHost: {fake}:443\r\n\r\n".encode()
                )
                answer = await client.receive()
        assert answer.startswith(b"HTTP/1.1 502"), answer
        proxy = Proxy.from_url(f"socks5://127.0.0.1:{lab.proxy_port}")
        with pytest.raises(ProxyError):  # the hop's 503, as SOCKS5 tells it
            with anyio.fail_after(10):
                await proxy.connect(fake, 8443)  # an IPv4 address, as a socks5 client sends it
        await anyio.sleep(0.1)
    asked = [r.split(b"\r\n")[0] for r in lab.named.requests]
    assert asked == [
        b"CONNECT app.chained.test:443 HTTP/1.1",
        b"CONNECT app.chained.test:8443 HTTP/1.1",
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    assert any(f"dest=app.chained.test:443 fake_ip={fake} route=routes[0]" in ln for ln in lines)


async def test_a_fake_address_no_name_holds_is_refused(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        with anyio.fail_after(10):
            client = await anyio.connect_tcp("127.0.0.1", lab.proxy_port)
            async with client:
                await client.send(b"CONNECT 198.19.0.50:443 HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = await client.receive()
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"lends to no name" in answer
    assert lab.named.requests == []


async def test_the_fake_table_survives_a_reload(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    async with running(tmp_path, spies) as lab:
        app = (await lab.dig("app.chained.test", "A")).data()
        db = (await lab.dig("db.chained.test", "A")).data()
        old = "{match: .chained.test, via: named}"
        text = lab.config.read_text().replace(old, "{match: .chained.test, via: tunnel}")
        lab.config.write_text(text)
        lab.server.reload(load_config(lab.config))
        # Asked in the other order: a new table would lend db the first address.
        db_again = (await lab.dig("db.chained.test", "A")).data()
        ptr = (await lab.dig("-x", app[0])).data()
    assert (app, db) == (["198.19.0.1"], ["198.19.0.2"])
    assert db_again == db
    assert ptr == ["app.chained.test."]


async def test_metrics_count_the_answers_by_kind(tmp_path: Path, spies: tuple[Spy, Spy]) -> None:
    async with running(tmp_path, spies) as lab:
        await lab.dig("app.chained.test", "A")
        await lab.dig("app.chained.test", "AAAA")
        await lab.dig("www.direct.test", "A")
        await lab.dig("blocked.test", "A")
        await lab.dig("app.chained.test", "MX")
        await lab.dig("db.resolved.test", "A")
        await lab.dig("-x", "198.19.0.1")
        metrics = exposition(lab.server.metrics.registry).decode()
    for kind, count in (
        ("fake_ip", 2),
        ("upstream", 1),
        ("blocked", 1),
        ("nodata", 1),
        ("chain_resolve", 1),
        ("ptr", 1),
    ):
        assert f'chainer_dns_queries_total{{answer="{kind}"}} {count}.0' in metrics, metrics
    assert "chainer_dns_fake_ip_entries 1.0" in metrics


# --------------------------------------------------------------------------- hostile packets


def _query(name: str = "app.chained.test", kind: str = "A") -> bytes:
    return dns.message.make_query(name, kind).to_wire()


async def _framed(stream: anyio.abc.ByteStream, count: int) -> list[bytes]:
    """`count` RFC 7766 messages read off `stream`."""
    data = b""
    out: list[bytes] = []
    while len(out) < count:
        data += await stream.receive()
        while len(data) >= 2 and len(data) >= 2 + int.from_bytes(data[:2], "big"):
            size = int.from_bytes(data[:2], "big")
            out.append(data[2 : 2 + size])
            data = data[2 + size :]
    return out


def _udp(port: int, packet: bytes, wait: float = 1.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        sock.sendto(packet, ("127.0.0.1", port))
        try:
            return sock.recv(65535)
        except TimeoutError:
            return None


def _rcode(reply: bytes | None) -> int | None:
    return None if reply is None else struct.unpack("!H", reply[2:4])[0] & 0xF


def _hostile() -> list[tuple[str, bytes, int | None]]:
    """(what, packet, the rcode answered or None for no answer)."""
    good = _query()
    header = good[:12]
    no_questions = header[:4] + b"\x00\x00" + header[6:]
    two = header[:4] + b"\x00\x02" + header[6:] + good[12:] + good[12:]
    loop = header + b"\xc0\x0c\x00\x01\x00\x01"  # a name that points at itself
    forward = header + b"\xc0\x20\x00\x01\x00\x01" + b"\x00" * 20
    response = dns.message.make_response(dns.message.from_wire(good)).to_wire()
    return [
        ("five bytes", good[:5], None),
        ("a header alone claiming a question", header, 1),
        ("a question cut short", good[:-3], 1),
        ("a compression pointer loop", loop, 1),
        ("a pointer forward", forward, 1),
        ("no questions", no_questions, 1),
        ("two questions", two, 1),
        ("junk after the question", good + b"junk", 1),
        ("a response, not a query", response, None),
        ("all ones", b"\xff" * 40, None),
        ("a huge label length", header + b"\x3f" + b"a" * 10, 1),
    ]


async def test_hostile_packets_get_formerr_or_nothing_and_the_server_goes_on(
    tmp_path: Path, spies: tuple[Spy, Spy]
) -> None:
    async with running(tmp_path, spies) as lab:
        for what, packet, expected in _hostile():
            reply = await anyio.to_thread.run_sync(_udp, lab.dns_port, packet, 0.5)
            assert _rcode(reply) == expected, what
            if reply is not None:
                assert reply[:2] == packet[:2], what  # the ID answered is the query's
        assert (await lab.dig("app.chained.test", "A")).status == "NOERROR"
        metrics = exposition(lab.server.metrics.registry).decode()
    assert 'chainer_dns_queries_total{answer="formerr"} 8.0' in metrics
    assert 'chainer_dns_queries_total{answer="dropped"} 3.0' in metrics


async def test_hostile_tcp_streams_do_not_stop_the_server(
    tmp_path: Path, spies: tuple[Spy, Spy], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dns_server, "TCP_IDLE", 1.0)
    async with running(tmp_path, spies) as lab:
        port = lab.dns_port
        with anyio.fail_after(15):
            # A length that promises 65535 bytes, then silence: held until the idle timeout.
            held = await anyio.connect_tcp("127.0.0.1", port)
            await held.send(b"\xff\xff" + b"\x00" * 10)
            # Meanwhile everyone else is answered, over TCP and UDP.
            assert (await lab.dig("+tcp", "app.chained.test", "A")).status == "NOERROR"
            assert (await lab.dig("app.chained.test", "A")).status == "NOERROR"
            with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                await held.receive()  # closed at the idle timeout, unanswered
            await held.aclose()
            # A huge length and the connection cut; a zero length; a pointer loop.
            for packet in (b"\xff\xff" + b"x" * 100, b"\x00\x00", b"\x00\x12" + _hostile()[3][1]):
                stream = await anyio.connect_tcp("127.0.0.1", port)
                async with stream:
                    await stream.send(packet)
                    if packet.startswith(b"\xff"):
                        continue
                    try:
                        data = await stream.receive()
                    except (anyio.EndOfStream, anyio.BrokenResourceError):
                        data = b""
                    if packet == b"\x00\x00":
                        assert data == b""  # closed, unanswered
                    else:
                        assert _rcode(data[2:]) == 1  # FORMERR, framed
            # Two questions in one write, each answered in turn (RFC 7766 pipelining).
            stream = await anyio.connect_tcp("127.0.0.1", port)
            async with stream:
                one, two = _query("a.chained.test"), _query("b.chained.test")
                await stream.send(
                    len(one).to_bytes(2, "big") + one + len(two).to_bytes(2, "big") + two
                )
                replies = await _framed(stream, 2)
            names = [dns.message.from_wire(r).question[0].name.to_text() for r in replies]
            assert names == ["a.chained.test.", "b.chained.test."]
        assert (await lab.dig("+tcp", "app.chained.test", "A")).status == "NOERROR"
