"""The keys only an `ssh://` proxy takes: identity, passphrase, agent, known_hosts,
host_key, insecure_host_key, ssh_config, keepalive, session_idle.

`ssh_config:` is applied here, at load time, so that every view of the table (explain,
check, the log) shows the host and port actually dialled: a URL host that is a `Host`
alias gets the file's HostName, its Port unless the URL gave one, its User unless the
proxy names one, and its IdentityFiles after any `identity:` (files that do not exist
are skipped, as ssh does). Secrets are never quoted in an error.
"""

from __future__ import annotations

import os

import asyncssh
from yaml.nodes import Node, ScalarNode

from ..errors import BadTarget
from ..models import Address, SshOptions
from ..routing.target import normalize_host
from ._ssh_config import SshConfigError, lookup
from ._yaml import _q, _Reader

SSH_KEYS = (
    "identity",
    "passphrase",
    "agent",
    "known_hosts",
    "host_key",
    "insecure_host_key",
    "ssh_config",
    "keepalive",
    "session_idle",
)

__all__ = ["SSH_KEYS", "ssh_options"]

Resolved = tuple[SshOptions, Address, str | None]


def ssh_options(
    p: _Reader,
    path: str,
    nodes: dict[str, Node | None],
    address: Address,
    explicit_port: bool,
    username: str | None,
) -> Resolved | None:
    """An ssh proxy's SshOptions (`nodes`: the value of each of SSH_KEYS, None where it
    is not given), and its address and user name with `ssh_config` applied; None after
    recording an error."""
    ok = True
    identities: list[str] = []
    if (node := nodes["identity"]) is not None:
        for i, item in enumerate(p.items(node)):
            where = f"{path}.identity" if item is node else f"{path}.identity[{i}]"
            full = p.file_path(item, where)
            ok &= full is not None
            if full is not None:
                identities.append(full)
    passphrase = None
    if (node := nodes["passphrase"]) is not None:
        passphrase = p.text(node, f"{path}.passphrase")
        ok &= passphrase is not None
    agent: bool | None = True
    if (node := nodes["agent"]) is not None:
        agent = p.flag(node, f"{path}.agent")
    known_hosts = None
    if (node := nodes["known_hosts"]) is not None:
        text = p.text(node, f"{path}.known_hosts")
        # Need not exist yet: a missing file trusts nothing, and the error says how to fill it.
        if text is not None:
            known_hosts = os.path.abspath(os.path.join(p.base_dir, os.path.expanduser(text)))
        ok &= text is not None
    host_key = None
    if (node := nodes["host_key"]) is not None:
        host_key = _host_key(p, f"{path}.host_key", node)
        ok &= host_key is not None
    insecure: bool | None = False
    if (node := nodes["insecure_host_key"]) is not None:
        insecure = p.flag(node, f"{path}.insecure_host_key")
        clash = [k for k in ("host_key", "known_hosts") if nodes[k] is not None]
        if insecure and clash:
            p.error(node, f"{path}.insecure_host_key", f"contradicts {clash[0]}: (nothing checked)")
            ok = False
    if host_key is not None and nodes["known_hosts"] is not None:
        p.error(nodes["known_hosts"], f"{path}.known_hosts", "contradicts host_key: (one source)")
        ok = False
    keepalive: float | None = 30.0
    if (node := nodes["keepalive"]) is not None:
        keepalive = _keepalive(p, f"{path}.keepalive", node)
        ok &= keepalive != -1.0
    session_idle: float | None = 300.0
    if (node := nodes["session_idle"]) is not None:
        session_idle = p.duration(node, f"{path}.session_idle")
    alias = None
    if (node := nodes["ssh_config"]) is not None:
        applied = _apply_ssh_config(p, f"{path}.ssh_config", node, address, explicit_port, username)
        if applied is None:
            return None
        written = address.host
        address, username, extra = applied
        alias = written if address.host != written else None
        identities += [f for f in extra if f not in identities and os.path.isfile(f)]
    if passphrase is not None and not identities:
        p.error(nodes["passphrase"], f"{path}.passphrase", "a passphrase needs an identity:")
        ok = False
    if not ok or agent is None or insecure is None or session_idle is None:
        return None
    settings = SshOptions(
        identities=tuple(identities),
        passphrase=passphrase,
        agent=agent,
        known_hosts=known_hosts,
        host_key=host_key,
        insecure_host_key=insecure,
        keepalive=keepalive,
        session_idle=session_idle,
        alias=alias,
    )
    return settings, address, username


def _host_key(p: _Reader, where: str, node: Node) -> str | None:
    """`type base64` (a comment after them is dropped), checked to be a public key."""
    text = p.text(node, where)
    if text is None:
        return None
    parts = text.split()
    if len(parts) < 2:
        p.error(node, where, 'expected a public key like "ssh-ed25519 AAAA..."')
        return None
    key = f"{parts[0]} {parts[1]}"
    try:
        asyncssh.import_public_key(key)
    except (asyncssh.KeyImportError, ValueError) as exc:
        p.error(node, where, f"not an SSH public key: {exc}")
        return None
    return key


def _keepalive(p: _Reader, where: str, node: Node) -> float | None:
    """Seconds, or None for `false` (no keepalives); -1.0 after an error."""
    if isinstance(node, ScalarNode) and node.tag.endswith(":bool"):
        if p.flag(node, where) is False:
            return None
        p.error(node, where, "expected a duration like 30s, or false")
        return -1.0
    seconds = p.duration(node, where)
    return -1.0 if seconds is None else seconds


def _apply_ssh_config(
    p: _Reader,
    where: str,
    node: Node,
    address: Address,
    explicit_port: bool,
    username: str | None,
) -> tuple[Address, str | None, tuple[str, ...]] | None:
    text = p.text(node, where)
    if text is None:
        return None
    file = os.path.abspath(os.path.join(p.base_dir, os.path.expanduser(text)))
    try:
        found = lookup(file, address.host)
    except SshConfigError as exc:
        p.error(node, where, str(exc))
        return None
    host = address.host
    if found.hostname is not None:
        try:
            host = normalize_host(found.hostname)
        except BadTarget as exc:
            p.error(node, where, f"HostName {_q(found.hostname)} for {address.host}: {exc}")
            return None
    port = address.port if explicit_port or found.port is None else found.port
    return Address(host, port), username or found.user, found.identity_files
