"""chainer.proto.http: CONNECT framing, the answer reader, plain-HTTP forwarding.

Every reader case runs whole, one byte at a time, and in random chunks, and checks what
the next stage would see: the reader's `trailing_data` followed by the bytes it was never
given because the answer was complete before they arrived.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from chunking import bytewise, random_chunks, whole
from hypothesis import given
from hypothesis import strategies as st

from chainer.proto import (
    LAST_CHUNK,
    NEED_DATA,
    ConnectResponseReader,
    Established,
    ProtocolError,
    Refused,
    basic_authorization,
    connect_request,
    encode_chunk,
    forward_request,
)

# When a hypothesis test fails, its pytest plugin imports mypy_extensions.TypedDict while
# reporting; under filterwarnings=error that DeprecationWarning turns the failure into an
# INTERNALERROR that aborts the run.

# ------------------------------------------------------------------------------ helpers


@dataclass(frozen=True)
class Outcome:
    event: Established | Refused
    after: bytes  # what the next stage sees: trailing_data + bytes never fed


def run(
    chunks: Sequence[bytes], *, eof: bool = False, max_head: int = 32768, max_body: int = 65536
) -> Outcome:
    """Drive a reader the way a connector does; stop feeding once the answer is done."""
    reader = ConnectResponseReader(max_head=max_head, max_body=max_body)
    pending = [*chunks, b""] if eof else list(chunks)
    while True:
        event = reader.next_event()
        if isinstance(event, Established | Refused):
            assert reader.next_event() is event  # a final event repeats
            with pytest.raises(RuntimeError):
                reader.receive_data(b"x")
            return Outcome(event, reader.trailing_data + b"".join(pending))
        assert event is NEED_DATA
        assert pending, "reader wants data after EOF"
        reader.receive_data(pending.pop(0))


# ------------------------------------------------------------------------ reader cases


@dataclass(frozen=True)
class Case:
    """An answer, and the event plus the bytes after it that any chunking must give.

    For a refusal that is not reusable the body holds whatever had arrived, so only
    `body + after` is fixed; `expect.body` is what the whole-input run gives.
    """

    data: bytes
    expect: Established | Refused | str  # str: a ProtocolError message pattern
    after: bytes = b""
    eof: bool = False
    max_head: int = 32768
    max_body: int = 65536


BANNER = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"
CL5 = (("Content-Length", "5"),)
LONG_BODY = b"x" * 100

CASES: dict[str, Case] = {
    "200 with reason": Case(
        b"HTTP/1.1 200 Connection established\r\n\r\n",
        Established(200, "Connection established", ()),
    ),
    "200 without reason": Case(b"HTTP/1.1 200\r\n\r\n", Established(200, "", ())),
    "200 with empty reason": Case(b"HTTP/1.1 200 \r\n\r\n", Established(200, "", ())),
    "200 HTTP/1.0 with headers": Case(
        b"HTTP/1.0 200 OK\r\nProxy-Agent: squid/5.7\r\nX-Empty:\r\nX-Pad:  a b \t\r\n\r\n",
        Established(200, "OK", (("Proxy-Agent", "squid/5.7"), ("X-Empty", ""), ("X-Pad", "a b"))),
    ),
    "204 is a tunnel too": Case(
        b"HTTP/1.1 204 No Content\r\n\r\nab", Established(204, "No Content", ()), b"ab"
    ),
    "200 Content-Length ignored": Case(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        Established(200, "OK", CL5),
        b"hello",
    ),
    "200 chunked ignored": Case(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        Established(200, "OK", (("Transfer-Encoding", "chunked"),)),
        b"5\r\nhello\r\n0\r\n\r\n",
    ),
    "200 coalesced with the tunnel's banner": Case(
        b"HTTP/1.1 200 Connection established\r\n\r\n" + BANNER,
        Established(200, "Connection established", ()),
        BANNER,
    ),
    "200 followed by a blank line that is tunnel data": Case(
        b"HTTP/1.1 200 OK\r\n\r\n\r\n\r\n", Established(200, "OK", ()), b"\r\n\r\n"
    ),
    "200 with EOF right after": Case(
        b"HTTP/1.1 200 OK\r\n\r\n", Established(200, "OK", ()), eof=True
    ),
    "100 Continue then 200": Case(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nVia: a\r\n\r\nTLS",
        Established(200, "OK", (("Via", "a"),)),
        b"TLS",
    ),
    "several 1xx then 407": Case(
        b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </>\r\n\r\n"
        b"HTTP/1.1 407 Auth\r\nContent-Length: 0\r\n\r\n",
        Refused(407, "Auth", (("Content-Length", "0"),), b"", True),
    ),
    "407 with body and the next answer after it": Case(
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="corp"\r\nContent-Length: 5\r\n\r\n'
        b"denyHTTP/1.1 200 OK\r\n\r\n",
        Refused(
            407,
            "Proxy Authentication Required",
            (("Proxy-Authenticate", 'Basic realm="corp"'), ("Content-Length", "5")),
            b"denyH",
            True,
        ),
        b"TTP/1.1 200 OK\r\n\r\n",
    ),
    "407 with repeated equal Content-Length": Case(
        b"HTTP/1.1 407 No\r\nContent-Length: 2\r\ncontent-length: 2\r\n\r\nok",
        Refused(407, "No", (("Content-Length", "2"), ("content-length", "2")), b"ok", True),
    ),
    "502 Connection close": Case(
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 3\r\nConnection: Close\r\n\r\nbad",
        Refused(
            502, "Bad Gateway", (("Content-Length", "3"), ("Connection", "Close")), b"bad", False
        ),
    ),
    "502 Connection keep-alive, close": Case(
        b"HTTP/1.1 502 X\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
        Refused(
            502, "X", (("Connection", "keep-alive, close"), ("Content-Length", "0")), b"", False
        ),
    ),
    "403 chunked": Case(
        b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope\r\n0\r\n\r\n",
        Refused(
            403,
            "Forbidden",
            (("Transfer-Encoding", "chunked"),),
            b"4\r\nnope\r\n0\r\n\r\n",
            False,
        ),
    ),
    "403 chunked wins over Content-Length": Case(
        b"HTTP/1.1 403 F\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nnope",
        Refused(
            403,
            "F",
            (("Content-Length", "4"), ("Transfer-Encoding", "chunked")),
            b"4\r\nnope",
            False,
        ),
    ),
    "HTTP/1.0 502 is not reusable": Case(
        b"HTTP/1.0 502 Bad Gateway\r\nContent-Length: 2\r\n\r\nno",
        Refused(502, "Bad Gateway", (("Content-Length", "2"),), b"no", False),
    ),
    "503 close-delimited": Case(
        b"HTTP/1.1 503 Unavailable\r\n\r\nsorry",
        Refused(503, "Unavailable", (), b"sorry", False),
    ),
    "502 conflicting Content-Length": Case(
        b"HTTP/1.1 502 X\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
        Refused(502, "X", (("Content-Length", "2"), ("Content-Length", "3")), b"abc", False),
    ),
    "502 body over max_body": Case(
        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 100\r\n\r\n" + LONG_BODY,
        Refused(502, "Bad Gateway", (("Content-Length", "100"),), b"x" * 10, False),
        b"x" * 90,
        max_body=10,
    ),
    "502 close-delimited over max_body": Case(
        b"HTTP/1.1 502 X\r\n\r\n" + LONG_BODY,
        Refused(502, "X", (), b"x" * 10, False),
        b"x" * 90,
        max_body=10,
    ),
    "502 truncated body at EOF": Case(
        b"HTTP/1.1 502 X\r\nContent-Length: 10\r\n\r\nabc",
        Refused(502, "X", (("Content-Length", "10"),), b"abc", False),
        eof=True,
    ),
    "304 ends at the blank line": Case(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\nHTTP",
        Refused(304, "Not Modified", (("Content-Length", "99"),), b"", True),
        b"HTTP",
    ),
    "101 is a failure": Case(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\nxyz",
        Refused(101, "Switching Protocols", (("Upgrade", "x"),), b"xyz", False),
    ),
    # Not HTTP at all.
    "SSH banner": Case(BANNER, "status line"),
    "SSH banner alone, then silence": Case(b"SSH-2.0-OpenSSH", "status line"),
    "TLS record": Case(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "status line"),
    "binary": Case(b"\x00\xff\x13\x10\r\n\r\n", "status line"),
    "status 2OO": Case(b"HTTP/1.1 2OO OK\r\n\r\n", "status line"),
    "status of two digits": Case(b"HTTP/1.1 20 OK\r\n\r\n", "status line"),
    "status of four digits": Case(b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
    "HTTP/2.0": Case(b"HTTP/2.0 200 OK\r\n\r\n", "status line"),
    "lowercase http": Case(b"http/1.1 200 OK\r\n\r\n", "status line"),
    "bare LF": Case(b"HTTP/1.1 200 OK\n\n", "CRLF"),
    "bare LF in a header": Case(b"HTTP/1.1 200 OK\r\nA: b\n\r\n", "CRLF|control"),
    "NUL in reason": Case(b"HTTP/1.1 200 O\x00K\r\n\r\n", "status line"),
    "header without colon": Case(b"HTTP/1.1 200 OK\r\nProxy-Agent squid\r\n\r\n", "colon"),
    "space before colon": Case(b"HTTP/1.1 200 OK\r\nVia : x\r\n\r\n", "before colon"),
    "folded header": Case(b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n", "folded"),
    "control char in value": Case(b"HTTP/1.1 200 OK\r\nA: b\x01c\r\n\r\n", "control"),
    "bad header name": Case(b"HTTP/1.1 200 OK\r\nA(b): c\r\n\r\n", "header name"),
    "head over max_head": Case(
        b"HTTP/1.1 200 OK\r\n" + b"X-Pad: aaaaaaaaaaaa\r\n" * 10 + b"\r\n",
        "answer head over 100 bytes",
        max_head=100,
    ),
    "interim heads count towards max_head": Case(
        b"HTTP/1.1 100 Continue\r\n\r\n" * 5 + b"HTTP/1.1 200 OK\r\n\r\n",
        "answer head over 100 bytes",
        max_head=100,
    ),
    "closed before any byte": Case(b"", "^closed without answering$", eof=True),
    "closed mid status line": Case(b"HTTP/1.1 2", "closed mid-answer", eof=True),
    "closed mid headers": Case(b"HTTP/1.1 200 OK\r\nVia: x\r\n\r", "closed mid-answer", eof=True),
    "closed after a 100": Case(b"HTTP/1.1 100 Continue\r\n\r\n", "closed mid-answer", eof=True),
}


def check(case: Case, chunks: list[bytes], *, exact_body: bool = False) -> None:
    if isinstance(case.expect, str):
        with pytest.raises(ProtocolError, match=case.expect) as info:
            run(chunks, eof=case.eof, max_head=case.max_head, max_body=case.max_body)
        assert len(str(info.value)) < 120
        return
    got = run(chunks, eof=case.eof, max_head=case.max_head, max_body=case.max_body)
    expect = case.expect
    if isinstance(expect, Refused) and not expect.reusable and not exact_body:
        # The body is whatever had arrived with the head; nothing is lost either way.
        assert isinstance(got.event, Refused)
        assert replace(got.event, body=b"") == replace(expect, body=b"")
        assert got.event.body + got.after == expect.body + case.after
        assert len(got.event.body) <= case.max_body
    else:
        assert got == Outcome(expect, case.after)


@pytest.mark.parametrize("name", CASES)
def test_reader_whole(name: str) -> None:
    case = CASES[name]
    check(case, whole(case.data), exact_body=True)


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


@pytest.mark.parametrize("cut", range(1, 4))
def test_split_inside_the_blank_line(cut: int) -> None:
    head = b"HTTP/1.1 200 Connection established\r\n\r\n"
    chunks = [head[:-cut], head[-cut:] + BANNER]
    assert run(chunks) == Outcome(Established(200, "Connection established", ()), BANNER)


def test_garbage_refused_on_its_first_byte() -> None:
    reader = ConnectResponseReader()
    reader.receive_data(b"S")
    with pytest.raises(ProtocolError, match="status line"):
        reader.next_event()
    with pytest.raises(ProtocolError, match="status line"):
        reader.next_event()  # and it stays failed


def test_head_limit_found_without_waiting_for_the_rest() -> None:
    reader = ConnectResponseReader(max_head=64)
    reader.receive_data(b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 100)
    with pytest.raises(ProtocolError, match="answer head over 64 bytes"):
        reader.next_event()


def test_head_of_exactly_max_head_is_accepted() -> None:
    head = b"HTTP/1.1 200 OK\r\nX: " + b"a" * 20 + b"\r\n\r\n"
    assert run(bytewise(head), max_head=len(head)).event == Established(
        200, "OK", (("X", "a" * 20),)
    )
    with pytest.raises(ProtocolError, match="head over"):
        run(whole(head), max_head=len(head) - 1)


def test_data_after_eof_is_a_caller_error() -> None:
    reader = ConnectResponseReader()
    reader.receive_data(b"HTTP/1.1 ")
    reader.receive_data(b"")
    reader.receive_data(b"")  # EOF twice is harmless
    with pytest.raises(RuntimeError):
        reader.receive_data(b"200")


def test_obs_text_in_reason_and_values_is_latin1() -> None:
    data = b"HTTP/1.1 200 \xe9t\xe9\r\nX: caf\xe9\r\n\r\n"
    assert run(whole(data)).event == Established(200, "\xe9t\xe9", (("X", "caf\xe9"),))


def test_error_quotes_at_most_60_bytes() -> None:
    with pytest.raises(ProtocolError) as info:
        run(whole(b"Z" * 1000 + b"\r\n\r\n"))
    assert "Z" * 61 not in str(info.value)
    assert "Z" * 10 in str(info.value)


# ---------------------------------------------------------------- reader properties

_REASON = st.text(
    st.characters(codec="latin-1", exclude_categories=["Cc"], include_characters="\t"),
    max_size=30,
)
_NAME = st.text(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
    min_size=1,
    max_size=20,
)
_VALUE = st.text(
    st.characters(codec="latin-1", exclude_categories=["Cc"], include_characters="\t"),
    max_size=30,
).map(lambda value: value.strip(" \t"))
_HEADERS = st.lists(st.tuples(_NAME, _VALUE), max_size=8).map(tuple)


def _head(version: bytes, status: int, reason: str, headers: Sequence[tuple[str, str]]) -> bytes:
    lines = [b"HTTP/%s %d %s\r\n" % (version, status, reason.encode("latin-1"))]
    lines += [b"%s: %s\r\n" % (n.encode(), v.encode("latin-1")) for n, v in headers]
    return b"".join(lines) + b"\r\n"


@given(
    status=st.integers(200, 299),
    version=st.sampled_from([b"1.0", b"1.1"]),
    reason=_REASON,
    headers=_HEADERS,
    trailing=st.binary(max_size=200),
    draw=st.data(),
)
def test_any_2xx_any_chunking_hands_on_exactly_the_trailing_bytes(
    status: int,
    version: bytes,
    reason: str,
    headers: tuple[tuple[str, str], ...],
    trailing: bytes,
    draw: st.DataObject,
) -> None:
    data = _head(version, status, reason, headers) + trailing
    got = run(random_chunks(draw, data))
    assert got == Outcome(Established(status, reason, headers), trailing)


@given(
    status=st.integers(300, 599).filter(lambda s: s not in (304,)),
    reason=_REASON,
    body=st.binary(max_size=100),
    trailing=st.binary(max_size=100),
    draw=st.data(),
)
def test_bounded_refusal_any_chunking_keeps_the_connection_in_step(
    status: int, reason: str, body: bytes, trailing: bytes, draw: st.DataObject
) -> None:
    headers = (("Content-Length", str(len(body))),)
    data = _head(b"1.1", status, reason, headers) + body + trailing
    got = run(random_chunks(draw, data))
    assert got == Outcome(Refused(status, reason, headers, body, True), trailing)


# ----------------------------------------------------------------------- CONNECT request


def test_connect_request_bytes() -> None:
    assert connect_request("example.com:443") == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    )
    assert connect_request("[2001:db8::1]:22", basic_authorization("alice", "s3cret")) == (
        b"CONNECT [2001:db8::1]:22 HTTP/1.1\r\nHost: [2001:db8::1]:22\r\n"
        b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n\r\n"
    )


def test_connect_request_close_for_pipelining() -> None:
    """A pipelined CONNECT asks the proxy to close after its answer, so that a refusal
    cannot make it read the next hop's bytes as another request."""
    assert connect_request("example.com:443", close=True) == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nConnection: close\r\n\r\n"
    )
    with_auth = connect_request("h:1", basic_authorization("alice", "s3cret"), close=True)
    assert with_auth.endswith(
        b"Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\nConnection: close\r\n\r\n"
    )


def test_basic_authorization() -> None:
    assert basic_authorization("alice", "s3cret") == "Basic YWxpY2U6czNjcmV0"
    value = basic_authorization("jos\xe9", "p:w d")
    assert base64.b64decode(value.removeprefix("Basic ")) == "jos\xe9:p:w d".encode()
    with pytest.raises(ValueError, match="':'"):
        basic_authorization("a:b", "c")


@pytest.mark.parametrize(
    "authority",
    [
        "",
        "a.example:443\r\nX: y",
        "a.example:443\n",
        "a b:443",
        "a\x00.example:443",
        "a\t:1",
        "\xe9:1",
    ],
)
def test_connect_request_refuses_bad_authority(authority: str) -> None:
    with pytest.raises(ValueError, match="CONNECT authority"):
        connect_request(authority)


@pytest.mark.parametrize(
    "authorization", ["", "Basic x\r\nX-Evil: 1", "Basic x\n", "Basic \x00", "Basic \xe9"]
)
def test_connect_request_refuses_bad_authorization_without_quoting_it(authorization: str) -> None:
    with pytest.raises(ValueError, match="Proxy-Authorization") as info:
        connect_request("a.example:443", authorization)
    assert "Basic" not in str(info.value)


# --------------------------------------------------------------------- plain forwarding

CLIENT_HEADERS = [
    (b"Host", b"ignored.example"),
    (b"User-Agent", b"curl/8"),
    (b"Proxy-Connection", b"Keep-Alive"),
    (b"Proxy-Authorization", b"Basic YWxpY2U6czNjcmV0"),
    (b"Connection", b"keep-alive, X-Secret"),
    (b"x-secret", b"1"),
    (b"Keep-Alive", b"timeout=5"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-T"),
    (b"Upgrade", b"h2c"),
    (b"Proxy-Authenticate", b"Basic"),
    (b"Accept", b"*/*"),
]


@pytest.mark.parametrize(
    ("target", "host", "port", "line", "host_header"),
    [
        (b"http://example.com/a/b?c=d&e", "example.com", 80, b"GET /a/b?c=d&e", b"example.com"),
        (b"http://example.com", "example.com", 80, b"GET /", b"example.com"),
        (b"http://example.com?q", "example.com", 80, b"GET /?q", b"example.com"),
        (b"http://example.com:80/", "example.com", 80, b"GET /", b"example.com"),
        (b"http://Example.COM:8080/x", "Example.COM", 8080, b"GET /x", b"Example.COM:8080"),
        (b"HTTP://example.com/", "example.com", 80, b"GET /", b"example.com"),
        (b"http://example.com:/", "example.com", 80, b"GET /", b"example.com"),
        (b"http://10.0.0.1:81//x", "10.0.0.1", 81, b"GET //x", b"10.0.0.1:81"),
        (b"http://[2001:db8::1]/", "2001:db8::1", 80, b"GET /", b"[2001:db8::1]"),
        (b"http://[::1]:8080/p", "::1", 8080, b"GET /p", b"[::1]:8080"),
    ],
)
def test_forward_request(
    target: bytes, host: str, port: int, line: bytes, host_header: bytes
) -> None:
    got = forward_request(b"GET", target, CLIENT_HEADERS)
    assert got == (
        host,
        port,
        line + b" HTTP/1.1\r\nHost: " + host_header + b"\r\n"
        b"User-Agent: curl/8\r\nAccept: */*\r\nConnection: close\r\n\r\n",
    )


def test_forward_request_keeps_body_framing_and_case() -> None:
    headers = [
        (b"content-TYPE", b"text/plain"),
        (b"Connection", b"Content-Length, Transfer-Encoding, Host"),
        (b"Content-Length", b"5"),
        (b"Transfer-Encoding", b"chunked"),
    ]
    _, _, head = forward_request(b"POST", b"http://h/", headers)
    assert head == (
        b"POST / HTTP/1.1\r\nHost: h\r\ncontent-TYPE: text/plain\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (b"https://example.com/", "https URLs need CONNECT"),
        (b"HTTPS://example.com/", "https URLs need CONNECT"),
        (b"http://alice:s3cret@example.com/", "^userinfo in URL$"),
        (b"http://@example.com/", "userinfo"),
        (b"/relative", "absolute http URL"),
        (b"example.com:80", "absolute http URL"),
        (b"ftp://example.com/", "absolute http URL"),
        (b"http:///path", "no host"),
        (b"http://:80/", "no host"),
        (b"http://[::1/", "authority"),
        (b"http://[::1]x/", "authority"),
        (b"http://::1/", "authority"),
        (b"http://h:0/", "port"),
        (b"http://h:65536/", "port"),
        (b"http://h:8o/", "port"),
        (b"http://h/a b", "character"),
        (b"http://h/a\r\nX: y", "character"),
        (b"http://h\xff/", "character"),
        (b"http://h/#frag", "fragment"),
    ],
)
def test_forward_request_refusals(target: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        forward_request(b"GET", target, [])
    assert b"s3cret" not in str(info.value).encode()


@pytest.mark.parametrize(
    ("method", "headers", "version", "message"),
    [
        (b"GET /", [], b"1.1", "method"),
        (b"", [], b"1.1", "method"),
        (b"GET", [(b"X", b"a\r\nInjected: 1")], b"1.1", "header"),
        (b"GET", [(b"X Y", b"a")], b"1.1", "header"),
        (b"GET", [], b"2", "version"),
        (b"POST", [(b"Transfer-Encoding", b"chunked")], b"1.0", "HTTP/1.0"),
    ],
)
def test_forward_request_refuses_bad_requests(
    method: bytes, headers: list[tuple[bytes, bytes]], version: bytes, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        forward_request(method, b"http://h/", headers, version)


def test_encode_chunk() -> None:
    assert encode_chunk(b"") == b""
    assert encode_chunk(b"hello") == b"5\r\nhello\r\n"
    assert encode_chunk(b"x" * 26) == b"1a\r\n" + b"x" * 26 + b"\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"


def test_proto_is_sans_io() -> None:
    import chainer.proto.http

    for path in Path(chainer.proto.http.__file__).parent.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        imports = r"^\s*(from|import)\s+(anyio|asyncio|socket|trio|chainer)\b"
        assert not re.search(imports, source, re.M), path
        assert not re.search(r"^\s*from\s+\.\.", source, re.M), path
