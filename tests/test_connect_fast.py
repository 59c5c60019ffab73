"""The CONNECT fast path (proto/request.py parse_connect_head) reads exactly what h11
reads, or declines: on any head that passed the strict checks, when it answers, h11
answers the same target and fields; when h11 refuses a head, it declines."""

from __future__ import annotations

import h11
from hypothesis import given, settings
from hypothesis import strategies as st

from chainer.proto.request import check_request_head, parse_connect_head

NAMES = [b"Host", b"Proxy-Authorization", b"User-Agent", b"Content-Length", b"X-A", b"x y", b""]
VALUE_BYTES = st.binary(max_size=12) | st.sampled_from(
    [b"example.com:443", b" padded ", b"Basic YWxpY2U6cw==", b"0", b"a\tb", b"\x00", b"\xff"]
)
TARGETS = st.sampled_from(
    [b"example.com:443", b"[2001:db8::1]:443", b"a b", b"", b"x:1\x7f", b"http://x/", b"\xc3\xa9:1"]
) | st.binary(min_size=1, max_size=10)


def h11_reading(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None
    if not isinstance(event, h11.Request) or event.method != b"CONNECT":
        return None
    return event.target, list(event.headers)


@settings(max_examples=400)
@given(
    target=TARGETS,
    version=st.sampled_from([b"1.1", b"1.0", b"2", b"1.1 "]),
    fields=st.lists(st.tuples(st.sampled_from(NAMES), VALUE_BYTES), max_size=4),
)
def test_the_fast_path_agrees_with_h11_or_declines(
    target: bytes, version: bytes, fields: list[tuple[bytes, bytes]]
) -> None:
    head = b"CONNECT " + target + b" HTTP/" + version + b"\r\n"
    head += b"Host: h\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
    if check_request_head(head, 100) is not None:
        return  # refused before either parser sees it
    fast = parse_connect_head(head)
    slow = h11_reading(head)
    if fast is not None:
        assert slow is not None, head
        assert fast == slow, head


def test_a_plain_connect_is_read_by_the_fast_path() -> None:
    head = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\nX-A:  v  \r\n\r\n"
    assert parse_connect_head(head) == (
        b"example.com:443",
        [(b"host", b"example.com:443"), (b"x-a", b"v")],
    )
