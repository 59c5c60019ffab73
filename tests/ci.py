"""Skip locally, fail in CI: the one rule for a test whose machine lacks something.

Whatever finds a real proxy binary, ``ip``, root or a network namespace missing calls
:func:`unavailable` (``realproxies.require_binary`` and ``netns`` do). On a developer's
machine that skips the test with the reason; with ``CHAINER_CI`` set (``.ci/run`` sets
it) the same gap is a failure, so CI can never go green by skipping what it was meant
to run.

:func:`check_marked` keeps the markers honest: a test that reaches for a real binary
without the ``interop`` marker fails, so ``pytest -m "not interop"`` really leaves out
every test that needs one. ``conftest.py`` tells this module which test is running.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

_current: pytest.Item | None = None


def in_ci() -> bool:
    """``CHAINER_CI`` is set to anything non-empty."""
    return bool(os.environ.get("CHAINER_CI"))


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``; fail instead when ``CHAINER_CI`` is set."""
    if in_ci():
        pytest.fail(f"CHAINER_CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def set_current(item: pytest.Item | None) -> None:
    """Called by ``conftest.py`` around each test (setup to teardown)."""
    global _current
    _current = item


def check_marked(marker: str, what: str) -> None:
    """Fail the running test if it uses ``what`` without carrying ``marker``.

    Outside a test (a session fixture set up for a test that has the marker, a helper
    run by hand) there is nothing to check.
    """
    item = _current
    if item is not None and item.get_closest_marker(marker) is None:
        pytest.fail(
            f"{item.nodeid} uses {what} but is not marked `{marker}`: "
            f"add @pytest.mark.{marker} (see tests/conftest.py)",
            pytrace=False,
        )
