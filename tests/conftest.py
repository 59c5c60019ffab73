"""Shared pytest fixtures: real proxies (squid, tinyproxy, stunnel, dante, microsocks)
and loopback origins. They live in ``realproxies.py``; see its docstring for the list."""

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
