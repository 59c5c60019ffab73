"""TLS legs that pass a half-close on, as TCP legs do.

How this works. anyio's TLSStream cannot half-close (`send_eof` raises
NotImplementedError), so a tunnel with a TLS leg used to keep the other direction open
until it went quiet. TLS has its own end-of-stream signal, the close_notify alert, and
both TLS 1.3 (RFC 8446 §6.1) and OpenSSL's TLS 1.2 let the side that sent it go on
reading until the peer sends its own. So `send_eof` runs SSL_shutdown once — which
queues close_notify and would then wait for the peer's — treats "wait for the peer" as
done, and flushes the alert; `receive` goes on until the peer's close_notify, which ends
the stream like a TCP FIN. A peer whose TLS stack closes the whole connection on our
close_notify simply ends the other direction too, which is what a TCP peer that reads a
FIN as "close" does as well.

`TLSLeg` wraps anyio's TLSStream and reaches into it once, for the flush
(`_call_sslobject_method`), because the public API has no half-close; tests/test_tls_leg.py
pins that behaviour against the installed anyio.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import ByteStream
from anyio.streams.tls import TLSAttribute, TLSStream

__all__ = ["TLSLeg"]


def _close_notify(ssl_object: ssl.SSLObject) -> None:
    """SSL_shutdown once: the close_notify is queued; not waiting for the peer's."""
    try:
        ssl_object.unwrap()
    except ssl.SSLWantReadError:
        pass


@dataclass(eq=False)
class TLSLeg(ByteStream):
    """A TLS stream whose `send_eof` sends close_notify and keeps reading."""

    tls: TLSStream
    _eof_sent: bool = False

    @classmethod
    async def wrap(
        cls,
        stream: ByteStream,
        *,
        server_side: bool = False,
        hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> TLSLeg:
        tls = await TLSStream.wrap(
            stream,
            server_side=server_side,
            hostname=hostname,
            ssl_context=ssl_context,
            standard_compatible=False,
        )
        return cls(tls)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        try:
            return await self.tls.receive(max_bytes)
        except ssl.SSLZeroReturnError:
            # The peer's close_notify after ours: a clean end of its direction.
            raise anyio.EndOfStream from None

    async def send(self, item: bytes) -> None:
        if self._eof_sent:
            raise anyio.ClosedResourceError
        await self.tls.send(item)

    async def send_eof(self) -> None:
        if self._eof_sent:
            return
        self._eof_sent = True
        ssl_object = self.tls.extra(TLSAttribute.ssl_object)
        await self.tls._call_sslobject_method(_close_notify, ssl_object)

    async def aclose(self) -> None:
        await self.tls.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.tls.extra_attributes
