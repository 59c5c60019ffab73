"""Moving a tunnel's bytes: sockets as streams, the generic relay, the splice fast path."""

from .options import RelayMode, RelayOptions
from .result import RelayResult
from .splice import PipePool

__all__ = ["PipePool", "RelayMode", "RelayOptions", "RelayResult"]
