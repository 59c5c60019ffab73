"""chainer.proto.servername: the name in a client's first flight (TLS SNI, HTTP Host).

Every case runs whole, one byte at a time, and in random chunks. The driver records how
many bytes had been fed when the decision came out, and each case says how many it
needs: a decision must come with the chunk that holds that byte, never earlier (the
sniffer would be guessing) and never later (a server-speaks-first client would wait).
The ClientHellos are real ones, made by Python's ssl module.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from chunking import bytewise, random_chunks, split_at, whole
from hypothesis import given, settings
from hypothesis import strategies as st

from chainer.proto import NEED_DATA
from chainer.proto.servername import Named, ServerNameSniffer, Unnamed

# ------------------------------------------------------------------------------ helpers


def client_hello(server_hostname: str | None) -> bytes:
    """The first flight of a real TLS client (Python's ssl) for `server_hostname`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store: nothing is verified
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def refragment(hello: bytes, sizes: Sequence[int]) -> bytes:
    """The same handshake message carried by several records of the given sizes."""
    assert hello[0] == 22
    message = hello[5:]
    records = []
    at = 0
    for size in [*sizes, len(message)]:
        piece = message[at : at + size]
        if not piece:
            break
        records.append(hello[:3] + len(piece).to_bytes(2, "big") + piece)
        at += len(piece)
    return b"".join(records)


def record(body: bytes, kind: int = 22) -> bytes:
    return bytes([kind, 3, 1]) + len(body).to_bytes(2, "big") + body


def hello_with_extensions(extensions: bytes) -> bytes:
    """A hand-made ClientHello record around the given extensions block."""
    body = (
        b"\x03\x03"
        + bytes(32)
        + b"\x00"  # no session id
        + b"\x00\x02\x13\x01"  # one cipher suite
        + b"\x01\x00"  # null compression
        + len(extensions).to_bytes(2, "big")
        + extensions
    )
    return record(b"\x01" + len(body).to_bytes(3, "big") + body)


def sni_extension(*entries: tuple[int, bytes]) -> bytes:
    names = b"".join(bytes([kind]) + len(n).to_bytes(2, "big") + n for kind, n in entries)
    data = len(names).to_bytes(2, "big") + names
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


@dataclass(frozen=True)
class Outcome:
    event: Named | Unnamed
    fed: int  # bytes fed when the decision came out


def drive(chunks: Sequence[bytes], *, limit: int = 16384, eof: bool = False) -> Outcome:
    sniffer = ServerNameSniffer(limit)
    pending = [*chunks, b""] if eof else list(chunks)
    fed = 0
    while True:
        event = sniffer.next_event()
        if event is not NEED_DATA:
            assert sniffer.next_event() == event  # a decision is repeated
            return Outcome(event, fed)
        assert pending, "the sniffer still wants data after everything was fed"
        chunk = pending.pop(0)
        sniffer.receive_data(chunk)
        fed += len(chunk)


@dataclass(frozen=True)
class Case:
    data: bytes
    event: Named | Unnamed | type[Unnamed]  # the class alone: any reason will do
    needs: int  # bytes it takes to decide
    eof: bool = False
    limit: int = 16384


def check(case: Case, chunks: list[bytes]) -> None:
    assert b"".join(chunks) == case.data
    outcome = drive(chunks, limit=case.limit, eof=case.eof)
    if isinstance(case.event, type):
        assert isinstance(outcome.event, case.event), outcome.event
    else:
        assert outcome.event == case.event
    if case.eof and case.needs == len(case.data):
        assert outcome.fed == len(case.data)
        return
    # The decision came with the chunk that holds byte number `needs`, not before.
    before = outcome.fed - len(next(c for c in reversed(chunks[: _chunks_fed(chunks, outcome)])))
    assert before < case.needs <= outcome.fed, (before, case.needs, outcome.fed)


def _chunks_fed(chunks: list[bytes], outcome: Outcome) -> int:
    total = 0
    for i, chunk in enumerate(chunks, 1):
        total += len(chunk)
        if total == outcome.fed:
            return i
    raise AssertionError("the decision did not come at a chunk boundary")


HELLO = client_hello("app.corp.example")
HELLO_NO_SNI = client_hello(None)
GET = b"GET /index.html HTTP/1.1\r\nUser-Agent: curl/7.88\r\nHost: www.example.com:8080\r\n"
AFTER_HEAD = b"Accept: */*\r\n\r\n"

CASES: dict[str, Case] = {
    "tls: the whole ClientHello is needed": Case(
        HELLO + b"early data", Named("app.corp.example", "sni"), len(HELLO)
    ),
    "tls: a ClientHello over three records": Case(
        refragment(HELLO, [40, 100]), Named("app.corp.example", "sni"), len(HELLO) + 10
    ),
    "tls: a record of one handshake byte": Case(
        refragment(HELLO, [1, 3]), Named("app.corp.example", "sni"), len(HELLO) + 10
    ),
    "tls: no server_name": Case(HELLO_NO_SNI, Unnamed("a ClientHello without server_name"), 0),
    "tls: sni among several names, host_name first": Case(
        hello_with_extensions(
            b"\x00\x17\x00\x00" + sni_extension((7, b"other"), (0, b"db.lab.test"))
        ),
        Named("db.lab.test", "sni"),
        0,
    ),
    "tls: no extensions": Case(
        record(b"\x01\x00\x00\x29\x03\x03" + bytes(32) + b"\x00\x00\x02\x13\x01\x01\x00"),
        Unnamed("a ClientHello without extensions"),
        0,
    ),
    "tls: a name with a control character": Case(
        hello_with_extensions(sni_extension((0, b"evil\nname"))),
        Unnamed("a server_name that is not a printable ASCII host name"),
        0,
    ),
    "tls: an extension running past its end": Case(
        hello_with_extensions(b"\x00\x00\x00\x40\x00\x01"), Unnamed, 0
    ),
    "tls: an alert first": Case(record(b"\x02\x28", kind=21), Unnamed, 1),
    "tls: application data first": Case(record(b"x" * 10, kind=23), Unnamed, 1),
    "tls: 0x16 then not a TLS version": Case(b"\x16\x09whatever", Unnamed, 2),
    "tls: a handshake that is not a ClientHello": Case(record(b"\x02\x00\x00\x00"), Unnamed, 6),
    "tls: a ClientHello over the limit": Case(
        record(b"\x01\x00\x40\x00" + bytes(100)), Unnamed, 9, limit=4096
    ),
    "tls: cut short by EOF": Case(HELLO[:100], Unnamed, 100, eof=True),
    "http: Host without its port": Case(
        GET + AFTER_HEAD, Named("www.example.com", "host"), len(GET)
    ),
    "http: an IPv6 Host keeps its brackets": Case(
        b"HEAD / HTTP/1.0\r\nhost: [2001:db8::1]:80\r\n\r\n", Named("[2001:db8::1]", "host"), 41
    ),
    "http: bare LF line ends": Case(
        b"GET / HTTP/1.1\nHOST:  a.example \n\n", Named("a.example", "host"), 33
    ),
    "http: no Host": Case(b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\nbody", Unnamed, 31),
    "http: an empty Host": Case(b"GET / HTTP/1.1\r\nHost: \r\n\r\n", Unnamed, 24),
    "http: CONNECT is a proxy's request": Case(
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", Unnamed, 32
    ),
    "http: absolute-form is a proxy's request": Case(
        b"GET http://a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", Unnamed, 32
    ),
    "http: HTTP/2 prior knowledge": Case(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Unnamed, 16),
    "http: the limit reached before Host": Case(
        b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 300 + b"\r\nHost: late.example\r\n\r\n",
        Unnamed("no name in the first 200 bytes"),
        200,
        limit=200,
    ),
    "http: a method too long to be one": Case(b"A" * 40 + b" / HTTP/1.1\r\n", Unnamed, 33),
    "ssh: a client that speaks first": Case(
        b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n", Unnamed("not an HTTP/1.x request line"), 32
    ),
    "smtp-ish: a client line without a space": Case(b"HELLO\r\n", Unnamed, 6),
    "binary: a non-token first byte": Case(b"\x00\x01\x02\x03", Unnamed, 1),
    "nothing, then EOF": Case(b"", Unnamed("closed before sending anything"), 0, eof=True),
}

# Where the decision is exactly "the end of the message", `needs` is filled in here.
for _name, _case in list(CASES.items()):
    if _case.needs == 0:
        CASES[_name] = Case(_case.data, _case.event, len(_case.data), _case.eof, _case.limit)


@pytest.mark.parametrize("name", CASES)
def test_whole(name: str) -> None:
    case = CASES[name]
    check(case, whole(case.data) if case.data else [])


@pytest.mark.parametrize("name", CASES)
def test_bytewise(name: str) -> None:
    case = CASES[name]
    check(case, bytewise(case.data))


@pytest.mark.slow  # hypothesis per case adds up; the fast loop keeps whole and bytewise
@pytest.mark.parametrize("name", CASES)
@given(draw=st.data())
def test_random_chunks(name: str, draw: st.DataObject) -> None:
    case = CASES[name]
    check(case, random_chunks(draw, case.data))


# ------------------------------------------------------------------------------ contract


def test_the_real_hello_carries_its_name_in_sni() -> None:
    assert HELLO[0] == 22
    assert b"app.corp.example" in HELLO
    assert b"app.corp.example" not in HELLO_NO_SNI


def test_nothing_is_consumed_and_later_bytes_are_refused() -> None:
    sniffer = ServerNameSniffer()
    sniffer.receive_data(GET + AFTER_HEAD)
    assert sniffer.next_event() == Named("www.example.com", "host")
    with pytest.raises(RuntimeError, match="already decided"):
        sniffer.receive_data(b"more")


def test_data_after_eof_is_a_callers_bug() -> None:
    sniffer = ServerNameSniffer()
    sniffer.receive_data(b"GET / HT")
    sniffer.receive_data(b"")
    sniffer.receive_data(b"")  # EOF twice is harmless
    with pytest.raises(RuntimeError, match="after EOF"):
        sniffer.receive_data(b"TP/1.1")


def test_waits_while_the_head_may_still_name_a_host() -> None:
    sniffer = ServerNameSniffer()
    for piece in split_at(GET, [3, 10, 30, len(GET) - 1]):
        assert sniffer.next_event() is NEED_DATA
        sniffer.receive_data(piece)
    assert sniffer.next_event() == Named("www.example.com", "host")


def test_a_limit_below_one_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ServerNameSniffer(0)


@pytest.mark.slow
@settings(max_examples=300)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=8))
def test_any_bytes_are_decided_by_eof_or_the_limit(data: bytes, cuts: list[int]) -> None:
    """Whatever arrives, the sniffer never raises and never asks for more after EOF or
    after `limit` bytes."""
    limit = 256
    chunks = split_at(data, [c for c in cuts if c <= len(data)])
    sniffer = ServerNameSniffer(limit)
    fed = 0
    for chunk in chunks:
        if sniffer.next_event() is not NEED_DATA:
            break
        sniffer.receive_data(chunk)
        fed += len(chunk)
        if fed >= limit:
            assert sniffer.next_event() is not NEED_DATA
    if sniffer.next_event() is NEED_DATA:
        sniffer.receive_data(b"")
    assert isinstance(sniffer.next_event(), Named | Unnamed)


@pytest.mark.slow
@settings(deadline=None)  # a TLS context per example
@given(
    name=st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,8}){1,3}", fullmatch=True),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_any_real_hello_names_its_server(name: str, cuts: list[int]) -> None:
    hello = client_hello(name)
    outcome = drive(split_at(hello, [c for c in cuts if c <= len(hello)]))
    assert outcome.event == Named(name, "sni")
    assert outcome.fed == len(hello)
