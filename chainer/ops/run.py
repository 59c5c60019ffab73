"""`chainer run -- CMD` and `chainer env`: one command's traffic through the route table.

How this works. Without `--via`, the route table's server runs in this process on one
listener of its own, 127.0.0.1 on a port the kernel picks: the table's `listen:` and
`admin:` are not used, so `chainer run` works beside a `chainer serve` of the same file.
Once it listens, CMD starts with the proxy variables pointing at it (`proxy_variables`)
and chainer's own stdin, stdout and stderr, in chainer's process group (so a terminal's
Ctrl-C and job control reach it as usual). The signals chainer itself receives (HUP,
INT, QUIT, TERM, USR1, USR2, WINCH) are passed on to CMD, which decides what they mean;
chainer keeps routing until CMD has ended. Only when both run in a terminal's
foreground are INT, QUIT and WINCH not passed on: the terminal sends those to the
whole group, so CMD has them already, and a second Ctrl-C could cut its clean-up short.
When CMD ends, the router stops at once, closing whatever tunnels CMD left open, and
chainer exits with CMD's status — 128+N when CMD was killed by signal N, as a shell
reports it. With `--via URL` a running instance is used and nothing is started here.
"""

from __future__ import annotations

import dataclasses
import shlex
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

import anyio
from anyio.abc import Process

from ..errors import BadTarget
from ..models import Address, Config, Listener
from ..relay import RelayOptions
from ..router import Router
from ..routing.target import parse_authority
from ..server.server import Server

__all__ = [
    "FORWARDED_SIGNALS",
    "ProxyEndpoint",
    "child_environment",
    "export_lines",
    "listener_endpoint",
    "parse_via",
    "proxy_variables",
    "run_command",
]

TERMINAL_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH)
FORWARDED_SIGNALS = (
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)
NO_PROXY = ("no_proxy", "NO_PROXY")
_LOOPBACK_FOR = {"0.0.0.0": "127.0.0.1", "::": "::1"}


@dataclass(frozen=True, slots=True)
class ProxyEndpoint:
    """Where a client finds chainer. `userinfo` is `user:password@` as written in the
    --via URL (percent-encoded), or empty; it is never shown in a repr."""

    scheme: Literal["http", "https"]
    address: Address
    userinfo: str = field(default="", repr=False)

    def url(self, scheme: str | None = None) -> str:
        return f"{scheme or self.scheme}://{self.userinfo}{self.address.authority()}"


def parse_via(text: str) -> ProxyEndpoint:
    """`http://[user:pass@]host:port` (also `socks5://`, `socks5h://`: the same port
    speaks both), `https://...` for a TLS listener, or a bare `host:port`. Raises
    BadTarget when it is none of these."""
    if "://" not in text:
        text = f"http://{text}"
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https", "socks5", "socks5h"):
        raise BadTarget(f"--via: not an http, https or socks5 URL: {parts.scheme!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BadTarget("--via: a proxy URL has no path: scheme://host:port")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    address = parse_authority(hostport)
    return ProxyEndpoint(
        "https" if scheme == "https" else "http", address, f"{userinfo}@" if at else ""
    )


def listener_endpoint(listener: Listener) -> ProxyEndpoint:
    """How a client on this machine reaches `listener` (a wildcard address: loopback).
    Raises BadTarget when it cannot be named (port 0) or needs credentials."""
    address = listener.address
    if address.port == 0:
        raise BadTarget(f"the listener {address} has port 0: no fixed port to name; use --via")
    if listener.users:
        raise BadTarget(
            f"the listener {address} needs a login: "
            f"use --via http://USER:PASSWORD@{address.authority()}"
        )
    host = _LOOPBACK_FOR.get(address.host, address.host)
    return ProxyEndpoint("https" if listener.tls else "http", Address(host, address.port))


def proxy_variables(endpoint: ProxyEndpoint) -> dict[str, str]:
    """http_proxy, https_proxy and all_proxy, lower and upper case. all_proxy is
    `socks5h://` (names resolved by chainer, never by the client) unless the listener
    speaks TLS, which has no SOCKS form: then it is the https URL too."""
    web = endpoint.url()
    other = endpoint.url("socks5h") if endpoint.scheme == "http" else web
    variables: dict[str, str] = {}
    for name, value in (("http_proxy", web), ("https_proxy", web), ("all_proxy", other)):
        variables[name] = value
        variables[name.upper()] = value
    return variables


def child_environment(base: Mapping[str, str], variables: Mapping[str, str]) -> dict[str, str]:
    """`base` with the proxy variables set and no_proxy cleared (nothing bypasses)."""
    env = {k: v for k, v in base.items() if k not in NO_PROXY}
    env.update(variables)
    return env


def export_lines(variables: Mapping[str, str]) -> str:
    """Shell lines for `eval "$(chainer env)"`."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in variables.items()]
    lines.append(f"unset {' '.join(NO_PROXY)}")
    return "\n".join(lines) + "\n"


async def run_command(
    argv: Sequence[str],
    base_env: Mapping[str, str],
    *,
    config: Config | None = None,
    via: ProxyEndpoint | None = None,
    relay: RelayOptions | None = None,
    foreground: bool = False,
) -> int:
    """Run `argv` through `via`, or through `config` served here; CMD's exit status.
    `foreground`: chainer is in its terminal's foreground process group (the terminal
    delivers INT, QUIT and WINCH to CMD itself). OSError from starting CMD (not found,
    not executable) passes through."""
    skip = TERMINAL_SIGNALS if foreground else ()
    if via is not None:
        env = child_environment(base_env, proxy_variables(via))
        return await _run_child(argv, env, skip)
    assert config is not None
    own = Listener(Address("127.0.0.1", 0))
    config = dataclasses.replace(config, listeners=(own,), admin=None)
    server = Server(Router(config), grace=0.0, relay=relay)
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve)
        endpoint = ProxyEndpoint("http", Address(*bound[0]))
        env = child_environment(base_env, proxy_variables(endpoint))
        try:
            status = await _run_child(argv, env, skip)
        finally:
            tg.cancel_scope.cancel()  # CMD is done: so is its router
    return status


async def _run_child(argv: Sequence[str], env: Mapping[str, str], skip: Sequence[int] = ()) -> int:
    # Signals are caught before CMD exists, so none can end chainer and orphan CMD.
    with anyio.open_signal_receiver(*FORWARDED_SIGNALS) as signals:
        # Leaving this block waits for CMD; only if chainer itself fails first is CMD
        # killed (anyio's Process.aclose), as its router is gone.
        async with await anyio.open_process(
            list(argv), stdin=None, stdout=None, stderr=None, env=dict(env)
        ) as process:
            async with anyio.create_task_group() as tg:

                async def forward() -> None:
                    async for signum in signals:
                        if signum not in skip:
                            _send(process, signum)

                tg.start_soon(forward)
                code = await process.wait()
                tg.cancel_scope.cancel()
    return 128 - code if code < 0 else code


def _send(process: Process, signum: int) -> None:
    if process.returncode is None:
        try:
            process.send_signal(signal.Signals(signum))
        except ProcessLookupError:  # it has just ended
            pass
