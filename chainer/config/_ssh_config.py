"""Reading an OpenSSH client config (`ssh_config: ~/.ssh/config` on an ssh hop) for the
four settings chainer takes from it: HostName, User, Port and IdentityFile.

How this works, as ssh_config(5) says: the file is read top to bottom; a `Host` line
starts a block that applies when one of its patterns matches the name the URL gave
(`*` and `?` wildcards, `!pattern` excludes) and none of its negated ones do; for each
keyword the first value obtained wins, except IdentityFile, whose every value is kept
in order. `Include` reads further files in place (relative names from ~/.ssh, globs
allowed); `Match` blocks are not evaluated here and their contents are skipped (a
`Match all` block applies). Tokens `%h` (the host name), `%p`, `%r` (the remote user),
`%u` (the local user), `%d` (the home directory), `%%` and a leading `~` are expanded in
IdentityFile; `%h` and `%%` in HostName. Anything else in the file is ignored.
"""

from __future__ import annotations

import fnmatch
import getpass
import glob
import os
import shlex
from dataclasses import dataclass, field

__all__ = ["SshConfigError", "SshHost", "lookup"]

_MAX_INCLUDE_DEPTH = 16
_MAX_FILE_BYTES = 1 << 20


class SshConfigError(ValueError):
    """The file cannot be read, or a line of it cannot be understood."""


@dataclass(frozen=True, slots=True)
class SshHost:
    """What the file says about one host name; None: the file does not say."""

    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    identity_files: tuple[str, ...] = ()


@dataclass(slots=True)
class _Found:
    hostname: str | None = None
    user: str | None = None
    port: int | None = None
    identities: list[tuple[str, str]] = field(default_factory=list)  # (value, where)


def lookup(path: str, alias: str) -> SshHost:
    """The settings `path` gives the host `alias` (the name written in the URL)."""
    found = _Found()
    _read(path, alias, found, depth=0, active=True)
    hostname = found.hostname.replace("%h", alias) if found.hostname else None
    if hostname is not None:
        hostname = hostname.replace("%%", "%")
    host = hostname or alias
    identities = tuple(
        _expand(raw, where, host=host, port=found.port, user=found.user)
        for raw, where in found.identities
    )
    return SshHost(hostname, found.user, found.port, identities)


def _read(path: str, alias: str, found: _Found, *, depth: int, active: bool) -> None:
    if depth > _MAX_INCLUDE_DEPTH:
        raise SshConfigError(f"{path}: Include nested more than {_MAX_INCLUDE_DEPTH} deep")
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise SshConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_FILE_BYTES:
        raise SshConfigError(f"{path}: larger than 1 MiB")
    text = data.decode("utf-8", "replace")
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        keyword, args = _split(line, where)
        if not keyword:
            continue
        if keyword == "host":
            active = _host_matches(args, alias)
        elif keyword == "match":
            active = [a.lower() for a in args] == ["all"]
        elif not active:
            continue
        elif keyword == "include":
            for pattern in args:
                _include(pattern, alias, found, depth)
        else:
            _take(keyword, args, where, found)


def _split(line: str, where: str) -> tuple[str, list[str]]:
    text = line.strip()
    if not text or text.startswith("#"):
        return "", []
    keyword, _, rest = text.replace("\t", " ").partition(" ")
    if "=" in keyword:  # Keyword=value
        keyword, _, first = keyword.partition("=")
        rest = f"{first} {rest}"
    rest = rest.strip()
    if rest.startswith("="):
        rest = rest[1:]
    try:
        args = shlex.split(rest, comments=True)
    except ValueError as exc:
        raise SshConfigError(f"{where}: {exc}") from None
    return keyword.lower(), args


def _host_matches(patterns: list[str], alias: str) -> bool:
    name = alias.lower()
    matched = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        if fnmatch.fnmatchcase(name, pattern.lstrip("!").lower()):
            if negated:
                return False
            matched = True
    return matched


def _include(pattern: str, alias: str, found: _Found, depth: int) -> None:
    pattern = os.path.expanduser(pattern)
    if not os.path.isabs(pattern):
        pattern = os.path.join(os.path.expanduser("~/.ssh"), pattern)
    for path in sorted(glob.glob(pattern)):
        _read(path, alias, found, depth=depth + 1, active=True)


def _take(keyword: str, args: list[str], where: str, found: _Found) -> None:
    if keyword in ("hostname", "user", "port", "identityfile") and len(args) != 1:
        raise SshConfigError(f"{where}: {keyword} takes one value")
    if keyword == "hostname" and found.hostname is None:
        found.hostname = args[0]
    elif keyword == "user" and found.user is None:
        found.user = args[0]
    elif keyword == "port" and found.port is None:
        if not (args[0].isascii() and args[0].isdigit() and 0 < int(args[0]) < 65536):
            raise SshConfigError(f"{where}: bad port {args[0]!r}")
        found.port = int(args[0])
    elif keyword == "identityfile":
        found.identities.append((args[0], where))


def _expand(raw: str, where: str, *, host: str, port: int | None, user: str | None) -> str:
    home = os.path.expanduser("~")
    local = getpass.getuser()
    tokens = {
        "h": host,
        "p": str(port or 22),
        "r": user or local,
        "u": local,
        "d": home,
        "%": "%",
    }
    out = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "%":
            token = raw[i + 1 : i + 2]
            if token not in tokens:
                raise SshConfigError(f"{where}: IdentityFile token %{token} is not supported")
            out.append(tokens[token])
            i += 2
            continue
        out.append(ch)
        i += 1
    path = os.path.expanduser("".join(out))
    return path if os.path.isabs(path) else os.path.join(home, path)
