"""A segmented network for real: four network namespaces joined by veth pairs.

::

    client ──── hopa ──── hopb ──── origin
      .1    .2    .5    .6    .9    .10        (198.18.0.0/30, .4/30, .8/30)

Each namespace has ``lo`` up, one /30 per link, no default route and IP forwarding off,
so the client reaches only A, A only B (and the client), B only the origin (and A). IPv6
is switched off inside them. ``ip netns exec`` bind-mounts ``/etc/netns/NS/*`` over
``/etc``: every namespace gets a ``hosts`` file with just ``localhost``, a ``resolv.conf``
pointing at 127.0.0.1 (nothing listens there: a lookup fails at once) and an
``nsswitch.conf`` of ``files dns``; only hop B's ``hosts`` names the origin
(``origin.lab.test``). So a name given to the client resolves nowhere but at hop B.

Namespaces are named ``chn-<6 hex>-<role>``. Everything is undone on exit, also after a
failure: processes started by :func:`netns_popen` are stopped by PID, the namespaces
deleted (their veths go with them) and ``/etc/netns/<ns>`` removed.

``segmented_network()`` is the context manager; ``segmented_network_fixture`` is the
pytest fixture named ``segmented_network`` (module scope; import it into a test module or
conftest). Without root, without ``ip`` or when ``ip netns add`` fails it skips, or fails
when ``CHAINER_CI`` is set.

Hop starters (:data:`HopStarter`) start a proxy inside a namespace on a given address and
return its port; :class:`HopKind` pairs one with the URL scheme used to reach it.

For transparent capture (at the end): ``add_hosts`` and ``add_route`` (a captured range,
never a default route), ``leaf_namespace`` (a LAN behind a namespace acting as its
gateway), ``linked_pair`` (two namespaces with IPv6 on their link), ``nft_apply`` and
``nft_counter`` (the real nft), ``start_squid_in`` / ``SQUID``, ``start_danted_verbose_in``
/ ``DANTED_VERBOSE`` (dante logging each request as received, names included), and
origins: ``start_tls_origin_in``, ``start_banner_in`` (the server speaks first),
``start_dual_origin_in`` (IPv6 too). For DNS: ``set_resolv_conf``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import ci
import pytest
from realproxies import (
    LOOPBACK,
    CurlResult,
    ManagedProcess,
    ProxyStartError,
    child_env,
    require_binary,
    squid_config,
)

LAB_RANGE = "198.18.0.0/15"
ORIGIN_NAME = "origin.lab.test"
ETC_NETNS = Path("/etc/netns")
RUN_NETNS = Path("/run/netns")
# Present while /etc/netns exists because one of our runs made it: the last run out
# removes both (runs may overlap, so "I made it" alone is not enough).
ETC_NETNS_MARKER = Path("/run/chainer-tests-made-etc-netns")
IP_SEARCH = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
COMMAND_TIMEOUT = 10.0  # any one `ip ...` command

_CLONE_NEWNET = 0x40000000


class NetnsUnavailable(RuntimeError):
    """Network namespaces cannot be created here."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class SegmentedNetwork:
    """Namespace names and addresses of one segmented network."""

    tag: str  # "chn-1a2b3c": the common prefix of the namespace names
    client: str  # namespace names
    hopa: str
    hopb: str
    origin: str
    client_addr: str  # the client, on the client<->A link
    hopa_addr: str  # A, facing the client (where A's proxy listens)
    hopa_out_addr: str  # A, facing B
    hopb_addr: str  # B, facing A (where B's proxy listens)
    hopb_out_addr: str  # B, facing the origin
    origin_addr: str  # the origin, facing B
    origin_name: str  # resolves in B's namespace only

    @property
    def namespaces(self) -> tuple[str, str, str, str]:
        return (self.client, self.hopa, self.hopb, self.origin)


HopStarter = Callable[[str, str, Path], int]
"""``start(ns, listen_address, workdir) -> port``: a proxy inside ``ns``, ready."""


@dataclass(frozen=True)
class HopKind:
    """A kind of proxy to run as a hop: how to start it, which scheme reaches it."""

    name: str  # test id
    scheme: str  # URL scheme for chainer's proxies and for curl -x: http, socks5h
    start: HopStarter

    def url(self, host: str, port: int) -> str:
        return f"{self.scheme}://{host}:{port}"


# --------------------------------------------------------------------------- availability


def _unavailable(reason: str) -> NoReturn:
    """Skip locally; fail when ``CHAINER_CI`` is set."""
    ci.unavailable(f"network namespaces unavailable: {reason}")


def ip_binary() -> str | None:
    found = shutil.which("ip")
    if found:
        return found
    return next((p for p in IP_SEARCH if os.access(p, os.X_OK)), None)


def _ip() -> str:
    exe = ip_binary()
    if exe is None:
        raise NetnsUnavailable("no `ip` (apt-get install iproute2)")
    return exe


def _run(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    """Run a set-up command; raise with its stderr when it fails."""
    done = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=child_env(),
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"{' '.join(argv)} -> exit {done.returncode}: {err}")
    return done.stdout.decode("utf-8", "replace")


# --------------------------------------------------------------------------- in a namespace


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def netns_socket(
    ns: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket that lives in ``ns``: made by a short-lived thread that joined ``ns``.

    A socket keeps the namespace it was created in, so the caller's threads (which
    stay in the host's namespace) can use it.
    """
    result: list[socket.socket | BaseException] = []

    def make() -> None:
        try:
            fd = os.open(RUN_NETNS / ns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd)
            finally:
                os.close(fd)
            result.append(socket.socket(family, kind))
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=make, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join(5)
    if not result:
        raise TimeoutError(f"no socket from namespace {ns} within 5s")
    made = result[0]
    if isinstance(made, BaseException):
        raise made
    return made


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port_in(ns: str, host: str) -> int:
    """A TCP port on ``host`` in ``ns`` that was free a moment ago."""
    with netns_socket(ns, _family(host)) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def accepts_in(ns: str, host: str, port: int, timeout: float = 0.5) -> bool:
    """One try from inside ``ns``: does ``host:port`` accept a TCP connection?"""
    with netns_socket(ns, _family(host)) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


def netns_argv(ns: str, argv: Sequence[str]) -> list[str]:
    return [_ip(), "netns", "exec", ns, *argv]


def netns_run(
    ns: str, argv: Sequence[str], timeout: float = 20.0
) -> subprocess.CompletedProcess[bytes]:
    """Run ``argv`` inside ``ns`` to completion (bounded); its output is captured."""
    return subprocess.run(
        netns_argv(ns, argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=child_env(),
        timeout=timeout,
        check=False,
    )


@dataclass(frozen=True)
class TimedCurl(CurlResult):
    seconds: float  # wall time, `ip netns exec` included


def netns_curl(ns: str, *args: str, timeout: float = 10.0) -> TimedCurl:
    """The real curl inside ``ns`` (no ~/.curlrc, no proxy variables), timed."""
    exe = require_binary("curl")
    argv = [exe, "-q", "-sS", "--max-time", f"{timeout:g}", *args]
    started = time.monotonic()
    done = netns_run(ns, argv, timeout=timeout + 10)
    seconds = time.monotonic() - started
    return TimedCurl(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"), seconds)


_processes: dict[str, list[ManagedProcess]] = {}
_processes_lock = threading.Lock()


def netns_popen(
    ns: str,
    argv: Sequence[str],
    log_path: str | Path,
    *,
    ready: tuple[str, int] | None = None,
    ready_timeout: float = 15.0,
    name: str | None = None,
    extra_logs: Sequence[str | Path] = (),
    cwd: str | Path | None = None,
) -> ManagedProcess:
    """Start ``argv`` inside ``ns`` (``ip netns exec`` execs it: the PID is the process's
    own), stdout and stderr to ``log_path``. It is registered with ``ns``: stopped by
    PID when the network is torn down, if not before.

    ``ready=(host, port)``: wait until that accepts, from inside ``ns``; on failure the
    process is stopped and ``ProxyStartError`` carries the tail of its logs.
    """
    name = name or os.path.basename(argv[0])
    log_path = str(log_path)
    log_handle = open(log_path, "ab")  # closed by ManagedProcess.stop
    try:
        popen = subprocess.Popen(
            netns_argv(ns, argv),
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=child_env(),
            start_new_session=True,
        )
    except BaseException:
        log_handle.close()
        raise
    proc = ManagedProcess(
        name, popen, ready[1] if ready else 0, log_path, log_handle, [str(p) for p in extra_logs]
    )
    with _processes_lock:
        _processes.setdefault(ns, []).append(proc)
    if ready is None:
        return proc
    host, port = ready
    deadline = time.monotonic() + ready_timeout
    reason = f"{host}:{port} in {ns} did not accept within {ready_timeout:g}s"
    while True:
        code = popen.poll()
        if code is not None:
            reason = f"exited with status {code} before accepting on {host}:{port} in {ns}"
            break
        if accepts_in(ns, host, port):
            if popen.poll() is None:
                return proc
            reason = f"{host}:{port} in {ns} accepted but the process exited"
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    logs = proc.describe_logs()
    proc.stop(timeout=5)
    raise ProxyStartError(f"{name} ({' '.join(argv)}) in {ns}: {reason}\n{logs}")


def stop_netns_processes(ns: str) -> None:
    """Stop (by PID, newest first) what :func:`netns_popen` started in ``ns``."""
    with _processes_lock:
        procs = _processes.pop(ns, [])
    for proc in reversed(procs):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)


# --------------------------------------------------------------------------- the network


def _new_tag() -> str:
    return f"chn-{secrets.token_hex(3)}"


def _claim_etc_netns() -> None:
    try:
        ETC_NETNS.mkdir(mode=0o755)
    except FileExistsError:
        return
    ETC_NETNS_MARKER.touch()


def _release_etc_netns() -> None:
    """Remove /etc/netns if one of our runs made it and no namespace dir is left in it."""
    if not ETC_NETNS_MARKER.exists():
        return
    try:
        ETC_NETNS.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return  # not empty: a run still using it removes it later
    ETC_NETNS_MARKER.unlink(missing_ok=True)


NO_DNS = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"  # nothing listens there


def _write_etc(ns: str, hosts_extra: str = "", resolv_conf: str = NO_DNS) -> None:
    _claim_etc_netns()
    directory = ETC_NETNS / ns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1\tlocalhost\n{hosts_extra}")
    (directory / "resolv.conf").write_text(resolv_conf)
    # Without this a host whose nsswitch says `resolve` or `mdns` would answer from
    # outside the namespace (those talk over unix sockets, which no netns isolates).
    if Path("/etc/nsswitch.conf").exists():
        (directory / "nsswitch.conf").write_text("hosts: files dns\n")


_SYSCTL_SCRIPT = """\
set -e
echo 0 > /proc/sys/net/ipv4/ip_forward
if [ -d /proc/sys/net/ipv6 ]; then
    echo 0 > /proc/sys/net/ipv6/conf/all/forwarding
    echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
    echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
fi
cat /proc/sys/net/ipv4/ip_forward
"""


def _configure_namespace(ip: str, ns: str) -> None:
    forwarding = _run([ip, "netns", "exec", ns, "sh", "-c", _SYSCTL_SCRIPT]).strip()
    if forwarding != "0":
        raise RuntimeError(f"{ns}: net.ipv4.ip_forward is {forwarding!r}, wanted 0")
    _run([ip, "-n", ns, "link", "set", "lo", "up"])


def _link(ip: str, left: tuple[str, str, str], right: tuple[str, str, str]) -> None:
    """A veth pair created with each end already in its namespace (never in the host's)."""
    (lns, lif, _), (rns, rif, _) = left, right
    _run([ip, "link", "add", lif, "netns", lns, "type", "veth", "peer", "name", rif, "netns", rns])
    for ns, ifname, addr in (left, right):
        _run([ip, "-n", ns, "addr", "add", f"{addr}/30", "dev", ifname])
        _run([ip, "-n", ns, "link", "set", ifname, "up"])


def _wait_links_up(ip: str, namespaces: Sequence[str], timeout: float = 5.0) -> None:
    """Until every veth has carrier (LOWER_UP). Its operstate may still say DOWN for up
    to a second (the kernel's linkwatch delay), but packets already flow."""
    deadline = time.monotonic() + timeout
    while True:
        down = []
        for ns in namespaces:
            for line in _run([ip, "-n", ns, "-br", "link", "show", "type", "veth"]).splitlines():
                fields = line.split()
                flags = fields[-1].strip("<>").split(",") if fields else []
                if fields and not {"UP", "LOWER_UP"} <= set(flags):
                    down.append(f"{ns}:{fields[0]}={fields[-1]}")
        if not down:
            return
        if time.monotonic() >= deadline:
            raise RuntimeError(f"links not up after {timeout:g}s: {', '.join(down)}")
        time.sleep(0.05)


def _kill_leftovers(ip: str, ns: str) -> None:
    """SIGKILL, by PID, what still runs in our namespace (children of what we started):
    a namespace with a process in it outlives `ip netns delete`."""
    try:
        pids = [int(p) for p in _run([ip, "netns", "pids", ns]).split()]
    except (RuntimeError, ValueError, subprocess.TimeoutExpired):
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _teardown(ip: str | None, created: Sequence[str]) -> list[str]:
    """Undo everything; return what could not be undone."""
    problems: list[str] = []
    for ns in reversed(created):
        stop_netns_processes(ns)
        if ip is not None:
            _kill_leftovers(ip, ns)
            try:
                _run([ip, "netns", "delete", ns])
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                problems.append(str(exc))
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
        if (ETC_NETNS / ns).exists():
            problems.append(f"{ETC_NETNS / ns} not removed")
    _release_etc_netns()
    return problems


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the network exists, SIGTERM (a cancelled CI job) raises KeyboardInterrupt in
    the main thread, so the finally blocks still tear it down. Only where SIGTERM has
    its default action and we are in the main thread."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def segmented_network(origin_name: str = ORIGIN_NAME) -> Iterator[SegmentedNetwork]:
    """Build client, hopa, hopb and origin namespaces; tear them down on exit.

    Skips (fails under ``CHAINER_CI``) when namespaces can't be created. The running
    test must be marked ``netns``.
    """
    ci.check_marked("netns", "network namespaces")
    if os.geteuid() != 0:
        _unavailable("not root")
    try:
        ip = _ip()
    except NetnsUnavailable as exc:
        _unavailable(str(exc))
    tag = _new_tag()
    net = SegmentedNetwork(
        tag=tag,
        client=f"{tag}-client",
        hopa=f"{tag}-hopa",
        hopb=f"{tag}-hopb",
        origin=f"{tag}-origin",
        client_addr="198.18.0.1",
        hopa_addr="198.18.0.2",
        hopa_out_addr="198.18.0.5",
        hopb_addr="198.18.0.6",
        hopb_out_addr="198.18.0.9",
        origin_addr="198.18.0.10",
        origin_name=origin_name,
    )
    with _sigterm_unwinds():
        yield from _build(ip, net)


def _build(ip: str, net: SegmentedNetwork) -> Iterator[SegmentedNetwork]:
    created: list[str] = []
    try:
        for ns in net.namespaces:
            # /etc/netns/NS must be in place before the first `ip netns exec NS`.
            hosts = f"{net.origin_addr}\t{net.origin_name}\n" if ns == net.hopb else ""
            _write_etc(ns, hosts)
            try:
                _run([ip, "netns", "add", ns])
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
                if not created:
                    raise NetnsUnavailable(str(exc)) from None
                raise
            created.append(ns)
            _configure_namespace(ip, ns)
        _link(ip, (net.client, "to-hopa", net.client_addr), (net.hopa, "to-client", net.hopa_addr))
        _link(ip, (net.hopa, "to-hopb", net.hopa_out_addr), (net.hopb, "to-hopa", net.hopb_addr))
        _link(
            ip, (net.hopb, "to-origin", net.hopb_out_addr), (net.origin, "to-hopb", net.origin_addr)
        )
        for ns in net.namespaces:
            routes = _run([ip, "-n", ns, "-4", "route", "show", "default"]).strip()
            if routes:
                raise RuntimeError(f"{ns} has a default route: {routes}")
        _wait_links_up(ip, net.namespaces)
    except NetnsUnavailable as exc:
        _teardown(ip, created)
        _unavailable(str(exc))
    except BaseException:
        _teardown(ip, created)
        raise
    try:
        yield net
    finally:
        problems = _teardown(ip, created)
    if problems:
        raise RuntimeError("segmented network teardown: " + "; ".join(problems))


@contextlib.contextmanager
def lone_namespace(resolv_conf: str = NO_DNS, hosts_extra: str = "") -> Iterator[str]:
    """One namespace with only `lo` (up), the given resolv.conf and hosts; its name.
    Torn down on exit. Skips (fails under CHAINER_CI) like segmented_network."""
    ci.check_marked("netns", "network namespaces")
    if os.geteuid() != 0:
        _unavailable("not root")
    try:
        ip = _ip()
    except NetnsUnavailable as exc:
        _unavailable(str(exc))
    ns = f"{_new_tag()}-lone"
    _write_etc(ns, hosts_extra, resolv_conf)
    created: list[str] = []
    with _sigterm_unwinds():
        try:
            try:
                _run([ip, "netns", "add", ns])
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
                _unavailable(str(exc))
            created.append(ns)
            _configure_namespace(ip, ns)
            yield ns
        finally:
            problems = _teardown(ip, created)
    if problems:
        raise RuntimeError("namespace teardown: " + "; ".join(problems))


@pytest.fixture(scope="module", name="segmented_network")
def segmented_network_fixture() -> Iterator[SegmentedNetwork]:
    """The pytest fixture ``segmented_network``: one network per test module."""
    with segmented_network() as net:
        yield net


# --------------------------------------------------------------------------- peers inside


ORIGIN_SERVER = r"""
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port, prefix = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = 10

    def do_GET(self):
        body = prefix + self.path.encode("utf-8", "replace")
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        sys.stderr.write("origin: " + (format % args) + "\n")


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((host, port), Handler).serve_forever()
"""


def start_origin_in(
    ns: str, listen: str, workdir: Path, port: int = 80, prefix: str = "origin:"
) -> ManagedProcess:
    """A plain HTTP/1.0 origin in ``ns``: ``GET /p`` answers 200 ``{prefix}/p``."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", ORIGIN_SERVER, listen, str(port), prefix]
    return netns_popen(ns, argv, workdir / "origin.out", ready=(listen, port), name="origin")


def tinyproxy_config_at(listen: str, port: int, allow: Sequence[str], workdir: Path) -> str:
    """realproxies.tinyproxy_config, but on ``listen`` and letting ``allow`` in."""
    return "\n".join(
        [
            f"Port {port}",
            f"Listen {listen}",
            "Timeout 60",
            "MaxClients 50",
            *(f"Allow {a}" for a in allow),
            f'PidFile "{workdir / "tinyproxy.pid"}"',
            f'LogFile "{workdir / "tinyproxy.log"}"',
            "LogLevel Info",
            "",
        ]
    )


def start_tinyproxy_in(ns: str, listen: str, workdir: Path) -> int:
    """tinyproxy on ``listen`` in ``ns``: CONNECT to any port, clients from the lab range."""
    exe = require_binary("tinyproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port_in(ns, listen)
    conf = workdir / "tinyproxy.conf"
    conf.write_text(tinyproxy_config_at(listen, port, [LAB_RANGE], workdir))
    netns_popen(
        ns,
        [exe, "-d", "-c", str(conf)],
        workdir / "tinyproxy.out",
        ready=(listen, port),
        name="tinyproxy",
        extra_logs=[workdir / "tinyproxy.log"],
    )
    return port


def start_microsocks_in(ns: str, listen: str, workdir: Path) -> int:
    """microsocks (SOCKS5, no auth) on ``listen`` in ``ns``; it resolves names itself."""
    exe = require_binary("microsocks")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port_in(ns, listen)
    netns_popen(
        ns,
        [exe, "-i", listen, "-p", str(port)],
        workdir / "microsocks.out",
        ready=(listen, port),
        name="microsocks",
    )
    return port


def _addresses_in(ns: str) -> list[str]:
    out = _run([_ip(), "-n", ns, "-o", "-4", "addr", "show", "scope", "global"])
    return [line.split()[3].split("/")[0] for line in out.splitlines() if line.strip()]


def danted_config_at(listen: str, port: int, externals: Sequence[str], workdir: Path) -> str:
    """realproxies.danted_config, but on ``listen``, leaving by the route's interface."""
    lines = [
        f"logoutput: {workdir / 'danted.log'}",
        f"internal: {listen} port = {port}",
        *(f"external: {e}" for e in externals),
        "external.rotation: route",
        "clientmethod: none",
        "socksmethod: none",
        "user.privileged: root",
        "user.unprivileged: nobody",
        "client pass {",
        f"    from: {LAB_RANGE} to: 0.0.0.0/0",
        "    log: error",
        "}",
        "socks pass {",
        f"    from: {LAB_RANGE} to: 0.0.0.0/0",
        "    command: connect",
        "    log: error connect",
        "}",
        "",
    ]
    return "\n".join(lines)


def start_danted_in(ns: str, listen: str, workdir: Path) -> int:
    """dante (SOCKS5, no auth) on ``listen`` in ``ns``; it resolves names itself."""
    exe = require_binary("danted", "sockd")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port_in(ns, listen)
    conf = workdir / "danted.conf"
    conf.write_text(danted_config_at(listen, port, _addresses_in(ns), workdir))
    netns_popen(
        ns,
        [exe, "-f", str(conf), "-p", str(workdir / "danted.pid")],
        workdir / "danted.out",
        ready=(listen, port),
        name="danted",
        extra_logs=[workdir / "danted.log"],
    )
    return port


TINYPROXY = HopKind("tinyproxy", "http", start_tinyproxy_in)
MICROSOCKS = HopKind("microsocks", "socks5h", start_microsocks_in)
DANTED = HopKind("danted", "socks5h", start_danted_in)


# --------------------------------------------------------------------------- transparent capture
#
# For tests of transparent listeners: names that resolve only where a test says, routes
# for captured ranges, a LAN namespace behind a gateway namespace, squid inside a
# namespace, TLS and server-speaks-first origins, and nft applied for real.


def add_hosts(ns: str, lines: str) -> None:
    """Append to ``ns``'s hosts file (made by the network that created ``ns``)."""
    hosts = ETC_NETNS / ns / "hosts"
    with hosts.open("a") as f:
        f.write(lines if lines.endswith("\n") else lines + "\n")


def add_route(ns: str, prefix: str, via: str) -> None:
    """``ip route add prefix via via`` inside ``ns`` (never a default route)."""
    if prefix in ("default", "0.0.0.0/0", "::/0"):
        raise ValueError("test namespaces have no default route")
    _run([_ip(), "-n", ns, "route", "add", prefix, "via", via])


@contextlib.contextmanager
def leaf_namespace(
    parent: str, parent_addr: str, leaf_addr: str, *, role: str = "lan", hosts_extra: str = ""
) -> Iterator[str]:
    """A namespace joined to ``parent`` by a veth pair (``to-<role>`` on the parent's
    side, ``to-gw`` on the leaf's), a /30 between ``parent_addr`` and ``leaf_addr``; its
    name. No default route, forwarding off, IPv6 off. Torn down on exit."""
    ci.check_marked("netns", "network namespaces")
    if os.geteuid() != 0:
        _unavailable("not root")
    ip = _ip()
    ns = f"{_new_tag()}-{role}"
    _write_etc(ns, hosts_extra)
    created: list[str] = []
    with _sigterm_unwinds():
        try:
            _run([ip, "netns", "add", ns])
            created.append(ns)
            _configure_namespace(ip, ns)
            _link(ip, (parent, f"to-{role}", parent_addr), (ns, "to-gw", leaf_addr))
            _wait_links_up(ip, [ns])
            yield ns
        finally:
            problems = _teardown(ip, created)
    if problems:
        raise RuntimeError("leaf namespace teardown: " + "; ".join(problems))


@dataclass(frozen=True)
class LinkedPair:
    """Two namespaces joined by one veth pair, with IPv4 and IPv6 on it."""

    left: str
    right: str
    left_v4: str
    right_v4: str
    left_v6: str
    right_v6: str


@contextlib.contextmanager
def linked_pair(hosts_extra: str = "") -> Iterator[LinkedPair]:
    """``left`` and ``right`` namespaces on one link: 198.18.2.1/30 - .2 and, with IPv6
    switched on (addresses without duplicate detection, usable at once), 2001:db8:2::1/64
    - ::2 (documentation addresses, inside these namespaces only). No default route, no
    forwarding. ``hosts_extra`` goes into the left one's hosts file."""
    ci.check_marked("netns", "network namespaces")
    if os.geteuid() != 0:
        _unavailable("not root")
    ip = _ip()
    tag = _new_tag()
    pair = LinkedPair(
        f"{tag}-left", f"{tag}-right", "198.18.2.1", "198.18.2.2", "2001:db8:2::1", "2001:db8:2::2"
    )
    created: list[str] = []
    with _sigterm_unwinds():
        try:
            for ns in (pair.left, pair.right):
                _write_etc(ns, hosts_extra if ns == pair.left else "")
                _run([ip, "netns", "add", ns])
                created.append(ns)
                _configure_namespace(ip, ns)
                for setting in ("all", "default", "lo"):
                    _run(
                        [
                            ip,
                            "netns",
                            "exec",
                            ns,
                            "sysctl",
                            "-qw",
                            f"net.ipv6.conf.{setting}.disable_ipv6=0",
                        ]
                    )
            _link(ip, (pair.left, "to-right", pair.left_v4), (pair.right, "to-left", pair.right_v4))
            for ns, ifname, addr in (
                (pair.left, "to-right", pair.left_v6),
                (pair.right, "to-left", pair.right_v6),
            ):
                _run(
                    [
                        ip,
                        "netns",
                        "exec",
                        ns,
                        "sysctl",
                        "-qw",
                        f"net.ipv6.conf.{ifname}.disable_ipv6=0",
                    ]
                )
                _run([ip, "-n", ns, "addr", "add", f"{addr}/64", "dev", ifname, "nodad"])
            _wait_links_up(ip, [pair.left, pair.right])
            yield pair
        finally:
            problems = _teardown(ip, created)
    if problems:
        raise RuntimeError("linked pair teardown: " + "; ".join(problems))


def nft_apply(ns: str, ruleset: str) -> None:
    """``nft -f -`` inside ``ns``, fed ``ruleset``; raise with nft's complaint."""
    exe = require_binary("nft")
    done = subprocess.run(
        netns_argv(ns, [exe, "-f", "-"]),
        input=ruleset.encode(),
        capture_output=True,
        env=child_env(),
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"nft -f - in {ns}: {done.stderr.decode('utf-8', 'replace')}")


def nft_counter(ns: str, chain: str, comment: str, table: str = "inet chainer") -> int:
    """Packets counted by the rule of ``chain`` whose comment is ``comment``."""
    exe = require_binary("nft")
    listing = _run(netns_argv(ns, [exe, "list", "chain", *table.split(), chain]))
    for line in listing.splitlines():
        if f'comment "{comment}"' in line and "counter packets" in line:
            return int(line.split("counter packets", 1)[1].split()[0])
    raise AssertionError(f"no counted rule {comment!r} in {chain}:\n{listing}")


def start_squid_in(ns: str, listen: str, workdir: Path) -> int:
    """squid on ``listen`` in ``ns``, CONNECT to any port from the lab range. Its files
    live in a directory its user ``proxy`` may write (pytest's are root-only);
    ``workdir/access.log`` links to its access log."""
    exe = require_binary("squid")
    workdir.mkdir(parents=True, exist_ok=True)
    files = Path(tempfile.mkdtemp(prefix="chainer-squid-"))
    user = None
    if os.geteuid() == 0:
        user = "proxy"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
            pw = pwd.getpwnam(user)
        os.chown(files, pw.pw_uid, pw.pw_gid)
    os.chmod(files, 0o755)
    port = free_port_in(ns, listen)
    conf = files / "squid.conf"
    conf.write_text(
        squid_config(port, files, user)
        .replace(f"http_port {LOOPBACK}:{port}", f"http_port {listen}:{port}")
        .replace("http_access allow localhost", f"acl lab src {LAB_RANGE}\nhttp_access allow lab")
    )
    (workdir / "access.log").unlink(missing_ok=True)
    (workdir / "access.log").symlink_to(files / "access.log")
    try:
        proc = netns_popen(
            ns,
            [exe, "-N", "-f", str(conf)],
            workdir / "squid.out",
            ready=(listen, port),
            ready_timeout=30.0,
            name="squid",
            extra_logs=[files / "cache.log"],
            cwd=files,
        )
    except BaseException:
        shutil.rmtree(files, ignore_errors=True)
        raise
    proc.add_cleanup_dir(str(files))
    return port


SQUID = HopKind("squid", "http", start_squid_in)

TLS_ORIGIN_SERVER = r"""
import ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port, prefix, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode(), *sys.argv[4:6]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    timeout = 10

    def do_GET(self):
        body = prefix + self.path.encode("utf-8", "replace")
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):
        sys.stderr.write("tls origin: " + (format % args) + "\n")


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
ThreadingHTTPServer.daemon_threads = True
server = ThreadingHTTPServer((host, port), Handler)
server.socket = context.wrap_socket(server.socket, server_side=True)
server.serve_forever()
"""


def start_tls_origin_in(
    ns: str,
    listen: str,
    workdir: Path,
    cert_pem: Path,
    key_pem: Path,
    port: int = 443,
    prefix: str = "tls-origin:",
) -> ManagedProcess:
    """An HTTPS origin in ``ns`` with the given certificate: ``GET /p`` answers
    ``{prefix}/p``."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable,
        "-c",
        TLS_ORIGIN_SERVER,
        listen,
        str(port),
        prefix,
        str(cert_pem),
        str(key_pem),
    ]
    return netns_popen(
        ns, argv, workdir / "tls-origin.out", ready=(listen, port), name="tls-origin"
    )


BANNER_SERVER = r"""
import socketserver, sys

host, port, banner = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()


class Handler(socketserver.StreamRequestHandler):
    timeout = 10

    def handle(self):
        self.wfile.write(banner + b"\r\n")  # the server speaks first, as SSH and SMTP do
        line = self.rfile.readline(1024)
        self.wfile.write(b"echo: " + line)


socketserver.ThreadingTCPServer.daemon_threads = True
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer((host, port), Handler).serve_forever()
"""


def start_banner_in(ns: str, listen: str, workdir: Path, port: int, banner: str) -> ManagedProcess:
    """A server-speaks-first service in ``ns``: it sends ``banner`` at once, then echoes
    one line back (``echo: <line>``) and closes."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", BANNER_SERVER, listen, str(port), banner]
    return netns_popen(ns, argv, workdir / "banner.out", ready=(listen, port), name="banner")


def start_danted_verbose_in(ns: str, listen: str, workdir: Path) -> int:
    """dante as :func:`start_danted_in`, logging every request as it was received
    (``debug: 1``): a domain-name request shows as ``ATYP: 3 address: NAME.PORT``."""
    exe = require_binary("danted", "sockd")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port_in(ns, listen)
    conf = workdir / "danted.conf"
    conf.write_text("debug: 1\n" + danted_config_at(listen, port, _addresses_in(ns), workdir))
    netns_popen(
        ns,
        [exe, "-f", str(conf), "-p", str(workdir / "danted.pid")],
        workdir / "danted.out",
        ready=(listen, port),
        name="danted",
        extra_logs=[workdir / "danted.log"],
    )
    return port


DANTED_VERBOSE = HopKind("danted", "socks5h", start_danted_verbose_in)


DUAL_ORIGIN_SERVER = ORIGIN_SERVER.replace(
    "ThreadingHTTPServer.daemon_threads = True",
    "ThreadingHTTPServer.daemon_threads = True\n"
    "if ':' in host:\n"
    "    import socket\n"
    "    ThreadingHTTPServer.address_family = socket.AF_INET6",
)


def start_dual_origin_in(
    ns: str, listen: str, workdir: Path, port: int = 80, prefix: str = "origin:"
) -> ManagedProcess:
    """:func:`start_origin_in` that may also listen on an IPv6 address."""
    workdir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", DUAL_ORIGIN_SERVER, listen, str(port), prefix]
    log = workdir / f"origin-{listen.replace(':', '_')}.out"
    return netns_popen(ns, argv, log, ready=(listen, port), name="origin")


def set_resolv_conf(ns: str, text: str) -> None:
    """Replace ``ns``'s resolv.conf (made by the network that created ``ns``): point its
    processes at a DNS server the test runs, inside the namespaces."""
    (ETC_NETNS / ns / "resolv.conf").write_text(text)
