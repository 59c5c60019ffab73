"""Pipelined set-up (`pipeline: true`): what is planned, the bytes sent and when, and that
the dialer's outcomes and charges are those of the step-by-step set-up.

Layers: the plan and the bytes over a scripted stream (no sockets); the dialer against
scripted fake hops on loopback, every step-by-step scenario again with pipelining;
the config. Real proxies are in test_pipeline_real.py.
"""

from __future__ import annotations

import dataclasses
import textwrap
import time
from collections.abc import Sequence

import anyio
import pytest
from anyio.abc import ByteStream, SocketStream, TaskGroup
from anyio.streams.buffered import BufferedByteStream
from fakes import start_echo, start_hop, task_group
from test_dialer import FAST, SCENARIOS, build, proxy

from chainer.config import parse_config
from chainer.errors import ChainFailed, ConfigErrors, HopAnswer
from chainer.models import Address, HopGroup, Proxy, Via
from chainer.outbound import connectors, pipeline
from chainer.outbound.dialer import Dialer
from chainer.outbound.pipeline import Primed
from chainer.proto.http import connect_request

DEST = Address("example.com", 443)
A = Proxy("a", "http", Address("10.0.0.1", 3128))
B = Proxy("b", "http", Address("10.0.0.2", 3128), username="bob", password="pw")
S5 = Proxy("s5", "socks5", Address("10.0.0.3", 1080))  # a SOCKS5 hop: no word on pipelining
D5 = Proxy("d5", "socks5h", Address("10.0.0.4", 1080), pipeline=True)  # dante says it may
S4 = Proxy("s4", "socks4", Address("10.0.0.5", 1080))
TLS = Proxy("tls", "https", Address("10.0.0.6", 443))
SSH = Proxy("ssh", "ssh", Address("10.0.0.7", 22))
NAMED = Proxy("named", "http", Address("hop.example", 3128))

OK = b"HTTP/1.1 200 Connection established\r\n\r\n"
GREETING = b"\x05\x01\x00"
PICK_NOAUTH = b"\x05\x00"
OK_V4 = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x1f\x90"


def req5(host: str, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(host)]) + host.encode() + port.to_bytes(2, "big")


def close(target: Address, auth: str | None = None) -> bytes:
    return connect_request(target.authority(), auth, close=True)


class Scripted(ByteStream):
    """A hop's side of a connection, scripted: every `send` is recorded as it was written,
    and `receive` hands out the hop's bytes in the chunks given."""

    def __init__(self, *incoming: bytes) -> None:
        self.incoming = list(incoming)
        self.sent: list[bytes] = []

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.incoming:
            raise anyio.EndOfStream
        chunk = self.incoming.pop(0)
        if len(chunk) > max_bytes:
            self.incoming.insert(0, chunk[max_bytes:])
        return chunk[:max_bytes]

    async def send(self, item: bytes) -> None:
        self.sent.append(bytes(item))

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def chain(*nodes: Proxy | Sequence[Proxy]) -> tuple[HopGroup, ...]:
    return tuple(HopGroup((n,)) if isinstance(n, Proxy) else HopGroup(tuple(n)) for n in nodes)


def planned(stream: ByteStream) -> list[tuple[str, str]]:
    if not isinstance(stream, Primed):
        return []
    return [(r.hop.name, str(r.target)) for r in stream.plan]


def layers(stream: ByteStream) -> list[str]:
    names = []
    while True:
        names.append(type(stream).__name__)
        inner = getattr(stream, "inner", None)
        if inner is None:
            return names
        stream = inner


# ----------------------------------------------------------------------- the requests


def test_step_by_step_requests_are_unchanged() -> None:
    """Outside a plan a request is exactly what was always sent: no Connection: close,
    SOCKS5's greeting alone."""
    assert pipeline.opening(A, DEST).opening == connect_request("example.com:443")
    assert pipeline.opening(B, DEST).opening == connect_request("example.com:443", "Basic Ym9iOnB3")
    assert pipeline.opening(D5, DEST).opening == GREETING
    assert pipeline.opening(S4, Address("192.0.2.1", 80)).opening == (
        b"\x04\x01\x00\x50\xc0\x00\x02\x01\x00"
    )


def test_pipelined_requests() -> None:
    http = pipeline.opening(B, DEST, pipelined=True)
    assert http.opening == close(DEST, "Basic Ym9iOnB3")
    assert http.then  # squid, tinyproxy, pproxy relay what follows a CONNECT
    socks5 = pipeline.opening(S5, DEST, pipelined=True)
    assert (socks5.opening, socks5.then) == (GREETING, False)  # microsocks would drop more
    early = pipeline.opening(D5, DEST, pipelined=True)
    assert (early.opening, early.then) == (GREETING + req5("example.com", 443), True)
    socks4 = pipeline.opening(S4, Address("192.0.2.1", 80), pipelined=True)
    assert socks4.then
    said_no = pipeline.opening(dataclasses.replace(A, pipeline=False), DEST, pipelined=True)
    assert (said_no.opening, said_no.then) == (close(DEST), False)


@pytest.mark.parametrize(
    ("reached", "rest", "forward", "exclude", "plan"),
    [
        # every position certain: the whole chain and the destination
        (
            A,
            chain(B, D5),
            False,
            (),
            [("a", "10.0.0.2:3128"), ("b", "10.0.0.4:1080"), ("d5", DEST)],
        ),
        # two candidates next: nothing is certain
        (A, chain([B, D5]), False, (), []),
        (A, chain(B, [D5, S5], A), False, (), [("a", "10.0.0.2:3128")]),
        # TLS to an https hop, an SSH session: their own round trips end the plan
        (A, chain(TLS, B), False, (), [("a", "10.0.0.6:443")]),
        (A, chain(SSH, B), False, (), [("a", "10.0.0.7:22")]),
        (SSH, chain(B), False, (), []),
        # a socks4 hop asked for a name resolves it here (or refuses): its turn comes later
        (A, chain(S4, NAMED), False, (), [("a", "10.0.0.5:1080")]),
        # a plain-HTTP request goes to a last HTTP hop as it is: no destination ask
        (A, chain(B), True, (), [("a", "10.0.0.2:3128")]),
        (A, chain(D5), True, (), [("a", "10.0.0.4:1080"), ("d5", DEST)]),
        # a hop that refused us in this connection is not asked again
        (A, chain(B, D5), False, ("b",), []),
        (A, (), False, (), [("a", DEST)]),
    ],
)
def test_what_is_planned(
    reached: Proxy,
    rest: tuple[HopGroup, ...],
    forward: bool,
    exclude: tuple[str, ...],
    plan: list[tuple[str, object]],
) -> None:
    stream = Scripted()
    primed = pipeline.prime(stream, reached, rest, DEST, forward=forward, exclude=exclude)
    assert planned(primed) == [(name, str(target)) for name, target in plan]
    if not plan:
        assert primed is stream
    again = pipeline.prime(primed, reached, rest, DEST, forward=forward, exclude=exclude)
    assert again is primed  # a stream with a plan is not planned again


# ----------------------------------------------------------------- the bytes, and when


async def walk(stream: ByteStream, path: Sequence[Proxy]) -> ByteStream:
    """Ask each node of `path` for the next one, the last for DEST, as the dialer does."""
    for hop, nxt in zip(path, [*path[1:], None], strict=True):
        stream = await connectors.ask(stream, hop, DEST if nxt is None else nxt.address)
    return stream


@pytest.mark.anyio
@pytest.mark.parametrize("chunks", ["whole", "bytewise"])
async def test_one_batch_up_to_a_hop_that_needs_its_answer_first(chunks: str) -> None:
    """a -> b -> s5 -> DEST: both CONNECTs and s5's greeting in one write; s5's request
    only after its method reply; the answers read one by one with exact framing, and the
    tunnel left with no plan layer (so the splice relay can unwrap it)."""
    answers = OK + OK + PICK_NOAUTH + OK_V4 + b"hello"
    wire = Scripted(*([answers] if chunks == "whole" else [bytes([b]) for b in answers]))
    stream = pipeline.prime(wire, A, chain(B, S5), DEST)
    tunnel = await walk(stream, [A, B, S5])
    assert wire.sent == [
        close(B.address) + close(S5.address, "Basic Ym9iOnB3") + GREETING,
        req5("example.com", 443),
    ]
    got = b""
    while len(got) < 5:  # (bytewise: a byte per receive)
        got += await tunnel.receive()
    assert got == b"hello"
    assert "Primed" not in layers(tunnel)
    assert layers(tunnel)[-1] == "Scripted"
    assert all(name in ("PrefixedStream", "Scripted") for name in layers(tunnel))


@pytest.mark.anyio
async def test_a_hop_that_relays_takes_greeting_request_and_what_follows() -> None:
    """a -> d5 (pipeline: true) -> a second http hop -> DEST: everything in one write."""
    second = dataclasses.replace(A, name="a2", address=Address("10.0.0.8", 8888))
    answers = OK + PICK_NOAUTH + OK_V4 + OK + b"tunnel"
    wire = Scripted(answers)
    stream = pipeline.prime(wire, A, chain(D5, second), DEST)
    tunnel = await walk(stream, [A, D5, second])
    d5_asks = GREETING + b"\x05\x01\x00\x01\x0a\x00\x00\x08\x22\xb8"
    assert wire.sent == [close(D5.address) + d5_asks + close(DEST)]
    assert await tunnel.receive() == b"tunnel"


@pytest.mark.anyio
async def test_a_hop_that_said_no_ends_the_batch_after_its_request() -> None:
    slow = dataclasses.replace(A, pipeline=False)
    wire = Scripted(OK, OK)
    stream = pipeline.prime(wire, slow, chain(B), DEST)
    await walk(stream, [slow, B])
    assert wire.sent == [close(B.address), close(DEST, "Basic Ym9iOnB3")]


@pytest.mark.anyio
async def test_a_refused_pipelined_connect_leaves_no_connection_to_reuse() -> None:
    """Step by step, a 502 read whole keeps the connection for the next candidate
    (failover in place); pipelined, we asked for close and sent more behind it."""
    refusal = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"
    with pytest.raises(HopAnswer) as step:
        await connectors.ask(Scripted(refusal), A, B.address)
    assert step.value.stream is not None
    wire = Scripted(refusal)
    with pytest.raises(HopAnswer) as piped:
        await walk(pipeline.prime(wire, A, chain(B), DEST), [A, B])
    assert (piped.value.kind, piped.value.status, piped.value.stream) == ("unreachable", 502, None)
    assert wire.sent == [close(B.address) + close(DEST, "Basic Ym9iOnB3")]


@pytest.mark.anyio
async def test_asking_off_the_plan_is_a_bug_not_a_silent_resend() -> None:
    stream = pipeline.prime(Scripted(OK), A, chain(B), DEST)
    with pytest.raises(RuntimeError, match=r"planned to ask a for 10\.0\.0\.2:3128"):
        await connectors.ask(stream, A, DEST)


# ------------------------------------------------------------ the dialer, fake hops


def pipelined(via: Via) -> Via:
    return dataclasses.replace(via, pipeline=True)


@pytest.mark.anyio
@pytest.mark.parametrize(("layout", "expected", "failures"), SCENARIOS)
async def test_every_scenario_ends_as_step_by_step(
    layout: list[list[str]], expected: object, failures: list[tuple[int, str, str]]
) -> None:
    """test_dialer's scenario table again, pipelined: the same outcome, the same failures
    charged to the same hops in the same phases."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        via, behaviours = await build(tg, layout)
        target = Address("127.0.0.1", echo.port)
        started = time.monotonic()
        if expected == "ok":
            dialed = await Dialer(FAST).dial("r", [pipelined(via)], target)
            async with dialed.stream:
                await dialed.stream.send(b"ping")
                assert await dialed.stream.receive() == b"ping"
            attempts = dialed.attempts
            assert [t.index for t in dialed.trace] == list(range(1, len(layout) + 1))
        else:
            with pytest.raises(ChainFailed) as info:
                await Dialer(FAST).dial("r", [pipelined(via)], target)
            attempts = info.value.attempts
            assert (504 if info.value.timeout else 502) == expected
        assert [(a.index, behaviours[a.hop], a.phase) for a in attempts] == failures
        assert time.monotonic() - started < 3.0


async def serve_held(tg: TaskGroup, gate: anyio.Event) -> int:
    """An HTTP proxy that connects and relays at once what follows the CONNECT, but
    answers its own 200 only once `gate` is set (within 3 s, else never)."""

    async def handle(client: SocketStream) -> None:
        async with client:
            buffered = BufferedByteStream(client)
            head = await buffered.receive_until(b"\r\n\r\n", 65536)
            host, _, port = head.split(b" ")[1].decode().rpartition(":")
            async with (
                await anyio.connect_tcp(host, int(port)) as upstream,
                anyio.create_task_group() as pumps,
            ):
                pumps.start_soon(pump, buffered, upstream)
                with anyio.move_on_after(3):
                    await gate.wait()
                    if await answer(client):
                        await pump(upstream, client)
                pumps.cancel_scope.cancel()

    async def answer(client: SocketStream) -> bool:
        try:
            await client.send(OK)
        except (anyio.BrokenResourceError, OSError):
            return False  # (the step-by-step try: the dialer gave up on us long ago)
        return True

    async def serve(listener: anyio.abc.Listener[SocketStream]) -> None:
        async with listener:
            await listener.serve(handle)

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    tg.start_soon(serve, listener)
    port: int = listener.extra(anyio.abc.SocketAttribute.local_port)
    return port


async def pump(src: ByteStream, dst: ByteStream) -> None:
    try:
        while True:
            await dst.send(await src.receive())
    except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
        pass


@pytest.mark.anyio
async def test_the_next_hops_request_goes_before_the_answer_of_the_hop_before() -> None:
    """Hop 1 answers only once hop 2 has its request: step by step that never happens
    (hop 1's handshake_timeout fires), pipelined the request is already on its way."""
    async with task_group() as tg:
        echo = await start_echo(tg)
        second = await start_hop(tg, "ok")
        first_port = await serve_held(tg, second.requested)
        first = Proxy("first", "http", Address("127.0.0.1", first_port), handshake_timeout=2.0)
        via = Via("chain", "c", chain(first, proxy(second, "second", handshake_timeout=2.0)))
        target = Address("127.0.0.1", echo.port)
        with pytest.raises(ChainFailed) as info:
            await Dialer(FAST).dial("r", [via], target)
        assert info.value.timeout
        assert not second.requests
        dialed = await Dialer(FAST).dial("r", [pipelined(via)], target)
        async with dialed.stream:
            await dialed.stream.send(b"ping")
            assert await dialed.stream.receive() == b"ping"
        assert second.requests[-1] == close(target)


@pytest.mark.anyio
@pytest.mark.parametrize("refusal", ["status:403", "status:502", "silent", "close", "garbage"])
async def test_a_failing_middle_hop_stops_the_chain_there(refusal: str) -> None:
    """ok -> failing -> ok: pipelined, the same failures as step by step (hop, phase,
    status, denied, reason), and nothing reaches the hop after the one that failed, nor
    the destination."""
    outcomes = []
    for pipe in (False, True):
        async with task_group() as tg:
            echo = await start_echo(tg)
            hops = [await start_hop(tg, b) for b in ("ok", refusal, "ok")]
            names = ("one", "two", "three")
            via = Via(
                "chain",
                "c",
                chain(*(proxy(h, n) for h, n in zip(hops, names, strict=True))),
                pipeline=pipe,
            )
            with pytest.raises(ChainFailed) as info:
                await Dialer(FAST).dial("r", [via], Address("127.0.0.1", echo.port))
            outcomes.append(
                [
                    (a.index, a.hop, a.phase, a.status, a.denied, a.reason)
                    for a in info.value.attempts
                ]
            )
            assert (hops[2].accepted, echo.connections) == (0, 0)
            if pipe:  # (and what the failing hop was sent: its request, the next one's behind it)
                assert hops[1].requests[0] == close(Address("127.0.0.1", hops[2].port))
    assert outcomes[0] == outcomes[1]


# ------------------------------------------------------------------------ the config


def parse(text: str) -> object:
    return parse_config(textwrap.dedent(text), "routes.yaml")


def test_a_chain_can_be_pipelined() -> None:
    config = parse_config(
        textwrap.dedent(
            """\
            proxies:
              corp: http://proxy.corp.example:3128
              dante: {url: "socks5h://10.1.0.5:1080", pipeline: true}
              micro: {url: "socks5://10.1.0.6:1080", pipeline: false}
            chains:
              fast: {hops: [corp, dante], pipeline: true}
              plain: [corp, dante]
              off: {hops: [corp, [dante, micro]], pipeline: false}
            routes:
              - {match: "*", via: fast}
            """
        ),
        "routes.yaml",
    )
    chains = dict(config.chains)
    assert [chains[name].pipeline for name in ("fast", "plain", "off")] == [True, False, False]
    assert [g.label() for g in chains["off"].hops] == ["corp", "[dante, micro]"]
    assert [p.pipeline for p in config.proxies] == [None, True, False]
    assert config.routes[0].via is chains["fast"]


def test_pipeline_config_errors() -> None:
    with pytest.raises(ConfigErrors) as info:
        parse(
            """\
            proxies:
              corp: http://proxy.corp.example:3128
              jump: {url: "ssh://me@bastion.example", pipeline: true, insecure_host_key: true}
              odd: {url: "http://odd.example", pipeline: sometimes}
            chains:
              a: {hops: [corp], pipeline: yes please}
              b: {pipeline: true}
              c: {hops: [corp], pipelined: true}
              d: {hops: [nope], pipeline: true}
            routes:
              - {match: "*", via: corp}
            """
        )
    assert [str(e) for e in info.value.errors] == [
        "routes.yaml:3: proxies.jump.pipeline: not for ssh proxies: they are asked over"
        " their session, not in bytes",
        "routes.yaml:4: proxies.odd.pipeline: expected true or false, got a string",
        "routes.yaml:6: chains.a.pipeline: expected true or false, got a string",
        'routes.yaml:7: chains.b: missing "hops"',
        'routes.yaml:8: chains.c: unknown key "pipelined" (did you mean "pipeline"?)',
        'routes.yaml:9: chains.d.hops[0]: no proxy named "nope"',
    ]
