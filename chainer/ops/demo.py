"""`chainer demo`: a nested chain of real chainer hops, built on 127.0.0.1 in one process.

    client -> router -http-> hop 1 -https-> hop 2 -socks5-> hop 3 -direct-> origin
              (this process)  CONNECT      CONNECT over TLS  RFC 1929 login   TLS, GET /

Every hop is a chainer `Server` routing everything `direct`, configured from YAML text
(written to a temporary directory and parsed with `parse_config`, like any routes.yaml).
The origin is a small TLS web server with one fixed answer. Two requests go through the
chain: one with `Router.open` (the library path, which returns the per-hop trace) and
one through the router's own listening port (the server path, which logs an access
line). Every port is ephemeral and on loopback; everything is torn down at the end.

Only chainer's runtime dependencies are used. The TLS certificates (a demo CA and a leaf
for localhost/127.0.0.1/::1) are shipped ready-made in `chainer/ops/demo_certs/`: they are
public and good for this demo only.
"""

from __future__ import annotations

import logging
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskGroup
from anyio.abc import Listener as AnyioListener
from anyio.streams.tls import TLSAttribute, TLSStream

from ..config import parse_config
from ..errors import ChainerError
from ..models import Address, Config
from ..relay.streams import with_prefix
from ..router import Router
from ..server import Server

__all__ = ["ORIGIN_BODY", "ORIGIN_HOST", "run_demo"]

ORIGIN_HOST = "localhost"  # sent as a name all the way: hop 3 (routing `direct`) resolves it
ORIGIN_BODY = b"Hello from the chainer demo origin. You came through three nested hops.\n"
SOCKS_USER = "demo"
SOCKS_PASSWORD = "demo-only-password"
CHAIN = "nested"

DEMO_TIMEOUT = 30.0  # the whole demo
STEP_TIMEOUT = 10.0  # one request, one origin connection
LOG_WAIT = 5.0  # from a client closing its tunnel to the router logging it
MAX_HEAD = 16384
CERT_FILES = ("ca.pem", "server.pem", "server.key")

Say = Callable[..., None]


class DemoError(Exception):
    """A step of the demo did not give what it should."""


@dataclass(frozen=True, slots=True)
class _HopSpec:
    name: str
    scheme: str
    listen: str  # the hop's `listen:` entry, YAML
    what: str


_HOPS = (
    _HopSpec("http-hop", "http", "127.0.0.1:0", "HTTP proxy: CONNECT"),
    _HopSpec(
        "https-hop",
        "https",
        "{address: 127.0.0.1:0, tls: {cert: server.pem, key: server.key}}",
        "HTTPS proxy: CONNECT over TLS (certificate from the demo CA)",
    ),
    _HopSpec(
        "socks-hop",
        "socks5",
        f'{{address: 127.0.0.1:0, auth: {{users: {{{SOCKS_USER}: "{SOCKS_PASSWORD}"}}}}}}',
        "SOCKS5 proxy with a username/password login (RFC 1929)",
    ),
)


@dataclass(frozen=True, slots=True)
class _Hop:
    spec: _HopSpec
    port: int


@dataclass(frozen=True, slots=True)
class _Answer:
    tls_version: str
    status: str
    body: bytes


async def run_demo(out: TextIO) -> bool:
    """Build the topology, send two requests through the nested chain, print what happens
    to `out`, tear everything down. True when both requests got the origin's answer."""

    def say(*lines: str) -> None:
        for line in lines or ("",):
            print(line, file=out, flush=True)

    ok = False
    with tempfile.TemporaryDirectory(prefix="chainer-demo-") as tmp, _capture_access_log() as log:
        async with anyio.create_task_group() as tg:
            try:
                with anyio.fail_after(DEMO_TIMEOUT):
                    await _demo(say, Path(tmp), tg, log)
                ok = True
            except TimeoutError:
                say("", f"demo FAILED: not finished within {DEMO_TIMEOUT:.0f}s")
            except DemoError as exc:
                say("", f"demo FAILED: {exc}")
            except (ChainerError, OSError, anyio.BrokenResourceError) as exc:
                say("", f"demo FAILED: {type(exc).__name__}: {exc}")
            finally:
                tg.cancel_scope.cancel()
    return ok


async def _demo(say: Say, tmp: Path, tg: TaskGroup, log: _AccessLines) -> None:
    ca_pem = _install_certs(tmp)
    say("chainer demo: a request through a nested chain of three proxies, all in this process")
    say(f"(scratch files in {tmp}, removed at the end; every port is on 127.0.0.1)", "")

    origin = _Origin(_server_context(tmp))
    origin_listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    origin.port = origin_listener.extra(SocketAttribute.local_port)
    tg.start_soon(_serve, origin_listener, origin.handle)

    hops: list[_Hop] = []
    for spec in _HOPS:
        hop_config = _config(tmp, spec.name, _hop_yaml(spec))
        bound: list[tuple[str, int]] = await tg.start(Server(Router(hop_config)).serve)
        hops.append(_Hop(spec, bound[0][1]))
    router_config = _config(tmp, "router", _router_yaml(hops, origin.port))
    router = Router(router_config)
    bound = await tg.start(Server(router).serve)
    router_port = bound[0][1]

    say("Topology (each hop is a chainer server that sends everything `direct`):")
    for i, hop in enumerate(hops, 1):
        address = f"127.0.0.1:{hop.port}"
        say(f"  hop {i}   {hop.spec.name:<10} {hop.spec.scheme:<7} {address:<16} {hop.spec.what}")
    origin_at = f"{ORIGIN_HOST}:{origin.port}"
    say(f"  origin  {'':<10} {'https':<7} {origin_at:<16} a TLS web server, one fixed answer")
    say(f"  router  {'':<10} {'':<7} 127.0.0.1:{router_port:<6} chainer, with this route table:")
    say("", "Route table (first match wins):")
    for route in router_config.routes:
        patterns = ", ".join(p.text for p in route.patterns)
        via = route.via.label
        if route.via.kind == "chain":
            via += " = " + " > ".join(group.label() for group in route.via.hops)
        say(f"  {route.label()}  {patterns:<16} -> {via}")

    target = Address(ORIGIN_HOST, origin.port)
    say("", f"1. The library path: Router.open({target}), then TLS and GET / inside the tunnel")
    with _deadline("the library path", STEP_TIMEOUT):
        started = anyio.current_time()
        match, dialed = await router.open(target)
        total = anyio.current_time() - started
        async with dialed.stream:
            say(f"  matched {match.route.label()} (pattern {match.pattern.text!r}) via {CHAIN}")
            hop_time = 0.0
            for trace in dialed.trace:
                proxy = router_config.proxy(trace.name)
                kind, address = (proxy.scheme, str(proxy.address)) if proxy else ("?", "?")
                ms = trace.seconds * 1000
                hop_time += trace.seconds
                say(f"  hop {trace.index} {kind:<7} {address:<16} {ms:7.1f} ms   {trace.name}")
            last = len(dialed.trace)
            ms = max(total - hop_time, 0.0) * 1000
            say(f"  then hop {last} was asked for {target} (it resolves the name) {ms:7.1f} ms")
            say(f"  chain built in {total * 1000:.1f} ms")
            answer = await _https_get(dialed.stream, ca_pem, target)
    _report(say, answer)

    say("", f"2. The server path: a client sends CONNECT {target} to the router's port")
    with _deadline("the server path", STEP_TIMEOUT):
        async with await anyio.connect_tcp("127.0.0.1", router_port) as client:
            client_port = client.extra(SocketAttribute.local_port)
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
            await client.send(request.encode())
            head, rest = await _read_head(client)
            status = head.split(b"\r\n", 1)[0].decode("latin-1")
            say(f"  router answered: {status}")
            if not status.startswith("HTTP/1.1 200"):
                raise DemoError(f"the router refused the CONNECT: {head.decode('latin-1')!r}")
            answer = await _https_get(with_prefix(client, rest), ca_pem, target)
        _report(say, answer)
    with _deadline("waiting for the router to log the tunnel the client closed", LOG_WAIT):
        line = await log.wait_for(f"client=127.0.0.1:{client_port} ")
    say("  the router's access-log line for it:", f"  {line}")
    if "outcome=ok" not in line:
        raise DemoError("the access-log line does not say outcome=ok")

    say(
        "",
        f"Demo OK: the origin answered {len(origin.requests)} requests, each of them reached "
        "through http > https > socks5.",
        "Next, with your own routes.yaml: `chainer explain HOST` (which rule and chain a host",
        "gets) and `chainer check` (each chain probed hop by hop, through the hops before it).",
    )


@contextmanager
def _deadline(what: str, seconds: float) -> Iterator[None]:
    try:
        with anyio.fail_after(seconds):
            yield
    except TimeoutError:
        raise DemoError(f"{what}: not done within {seconds:.0f}s") from None


def _report(say: Say, answer: _Answer) -> None:
    say(f"  TLS to {ORIGIN_HOST} inside the tunnel: {answer.tls_version}, verified (demo CA)")
    say(f"  origin answered: {answer.status}")
    say(f"  body: {answer.body.decode('utf-8', 'replace').rstrip()}")
    if not answer.status.startswith("HTTP/1.1 200") or answer.body != ORIGIN_BODY:
        raise DemoError("the origin's answer is not the one it serves")


# -- configs and files -------------------------------------------------------------------


def _install_certs(tmp: Path) -> str:
    """Copy the shipped demo certificates into `tmp`; returns the CA (PEM text)."""
    certs = resources.files("chainer.ops") / "demo_certs"
    for name in CERT_FILES:
        (tmp / name).write_bytes((certs / name).read_bytes())
    return (tmp / "ca.pem").read_text(encoding="ascii")


def _server_context(tmp: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tmp / "server.pem", tmp / "server.key")
    return ctx


def _config(tmp: Path, name: str, text: str) -> Config:
    """Write `text` as NAME.yaml (for a look afterwards, and for error messages) and parse
    it; relative paths in it (`ca:`, `cert:`, `key:`) are taken from `tmp`."""
    path = tmp / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return parse_config(text, str(path), str(tmp))


def _hop_yaml(spec: _HopSpec) -> str:
    return (
        f"# demo hop {spec.name}: a {spec.scheme} proxy that sends everything direct\n"
        f"listen:\n  - {spec.listen}\n"
        "routes:\n"
        '  - {match: "*", via: direct}\n'
    )


def _router_yaml(hops: Sequence[_Hop], origin_port: int) -> str:
    http, https, socks = (f"127.0.0.1:{hop.port}" for hop in hops)
    names = ", ".join(hop.spec.name for hop in hops)
    return (
        f"# the demo router: the origin through three nested hops, everything else refused\n"
        "listen: [127.0.0.1:0]\n"
        "defaults: {connect_timeout: 5s, handshake_timeout: 5s, deadline: 15s}\n"
        "proxies:\n"
        f"  http-hop: http://{http}\n"
        f'  https-hop: {{url: "https://{https}", ca: ca.pem}}\n'
        "  socks-hop:\n"
        f'    url: "socks5://{socks}"\n'
        f"    username: {SOCKS_USER}\n"
        f'    password: "{SOCKS_PASSWORD}"\n'
        "chains:\n"
        f"  {CHAIN}: [{names}]\n"
        "routes:\n"
        f'  - {{match: "{ORIGIN_HOST}:{origin_port}", via: {CHAIN}}}\n'
        '  - {match: "*", via: reject}\n'
    )


# -- the origin and the client side of HTTPS ---------------------------------------------


@dataclass(eq=False)
class _Origin:
    """Answers one GET per TLS connection with ORIGIN_BODY."""

    ssl_context: ssl.SSLContext
    port: int = 0
    requests: list[str] = field(default_factory=list)

    async def handle(self, client: SocketStream) -> None:
        async with client:
            try:
                with anyio.fail_after(STEP_TIMEOUT):
                    tls = await TLSStream.wrap(
                        client, server_side=True, ssl_context=self.ssl_context
                    )
                    head, _ = await _read_head(tls)
                    self.requests.append(head.split(b"\r\n", 1)[0].decode("latin-1"))
                    await tls.send(
                        b"HTTP/1.1 200 OK\r\n"
                        b"Content-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(ORIGIN_BODY), ORIGIN_BODY)
                    )
                    await tls.aclose()
            except (TimeoutError, DemoError, OSError, anyio.BrokenResourceError):
                pass  # the client side reports what went wrong


async def _serve(
    listener: AnyioListener[SocketStream], handle: Callable[[SocketStream], Awaitable[None]]
) -> None:
    async with listener:
        await listener.serve(handle)


async def _https_get(stream: ByteStream, ca_pem: str, target: Address) -> _Answer:
    """TLS to the origin over `stream` (verified against the demo CA), GET /, the answer."""
    ctx = ssl.create_default_context(cadata=ca_pem)
    tls = await TLSStream.wrap(stream, hostname=target.host, ssl_context=ctx)
    try:
        request = (
            f"GET / HTTP/1.1\r\nHost: {target}\r\nUser-Agent: chainer-demo\r\n"
            "Connection: close\r\n\r\n"
        )
        await tls.send(request.encode())
        head, body = await _read_head(tls)
        status, *header_lines = head.decode("latin-1").split("\r\n")
        length = 0
        for header in header_lines:
            name, _, value = header.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        while len(body) < length:
            try:
                body += await tls.receive()
            except anyio.EndOfStream:
                raise DemoError(f"the origin closed after {len(body)} of {length} bytes") from None
        version = tls.extra(TLSAttribute.tls_version)
        return _Answer(version, status, body[:length])
    finally:
        with anyio.move_on_after(2, shield=True):
            try:
                await tls.aclose()
            except (OSError, anyio.BrokenResourceError):
                pass
        await anyio.aclose_forcefully(tls)


async def _read_head(stream: ByteStream) -> tuple[bytes, bytes]:
    """An HTTP head (without its blank line) and whatever came after it."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD:
            raise DemoError(f"no end of the HTTP head in {MAX_HEAD} bytes")
        try:
            buf += await stream.receive()
        except anyio.EndOfStream:
            raise DemoError(f"closed before a complete HTTP head: {buf[:80]!r}") from None
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


# -- the access log ----------------------------------------------------------------------


class _AccessLines(logging.Handler):
    """Collects `chainer.access` lines (from the router and the hops: all in-process)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    async def wait_for(self, needle: str) -> str:
        """The first line containing `needle`, once it has been logged (the server logs a
        connection when it is over, a moment after the client closed it)."""
        while True:
            for line in self.lines:
                if needle in line:
                    return line
            await anyio.sleep(0.01)


@contextmanager
def _capture_access_log() -> Iterator[_AccessLines]:
    logger = logging.getLogger("chainer.access")
    handler = _AccessLines()
    level, propagate = logger.level, logger.propagate
    if not logger.isEnabledFor(logging.INFO):
        # Nobody asked for access lines: collect them for the narrative, show them nowhere
        # else (the hops' own lines would only be noise).
        logger.setLevel(logging.INFO)
        logger.propagate = False
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
