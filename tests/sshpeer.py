"""A real OpenSSH server (Debian's `sshd`) as a test peer, with keys made for the test.

Everything lives in a temporary directory: the host key, the user keys (one plain, one
encrypted with a passphrase), `authorized_keys` and `sshd_config`. The machine's own
~/.ssh and sshd are never touched: sshd runs as `sshd -D -e -f CONFIG` on a loopback
port (or inside a test namespace), logs to its ManagedProcess log, and is stopped by
PID. Logins are as root (the tests run as root; `PermitRootLogin yes` in our config
only), with keys from our own `AuthorizedKeysFile` (`StrictModes no`: the file sits
under /tmp). sshd needs its privilege-separation directory /run/sshd, which Debian's
service unit would create; it is created here when missing.

``Sshd.logins()`` counts "Accepted publickey" lines in the log: one per SSH session.
``Sshd.session_pids()`` lists the per-connection processes (children of the listener):
killing one drops that session.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncssh
from realproxies import LOOPBACK, ManagedProcess, free_port, require_binary, start_process

PASSPHRASE = "correct horse battery"


@dataclass(frozen=True)
class SshKeys:
    dir: Path
    host_key: Path  # the server's private key
    host_pub: str  # "ssh-ed25519 AAAA..."
    user_key: Path  # plain
    locked_key: Path  # encrypted with PASSPHRASE
    stranger_key: Path  # a key sshd does not know

    def authorized(self) -> Path:
        return self.dir / "authorized_keys"


def make_keys(directory: Path) -> SshKeys:
    """A host key and user keys in `directory`; the user keys are authorized."""
    directory.mkdir(parents=True, exist_ok=True)

    def new(name: str, passphrase: str | None = None) -> tuple[Path, str]:
        key = asyncssh.generate_private_key("ssh-ed25519")
        path = directory / name
        key.write_private_key(str(path), passphrase=passphrase)
        os.chmod(path, 0o600)
        public = key.export_public_key("openssh").decode().strip()
        return path, public

    host_key, host_pub = new("host_ed25519")
    user_key, user_pub = new("user_ed25519")
    locked_key, locked_pub = new("locked_ed25519", PASSPHRASE)
    stranger_key, _ = new("stranger_ed25519")
    (directory / "authorized_keys").write_text(f"{user_pub}\n{locked_pub}\n")
    return SshKeys(
        directory,
        host_key,
        " ".join(host_pub.split()[:2]),
        user_key,
        locked_key,
        stranger_key,
    )


def sshd_config(listen: str, port: int, keys: SshKeys, extra: Sequence[str] = ()) -> str:
    return "\n".join(
        [
            f"ListenAddress {listen}:{port}",
            f"HostKey {keys.host_key}",
            "PidFile none",
            f"AuthorizedKeysFile {keys.authorized()}",
            "StrictModes no",
            "PermitRootLogin yes",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "AllowTcpForwarding yes",
            "AllowAgentForwarding no",
            "X11Forwarding no",
            "PrintMotd no",
            "MaxStartups 100",
            "MaxSessions 100",
            "LogLevel VERBOSE",
            *extra,
            "",
        ]
    )


@dataclass(frozen=True)
class Sshd:
    host: str
    port: int
    keys: SshKeys
    proc: ManagedProcess

    def log(self) -> str:
        return Path(self.proc.log_path).read_text(errors="replace")

    def logins(self) -> int:
        return self.log().count("Accepted publickey for")

    def session_pids(self) -> list[int]:
        """The per-connection sshd processes (children of the listening one)."""
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            if ppid == self.proc.pid:
                pids.append(int(entry))
        return pids

    def wait_log(self, text: str, count: int = 1, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.log().count(text) < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def prepare_sshd() -> str:
    exe = require_binary("sshd")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    return exe


def start_sshd(workdir: Path, keys: SshKeys, extra: Sequence[str] = ()) -> Sshd:
    """sshd on a free loopback port; stop it with `.proc.stop()`."""
    exe = prepare_sshd()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = workdir / "sshd_config"
    config.write_text(sshd_config(LOOPBACK, port, keys, extra))
    proc = start_process(
        [exe, "-D", "-e", "-f", str(config)], port, workdir / "sshd.log", name="sshd"
    )
    return Sshd(LOOPBACK, port, keys, proc)


def known_hosts_line(sshd: Sshd) -> str:
    host = sshd.host if sshd.port == 22 else f"[{sshd.host}]:{sshd.port}"
    return f"{host} {sshd.keys.host_pub}\n"


def start_sshd_in(ns: str, listen: str, workdir: Path, keys: SshKeys) -> Sshd:
    """sshd on `listen` inside the test namespace `ns` (stopped with the namespace)."""
    from netns import free_port_in, netns_popen

    exe = prepare_sshd()
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port_in(ns, listen)
    config = workdir / "sshd_config"
    config.write_text(sshd_config(listen, port, keys))
    proc = netns_popen(
        ns, [exe, "-D", "-e", "-f", str(config)], workdir / "sshd.log", ready=(listen, port)
    )
    return Sshd(listen, port, keys, proc)
