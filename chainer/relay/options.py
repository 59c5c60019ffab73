"""How a server's tunnels move their bytes: chosen by whoever builds the server (cli.py
maps the CHAINER_RELAY environment variable onto it; nothing else reads the
environment)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Literal, get_args

from anyio.abc import ByteStream

from . import splice
from .splice import PipePool

RelayMode = Literal["auto", "splice", "generic"]


def _on_asyncio() -> bool:
    """The fast path drives asyncio's loop directly (not available under trio)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class RelayOptions:
    """mode: "auto" splices wherever both legs are plain sockets and the platform has
    splice(2); "splice" is the same but refuses to be built without splice(2); "generic"
    never splices (for comparisons and tests). pipes: the pool spliced tunnels borrow
    their pipes from."""

    mode: RelayMode = "auto"
    pipes: PipePool = field(default_factory=PipePool, compare=False)

    def __post_init__(self) -> None:
        if self.mode not in get_args(RelayMode):
            raise ValueError(f"relay mode must be one of {get_args(RelayMode)}, not {self.mode!r}")
        if self.mode == "splice" and not splice.AVAILABLE:
            raise ValueError("relay mode 'splice' needs Linux splice(2)")

    def can_splice(self, client: ByteStream, upstream: ByteStream) -> bool:
        """Both legs are plain sockets and the fast path is on."""
        return (
            self.mode != "generic"
            and splice.AVAILABLE
            and _on_asyncio()
            and splice.can_detach(client)
            and splice.can_detach(upstream)
        )
