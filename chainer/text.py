"""Small text helpers every layer shares: durations (parsed and shown), milliseconds,
the words for a transport error, and text made safe to print.

Nothing here does I/O; it sits below every other module of chainer.
"""

from __future__ import annotations

import math
import os
import re
import socket

__all__ = [
    "READ_SIZE",
    "cannot_listen",
    "fmt_ms",
    "fmt_seconds",
    "parse_duration",
    "plural",
    "printable",
    "transport_reason",
]

# One receive() while reading a request or a hop's answer: larger than any head we accept.
READ_SIZE = 65536

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?$")
# Go-style compounds, largest unit first: 1m30s, 1h15m, 2s500ms.
_COMPOUND = re.compile(r"^(?:[0-9]+(?:\.[0-9]+)?(?:ms|h|m|s))+$")
_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|h|m|s)")
_ORDER = {"h": 0, "m": 1, "s": 2, "ms": 3}
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


def parse_duration(value: object) -> float:
    """Seconds, > 0 and finite. Raises ValueError with a message naming what was wrong."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} (write e.g. 250ms, 5s, 1m30s, 1h)")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("duration too large") from None
    elif isinstance(value, str):
        text = value.strip()
        m = _DURATION.match(text)
        if m is not None:
            seconds = float(m.group(1)) * _UNITS[m.group(2)]
        elif _COMPOUND.match(text):
            parts = _PART.findall(text)
            ranks = [_ORDER[unit] for _, unit in parts]
            if ranks != sorted(set(ranks)):
                raise ValueError(f"not a duration: {value[:40]!r} (units largest first, once each)")
            seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
        else:
            shown = repr(value[:40])
            raise ValueError(f"not a duration: {shown} (write e.g. 250ms, 5s, 1m30s, 1h)")
    else:
        raise ValueError("a duration must be a number or a string like 5s")
    if math.isnan(seconds):
        raise ValueError("duration is not a number")
    if math.isinf(seconds):
        raise ValueError("duration must be finite")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def fmt_seconds(seconds: float) -> str:
    """A duration the way routes.yaml writes one: 250ms, 5s, 2m."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:g}s" if seconds < 120 else f"{seconds / 60:g}m"


def fmt_ms(seconds: float | None, *, missing: str = "") -> str:
    """Milliseconds with one decimal below 10 ms, whole above; `missing` for None."""
    if seconds is None:
        return missing
    ms = seconds * 1000
    return f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms"


def printable(text: str) -> str:
    """Text from elsewhere (a client, an upstream's answer) with every control character
    replaced by '?', so it can never start a new log line or move a terminal's cursor."""
    return _UNPRINTABLE.sub("?", text)


def transport_reason(exc: BaseException) -> str:
    """A failed socket operation in a few words: `connection refused`, `connection reset`,
    `name not resolved (...)`. Follows chained OSErrors to the one that says most."""
    # Imported here: anyio is a dependency of every layer but this module's callers at the
    # bottom (config, proto helpers) must not need it just to format a duration.
    import anyio

    if isinstance(exc, anyio.EndOfStream):
        return "connection closed"
    if isinstance(exc, anyio.BrokenResourceError):
        return "connection reset"
    while exc.__cause__ is not None and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror or exc})"
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


def cannot_listen(exc: OSError, where: str, what: str) -> OSError:
    """A bind failure that says which address and what it was for: `cannot listen on
    127.0.0.1:8080 (a listener): address already in use`."""
    error = OSError(f"cannot listen on {where} ({what}): {transport_reason(exc)}")
    error.errno = exc.errno
    error.__cause__ = exc
    return error


def plural(count: int, word: str, many: str | None = None) -> str:
    """`1 route`, `2 routes`, `0 proxies`."""
    return f"{count} {word}" if count == 1 else f"{count} {many or word + 's'}"
