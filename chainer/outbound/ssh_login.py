"""Setting up one SSH session over a stream chainer built: asyncssh's key exchange, the
host key check and the login, with asyncssh's failures turned into what the blame table
knows (SshDenied, a transport error, HopProtocolError) once, here.

A plain TCP stream (hop 1) hands asyncssh its socket, so the session runs on asyncio's
own transport; any other stream (a tunnel through other hops) is wrapped in a
TunnelTransport (ssh_streams.py) and given to asyncssh as `tunnel=`. asyncssh reads no
ssh_config of its own (`config=[]`: chainer applied the one asked for at load time),
loads no default keys and asks no agent itself: the keys are handed out by `Client`
(ssh_trust.py), so the one that worked is known.
"""

from __future__ import annotations

import asyncio
import getpass
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
import asyncssh
from anyio.abc import ByteStream

from ..errors import HopProtocolError, SshDenied
from ..models import Proxy, SshOptions
from ..relay.sockstream import SockStream
from .ssh_streams import TunnelTransport
from .ssh_trust import Client, display_type, fingerprint, host_key_problem, trusted_keys

__all__ = ["SessionInfo", "close_stream", "login"]

log = logging.getLogger("chainer.ssh")

Keys = list[tuple[asyncssh.SSHKeyPair, str]]
_KEEPALIVE_COUNT = 3  # unanswered keepalives before the session is dropped (ssh's default)
_PREFERRED_AUTH = ("publickey", "keyboard-interactive", "password")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """What `chainer check` shows of a session: no secret, no address."""

    host_key: str  # "ED25519 SHA256:..."
    trusted_by: str  # "known_hosts", "host_key", "nothing (insecure_host_key)"
    auth: str  # "publickey (~/.ssh/id_ed25519)", "password", ...

    def describe(self) -> str:
        return f"host key {self.host_key} ({self.trusted_by}), auth {self.auth}"


async def login(
    stream: ByteStream,
    proxy: Proxy,
    keys: Keys,
    agent_socket: str | None,
    lost: Callable[[Exception | None], None],
) -> tuple[asyncssh.SSHClientConnection, SessionInfo]:
    """An authenticated SSH connection to `proxy` over `stream` (consumed, whatever
    happens). `keys`: the identity files' keys; the agent's (at `agent_socket`) go
    first. `lost` hears when the connection ends."""
    options = proxy.ssh or SshOptions()
    client = Client(list(keys), proxy.password is not None, lost)
    agent: asyncssh.SSHAgentClient | None = None
    trusted = None
    try:
        trusted = trusted_keys(proxy, options)
        if agent_socket:
            agent, agent_keys = await _agent_keys(agent_socket)
            client.keys[:0] = agent_keys
        conn = await _connect(stream, proxy, options, client, trusted)
    except BaseException as exc:
        await close_stream(stream)  # (already closed when asyncssh had it)
        if isinstance(exc, asyncssh.HostKeyNotVerifiable) and trusted is not None:
            raise SshDenied(host_key_problem(proxy, options, client.offered, trusted)) from None
        if isinstance(exc, asyncssh.PermissionDenied):
            raise SshDenied(f"authentication failed (offered {client.attempted()})") from None
        if isinstance(exc, asyncssh.ConnectionLost):
            raise anyio.EndOfStream from None
        if isinstance(exc, asyncssh.Error):
            raise HopProtocolError(f"SSH failed: {exc.reason or type(exc).__name__}") from None
        raise
    finally:
        if agent is not None:
            agent.close()
    host_key = conn.get_server_host_key()
    shown = "" if host_key is None else f"{display_type(host_key)} {fingerprint(host_key)}"
    if trusted is None:
        trusted_by = "NOT CHECKED: insecure_host_key"
        log.warning(
            "ssh hop %s: insecure_host_key: true: host key %s accepted without a check",
            proxy.name,
            shown,
        )
    else:
        trusted_by = "host_key" if options.host_key else "known_hosts"
    return conn, SessionInfo(shown, trusted_by, client.auth)


async def _agent_keys(
    socket_path: str,
) -> tuple[asyncssh.SSHAgentClient | None, list[tuple[asyncssh.SSHKeyPair, str]]]:
    """The agent's keys, and the agent connection they sign through (kept open until
    authentication is over). An agent that cannot be reached is skipped, as ssh does."""
    try:
        agent = await asyncssh.connect_agent(socket_path)
    except (OSError, asyncssh.Error) as exc:
        log.debug("ssh-agent at $SSH_AUTH_SOCK not usable: %s", exc)
        return None, []
    try:
        keys = await agent.get_keys()
    except (OSError, asyncssh.Error, ValueError) as exc:
        log.debug("ssh-agent gave no keys: %s", exc)
        agent.close()
        return None, []
    return agent, [(key, "ssh-agent") for key in keys]


async def _connect(
    stream: ByteStream,
    proxy: Proxy,
    options: SshOptions,
    client: Client,
    trusted: object,
) -> asyncssh.SSHClientConnection:
    """asyncssh over our stream: its socket itself for a plain TCP stream (hop 1), else
    a TunnelTransport over it."""
    settings: dict[str, object] = {
        "username": proxy.username or getpass.getuser(),
        "password": proxy.password,
        "known_hosts": trusted,
        "client_factory": lambda: client,
        "client_keys": None,  # Client.public_key_auth_requested hands them out
        "agent_path": None,
        "preferred_auth": _PREFERRED_AUTH,
        "host_based_auth": False,
        "gss_auth": False,
        "gss_kex": False,
        "keepalive_interval": options.keepalive or 0,
        "keepalive_count_max": _KEEPALIVE_COUNT,
        "x509_trusted_certs": None,
        "config": [],  # ssh_config was read when the table was loaded, if asked for
    }
    host, port = proxy.address.host, proxy.address.port
    if isinstance(stream, SockStream):
        sock = stream.detach()
        try:
            return await asyncssh.connect(host, port, sock=sock, **settings)
        except BaseException:
            sock.close()
            raise
    return await asyncssh.connect(host, port, tunnel=_Tunnel(stream), **settings)


class _Tunnel:
    """What asyncssh's `tunnel=` takes: opens "a connection" by running the protocol
    over the stream we already have."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    async def create_connection(
        self, protocol_factory: Callable[[], asyncio.Protocol], host: str, port: int
    ) -> tuple[asyncio.Transport, asyncio.Protocol]:
        protocol = protocol_factory()
        transport = TunnelTransport(self._stream, protocol)
        transport.start()
        return transport, protocol


async def close_stream(stream: ByteStream) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.aclose_forcefully(stream)
