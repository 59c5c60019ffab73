"""Whom an SSH hop trusts and how it proves who we are: host keys and authentication.

How this works. Host keys: before the key exchange, the keys trusted for the hop are
looked up, as OpenSSH would, in its `known_hosts` file (default ~/.ssh/known_hosts,
hashed entries and `[host]:port` forms included; read again at every new session, so a
key added there is trusted from the next tunnel on) or taken from its pinned `host_key`.
asyncssh negotiates a host key algorithm those keys can satisfy and accepts the server
only if its key is one of them; `Client.validate_host_public_key` is asked about any
other key and records it, so the error can print the fingerprint offered (SHA256, as
`ssh` prints it) and whether the host was unknown or its key changed. With
`insecure_host_key: true` nothing is checked, and every session start says so.

Authentication: public keys first — the ssh-agent's (at $SSH_AUTH_SOCK, unless
`agent: false`), then the `identity` files (decrypted once with `passphrase`, then kept
in memory, as an agent would) — handed to asyncssh one at a time through
`Client.public_key_auth_requested`, so the key that worked is known; then the password,
if one is configured (password or keyboard-interactive). `Client.auth` names the
method that worked, for `chainer check`; it never holds a secret.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

import asyncssh

from ..errors import SshDenied
from ..models import Proxy, SshOptions

__all__ = [
    "Client",
    "KeyLoadError",
    "SshDenied",
    "display_type",
    "fingerprint",
    "host_key_problem",
    "load_identities",
    "trusted_keys",
]

log = logging.getLogger("chainer.ssh")

DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class KeyLoadError(SshDenied):
    """An identity file cannot be read or decrypted."""


Trusted = tuple[list[asyncssh.SSHKey], list[asyncssh.SSHKey], list[asyncssh.SSHKey]]


def known_hosts_path(options: SshOptions) -> str:
    return options.known_hosts or os.path.expanduser(DEFAULT_KNOWN_HOSTS)


def trusted_keys(proxy: Proxy, options: SshOptions) -> Trusted | None:
    """(host keys, CA keys, revoked keys) trusted for the hop; None: trust any key."""
    if options.insecure_host_key:
        return None
    if options.host_key is not None:
        return [asyncssh.import_public_key(options.host_key)], [], []
    path = known_hosts_path(options)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        return [], [], []
    except OSError as exc:
        raise SshDenied(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        known = asyncssh.import_known_hosts(text)
    except ValueError as exc:
        raise SshDenied(f"cannot use {path}: {exc}") from None
    host, port = proxy.address.host, proxy.address.port
    found = asyncssh.match_known_hosts(known, host, "", port if port != 22 else None)
    return list(found[0]), list(found[1]), list(found[2])


def fingerprint(key: asyncssh.SSHKey) -> str:
    """`SHA256:base64`, as OpenSSH prints it."""
    return key.get_fingerprint("sha256")


def display_type(key: asyncssh.SSHKey) -> str:
    """The key type as OpenSSH names it in messages: ED25519, ECDSA, RSA..."""
    name = key.get_algorithm()
    if name.startswith("sk-ssh-ed25519"):
        return "ED25519-SK"
    if name.startswith("sk-ecdsa"):
        return "ECDSA-SK"
    if name.startswith("ecdsa-"):
        return "ECDSA"
    return {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA", "ssh-dss": "DSA"}.get(name, name)


def public_line(key: asyncssh.SSHKey) -> str:
    """`type base64`, as host_key: takes it (no comment)."""
    return " ".join(key.export_public_key("openssh").decode().split()[:2])


def known_hosts_entry(proxy: Proxy, key: asyncssh.SSHKey) -> str:
    """The line that would trust `key` for the hop in a known_hosts file."""
    host, port = proxy.address.host, proxy.address.port
    pattern = host if port == 22 else f"[{host}]:{port}"
    return f"{pattern} {public_line(key)}"


def host_key_problem(
    proxy: Proxy, options: SshOptions, offered: asyncssh.SSHKey | None, trusted: Trusted
) -> str:
    """Why the offered key was refused, with its fingerprint and how to trust it. Also
    logged with the exact known_hosts line (the log may carry the hop's address; the
    error, which a client may see, names only the key)."""
    if offered is None:
        return "host key refused (revoked, or a certificate not trusted)"
    shown = f"{display_type(offered)} key {fingerprint(offered)}"
    public = public_line(offered)
    if options.host_key is not None:
        what = f"host key does not match host_key: it offered {shown}"
        how = f'if the host really changed its key, pin the new one: host_key: "{public}"'
    else:
        path = known_hosts_path(options)
        if trusted[0]:
            what = f"host key CHANGED: it offered {shown}, not the key {path} has"
            how = f"if the change is expected, replace its entry in {path}"
        else:
            what = f"host key unknown: it offered {shown}, not in {path}"
            how = f"to trust it, check that fingerprint, then add it to {path}"
        how += f' or pin it: host_key: "{public}"'
    log.warning(
        "ssh hop %s (%s): %s; known_hosts line: %s",
        proxy.name,
        proxy.describe(),
        what,
        known_hosts_entry(proxy, offered),
    )
    return f"{what}; {how}"


class Client(asyncssh.SSHClient):
    """asyncssh's callbacks for one session: the host key offered when it is not
    trusted, our keys handed out one at a time (so the one that worked is known), which
    method worked, and the connection's end."""

    def __init__(
        self,
        keys: list[tuple[asyncssh.SSHKeyPair, str]],
        has_password: bool,
        lost: Callable[[Exception | None], None],
    ) -> None:
        self.keys = keys  # (key, where it came from: "ssh-agent", a file)
        self.has_password = has_password
        self.offered: asyncssh.SSHKey | None = None
        self.auth = ""  # what worked: "publickey (~/.ssh/id_ed25519)", "password"
        self._next = 0
        self._lost = lost

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc)

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        self.offered = key  # not among the trusted keys: refused, and remembered
        return False

    def public_key_auth_requested(self) -> list[asyncssh.SSHKeyPair] | None:
        if self._next >= len(self.keys):
            self.auth = "password" if self.has_password else ""
            return None
        key, source = self.keys[self._next]
        self._next += 1
        self.auth = f"publickey ({source})"
        return [key]

    def auth_completed(self) -> None:
        if not self.auth:
            self.auth = "password" if self.has_password else "none"

    def attempted(self) -> str:
        """What was offered, for an authentication failure (no secret in it)."""
        sources = list(dict.fromkeys(source for _, source in self.keys[: self._next]))
        parts = [f"publickey ({', '.join(sources)})"] if sources else []
        if self.has_password:
            parts.append("password")
        return ", ".join(parts) or "no key, no password"


def load_identities(options: SshOptions) -> list[tuple[asyncssh.SSHKeyPair, str]]:
    """The identity files' keys (blocking: decrypting a key is slow on purpose)."""
    keys = []
    for path in options.identities:
        try:
            key = asyncssh.read_private_key(path, options.passphrase)
        except (asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as exc:
            raise KeyLoadError(f"identity {path}: {_key_error(exc)}") from None
        except OSError as exc:
            raise KeyLoadError(f"identity {path}: {exc.strerror or exc}") from None
        keys.append((asyncssh.load_keypairs([key])[0], _short(path)))
    return keys


def _key_error(exc: Exception) -> str:
    text = str(exc)
    if "Passphrase must be specified" in text:
        return "the key is encrypted: set passphrase:"
    if "ncorrect passphrase" in text:
        return "wrong passphrase"
    return text


def _short(path: str) -> str:
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if home != "/" and path.startswith(home + "/") else path
