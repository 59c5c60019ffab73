"""Small stream wrappers that carry handshake leftovers on to the next stage."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from anyio.abc import ByteStream

from ..text import READ_SIZE


@dataclass(eq=False, slots=True)
class PrefixedStream(ByteStream):
    """A stream whose first bytes were already read by a handshake.

    A hop's answer can arrive in the same segment as the first bytes of the next stage
    (the next hop's TLS ServerHello, an origin's banner). The reader keeps them here and
    they are returned by the first `receive` calls, before anything new is read.
    """

    inner: ByteStream
    prefix: bytes

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix[:max_bytes], self.prefix[max_bytes:]
            return data
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


def with_prefix(stream: ByteStream, prefix: bytes) -> ByteStream:
    return PrefixedStream(stream, prefix) if prefix else stream
