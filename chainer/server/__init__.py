"""Serving: listeners, one Connection per client, the owner of spliced tunnels, run and
reload, admin, metrics, logs."""

from .server import Server

__all__ = ["Server"]
