"""Network namespaces joined by links with a real delay, for the benchmark.

How this works. `NetLab` creates one network namespace per role (`chb-<6 hex>-<role>`),
each with `lo` up, IPv4 forwarding off, IPv6 off and no default route, and joins pairs
of them with links. A link is a pair of TUN devices, one in each namespace, whose
packets `delayline.py` (one process for every link) holds for the link's delay each
way: this kernel has no `sch_netem`, so the delay is made in user space, but on the
wire — TCP's handshakes and ACKs wait like everything else. Link i carries
198.18.i.1 (left) and 198.18.i.2 (right) as a point-to-point pair: a namespace reaches
its neighbours and nothing else.

`ip netns exec` bind-mounts `/etc/netns/<ns>/*` over `/etc`: every namespace gets a
`hosts` file (localhost plus what the caller adds), a `resolv.conf` naming 127.0.0.1
(nothing listens there: a lookup of an unknown name fails at once instead of asking the
machine's resolver) and `nsswitch.conf` `files dns`.

Everything is undone on exit, after a failure too: the processes started by `spawn`
(by PID), anything else still running in our namespaces (SIGKILL, by PID), the delay
line, the namespaces and their `/etc/netns` directories. The plumbing is a small copy of
what tests/netns.py does (bench code does not import from tests/), including the
marker that lets overlapping runs share `/etc/netns`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from procs import Lab, Proc

BENCH = Path(__file__).resolve().parent
ETC_NETNS = Path("/etc/netns")
RUN_NETNS = Path("/run/netns")
# Shared with tests/netns.py: present while /etc/netns exists because one of our runs
# made it; the last run out removes both.
ETC_NETNS_MARKER = Path("/run/chainer-tests-made-etc-netns")
COMMAND_TIMEOUT = 10.0
NO_DNS = "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n"
LAB_RANGE = "198.18.0.0/15"

_SYSCTL = """\
set -e
echo 0 > /proc/sys/net/ipv4/ip_forward
if [ -d /proc/sys/net/ipv6 ]; then
    echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6
    echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
fi
"""


class LabUnavailable(RuntimeError):
    """Namespaces or TUN devices cannot be made here (not root, no `ip`, no /dev/net/tun)."""


@dataclass(frozen=True)
class Link:
    """One delayed link: `left` and `right` are namespace roles; `index` numbers its
    addresses (198.18.index.1 on the left, .2 on the right)."""

    index: int
    left: str
    right: str

    @property
    def left_addr(self) -> str:
        return f"198.18.{self.index}.1"

    @property
    def right_addr(self) -> str:
        return f"198.18.{self.index}.2"


def run_cmd(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> str:
    done = subprocess.run(
        list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        err = done.stderr.decode("utf-8", "replace").strip()
        raise RuntimeError(f"{' '.join(argv)} -> exit {done.returncode}: {err}")
    return done.stdout.decode("utf-8", "replace")


def available() -> str | None:
    """Why a lab cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "not root"
    if shutil.which("ip") is None:
        return "no `ip` (apt-get install iproute2)"
    if not Path("/dev/net/tun").exists():
        return "no /dev/net/tun"
    return None


@dataclass
class NetLab:
    """The namespaces (role -> name), the links and the processes of one run."""

    lab: Lab
    tag: str = field(default_factory=lambda: f"chb-{secrets.token_hex(3)}")
    names: dict[str, str] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    wire: Proc | None = None
    procs: list[Proc] = field(default_factory=list)  # what spawn started, stopped first

    def ns(self, role: str) -> str:
        return self.names[role]

    def argv(self, role: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns(role), *argv]

    def spawn(self, role: str, name: str, argv: Sequence[str]) -> Proc:
        """A process inside `role`'s namespace (`ip netns exec` execs it: same PID)."""
        proc = self.lab.spawn(name, self.argv(role, argv))
        self.procs.append(proc)
        return proc

    def run(
        self, role: str, argv: Sequence[str], timeout: float = 30.0
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            self.argv(role, argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )

    def accepts(self, role: str, host: str, port: int) -> bool:
        probe = (
            "import socket,sys\n"
            "s=socket.socket(); s.settimeout(0.5)\n"
            f"sys.exit(s.connect_ex(({host!r},{port})) != 0)\n"
        )
        try:
            return self.run(role, [sys.executable, "-c", probe], timeout=5).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_listening(
        self, role: str, host: str, port: int, proc: Proc, timeout: float = 30.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited at start:\n{proc.log_tail()}")
            if self.accepts(role, host, port):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{proc.name} not listening on {host}:{port} after {timeout:g}s")


@contextlib.contextmanager
def netlab(
    lab: Lab,
    roles: Sequence[str],
    links: Sequence[tuple[str, str]],
    delay: float,
    hosts: dict[str, str] | None = None,
) -> Iterator[NetLab]:
    """Namespaces for `roles`, joined by `links` (pairs of roles) delayed `delay` seconds
    each way; `hosts[role]` is added to that namespace's hosts file. Torn down on exit."""
    problem = available()
    if problem:
        raise LabUnavailable(problem)
    net = NetLab(lab)
    created: list[str] = []
    try:
        for role in roles:
            name = f"{net.tag}-{role}"
            _write_etc(name, (hosts or {}).get(role, ""))
            run_cmd(["ip", "netns", "add", name])
            created.append(name)
            net.names[role] = name
            run_cmd(["ip", "netns", "exec", name, "sh", "-c", _SYSCTL])
            run_cmd(["ip", "-n", name, "link", "set", "lo", "up"])
        net.links = [Link(i, left, right) for i, (left, right) in enumerate(links, 1)]
        if net.links:
            net.wire = _start_wire(net, delay)
            for link in net.links:
                for role, dev, mine, peer in (
                    (link.left, f"l{link.index}", link.left_addr, link.right_addr),
                    (link.right, f"r{link.index}", link.right_addr, link.left_addr),
                ):
                    ns = net.ns(role)
                    run_cmd(["ip", "-n", ns, "addr", "add", mine, "peer", peer, "dev", dev])
                    run_cmd(["ip", "-n", ns, "link", "set", dev, "up"])
        yield net
    finally:
        _teardown(net, created)


def _start_wire(net: NetLab, delay: float) -> Proc:
    specs = [
        f"{net.ns(link.left)}:l{link.index}:{net.ns(link.right)}:r{link.index}"
        for link in net.links
    ]
    argv = [sys.executable, str(BENCH / "delayline.py"), "--delay", f"{delay:g}", *specs]
    proc = net.lab.spawn("delayline", argv, pipes=True)
    stdout = proc.popen.stdout
    assert stdout is not None
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(15)
    if box and box[0].strip() == b"ready":
        return proc
    raise RuntimeError(f"delayline did not get ready:\n{proc.log_tail()}")


def _teardown(net: NetLab, created: Sequence[str]) -> None:
    for proc in reversed(net.procs):
        net.lab.stop(proc)
    for ns in reversed(created):
        _kill_leftovers(ns)
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            run_cmd(["ip", "netns", "delete", ns])
        shutil.rmtree(ETC_NETNS / ns, ignore_errors=True)
    if net.wire is not None:
        net.lab.stop(net.wire)
    _release_etc_netns()


def _kill_leftovers(ns: str) -> None:
    """SIGKILL, by PID, what still runs in our namespace (children of what we started,
    such as dante's): a namespace with a process in it outlives `ip netns delete`."""
    try:
        pids = [int(p) for p in run_cmd(["ip", "netns", "pids", ns]).split()]
    except (RuntimeError, ValueError, subprocess.TimeoutExpired):
        return
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _write_etc(ns: str, hosts_extra: str) -> None:
    try:
        ETC_NETNS.mkdir(mode=0o755)
        ETC_NETNS_MARKER.touch()
    except FileExistsError:
        pass
    directory = ETC_NETNS / ns
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "hosts").write_text(f"127.0.0.1\tlocalhost\n{hosts_extra}")
    (directory / "resolv.conf").write_text(NO_DNS)
    if Path("/etc/nsswitch.conf").exists():
        (directory / "nsswitch.conf").write_text("hosts: files dns\n")


def _release_etc_netns() -> None:
    if not ETC_NETNS_MARKER.exists():
        return
    try:
        ETC_NETNS.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return  # not empty: a run still using it removes it later
    ETC_NETNS_MARKER.unlink(missing_ok=True)
