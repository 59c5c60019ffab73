"""Skip locally, fail in CI: the one rule for a test whose machine lacks something.

Whatever finds a real proxy binary, ``ip``, root or a network namespace missing calls
:func:`unavailable` (``realproxies.require_binary`` and ``netns`` do). On a developer's
machine that skips the test with the reason; with ``CHAINER_CI`` set (``.ci/run`` sets
it) the same gap is a failure, so CI can never go green by skipping what it was meant
to run.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    """``CHAINER_CI`` is set to anything non-empty."""
    return bool(os.environ.get("CHAINER_CI"))


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; fail instead when ``CHAINER_CI`` is set."""
    if in_ci():
        pytest.fail(f"CHAINER_CI is set and {reason}", pytrace=False)
    pytest.skip(reason)
