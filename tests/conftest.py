"""Shared pytest set-up: markers, the anyio backend, and the real-peer fixtures.

Markers (registered in pyproject.toml; ``--strict-markers`` is on):

``interop``
    Needs a real program: a proxy (squid, tinyproxy, dante, microsocks, stunnel) or curl.
    A test that asks for one of the real-proxy fixtures below gets it automatically; a
    test that runs curl (or another binary) itself carries it explicitly, and
    ``ci.check_marked`` fails a test that forgets.
``netns``
    Needs network namespaces (root, ``ip``, ``unshare``).
``slow``
    Takes more than about 2 s: the soak test, the benchmark smoke run, the hypothesis
    fuzzing and random-chunk runs, tests that wait out real timeouts or start a fresh
    interpreter.

Fast inner loop (well under a minute on two cores)::

    python -m pytest -q -m "not slow"

Add ``and not interop and not netns`` on a machine without the real proxies or root.
CI (``.ci/run``) runs everything with ``CHAINER_CI=1``, under which a missing binary,
``ip`` or root is a failure instead of a skip (see ``ci.py``).

The real proxies and loopback origins live in ``realproxies.py`` (see its docstring for
the list); ``netns.py`` builds the namespaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import ci
import pytest
from realproxies import (
    ca,
    ca_pem,
    danted,
    microsocks,
    microsocks_auth,
    plain_origin,
    spawn_process,
    squid,
    stunnel_https_proxy,
    tinyproxy,
    tls_origin,
)

__all__ = [
    "anyio_backend",
    "ca",
    "ca_pem",
    "danted",
    "microsocks",
    "microsocks_auth",
    "plain_origin",
    "spawn_process",
    "squid",
    "stunnel_https_proxy",
    "tinyproxy",
    "tls_origin",
]

# A test that asks for one of these runs a real program, whether or not it says so.
_FIXTURE_MARKS = {
    "tinyproxy": "interop",
    "squid": "interop",
    "stunnel_https_proxy": "interop",
    "microsocks": "interop",
    "microsocks_auth": "interop",
    "danted": "interop",
    "segmented_network": "netns",
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        names = getattr(item, "fixturenames", ())
        for marker in sorted({_FIXTURE_MARKS[n] for n in names if n in _FIXTURE_MARKS}):
            if item.get_closest_marker(marker) is None:
                item.add_marker(marker)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    ci.set_current(item)
    try:
        return (yield)
    finally:
        ci.set_current(None)
