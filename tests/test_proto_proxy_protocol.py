"""chainer.proto.proxy_protocol: PROXY protocol v1 and v2 headers, fed whole, byte by byte
and in random chunks; the bytes after the header left for the client's request; reading
exactly `wanted()` bytes never reads past the header."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable

import pytest
from chunking import bytewise, random_chunks, whole
from hypothesis import given, settings
from hypothesis import strategies as st

from chainer.proto import NEED_DATA, ProtocolError
from chainer.proto.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderReader,
    encode_v1,
    encode_v2,
)

TAIL = b"CONNECT example.com:443 HTTP/1.1\r\n\r\n"

# (name, header bytes, what it must parse to) -- HAProxy's spec, section 2.1 and 2.2.
VALID = [
    (
        "v1 tcp4",
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 8080\r\n",
        ProxyHeader(1, False, "tcp4", ("192.0.2.7", 56324), ("198.51.100.1", 8080)),
    ),
    (
        "v1 tcp6",
        b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 443\r\n",
        ProxyHeader(1, False, "tcp6", ("2001:db8::7", 40000), ("2001:db8::1", 443)),
    ),
    ("v1 unknown", b"PROXY UNKNOWN\r\n", ProxyHeader(1, False, "unknown")),
    (
        "v1 unknown with junk",
        b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        ProxyHeader(1, False, "unknown"),
    ),
    (
        "v1 longest",
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
        b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
        ProxyHeader(
            1,
            False,
            "tcp6",
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ),
    ),
    (
        "v2 inet",
        encode_v2(("192.0.2.7", 56324), ("198.51.100.1", 8080)),
        ProxyHeader(2, False, "tcp4", ("192.0.2.7", 56324), ("198.51.100.1", 8080)),
    ),
    (
        "v2 inet6 with tlvs",
        encode_v2(("2001:db8::7", 1), ("2001:db8::1", 2), tlvs=b"\x01\x00\x02h2"),
        ProxyHeader(2, False, "tcp6", ("2001:db8::7", 1), ("2001:db8::1", 2), b"\x01\x00\x02h2"),
    ),
    ("v2 local", encode_v2(None, None, local=True), ProxyHeader(2, True, "unknown")),
    (
        "v2 local ignores its addresses",
        V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12),
        ProxyHeader(2, True, "unknown"),
    ),
    ("v2 unspec", encode_v2(None, None), ProxyHeader(2, False, "unknown")),
    (
        "v2 unix",
        V2_SIGNATURE + b"\x21\x31" + struct.pack("!H", 216) + bytes(216),
        ProxyHeader(2, False, "unknown"),
    ),
]

INVALID = [
    ("plain HTTP", b"CONNECT example.com:443 HTTP/1.1\r\n\r\n", "no PROXY protocol header"),
    ("SOCKS5", b"\x05\x01\x00" + bytes(20), "no PROXY protocol header"),
    ("lower case", b"proxy TCP4 1.2.3.4 1.2.3.4 1 1\r\n", "no PROXY protocol header"),
    ("v1 no CR", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "CRLF"),
    ("v1 TCP5", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
    ("v1 v6 in TCP4", b"PROXY TCP4 ::1 ::1 1 2\r\n", "bad TCP4 address"),
    ("v1 v4 in TCP6", b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", "bad TCP6 address"),
    ("v1 missing port", b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "malformed"),
    ("v1 port too big", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536\r\n", "bad port"),
    ("v1 port sign", b"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "bad port"),
    ("v1 port zero-led", b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "leading zero"),
    ("v1 double space", b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "malformed"),
    ("v1 zone id", b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "bad TCP6 address"),
    ("v1 too long", b"PROXY TCP4 " + b"1" * 200 + b"\r\n", "longer than 107"),
    ("v1 not ascii", b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n", "not ASCII"),
    ("v2 version 1", V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12), "version 1"),
    ("v2 command 2", V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12), "unknown command 2"),
    ("v2 dgram", V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "unsupported family"),
    ("v2 family 4", V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12), "unsupported family"),
    ("v2 inet short", V2_SIGNATURE + b"\x21\x11\x00\x08" + bytes(8), "under 12"),
    ("v2 inet6 short", V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "under 36"),
    ("v2 bad signature", b"\r\n\r\n\x00\r\nQUIT\r" + bytes(8), "no PROXY protocol header"),
]


def parse(chunks: list[bytes]) -> tuple[ProxyHeader, bytes]:
    """The header, and every byte after it: those the reader holds and those not fed."""
    reader = ProxyHeaderReader()
    for i, chunk in enumerate(chunks):
        reader.receive_data(chunk)
        event = reader.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, ProxyHeader)
            return event, reader.trailing_data + b"".join(chunks[i + 1 :])
    reader.receive_data(b"")
    event = reader.next_event()
    assert isinstance(event, ProxyHeader)
    return event, reader.trailing_data


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
@pytest.mark.parametrize("cut", [whole, bytewise], ids=["whole", "bytewise"])
def test_valid_headers_parse_and_leave_the_request(
    name: str, data: bytes, expected: ProxyHeader, cut: Callable[[bytes], list[bytes]]
) -> None:
    header, trailing = parse(cut(data + TAIL))
    assert header == expected
    assert trailing == TAIL


@pytest.mark.slow
@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
@given(chunks=st.data())
@settings(max_examples=60, deadline=None)
def test_valid_headers_in_random_chunks(
    name: str, data: bytes, expected: ProxyHeader, chunks: st.DataObject
) -> None:
    header, trailing = parse(random_chunks(chunks, data + TAIL))
    assert header == expected
    assert trailing == TAIL


@pytest.mark.parametrize(("name", "data", "message"), INVALID, ids=[v[0] for v in INVALID])
@pytest.mark.parametrize("cut", [whole, bytewise], ids=["whole", "bytewise"])
def test_invalid_headers_are_refused(
    name: str, data: bytes, message: str, cut: Callable[[bytes], list[bytes]]
) -> None:
    reader = ProxyHeaderReader()

    def feed_all() -> None:
        for chunk in [*cut(data + TAIL), b""]:
            reader.receive_data(chunk)
            assert reader.next_event() is NEED_DATA

    with pytest.raises(ProtocolError, match=message):
        feed_all()
    with pytest.raises(ProtocolError):  # sticky
        reader.next_event()


@pytest.mark.parametrize(("name", "data", "expected"), VALID, ids=[v[0] for v in VALID])
def test_reading_exactly_wanted_never_reads_past_the_header(
    name: str, data: bytes, expected: ProxyHeader
) -> None:
    stream = data + TAIL
    reader = ProxyHeaderReader()
    read = 0
    for _ in range(len(stream)):
        want = reader.wanted()
        assert want > 0
        reader.receive_data(stream[read : read + want])
        read += want
        event = reader.next_event()
        if event is not NEED_DATA:
            break
    assert event == expected
    assert read == len(data), "read past the header"
    assert reader.trailing_data == b""
    assert reader.wanted() == 0


@pytest.mark.parametrize("cut", [10, 13, 15, 27])
def test_eof_inside_a_header_is_an_error(cut: int) -> None:
    for data in (VALID[0][1], VALID[5][1]):
        reader = ProxyHeaderReader()
        reader.receive_data(data[:cut])
        reader.receive_data(b"")
        with pytest.raises(ProtocolError, match="closed after"):
            reader.next_event()


def test_a_partial_signature_waits_and_a_wrong_byte_is_refused_at_once() -> None:
    reader = ProxyHeaderReader()
    reader.receive_data(b"PROX")
    assert reader.next_event() is NEED_DATA
    reader = ProxyHeaderReader()
    reader.receive_data(b"G")  # a GET: refused on its first byte, not after 12
    with pytest.raises(ProtocolError, match="no PROXY protocol header"):
        reader.next_event()


def test_bytes_after_the_final_event_are_refused() -> None:
    reader = ProxyHeaderReader()
    reader.receive_data(b"PROXY UNKNOWN\r\n")
    assert isinstance(reader.next_event(), ProxyHeader)
    with pytest.raises(RuntimeError, match="PROXY header is complete"):
        reader.receive_data(b"x")


_ipv4 = st.ip_addresses(v=4).map(str)
_ipv6 = st.ip_addresses(v=6).map(str)
_port = st.integers(0, 65535)


@given(
    v6=st.booleans(),
    data=st.data(),
    version=st.sampled_from([1, 2]),
)
@settings(max_examples=150, deadline=None)
def test_encode_then_parse_round_trips(v6: bool, data: st.DataObject, version: int) -> None:
    ip = _ipv6 if v6 else _ipv4
    source = (data.draw(ip), data.draw(_port))
    destination = (data.draw(ip), data.draw(_port))
    encoded = encode_v1(source, destination) if version == 1 else encode_v2(source, destination)
    header, trailing = parse(random_chunks(data, encoded + TAIL))
    assert header.version == version
    assert header.source == (str(ipaddress.ip_address(source[0])), source[1])
    assert header.destination == (str(ipaddress.ip_address(destination[0])), destination[1])
    assert trailing == TAIL
