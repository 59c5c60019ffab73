"""chainer.proto.forward.ResponseStartReader: the first head of the answer to a forwarded
request, fed whole, byte by byte and in random chunks; nothing consumed."""

from __future__ import annotations

import pytest
from chunking import bytewise, random_chunks, whole
from hypothesis import given
from hypothesis import strategies as st

from chainer.proto import NEED_DATA, ProtocolError
from chainer.proto.forward import ResponseStart, ResponseStartReader


def feed(chunks: list[bytes], eof: bool = False) -> tuple[object, bytes]:
    """The reader's verdict (a ResponseStart, NEED_DATA, or the ProtocolError text)."""
    reader = ResponseStartReader(max_head=256)
    event: object = NEED_DATA
    for chunk in [*chunks, *([b""] if eof else [])]:
        reader.receive_data(chunk)
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            return f"error: {exc}", reader.trailing_data
        if event is not NEED_DATA:
            break
    return event, reader.trailing_data


ANSWERS = {
    "ok": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    "not-found": b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nbody",
    "http10": b"HTTP/1.0 502 Bad Gateway\r\n\r\n",
}
STATUS = {"ok": 200, "not-found": 404, "interim": 100, "http10": 502}


@pytest.mark.parametrize("name", ANSWERS)
@pytest.mark.parametrize("cut", [whole, bytewise])
def test_a_head_is_a_start_and_every_byte_is_kept(name: str, cut: object) -> None:
    data = ANSWERS[name]
    event, kept = feed(cut(data))  # type: ignore[operator]
    assert event == ResponseStart(STATUS[name])
    assert data.startswith(kept)
    assert len(kept) >= data.index(b"\r\n\r\n") + 4


@given(st.sampled_from(sorted(ANSWERS)), st.data())
def test_random_chunks(name: str, draw: st.DataObject) -> None:
    data = ANSWERS[name]
    event, kept = feed(random_chunks(draw, data))
    assert event == ResponseStart(STATUS[name])
    assert data.startswith(kept)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n", "not an HTTP response"),
        (b"\x16\x03\x01", "not an HTTP response"),
        (b"HTTP/1.1 2x0 OK\r\n", "not an HTTP response"),
        (b"HTTP/2 200\r\n", "not an HTTP response"),
    ],
)
def test_garbage_is_refused_on_its_first_bad_byte(data: bytes, error: str) -> None:
    for cut in (whole, bytewise):
        event, _ = feed(cut(data))
        assert isinstance(event, str)
        assert event.startswith(f"error: {error}"), event


def test_eof_before_and_inside_the_head() -> None:
    assert feed([], eof=True)[0] == "error: closed without answering"
    event, _ = feed([b"HTTP/1.1 200 OK\r\n"], eof=True)
    assert event == "error: closed inside the response head after 17 bytes"


def test_a_head_over_the_limit() -> None:
    event, _ = feed([b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"a" * 300 + b"\r\n"])
    assert event == "error: response head over 256 bytes"
