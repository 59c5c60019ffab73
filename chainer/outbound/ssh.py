"""SSH hops: one SSH session per (path to it, hop), shared by every tunnel through it.

How this works. An SSH hop is reached like any other — TCP for hop 1, a request to the
previous hop for an inner one — and then an SSH session is set up over that stream
(asyncssh: key exchange, host key check, authentication; `ssh_login.py`, `ssh_trust.py`).
The session is kept in `SshSessions` under its key, (the proxies of the path to it, the
hop), and every later tunnel through that hop costs one `direct-tcpip` channel open on
it, one round trip (`open_channel`): the next hop, or the destination, is asked for by
name and the SSH server connects to it. Until a tunnel asks, "having reached the hop" is an
`SshReached` (a stand-in stream that holds the session).

Sessions are built once: while one connection builds the session for a key, the others
wait for it (`SshSessions.wait`) instead of opening their own; if the builder fails at
the hop itself they share its failure, if it gives up for any other reason one of them
builds. A session holds a count of its users (channels and SshReached stand-ins); with
none for `session_idle` it is closed. asyncssh sends keepalives (`keepalive`) and a
session whose connection drops — keepalives unanswered, the server gone — leaves the
pool at once, so the next tunnel builds a new one; a tunnel that finds a session dead
when it opens its channel (the drop not yet noticed) rebuilds it once (steps.py).

asyncssh is asyncio-only: chainer runs on anyio's asyncio backend. A session's work
(asyncssh's own tasks, the pump of a `TunnelTransport`) belongs to its connection and
ends with it; the pool closes every session when it is closed (`aclose`, called by the
server at shutdown and by `Router.aclose`).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Sequence

import anyio
import asyncssh
from anyio.abc import ByteStream

from ..errors import HopAnswer, HopError, HopProtocolError
from ..models import Address, HopGroup, Proxy, SshOptions
from .ssh_login import SessionInfo, close_stream, login
from .ssh_streams import ChannelStream
from .ssh_trust import load_identities

__all__ = [
    "SessionInfo",
    "SessionKey",
    "SessionLost",
    "SshReached",
    "SshSessions",
    "insecure_host_keys",
    "open_channel",
]

log = logging.getLogger("chainer.ssh")

SessionKey = tuple[tuple[Proxy, ...], Proxy]
_CLOSE_WAIT = 2.0  # seconds aclose() waits for sessions to close


class SessionLost(anyio.BrokenResourceError):
    """The session was found closed when a channel was to be opened on it. `warm`: it
    was set up before this tunnel came (its loss is nobody's fault: rebuild it once)."""

    def __init__(self, warm: bool) -> None:
        super().__init__("SSH session lost")
        self.warm = warm


class Session:
    """One SSH connection, shared; closed after `idle` seconds without users."""

    def __init__(
        self,
        pool: SshSessions,
        key: SessionKey,
        conn: asyncssh.SSHClientConnection,
        info: SessionInfo,
        idle: float,
    ) -> None:
        self.pool = pool
        self.key = key
        self.conn = conn
        self.info = info
        self.idle = idle
        self.users = 0
        self.closed = False
        self.retired = False  # out of the pool (its hop changed): closes with its last user
        self._timer: asyncio.TimerHandle | None = None
        self._arm()

    @property
    def name(self) -> str:
        return self.key[1].name

    def lease(self) -> None:
        self.users += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0 and not self.closed:
            if self.retired:
                self.close("its hop changed")
            else:
                self._arm()

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.idle, self.close, "idle")

    def close(self, why: str) -> None:
        if self.closed:
            return
        log.debug("ssh session of %s closed: %s", self.name, why)
        self._gone()
        self.conn.close()

    def lost(self, exc: Exception | None) -> None:
        """asyncssh says the connection has ended."""
        if not self.closed:
            reason = str(exc) if exc is not None else "closed"
            log.info("ssh session of %s ended: %s", self.name, reason)
            self._gone()

    def _gone(self) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pool._drop(self)


class SshReached(ByteStream):
    """An SSH hop reached: a session ready to open channels. Not a byte stream — the
    next step asks it for a channel (`open_channel`) — but it travels where the dialer
    carries streams, and closing it lets go of the session."""

    def __init__(self, session: Session, warm: bool) -> None:
        self.session = session
        self.warm = warm  # the session was there before this tunnel came
        self._held = True
        session.lease()

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise anyio.BrokenResourceError("an SSH hop carries data only in channels")

    async def send(self, item: bytes) -> None:
        raise anyio.BrokenResourceError("an SSH hop carries data only in channels")

    async def send_eof(self) -> None:
        raise anyio.BrokenResourceError("an SSH hop carries data only in channels")

    async def aclose(self) -> None:
        self.close()
        await anyio.lowlevel.checkpoint()

    def close(self) -> None:
        if self._held:
            self._held = False
            self.session.release()


async def open_channel(stream: ByteStream, target: Address) -> ByteStream:
    """A `direct-tcpip` channel to `target` on the session `stream` (an SshReached)
    holds. Raises HopAnswer (carrying the session, which survives) when the server
    refuses, SessionLost when the session is gone. The SshReached is kept: the caller
    closes it."""
    if not isinstance(stream, SshReached):
        raise HopProtocolError("an SSH hop was asked without its session")
    session = stream.session
    if session.closed:
        raise SessionLost(stream.warm)
    session.lease()
    try:
        reader, writer = await session.conn.open_connection(target.host, target.port)
    except asyncssh.ChannelOpenError as exc:
        session.release()
        if session.closed or exc.reason == "SSH connection closed":
            session.close("lost")
            raise SessionLost(stream.warm) from None
        raise _refused(exc, stream) from None
    except (asyncssh.Error, OSError) as exc:
        session.release()
        session.close(f"lost: {exc}")  # out of the pool: the next tunnel builds anew
        raise SessionLost(stream.warm) from exc
    except BaseException:
        session.release()
        raise
    return ChannelStream(reader, writer, session.release)


def _refused(exc: asyncssh.ChannelOpenError, stream: SshReached) -> HopAnswer:
    text = f"channel refused: {exc.reason}" if exc.reason else "channel refused"
    if exc.code == asyncssh.OPEN_CONNECT_FAILED:
        kind = "unreachable"
    elif exc.code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED:
        kind = "prohibited"
        text = f"channel administratively prohibited: {exc.reason}".rstrip(": ")
    else:  # unknown channel type, resource shortage: the server's own trouble
        kind = "failed"
    return HopAnswer(kind, exc.code, text, stream)


class _Build:
    """One connection setting up the session for a key; the others wait for it."""

    def __init__(self) -> None:
        self.finished = anyio.Event()
        self.session: Session | None = None
        self.error: HopError | None = None


class SshSessions:
    """The live SSH sessions of one router (kept across reloads by the server)."""

    def __init__(self, agent_socket: str | None = None) -> None:
        self.agent_socket = agent_socket  # the ssh-agent, for hops with `agent: true`
        self._sessions: dict[SessionKey, Session] = {}
        self._building: dict[SessionKey, _Build] = {}
        self._identities: dict[SshOptions, list[tuple[asyncssh.SSHKeyPair, str]]] = {}
        self._retired: set[Session] = set()
        asyncssh_log = logging.getLogger("asyncssh")
        if asyncssh_log.level == logging.NOTSET:
            # asyncssh narrates every connection at INFO, user names included.
            asyncssh_log.setLevel(logging.WARNING)

    @classmethod
    def from_environment(cls) -> SshSessions:
        """Sessions that use the ssh-agent at $SSH_AUTH_SOCK, as ssh does."""
        return cls(os.environ.get("SSH_AUTH_SOCK") or None)

    # -- lookups --------------------------------------------------------------------------

    def live(self, path: Iterable[Proxy], proxy: Proxy) -> Session | None:
        session = self._sessions.get((tuple(path), proxy))
        return None if session is None or session.closed else session

    def carries(self, prefix: Sequence[Proxy], hops: Sequence[HopGroup]) -> bool:
        """Does a live session of a later SSH hop of this chain (`hops`) run through
        exactly these first nodes? Then reaching them can wait: that hop's tunnels need
        none of them."""
        nodes = tuple(prefix)
        for (path, hop), session in self._sessions.items():
            if session.closed or len(path) < len(nodes) or len(path) >= len(hops):
                continue
            if path[: len(nodes)] != nodes or hop not in hops[len(path)].candidates:
                continue
            if all(path[i] in hops[i].candidates for i in range(len(nodes), len(path))):
                return True
        return False

    def info(self, path: Iterable[Proxy], proxy: Proxy) -> SessionInfo | None:
        session = self.live(path, proxy)
        return None if session is None else session.info

    def count(self) -> int:
        return sum(not s.closed for s in self._sessions.values())

    # -- building -------------------------------------------------------------------------

    def building(self, key: SessionKey) -> bool:
        return key in self._building

    async def wait(self, key: SessionKey) -> Session | None:
        """The session another connection is building for `key`; None when it gave up
        without a failure of the hop (build it yourself). Raises the builder's failure
        when that was the hop's own."""
        build = self._building.get(key)
        if build is None:
            return self.live(*key)
        await build.finished.wait()
        if build.error is not None:
            raise _again(build.error)
        return build.session

    def claim(self, key: SessionKey) -> _Build:
        build = _Build()
        self._building[key] = build
        return build

    def settle(self, key: SessionKey, build: _Build) -> None:
        if self._building.get(key) is build:
            del self._building[key]
        build.finished.set()

    async def handshake(self, stream: ByteStream, key: SessionKey) -> Session:
        """A new session for `key` over `stream` (consumed, whatever happens): key
        exchange, host key check, login (ssh_login.py). Raises SshDenied (host key,
        credentials), a transport error, or HopProtocolError (the SSH protocol failed)."""
        proxy = key[1]
        options = proxy.ssh or SshOptions()
        session: list[Session] = []
        try:
            keys = await self._keys(options)
        except BaseException:
            await close_stream(stream)
            raise
        agent = self.agent_socket if options.agent else None
        conn, info = await login(stream, proxy, keys, agent, lambda exc: _lost(session, exc))
        session.append(Session(self, key, conn, info, options.session_idle))
        if conn.is_closed():  # it ended while we were not looking
            session[0].lost(None)
        else:
            old = self._sessions.get(key)
            if old is not None and not old.closed:
                self._retire(old)
            self._sessions[key] = session[0]
        log.debug("ssh session of %s up: %s", proxy.name, info.describe())
        return session[0]

    async def _keys(self, options: SshOptions) -> list[tuple[asyncssh.SSHKeyPair, str]]:
        if not options.identities:
            return []
        keys = self._identities.get(options)
        if keys is None:
            keys = await anyio.to_thread.run_sync(load_identities, options)
            self._identities[options] = keys
        return list(keys)

    # -- ending ---------------------------------------------------------------------------

    def _drop(self, session: Session) -> None:
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        self._retired.discard(session)

    def _retire(self, session: Session) -> None:
        """Out of the pool; closed once its last user lets go."""
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        session.retired = True
        if session.users <= 0:
            session.close("replaced")
        else:
            self._retired.add(session)

    def forget(self, names: set[str]) -> None:
        """Hops whose definition changed (or that are gone): their sessions, and those
        reached through them, take no new tunnels and close with their last one."""
        if not names:
            return
        for key, session in list(self._sessions.items()):
            path, proxy = key
            if proxy.name in names or any(p.name in names for p in path):
                self._retire(session)

    async def aclose(self) -> None:
        """Close every session (live tunnels through them end)."""
        sessions = [*self._sessions.values(), *self._retired]
        for session in sessions:
            session.close("shutting down")
        with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_WAIT):
            for session in sessions:
                await session.conn.wait_closed()


def insecure_host_keys(proxies: Iterable[Proxy]) -> None:
    """Say, at every start and reload, which SSH hops check no host key."""
    for proxy in proxies:
        if proxy.ssh is not None and proxy.ssh.insecure_host_key:
            log.warning(
                "ssh hop %s: insecure_host_key: true: its host key is not checked"
                " (anyone on the way can pose as it)",
                proxy.name,
            )


def _lost(session: list[Session], exc: Exception | None) -> None:
    if session:
        session[0].lost(exc)


def _again(error: HopError) -> HopError:
    """A copy of another connection's failure, to be recorded as this one's own."""
    copy = type(error)(
        error.index,
        error.hop,
        error.phase,
        error.reason,
        status=error.status,
        proxy_status=error.proxy_status,
        denied=error.denied,
        generic=error.generic,
        address=error.address,
    )
    return copy
