"""Hypothesis fuzzing of every codec that meets bytes from a peer (issue 6).

Inbound (what clients send) and outbound (what hops answer) alike: arbitrary bytes, and
bytes that begin like the real protocol and then go wrong, fed whole and in arbitrary
chunks, then EOF. A codec may hand out events or raise `ProtocolError` — nothing else,
never "need more data" after EOF, and never hang (every loop here is bounded). The
outcome must not depend on how the bytes were cut, and what a finished codec leaves
for the next stage must be exactly the bytes it did not consume.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
from anyio.abc import ByteStream
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chainer.errors import BadTarget
from chainer.inbound import (
    ClientError,
    ClientGone,
    HttpInbound,
    Request,
    first_byte_kind,
    open_inbound,
)
from chainer.models import Limits
from chainer.proto import NEED_DATA, ConnectResponseReader, Established, ProtocolError, Refused
from chainer.proto import forward_request as forward_request_fn
from chainer.proto.socks import (
    AuthFailed,
    Connected,
    Rejected,
    Socks4Client,
    Socks5Client,
)
from chainer.proto.socks_server import (
    BadRequest,
    Credentials,
    Failed,
    Request4,
    Socks4Server,
    Socks5Server,
)
from chainer.proto.socks_server import Request as Socks5Request
from chainer.routing.target import normalize_host, parse_authority

pytestmark = pytest.mark.slow  # hundreds of examples per codec

FAST = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- strategies


def joined(*parts: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.tuples(*parts).map(b"".join)


def small_alphabet(symbols: bytes, max_size: int = 60) -> st.SearchStrategy[bytes]:
    """Bytes drawn from the few values a protocol cares about: goes deeper than noise."""
    return st.lists(st.sampled_from(list(symbols)), max_size=max_size).map(bytes)


def text_bytes(alphabet: str, max_size: int = 80) -> st.SearchStrategy[bytes]:
    return st.text(alphabet=alphabet, max_size=max_size).map(lambda t: t.encode("latin-1"))


def hostile(
    prefixes: Sequence[bytes], symbols: bytes, alphabet: str = ""
) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes; or a plausible beginning followed by anything."""
    tails = [st.binary(max_size=120), small_alphabet(symbols)]
    if alphabet:
        tails.append(text_bytes(alphabet))
    tail = st.one_of(*tails)
    return st.one_of(st.binary(max_size=200), joined(st.sampled_from(list(prefixes)), tail))


@st.composite
def cut(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` in arbitrary non-empty chunks."""
    points = sorted(set(draw(st.lists(st.integers(1, max(1, len(data) - 1)), max_size=10))))
    edges = [0, *(p for p in points if 0 < p < len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def whole(data: bytes) -> list[bytes]:
    return [data] if data else []


# --------------------------------------------------------------------------- driving


@dataclass(frozen=True)
class Outcome:
    """What driving a codec to its end gave: the intermediate events, the final event
    (or "error"), and what the next stage would see."""

    events: tuple[Any, ...]
    final: Any
    leftover: bytes | None = None


def drive(
    codec: Any,
    chunks: Sequence[bytes],
    is_final: Callable[[Any], bool],
    on_event: Callable[[Any], Any] = lambda event: event,
) -> Outcome:
    """Feed `chunks` then EOF, the way a connector does; stop feeding once the codec has
    its final event. Only ProtocolError may escape the codec."""
    pending = [*chunks, b""]
    events: list[Any] = []
    for _ in range(4 * len(pending) + 32):
        try:
            event = codec.next_event()
        except ProtocolError:
            return Outcome(tuple(events), "error")
        if event is NEED_DATA:
            if not pending:
                pytest.fail("the codec still wants data after EOF: its caller would hang")
            codec.receive_data(pending.pop(0))
            continue
        if is_final(event):
            assert codec.next_event() == event  # a final event repeats
            leftover = codec.trailing_data + b"".join(pending)
            return Outcome(tuple(events), event, leftover)
        events.append(on_event(event))
    pytest.fail("no progress: the codec loops without consuming input")


def check_chunking(
    make: Callable[[], Any],
    data: bytes,
    chunks: list[bytes],
    same: Callable[[Outcome], Any] = lambda outcome: outcome,
    **kw: Any,
) -> tuple[Any, Outcome]:
    """Driven whole or in chunks, a codec must come to the same end (as far as `same`
    says it matters); returns the codec driven in chunks and its outcome."""
    first = drive(make(), whole(data), **kw)
    codec = make()
    second = drive(codec, chunks, **kw)
    assert same(first) == same(second)
    if first.leftover is not None:
        assert data.endswith(first.leftover)
    return codec, second


# --------------------------------------------------------------------------- outbound codecs

HTTP_PREFIXES = [
    b"HTTP/1.1 200 Connection established\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n",
    b"HTTP/1.0 100 Continue\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 5\r\n\r\n",
    b"HTTP/1.1 502 Bad Gateway\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 503 x\r\nContent-Length: 3, 3\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
    b"HTTP/1.1 2",
    b"HTTP/1.1 101 Switching\r\n\r\n",
    b"HTTP/1.1 ",
]
HTTP_ALPHABET = "HTP/1.0 2345:\r\n\tCL-ngthxa\x00\x80,"


@FAST
@given(
    draw=st.data(),
    data=hostile(HTTP_PREFIXES, b"\r\n :0123456789HTP/", HTTP_ALPHABET),
    max_head=st.integers(16, 300),
    max_body=st.integers(0, 80),
)
def test_connect_response_reader(
    draw: st.DataObject, data: bytes, max_head: int, max_body: int
) -> None:
    chunks = draw.draw(cut(data))

    def make() -> ConnectResponseReader:
        return ConnectResponseReader(max_head=max_head, max_body=max_body)

    def same(outcome: Outcome) -> Any:
        # A refusal that leaves the connection out of step carries whatever body had
        # arrived (documented), and nothing may follow it on that connection.
        final = outcome.final
        if isinstance(final, Refused) and not final.reusable:
            return (final.status, final.reason, final.headers)
        return outcome

    check_chunking(
        make, data, chunks, same, is_final=lambda e: isinstance(e, Established | Refused)
    )


SOCKS5_REPLIES = [
    b"\x05\x00",
    b"\x05\x02",
    b"\x05\x02\x01\x00",
    b"\x05\x02\x01\x01",
    b"\x05\xff",
    b"\x05\x00\x05\x00\x00\x01",
    b"\x05\x00\x05\x00\x00\x03",
    b"\x05\x00\x05\x00\x00\x04",
    b"\x05\x00\x05\x05\x00\x01",
    b"\x05\x02\x01\x00\x05\x00\x00\x03\x05",
    b"\x04",
]
SOCKS_SYMBOLS = bytes([0, 1, 2, 3, 4, 5, 6, 0x5A, 0x5B, 0x7F, 0xFF])


@FAST
@given(
    draw=st.data(),
    data=hostile(SOCKS5_REPLIES, SOCKS_SYMBOLS),
    host=st.sampled_from(["127.0.0.1", "::1", "example.com"]),
    credentials=st.booleans(),
)
def test_socks5_client(draw: st.DataObject, data: bytes, host: str, credentials: bool) -> None:
    chunks = draw.draw(cut(data))

    def make() -> Socks5Client:
        if credentials:
            return Socks5Client(host, 443, username="alice", password="pw")
        return Socks5Client(host, 443)

    check_chunking(
        make, data, chunks, is_final=lambda e: isinstance(e, Connected | Rejected | AuthFailed)
    )


@FAST
@given(
    draw=st.data(),
    data=hostile([b"\x00\x5a", b"\x00\x5b", b"\x04\x5a\x01\xbb", b"\x00"], SOCKS_SYMBOLS),
    socks4a=st.booleans(),
)
def test_socks4_client(draw: st.DataObject, data: bytes, socks4a: bool) -> None:
    chunks = draw.draw(cut(data))
    host = "example.com" if socks4a else "127.0.0.1"

    def make() -> Socks4Client:
        return Socks4Client(host, 443, user_id="u", socks4a=socks4a)

    check_chunking(make, data, chunks, is_final=lambda e: isinstance(e, Connected | Rejected))


# --------------------------------------------------------------------------- inbound codecs

SOCKS5_REQUESTS = [
    b"\x05\x01\x00",
    b"\x05\x02\x00\x02",
    b"\x05\x01\x02\x01\x05alice\x02pw",
    b"\x05\x01\x02\x01\x00",
    b"\x05\x01\x00\x05\x01\x00\x01",
    b"\x05\x01\x00\x05\x01\x00\x03",
    b"\x05\x01\x00\x05\x01\x00\x04",
    b"\x05\x01\x00\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",
    b"\x05\x00",
    b"\x05\xff" + bytes(range(255)),
]


@FAST
@given(
    draw=st.data(),
    data=hostile(SOCKS5_REQUESTS, SOCKS_SYMBOLS),
    require_auth=st.booleans(),
    password_ok=st.booleans(),
)
def test_socks5_server(
    draw: st.DataObject, data: bytes, require_auth: bool, password_ok: bool
) -> None:
    chunks = draw.draw(cut(data))
    codecs: list[Socks5Server] = []

    def make() -> Socks5Server:
        codecs.append(Socks5Server(require_auth=require_auth))
        return codecs[-1]

    def on_event(event: Any) -> Any:
        if isinstance(event, Credentials):
            return (event, codecs[-1].auth_result(password_ok))
        return event

    final = (Socks5Request, BadRequest, Failed)
    codec, outcome = check_chunking(
        make, data, chunks, is_final=lambda e: isinstance(e, final), on_event=on_event
    )
    # a request (or a bad one) can always be answered
    if isinstance(outcome.final, Socks5Request):
        assert codec.reply(0x02)[:2] == b"\x05\x02"
    elif isinstance(outcome.final, BadRequest):
        assert codec.reply(outcome.final.reply_code)[1] == outcome.final.reply_code


SOCKS4_REQUESTS = [
    b"\x04\x01\x00\x50\x7f\x00\x00\x01",
    b"\x04\x01\x00\x50\x00\x00\x00\x01user\x00",
    b"\x04\x01\x00\x50\x00\x00\x00\x01\x00",
    b"\x04\x02\x00\x50\x7f\x00\x00\x01\x00",
    b"\x04\x01\x00\x50\x00\x00\x00\x01" + b"u" * 250,
]


@FAST
@given(draw=st.data(), data=hostile(SOCKS4_REQUESTS, SOCKS_SYMBOLS + b"u"))
def test_socks4_server(draw: st.DataObject, data: bytes) -> None:
    chunks = draw.draw(cut(data))
    codec, outcome = check_chunking(
        Socks4Server, data, chunks, is_final=lambda e: isinstance(e, Request4)
    )
    if isinstance(outcome.final, Request4):
        assert codec.reply(False)[:2] == b"\x00\x5b"


# --------------------------------------------------------------------------- forwarding

HOP_BY_HOP = {
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"te",
    b"trailer",
    b"upgrade",
    b"proxy-authorization",
}
NAMES = [
    b"Host",
    b"Connection",
    b"Proxy-Connection",
    b"Proxy-Authorization",
    b"Keep-Alive",
    b"TE",
    b"Upgrade",
    b"Trailer",
    b"Transfer-Encoding",
    b"Content-Length",
    b"X-A",
    b"x-a",
    b"X-B",
]
VALUES = [b"close", b"keep-alive, X-A", b"X-B,  Upgrade", b"chunked", b"5", b"a\r\nX-Evil: 1"]


def field_strategy() -> st.SearchStrategy[tuple[bytes, bytes]]:
    name = st.one_of(st.sampled_from(NAMES), st.binary(max_size=12))
    value = st.one_of(st.sampled_from(VALUES), st.binary(max_size=20))
    return st.tuples(name, value)


TARGETS = joined(
    st.sampled_from([b"http://", b"HTTP://", b"https://", b"http:/", b"", b"http://[::1]"]),
    st.one_of(st.binary(max_size=40), text_bytes("abc019.:@[]/?#%\x00 ", 40)),
)


@FAST
@given(
    method=st.one_of(st.sampled_from([b"GET", b"POST", b"get", b"CONNECT"]), st.binary(max_size=8)),
    target=st.one_of(st.binary(max_size=60), TARGETS),
    headers=st.lists(field_strategy(), max_size=6),
    version=st.one_of(st.sampled_from([b"1.1", b"1.0", b"2"]), st.binary(max_size=4)),
)
def test_forward_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], version: bytes
) -> None:
    try:
        host, port, head = forward_request_fn(method, target, headers, version)
    except ValueError:
        return
    # what goes to the origin is one well-formed head: nothing smuggled, nothing hop-by-hop
    assert isinstance(host, str)
    assert 1 <= port <= 65535
    assert head.endswith(b"\r\n\r\n")
    lines = head[:-4].split(b"\r\n")
    assert all(b"\r" not in line and b"\n" not in line for line in lines), head
    request_line = lines[0].split(b" ")
    assert len(request_line) == 3, head
    assert request_line[0] == method
    assert request_line[1].startswith(b"/")
    assert request_line[2] == b"HTTP/" + version  # the client's version goes on (855dfce)
    named = {
        t.strip(b" \t").lower()
        for name, value in headers
        if name.lower() == b"connection"
        for t in value.split(b",")
    } - {b"content-length", b"transfer-encoding", b"host"}
    sent = [line.partition(b":")[0].lower() for line in lines[1:]]
    assert sent.count(b"host") == 1, head
    assert lines[-1] == b"Connection: close", head
    for name in sent[:-1]:
        assert name not in HOP_BY_HOP, head
        assert name not in named, head


# --------------------------------------------------------------------------- targets

AUTHORITY_ALPHABET = "[]:.0123456789abcdefx-_@%/ \x00\t\u0130\u212a" + "LOCALHOST"


@FAST
@given(
    text=st.one_of(st.text(max_size=40), st.text(alphabet=AUTHORITY_ALPHABET, max_size=40)),
    default_port=st.one_of(st.none(), st.integers(1, 65535)),
)
def test_parse_authority(text: str, default_port: int | None) -> None:
    try:
        address = parse_authority(text, default_port)
    except BadTarget:
        return
    assert 1 <= address.port <= 65535
    # a host that made it through is canonical and safe to match, log and resolve
    assert normalize_host(address.host) == address.host
    assert address.host.isascii()
    assert not any(c in address.host for c in "\x00 \t\r\n@/\\[]"), address
    try:
        ipaddress.ip_address(address.host)
    except ValueError:
        assert all(c.isalnum() or c in "-._" for c in address.host), address


# --------------------------------------------------------------------------- HTTP inbound


@dataclass(eq=False)
class ScriptedStream(ByteStream):
    """A client that sends `chunks`, then closes its side; what we answer is recorded."""

    chunks: list[bytes]
    sent: list[bytes] = field(default_factory=list)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.chunks:
            raise anyio.EndOfStream
        data = self.chunks.pop(0)
        if len(data) > max_bytes:
            self.chunks.insert(0, data[max_bytes:])
            data = data[:max_bytes]
        return data

    async def send(self, item: bytes) -> None:
        self.sent.append(item)

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return {}


METHODS = ["CONNECT", "GET", "POST", "connect", "G\x00T", "HEAD"]
TARGETS_TEXT = [
    "127.0.0.1:443",
    "example.com:443",
    "example.com",
    "[::1]:443",
    "user@example.com:443",
    "http://example.com/",
    "http://user:pw@example.com/",
    "https://example.com/",
    "/x",
    "*",
    "2130706433:80",
    "example.com:0",
    "example.com:65536",
]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1 x", ""]
FIELDS = [
    "Host: example.com",
    "Host: other",
    "Content-Length: 0",
    "Content-Length: 5",
    "Content-Length: 1, 2",
    "Content-Length: -1",
    "Transfer-Encoding: chunked",
    "Proxy-Authorization: Basic YWxpY2U6cHc=",
    "Proxy-Authorization: Basic !!",
    "Connection: close, X-A",
    "X-A : b",
    " folded",
    "\tfolded",
    "NoColon",
    "X-B: \x00",
    "X-C: " + "c" * 90,
]


@st.composite
def http_request(draw: st.DrawFn) -> bytes:
    """A request head put together from parts that are each valid or each a known way to
    go wrong, with a line ending that may be CRLF, LF or CR, and maybe a body."""
    eol = draw(st.sampled_from(["\r\n", "\r\n", "\r\n", "\n", "\r"]))
    line = " ".join(
        [
            draw(st.sampled_from(METHODS)),
            draw(st.sampled_from(TARGETS_TEXT)),
            draw(st.sampled_from(VERSIONS)),
        ]
    )
    fields = draw(st.lists(st.sampled_from(FIELDS), max_size=8))
    head = eol.join([line, *fields]) + eol + eol
    body = draw(st.sampled_from(["", "abcde", "5\r\nabcde\r\n0\r\n\r\n", "\x16\x03\x01"]))
    return (head + body).encode("latin-1")


INBOUND_DATA = st.one_of(
    http_request(),
    st.binary(min_size=1, max_size=200),
    joined(st.sampled_from([b"CONNECT ", b"GET http://", b"\x05", b"\x04\x01"]), st.binary()),
)
LIMITS = Limits(max_connections=10, client_timeout=5.0, header_bytes=160, header_fields=4)


async def read_request(
    chunks: list[bytes], users: Mapping[str, str], limits: Limits
) -> tuple[Any, ...]:
    stream = ScriptedStream(list(chunks))
    inbound = HttpInbound(stream, users, limits)
    try:
        with anyio.fail_after(5):
            request = await inbound.read_request()
    except ClientError as exc:
        return ("error", exc.status)
    except ClientGone:
        return ("gone",)
    assert isinstance(request, Request)
    return ("request", request.kind, request.target, request.head, request.chunked, request.user)


@SLOW
@given(
    draw=st.data(),
    data=INBOUND_DATA,
    with_auth=st.booleans(),
    small_limits=st.booleans(),
)
def test_http_inbound_answers_anything_with_a_request_or_an_error(
    draw: st.DataObject, data: bytes, with_auth: bool, small_limits: bool
) -> None:
    """Whatever a client sends, the HTTP inbound gives a request, a ClientError (an HTTP
    answer) or ClientGone — and the same one however the bytes were cut."""
    chunks = draw.draw(cut(data))
    users = {"alice": "pw"} if with_auth else {}
    limits = LIMITS if small_limits else Limits()
    whole_outcome = anyio.run(read_request, whole(data), users, limits)
    chunked_outcome = anyio.run(read_request, chunks, users, limits)
    assert whole_outcome == chunked_outcome
    if whole_outcome[0] == "error":
        assert 400 <= whole_outcome[1] < 600


async def open_and_read(data: bytes, chunks: list[bytes]) -> tuple[Any, ...]:
    stream = ScriptedStream(list(chunks[1:]))
    kind = first_byte_kind(data[0])
    inbound = open_inbound(kind, stream, {}, chunks[0])
    if inbound is None:
        return ("not a protocol", kind)
    try:
        with anyio.fail_after(5):
            request = await inbound.read_request()
    except ClientError as exc:
        return ("error", exc.status)
    except ClientGone:
        return ("gone",)
    assert isinstance(request, Request)
    return ("request", request.kind, request.target)


@SLOW
@given(draw=st.data(), data=INBOUND_DATA)
def test_any_inbound_answers_anything_with_a_request_or_an_error(
    draw: st.DataObject, data: bytes
) -> None:
    """The first byte picks HTTP, SOCKS5 or SOCKS4: none of them lets anything but a
    request, ClientError or ClientGone out."""
    chunks = draw.draw(cut(data))
    outcome = anyio.run(open_and_read, data, chunks)
    kind = first_byte_kind(data[0])
    if kind in ("http", "socks5", "socks4"):
        assert outcome[0] in ("request", "error", "gone"), outcome
    else:
        assert outcome == ("not a protocol", kind)
    if outcome[0] == "error":
        assert 400 <= outcome[1] < 600, outcome
