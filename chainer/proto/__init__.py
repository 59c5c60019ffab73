"""Sans-I/O codecs for the protocols chainer speaks to its hops and clients.

How this works: a codec never touches a socket. Requests are built as bytes; answers are
parsed by readers that take bytes in (`receive_data`, `b""` for EOF) and hand events out
(`next_event`), in the style of h11. The caller owns the I/O and the clock, so the same
code runs over TCP, over TLS, or inside a tunnel through another hop. A reader consumes
exactly one answer: whatever arrived after it is left in `trailing_data` for the next
stage. That bookkeeping (buffer, EOF, sticky error, final event) is `reader.Reader`, the
base of every reader here. Nothing here imports anyio, asyncio, socket or ssl, nor the
rest of chainer.
"""

from .forward import LAST_CHUNK, encode_chunk, forward_request
from .http import ConnectResponseReader, Established, Refused, basic_authorization, connect_request
from .reader import NEED_DATA, NeedData, ProtocolError

__all__ = [
    "LAST_CHUNK",
    "NEED_DATA",
    "ConnectResponseReader",
    "Established",
    "NeedData",
    "ProtocolError",
    "Refused",
    "basic_authorization",
    "connect_request",
    "encode_chunk",
    "forward_request",
]
