"""Real proxies and origins as test peers: squid, tinyproxy, stunnel, dante, microsocks.

Every peer runs as a child process on a free loopback port with a config generated into
a temporary directory. A start waits (bounded) until the port accepts; a failed start
raises ``ProxyStartError`` with the tail of the peer's logs. Peers are stopped by PID.

The pytest fixtures at the bottom are imported by ``tests/conftest.py``:

==========================  ========  =============================================
fixture                     scope     value
==========================  ========  =============================================
``ca``                      session   ``trustme.CA``
``ca_pem``                  session   ``str``: path of the CA certificate (PEM)
``tls_origin``              session   ``Origin``: HTTPS origin on 127.0.0.1
``plain_origin``            session   ``Origin``: plain HTTP origin on 127.0.0.1
``tinyproxy``               session   ``Endpoint``: tinyproxy, CONNECT to any port
``squid``                   session   ``Endpoint``: squid, CONNECT to any port
``stunnel_https_proxy``     session   ``Endpoint``: TLS (stunnel) in front of squid
``microsocks``              session   ``Endpoint``: SOCKS5, no auth
``microsocks_auth``         session   ``Endpoint``: SOCKS5, user alice / s3cret
``danted``                  session   ``Endpoint``: SOCKS5 (dante), no auth
``spawn_process``           function  ``start_process`` whose processes stop at teardown
==========================  ========  =============================================

The origins answer ``GET /any/path`` with 200 and the body ``b"origin:/any/path"``;
``GET /headers`` answers a JSON object of the request headers received (names
lower-cased, repeated headers joined with ", "); ``POST`` answers the request body.
They speak HTTP/1.0: one request per connection.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import ci
import pytest
import trustme

LOOPBACK = "127.0.0.1"
SEARCH_DIRS = ("/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin")
APT_PACKAGES = "squid tinyproxy stunnel4 dante-server microsocks curl socat"
PROXY_ENV_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "ftp_proxy")

MICROSOCKS_USER = "alice"
MICROSOCKS_PASSWORD = "s3cret"


class ProxyStartError(RuntimeError):
    """A peer did not come up; the message carries the tail of its logs."""


# --------------------------------------------------------------------------- values


@dataclass(frozen=True)
class Endpoint:
    """Where a proxy listens, and what a client needs to use it."""

    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_pem: str | None = None  # CA that signed the proxy's own TLS cert (HTTPS proxies)
    log_files: tuple[str, ...] = field(default=(), compare=False)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, scheme: str, *, credentials: bool = True) -> str:
        """``scheme://[user:pass@]host:port``, e.g. ``url("socks5h")``."""
        userinfo = ""
        if credentials and self.username is not None:
            userinfo = f"{self.username}:{self.password or ''}@"
        return f"{scheme}://{userinfo}{self.host}:{self.port}"


@dataclass(frozen=True)
class Origin:
    """An HTTP(S) origin server on loopback."""

    host: str
    port: int
    ca_pem: str | None  # None for the plain-HTTP origin
    scheme: str = "https"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def url(self, path: str = "/", *, host: str | None = None) -> str:
        """URL of ``path``; ``host`` may name it otherwise (``localhost``, ``origin.test``)."""
        if not path.startswith("/"):
            path = "/" + path
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"


# --------------------------------------------------------------------------- helpers


def require_binary(*names: str) -> str:
    """Path of the first of ``names`` found on PATH or in the usual bin dirs.

    The running test must be marked ``interop``. None found: skip, or fail when
    ``CHAINER_CI`` is set (a missing peer is a CI failure): see ``ci.py``.
    """
    what = " or ".join(names)
    ci.check_marked("interop", what)
    for name in names:
        found = shutil.which(name)
        if found:
            return found
        for directory in SEARCH_DIRS:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    ci.unavailable(f"{what} not installed; apt-get install {APT_PACKAGES}")


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def child_env() -> dict[str, str]:
    """The environment for peers and curl: no proxy variables, C locale."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_ENV_VARS}
    env["LC_ALL"] = "C"
    return env


def tail(path: str | Path, lines: int = 40) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        return f"({exc.strerror})"
    text = data.decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:]) if text else "(empty)"


def accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """One try: does ``host:port`` accept a TCP connection?"""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port(host: str, port: int, timeout: float) -> bool:
    """True once ``host:port`` accepts a TCP connection, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not accepts(host, port):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


class ManagedProcess:
    """A child process we started, with its log files; stopped by PID."""

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        port: int,
        log_path: str,
        log_handle: IO[bytes],
        extra_logs: Sequence[str],
        cleanup_dirs: Sequence[str] = (),
    ) -> None:
        self.name = name
        self.popen = popen
        self.port = port
        self.log_path = log_path
        self.extra_logs = tuple(extra_logs)
        self._log_handle = log_handle
        self._cleanup_dirs = list(cleanup_dirs)
        self._stopped = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def log_files(self) -> tuple[str, ...]:
        return (self.log_path, *self.extra_logs)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def add_cleanup_dir(self, path: str) -> None:
        self._cleanup_dirs.append(path)

    def describe_logs(self, lines: int = 40) -> str:
        return "\n".join(
            f"--- {path} (last {lines} lines) ---\n{tail(path, lines)}" for path in self.log_files
        )

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL; then reap what is left of its process group."""
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.popen.poll() is None:
                self.popen.terminate()
                try:
                    self.popen.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(5)
            self._reap_group()
        finally:
            self._log_handle.close()
            for path in self._cleanup_dirs:
                shutil.rmtree(path, ignore_errors=True)

    def _reap_group(self) -> None:
        # start_new_session=True made the child the leader of its own group; its helpers
        # (danted's children) normally exit with it. Whatever is left gets SIGKILL.
        pgid = self.popen.pid
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_process(
    argv: Sequence[str],
    port: int,
    log_path: str | Path,
    ready_timeout: float = 15.0,
    *,
    host: str = LOOPBACK,
    name: str | None = None,
    extra_logs: Sequence[str | Path] = (),
    cwd: str | Path | None = None,
    cleanup_dirs: Sequence[str] = (),
) -> ManagedProcess:
    """Start ``argv`` (stdout and stderr to ``log_path``) and wait until ``host:port`` accepts.

    On failure the process is stopped and ``ProxyStartError`` carries the tail of
    ``log_path`` and of ``extra_logs`` (the peer's own log files).
    """
    name = name or os.path.basename(argv[0])
    log_path = str(log_path)
    log_handle = open(log_path, "ab")  # closed by ManagedProcess.stop
    try:
        popen = subprocess.Popen(
            list(argv),
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
        name, popen, port, log_path, log_handle, [str(p) for p in extra_logs], cleanup_dirs
    )
    deadline = time.monotonic() + ready_timeout
    reason = f"port {host}:{port} did not accept within {ready_timeout:g}s"
    ready = False
    while True:
        code = popen.poll()
        if code is not None:
            reason = f"exited with status {code} before accepting on {host}:{port}"
            break
        if accepts(host, port):
            ready = popen.poll() is None
            if not ready:
                reason = f"port {host}:{port} accepted but the process exited"
            break
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)
    if not ready:
        logs = proc.describe_logs()
        proc.stop(timeout=5)
        raise ProxyStartError(f"{name} ({' '.join(argv)}): {reason}\n{logs}")
    return proc


# --------------------------------------------------------------------------- curl


@dataclass(frozen=True)
class CurlResult:
    returncode: int
    body: bytes
    stderr: str


def curl(*args: str, timeout: float = 20.0) -> CurlResult:
    """Run the real curl (no ~/.curlrc, no proxy variables) and return what it got."""
    exe = require_binary("curl")
    argv = [exe, "-q", "-sS", "--max-time", f"{timeout:g}", *args]
    done = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=child_env(),
        timeout=timeout + 10,
        check=False,
    )
    return CurlResult(done.returncode, done.stdout, done.stderr.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- origins


class _OriginHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"
    server_version = "chainer-test-origin"
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/headers" or self.path.startswith("/headers?"):
            headers: dict[str, str] = {}
            for key, value in self.headers.items():
                k = key.lower()
                headers[k] = f"{headers[k]}, {value}" if k in headers else value
            self._answer(json.dumps(headers).encode(), "application/json")
        else:
            self._answer(b"origin:" + self.path.encode("utf-8", "replace"))

    do_HEAD = do_GET

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self._answer(self.rfile.read(length))


class _OriginServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], ssl_context: ssl.SSLContext | None) -> None:
        self.ssl_context = ssl_context
        super().__init__(address, _OriginHandler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so one slow
        # client cannot stall accept().
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(_OriginHandler.timeout)
        with self.ssl_context.wrap_socket(request, server_side=True) as tls:
            _OriginHandler(tls, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that go away mid-request are normal in proxy tests


@contextlib.contextmanager
def run_origin(ca: trustme.CA | None = None, ca_pem: str | None = None) -> Iterator[Origin]:
    """An origin on 127.0.0.1 in a thread: HTTPS with a cert from ``ca`` if given."""
    context: ssl.SSLContext | None = None
    if ca is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("localhost", LOOPBACK, "origin.test").configure_cert(context)
    server = _OriginServer((LOOPBACK, 0), context)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield Origin(
            host=LOOPBACK,
            port=server.server_address[1],
            ca_pem=ca_pem if ca is not None else None,
            scheme="https" if ca is not None else "http",
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


# --------------------------------------------------------------------------- proxies


def _is_root() -> bool:
    return os.geteuid() == 0


def tinyproxy_config(port: int, workdir: Path) -> str:
    # No ConnectPort line: CONNECT to every port. As root it keeps running as root
    # (it only warns that no User is set).
    return "\n".join(
        [
            f"Port {port}",
            f"Listen {LOOPBACK}",
            "Timeout 60",
            "MaxClients 200",
            f"Allow {LOOPBACK}",
            f'PidFile "{workdir / "tinyproxy.pid"}"',
            f'LogFile "{workdir / "tinyproxy.log"}"',
            "LogLevel Info",
            "",
        ]
    )


def start_tinyproxy(workdir: Path) -> tuple[ManagedProcess, Endpoint]:
    exe = require_binary("tinyproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "tinyproxy.conf"
    conf.write_text(tinyproxy_config(port, workdir))
    proc = start_process(
        [exe, "-d", "-c", str(conf)],
        port,
        workdir / "tinyproxy.out",
        15.0,
        name="tinyproxy",
        extra_logs=[workdir / "tinyproxy.log"],
    )
    return proc, Endpoint(LOOPBACK, port, log_files=proc.log_files)


def squid_config(port: int, workdir: Path, user: str | None, deny_ports: Sequence[int] = ()) -> str:
    lines = [
        f"http_port {LOOPBACK}:{port}",
        "visible_hostname chainer-test-squid",
    ]
    if deny_ports:  # 403 for a CONNECT (or request) to these ports
        lines.append("acl denied_ports port " + " ".join(str(p) for p in deny_ports))
        lines.append("http_access deny denied_ports")
    lines += [
        # "localhost" is squid's predefined ACL (127.0.0.1, ::1). No SSL_ports rule:
        # CONNECT to every port.
        "http_access allow localhost",
        "http_access deny all",
        "cache deny all",
        "cache_mem 8 MB",
        "pinger_enable off",
        "netdb_filename none",
        "logfile_rotate 0",
        f"cache_log {workdir / 'cache.log'}",
        f"access_log stdio:{workdir / 'access.log'}",
        f"pid_filename {workdir / 'squid.pid'}",
        f"coredump_dir {workdir}",
        "shutdown_lifetime 0 seconds",
    ]
    if user is not None:
        lines.append(f"cache_effective_user {user}")
    return "\n".join(lines) + "\n"


def start_squid(
    ready_timeout: float = 30.0, deny_ports: Sequence[int] = ()
) -> tuple[ManagedProcess, Endpoint]:
    """squid in the foreground; its files live in a fresh directory that it may write.
    It refuses (403) CONNECTs to `deny_ports`.

    As root squid drops to user ``proxy``, which cannot enter pytest's 0700 tmp dirs,
    so the directory is our own ``mkdtemp`` (chowned to ``proxy``), removed at stop.
    """
    exe = require_binary("squid")
    workdir = Path(tempfile.mkdtemp(prefix="chainer-squid-"))
    user: str | None = None
    if _is_root():
        user = "proxy"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
            pw = pwd.getpwnam(user)
        os.chown(workdir, pw.pw_uid, pw.pw_gid)
    os.chmod(workdir, 0o755)
    port = free_port()
    conf = workdir / "squid.conf"
    conf.write_text(squid_config(port, workdir, user, deny_ports))
    try:
        proc = start_process(
            [exe, "-N", "-f", str(conf)],
            port,
            workdir / "squid.out",
            ready_timeout,
            name="squid",
            extra_logs=[workdir / "cache.log"],
            cwd=workdir,
            cleanup_dirs=[str(workdir)],
        )
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    logs = (*proc.log_files, str(workdir / "access.log"))
    return proc, Endpoint(LOOPBACK, port, log_files=logs)


def stunnel_config(port: int, upstream: Endpoint, cert_pem: Path, workdir: Path) -> str:
    return "\n".join(
        [
            "foreground = yes",
            f"pid = {workdir / 'stunnel.pid'}",
            "debug = 5",
            "[https-proxy]",
            f"accept = {LOOPBACK}:{port}",
            f"connect = {upstream.host}:{upstream.port}",
            f"cert = {cert_pem}",
            "",
        ]
    )


def start_stunnel(
    workdir: Path, upstream: Endpoint, ca: trustme.CA, ca_pem: str
) -> tuple[ManagedProcess, Endpoint]:
    """stunnel in server mode: TLS on a loopback port, plaintext to ``upstream``."""
    exe = require_binary("stunnel4", "stunnel")
    workdir.mkdir(parents=True, exist_ok=True)
    cert_pem = workdir / "proxy.pem"
    ca.issue_cert(LOOPBACK, "proxy.test").private_key_and_cert_chain_pem.write_to_path(
        str(cert_pem)
    )
    os.chmod(cert_pem, 0o600)  # stunnel warns about readable keys
    port = free_port()
    conf = workdir / "stunnel.conf"
    conf.write_text(stunnel_config(port, upstream, cert_pem, workdir))
    proc = start_process([exe, str(conf)], port, workdir / "stunnel.out", 15.0, name="stunnel")
    return proc, Endpoint(LOOPBACK, port, ca_pem=ca_pem, log_files=proc.log_files)


def start_microsocks(
    workdir: Path, username: str | None = None, password: str | None = None
) -> tuple[ManagedProcess, Endpoint]:
    exe = require_binary("microsocks")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [exe, "-i", LOOPBACK, "-p", str(port)]
    if username is not None:
        argv += ["-u", username, "-P", password or ""]
    suffix = "-auth" if username is not None else ""
    proc = start_process(argv, port, workdir / f"microsocks{suffix}.out", 15.0, name="microsocks")
    return proc, Endpoint(LOOPBACK, port, username, password, log_files=proc.log_files)


def danted_config(port: int, workdir: Path) -> str:
    # The rule blocks must span several lines: the one-line form is a syntax error.
    lines = [
        f"logoutput: {workdir / 'danted.log'}",
        f"internal: {LOOPBACK} port = {port}",
        f"external: {LOOPBACK}",
        "clientmethod: none",
        "socksmethod: none",
    ]
    if _is_root():
        lines += ["user.privileged: root", "user.unprivileged: nobody"]
    lines += [
        "client pass {",
        "    from: 127.0.0.0/8 to: 0.0.0.0/0",
        "    log: error",
        "}",
        "socks pass {",
        "    from: 127.0.0.0/8 to: 0.0.0.0/0",
        "    command: connect",
        "    log: error connect",
        "}",
        "",
    ]
    return "\n".join(lines)


def start_danted(workdir: Path) -> tuple[ManagedProcess, Endpoint]:
    exe = require_binary("danted", "sockd")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "danted.conf"
    conf.write_text(danted_config(port, workdir))
    proc = start_process(
        [exe, "-f", str(conf), "-p", str(workdir / "danted.pid")],
        port,
        workdir / "danted.out",
        15.0,
        name="danted",
        extra_logs=[workdir / "danted.log"],
    )
    return proc, Endpoint(LOOPBACK, port, log_files=proc.log_files)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="session")
def tls_origin(ca: trustme.CA, ca_pem: str) -> Iterator[Origin]:
    with run_origin(ca, ca_pem) as origin:
        yield origin


@pytest.fixture(scope="session")
def plain_origin() -> Iterator[Origin]:
    with run_origin() as origin:
        yield origin


@pytest.fixture(scope="session")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    proc, endpoint = start_tinyproxy(tmp_path_factory.mktemp("tinyproxy"))
    with proc:
        yield endpoint


@pytest.fixture(scope="session")
def squid() -> Iterator[Endpoint]:
    proc, endpoint = start_squid()
    with proc:
        yield endpoint


@pytest.fixture(scope="session")
def stunnel_https_proxy(
    squid: Endpoint, ca: trustme.CA, ca_pem: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Endpoint]:
    proc, endpoint = start_stunnel(tmp_path_factory.mktemp("stunnel"), squid, ca, ca_pem)
    with proc:
        yield endpoint


@pytest.fixture(scope="session")
def microsocks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    proc, endpoint = start_microsocks(tmp_path_factory.mktemp("microsocks"))
    with proc:
        yield endpoint


@pytest.fixture(scope="session")
def microsocks_auth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    proc, endpoint = start_microsocks(
        tmp_path_factory.mktemp("microsocks-auth"), MICROSOCKS_USER, MICROSOCKS_PASSWORD
    )
    with proc:
        yield endpoint


@pytest.fixture(scope="session")
def danted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    proc, endpoint = start_danted(tmp_path_factory.mktemp("danted"))
    with proc:
        yield endpoint


StartProcess = Callable[..., ManagedProcess]


@pytest.fixture
def spawn_process() -> Iterator[StartProcess]:
    """``start_process`` for one test: whatever it started is stopped at teardown."""
    started: list[ManagedProcess] = []

    def spawn(
        argv: Sequence[str],
        port: int,
        log_path: str | Path,
        ready_timeout: float = 15.0,
        **kwargs: Any,
    ) -> ManagedProcess:
        proc = start_process(argv, port, log_path, ready_timeout, **kwargs)
        started.append(proc)
        return proc

    yield spawn
    for proc in reversed(started):
        proc.stop()
