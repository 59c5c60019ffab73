"""chainer.proto.reader and chainer.proto.socks_address: what every reader shares.

The contract of `Reader` is checked once per reader (the HTTP CONNECT reader, the SOCKS5
and SOCKS4 clients, the SOCKS5 and SOCKS4 servers), each fed a complete exchange whole,
byte by byte and in random chunks: EOF rules, the sticky error, the repeated final event,
no bytes accepted after it, and the bytes after the answer left in `trailing_data`.
"""

from __future__ import annotations

import ast
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from chunking import bytewise, random_chunks, whole
from hypothesis import given
from hypothesis import strategies as st

import chainer.proto
import chainer.proto.http
import chainer.proto.socks_codes as codes
from chainer.proto import NEED_DATA, ConnectResponseReader, ProtocolError
from chainer.proto.reader import NeedData, quote
from chainer.proto.socks import Send as ClientSend
from chainer.proto.socks import Socks4Client, Socks5Client
from chainer.proto.socks_address import (
    address_size,
    ascii_name,
    decode_address,
    encode_address,
    encode_port,
)
from chainer.proto.socks_server import Send as ServerSend
from chainer.proto.socks_server import Socks4Server, Socks5Server

AnyReader = ConnectResponseReader | Socks5Client | Socks4Client | Socks5Server | Socks4Server
TAIL = b"\x16\x03\x01 the next stage's first bytes"


@dataclass(frozen=True)
class Kind:
    make: Callable[[], AnyReader]
    exchange: bytes  # everything the peer sends, up to the end of the final message
    garbage: bytes  # a first byte no peer of this protocol sends


KINDS = {
    "http": Kind(ConnectResponseReader, b"HTTP/1.1 200 OK\r\nVia: x\r\n\r\n", b"\x16"),
    "socks5 client": Kind(
        lambda: Socks5Client("example.com", 443),
        b"\x05\x00" + b"\x05\x00\x00\x01\x0a\x00\x00\x01\x1f\x90",
        b"\x04",
    ),
    "socks4 client": Kind(
        lambda: Socks4Client("192.0.2.7", 443, socks4a=False), b"\x00\x5a" + bytes(6), b"\x05"
    ),
    "socks5 server": Kind(
        lambda: Socks5Server(require_auth=False),
        b"\x05\x01\x00" + b"\x05\x01\x00\x03\x0bexample.com\x01\xbb",
        b"\x04",
    ),
    "socks4 server": Kind(Socks4Server, b"\x04\x01\x01\xbb\xc0\x00\x02\x07alice\x00", b"\x05"),
}
kinds = pytest.mark.parametrize("kind", KINDS.values(), ids=KINDS.keys())


def drive(reader: AnyReader, chunks: Sequence[bytes]) -> tuple[object, bytes]:
    """Feed chunks until the final event; returns it and what the next stage would see."""
    pending = list(chunks)
    for _ in range(len(chunks) + 10):
        event = reader.next_event()
        if isinstance(event, ClientSend | ServerSend):
            continue
        if event is not NEED_DATA:
            return event, reader.trailing_data + b"".join(pending)
        reader.receive_data(pending.pop(0))
    raise AssertionError("no final event")


def check_final(kind: Kind, chunks: Sequence[bytes]) -> None:
    reader = kind.make()
    event, after = drive(reader, chunks)
    assert after == TAIL
    assert reader.next_event() is event  # a final event repeats
    for more in (b"x", b""):
        with pytest.raises(RuntimeError, match="next stage"):
            reader.receive_data(more)


@kinds
@pytest.mark.parametrize("cut", [whole, bytewise])
def test_final_event_repeats_and_the_rest_is_trailing(
    kind: Kind, cut: Callable[[bytes], list[bytes]]
) -> None:
    check_final(kind, cut(kind.exchange + TAIL))


@kinds
@given(draw=st.data())
def test_final_event_any_chunking(kind: Kind, draw: st.DataObject) -> None:
    check_final(kind, random_chunks(draw, kind.exchange + TAIL))


@kinds
def test_eof_twice_is_harmless_data_after_it_is_not(kind: Kind) -> None:
    reader = kind.make()
    reader.receive_data(kind.exchange[:1])
    reader.receive_data(b"")
    reader.receive_data(b"")
    with pytest.raises(RuntimeError, match="data after EOF"):
        reader.receive_data(b"x")
    with pytest.raises(ProtocolError, match=r"^closed") as first:
        drive(reader, [])
    with pytest.raises(ProtocolError) as again:
        reader.next_event()
    assert str(again.value) == str(first.value)


@kinds
def test_protocol_error_is_sticky(kind: Kind) -> None:
    reader = kind.make()
    reader.receive_data(kind.garbage)
    with pytest.raises(ProtocolError) as first:
        reader.next_event()
    reader.receive_data(kind.exchange)  # a broken answer stays broken
    with pytest.raises(ProtocolError) as again:
        reader.next_event()
    assert str(again.value) == str(first.value)


@kinds
def test_nothing_is_consumed_before_a_message_completes(kind: Kind) -> None:
    reader = kind.make()
    reader.receive_data(kind.exchange[:1])
    assert reader.next_event() is NEED_DATA
    assert reader.trailing_data == kind.exchange[:1]


def test_need_data_is_one_sentinel() -> None:
    assert NEED_DATA is NeedData.NEED_DATA
    assert repr(NEED_DATA) == "NEED_DATA"
    # The old import paths still name the same objects.
    assert chainer.proto.http.NEED_DATA is NEED_DATA
    assert chainer.proto.http.ProtocolError is ProtocolError


@pytest.mark.parametrize(
    ("data", "expect"),
    [
        (b"", "b''"),
        (b"x" * 60, repr(b"x" * 60)),
        (b"x" * 61, repr(b"x" * 60) + "..."),
        ("é" * 61, repr("é" * 60) + "..."),
    ],
)
def test_quote_is_bounded(data: bytes | str, expect: str) -> None:
    assert quote(data) == expect


def test_proto_imports_nothing_but_the_standard_library_and_itself() -> None:
    """What the import-linter contract says: no I/O, no event loop, no chainer outside."""
    forbidden = {"anyio", "asyncio", "socket", "ssl", "selectors", "trio", "chainer"}
    for path in Path(chainer.proto.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level <= 1, f"{path.name} imports from outside proto/"
                names = [] if node.level else [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


# ------------------------------------------------------------------- SOCKS addresses


@given(ip=st.ip_addresses(), port=st.integers(1, 65535))
def test_ip_address_round_trip(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    wire = encode_address(str(ip)) + encode_port(port)
    assert address_size(wire, 0) == len(wire)
    for readable in (True, False):
        host, got_port = decode_address(b"junk" + wire, 4, readable=readable)
        assert (ipaddress.ip_address(host), got_port) == (ip, port)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_NAME = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255)


@given(name=_NAME.filter(lambda n: not _is_ip(n)), port=st.integers(1, 65535))
def test_name_round_trip(name: str, port: int) -> None:
    wire = encode_address(name) + encode_port(port)
    assert wire[0] == codes.ATYP_DOMAIN
    assert address_size(wire, 0) == len(wire)
    assert decode_address(wire, 0, readable=False) == (name, port)


def test_name_bytes_that_are_not_ascii() -> None:
    wire = b"\x03\x02\xc3\xa9\x00\x01"
    assert decode_address(wire, 0, readable=True) == ("\\xc3\\xa9", 1)
    assert decode_address(wire, 0, readable=False) == ("\ufffd\ufffd", 1)


def test_mapped_ipv4_text() -> None:
    wire = b"\x04" + bytes(10) + b"\xff\xff\xc0\x00\x02\x01" + b"\x00\x01"
    assert decode_address(wire, 0, readable=True) == ("::ffff:192.0.2.1", 1)
    compressed = ipaddress.IPv6Address("::ffff:192.0.2.1").compressed
    assert decode_address(wire, 0, readable=False) == (compressed, 1)


@pytest.mark.parametrize(
    ("encode", "message"),
    [
        (lambda: encode_address("fe80::1%eth0"), "scoped IPv6"),
        (lambda: encode_address("a b"), "DNS name"),
        (lambda: encode_address("a\x00.example"), "DNS name"),
        (lambda: ascii_name(""), "DNS name"),
        (lambda: ascii_name("a" * 256), "DNS name"),
        (lambda: encode_port(0), "port 0 is not in 1..65535"),
        (lambda: encode_port(-1, lowest=0), "port -1 is not in 0..65535"),
        (lambda: encode_port(65536, lowest=0), "port 65536"),
    ],
)
def test_bad_addresses(encode: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode()


def test_socks5_server_reply_checks_the_bound_host_like_the_client() -> None:
    server = Socks5Server(require_auth=False)
    server.receive_data(KINDS["socks5 server"].exchange)
    drive(server, [])
    for bad in ("fe80::1%eth0", "bound name"):
        with pytest.raises(ValueError, match=r"scoped|DNS name"):
            server.reply(codes.REP_SUCCEEDED, bad)
    assert server.reply(codes.REP_SUCCEEDED, "bound.example", 0)[3:5] == b"\x03\x0d"


def test_reply_tables_name_every_reply_code() -> None:
    rep = {v for k, v in vars(codes).items() if k.startswith("REP_") and isinstance(v, int)}
    socks4 = {v for k, v in vars(codes).items() if k.startswith("SOCKS4_") and isinstance(v, int)}
    assert set(codes.REP_TEXT) == rep == set(range(9))
    assert set(codes.SOCKS4_TEXT) == socks4 == {90, 91, 92, 93}
    assert codes.REP_TEXT[codes.REP_TTL_EXPIRED] == "TTL expired"
    assert codes.SOCKS4_TEXT[codes.SOCKS4_REJECTED] == "request rejected or failed"
