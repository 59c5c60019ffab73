"""Relay options are constructor arguments; only cli.py reads CHAINER_RELAY."""

from __future__ import annotations

import socket

import pytest

from chainer import commands
from chainer.relay import RelayOptions, splice
from chainer.relay.sockstream import SockStream

pytestmark = pytest.mark.anyio


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="relay mode must be one of"):
        RelayOptions(mode="fast")  # type: ignore[arg-type]


@pytest.mark.parametrize(("env", "mode"), [(None, "auto"), ("generic", "generic"), ("x", "auto")])
def test_cli_maps_chainer_relay(
    monkeypatch: pytest.MonkeyPatch, env: str | None, mode: str
) -> None:
    if env is None:
        monkeypatch.delenv("CHAINER_RELAY", raising=False)
    else:
        monkeypatch.setenv("CHAINER_RELAY", env)
    assert commands.relay_options().mode == mode


@pytest.mark.parametrize(("mode", "splices"), [("auto", True), ("generic", False)])
async def test_the_mode_decides_whether_plain_sockets_splice(mode: str, splices: bool) -> None:
    if not splice.AVAILABLE:
        pytest.skip("splice(2) is Linux-only")
    a, b = socket.socketpair()
    async with SockStream(a) as left, SockStream(b) as right:
        assert RelayOptions(mode=mode).can_splice(left, right) is splices  # type: ignore[arg-type]


def test_each_server_gets_its_own_pipe_pool() -> None:
    assert RelayOptions().pipes is not RelayOptions().pipes
