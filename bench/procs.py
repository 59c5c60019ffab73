"""Processes the benchmark starts: the contenders, the backend and the load generator.

Every process is started here and recorded in a `Lab`, which stops each by its own PID
(SIGTERM, then SIGKILL after a grace period) when the run ends, however it ends.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import sshhop
from common import LOOPBACK, free_port, raise_nofile
from sshhop import SshTarget

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
START_TIMEOUT = 15.0
STOP_GRACE = 5.0
MAX_CONNECTIONS = 100_000


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_GRACE)


@dataclass
class Contender:
    """A proxy under test: `procs[0]` is the one clients connect to; all of them relay."""

    name: str
    port: int
    speaks_connect: bool  # False for a port forwarder (socat): clients connect straight
    procs: list[Proc]
    reference: str | None = None  # whose set-ups its own are compared with (else pproxy)

    def target(self, host_port: tuple[str, int]) -> tuple[str, int] | None:
        return host_port if self.speaks_connect else None


class Worker:
    """A JSON-lines child process (the load generator) with a timeout on every reply.

    A reply that does not come in time (or a worker that died) is returned as an
    `{"error": ...}` like any failed sample, and the worker is replaced by a fresh one
    (dropping whatever tunnels it held), so one stalled contender cannot stall the run.
    """

    def __init__(self, start: Callable[[], Proc], stop: Callable[[Proc], None]) -> None:
        self._start, self._stop = start, stop
        self.proc = self._spawn()

    def _spawn(self) -> Proc:
        proc = self._start()
        self._lines: queue.Queue[bytes] = queue.Queue()
        stdout = proc.popen.stdout
        assert stdout is not None
        threading.Thread(target=self._pump, args=(stdout, self._lines), daemon=True).start()
        return proc

    @staticmethod
    def _pump(stdout: IO[bytes], lines: queue.Queue[bytes]) -> None:
        for line in stdout:
            lines.put(line)
        lines.put(b"")

    def call(self, timeout: float, **cmd: Any) -> dict[str, Any]:
        stdin = self.proc.popen.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps(cmd).encode() + b"\n")
            stdin.flush()
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return self._replace(f"load generator: no answer to {cmd['op']} in {timeout:g}s")
        except BrokenPipeError:
            line = b""
        if not line:
            return self._replace(f"load generator exited: {self.proc.log_tail(3)}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _replace(self, error: str) -> dict[str, Any]:
        self._stop(self.proc)
        self.proc = self._spawn()
        return {"error": error}


@dataclass
class Lab:
    """Owns the temp dir and every process started in it."""

    workdir: Path
    nofile: int
    procs: list[Proc] = field(default_factory=list)

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        *,
        pipes: bool = False,
        env: dict[str, str] | None = None,
    ) -> Proc:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as log_file:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipes else log_file,
                stderr=log_file,
                cwd=ROOT,
                env=env,
                preexec_fn=functools.partial(raise_nofile, self.nofile),
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        proc.stop()
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()

    # ------------------------------------------------------------- helpers

    def start_backend(self) -> dict[str, int]:
        proc = self.spawn(
            "backend",
            [sys.executable, str(BENCH / "backend.py"), "--nofile", str(self.nofile)],
            pipes=True,
        )
        stdout = proc.popen.stdout
        assert stdout is not None
        line = _readline(stdout, START_TIMEOUT)
        if not line:
            raise RuntimeError(f"backend did not start:\n{proc.log_tail()}")
        ports: dict[str, int] = json.loads(line)
        return ports

    def start_loadgen(self) -> Worker:
        argv = [sys.executable, str(BENCH / "loadgen.py"), "--nofile", str(self.nofile)]
        return Worker(lambda: self.spawn("loadgen", argv, pipes=True), self.stop)

    # ---------------------------------------------------------- contenders

    def start_chainer(
        self, name: str, hops: int, loop: str = "auto", reference: str | None = None
    ) -> Contender:
        """chainer with `hops` further chainer instances (each routing direct) in front of
        the destination: client -> chainer -> hop 1 -> ... -> hop n -> destination.
        `loop`: chainer's --loop (auto: uvloop when installed, as a user gets it)."""
        procs: list[Proc] = []
        hop_ports = [free_port() for _ in range(hops)]
        for i, port in enumerate(hop_ports, 1):
            procs.append(self._chainer(f"{name}.hop{i}", port, [], loop))
        port = free_port()
        procs.insert(0, self._chainer(name, port, hop_ports, loop))
        for proc, p in zip(procs, [port, *hop_ports], strict=True):
            wait_listening(p, proc)
        return Contender(name, port, True, procs, reference)

    def start_chainer_with(
        self, name: str, write: Callable[[Path, int], Path], reference: str
    ) -> Contender:
        """chainer serving the route table `write(path, port)` writes (the big table)."""
        port = free_port()
        config = write(self.workdir / f"{name}.yaml", port)
        proc = self._serve(name, config)
        wait_listening(port, proc, START_TIMEOUT + 30)  # loading a big table takes a while
        return Contender(name, port, True, [proc], reference)

    def _chainer(self, name: str, port: int, via_ports: list[int], loop: str = "auto") -> Proc:
        config = self.workdir / f"{name}.yaml"
        config.write_text(chainer_config(port, via_ports))
        return self._serve(name, config, loop)

    def _serve(self, name: str, config: Path, loop: str = "auto") -> Proc:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "chainer", "serve", "-c", str(config), "--loop", loop]
        return self.spawn(name, [*argv, "--log-level", "warning"], env=env)

    def start_socat(self, name: str, target_port: int) -> Contender:
        port = free_port()
        argv = [
            "socat",
            "-b",
            "262144",
            f"TCP-LISTEN:{port},bind={LOOPBACK},reuseaddr,fork,backlog=1024",
            f"TCP:{LOOPBACK}:{target_port}",
        ]
        proc = self.spawn(name, argv)
        wait_listening(port, proc)
        return Contender(name, port, False, [proc])

    def start_pproxy(self, name: str, exe: Path, remote: str | None = None) -> Contender:
        port = free_port()
        argv = [str(exe), "-l", f"http://{LOOPBACK}:{port}"]
        proc = self.spawn(name, [*argv, "-r", remote] if remote else argv)
        wait_listening(port, proc)
        return Contender(name, port, True, [proc])

    def start_sshd(self, exe: str) -> SshTarget:
        """A real sshd on loopback for the SSH-hop contenders (see sshhop.py)."""
        target, config = sshhop.prepare(self.workdir)
        proc = self.spawn("sshd", [exe, "-D", "-e", "-f", str(config)])
        wait_listening(target.port, proc)
        return target

    def start_chainer_ssh(self, name: str, target: SshTarget) -> Contender:
        """chainer whose route is one SSH hop: client -> chainer -> sshd -> destination."""
        port = free_port()
        config = self.workdir / f"{name}.yaml"
        config.write_text(sshhop.chainer_config(port, target, MAX_CONNECTIONS))
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        argv = [sys.executable, "-m", "chainer", "serve", "-c", str(config)]
        proc = self.spawn(name, [*argv, "--log-level", "warning"], env=env)
        wait_listening(port, proc)
        return Contender(name, port, True, [proc])


def chainer_config(port: int, via_ports: list[int]) -> str:
    lines = [
        f"listen: [{LOOPBACK}:{port}]",
        "defaults: {connect_timeout: 5s, handshake_timeout: 10s, idle_timeout: 10m, deadline: 30s}",
        # The default cap (4096 connections) would end the idle-tunnel steps early.
        f"limits: {{max_connections: {MAX_CONNECTIONS}}}",
    ]
    if via_ports:
        lines.append("proxies:")
        lines += [f"  hop{i}: http://{LOOPBACK}:{p}" for i, p in enumerate(via_ports, 1)]
        via = "[" + ", ".join(f"hop{i}" for i in range(1, len(via_ports) + 1)) + "]"
    else:
        via = "direct"
    lines += ["routes:", f'  - {{match: "*", via: {via}}}']
    return "\n".join(lines) + "\n"


def wait_listening(port: int, proc: Proc, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited at start:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.name} not listening on {port} after {timeout:g}s")


def _readline(stream: IO[bytes], timeout: float) -> bytes:
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return box[0] if box else b""


# -------------------------------------------------------------------- /proc readers


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory now (VmRSS) or at its peak (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system time of the process and its reaped children (socat forks per
    connection: the child's time lands in cutime/cstime once the parent reaps it)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime, cutime, cstime = (int(f) for f in fields[11:15])
    return (utime + stime + cutime + cstime) / _TICK


# ---------------------------------------------------------------------- pproxy venv


def ensure_pproxy(cache: Path, log: Callable[[str], None]) -> tuple[Path | None, str]:
    """pproxy in its own venv under `cache` (installed once, without uvloop: pproxy 2.7.9
    crashes at start with uvloop >= 0.21). Returns (executable, note)."""
    venv = cache / "pproxy-venv"
    exe, python = venv / "bin" / "pproxy", venv / "bin" / "python"
    if not exe.exists():
        log(f"installing pproxy into {venv} (once)")
        try:
            cache.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                check=True,
                capture_output=True,
                timeout=180,
            )
            subprocess.run(
                [str(python), "-m", "pip", "install", "-q", "pproxy"],
                check=True,
                capture_output=True,
                timeout=300,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            shutil.rmtree(venv, ignore_errors=True)
            return None, f"pproxy skipped: install failed ({_short(exc)})"
    has_uvloop = subprocess.run(
        [str(python), "-c", "import uvloop"], capture_output=True, timeout=60, check=False
    )
    if has_uvloop.returncode == 0:
        return None, f"pproxy skipped: uvloop is installed in {venv} (pproxy crashes with it)"
    version = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('pproxy'))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return exe, f"pproxy {version.stdout.strip() or '?'} from {venv}"


def _short(exc: BaseException) -> str:
    if isinstance(exc, subprocess.CalledProcessError):
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
        return (err.strip().splitlines() or [str(exc)])[-1]
    return str(exc)
