"""The SSH-hop contenders: one real sshd on loopback, reached by chainer (`chainer-ssh`,
route `[ssh]`) and by pproxy (`pproxy-ssh`, `-r ssh://...`), both logging in with the
same generated key. Both keep one SSH session and open a channel per tunnel, so their
set-up time at concurrency 1 is the cost of a tunnel through a warm SSH hop.

sshd runs as `sshd -D -e -f CONFIG` with a host key, a user key and an
authorized_keys file generated into the run's temp dir (asyncssh, which chainer already
depends on); it needs root (privilege separation) and Debian's openssh-server. Without
either, the two contenders are left out with a note. pproxy's ssh client needs asyncssh
in pproxy's own venv: installed there once when missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common import LOOPBACK, free_port

SSHD_SEARCH = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


@dataclass(frozen=True)
class SshTarget:
    port: int
    user_key: Path
    host_pub: str  # "ssh-ed25519 AAAA..."


def find_sshd() -> tuple[str | None, str]:
    """The sshd binary, or None and why not."""
    if os.geteuid() != 0:
        return None, "not root (sshd needs root for privilege separation)"
    exe = shutil.which("sshd") or next((p for p in SSHD_SEARCH if os.path.exists(p)), None)
    if exe is None:
        return None, "sshd not installed (apt-get install openssh-server)"
    return exe, ""


def prepare(workdir: Path) -> tuple[SshTarget, Path]:
    """Keys and sshd_config in `workdir`; returns the target and the config's path."""
    import asyncssh

    keys = workdir / "ssh"
    keys.mkdir(parents=True, exist_ok=True)
    host = asyncssh.generate_private_key("ssh-ed25519")
    user = asyncssh.generate_private_key("ssh-ed25519")
    host.write_private_key(str(keys / "host"))
    user.write_private_key(str(keys / "user"))
    os.chmod(keys / "host", 0o600)
    os.chmod(keys / "user", 0o600)
    (keys / "authorized_keys").write_bytes(user.export_public_key())
    port = free_port()
    config = keys / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {LOOPBACK}:{port}",
                f"HostKey {keys / 'host'}",
                "PidFile none",
                f"AuthorizedKeysFile {keys / 'authorized_keys'}",
                "StrictModes no",
                "PermitRootLogin yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "AllowTcpForwarding yes",
                "MaxSessions 1000",
                "MaxStartups 100",
                "LogLevel ERROR",
                "",
            ]
        )
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # what Debian's unit would create
    pub = " ".join(host.export_public_key().decode().split()[:2])
    return SshTarget(port, keys / "user", pub), config


def chainer_config(port: int, target: SshTarget, max_connections: int) -> str:
    hop = (
        f"{{url: 'ssh://root@{LOOPBACK}:{target.port}', identity: '{target.user_key}',"
        f" host_key: '{target.host_pub}', agent: false}}"
    )
    return "\n".join(
        [
            f"listen: [{LOOPBACK}:{port}]",
            "defaults: {connect_timeout: 5s, handshake_timeout: 10s, deadline: 30s}",
            f"limits: {{max_connections: {max_connections}}}",
            "proxies:",
            f"  bastion: {hop}",
            "routes:",
            '  - {match: "*", via: [bastion]}',
            "",
        ]
    )


def pproxy_remote(target: SshTarget) -> str:
    """pproxy's -r for the same sshd: `#user::keyfile` logs in with that key (pproxy
    checks no host key: known_hosts=None in its source)."""
    return f"ssh://{LOOPBACK}:{target.port}#root::{target.user_key}"


def ensure_asyncssh(pproxy_exe: Path, log: Callable[[str], None]) -> str:
    """asyncssh in pproxy's venv (its ssh client needs it); '' when ready, else why not."""
    python = pproxy_exe.parent / "python"
    check = subprocess.run(
        [str(python), "-c", "import asyncssh"], capture_output=True, timeout=60, check=False
    )
    if check.returncode == 0:
        return ""
    log("installing asyncssh into pproxy's venv (once)")
    try:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "asyncssh"],
            check=True,
            capture_output=True,
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"asyncssh install failed ({exc})"
    return ""
