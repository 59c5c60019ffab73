"""chainer: a proxy-chaining router. Public names only."""

import logging

from .errors import (
    BadTarget,
    ChainerError,
    ChainFailed,
    ConfigError,
    ConfigErrors,
    HopError,
    HopTimeout,
    HopUnreachable,
    Refused,
)
from .models import Address, Config
from .router import Router

__all__ = [
    "Address",
    "BadTarget",
    "ChainFailed",
    "ChainerError",
    "Config",
    "ConfigError",
    "ConfigErrors",
    "HopError",
    "HopTimeout",
    "HopUnreachable",
    "Refused",
    "Router",
]

# A library prints nothing unless the application configures logging (`chainer serve` does).
logging.getLogger("chainer").addHandler(logging.NullHandler())
