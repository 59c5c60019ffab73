"""Shared pytest fixtures: the anyio backend, real proxies (squid, tinyproxy, stunnel, dante,
microsocks) and loopback origins. The real peers live in ``realproxies.py`` (see its
docstring for the list); ``ci.py`` holds the skip-locally, fail-in-CI rule."""

from __future__ import annotations

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


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
