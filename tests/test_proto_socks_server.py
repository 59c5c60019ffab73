"""chainer.proto.socks_server: the SOCKS5 and SOCKS4/4a server codecs.

Every parser case runs whole, one byte at a time, and in random chunks. The driver
answers like a listener would and records, with each event, how many of the client's
bytes had been consumed when it came out, so a stage that read into the next message
fails; at the end it checks what the tunnel would see: the codec's `trailing_data`
followed by the bytes it was never given.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from chunking import bytewise, random_chunks, whole
from hypothesis import given
from hypothesis import strategies as st

from chainer.proto import NEED_DATA, ProtocolError
from chainer.proto.socks_codes import (
    ATYP_DOMAIN,
    ATYP_IPV4,
    ATYP_IPV6,
    CMD_BIND,
    CMD_CONNECT,
    CMD_UDP_ASSOCIATE,
    REP_ADDRESS_TYPE_NOT_SUPPORTED,
    REP_COMMAND_NOT_SUPPORTED,
    REP_HOST_UNREACHABLE,
    REP_SUCCEEDED,
)
from chainer.proto.socks_server import (
    BadRequest,
    Credentials,
    Failed,
    Request,
    Request4,
    Send,
    Socks4Server,
    Socks5Server,
)

# ------------------------------------------------------------------------------ helpers

Event = Send | Credentials | Request | BadRequest | Failed | Request4


@dataclass(frozen=True)
class Transcript:
    events: tuple[tuple[Event, int], ...]  # each event, with the bytes consumed by then
    sent: bytes  # everything the server answered before its reply
    after: bytes  # what the tunnel sees: trailing_data + bytes never fed


def drive5(
    chunks: Sequence[bytes],
    *,
    require_auth: bool = False,
    eof: bool = False,
    password: str = "s3cret",
) -> Transcript:
    """Drive a Socks5Server as a listener does; stop feeding at the final event."""
    server = Socks5Server(require_auth=require_auth)
    pending = [*chunks, b""] if eof else list(chunks)
    fed = 0
    events: list[tuple[Event, int]] = []
    sent = bytearray()
    while True:
        event = server.next_event()
        if event is NEED_DATA:
            assert pending, "server wants data after EOF"
            chunk = pending.pop(0)
            fed += len(chunk)
            server.receive_data(chunk)
            continue
        events.append((event, fed - len(server.trailing_data)))
        if isinstance(event, Send):
            sent += event.data
        elif isinstance(event, Credentials):
            sent += server.auth_result(event.password == password)
        else:
            assert server.next_event() is event  # a final event repeats
            with pytest.raises(RuntimeError):
                server.receive_data(b"x")
            return Transcript(tuple(events), bytes(sent), server.trailing_data + b"".join(pending))


def drive4(chunks: Sequence[bytes], *, eof: bool = False) -> Transcript:
    server = Socks4Server()
    pending = [*chunks, b""] if eof else list(chunks)
    fed = 0
    while True:
        event = server.next_event()
        if event is NEED_DATA:
            assert pending, "server wants data after EOF"
            chunk = pending.pop(0)
            fed += len(chunk)
            server.receive_data(chunk)
            continue
        assert server.next_event() is event
        with pytest.raises(RuntimeError):
            server.receive_data(b"x")
        consumed = fed - len(server.trailing_data)
        return Transcript(((event, consumed),), b"", server.trailing_data + b"".join(pending))


def greeting(*methods: int) -> bytes:
    return bytes((5, len(methods), *methods))


def userpass(username: bytes, password: bytes) -> bytes:
    return bytes((1, len(username))) + username + bytes((len(password),)) + password


def request5(command: int, atyp: int, address: bytes, port: int) -> bytes:
    if atyp == ATYP_DOMAIN:
        address = bytes((len(address),)) + address
    return bytes((5, command, 0, atyp)) + address + port.to_bytes(2, "big")


def request4(command: int, ip: bytes, port: int, user: bytes, domain: bytes | None = None) -> bytes:
    data = bytes((4, command)) + port.to_bytes(2, "big") + ip + user + b"\x00"
    return data if domain is None else data + domain + b"\x00"


# ------------------------------------------------------------------------- SOCKS5 cases

NOAUTH = greeting(0)
AUTH = greeting(0, 2)
CREDS = userpass(b"alice", b"s3cret")
IPV6 = ipaddress.IPv6Address("2001:db8::1").packed
CONNECT_V4 = request5(CMD_CONNECT, ATYP_IPV4, bytes((93, 184, 216, 34)), 443)
CONNECT_NAME = request5(CMD_CONNECT, ATYP_DOMAIN, b"example.com", 443)
HELLO = b"\x16\x03\x01\x00\xc8\x01\x00\x00\xc4\x03\x03" + bytes(range(40))

OK_NOAUTH = Send(b"\x05\x00")
OK_AUTH = Send(b"\x05\x02")
NONE_ACCEPTABLE = Send(b"\x05\xff")
V4_REQUEST = Request(CMD_CONNECT, "93.184.216.34", 443, ATYP_IPV4)
NAME_REQUEST = Request(CMD_CONNECT, "example.com", 443, ATYP_DOMAIN)


@dataclass(frozen=True)
class Case5:
    """The client's bytes and what any chunking must give.

    `expect` lists each event with the length of the input consumed when it came out;
    a str is a ProtocolError message pattern.
    """

    data: bytes
    expect: tuple[tuple[Event, int], ...] | str
    sent: bytes = b""
    after: bytes | None = None  # when given, checked against the input past the last event
    require_auth: bool = False
    eof: bool = False


def _n(*parts: bytes) -> int:
    return len(b"".join(parts))


CASES5: dict[str, Case5] = {
    "no auth, one method": Case5(
        NOAUTH + CONNECT_V4,
        ((OK_NOAUTH, 3), (V4_REQUEST, _n(NOAUTH, CONNECT_V4))),
        b"\x05\x00",
    ),
    "no auth, several methods offered": Case5(
        greeting(0x80, 2, 0, 1) + CONNECT_NAME,
        ((OK_NOAUTH, 6), (NAME_REQUEST, 6 + len(CONNECT_NAME))),
        b"\x05\x00",
    ),
    "no auth required, only username/password offered": Case5(
        greeting(2) + CREDS,
        ((NONE_ACCEPTABLE, 3), (Failed("client does not offer no-authentication"), 3)),
        b"\x05\xff",
        after=CREDS,
    ),
    "auth required and offered, right password": Case5(
        AUTH + CREDS + CONNECT_NAME,
        (
            (OK_AUTH, 4),
            (Credentials("alice", "s3cret"), _n(AUTH, CREDS)),
            (NAME_REQUEST, _n(AUTH, CREDS, CONNECT_NAME)),
        ),
        b"\x05\x02\x01\x00",
        require_auth=True,
    ),
    "auth required, not offered": Case5(
        greeting(0, 1) + CONNECT_V4,
        ((NONE_ACCEPTABLE, 4), (Failed("client does not offer username/password"), 4)),
        b"\x05\xff",
        after=CONNECT_V4,
        require_auth=True,
    ),
    "wrong password": Case5(
        AUTH + userpass(b"alice", b"guess") + CONNECT_V4,
        (
            (OK_AUTH, 4),
            (Credentials("alice", "guess"), 4 + 13),
            (Failed("authentication failed"), 4 + 13),
        ),
        b"\x05\x02\x01\x01",
        after=CONNECT_V4,
        require_auth=True,
    ),
    "credentials: empty password, UTF-8, undecodable byte": Case5(
        AUTH + userpass("jos\xe9".encode(), b"") + userpass(b"\xff", b"s3cret"),
        (
            (OK_AUTH, 4),
            (Credentials("jos\xe9", ""), 4 + 8),
            (Failed("authentication failed"), 4 + 8),
        ),
        b"\x05\x02\x01\x01",
        after=userpass(b"\xff", b"s3cret"),
        require_auth=True,
    ),
    "request IPv4": Case5(NOAUTH + CONNECT_V4, ((OK_NOAUTH, 3), (V4_REQUEST, 13)), b"\x05\x00"),
    "request IPv6": Case5(
        NOAUTH + request5(CMD_CONNECT, ATYP_IPV6, IPV6, 22),
        ((OK_NOAUTH, 3), (Request(CMD_CONNECT, "2001:db8::1", 22, ATYP_IPV6), 25)),
        b"\x05\x00",
    ),
    "request domain of 255 bytes": Case5(
        NOAUTH + request5(CMD_CONNECT, ATYP_DOMAIN, b"a" * 255, 65535),
        ((OK_NOAUTH, 3), (Request(CMD_CONNECT, "a" * 255, 65535, ATYP_DOMAIN), 3 + 262)),
        b"\x05\x00",
    ),
    "request domain with non-ASCII bytes": Case5(
        NOAUTH + request5(CMD_CONNECT, ATYP_DOMAIN, b"ex\xc3\xa9.com", 0),
        ((OK_NOAUTH, 3), (Request(CMD_CONNECT, "ex\ufffd\ufffd.com", 0, ATYP_DOMAIN), 3 + 15)),
        b"\x05\x00",
    ),
    "BIND is a Request": Case5(
        NOAUTH + request5(CMD_BIND, ATYP_IPV4, bytes(4), 0),
        ((OK_NOAUTH, 3), (Request(CMD_BIND, "0.0.0.0", 0, ATYP_IPV4), 13)),
        b"\x05\x00",
    ),
    "UDP ASSOCIATE is a Request": Case5(
        NOAUTH + request5(CMD_UDP_ASSOCIATE, ATYP_DOMAIN, b"h", 53),
        ((OK_NOAUTH, 3), (Request(CMD_UDP_ASSOCIATE, "h", 53, ATYP_DOMAIN), 3 + 8)),
        b"\x05\x00",
    ),
    "unknown command is a Request": Case5(
        NOAUTH + request5(0x7F, ATYP_IPV4, bytes(4), 1),
        ((OK_NOAUTH, 3), (Request(0x7F, "0.0.0.0", 1, ATYP_IPV4), 13)),
        b"\x05\x00",
    ),
    "RSV not zero is tolerated": Case5(
        NOAUTH + b"\x05\x01\xff" + CONNECT_V4[3:],
        ((OK_NOAUTH, 3), (V4_REQUEST, 13)),
        b"\x05\x00",
    ),
    "bad ATYP": Case5(
        NOAUTH + b"\x05\x01\x00\x02\x01\x02\x03\x04\x00\x50",
        (
            (OK_NOAUTH, 3),
            (BadRequest(REP_ADDRESS_TYPE_NOT_SUPPORTED, "address type 0x02 not supported"), 7),
        ),
        b"\x05\x00",
        after=b"\x01\x02\x03\x04\x00\x50",
    ),
    "early data coalesced with the request": Case5(
        NOAUTH + CONNECT_NAME + HELLO,
        ((OK_NOAUTH, 3), (NAME_REQUEST, 3 + len(CONNECT_NAME))),
        b"\x05\x00",
        after=HELLO,
    ),
    "early data after auth and request": Case5(
        AUTH + CREDS + CONNECT_NAME + HELLO,
        (
            (OK_AUTH, 4),
            (Credentials("alice", "s3cret"), _n(AUTH, CREDS)),
            (NAME_REQUEST, _n(AUTH, CREDS, CONNECT_NAME)),
        ),
        b"\x05\x02\x01\x00",
        after=HELLO,
        require_auth=True,
    ),
    "early data that looks like another request": Case5(
        NOAUTH + CONNECT_V4 + CONNECT_V4,
        ((OK_NOAUTH, 3), (V4_REQUEST, 13)),
        b"\x05\x00",
        after=CONNECT_V4,
    ),
    "EOF right after the request": Case5(
        NOAUTH + CONNECT_V4, ((OK_NOAUTH, 3), (V4_REQUEST, 13)), b"\x05\x00", eof=True
    ),
    # Errors.
    "SOCKS4 to the SOCKS5 codec": Case5(b"\x04\x01\x00\x50", "not a SOCKS5 greeting"),
    "HTTP to the SOCKS5 codec": Case5(b"CONNECT x:1 HTTP/1.1\r\n\r\n", r"version 0x43\)"),
    "NMETHODS 0": Case5(b"\x05\x00" + CONNECT_V4, "no methods"),
    "wrong VER in request": Case5(NOAUTH + b"\x04" + CONNECT_V4[1:], "not a SOCKS5 request"),
    "wrong RFC 1929 VER": Case5(AUTH + b"\x05" + CREDS[1:], "RFC 1929", require_auth=True),
    "ULEN 0": Case5(AUTH + b"\x01\x00\x01x", "empty username", require_auth=True),
    "domain length 0": Case5(NOAUTH + b"\x05\x01\x00\x03\x00\x00\x50", "empty domain"),
    "EOF before any byte": Case5(b"", "^closed before the greeting$", eof=True),
    "EOF mid-greeting": Case5(b"\x05\x02\x00", "^closed mid-greeting$", eof=True),
    "EOF before the request": Case5(NOAUTH, "^closed before the request$", eof=True),
    "EOF mid-request": Case5(NOAUTH + CONNECT_V4[:-1], "^closed mid-request$", eof=True),
    "EOF mid-domain": Case5(NOAUTH + CONNECT_NAME[:8], "^closed mid-request$", eof=True),
    "EOF mid-credentials": Case5(
        AUTH + CREDS[:-1], "^closed mid-username/password$", require_auth=True, eof=True
    ),
}


def check5(case: Case5, chunks: list[bytes]) -> None:
    if isinstance(case.expect, str):
        with pytest.raises(ProtocolError, match=case.expect):
            drive5(chunks, require_auth=case.require_auth, eof=case.eof)
        return
    got = drive5(chunks, require_auth=case.require_auth, eof=case.eof)
    after = case.data[case.expect[-1][1] :]
    assert case.after is None or case.after == after  # the case is consistent
    assert got == Transcript(case.expect, case.sent, after)


@pytest.mark.parametrize("name", CASES5)
def test_socks5_whole(name: str) -> None:
    case = CASES5[name]
    check5(case, whole(case.data))


@pytest.mark.parametrize("name", CASES5)
def test_socks5_bytewise(name: str) -> None:
    case = CASES5[name]
    check5(case, bytewise(case.data))


@pytest.mark.slow  # ~0.2 s per case adds up; the fast loop keeps whole and bytewise
@pytest.mark.parametrize("name", CASES5)
@given(draw=st.data())
def test_socks5_random_chunks(name: str, draw: st.DataObject) -> None:
    case = CASES5[name]
    check5(case, random_chunks(draw, case.data))


def test_version_refused_on_the_first_byte() -> None:
    server = Socks5Server(require_auth=False)
    server.receive_data(b"G")
    with pytest.raises(ProtocolError, match="not a SOCKS5 greeting"):
        server.next_event()
    with pytest.raises(ProtocolError, match="not a SOCKS5 greeting"):
        server.next_event()  # and it stays failed


def test_nothing_beyond_the_greeting_is_read_before_the_method_is_sent() -> None:
    server = Socks5Server(require_auth=True)
    server.receive_data(AUTH + b"\x99 not a sub-negotiation")
    assert server.next_event() == OK_AUTH
    assert server.trailing_data == b"\x99 not a sub-negotiation"
    with pytest.raises(ProtocolError, match="RFC 1929"):
        server.next_event()


def test_credentials_repr_hides_the_password() -> None:
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))
    assert "alice" in repr(Credentials("alice", "s3cret"))


def test_next_event_before_auth_result_is_a_caller_error() -> None:
    server = Socks5Server(require_auth=True)
    server.receive_data(AUTH + CREDS)
    assert server.next_event() == OK_AUTH
    assert isinstance(server.next_event(), Credentials)
    with pytest.raises(RuntimeError, match="auth_result"):
        server.next_event()
    server.receive_data(CONNECT_V4[:5])  # a pipelining client: kept for the next stage
    assert server.auth_result(True) == b"\x01\x00"
    with pytest.raises(RuntimeError):
        server.auth_result(True)
    assert server.next_event() is NEED_DATA
    server.receive_data(CONNECT_V4[5:])
    assert server.next_event() == V4_REQUEST


def test_data_after_eof_is_a_caller_error() -> None:
    server = Socks5Server(require_auth=False)
    server.receive_data(b"\x05")
    server.receive_data(b"")
    server.receive_data(b"")  # EOF twice is harmless
    with pytest.raises(RuntimeError):
        server.receive_data(b"\x01")


# ------------------------------------------------------------------------ SOCKS5 replies


def requested(data: bytes = NOAUTH + CONNECT_V4) -> Socks5Server:
    server = Socks5Server(require_auth=False)
    server.receive_data(data)
    assert server.next_event() == OK_NOAUTH
    assert isinstance(server.next_event(), Request | BadRequest)
    return server


@pytest.mark.parametrize(
    ("code", "host", "port", "expect"),
    [
        (REP_SUCCEEDED, "0.0.0.0", 0, b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"),
        (REP_SUCCEEDED, "10.1.2.3", 1080, b"\x05\x00\x00\x01\x0a\x01\x02\x03\x04\x38"),
        (
            REP_HOST_UNREACHABLE,
            "2001:db8::1",
            443,
            b"\x05\x04\x00\x04" + IPV6 + b"\x01\xbb",
        ),
        (REP_SUCCEEDED, "::", 65535, b"\x05\x00\x00\x04" + bytes(16) + b"\xff\xff"),
        (
            REP_COMMAND_NOT_SUPPORTED,
            "proxy.example",
            80,
            b"\x05\x07\x00\x03\x0dproxy.example\x00\x50",
        ),
        (REP_SUCCEEDED, "a" * 255, 1, b"\x05\x00\x00\x03\xff" + b"a" * 255 + b"\x00\x01"),
    ],
)
def test_socks5_reply_bytes(code: int, host: str, port: int, expect: bytes) -> None:
    assert requested().reply(code, host, port) == expect


def test_socks5_reply_defaults_and_once() -> None:
    server = requested(NOAUTH + CONNECT_V4 + HELLO)
    assert server.reply(REP_SUCCEEDED) == b"\x05\x00\x00\x01" + bytes(6)
    assert server.trailing_data == HELLO  # the tunnel's first bytes
    assert server.next_event() == V4_REQUEST
    with pytest.raises(RuntimeError, match="already"):
        server.reply(REP_SUCCEEDED)


def test_bad_request_reply() -> None:
    server = requested(NOAUTH + b"\x05\x01\x00\x09")
    event = server.next_event()
    assert isinstance(event, BadRequest)
    with pytest.raises(ValueError, match="cannot succeed"):
        server.reply(REP_SUCCEEDED)
    assert server.reply(event.reply_code) == b"\x05\x08\x00\x01" + bytes(6)


@pytest.mark.parametrize(
    ("code", "host", "port", "message"),
    [
        (256, "0.0.0.0", 0, "code"),
        (-1, "0.0.0.0", 0, "code"),
        (0, "0.0.0.0", 65536, "port"),
        (0, "0.0.0.0", -1, "port"),
        (0, "", 0, "1 to 255"),
        (0, "a" * 256, 0, "1 to 255"),
        (0, "\xe9.example", 0, "ASCII"),
    ],
)
def test_socks5_reply_refuses_bad_arguments(code: int, host: str, port: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        requested().reply(code, host, port)


def test_no_reply_before_a_request_or_after_failure() -> None:
    server = Socks5Server(require_auth=False)
    with pytest.raises(RuntimeError, match="no request"):
        server.reply(REP_SUCCEEDED)
    server.receive_data(greeting(2))
    assert server.next_event() == NONE_ACCEPTABLE
    assert isinstance(server.next_event(), Failed)
    with pytest.raises(RuntimeError, match="no request"):
        server.reply(1)


# ----------------------------------------------------------------- SOCKS5 properties

_USER = st.binary(min_size=1, max_size=255)
_PASSWORD = st.binary(max_size=255)


@st.composite
def _target5(draw: st.DrawFn) -> tuple[int, bytes, str]:
    atyp = draw(st.sampled_from([ATYP_IPV4, ATYP_IPV6, ATYP_DOMAIN]))
    if atyp == ATYP_IPV4:
        ip4 = draw(st.ip_addresses(v=4))
        return atyp, ip4.packed, str(ip4)
    if atyp == ATYP_IPV6:
        ip6 = draw(st.ip_addresses(v=6))
        return atyp, ip6.packed, ip6.compressed
    name = draw(st.binary(min_size=1, max_size=255))
    return atyp, name, name.decode("ascii", "replace")


@given(
    require_auth=st.booleans(),
    methods=st.lists(st.integers(3, 0xFE), max_size=8),
    user=_USER,
    password=_PASSWORD,
    target=_target5(),
    command=st.integers(0, 255),
    port=st.integers(0, 65535),
    early=st.binary(max_size=300),
    draw=st.data(),
)
def test_any_socks5_request_any_chunking(
    require_auth: bool,
    methods: list[int],
    user: bytes,
    password: bytes,
    target: tuple[int, bytes, str],
    command: int,
    port: int,
    early: bytes,
    draw: st.DataObject,
) -> None:
    atyp, address, host = target
    method = 2 if require_auth else 0
    position = draw.draw(st.integers(0, len(methods)), label="position")
    methods.insert(position, method)
    hello = greeting(*methods)
    auth = userpass(user, password) if require_auth else b""
    request = request5(command, atyp, address, port)
    data = hello + auth + request + early
    got = drive5(
        random_chunks(draw, data),
        require_auth=require_auth,
        password=password.decode("utf-8", "replace"),
    )
    expect: list[tuple[Event, int]] = [(Send(bytes((5, method))), len(hello))]
    if require_auth:
        creds = Credentials(user.decode("utf-8", "replace"), password.decode("utf-8", "replace"))
        expect.append((creds, _n(hello, auth)))
    expect.append((Request(command, host, port, atyp), _n(hello, auth, request)))
    sent = bytes((5, method)) + (b"\x01\x00" if require_auth else b"")
    assert got == Transcript(tuple(expect), sent, early)


# ------------------------------------------------------------------------- SOCKS4 cases

IP4 = bytes((93, 184, 216, 34))
HTTP_GET = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"


@dataclass(frozen=True)
class Case4:
    data: bytes
    expect: Request4 | str  # str: a ProtocolError message pattern
    consumed: int = 0
    eof: bool = False


CASES4: dict[str, Case4] = {
    "SOCKS4 CONNECT, empty user id": Case4(
        request4(1, IP4, 80, b""), Request4(1, "93.184.216.34", 80, "", False), 9
    ),
    "SOCKS4 with user id and early data": Case4(
        request4(1, IP4, 443, b"alice") + HTTP_GET,
        Request4(1, "93.184.216.34", 443, "alice", False),
        14,
    ),
    "SOCKS4 BIND": Case4(
        request4(2, bytes((10, 0, 0, 1)), 0, b"x"), Request4(2, "10.0.0.1", 0, "x", False), 10
    ),
    "SOCKS4 DSTIP 0.0.0.0 is an address": Case4(
        request4(1, bytes(4), 1, b"u") + b"host\x00",
        Request4(1, "0.0.0.0", 1, "u", False),
        10,
    ),
    "SOCKS4 user id of 255 bytes": Case4(
        request4(1, IP4, 1, b"u" * 255), Request4(1, "93.184.216.34", 1, "u" * 255, False), 264
    ),
    "SOCKS4 UTF-8 user id": Case4(
        request4(1, IP4, 1, "jos\xe9".encode() + b"\xff"),
        Request4(1, "93.184.216.34", 1, "jos\xe9\ufffd", False),
        15,
    ),
    "SOCKS4a": Case4(
        request4(1, bytes((0, 0, 0, 1)), 443, b"bob", b"example.com"),
        Request4(1, "example.com", 443, "bob", True),
        8 + 4 + 12,
    ),
    "SOCKS4a with early data": Case4(
        request4(1, bytes((0, 0, 0, 255)), 80, b"", b"example.com") + HTTP_GET,
        Request4(1, "example.com", 80, "", True),
        8 + 1 + 12,
    ),
    "SOCKS4a domain of 255 bytes, user id of 255 bytes": Case4(
        request4(1, bytes((0, 0, 0, 7)), 80, b"u" * 255, b"d" * 255) + b"\x00\x00",
        Request4(1, "d" * 255, 80, "u" * 255, True),
        8 + 256 + 256,
    ),
    "SOCKS4a early data that starts with NUL": Case4(
        request4(1, bytes((0, 0, 0, 1)), 80, b"", b"h") + b"\x00\x00",
        Request4(1, "h", 80, "", True),
        8 + 1 + 2,
    ),
    "EOF right after the request": Case4(
        request4(1, IP4, 80, b"a"), Request4(1, "93.184.216.34", 80, "a", False), 10, eof=True
    ),
    # Errors.
    "SOCKS5 to the SOCKS4 codec": Case4(NOAUTH, "not a SOCKS4 request"),
    "user id too long": Case4(request4(1, IP4, 1, b"u" * 256), "user id too long"),
    "user id without NUL": Case4(bytes((4, 1, 0, 80)) + IP4 + b"u" * 300, "user id too long"),
    "domain too long": Case4(
        request4(1, bytes((0, 0, 0, 1)), 1, b"", b"d" * 256), "domain too long"
    ),
    "empty SOCKS4a domain": Case4(request4(1, bytes((0, 0, 0, 1)), 1, b"", b""), "empty domain"),
    "EOF before any byte": Case4(b"", "^closed before the request$", eof=True),
    "EOF mid-header": Case4(bytes((4, 1, 0, 80)), "^closed mid-request$", eof=True),
    "EOF mid-user id": Case4(bytes((4, 1, 0, 80)) + IP4 + b"al", "closed mid-request", eof=True),
    "EOF mid-domain": Case4(
        bytes((4, 1, 0, 80, 0, 0, 0, 1)) + b"\x00exam", "closed mid-request", eof=True
    ),
}


def check4(case: Case4, chunks: list[bytes]) -> None:
    if isinstance(case.expect, str):
        with pytest.raises(ProtocolError, match=case.expect):
            drive4(chunks, eof=case.eof)
        return
    got = drive4(chunks, eof=case.eof)
    assert got == Transcript(((case.expect, case.consumed),), b"", case.data[case.consumed :])


@pytest.mark.parametrize("name", CASES4)
def test_socks4_whole(name: str) -> None:
    case = CASES4[name]
    check4(case, whole(case.data))


@pytest.mark.parametrize("name", CASES4)
def test_socks4_bytewise(name: str) -> None:
    case = CASES4[name]
    check4(case, bytewise(case.data))


@pytest.mark.slow  # ~0.2 s per case adds up; the fast loop keeps whole and bytewise
@pytest.mark.parametrize("name", CASES4)
@given(draw=st.data())
def test_socks4_random_chunks(name: str, draw: st.DataObject) -> None:
    case = CASES4[name]
    check4(case, random_chunks(draw, case.data))


def test_socks4_overlong_user_id_found_without_waiting_for_more() -> None:
    server = Socks4Server()
    server.receive_data(bytes((4, 1, 0, 80)) + IP4 + b"u" * 256)
    with pytest.raises(ProtocolError, match="user id too long"):
        server.next_event()
    with pytest.raises(ProtocolError, match="user id too long"):
        server.next_event()


@pytest.mark.parametrize(
    ("granted", "host", "port", "expect"),
    [
        (True, "0.0.0.0", 0, b"\x00\x5a" + bytes(6)),
        (False, "0.0.0.0", 0, b"\x00\x5b" + bytes(6)),
        (True, "10.1.2.3", 1080, b"\x00\x5a\x04\x38\x0a\x01\x02\x03"),
    ],
)
def test_socks4_reply_bytes(granted: bool, host: str, port: int, expect: bytes) -> None:
    server = Socks4Server()
    server.receive_data(request4(1, IP4, 80, b"") + HTTP_GET)
    assert isinstance(server.next_event(), Request4)
    assert server.reply(granted, host, port) == expect
    assert server.trailing_data == HTTP_GET
    with pytest.raises(RuntimeError, match="already"):
        server.reply(granted, host, port)


@pytest.mark.parametrize(
    ("host", "port", "message"),
    [("::1", 0, "IPv4"), ("example.com", 0, "IPv4"), ("0.0.0.0", 70000, "port")],
)
def test_socks4_reply_refuses_bad_arguments(host: str, port: int, message: str) -> None:
    server = Socks4Server()
    with pytest.raises(RuntimeError, match="no request"):
        server.reply(True)
    server.receive_data(request4(1, IP4, 80, b""))
    assert isinstance(server.next_event(), Request4)
    with pytest.raises(ValueError, match=message):
        server.reply(True, host, port)


@given(
    command=st.integers(0, 255),
    port=st.integers(0, 65535),
    user=st.binary(max_size=255).map(lambda b: b.replace(b"\x00", b"")),
    target=st.one_of(
        st.ip_addresses(v=4).filter(lambda ip: not 0 < int(ip) < 256),
        st.binary(min_size=1, max_size=255).map(lambda b: b.replace(b"\x00", b"")).filter(bool),
    ),
    early=st.binary(max_size=300),
    draw=st.data(),
)
def test_any_socks4_request_any_chunking(
    command: int,
    port: int,
    user: bytes,
    target: ipaddress.IPv4Address | bytes,
    early: bytes,
    draw: st.DataObject,
) -> None:
    user_id = user.decode("utf-8", "replace")
    if isinstance(target, bytes):
        x = draw.draw(st.integers(1, 255), label="x")
        request = request4(command, bytes((0, 0, 0, x)), port, user, target)
        expect = Request4(command, target.decode("ascii", "replace"), port, user_id, True)
    else:
        request = request4(command, target.packed, port, user)
        expect = Request4(command, str(target), port, user_id, False)
    got = drive4(random_chunks(draw, request + early))
    assert got == Transcript(((expect, len(request)),), b"", early)
