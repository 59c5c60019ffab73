"""Pipelined set-up: a chain's requests sent without waiting for each answer.

How this works. Step by step, hop k+1 is sent nothing until hop k has answered the
request for it, so a chain of n hops costs n round trips stacked one on the next, each
longer than the one before. In a chain with `pipeline: true`, the dialer gives each
stream it holds to a node a *plan* (`prime`): the requests that node and the nodes after
it will be asked, as far as every position has a single candidate. The first of them to
be asked (`ask`) sends a batch — its own opening bytes and those of the requests behind
it, as far as each hop relays what follows its request (`relays`) — and from then on
each answer is read exactly as step by step, by the same connectors, under the same
limits, charged to the same hop: the stream an answer leaves behind (`Asked.onward`)
carries the rest of the plan, and a request already on the wire is not sent again. A
hop that does not relay what follows its request ends a batch; the next batch goes out
when its answer has been read. squid -> tinyproxy -> dante (with `pipeline: true` on
dante's proxy) sends its three requests in one write: about one end-to-end round trip
instead of three stacked ones.

Why it is safe. The bytes meant for hop k+1 pass through hop k and are read by hop k+1,
or by nobody:
- a pipelined HTTP CONNECT carries `Connection: close`: a proxy that refuses it must close
  after its answer (RFC 9112 9.6) instead of reading the bytes behind it as our next
  request — squid does read them without it (bench/pipeprobe.py);
- a SOCKS server that refuses a request closes the connection (RFC 1928 6, SOCKS4 alike);
  an early SOCKS5 greeting offers exactly one method, so the server takes that one or
  closes (`Socks5Client(early=True)`);
- a connection whose pipelined request failed is never asked again (no failover in
  place on it): the dialer's search goes on as step by step, on a new connection;
- only what is certain is planned: a position with more than one candidate (the choice
  depends on answers), an https or ssh hop (TLS and SSH take round trips of their own)
  and a socks4 hop asked for a name end the plan; and a hop that does not read its
  request exactly — microsocks drops whatever follows its greeting or its request — is
  sent nothing behind it: SOCKS5 hops are not (unless their proxy says `pipeline: true`:
  dante reads exactly), HTTP and SOCKS4 hops are (unless their proxy says `pipeline:
  false`).
Attribution is unchanged: the answers are read one by one with the same framing (bytes
after an answer belong to the next stage) and each failure goes through the same blame
table, for the hop it is about.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from anyio.abc import ByteStream

from ..models import Address, HopGroup, Proxy
from ..proto.http import ConnectResponseReader, basic_authorization, connect_request
from ..proto.socks import Socks4Client, Socks5Client
from ..text import READ_SIZE

__all__ = ["Asked", "Primed", "Request", "ask", "opening", "prime", "relays"]

Reader = ConnectResponseReader | Socks5Client | Socks4Client


@dataclass(frozen=True, eq=False, slots=True)
class Request:
    """`hop` asked for `target`: the reader of its answer (which also hands out what is
    sent between answers, SOCKS5's next messages), the bytes that open the request, and
    whether bytes for the next stage may follow those in the same write."""

    hop: Proxy
    target: Address
    reader: Reader
    opening: bytes = field(repr=False)  # may carry credentials
    then: bool = False


def relays(proxy: Proxy) -> bool:
    """Does `proxy` read its request exactly and relay whatever follows it? Its proxy's
    `pipeline:` says so, or else its scheme, as measured (bench/pipeprobe.py): squid,
    tinyproxy and pproxy over HTTP and dante over SOCKS4 do; over SOCKS5 dante does and
    microsocks does not, so a SOCKS5 hop must say so."""
    if proxy.pipeline is not None:
        return proxy.pipeline
    return proxy.scheme in ("http", "https", "socks4", "socks4a")


def opening(proxy: Proxy, target: Address, *, pipelined: bool = False) -> Request:
    """The request asking `proxy` for `target`: step by step (the bytes a connector has
    always sent), or `pipelined`, as part of a plan. Raises ValueError for a target or
    credentials the protocol cannot carry."""
    follows = pipelined and relays(proxy)
    if proxy.scheme in ("http", "https"):
        authorization = None
        if proxy.username is not None:
            authorization = basic_authorization(proxy.username, proxy.password or "")
        data = connect_request(target.authority(), authorization, close=pipelined)
        return Request(proxy, target, ConnectResponseReader(), data, follows)
    if proxy.scheme in ("socks5", "socks5h"):
        socks5 = Socks5Client(
            target.host,
            target.port,
            username=proxy.username,
            password=proxy.password,
            early=follows,
        )
        return Request(proxy, target, socks5, socks5.greeting(), follows)
    socks4 = Socks4Client(
        target.host,
        target.port,
        user_id=proxy.username or "",
        socks4a=proxy.scheme == "socks4a",
    )
    return Request(proxy, target, socks4, socks4.request(), follows)


@dataclass(frozen=True, eq=False, slots=True)
class Primed(ByteStream):
    """A stream to `plan[0].hop` that carries a plan: the requests that hop and the
    nodes after it will be asked, in order; the first `sent` are on the wire already."""

    inner: ByteStream
    plan: tuple[Request, ...]
    sent: int = 0

    async def receive(self, max_bytes: int = READ_SIZE) -> bytes:
        return await self.inner.receive(max_bytes)

    async def send(self, item: bytes) -> None:
        await self.inner.send(item)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        return self.inner.extra_attributes


def prime(
    stream: ByteStream,
    reached: Proxy,
    rest: Sequence[HopGroup],
    target: Address,
    *,
    forward: bool = False,
    exclude: Collection[str] = (),
) -> ByteStream:
    """`stream`, which reaches `reached`, with the plan of what can be asked ahead on
    it: `reached` for the next position's single candidate, that one for the one after,
    and so on to the destination (`target`; not when `forward`, a plain-HTTP request,
    goes to a last HTTP hop as it is). A stream that already carries a plan is left as
    it is; so is one with nothing to plan."""
    if isinstance(stream, Primed):
        return stream
    plan: list[Request] = []
    asked = reached
    for group in rest:
        if len(group.candidates) != 1 or group.candidates[0].name in exclude:
            break
        hop = group.candidates[0]
        request = _planned(asked, hop.address)
        if request is None:
            break
        plan.append(request)
        if hop.scheme in ("https", "ssh"):
            break  # TLS or the SSH session comes first: nothing more is certain here
        asked = hop
    else:
        if not (forward and asked.scheme in ("http", "https")):
            request = _planned(asked, target)
            if request is not None:
                plan.append(request)
    return Primed(stream, tuple(plan)) if plan else stream


def _planned(asked: Proxy, target: Address) -> Request | None:
    """The pipelined request asking `asked` for `target`; None when it must wait for its
    turn: an ssh hop (a channel on its session, no bytes), a socks4 hop and a name
    (resolved here first, or refused), a target the protocol cannot carry (refused by
    the connector when its turn comes, as step by step)."""
    if asked.scheme == "ssh" or (asked.scheme == "socks4" and not target.is_ip):
        return None
    try:
        return opening(asked, target, pipelined=True)
    except ValueError:
        return None


@dataclass(frozen=True, eq=False, slots=True)
class Asked:
    """A request on its way: `stream` to read its answer from (the bare stream, under
    any plan), and what is left of the plan for the stream the answer leaves behind."""

    request: Request
    stream: ByteStream
    rest: tuple[Request, ...] = ()
    sent: int = 0  # requests of `rest` on the wire already
    pipelined: bool = False  # part of a plan: never asked again after a failure

    def onward(self, tunnel: ByteStream) -> ByteStream:
        """`tunnel`, the stream this request's answer left behind, with the rest of the
        plan (to the node or the destination it reaches)."""
        return Primed(tunnel, self.rest, self.sent) if self.rest else tunnel


async def ask(stream: ByteStream, proxy: Proxy, target: Address) -> Asked:
    """Ask `proxy`, reached over `stream`, for `target`: send what is due and return the
    request, whose reader reads the answer. On a primed stream that is the planned
    request: its batch goes out now, unless it went out with an earlier one."""
    if not isinstance(stream, Primed):
        request = opening(proxy, target)
        await stream.send(request.opening)
        return Asked(request, stream)
    plan, sent = stream.plan, stream.sent
    request = plan[0]
    if request.hop != proxy or request.target != target:
        raise RuntimeError(
            f"planned to ask {request.hop.name} for {request.target}, not {proxy.name} for {target}"
        )
    if sent == 0:
        sent = 1
        while sent < len(plan) and plan[sent - 1].then:
            sent += 1
        await stream.inner.send(b"".join(r.opening for r in plan[:sent]))
    return Asked(request, stream.inner, plan[1:], sent - 1, pipelined=True)
