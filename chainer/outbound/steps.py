"""The steps a chain is built from, one hop at a time, each under its limits.

How this works. A step is one wait: TCP to hop 1 (or to the destination for a `direct`
route), TLS to an https hop, or a request to the last hop reached — for the next hop or
for the destination. Each runs under one cancel scope whose deadline is the earliest of
the limits that apply to it; each limit carries the `Where` of the hop it blames, so the
limit that fires names its hop (hop k+1's connect_timeout runs through hop k's answer and
the TLS after it: "not reached through hop k"). Anything else that interrupts a step goes
through the blame table once (`blame.py`). Steps know nothing of failover or health:
they raise the HopError, and the dialer decides whom to charge and what to try next.

Two signals are not failures. `Stale`: a connection kept from a failed request was
closed by the hop before it answered the next one; reconnect and ask again. `Survived`:
a hop answered a failure about the next hop and kept its connection, which comes with
the error so the next candidate can be asked over it (failover in place).

An SSH hop is reached in two steps: the stream to it (as for any hop), then its session
(phase ssh: key exchange, host key, authentication) — unless a session for the same
path and hop is already up, which is then used as it is and no stream to it is built at
all (`_reach_ssh`). Asking it is a channel open on its session. A shared session found
dead when a tunnel asks it (dropped since it was last used) is rebuilt once, through the
same path, and asked again: nobody's fault (`_ask`).

Every step consumes the stream it is given: on any exit but success it is closed,
cancellation included.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import ByteStream

from ..errors import ChainFailed, HopAnswer, HopError
from ..models import Address, Proxy
from . import connectors, tcp
from .blame import DeadlineExceeded, Expired, Where, blame, lost_kept_connection
from .limits import (
    Deadline,
    Forward,
    HopTrace,
    Limit,
    Stale,
    Survived,
    bounded,
    close_now,
    translated,
)
from .resolve import SYSTEM, Resolver
from .ssh import SessionLost, SshReached, SshSessions

__all__ = [
    "Deadline",
    "Forward",
    "HopTrace",
    "Stale",
    "Survived",
    "ask_destination",
    "close_now",
    "direct",
    "forward",
    "probe",
    "reach",
    "reach_path",
]


async def direct(
    target: Address,
    screen: tcp.Screen | None,
    connect: float,
    deadline: Deadline,
    resolver: Resolver = SYSTEM,
    mark: int | None = None,
) -> ByteStream:
    """TCP to the destination itself (a `direct` route), within `connect` seconds."""
    where = Where(0, "direct", "connect", str(target))
    limits = [Limit(anyio.current_time() + connect, Expired(connect), where), deadline.limit(where)]
    return await translated(limits, where, lambda: tcp.open_direct(target, screen, resolver, mark))


async def reach(
    prev: ByteStream | None,
    path: Sequence[Proxy],
    proxy: Proxy,
    deadline: Deadline,
    *,
    reused: bool = False,
    resolver: Resolver = SYSTEM,
    sessions: SshSessions | None = None,
    mark: int | None = None,
) -> ByteStream:
    """A stream to `proxy`, ready for its request: TCP for hop 1, else a request to
    path[-1] over `prev` (kept from a failed request when `reused`); then TLS for an https
    hop, or the session of an ssh hop. All of it within the proxy's connect_timeout.
    Consumes `prev`, which may be None for an ssh hop (its session may need none; if it
    does, the path is rebuilt)."""
    index = len(path) + 1
    previous = path[-1].name if path else ""
    blamed = Where(index, proxy.name, "connect", proxy.describe(), previous)
    reach_limit = Limit(
        anyio.current_time() + proxy.connect_timeout, Expired(proxy.connect_timeout), blamed
    )
    if proxy.scheme == "ssh":
        assert sessions is not None, "an ssh hop needs the router's SshSessions"
        means = _Means(resolver, sessions, mark)
        return await _reach_ssh(prev, path, proxy, deadline, reach_limit, reused, means)
    stream: ByteStream | None = None
    try:
        if not path:
            stream = await translated(
                [reach_limit, deadline.limit(blamed)],
                blamed,
                lambda: tcp.open_tcp(proxy.address, resolver, mark),
            )
        else:
            assert prev is not None
            through, prev = prev, None
            means = _Means(resolver, sessions, mark)
            stream = await _ask(
                through, path, proxy.address, deadline, means, proxy, reach_limit, reused
            )
        if proxy.scheme == "https":
            tls = Where(index, proxy.name, "tls", proxy.describe(), previous)
            tunnel = stream
            stream = await translated(
                [reach_limit, deadline.limit(tls)], tls, lambda: tcp.start_tls(tunnel, proxy)
            )
        return stream
    except BaseException:
        await close_now(prev)
        await close_now(stream)
        raise


@dataclass(frozen=True, slots=True)
class _Means:
    """What rebuilding a path may need: the resolver for hop 1's name, the sessions, the
    mark upstream sockets carry."""

    resolver: Resolver = SYSTEM
    sessions: SshSessions | None = None
    mark: int | None = None


async def _reach_ssh(
    prev: ByteStream | None,
    path: Sequence[Proxy],
    proxy: Proxy,
    deadline: Deadline,
    reach_limit: Limit,
    reused: bool,
    means: _Means,
) -> ByteStream:
    """An SshReached for `proxy` through `path`: its live session if there is one (or the
    one another connection is building), else a new one over a stream to it."""
    sessions = means.sessions
    assert sessions is not None
    key = (tuple(path), proxy)
    index, previous = len(path) + 1, path[-1].name if path else ""
    handshake = Where(index, proxy.name, "ssh", proxy.describe(), previous)
    limits = [reach_limit, deadline.limit(handshake)]
    try:
        for _ in range(3):  # another connection building it gave up: wait for the next
            session = sessions.live(*key)
            if session is None and sessions.building(key):
                session = await translated(limits, handshake, lambda: sessions.wait(key))
            if session is not None:
                await close_now(prev)
                prev = None
                return SshReached(session, warm=True)
            if not sessions.building(key):
                break
        build = sessions.claim(key)
        try:
            through, prev = prev, None  # consumed (a survivor of a failure goes on in it)
            stream = await _to_ssh_hop(through, path, proxy, deadline, reach_limit, reused, means)
            session = await translated(limits, handshake, lambda: sessions.handshake(stream, key))
            build.session = session
            return SshReached(session, warm=False)
        except HopError as exc:
            if exc.index == index:  # the hop's own failure: those waiting share it
                build.error = exc
            raise
        finally:
            sessions.settle(key, build)
    except BaseException:
        await close_now(prev)
        raise


async def _to_ssh_hop(
    prev: ByteStream | None,
    path: Sequence[Proxy],
    proxy: Proxy,
    deadline: Deadline,
    reach_limit: Limit,
    reused: bool,
    means: _Means,
) -> ByteStream:
    """The stream an SSH session to `proxy` runs over: TCP for hop 1, else a request to
    path[-1] over `prev` (or over the path rebuilt, when the dialer skipped it)."""
    index, previous = len(path) + 1, path[-1].name if path else ""
    blamed = Where(index, proxy.name, "connect", proxy.describe(), previous)
    if not path:
        await close_now(prev)
        return await translated(
            [reach_limit, deadline.limit(blamed)],
            blamed,
            lambda: tcp.open_tcp(proxy.address, means.resolver, means.mark),
        )
    if prev is None:
        prev = await reach_path(
            path, deadline, resolver=means.resolver, sessions=means.sessions, mark=means.mark
        )
        reused = False
    return await _ask(prev, path, proxy.address, deadline, means, proxy, reach_limit, reused)


async def ask_destination(
    stream: ByteStream,
    path: Sequence[Proxy],
    target: Address,
    deadline: Deadline,
    *,
    resolver: Resolver = SYSTEM,
    sessions: SshSessions | None = None,
    mark: int | None = None,
) -> ByteStream:
    """Ask the last hop of `path`, reached over `stream`, for the destination."""
    return await _ask(stream, path, target, deadline, _Means(resolver, sessions, mark))


async def forward(
    stream: ByteStream,
    path: Sequence[Proxy],
    target: Address,
    request: Forward,
    deadline: Deadline,
) -> ByteStream:
    """Send a plain-HTTP request to the last hop of `path` (an HTTP proxy) and wait, within
    its handshake_timeout, for the first head of its answer, exactly as for a CONNECT: a
    hop that stays silent, closes or answers garbage fails here, in time to try another.
    Consumes `stream`."""
    hop = path[-1]
    where = Where(len(path), hop.name, "handshake", str(target))
    limits = [
        Limit(anyio.current_time() + hop.handshake_timeout, Expired(hop.handshake_timeout), where),
        deadline.limit(where),
    ]
    head = request.head_for(hop)
    try:
        return await translated(
            limits, where, lambda: connectors.http_forward(stream, head, request.body)
        )
    except BaseException:
        await close_now(stream)
        raise


async def _ask(
    stream: ByteStream,
    path: Sequence[Proxy],
    target: Address,
    deadline: Deadline,
    means: _Means,
    next_proxy: Proxy | None = None,
    reach_limit: Limit | None = None,
    reused: bool = False,
) -> ByteStream:
    """Ask path[-1] for `target`: the next hop (`next_proxy`, whose `reach_limit` runs on)
    or the destination. Consumes `stream`. A shared SSH session found lost is rebuilt
    through the same path, once, and asked again."""
    try:
        return await _ask_once(stream, path, target, deadline, next_proxy, reach_limit, reused)
    except SessionLost:
        pass  # (a warm one: see _ask_once)
    fresh = await reach_path(
        path, deadline, resolver=means.resolver, sessions=means.sessions, mark=means.mark
    )
    return await _ask_once(fresh, path, target, deadline, next_proxy, reach_limit)


async def _ask_once(
    stream: ByteStream,
    path: Sequence[Proxy],
    target: Address,
    deadline: Deadline,
    next_proxy: Proxy | None = None,
    reach_limit: Limit | None = None,
    reused: bool = False,
) -> ByteStream:
    hop = path[-1]
    next_name = None if next_proxy is None else next_proxy.name
    where = Where(len(path), hop.name, "handshake", str(target), next_hop=next_name)
    now = anyio.current_time()
    limits = [Limit(now + hop.handshake_timeout, Expired(hop.handshake_timeout), where)]
    if reach_limit is not None:
        limits.append(reach_limit)
    # Last: when a hop's own limit and the deadline fall together, the hop is named.
    limits.append(deadline.limit(where))
    try:
        return await bounded(limits, lambda: connectors.ask(stream, hop, target))
    except BaseException as exc:
        survivor = exc.stream if isinstance(exc, HopAnswer) else None
        if survivor is None or next_proxy is None:
            await close_now(survivor)
            await close_now(stream)
            survivor = None
        if isinstance(exc, SessionLost) and exc.warm:
            raise  # nobody's fault: _ask rebuilds it
        if reused and lost_kept_connection(exc):
            raise Stale() from None
        error = blame(exc, where)
        if error is None:
            raise  # a limit fired (already blamed), or not a hop's failure
        if survivor is not None and isinstance(error, HopError):
            raise Survived(error, survivor) from None
        raise error from None


async def reach_path(
    path: Sequence[Proxy],
    deadline: Deadline,
    trace: list[HopTrace] | None = None,
    resolver: Resolver = SYSTEM,
    sessions: SshSessions | None = None,
    mark: int | None = None,
) -> ByteStream:
    """Reach every node of `path` in order, hop 1 directly and each next one through the
    ones before, appending to `trace` as each is reached. No failover: the first failure
    raises its HopError (a hop's connection that survived it is closed). Nodes up to an
    SSH hop whose session is live are not reached again: the session is used."""
    stream: ByteStream | None = None
    start = _warm_start(path, sessions)
    for pos, proxy in enumerate(path):
        started = anyio.current_time()
        if pos < start:  # carried by a live SSH session further on
            if trace is not None:
                trace.append(HopTrace(pos + 1, proxy.name, 0.0))
            continue
        try:
            stream = await reach(
                stream,
                path[:pos],
                proxy,
                deadline,
                resolver=resolver,
                sessions=sessions,
                mark=mark,
            )
        except Survived as exc:
            await close_now(exc.stream)
            raise exc.error from None
        if trace is not None:
            trace.append(HopTrace(pos + 1, proxy.name, anyio.current_time() - started))
    assert stream is not None
    return stream


def _warm_start(path: Sequence[Proxy], sessions: SshSessions | None) -> int:
    """The position of the last SSH hop of `path` whose session is live (0: none)."""
    if sessions is None:
        return 0
    for pos in range(len(path) - 1, 0, -1):
        if path[pos].scheme == "ssh" and sessions.live(path[:pos], path[pos]) is not None:
            return pos
    return 0


async def probe(
    path: Sequence[Proxy],
    target: Proxy | Address | None,
    total: float,
    sessions: SshSessions | None = None,
    *,
    mark: int | None = None,
) -> tuple[ByteStream, list[HopTrace]]:
    """For `chainer check`: reach every node of `path`, then, if given, `target` (one
    more hop, or a destination asked of the last hop), within `total` seconds. No
    failover: the first failure raises HopError (or ChainFailed when the deadline ran
    out). The caller closes the stream."""
    deadline = Deadline.from_now(total)
    nodes = [*path, target] if isinstance(target, Proxy) else list(path)
    trace: list[HopTrace] = []
    try:
        stream = await reach_path(nodes, deadline, trace, sessions=sessions, mark=mark)
        if isinstance(target, Address):
            started = anyio.current_time()
            stream = await ask_destination(
                stream, nodes, target, deadline, sessions=sessions, mark=mark
            )
            trace.append(HopTrace(len(nodes) + 1, str(target), anyio.current_time() - started))
    except DeadlineExceeded as exc:
        raise ChainFailed("check", (), str(exc)) from None
    return stream, trace
