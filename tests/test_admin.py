"""The admin endpoint over loopback, fetched by real clients (curl, urllib) and raw sockets."""

from __future__ import annotations

import dataclasses
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import Message
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from prometheus_client import CONTENT_TYPE_LATEST
from realproxies import require_binary

from chainer.config import parse_config
from chainer.errors import HopError
from chainer.models import Address, Admin, Config, Proxy
from chainer.outbound.health import Health
from chainer.server import admin
from chainer.server.admin import AdminView, hops_json, routes_json, serve_admin
from chainer.server.metrics import Metrics

pytestmark = pytest.mark.anyio

SECRETS = ("alice", "corp-pw-1", "bob", "bastion-pw-2", "carol", "listener-pw-3")

ROUTES = """\
listen:
  - address: 127.0.0.1:0
    auth: {users: {carol: "listener-pw-3"}}
admin: 127.0.0.1:0
proxies:
  corp:     http://alice:corp-pw-1@proxy.corp.example:3128
  bastion:  socks5://10.1.0.5:1080
  bastion2: {url: "socks5://10.1.0.6:1080", username: bob, password: bastion-pw-2,
             connect_timeout: 2s}
  exit-a:   socks5h://[2001:db8::1]:1080
  exit-b:   socks5h://exit-b.example.net:1080
chains:
  lab: [corp, [bastion, bastion2]]
  private:
    - corp
    - {pick: [exit-a, exit-b], strategy: random}
routes:
  - {match: "*.lab.corp.example", via: lab}
  - {match: ["10.20.0.0/16", "db.corp.example:5432"], via: [corp, bastion]}
  - {match: ".ads.example", via: reject}
  - {match: "*", via: private, fallback: [direct]}
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class World:
    """A config, a health with history and metrics with events, behind swappable callables."""

    config: Config
    health: Health
    clock: Clock
    metrics: Metrics = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = Metrics(lambda: self.health)

    def view(self) -> AdminView:
        return AdminView(lambda: self.config, lambda: self.health, self.metrics.registry)

    def proxy(self, name: str) -> Proxy:
        proxy = self.config.proxy(name)
        assert proxy is not None
        return proxy


@pytest.fixture
def world() -> World:
    config = parse_config(ROUTES, "routes.yaml")
    clock = Clock()
    health = Health(clock=clock)
    w = World(config, health, clock)
    corp, bastion, bastion2 = w.proxy("corp"), w.proxy("bastion"), w.proxy("bastion2")
    # corp works from here; bastion2 went half-open through corp; bastion is open now.
    health.record_success("", corp, 0.0125)
    health.record_failure("corp", bastion2, "connection refused", denied=False)
    clock.now += 11
    assert health.allow("corp", bastion2)
    health.record_failure("corp", bastion, "no answer in 2s", denied=False)
    w.metrics.connection_done("routes[0]", "ok", 100, 2000)
    w.metrics.connection_done("routes[3]", "hop_failed", 0, 0)
    w.metrics.hop_setup("corp", 0.0125)
    w.metrics.hop_failure(HopError(2, "bastion", "connect", "no answer in 2s"))
    return w


@asynccontextmanager
async def running_admin(view: AdminView) -> AsyncIterator[int]:
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(serve_admin, Admin(Address("127.0.0.1", 0)), view)
        assert host == "127.0.0.1"
        yield port
        tg.cancel_scope.cancel()


@dataclass
class Reply:
    status: int
    headers: Message
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _urlopen(url: str, method: str) -> Reply:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, method=method), timeout=10) as response:
            return Reply(response.status, response.headers, response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return Reply(exc.code, exc.headers, exc.read())


async def fetch(port: int, path: str, method: str = "GET") -> Reply:
    url = f"http://127.0.0.1:{port}{path}"
    return await anyio.to_thread.run_sync(_urlopen, url, method)


async def curl(port: int, path: str, *args: str) -> tuple[int, str, bytes]:
    """The real curl: (status, headers as text, body)."""
    argv = [require_binary("curl"), "-q", "-sS", "-i", "--noproxy", "*", "--max-time", "10", *args]
    result = await anyio.run_process([*argv, f"http://127.0.0.1:{port}{path}"])
    head, _, body = result.stdout.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1"), body


async def raw(port: int, data: bytes, *, close_after: bool = False) -> bytes:
    """Send bytes, return everything the server answers until it closes."""
    got = b""
    with anyio.fail_after(10):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            if data:
                await s.send(data)
            if close_after:
                return b""
            try:
                while True:
                    got += await s.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                pass
    return got


async def read_to_clean_end(stream: ByteStream) -> bytes:
    """Everything until the server's FIN; a reset (BrokenResourceError) fails the test."""
    got = b""
    try:
        while True:
            got += await stream.receive()
    except anyio.EndOfStream:
        return got


def keys(document: Any) -> set[str]:
    if isinstance(document, dict):
        return set(document) | {k for v in document.values() for k in keys(v)}
    if isinstance(document, list):
        return {k for v in document for k in keys(v)}
    return set()


# -- documents ----------------------------------------------------------------------------


def test_routes_json_shape(world: World) -> None:
    doc = routes_json(world.config)
    assert doc["config"] == "routes.yaml"
    assert doc["routes"][0] == {
        "index": 0,
        "line": 18,
        "match": ["*.lab.corp.example"],
        "via": {
            "kind": "chain",
            "label": "lab",
            "hops": [
                {"strategy": "failover", "candidates": ["corp"]},
                {"strategy": "failover", "candidates": ["bastion", "bastion2"]},
            ],
        },
        "fallback": [],
    }
    assert doc["routes"][1]["match"] == ["10.20.0.0/16", "db.corp.example:5432"]
    assert doc["routes"][2]["via"] == {"kind": "reject", "label": "reject", "hops": []}
    assert doc["routes"][3]["fallback"] == [{"kind": "direct", "label": "direct", "hops": []}]
    assert doc["chains"]["private"]["hops"][1] == {
        "strategy": "random",
        "candidates": ["exit-a", "exit-b"],
    }
    proxies = {p["name"]: p for p in doc["proxies"]}
    assert proxies["bastion2"] == {
        "name": "bastion2",
        "scheme": "socks5",
        "address": "10.1.0.6:1080",
        "connect_timeout": 2.0,
        "handshake_timeout": 10.0,
        "max_fails": 1,
        "fail_window": 10.0,
        "fail_timeout": 10.0,
    }
    assert proxies["exit-a"]["address"] == "[2001:db8::1]:1080"


def test_hops_json_states(world: World) -> None:
    edges = {(e["from"], e["hop"]): e for e in hops_json(world.health)["edges"]}
    assert edges[("-", "corp")] == {  # "-" is this machine, as in the metrics
        "from": "-",
        "hop": "corp",
        "state": "closed",
        "latency_ms": 12.5,
        "closes_in": None,
        "failures": 0,
        "last_reason": "",
    }
    assert edges[("corp", "bastion")]["state"] == "open"
    assert edges[("corp", "bastion")]["failures"] == 1
    assert edges[("corp", "bastion")]["closes_in"] == 10.0
    assert edges[("corp", "bastion")]["last_reason"] == "no answer in 2s"
    assert edges[("corp", "bastion2")]["state"] == "half_open"
    assert edges[("corp", "bastion2")]["closes_in"] is None


# -- endpoints ----------------------------------------------------------------------------


@pytest.mark.interop
async def test_metrics_through_curl(world: World) -> None:
    async with running_admin(world.view()) as port:
        status, head, body = await curl(port, "/metrics")
    assert status == 200
    assert f"content-type: {CONTENT_TYPE_LATEST}" in head.lower()
    text = body.decode()
    assert 'chainer_connections_total{outcome="ok",route="routes[0]"} 1.0' in text
    assert 'chainer_connections_total{outcome="hop_failed",route="routes[3]"} 1.0' in text
    assert 'chainer_breaker_state{from="corp",hop="bastion"} 2.0' in text
    assert 'chainer_breaker_state{from="corp",hop="bastion2"} 1.0' in text
    assert 'chainer_breaker_state{from="-",hop="corp"} 0.0' in text
    assert 'chainer_bytes_total{direction="down"} 2000.0' in text


async def test_breaker_states_are_read_at_scrape_time(world: World) -> None:
    async with running_admin(world.view()) as port:
        world.health.record_failure("", world.proxy("corp"), "refused", denied=False)
        reply = await fetch(port, "/metrics")
    assert 'chainer_breaker_state{from="-",hop="corp"} 2.0' in reply.body.decode()


async def test_healthz(world: World) -> None:
    async with running_admin(world.view()) as port:
        reply = await fetch(port, "/healthz")
    assert reply.status == 200
    assert reply.body == b"ok\n"
    assert reply.headers.get_content_type() == "text/plain"
    assert reply.headers["Connection"] == "close"


async def test_routes_and_hops_over_http(world: World) -> None:
    async with running_admin(world.view()) as port:
        routes = await fetch(port, "/routes")
        hops = await fetch(port, "/hops?pretty=1")
    assert routes.status == hops.status == 200
    assert routes.headers.get_content_type() == "application/json"
    assert routes.json() == routes_json(world.config)
    states = {(e["from"], e["hop"]): e["state"] for e in hops.json()["edges"]}
    assert states == {
        ("-", "corp"): "closed",
        ("corp", "bastion"): "open",
        ("corp", "bastion2"): "half_open",
    }


async def test_no_credentials_in_any_endpoint(world: World) -> None:
    async with running_admin(world.view()) as port:
        replies = [await fetch(port, path) for path in ("/metrics", "/healthz", "/routes", "/hops")]
        replies.append(await fetch(port, "/nope"))
    assert world.proxy("corp").password == "corp-pw-1"  # the secrets are really there
    for reply in replies:
        text = reply.body.decode()
        for secret in SECRETS:
            assert secret not in text
    for reply in replies[2:4]:
        assert not keys(reply.json()) & {"username", "password", "users", "auth"}


@pytest.mark.interop
async def test_head_has_headers_and_no_body(world: World) -> None:
    async with running_admin(world.view()) as port:
        status, head, body = await curl(port, "/routes", "-I")
        get = await fetch(port, "/routes")
    assert status == 200
    assert body == b""
    assert f"content-length: {len(get.body)}" in head.lower()


@pytest.mark.interop
async def test_errors_404_405_400_431(world: World) -> None:
    async with running_admin(world.view()) as port:
        missing = await fetch(port, "/admin")
        status, head, _ = await curl(port, "/metrics", "-X", "POST", "-d", "x=1")
        garbage = await raw(port, b"\x00\x01\x02 not http\r\n\r\n")
        no_host = await raw(port, b"GET /healthz HTTP/1.1\r\n\r\n")
        huge = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n"
        too_big = await raw(port, huge)
    assert missing.status == 404
    assert b"/metrics" in missing.body
    assert status == 405
    assert "allow: get, head" in head.lower()
    assert garbage.startswith(b"HTTP/1.1 400 ")
    assert no_host.startswith(b"HTTP/1.1 400 ")
    assert too_big.startswith(b"HTTP/1.1 431 ")


async def test_slow_client_gets_408(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admin, "READ_TIMEOUT", 0.3)
    async with running_admin(world.view()) as port:
        answer = await raw(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_keeps_serving_after_bad_clients(world: World) -> None:
    async with running_admin(world.view()) as port:
        await raw(port, b"", close_after=True)
        await raw(port, b"GET /heal", close_after=True)
        with anyio.fail_after(2):  # not a request: answered at once, not at the timeout
            not_http = await raw(port, b"\xff" * 100)
        await raw(port, b"POST /routes HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        reply = await fetch(port, "/healthz")
    assert not_http.startswith(b"HTTP/1.1 400 ")
    assert reply.status == 200


async def test_answer_survives_an_unread_request_body(world: World) -> None:
    """The body of a refused POST is never read; closing on it unread would reset the
    connection, and a reset can destroy the 405 before the client reads it. The client
    must see the answer and then a clean end of stream."""
    body = b"x" * 300_000
    head = f"POST /routes HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n"
    async with running_admin(world.view()) as port:
        for _ in range(3):
            with anyio.fail_after(10):
                async with await anyio.connect_tcp("127.0.0.1", port) as s:
                    await s.send(head.encode() + body)
                    await anyio.sleep(0.05)
                    answer = await read_to_clean_end(s)
            assert answer.startswith(b"HTTP/1.1 405 ")
            assert answer.endswith(b"only GET and HEAD\n")


async def test_a_failing_view_costs_one_request(world: World) -> None:
    def broken() -> Health:
        raise RuntimeError("boom")

    view = AdminView(lambda: world.config, broken, world.metrics.registry)
    async with running_admin(view) as port:
        failed = await fetch(port, "/hops")
        ok = await fetch(port, "/routes")
    assert failed.status == 500
    assert ok.status == 200


async def test_view_is_read_per_request(world: World) -> None:
    async with running_admin(world.view()) as port:
        before = (await fetch(port, "/routes")).json()
        world.config = parse_config(
            "listen: ['127.0.0.1:0']\nroutes:\n  - {match: 'new.example', via: direct}\n",
            "reloaded.yaml",
        )
        world.health = Health()
        after = (await fetch(port, "/routes")).json()
        hops = (await fetch(port, "/hops")).json()
    assert before["config"] == "routes.yaml"
    assert after["config"] == "reloaded.yaml"
    assert [r["match"] for r in after["routes"]] == [["new.example"]]
    assert after["proxies"] == []
    assert hops == {"edges": []}


async def test_listener_closes_when_cancelled(world: World) -> None:
    async with running_admin(world.view()) as port:
        assert (await fetch(port, "/healthz")).status == 200
    with pytest.raises(OSError, match="connection attempts failed"):
        await anyio.connect_tcp("127.0.0.1", port)


async def test_metrics_carry_no_created_series(world: World) -> None:
    async with running_admin(world.view()) as port:
        reply = await fetch(port, "/metrics")
    text = reply.body.decode()
    assert "chainer_connections_total" in text
    assert "_created" not in text


# -- authentication -------------------------------------------------------------------------


@pytest.mark.interop
async def test_with_users_every_path_but_healthz_needs_basic_auth(world: World) -> None:
    view = dataclasses.replace(world.view(), users=lambda: {"ops": "pa55"})
    async with running_admin(view) as port:
        for path in ("/metrics", "/routes", "/hops"):
            status, head, _ = await curl(port, path)
            assert status == 401, path
            assert 'www-authenticate: basic realm="chainer admin"' in head.lower()
            status, _, _ = await curl(port, path, "-u", "ops:wrong")
            assert status == 401, path
            status, _, _ = await curl(port, path, "-u", "ops:pa55")
            assert status == 200, path
        status, _, body = await curl(port, "/healthz")
    assert (status, body) == (200, b"ok\n")  # for load balancers, always open


async def test_explain_live_reads_an_authenticated_admin_endpoint(world: World) -> None:
    from chainer.ops.liveview import fetch_hops_view

    view = dataclasses.replace(world.view(), users=lambda: {"ops": "pa55"})
    async with running_admin(view) as port:
        admin = Admin(Address("127.0.0.1", port), users=(("ops", "pa55"),))
        hops = await anyio.to_thread.run_sync(fetch_hops_view, admin)
    assert hops.state("corp", "bastion") == "open"
