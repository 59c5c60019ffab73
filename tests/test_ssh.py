"""SSH hops against a real OpenSSH server on loopback (see sshpeer.py): chains [ssh],
[squid, ssh] and [ssh, squid] end to end with curl; host keys refused with their
fingerprint; one session shared by many tunnels, rebuilt after its process is killed,
closed when idle; identities, passphrases, the agent and a password."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import asyncssh
import pytest
from fakes import running_chainer, start_echo, task_group
from realproxies import Endpoint, Origin, curl, free_port, require_binary
from sshpeer import PASSPHRASE, Sshd, SshKeys, known_hosts_line, make_keys, start_sshd

from chainer.config import parse_config
from chainer.errors import ChainFailed
from chainer.models import Address
from chainer.ops.check import check, render_table
from chainer.outbound.ssh import SshSessions
from chainer.router import Router

pytestmark = [pytest.mark.anyio, pytest.mark.interop]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    return make_keys(tmp_path_factory.mktemp("sshkeys"))


@pytest.fixture(scope="module")
def sshd(keys: SshKeys, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    server = start_sshd(tmp_path_factory.mktemp("sshd"), keys)
    with server.proc:
        yield server


@pytest.fixture
def own_sshd(keys: SshKeys, tmp_path: Path) -> Iterator[Sshd]:
    """An sshd of this test's own, whose log counts only this test's logins."""
    server = start_sshd(tmp_path / "sshd", keys)
    with server.proc:
        yield server


def ssh_hop(sshd: Sshd, **options: str) -> str:
    """A proxy mapping (YAML flow) for `sshd`: our user key, its host key pinned."""
    settings = {
        "url": f"ssh://root@{sshd.host}:{sshd.port}",
        "identity": str(sshd.keys.user_key),
        "host_key": sshd.keys.host_pub,
        "agent": "false",
        **options,
    }
    if "known_hosts" in options or "insecure_host_key" in options:
        del settings["host_key"]
    return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in settings.items()) + "}"


def _yaml(value: str) -> str:
    return (
        value
        if value in ("true", "false") or (value.endswith("s") and value[0].isdigit())
        else f"'{value}'"
    )


def table(proxies: dict[str, str], via: str, port: int = 0, extra: str = "") -> str:
    lines = [
        f"listen: ['127.0.0.1:{port}']",
        "defaults: {connect_timeout: 3s, handshake_timeout: 3s, deadline: 10s}",
        extra,
        "proxies:",
        *(f"  {name}: {value}" for name, value in proxies.items()),
        "routes:",
        f"  - {{match: '*', via: {via}}}",
    ]
    return "\n".join(lines) + "\n"


async def fetch(port: int, origin: Origin, path: str) -> tuple[int, bytes, str]:
    result = await anyio.to_thread.run_sync(
        lambda: curl(
            "-x",
            f"http://127.0.0.1:{port}",
            "-D",
            "-",
            "--cacert",
            origin.ca_pem or "",
            origin.url(path),
        )
    )
    return result.returncode, result.body, result.stderr


def body_of(answer: bytes) -> bytes:
    """The origin's body after curl's -D - dump of every head (the CONNECT's first)."""
    return answer.rpartition(b"\r\n\r\n")[2]


def openssh_fingerprint(public_key: str, tmp_path: Path) -> str:
    """What OpenSSH itself prints for a key: `ssh-keygen -l`."""
    exe = require_binary("ssh-keygen")
    pub = tmp_path / "key.pub"
    pub.write_text(public_key + "\n")
    out = subprocess.run([exe, "-l", "-f", str(pub)], capture_output=True, check=True, timeout=10)
    return out.stdout.decode().split()[1]  # "256 SHA256:... comment (ED25519)"


@asynccontextmanager
async def router_for(text: str, sessions: SshSessions | None = None) -> AsyncIterator[Router]:
    router = Router(parse_config(text, "routes.yaml"), sessions=sessions or SshSessions())
    try:
        yield router
    finally:
        await router.aclose()


# --------------------------------------------------------------------------- chains


async def test_curl_through_an_ssh_hop(tmp_path: Path, sshd: Sshd, tls_origin: Origin) -> None:
    async with running_chainer(table({"bastion": ssh_hop(sshd)}, "[bastion]"), tmp_path) as b:
        rc, answer, err = await fetch(b[0][1], tls_origin, "/via-ssh")
    assert (rc, body_of(answer)) == (0, b"origin:/via-ssh"), err


async def test_ssh_carried_inside_an_http_tunnel(
    tmp_path: Path, sshd: Sshd, squid: Endpoint, tls_origin: Origin
) -> None:
    """[squid, ssh]: the SSH session runs inside squid's CONNECT tunnel."""
    proxies = {"corp": f"'http://{squid.hostport}'", "bastion": ssh_hop(sshd)}
    async with running_chainer(table(proxies, "[corp, bastion]"), tmp_path) as b:
        rc, answer, err = await fetch(b[0][1], tls_origin, "/squid-ssh")
    assert (rc, body_of(answer)) == (0, b"origin:/squid-ssh"), err


async def test_a_proxy_reached_through_an_ssh_channel(
    tmp_path: Path, sshd: Sshd, squid: Endpoint, tls_origin: Origin
) -> None:
    """[ssh, squid]: squid is asked over a direct-tcpip channel of the SSH session."""
    proxies = {"bastion": ssh_hop(sshd), "inner": f"'http://{squid.hostport}'"}
    async with running_chainer(table(proxies, "[bastion, inner]"), tmp_path) as b:
        rc, answer, err = await fetch(b[0][1], tls_origin, "/ssh-squid")
    assert (rc, body_of(answer)) == (0, b"origin:/ssh-squid"), err


async def test_ssh_over_ssh_and_a_warm_session_needs_no_prefix(
    own_sshd: Sshd, squid: Endpoint, tls_origin: Origin
) -> None:
    """[squid, ssh-A, ssh-B] with A and B the same server: B's session runs in a channel
    of A's, which runs inside squid's tunnel. Once B's session is up, a tunnel costs one
    channel open on it: no new login anywhere, squid not asked again."""
    text = table(
        {
            "corp": f"'http://{squid.hostport}'",
            "a": ssh_hop(own_sshd),
            "b": ssh_hop(own_sshd),
        },
        "[corp, a, b]",
    )
    async with router_for(text) as router:
        for _ in range(3):
            _match, dialed = await router.open(Address("127.0.0.1", tls_origin.port))
            await dialed.stream.aclose()
            assert [h.name for h in dialed.trace] == ["corp", "a", "b"]
        assert own_sshd.logins() == 2  # a, then b inside a's channel
        assert router.dialer.sessions.count() == 2
        # warm: corp and a were not reached again (no set-up time)
        assert [h.seconds for h in dialed.trace[:2]] == [0.0, 0.0]


# --------------------------------------------------------------------------- host keys, auth


async def test_unknown_host_key_is_denied_with_its_fingerprint(
    tmp_path: Path, own_sshd: Sshd, tls_origin: Origin
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    hop = ssh_hop(own_sshd, known_hosts=str(empty))
    async with running_chainer(table({"bastion": hop}, "[bastion]"), tmp_path) as b:
        rc, answer, _err = await fetch(b[0][1], tls_origin, "/nope")
    assert rc != 0
    head = answer.decode("latin-1")
    assert head.startswith("HTTP/1.1 502")
    assert "host key unknown" in head
    assert "(denied)" in head
    assert openssh_fingerprint(own_sshd.keys.host_pub, tmp_path) in head
    assert own_sshd.keys.host_pub in head  # how to pin it
    assert b"origin:" not in answer
    assert own_sshd.logins() == 0


async def test_changed_host_key_is_denied(tmp_path: Path, own_sshd: Sshd) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    known = tmp_path / "known_hosts"
    known.write_text(f"[{own_sshd.host}]:{own_sshd.port} {other}\n")
    text = table({"bastion": ssh_hop(own_sshd, known_hosts=str(known))}, "[bastion]")
    async with router_for(text) as router:
        with pytest.raises(ChainFailed) as caught:
            await router.connect("127.0.0.1", 9)
    error = caught.value.attempts[-1]
    assert (error.index, error.phase, error.denied) == (1, "ssh", True)
    assert "host key CHANGED" in error.reason
    assert openssh_fingerprint(own_sshd.keys.host_pub, tmp_path) in error.reason
    assert own_sshd.logins() == 0


async def test_pinned_host_key_mismatch_is_denied(own_sshd: Sshd, tmp_path: Path) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    hop = ssh_hop(own_sshd, host_key=" ".join(other.split()[:2]))
    async with router_for(table({"bastion": hop}, "[bastion]")) as router:
        with pytest.raises(ChainFailed) as caught:
            await router.connect("127.0.0.1", 9)
    error = caught.value.attempts[-1]
    assert error.denied
    assert "does not match host_key" in error.reason
    assert openssh_fingerprint(own_sshd.keys.host_pub, tmp_path) in error.reason
    # denied: not tried again within the connection, though max_attempts would allow it
    assert len(caught.value.attempts) == 1
    assert own_sshd.logins() == 0


def hashed_known_hosts(sshd: Sshd, path: Path) -> Path:
    """A known_hosts file with the server's `[host]:port` entry, hashed by ssh-keygen."""
    path.write_text(known_hosts_line(sshd))
    exe = require_binary("ssh-keygen")
    subprocess.run([exe, "-H", "-f", str(path)], capture_output=True, check=True, timeout=10)
    return path


async def test_hashed_known_hosts_entry_with_a_port_is_trusted(tmp_path: Path, sshd: Sshd) -> None:
    known = hashed_known_hosts(sshd, tmp_path / "known_hosts")
    assert known.read_text().startswith("|1|")  # hashed: no host name left in the file
    async with task_group() as tg:
        echo = await start_echo(tg, b"hello")
        text = table({"bastion": ssh_hop(sshd, known_hosts=str(known))}, "[bastion]")
        async with router_for(text) as router:
            stream = await router.connect("127.0.0.1", echo.port)
            with anyio.fail_after(5):
                assert await stream.receive() == b"hello"
            await stream.aclose()


async def test_insecure_host_key_accepts_and_says_so(
    sshd: Sshd, caplog: pytest.LogCaptureFixture
) -> None:
    text = table({"bastion": ssh_hop(sshd, insecure_host_key="true")}, "[bastion]")
    async with task_group() as tg:
        echo = await start_echo(tg, b"hi")
        async with router_for(text) as router:
            stream = await router.connect("127.0.0.1", echo.port)
            await stream.aclose()
    assert any("insecure_host_key" in r.getMessage() for r in caplog.records)


async def test_wrong_user_key_is_denied(own_sshd: Sshd, tls_origin: Origin, tmp_path: Path) -> None:
    hop = ssh_hop(own_sshd, identity=str(own_sshd.keys.stranger_key))
    async with running_chainer(table({"bastion": hop}, "[bastion]"), tmp_path) as b:
        rc, answer, _err = await fetch(b[0][1], tls_origin, "/nope")
    head = answer.decode("latin-1")
    assert rc != 0
    assert head.startswith("HTTP/1.1 502")
    assert "authentication failed" in head
    assert "(denied)" in head
    assert "stranger_ed25519" in head  # which key was offered; never a secret
    assert b"origin:" not in answer
    assert own_sshd.logins() == 0
    assert own_sshd.wait_log("Failed publickey for root")


async def test_encrypted_identity_with_its_passphrase(sshd: Sshd) -> None:
    hop = ssh_hop(sshd, identity=str(sshd.keys.locked_key), passphrase=PASSPHRASE)
    async with task_group() as tg:
        echo = await start_echo(tg, b"unlocked")
        async with router_for(table({"bastion": hop}, "[bastion]")) as router:
            stream = await router.connect("127.0.0.1", echo.port)
            with anyio.fail_after(5):
                assert await stream.receive() == b"unlocked"
            await stream.aclose()
            assert router.config.proxy("bastion") is not None
            assert PASSPHRASE not in repr(router.config.proxy("bastion"))


async def test_wrong_passphrase_is_denied_without_showing_it(sshd: Sshd) -> None:
    hop = ssh_hop(sshd, identity=str(sshd.keys.locked_key), passphrase="not it")
    async with router_for(table({"bastion": hop}, "[bastion]")) as router:
        with pytest.raises(ChainFailed) as caught:
            await router.connect("127.0.0.1", 9)
    error = caught.value.attempts[-1]
    assert error.denied
    assert "wrong passphrase" in error.reason
    assert "not it" not in str(caught.value)


@pytest.fixture
def agent_socket(sshd: Sshd, tmp_path: Path) -> Iterator[str]:
    """A real ssh-agent of this test's own, holding the user key."""
    agent_exe = require_binary("ssh-agent")
    add_exe = require_binary("ssh-add")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(
        [agent_exe, "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(
            [add_exe, str(sshd.keys.user_key)], env=env, capture_output=True, check=True, timeout=10
        )
        yield str(sock)
    finally:
        agent.terminate()
        agent.wait(5)


async def test_ssh_agent_keys_are_used(sshd: Sshd, agent_socket: str) -> None:
    # No identity: the agent's key is the only one.
    hop = f"{{url: 'ssh://root@{sshd.host}:{sshd.port}', host_key: '{sshd.keys.host_pub}'}}"
    text = table({"bastion": hop}, "[bastion]")
    async with task_group() as tg:
        echo = await start_echo(tg, b"agent")
        async with router_for(text, SshSessions(agent_socket)) as router:
            stream = await router.connect("127.0.0.1", echo.port)
            await stream.aclose()
            proxy = router.config.proxy("bastion")
            assert proxy is not None
            info = router.dialer.sessions.info((), proxy)
            assert info is not None
            assert info.auth == "publickey (ssh-agent)"
    # `agent: false` ignores it: no key at all, so no login
    off = hop[:-1] + ", agent: false}"
    async with router_for(table({"bastion": off}, "[bastion]"), SshSessions(agent_socket)) as r:
        with pytest.raises(ChainFailed) as caught:
            await r.connect("127.0.0.1", 9)
        assert "authentication failed" in caught.value.attempts[-1].reason


async def test_password_authentication(tmp_path: Path) -> None:
    """sshd here takes keys only; an asyncssh server stands in for a password login."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")

    class PasswordServer(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def password_auth_supported(self) -> bool:
            return True

        def validate_password(self, username: str, password: str) -> bool:
            return (username, password) == ("carol", "pa ss")

        def connection_requested(
            self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
        ) -> bool:
            return True

    server = await asyncssh.create_server(
        PasswordServer, "127.0.0.1", 0, server_host_keys=[host_key]
    )
    port = server.sockets[0].getsockname()[1]
    pinned = " ".join(host_key.export_public_key().decode().split()[:2])
    try:
        async with task_group() as tg:
            echo = await start_echo(tg, b"pw")
            for password, works in (("pa ss", True), ("wrong", False)):
                hop = (
                    f"{{url: 'ssh://127.0.0.1:{port}', username: carol, password: '{password}',"
                    f" host_key: '{pinned}', agent: false}}"
                )
                async with router_for(table({"pw": hop}, "[pw]")) as router:
                    if works:
                        stream = await router.connect("127.0.0.1", echo.port)
                        with anyio.fail_after(5):
                            assert await stream.receive() == b"pw"
                        await stream.aclose()
                        proxy = router.config.proxy("pw")
                        assert proxy is not None
                        info = router.dialer.sessions.info((), proxy)
                        assert info is not None
                        assert info.auth == "password"
                    else:
                        with pytest.raises(ChainFailed) as caught:
                            await router.connect("127.0.0.1", echo.port)
                        error = caught.value.attempts[-1]
                        assert error.denied
                        assert "authentication failed" in error.reason
                        assert "wrong" not in str(caught.value)
    finally:
        server.close()
        await server.wait_closed()


# --------------------------------------------------------------------------- sessions


async def _tunnel_echo(port: int, echo_port: int, payload: bytes) -> bytes:
    """CONNECT through chainer to the echo server, send `payload`, read it back."""
    with anyio.fail_after(15):
        async with await anyio.connect_tcp("127.0.0.1", port) as s:
            await s.send(f"CONNECT 127.0.0.1:{echo_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            got = b""
            while b"\r\n\r\n" not in got:
                got += await s.receive()
            head, _, rest = got.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            await s.send(payload)
            while len(rest) < len(payload):
                rest += await s.receive()
            return rest


async def test_fifty_tunnels_share_one_ssh_session(own_sshd: Sshd, tmp_path: Path) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table({"bastion": ssh_hop(own_sshd)}, "[bastion]")
        async with running_chainer(text, tmp_path) as bound:
            port = bound[0][1]
            results: list[bytes] = []

            async def one(i: int) -> None:
                results.append(await _tunnel_echo(port, echo.port, f"tunnel {i}".encode()))

            async with anyio.create_task_group() as clients:
                for i in range(50):
                    clients.start_soon(one, i)
            assert sorted(results) == sorted(f"tunnel {i}".encode() for i in range(50))
            assert own_sshd.logins() == 1
            assert len(own_sshd.session_pids()) == 1


async def test_a_killed_session_is_rebuilt_on_the_next_tunnel(
    own_sshd: Sshd, tmp_path: Path
) -> None:
    async with task_group() as tg:
        echo = await start_echo(tg)
        text = table({"bastion": ssh_hop(own_sshd)}, "[bastion]")
        async with running_chainer(text, tmp_path) as bound:
            port = bound[0][1]
            assert await _tunnel_echo(port, echo.port, b"before") == b"before"
            (pid,) = own_sshd.session_pids()
            os.kill(pid, signal.SIGKILL)  # sshd's process for our session: ours to kill
            # at once, before chainer may have noticed the session is gone
            assert await _tunnel_echo(port, echo.port, b"after") == b"after"
            assert own_sshd.logins() == 2
            # and again later, when the loss has certainly been noticed
            (pid,) = own_sshd.session_pids()
            os.kill(pid, signal.SIGKILL)
            await anyio.sleep(0.3)
            assert await _tunnel_echo(port, echo.port, b"later") == b"later"
            assert own_sshd.logins() == 3


async def test_an_idle_session_is_closed(own_sshd: Sshd) -> None:
    text = table({"bastion": ssh_hop(own_sshd, session_idle="0.3s")}, "[bastion]")
    async with task_group() as tg:
        echo = await start_echo(tg, b"x")
        async with router_for(text) as router:
            stream = await router.connect("127.0.0.1", echo.port)
            await anyio.sleep(0.6)  # a channel open: the session stays
            assert router.dialer.sessions.count() == 1
            await stream.aclose()
            assert await anyio.to_thread.run_sync(
                lambda: own_sshd.wait_log("Disconnected from user root")
            )
            assert router.dialer.sessions.count() == 0


async def test_channel_failures_are_charged_to_what_they_are_about(
    tmp_path: Path, keys: SshKeys, squid: Endpoint
) -> None:
    """sshd's PermitOpen allows one target: asking it for squid is "administratively
    prohibited" (the edge to squid denied); a refused destination is the destination's
    failure, charged to no hop."""
    closed = free_port()
    guarded = start_sshd(tmp_path / "guarded", keys, [f"PermitOpen 127.0.0.1:{closed}"])
    with guarded.proc:
        proxies = {"bastion": ssh_hop(guarded), "inner": f"'http://{squid.hostport}'"}
        async with router_for(table(proxies, "[bastion, inner]")) as router:
            with pytest.raises(ChainFailed) as caught:
                await router.connect("127.0.0.1", 443)
            error = caught.value.attempts[0]
            assert (error.index, error.hop, error.phase) == (2, "inner", "connect")
            assert error.denied
            assert "administratively prohibited" in error.reason
        async with router_for(table({"bastion": ssh_hop(guarded)}, "[bastion]")) as router:
            with pytest.raises(ChainFailed) as caught:
                await router.connect("127.0.0.1", closed)
            error = caught.value.attempts[-1]
            assert (error.index, error.phase, error.denied) == (1, "destination", False)
            assert "Connection refused" in error.reason
            with pytest.raises(ChainFailed) as caught:
                await router.connect("127.0.0.1", closed + 1 if closed < 65535 else 1)
            error = caught.value.attempts[-1]
            assert (error.phase, error.proxy_status) == ("destination", "destination_ip_prohibited")
            health = router.dialer.health
            bastion = router.config.proxy("bastion")
            assert bastion is not None
            assert health.state("", bastion) == "closed"


async def test_check_prints_each_ssh_hops_fingerprint_and_auth(
    sshd: Sshd, squid: Endpoint, tmp_path: Path
) -> None:
    proxies = {"bastion": ssh_hop(sshd), "inner": f"'http://{squid.hostport}'"}
    config = parse_config(table(proxies, "[bastion, inner]"), "routes.yaml")
    report = await check(config, None, target=None)
    text = render_table(report)
    assert report.ok, text
    assert openssh_fingerprint(sshd.keys.host_pub, tmp_path) in text
    assert "publickey (" in text
    assert "user_ed25519" in text


async def test_concurrent_first_tunnels_share_one_refusal(own_sshd: Sshd, tmp_path: Path) -> None:
    """Ten tunnels at once to a hop whose key is unknown: one connection to sshd, whose
    refusal every one of them reports (denied, with the fingerprint)."""
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    text = table({"bastion": ssh_hop(own_sshd, known_hosts=str(empty))}, "[bastion]")
    async with router_for(text) as router:
        errors: list[ChainFailed] = []

        async def one() -> None:
            with pytest.raises(ChainFailed) as caught:
                await router.connect("127.0.0.1", 9)
            errors.append(caught.value)

        async with anyio.create_task_group() as tg:
            for _ in range(10):
                tg.start_soon(one)
    assert len(errors) == 10
    for error in errors:
        last = error.attempts[-1]
        assert last.denied
        assert "host key unknown" in last.reason
    # one key exchange, refused by us ("Connection from" also counts sshd's start probe)
    refused = "Host key is not trusted"
    assert await anyio.to_thread.run_sync(lambda: own_sshd.wait_log(refused))
    assert own_sshd.log().count(refused) == 1


async def test_a_reload_keeps_the_sessions_of_unchanged_hops(
    own_sshd: Sshd, tmp_path: Path
) -> None:
    from chainer.server.server import Server

    async with task_group() as tg:
        echo = await start_echo(tg)
        first = table({"bastion": ssh_hop(own_sshd)}, "[bastion]")
        server = Server(Router(parse_config(first, "routes.yaml")))
        async with anyio.create_task_group() as serving:
            bound = await serving.start(server.serve)
            port = bound[0][1]
            assert await _tunnel_echo(port, echo.port, b"one") == b"one"
            server.reload(parse_config(first, "routes.yaml"))  # nothing changed
            assert await _tunnel_echo(port, echo.port, b"two") == b"two"
            assert own_sshd.logins() == 1
            changed = table({"bastion": ssh_hop(own_sshd, keepalive="10s")}, "[bastion]")
            server.reload(parse_config(changed, "routes.yaml"))
            assert await _tunnel_echo(port, echo.port, b"three") == b"three"
            assert own_sshd.logins() == 2  # the changed hop got a session of its own
            assert await anyio.to_thread.run_sync(
                lambda: own_sshd.wait_log("Disconnected from user root")  # the old one closed
            )
            serving.cancel_scope.cancel()
    # shut down: every session closed
    assert await anyio.to_thread.run_sync(
        lambda: own_sshd.wait_log("Disconnected from user root", count=2)
    )
