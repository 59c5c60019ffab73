"""Real proxies and an HTTPS origin for the benchmark's namespaces: their configs and argv.

The same peers the tests use (squid 5.7, tinyproxy 1.11, dante 1.4, microsocks), written
again here because bench code does not import from tests/. Every function returns what
to run; starting it (in a namespace, by PID) is netlab.py's and procs.py's job.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

SQUID_PORT = 3128
TINYPROXY_PORT = 8888
DANTE_PORT = 1080
MICROSOCKS_PORT = 1081
ORIGIN_PORT = 443

APT = "apt-get install squid tinyproxy dante-server microsocks proxychains4 curl openssl"


def binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (
                f"{d}/{name}"
                for d in ("/usr/sbin", "/sbin", "/usr/bin")
                if os.access(f"{d}/{name}", os.X_OK)
            ),
            None,
        )
        if found:
            return found
    return None


def missing() -> list[str]:
    wanted = {
        "squid": ("squid",),
        "tinyproxy": ("tinyproxy",),
        "danted": ("danted", "sockd"),
        "microsocks": ("microsocks",),
        "proxychains4": ("proxychains4",),
        "curl": ("curl",),
        "openssl": ("openssl",),
    }
    return [name for name, names in wanted.items() if binary(*names) is None]


def squid(
    listen: str, port: int, workdir: Path, allow: str, deny_ports: tuple[int, ...] = ()
) -> list[str]:
    """squid in the foreground, CONNECT to any port from `allow` (but `deny_ports`).
    As root it drops to `proxy`, so its files live in a directory that user may write."""
    files = workdir / f"squid-{port}"
    files.mkdir(parents=True, exist_ok=True)
    user = None
    if os.geteuid() == 0:
        user = "proxy"
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            user = "nobody"
            pw = pwd.getpwnam(user)
        os.chown(files, pw.pw_uid, pw.pw_gid)
        os.chmod(workdir, 0o755)
    lines = [
        f"http_port {listen}:{port}",
        "visible_hostname chainer-bench-squid",
        f"acl lab src {allow}",
    ]
    if deny_ports:
        lines.append("acl denied_ports port " + " ".join(str(p) for p in deny_ports))
        lines.append("http_access deny denied_ports")
    lines += [
        "http_access allow lab",
        "http_access deny all",
        "cache deny all",
        "cache_mem 8 MB",
        "pinger_enable off",
        "netdb_filename none",
        "logfile_rotate 0",
        f"cache_log {files / 'cache.log'}",
        f"access_log stdio:{files / 'access.log'}",
        f"pid_filename {files / 'squid.pid'}",
        f"coredump_dir {files}",
        "shutdown_lifetime 0 seconds",
    ]
    if user is not None:
        lines.append(f"cache_effective_user {user}")
    conf = files / "squid.conf"
    conf.write_text("\n".join(lines) + "\n")
    return [binary("squid") or "squid", "-N", "-f", str(conf)]


def tinyproxy(
    listen: str, port: int, workdir: Path, allow: str, connect_ports: tuple[int, ...] = ()
) -> list[str]:
    """tinyproxy in the foreground; without `connect_ports` (no ConnectPort line) it may
    CONNECT to every port, with them only to those."""
    conf = workdir / f"tinyproxy-{port}.conf"
    conf.write_text(
        "\n".join(
            [
                *(f"ConnectPort {p}" for p in connect_ports),
                f"Port {port}",
                f"Listen {listen}",
                "Timeout 60",
                "MaxClients 200",
                f"Allow {allow}",
                f'PidFile "{workdir / f"tinyproxy-{port}.pid"}"',
                f'LogFile "{workdir / f"tinyproxy-{port}.log"}"',
                "LogLevel Warning",
                "",
            ]
        )
    )
    return [binary("tinyproxy") or "tinyproxy", "-d", "-c", str(conf)]


def dante(
    listen: str,
    port: int,
    externals: list[str],
    workdir: Path,
    allow: str,
    deny_port: int | None = None,
) -> list[str]:
    """danted, SOCKS5 (and 4) without auth from `allow`, but not to `deny_port`; it
    connects out from whichever of `externals` the route to the destination uses. The
    rule blocks must span lines."""
    lines = [
        f"logoutput: {workdir / f'danted-{port}.log'}",
        f"internal: {listen} port = {port}",
        *(f"external: {address}" for address in externals),
        "external.rotation: route",
        "clientmethod: none",
        "socksmethod: none",
    ]
    if os.geteuid() == 0:
        lines += ["user.privileged: root", "user.unprivileged: nobody"]
    lines += [
        "client pass {",
        f"    from: {allow} to: 0.0.0.0/0",
        "    log: error",
        "}",
    ]
    if deny_port is not None:
        lines += [
            "socks block {",
            f"    from: {allow} to: 0.0.0.0/0 port = {deny_port}",
            "    log: error",
            "}",
        ]
    lines += [
        "socks pass {",
        f"    from: {allow} to: 0.0.0.0/0",
        "    command: connect",
        "    log: error",
        "}",
        "",
    ]
    conf = workdir / f"danted-{port}.conf"
    conf.write_text("\n".join(lines))
    exe = binary("danted", "sockd") or "danted"
    return [exe, "-f", str(conf), "-p", str(workdir / f"danted-{port}.pid")]


def microsocks(listen: str, port: int) -> list[str]:
    return [binary("microsocks") or "microsocks", "-i", listen, "-p", str(port)]


# ------------------------------------------------------------------------ the origin


ORIGIN = r"""
import ssl, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

host, port, cert, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
tickets = int(sys.argv[5])
BODY = b"chainer bench origin\n"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 10

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def finish_request(self, request, client_address):
        request.settimeout(10)
        with context.wrap_socket(request, server_side=True) as tls:
            Handler(tls, client_address, self)

    def handle_error(self, request, client_address):
        pass


context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
context.num_tickets = tickets
Server((host, port), Handler).serve_forever()
"""


def origin(listen: str, port: int, cert: Path, key: Path, tickets: int) -> list[str]:
    """An HTTPS origin: `GET /anything` answers 200 with a 21-byte body. TLS 1.3 sends
    `tickets` session tickets after each handshake (Python's default is 2)."""
    return [sys.executable, "-c", ORIGIN, listen, str(port), str(cert), str(key), str(tickets)]


def certificates(workdir: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """A throwaway CA and a certificate for `names` signed by it: (ca.pem, cert, key)."""
    exe = binary("openssl") or "openssl"
    ca_key, ca_pem = workdir / "ca.key", workdir / "ca.pem"
    key, csr, cert = workdir / "origin.key", workdir / "origin.csr", workdir / "origin.pem"
    ext = workdir / "origin.ext"
    ext.write_text("subjectAltName=" + ",".join(f"DNS:{n}" for n in names) + "\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for argv in (
        [
            exe,
            "req",
            "-x509",
            *ec,
            "-keyout",
            ca_key,
            "-out",
            ca_pem,
            "-days",
            "2",
            "-subj",
            "/CN=chainer bench CA",
        ],
        [exe, "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={names[0]}"],
        [
            exe,
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            ca_pem,
            "-CAkey",
            ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        ],
    ):
        subprocess.run([str(a) for a in argv], check=True, capture_output=True, timeout=60)
    return ca_pem, cert, key
