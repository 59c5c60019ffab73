"""Durations as written in routes.yaml: `250ms`, `5s`, `2m`, `1h`, or bare seconds."""

from __future__ import annotations

import math
import re

__all__ = ["parse_duration"]

_DURATION = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?$")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds, > 0 and finite. Raises ValueError with a message naming what was wrong."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r} (write e.g. 250ms, 5s, 2m, 1h)")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError("duration too large") from None
    elif isinstance(value, str):
        m = _DURATION.match(value.strip())
        if m is None:
            shown = repr(value[:40])
            raise ValueError(f"not a duration: {shown} (write e.g. 250ms, 5s, 2m, 1h)")
        seconds = float(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("a duration must be a number or a string like 5s")
    if math.isnan(seconds):
        raise ValueError("duration is not a number")
    if math.isinf(seconds):
        raise ValueError("duration must be finite")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds
