"""`chainer run -- CMD` and `chainer env`: curl, git and Python's urllib as CMD, their
traffic through a chain of a real proxy (tinyproxy) as the route table says; exit
status, signals, the router's end, `--via` a running instance, and the export lines."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from everyday import (
    LOOPBACK,
    chainer_cmd,
    free_port,
    log_lines,
    make_repo,
    run_git_http,
    serve_chainer,
    wait_for,
)
from realproxies import Endpoint, Origin, child_env, require_binary

from chainer.errors import BadTarget
from chainer.models import Address, Listener, TLSFiles
from chainer.ops.run import (
    ProxyEndpoint,
    child_environment,
    export_lines,
    listener_endpoint,
    parse_via,
    proxy_variables,
)

PROXY_NAMES = ("http_proxy", "https_proxy", "all_proxy")


def routes(chained: list[int], listen: str = f"{LOOPBACK}:0", hop: int | None = None) -> str:
    """Destinations 127.0.0.1:PORT for each port in `chained` go through tinyproxy at
    `hop`; everything else direct."""
    lines = [f"listen: ['{listen}']"]
    if hop is not None:
        lines += ["proxies:", f"  tiny: http://{LOOPBACK}:{hop}"]
    lines.append("routes:")
    for port in chained:
        lines.append(f"  - {{match: '{LOOPBACK}:{port}', via: [tiny]}}")
    lines.append("  - {match: '*', via: direct}")
    return "\n".join(lines) + "\n"


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*chainer_cmd(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else child_env(),
        stdin=subprocess.DEVNULL,
        check=False,
    )


def via_hop(log: Path, port: int) -> list[str]:
    """Access lines for 127.0.0.1:port that went through the tinyproxy hop."""
    return [
        line
        for line in log_lines(log, f"dest={LOOPBACK}:{port} ")
        if "hops=tiny:" in line and "outcome=ok" in line
    ]


# ------------------------------------------------------------------------ the variables


def test_proxy_variables_name_one_port_for_http_and_socks() -> None:
    variables = proxy_variables(ProxyEndpoint("http", Address("127.0.0.1", 8080)))
    for name in ("http_proxy", "https_proxy"):
        assert variables[name] == variables[name.upper()] == "http://127.0.0.1:8080"
    assert variables["all_proxy"] == variables["ALL_PROXY"] == "socks5h://127.0.0.1:8080"
    tls = proxy_variables(ProxyEndpoint("https", Address("::1", 8443)))
    assert set(tls.values()) == {"https://[::1]:8443"}  # a TLS listener speaks no SOCKS


def test_child_environment_clears_no_proxy_and_keeps_the_rest() -> None:
    base = {"PATH": "/bin", "no_proxy": "*", "NO_PROXY": "localhost", "http_proxy": "old"}
    env = child_environment(base, proxy_variables(parse_via("127.0.0.1:1")))
    assert "no_proxy" not in env
    assert "NO_PROXY" not in env
    assert env["PATH"] == "/bin"
    assert env["http_proxy"] == "http://127.0.0.1:1"


def test_parse_via_keeps_credentials_out_of_its_repr() -> None:
    via = parse_via("http://alice:s3cret@127.0.0.1:8080")
    assert via.url() == "http://alice:s3cret@127.0.0.1:8080"
    assert "s3cret" not in repr(via)
    assert parse_via("socks5h://[::1]:1080").url() == "http://[::1]:1080"
    assert parse_via("https://127.0.0.1:8443").scheme == "https"
    for bad in ("ftp://127.0.0.1:21", "http://127.0.0.1", "http://127.0.0.1:1/path"):
        with pytest.raises(BadTarget):
            parse_via(bad)


def test_listener_endpoint_names_a_reachable_address() -> None:
    assert listener_endpoint(Listener(Address("0.0.0.0", 3128))).url() == "http://127.0.0.1:3128"
    tls = Listener(Address("::", 8443), TLSFiles("c.pem", "k.pem"))
    assert listener_endpoint(tls).url() == "https://[::1]:8443"
    with pytest.raises(BadTarget, match="needs a login"):
        listener_endpoint(Listener(Address("127.0.0.1", 1), users=(("a", "b"),)))
    with pytest.raises(BadTarget, match="port 0"):
        listener_endpoint(Listener(Address("127.0.0.1", 0)))


def test_export_lines_quote_for_the_shell() -> None:
    text = export_lines({"http_proxy": "http://a:b c'd@127.0.0.1:1"})
    assert text == "export http_proxy='http://a:b c'\"'\"'d@127.0.0.1:1'\nunset no_proxy NO_PROXY\n"


# ------------------------------------------------------------------------ real commands


@pytest.mark.interop
@pytest.mark.slow
def test_curl_through_a_chain(tmp_path: Path, tls_origin: Origin, tinyproxy: Endpoint) -> None:
    curl = require_binary("curl")
    config, log = tmp_path / "routes.yaml", tmp_path / "run.log"
    config.write_text(routes([tls_origin.port], hop=tinyproxy.port))
    assert tls_origin.ca_pem is not None
    url = tls_origin.url("/through/the/chain")
    done = run(
        "run",
        "-c",
        str(config),
        "--log-file",
        str(log),
        "--",
        curl,
        "-sS",
        "--cacert",
        tls_origin.ca_pem,
        url,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "origin:/through/the/chain"
    assert len(via_hop(log, tls_origin.port)) == 1, log.read_text()


@pytest.mark.interop
@pytest.mark.slow
def test_curl_with_only_all_proxy_speaks_socks5h(
    tmp_path: Path, plain_origin: Origin, tinyproxy: Endpoint
) -> None:
    curl = require_binary("curl")
    config, log = tmp_path / "routes.yaml", tmp_path / "run.log"
    config.write_text(routes([plain_origin.port], hop=tinyproxy.port))
    script = f'unset http_proxy HTTP_PROXY; exec {curl} -sSv "$0"'
    done = run(
        "run",
        "-c",
        str(config),
        "--log-file",
        str(log),
        "--",
        "sh",
        "-c",
        script,
        plain_origin.url("/socks"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "origin:/socks"
    assert "SOCKS5" in done.stderr  # curl's own account of how it connected
    assert len(via_hop(log, plain_origin.port)) == 1, log.read_text()


@pytest.mark.interop
@pytest.mark.slow
def test_git_ls_remote_over_smart_http(tmp_path: Path, tinyproxy: Endpoint) -> None:
    require_binary("git")
    commit = make_repo(tmp_path)
    config, log = tmp_path / "routes.yaml", tmp_path / "run.log"
    with run_git_http(tmp_path) as port:
        config.write_text(routes([port], hop=tinyproxy.port))
        url = f"http://{LOOPBACK}:{port}/repo.git"
        env = {**child_env(), "GIT_CONFIG_NOSYSTEM": "1", "HOME": str(tmp_path)}
        done = run(
            "run", "-c", str(config), "--log-file", str(log), "--", "git", "ls-remote", url, env=env
        )
    assert done.returncode == 0, done.stderr
    assert f"{commit}\trefs/heads/main" in done.stdout.splitlines()
    assert via_hop(log, port), log.read_text()


@pytest.mark.interop
@pytest.mark.slow
def test_python_urllib(
    tmp_path: Path, tls_origin: Origin, plain_origin: Origin, tinyproxy: Endpoint
) -> None:
    config, log = tmp_path / "routes.yaml", tmp_path / "run.log"
    config.write_text(routes([tls_origin.port, plain_origin.port], hop=tinyproxy.port))
    script = (
        "import ssl, sys, urllib.request\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "print(urllib.request.urlopen(sys.argv[2], context=ctx, timeout=20).read().decode())\n"
        "print(urllib.request.urlopen(sys.argv[3], timeout=20).read().decode())\n"
    )
    assert tls_origin.ca_pem is not None
    done = run(
        "run",
        "-c",
        str(config),
        "--log-file",
        str(log),
        "--",
        sys.executable,
        "-c",
        script,
        tls_origin.ca_pem,
        tls_origin.url("/tls"),
        plain_origin.url("/plain"),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["origin:/tls", "origin:/plain"]
    assert len(via_hop(log, tls_origin.port)) == 1, log.read_text()
    assert len(via_hop(log, plain_origin.port)) == 1, log.read_text()


# ------------------------------------------------------------------------ the process


@pytest.mark.slow
def test_exit_status_and_the_router_ends_with_the_command(tmp_path: Path) -> None:
    config, log = tmp_path / "routes.yaml", tmp_path / "run.log"
    config.write_text(routes([]))
    script = 'echo "$http_proxy"; echo "${no_proxy-unset}"; exit 7'
    done = run("run", "-c", str(config), "--log-file", str(log), "--", "sh", "-c", script)
    assert done.returncode == 7, done.stderr
    proxy, no_proxy = done.stdout.split()
    assert no_proxy == "unset"
    host, port = proxy.removeprefix("http://").rsplit(":", 1)
    assert host == LOOPBACK
    assert log_lines(log, f"listening on {LOOPBACK}:{port}")
    with socket.socket() as probe:  # the router is gone with the command
        assert probe.connect_ex((LOOPBACK, int(port))) != 0
    assert done.stderr == ""  # the router's logs went to the file
    missing = run("run", "-c", str(config), "--log-file", str(log), "--", "no-such-command-x")
    assert missing.returncode == 127
    assert "no-such-command-x: command not found" in missing.stderr
    assert run("run", "-c", str(config)).returncode == 2


@pytest.mark.slow
def test_default_log_file_is_under_xdg_state_home(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(routes([]))
    env = {**child_env(), "XDG_STATE_HOME": str(tmp_path / "state")}
    done = run("run", "-c", str(config), "--", "true", env=env)
    assert done.returncode == 0, done.stderr
    assert log_lines(tmp_path / "state" / "chainer" / "run.log", "listening on 127.0.0.1:")


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 42), (signal.SIGINT, 130)])
def test_signals_go_to_the_command(tmp_path: Path, signum: int, status: int) -> None:
    """SIGTERM: the command's handler exits 42. SIGINT: Python's default, KeyboardInterrupt,
    ends it by the signal: 128 + 2, as a shell would say."""
    config, log = tmp_path / "routes.yaml", tmp_path / "run.log"
    config.write_text(routes([]))
    script = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(42))\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    proc = subprocess.Popen(
        [
            *chainer_cmd(),
            "run",
            "-c",
            str(config),
            "--log-file",
            str(log),
            "--",
            sys.executable,
            "-c",
            script,
        ],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=child_env(),
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "the command did not start"
        assert proc.stdout.readline() == b"ready\n"
        os.kill(proc.pid, signum)  # to chainer, not to the command
        assert proc.wait(20) == status
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()


# ------------------------------------------------------------------------ a running instance


@pytest.mark.interop
@pytest.mark.slow
def test_via_a_running_instance_and_env(
    tmp_path: Path, plain_origin: Origin, tinyproxy: Endpoint
) -> None:
    curl = require_binary("curl")
    port = free_port()
    config, log = tmp_path / "routes.yaml", tmp_path / "serve.log"
    config.write_text(routes([plain_origin.port], listen=f"{LOOPBACK}:{port}", hop=tinyproxy.port))
    served = serve_chainer(config, log, port)
    try:
        done = run(
            "run", "--via", f"http://{LOOPBACK}:{port}", "--", curl, "-sS", plain_origin.url("/via")
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "origin:/via"
        # `chainer env` reads the same listener from the file; a shell evals it.
        shell = f'eval "$({" ".join(chainer_cmd())} env -c {config})"; exec {curl} -sS "$0"'
        env_done = subprocess.run(
            ["bash", "-c", shell, plain_origin.url("/env")],
            capture_output=True,
            text=True,
            timeout=60,
            env=child_env(),
            check=False,
        )
        assert env_done.returncode == 0, env_done.stderr
        assert env_done.stdout == "origin:/env"
        assert wait_for(lambda: len(via_hop(log, plain_origin.port)) == 2, 10), log.read_text()
    finally:
        served.stop()


@pytest.mark.slow
def test_env_refuses_what_it_cannot_name(tmp_path: Path) -> None:
    config = tmp_path / "routes.yaml"
    config.write_text(
        "listen:\n  - {address: '127.0.0.1:3128', auth: {users: {alice: pw}}}\n"
        "routes:\n  - {match: '*', via: direct}\n"
    )
    done = run("env", "-c", str(config))
    assert done.returncode == 2
    assert "needs a login: use --via http://USER:PASSWORD@127.0.0.1:3128" in done.stderr
    assert "pw" not in done.stderr
    done = run("env", "--via", "http://alice:pw@127.0.0.1:3128")
    assert done.returncode == 0
    assert "export https_proxy=http://alice:pw@127.0.0.1:3128\n" in done.stdout
    for name in PROXY_NAMES:
        assert f"export {name.upper()}=" in done.stdout


@pytest.mark.anyio
@pytest.mark.parametrize(("foreground", "status"), [(False, 3), (True, 4)])
async def test_a_terminal_foreground_keeps_ctrl_c_from_arriving_twice(
    tmp_path: Path, foreground: bool, status: int
) -> None:
    """In a terminal's foreground the terminal itself sends INT to CMD: chainer does
    not send it again. TERM is passed on either way."""
    import anyio

    from chainer.ops.run import run_command

    ready = tmp_path / "ready"
    script = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGINT, lambda *a: sys.exit(3))\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(4))\n"
        f"pathlib.Path({str(ready)!r}).write_text('ready')\n"
        "time.sleep(20)\n"
    )
    via = parse_via("127.0.0.1:9")  # nothing is contacted

    async def signal_when_ready() -> None:
        for _ in range(1000):  # 20 s at most
            if ready.exists():
                break
            await anyio.sleep(0.02)
        # Both reach this process (chainer) while run_command listens: once it returns,
        # this task is cancelled before a late TERM could reach pytest itself.
        os.kill(os.getpid(), signal.SIGINT)
        await anyio.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    async with anyio.create_task_group() as tg:
        tg.start_soon(signal_when_ready)
        got = await run_command(
            [sys.executable, "-c", script], child_env(), via=via, foreground=foreground
        )
        tg.cancel_scope.cancel()
    assert got == status
