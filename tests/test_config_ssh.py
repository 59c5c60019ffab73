"""The ssh hop's keys in routes.yaml, and ssh_config applied at load time."""

from __future__ import annotations

import os
from pathlib import Path

import asyncssh
import pytest

from chainer.config import parse_config
from chainer.config._ssh_config import lookup
from chainer.errors import ConfigErrors
from chainer.models import Address, Proxy

HOST_PUB = " ".join(
    asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().split()[:2]
)


def load(proxy: str, base: Path) -> Proxy:
    text = f"proxies:\n  hop: {proxy}\nroutes:\n  - {{match: '*', via: [hop]}}\n"
    config = parse_config(text, str(base / "routes.yaml"))
    found = config.proxy("hop")
    assert found is not None
    return found


def errors(proxy: str, base: Path) -> list[str]:
    text = f"proxies:\n  hop: {proxy}\nroutes:\n  - {{match: '*', via: [hop]}}\n"
    with pytest.raises(ConfigErrors) as caught:
        parse_config(text, str(base / "routes.yaml"))
    return [str(e).replace(str(base), "BASE") for e in caught.value.errors]


@pytest.fixture
def base(tmp_path: Path) -> Path:
    (tmp_path / "id_ed25519").write_text("(a key)\n")
    return tmp_path


def test_an_ssh_url_alone(base: Path) -> None:
    proxy = load("ssh://alice@bastion.example", base)
    assert (proxy.scheme, proxy.address, proxy.username) == (
        "ssh",
        Address("bastion.example", 22),
        "alice",
    )
    assert proxy.password is None  # no password: password auth is not tried
    assert proxy.ssh is not None
    assert (proxy.ssh.agent, proxy.ssh.keepalive, proxy.ssh.session_idle) == (True, 30.0, 300.0)
    assert proxy.ssh.known_hosts is None  # ~/.ssh/known_hosts, read when a session starts


def test_every_ssh_key(base: Path) -> None:
    proxy = load(
        "{url: 'ssh://bob:s3cret@10.0.0.5:2222', identity: id_ed25519, passphrase: 'pass phrase',"
        " agent: false, known_hosts: kh, keepalive: 15s, session_idle: 1m}",
        base,
    )
    assert proxy.address == Address("10.0.0.5", 2222)
    assert (proxy.username, proxy.password) == ("bob", "s3cret")
    assert proxy.ssh is not None
    assert proxy.ssh.identities == (str(base / "id_ed25519"),)
    assert proxy.ssh.passphrase == "pass phrase"
    assert (proxy.ssh.agent, proxy.ssh.keepalive, proxy.ssh.session_idle) == (False, 15.0, 60.0)
    assert proxy.ssh.known_hosts == str(base / "kh")  # need not exist yet
    shown = repr(proxy)
    assert "s3cret" not in shown
    assert "pass phrase" not in shown


def test_pinned_host_key_drops_its_comment_and_keepalive_can_be_off(base: Path) -> None:
    proxy = load(f"{{url: 'ssh://h', host_key: '{HOST_PUB} root@h', keepalive: false}}", base)
    assert proxy.ssh is not None
    assert (proxy.ssh.host_key, proxy.ssh.keepalive) == (HOST_PUB, None)


@pytest.mark.parametrize(
    ("proxy", "expected"),
    [
        (
            "{url: 'ssh://h', identity: nope}",
            'BASE/routes.yaml:2: proxies.hop.identity: no such file: "nope" (looked for BASE/nope)',
        ),
        (
            "{url: 'ssh://h', passphrase: 'x y'}",
            "BASE/routes.yaml:2: proxies.hop.passphrase: a passphrase needs an identity:",
        ),
        (
            "{url: 'ssh://h', host_key: 'ssh-ed25519 AAAAnotakey'}",
            "BASE/routes.yaml:2: proxies.hop.host_key: not an SSH public key: Invalid public key",
        ),
        (
            f"{{url: 'ssh://h', host_key: '{HOST_PUB}', insecure_host_key: true}}",
            "BASE/routes.yaml:2: proxies.hop.insecure_host_key: contradicts host_key:"
            " (nothing checked)",
        ),
        (
            f"{{url: 'ssh://h', host_key: '{HOST_PUB}', known_hosts: kh}}",
            "BASE/routes.yaml:2: proxies.hop.known_hosts: contradicts host_key: (one source)",
        ),
        (
            "{url: 'http://h:3128', identity: id_ed25519}",
            "BASE/routes.yaml:2: proxies.hop.identity: only for ssh proxies, not http",
        ),
        (
            "{url: 'ssh://h', ca: x.pem}",
            "BASE/routes.yaml:2: proxies.hop.ca: only for https proxies, not ssh",
        ),
        (
            "{url: 'ssh://h', keepalive: sometimes}",
            "BASE/routes.yaml:2: proxies.hop.keepalive: not a duration: 'sometimes'"
            " (write e.g. 250ms, 5s, 1m30s, 1h)",
        ),
    ],
)
def test_ssh_key_errors_name_file_line_and_path(proxy: str, expected: str, base: Path) -> None:
    assert errors(proxy, base) == [expected]


def test_a_password_is_never_quoted(base: Path) -> None:
    shown = "\n".join(errors("{url: 'ssh://u:hunter2@h:99999'}", base))
    assert "hunter2" not in shown


def test_ssh_config_gives_hostname_user_port_and_identity_files(base: Path) -> None:
    (base / "id_lab").write_text("(a key)\n")
    (base / "extra.conf").write_text("Host lab-*\n  User labuser\n")
    (base / "ssh_config").write_text(
        "# a comment\n"
        "Host bastion !bastion-old\n"
        "  HostName 10.1.0.5\n"
        "  Port 2222\n"
        "  User alice\n"
        f"  IdentityFile {base}/id_lab\n"
        f"  IdentityFile {base}/id_missing\n"
        "Host *\n"
        "  User nobody-else\n"
        "  Port 22\n"
        f"Host lab-box\n  HostName %h.lab.example\nInclude {base}/extra.conf\n"
    )
    proxy = load(f"{{url: 'ssh://bastion', ssh_config: {base}/ssh_config}}", base)
    assert proxy.address == Address("10.1.0.5", 2222)
    assert proxy.username == "alice"
    assert proxy.ssh is not None
    assert proxy.ssh.identities == (str(base / "id_lab"),)  # a missing one is skipped
    assert proxy.ssh.alias == "bastion"
    # what the proxy writes itself wins: the URL's port and user, identity: first
    proxy = load(
        "{url: 'ssh://carol@bastion:2200', identity: id_ed25519, ssh_config: ssh_config}",
        base,
    )
    assert (proxy.address, proxy.username) == (Address("10.1.0.5", 2200), "carol")
    assert proxy.ssh is not None
    assert proxy.ssh.identities == (str(base / "id_ed25519"), str(base / "id_lab"))
    # first value wins; %h; Include read in place
    proxy = load("{url: 'ssh://lab-box', ssh_config: ssh_config}", base)
    assert (proxy.address, proxy.username) == (Address("lab-box.lab.example", 22), "nobody-else")


def test_ssh_config_problems_are_located(base: Path) -> None:
    (base / "bad_config").write_text("Host x\n  Port seventy\n")
    assert errors("{url: 'ssh://x', ssh_config: bad_config}", base) == [
        "BASE/routes.yaml:2: proxies.hop.ssh_config: BASE/bad_config:2: bad port 'seventy'"
    ]
    assert errors("{url: 'ssh://x', ssh_config: missing}", base) == [
        "BASE/routes.yaml:2: proxies.hop.ssh_config: cannot read BASE/missing:"
        " No such file or directory"
    ]


def test_identity_file_tokens(base: Path) -> None:
    home = os.path.expanduser("~")
    (base / "cfg").write_text(
        "Host j\n  HostName 10.0.0.9\n  User deploy\n  IdentityFile ~/.ssh/id_%h_%r_%p%%\n"
    )
    found = lookup(str(base / "cfg"), "j")
    assert found.identity_files == (f"{home}/.ssh/id_10.0.0.9_deploy_22%",)
