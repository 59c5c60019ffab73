"""chainer.proto.socks: the client side of SOCKS5, SOCKS4 and SOCKS4a handshakes.

Every reader case runs whole, one byte at a time, and in random chunks. The input is
everything the hop sends, across all stages, so a chunk may carry the end of one answer
and the start of the next: the client must keep such bytes for the stage they belong to.
Each run checks what was sent (the greeting or request, then every `Send`), the final
event, and what the next stage would see: `trailing_data` followed by the bytes the
client was never given because the answer was complete before they arrived.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest
from chunking import bytewise, random_chunks, whole
from hypothesis import given
from hypothesis import strategies as st

from chainer.proto import NEED_DATA, ProtocolError
from chainer.proto.socks import (
    AuthFailed,
    Connected,
    Rejected,
    Send,
    Socks4Client,
    Socks5Client,
)
from chainer.proto.socks_codes import REP_TEXT, SOCKS4_TEXT

# ------------------------------------------------------------------------------ helpers

Client = Socks5Client | Socks4Client
Final = Connected | Rejected | AuthFailed


@dataclass(frozen=True)
class Outcome:
    sent: tuple[bytes, ...]  # greeting or request, then the data of every Send
    event: Final
    after: bytes  # what the next stage sees: trailing_data + bytes never fed


def run(client: Client, chunks: Sequence[bytes], *, eof: bool = False) -> Outcome:
    """Drive a client the way a connector does; stop feeding once the answer is done."""
    sent = [client.greeting() if isinstance(client, Socks5Client) else client.request()]
    pending = [*chunks, b""] if eof else list(chunks)
    while True:
        event = client.next_event()
        if isinstance(event, Send):
            sent.append(event.data)
            continue
        if isinstance(event, Connected | Rejected | AuthFailed):
            assert client.next_event() is event  # a final event repeats
            with pytest.raises(RuntimeError):
                client.receive_data(b"x")
            return Outcome(tuple(sent), event, client.trailing_data + b"".join(pending))
        assert event is NEED_DATA
        assert pending, "client wants data after EOF"
        client.receive_data(pending.pop(0))


def s5(
    host: str = "example.com",
    port: int = 443,
    *,
    username: str | None = None,
    password: str | None = None,
    early: bool = False,
) -> Callable[[], Socks5Client]:
    return lambda: Socks5Client(host, port, username=username, password=password, early=early)


def s4(
    host: str = "192.0.2.7", port: int = 443, *, user_id: str = "", socks4a: bool = False
) -> Callable[[], Socks4Client]:
    return lambda: Socks4Client(host, port, user_id=user_id, socks4a=socks4a)


# ---------------------------------------------------------------------- wire fragments

GREETING = b"\x05\x01\x00"  # VER 5, one method: no-auth
GREETING_AUTH = b"\x05\x02\x00\x02"  # no-auth and username/password
PICK_NOAUTH = b"\x05\x00"
PICK_USERPASS = b"\x05\x02"
PICK_NONE = b"\x05\xff"
AUTH_OK = b"\x01\x00"
ALICE = b"\x01\x05alice\x06s3cret"  # RFC 1929: VER, ULEN, UNAME, PLEN, PASSWD

REQ_NAME = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
REQ_V4 = b"\x05\x01\x00\x01\xc0\x00\x02\x07\x01\xbb"
REQ_V6 = b"\x05\x01\x00\x04" + bytes.fromhex("20010db8" + "00" * 11 + "01") + b"\x00\x16"

OK_V4 = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x1f\x90"  # BND 10.0.0.1:8080
OK_V6 = b"\x05\x00\x00\x04" + bytes.fromhex("20010db8" + "00" * 11 + "02") + b"\x04\x38"
OK_NAME = b"\x05\x00\x00\x03\x0bproxy.local\x00\x50"
OK_EMPTY_NAME = b"\x05\x00\x00\x03\x00\x00\x00"
BND_V4 = Connected("10.0.0.1", 8080)

# The start of a TLS ServerHello: the destination's first bytes, right after the reply.
HELLO = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03" + bytes(range(32))

S4_REQ = b"\x04\x01\x01\xbb\xc0\x00\x02\x07\x00"  # VN, CD, DSTPORT, DSTIP, empty USERID
S4_OK = b"\x00\x5a\x00\x00\x00\x00\x00\x00"  # granted, 0.0.0.0:0


def s5_fail(rep: int) -> bytes:
    return bytes((5, rep, 0, 1, 0, 0, 0, 0, 0, 0))


def rep_text(rep: int) -> str:
    return REP_TEXT.get(rep, f"unknown reply 0x{rep:02x}")


# ------------------------------------------------------------------------ reader cases


@dataclass(frozen=True)
class Case:
    """The hop's bytes, and what any chunking of them must give."""

    client: Callable[[], Client]
    data: bytes
    expect: Final | str  # str: a ProtocolError message pattern
    sent: tuple[bytes, ...] = ()
    after: bytes = b""
    eof: bool = False


NOAUTH_V4 = (GREETING, REQ_NAME)

CASES: dict[str, Case] = {
    # ---- SOCKS5, no authentication: the target's three encodings
    "name target": Case(s5(), PICK_NOAUTH + OK_V4, BND_V4, NOAUTH_V4),
    "IPv4 target": Case(s5("192.0.2.7"), PICK_NOAUTH + OK_V4, BND_V4, (GREETING, REQ_V4)),
    "IPv6 target": Case(s5("2001:db8::1", 22), PICK_NOAUTH + OK_V4, BND_V4, (GREETING, REQ_V6)),
    "IPv6 target, long form": Case(
        s5("2001:0db8:0:0:0:0:0:1", 22), PICK_NOAUTH + OK_V4, BND_V4, (GREETING, REQ_V6)
    ),
    "255-byte name target": Case(
        s5("a" * 255, 1),
        PICK_NOAUTH + OK_V4,
        BND_V4,
        (GREETING, b"\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x00\x01"),
    ),
    # ---- SOCKS5 BND.ADDR of each type
    "BND IPv6": Case(s5(), PICK_NOAUTH + OK_V6, Connected("2001:db8::2", 1080), NOAUTH_V4),
    "BND IPv6 unspecified": Case(
        s5(), PICK_NOAUTH + b"\x05\x00\x00\x04" + bytes(18), Connected("::", 0), NOAUTH_V4
    ),
    "BND IPv4-mapped IPv6": Case(
        s5(),
        PICK_NOAUTH + b"\x05\x00\x00\x04" + bytes(10) + b"\xff\xff\xc0\x00\x02\x01\x00\x01",
        Connected("::ffff:192.0.2.1", 1),
        NOAUTH_V4,
    ),
    "BND name": Case(s5(), PICK_NOAUTH + OK_NAME, Connected("proxy.local", 80), NOAUTH_V4),
    "BND empty name": Case(s5(), PICK_NOAUTH + OK_EMPTY_NAME, Connected("", 0), NOAUTH_V4),
    "BND non-ASCII name is escaped": Case(
        s5(), PICK_NOAUTH + b"\x05\x00\x00\x03\x02\xc3\xa9\x00\x01", Connected("\\xc3\\xa9", 1)
    ),
    "BND 0.0.0.0:0": Case(s5(), PICK_NOAUTH + s5_fail(0), Connected("0.0.0.0", 0), NOAUTH_V4),
    "RSV not zero is ignored": Case(
        s5(), PICK_NOAUTH + b"\x05\x00\x07" + OK_V4[3:], BND_V4, NOAUTH_V4
    ),
    # ---- SOCKS5 username/password
    "user/pass accepted": Case(
        s5(username="alice", password="s3cret"),
        PICK_USERPASS + AUTH_OK + OK_V4,
        BND_V4,
        (GREETING_AUTH, ALICE, REQ_NAME),
    ),
    "user/pass UTF-8, empty password": Case(
        s5(username="jos\xe9", password=""),
        PICK_USERPASS + AUTH_OK + OK_V4,
        BND_V4,
        (GREETING_AUTH, b"\x01\x05jos\xc3\xa9\x00", REQ_NAME),
    ),
    "username without password": Case(
        s5(username="bob"),
        PICK_USERPASS + AUTH_OK + OK_V4,
        BND_V4,
        (GREETING_AUTH, b"\x01\x03bob\x00", REQ_NAME),
    ),
    "credentials offered, hop wants none": Case(
        s5(username="alice", password="s3cret"),
        PICK_NOAUTH + OK_V4,
        BND_V4,
        (GREETING_AUTH, REQ_NAME),
    ),
    "user/pass refused": Case(
        s5(username="alice", password="wrong"),
        PICK_USERPASS + b"\x01\x01",
        AuthFailed("the hop refused the username/password (status 0x01)"),
        (GREETING_AUTH, b"\x01\x05alice\x05wrong"),
    ),
    "user/pass refused, other status": Case(
        s5(username="alice", password="s3cret"),
        PICK_USERPASS + b"\x01\xff",
        AuthFailed("the hop refused the username/password (status 0xff)"),
        (GREETING_AUTH, ALICE),
        eof=True,
    ),
    "no acceptable method, no credentials": Case(
        s5(),
        PICK_NONE,
        AuthFailed("the hop requires authentication; no credentials were offered"),
        (GREETING,),
        eof=True,
    ),
    "no acceptable method, credentials offered": Case(
        s5(username="alice", password="s3cret"),
        PICK_NONE,
        AuthFailed("the hop accepts neither no-auth nor username/password"),
        (GREETING_AUTH,),
    ),
    # ---- SOCKS5 early (pipelined): every message in greeting(), no Send, one method offered
    "early, no auth": Case(
        s5(early=True), PICK_NOAUTH + OK_V4 + HELLO, BND_V4, (GREETING + REQ_NAME,), HELLO
    ),
    "early, user/pass": Case(
        s5(username="alice", password="s3cret", early=True),
        PICK_USERPASS + AUTH_OK + OK_V4 + HELLO,
        BND_V4,
        (b"\x05\x01\x02" + ALICE + REQ_NAME,),
        HELLO,
    ),
    "early, refused": Case(
        s5(early=True), PICK_NOAUTH + s5_fail(2) + b"zz", Rejected(2, rep_text(2)), after=b"zz"
    ),
    "early, user/pass refused": Case(
        s5(username="alice", password="s3cret", early=True),
        PICK_USERPASS + b"\x01\x01",
        AuthFailed("the hop refused the username/password (status 0x01)"),
        (b"\x05\x01\x02" + ALICE + REQ_NAME,),
        eof=True,
    ),
    "early, no acceptable method": Case(
        s5(username="alice", password="s3cret", early=True),
        PICK_NONE,
        AuthFailed("the hop does not accept username/password"),
        eof=True,
    ),
    "early, user/pass, hop picks no-auth": Case(
        s5(username="alice", password="s3cret", early=True),
        PICK_NOAUTH + OK_V4,
        "^the hop chose no authentication, which was not offered$",
    ),
    "early, closed after method selection": Case(
        s5(early=True), PICK_NOAUTH, "^closed without answering the CONNECT request$", eof=True
    ),
    # ---- SOCKS5 refusals: every REP, and unknown ones
    **{
        f"REP {rep}": Case(
            s5(), PICK_NOAUTH + s5_fail(rep), Rejected(rep, rep_text(rep)), NOAUTH_V4
        )
        for rep in (1, 2, 3, 4, 5, 6, 7, 8, 9, 0x80, 0xFF)
    },
    "REP with a name BND": Case(
        s5(), PICK_NOAUTH + b"\x05\x05\x00\x03\x01x\x00\x00", Rejected(5, "connection refused")
    ),
    "REP with an IPv6 BND": Case(
        s5(), PICK_NOAUTH + b"\x05\x04\x00\x04" + bytes(18), Rejected(4, "host unreachable")
    ),
    # ---- SOCKS5 replies coalesced with the tunnel's first bytes
    "IPv4 reply + ServerHello": Case(s5(), PICK_NOAUTH + OK_V4 + HELLO, BND_V4, NOAUTH_V4, HELLO),
    "IPv6 reply + ServerHello": Case(
        s5(), PICK_NOAUTH + OK_V6 + HELLO, Connected("2001:db8::2", 1080), NOAUTH_V4, HELLO
    ),
    "name reply + ServerHello": Case(
        s5(), PICK_NOAUTH + OK_NAME + HELLO, Connected("proxy.local", 80), NOAUTH_V4, HELLO
    ),
    "empty name reply + tunnel": Case(
        s5(), PICK_NOAUTH + OK_EMPTY_NAME + b"\x05", Connected("", 0), NOAUTH_V4, b"\x05"
    ),
    "auth + reply + ServerHello": Case(
        s5(username="alice", password="s3cret"),
        PICK_USERPASS + AUTH_OK + OK_V4 + HELLO,
        BND_V4,
        (GREETING_AUTH, ALICE, REQ_NAME),
        HELLO,
    ),
    "reply + tunnel + EOF": Case(
        s5(), PICK_NOAUTH + OK_V4 + b"bye", BND_V4, after=b"bye", eof=True
    ),
    "refusal + trailing": Case(
        s5(), PICK_NOAUTH + s5_fail(2) + b"zz", Rejected(2, rep_text(2)), after=b"zz"
    ),
    "no method + trailing": Case(
        s5(),
        PICK_NONE + b"\x05\x00",
        AuthFailed("the hop requires authentication; no credentials were offered"),
        after=b"\x05\x00",
    ),
    # ---- SOCKS5 answers that are not SOCKS5
    "SOCKS4 answer to the greeting": Case(s5(), b"\x00\x5b", "not a SOCKS5 answer to the greeting"),
    "HTTP answer to the greeting": Case(
        s5(), b"HTTP/1.1 400 Bad Request\r\n\r\n", "not a SOCKS5 answer to the greeting: b'H"
    ),
    "version 4 in method selection": Case(s5(), b"\x04\x00", "greeting"),
    "username/password not offered": Case(
        s5(), PICK_USERPASS, "^the hop chose username/password, which was not offered$"
    ),
    "GSSAPI not offered": Case(
        s5(), b"\x05\x01", "^the hop chose method 0x01, which was not offered$"
    ),
    "private method not offered": Case(
        s5(username="alice", password="s3cret"), b"\x05\x80", "method 0x80, which was not offered"
    ),
    "RFC 1929 reply with version 5": Case(
        s5(username="alice", password="s3cret"),
        PICK_USERPASS + b"\x05\x00",
        "not an RFC 1929 answer",
    ),
    "wrong version in CONNECT reply": Case(
        s5(), PICK_NOAUTH + b"\x04" + OK_V4[1:], "not a SOCKS5 answer to the CONNECT request"
    ),
    "unknown ATYP": Case(s5(), PICK_NOAUTH + b"\x05\x00\x00\x02" + bytes(6), "address type 0x02"),
    "unknown ATYP with a refusal": Case(
        s5(), PICK_NOAUTH + b"\x05\x01\x00\x00" + bytes(6), "address type 0x00"
    ),
    # ---- SOCKS5 EOF at every stage
    "closed before any byte": Case(s5(), b"", "^closed without answering the greeting$", eof=True),
    "closed mid method selection": Case(
        s5(), b"\x05", "^closed mid-answer to the greeting after 1 byte$", eof=True
    ),
    "closed after method selection": Case(
        s5(), PICK_NOAUTH, "^closed without answering the CONNECT request$", eof=True
    ),
    "closed before RFC 1929 reply": Case(
        s5(username="alice", password="s3cret"),
        PICK_USERPASS,
        "^closed without answering the username/password$",
        eof=True,
    ),
    "closed mid RFC 1929 reply": Case(
        s5(username="alice", password="s3cret"),
        PICK_USERPASS + b"\x01",
        "closed mid-answer to the username/password",
        eof=True,
    ),
    "closed mid CONNECT reply head": Case(
        s5(), PICK_NOAUTH + OK_V4[:3], "closed mid-answer to the CONNECT request after 3", eof=True
    ),
    "closed mid IPv4 BND": Case(
        s5(), PICK_NOAUTH + OK_V4[:-1], "closed mid-answer to the CONNECT request after 9", eof=True
    ),
    "closed mid name BND": Case(s5(), PICK_NOAUTH + OK_NAME[:8], "closed mid-answer", eof=True),
    "closed mid refusal": Case(s5(), PICK_NOAUTH + s5_fail(5)[:6], "closed mid-answer", eof=True),
    # ---- SOCKS4 and SOCKS4a
    "SOCKS4 granted": Case(s4(), S4_OK, Connected("0.0.0.0", 0), (S4_REQ,)),
    "SOCKS4 granted, bound address": Case(
        s4(), b"\x00\x5a\x1f\x90\x0a\x00\x00\x01", BND_V4, (S4_REQ,)
    ),
    "SOCKS4 reply VN 4": Case(s4(), b"\x04" + S4_OK[1:], Connected("0.0.0.0", 0), (S4_REQ,)),
    "SOCKS4 user id": Case(
        s4(user_id="alice"), S4_OK, Connected("0.0.0.0", 0), (S4_REQ[:-1] + b"alice\x00",)
    ),
    "SOCKS4a name": Case(
        s4("example.com", 80, user_id="alice", socks4a=True),
        S4_OK,
        Connected("0.0.0.0", 0),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01alice\x00example.com\x00",),
    ),
    "SOCKS4a name, no user id": Case(
        s4("example.com", 80, socks4a=True),
        S4_OK,
        Connected("0.0.0.0", 0),
        (b"\x04\x01\x00\x50\x00\x00\x00\x01\x00example.com\x00",),
    ),
    "SOCKS4a IPv4 literal sent as is": Case(
        s4(socks4a=True), S4_OK, Connected("0.0.0.0", 0), (S4_REQ,)
    ),
    **{
        f"SOCKS4 rejected {cd}": Case(
            s4(),
            bytes((0, cd)) + bytes(6),
            Rejected(cd, SOCKS4_TEXT.get(cd, f"unknown reply {cd}")),
            (S4_REQ,),
        )
        for cd in (91, 92, 93, 94, 0)
    },
    "SOCKS4 reply + ServerHello": Case(s4(), S4_OK + HELLO, Connected("0.0.0.0", 0), after=HELLO),
    "SOCKS4a reply + ServerHello": Case(
        s4("example.com", socks4a=True), S4_OK + HELLO, Connected("0.0.0.0", 0), after=HELLO
    ),
    "SOCKS4 rejected + trailing": Case(
        s4(), b"\x00\x5b" + bytes(6) + b"x", Rejected(91, SOCKS4_TEXT[91]), after=b"x"
    ),
    "SOCKS4 VN 5": Case(s4(), b"\x05\xff", "not a SOCKS4 answer to the request"),
    "SOCKS4 HTTP answer": Case(s4(), b"HTTP/1.0 400 Bad Request\r\n\r\n", "not a SOCKS4 answer"),
    "SOCKS4 closed before any byte": Case(
        s4(), b"", "^closed without answering the SOCKS4 request$", eof=True
    ),
    "SOCKS4 closed mid reply": Case(
        s4(), S4_OK[:7], "^closed mid-answer to the SOCKS4 request after 7 bytes$", eof=True
    ),
}


def check(case: Case, chunks: list[bytes]) -> None:
    if isinstance(case.expect, str):
        with pytest.raises(ProtocolError, match=case.expect) as info:
            run(case.client(), chunks, eof=case.eof)
        assert len(str(info.value)) < 120
        return
    got = run(case.client(), chunks, eof=case.eof)
    assert got.event == case.expect
    assert got.after == case.after
    if case.sent:
        assert got.sent == case.sent


@pytest.mark.parametrize("name", CASES)
def test_reader_whole(name: str) -> None:
    case = CASES[name]
    check(case, whole(case.data))


@pytest.mark.parametrize("name", CASES)
def test_reader_bytewise(name: str) -> None:
    case = CASES[name]
    check(case, bytewise(case.data))


@pytest.mark.slow  # ~0.2 s per case adds up; the fast loop keeps whole and bytewise
@pytest.mark.parametrize("name", CASES)
@given(draw=st.data())
def test_reader_random_chunks(name: str, draw: st.DataObject) -> None:
    case = CASES[name]
    check(case, random_chunks(draw, case.data))


def test_rep_codes_have_their_texts() -> None:
    assert [rep_text(rep) for rep in range(1, 9)] == [REP_TEXT[rep] for rep in range(1, 9)]
    assert rep_text(9) == "unknown reply 0x09"


# ------------------------------------------------------------ splits at the boundaries


def test_each_stage_split_at_every_point() -> None:
    """Every two-packet split of a whole exchange, answers and tunnel bytes alike."""
    data = PICK_USERPASS + AUTH_OK + OK_NAME + HELLO
    for cut in range(1, len(data)):
        got = run(s5(username="alice", password="s3cret")(), [data[:cut], data[cut:]])
        assert got == Outcome((GREETING_AUTH, ALICE, REQ_NAME), Connected("proxy.local", 80), HELLO)


def test_early_bytes_are_kept_for_the_next_stage() -> None:
    client = Socks5Client("example.com", 443)
    client.receive_data(PICK_NOAUTH + OK_V4[:4])  # a hop that does not wait for the request
    assert client.next_event() == Send(REQ_NAME)
    assert client.trailing_data == OK_V4[:4]
    assert client.next_event() is NEED_DATA
    client.receive_data(OK_V4[4:] + b"\x16")
    assert client.next_event() == BND_V4
    assert client.trailing_data == b"\x16"


def test_send_is_returned_once_per_stage() -> None:
    client = Socks5Client("example.com", 443, username="alice", password="s3cret")
    client.receive_data(PICK_USERPASS)
    assert client.next_event() == Send(ALICE)
    assert client.next_event() is NEED_DATA
    client.receive_data(AUTH_OK)
    assert client.next_event() == Send(REQ_NAME)
    assert client.next_event() is NEED_DATA


# ------------------------------------------------------------------- caller contract


def test_not_socks_refused_on_its_first_byte() -> None:
    for client in (Socks5Client("example.com", 443), Socks4Client("192.0.2.7", 1, socks4a=False)):
        client.receive_data(b"H")
        with pytest.raises(ProtocolError, match="not a SOCKS"):
            client.next_event()
        with pytest.raises(ProtocolError, match="not a SOCKS"):
            client.next_event()  # and it stays failed


def test_unknown_atyp_refused_without_waiting_for_the_address() -> None:
    client = Socks5Client("example.com", 443)
    client.receive_data(PICK_NOAUTH + b"\x05\x00\x00\x09")
    assert client.next_event() == Send(REQ_NAME)
    with pytest.raises(ProtocolError, match="address type 0x09"):
        client.next_event()
    with pytest.raises(ProtocolError, match="address type 0x09"):
        client.next_event()


def test_data_after_eof_is_a_caller_error() -> None:
    client = Socks4Client("192.0.2.7", 443, socks4a=False)
    client.receive_data(b"\x00")
    client.receive_data(b"")
    client.receive_data(b"")  # EOF twice is harmless
    with pytest.raises(RuntimeError):
        client.receive_data(b"\x5a")


def test_data_after_a_final_event_is_a_caller_error() -> None:
    client = Socks5Client("example.com", 443)
    client.receive_data(PICK_NONE)
    event = client.next_event()
    assert isinstance(event, AuthFailed)
    assert client.next_event() is event
    with pytest.raises(RuntimeError, match="next stage"):
        client.receive_data(b"")


def test_credentials_never_shown() -> None:
    client = Socks5Client("example.com", 443, username="alice", password="s3cret")
    client.receive_data(PICK_USERPASS + b"\x01\x01")
    send = client.next_event()
    assert send == Send(ALICE)
    assert "s3cret" not in repr(send)
    assert "s3cret" not in repr(client.next_event())


def test_greeting_and_request_are_stable() -> None:
    client = Socks5Client("example.com", 443)
    assert client.greeting() == client.greeting() == GREETING
    assert Socks4Client("192.0.2.7", 443, socks4a=False).request() == S4_REQ


# ------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Socks5Client("", 443), "DNS name"),
        (lambda: Socks5Client("a" * 256, 443), "DNS name"),
        (lambda: Socks5Client("caf\xe9.example", 443), "DNS name"),
        (lambda: Socks5Client("a\x00.example", 443), "DNS name"),
        (lambda: Socks5Client("a b", 443), "DNS name"),
        (lambda: Socks5Client("fe80::1%eth0", 443), "scoped IPv6"),
        (lambda: Socks5Client("example.com", 0), "port 0"),
        (lambda: Socks5Client("example.com", 65536), "port 65536"),
        (lambda: Socks5Client("example.com", -1), "port"),
        (lambda: Socks5Client("example.com", 443, username=""), "username"),
        (lambda: Socks5Client("example.com", 443, username="u" * 256), "username"),
        (lambda: Socks5Client("example.com", 443, username="\xe9" * 128), "username"),
        (lambda: Socks5Client("example.com", 443, username="\udc80"), "username"),
        (lambda: Socks5Client("example.com", 443, password="p"), "needs a username"),
        (lambda: Socks5Client("h", 1, username="u", password="p" * 256), "password"),
        (lambda: Socks4Client("example.com", 443, socks4a=False), "needs an IPv4 address"),
        (lambda: Socks4Client("::1", 443, socks4a=False), "IPv6"),
        (lambda: Socks4Client("2001:db8::1", 443, socks4a=True), "IPv6"),
        (lambda: Socks4Client("0.0.0.1", 443, socks4a=False), "SOCKS4a"),
        (lambda: Socks4Client("0.0.0.255", 443, socks4a=True), "SOCKS4a"),
        (lambda: Socks4Client("192.0.2.7", 0, socks4a=False), "port"),
        (lambda: Socks4Client("192.0.2.7", 1, user_id="a\x00b", socks4a=False), "NUL"),
        (lambda: Socks4Client("192.0.2.7", 1, user_id="u" * 256, socks4a=False), "user id"),
        (lambda: Socks4Client("a\x00.example", 1, socks4a=True), "DNS name"),
        (lambda: Socks4Client("a" * 256, 1, socks4a=True), "DNS name"),
        (lambda: Socks4Client("", 1, socks4a=True), "DNS name"),
    ],
)
def test_bad_inputs(make: Callable[[], Client], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\udc80" not in str(info.value)
    assert "ppp" not in str(info.value)


def test_edge_inputs_accepted() -> None:
    """The longest name, username, password and user id each protocol carries go out whole."""
    s5_client = Socks5Client("a" * 255, 65535, username="u" * 255, password="p" * 255)
    s5_sent = run(s5_client, [PICK_USERPASS + AUTH_OK + OK_V4]).sent
    assert s5_sent == (
        GREETING_AUTH,
        b"\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 255,
        b"\x05\x01\x00\x03\xff" + b"a" * 255 + b"\xff\xff",
    )
    s4_request = Socks4Client("0.0.0.0", 1, user_id="u" * 255, socks4a=False).request()
    assert s4_request == b"\x04\x01\x00\x01" + bytes(4) + b"u" * 255 + b"\x00"
    s4a_request = Socks4Client("a" * 255, 1, socks4a=True).request()
    assert s4a_request == b"\x04\x01\x00\x01\x00\x00\x00\x01\x00" + b"a" * 255 + b"\x00"


# ------------------------------------------------------------------------ properties


def v6_text(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """Compressed, with a mapped IPv4 address dotted whatever the Python version."""
    assert isinstance(ip, ipaddress.IPv6Address)
    return f"::ffff:{ip.ipv4_mapped}" if ip.ipv4_mapped else ip.compressed


_NAME = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=255)
_BND = st.one_of(
    st.ip_addresses(v=4).map(lambda ip: (b"\x01" + ip.packed, str(ip))),
    st.ip_addresses(v=6).map(lambda ip: (b"\x04" + ip.packed, v6_text(ip))),
    _NAME.map(lambda name: (b"\x03" + bytes((len(name),)) + name.encode(), name)),
)


@given(
    bnd=_BND,
    port=st.integers(0, 65535),
    trailing=st.binary(max_size=200),
    auth=st.booleans(),
    draw=st.data(),
)
def test_socks5_any_bnd_any_chunking_hands_on_exactly_the_trailing_bytes(
    bnd: tuple[bytes, str],
    port: int,
    trailing: bytes,
    auth: bool,
    draw: st.DataObject,
) -> None:
    wire, host = bnd
    sent: tuple[bytes, ...]
    reply = b"\x05\x00\x00" + wire + port.to_bytes(2) + trailing
    if auth:
        client = Socks5Client("example.com", 443, username="alice", password="s3cret")
        data, sent = PICK_USERPASS + AUTH_OK + reply, (GREETING_AUTH, ALICE, REQ_NAME)
    else:
        client = Socks5Client("example.com", 443)
        data, sent = PICK_NOAUTH + reply, (GREETING, REQ_NAME)
    assert run(client, random_chunks(draw, data)) == Outcome(sent, Connected(host, port), trailing)


@given(
    ip=st.ip_addresses(v=4),
    port=st.integers(0, 65535),
    vn=st.sampled_from([0, 4]),
    trailing=st.binary(max_size=200),
    draw=st.data(),
)
def test_socks4_any_bnd_any_chunking_hands_on_exactly_the_trailing_bytes(
    ip: ipaddress.IPv4Address, port: int, vn: int, trailing: bytes, draw: st.DataObject
) -> None:
    data = bytes((vn, 90)) + port.to_bytes(2) + ip.packed + trailing
    client = Socks4Client("example.com", 443, socks4a=True)
    got = run(client, random_chunks(draw, data))
    assert got.event == Connected(str(ip), port)
    assert got.after == trailing


@given(
    rep=st.integers(1, 255),
    bnd=_BND,
    trailing=st.binary(max_size=50),
    draw=st.data(),
)
def test_socks5_any_refusal_any_chunking(
    rep: int, bnd: tuple[bytes, str], trailing: bytes, draw: st.DataObject
) -> None:
    data = PICK_NOAUTH + bytes((5, rep, 0)) + bnd[0] + b"\x00\x00" + trailing
    got = run(Socks5Client("example.com", 443), random_chunks(draw, data))
    assert got.event == Rejected(rep, rep_text(rep))
    assert got.after == trailing


@given(
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=255),
    ),
    port=st.integers(1, 65535),
)
def test_socks5_request_encodes_any_target(host: str, port: int) -> None:
    client = Socks5Client(host, port)
    client.receive_data(PICK_NOAUTH)
    send = client.next_event()
    assert isinstance(send, Send)
    head, addr, tail = send.data[:4], send.data[4:-2], send.data[-2:]
    assert head[:3] == b"\x05\x01\x00"
    assert int.from_bytes(tail) == port
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        assert head[3] == 3
        assert addr == bytes((len(host),)) + host.encode()
    else:
        assert head[3] == (1 if ip.version == 4 else 4)
        assert addr == ip.packed
