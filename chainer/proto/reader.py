"""What every answer reader in `proto/` shares: the `NEED_DATA` sentinel, `ProtocolError`,
and `Reader`, the base that takes bytes in and keeps the bookkeeping.

How this works. A reader owns one buffer of everything the peer sent and a read position
(`_pos`): the bytes before it belong to messages already parsed, the bytes after it are
`trailing_data`. A subclass implements `_step`, which parses from `_pos` and returns one
event (or `NEED_DATA`); it never deletes what it has not consumed, so nothing that arrived
early is lost. The base makes the contract hold the same way for every reader:
`receive_data(b"")` is EOF and data after it is a caller's bug; a `ProtocolError` is
sticky (every later `next_event` raises it again); once `_finish` records the final event,
`next_event` repeats it and `receive_data` refuses more bytes, because those belong to
whatever reads the connection next.
"""

from __future__ import annotations

from enum import Enum
from typing import ClassVar, Final, Generic, TypeVar

__all__ = ["NEED_DATA", "NeedData", "ProtocolError", "Reader", "quote"]


class ProtocolError(ValueError):
    """The peer sent something that is not a valid answer in the protocol spoken to it."""


class NeedData(Enum):
    """Feed more bytes (or EOF) before asking again.

    A one-member enum rather than a dataclass so that `event is NEED_DATA` narrows the
    event's type for mypy, as h11's sentinels do.
    """

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA

_QUOTE_MAX = 60


def quote(data: bytes | str) -> str:
    """`data` for an error message: its repr, cut after 60 bytes or characters."""
    return repr(data[:_QUOTE_MAX]) + ("..." if len(data) > _QUOTE_MAX else "")


_E = TypeVar("_E")


class Reader(Generic[_E]):
    """Bytes in, a read position, EOF, a sticky error and a final event.

    `_E` is the type `next_event` returns, `NEED_DATA` included.
    """

    __slots__ = ("_buf", "_eof", "_error", "_final", "_pos")

    # The start of the RuntimeError for bytes fed after the final event.
    _complete: ClassVar[str] = "the answer is complete"

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0  # bytes of _buf consumed by the messages parsed so far
        self._eof = False
        self._error: str | None = None
        self._final: _E | None = None

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; `b""` means the peer closed its side."""
        if self._final is not None:
            raise RuntimeError(f"{self._complete}: later bytes belong to the next stage")
        if self._eof:
            if data:
                raise RuntimeError("data after EOF")
            return
        if data:
            self._buf += data
        else:
            self._eof = True

    @property
    def trailing_data(self) -> bytes:
        """Bytes received and not consumed by an event.

        After the final event, the first bytes of whatever reads the connection next.
        """
        return bytes(self._buf[self._pos :])

    def next_event(self) -> _E:
        """The next event; `NEED_DATA` until there is one. Repeats the final event."""
        if self._final is not None:
            return self._final
        if self._error is not None:
            raise ProtocolError(self._error)
        try:
            return self._step()
        except ProtocolError as exc:
            self._error = str(exc)
            raise

    def _step(self) -> _E:
        """Parse from `_pos`: one event, or `NEED_DATA`."""
        raise NotImplementedError

    def _finish(self, event: _E, end: int) -> _E:
        """Record `event` as the final one, which consumed the bytes up to `end`."""
        self._final = event
        self._pos = end
        return event

    def _have(self, n: int, what: str) -> bool:
        """Whether the current message's first `n` bytes are here; raises at EOF if not."""
        available = len(self._buf) - self._pos
        if available >= n:
            return True
        if self._eof:
            raise ProtocolError(self._closed(available, what))
        return False

    def _closed(self, available: int, what: str) -> str:
        """The error for EOF with `available` bytes of the `what` message."""
        raise NotImplementedError
