"""Proxy URLs: `scheme://[user[:password]@]host[:port]` split into scheme, address and
credentials, and `_redact`, which masks userinfo (and a "port" that is really a password)
as `***` so that no error message ever shows a credential.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from ..errors import BadTarget
from ..models import DEFAULT_PORTS, SCHEMES, Address, Scheme
from ..routing.target import parse_authority
from ._yaml import _q

_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*$")
_SCHEME_OF: dict[str, Scheme] = {s: s for s in SCHEMES}

_ParsedURL = tuple[Scheme, Address, str | None, str | None]


def _parse_url(url: str) -> _ParsedURL:
    """`scheme://[user[:password]@]host[:port]` -> parts; ValueError messages hide userinfo."""
    shown = _q(_redact(url))
    scheme_text, sep, rest = url.partition("://")
    if not sep or not _URL_SCHEME.match(scheme_text):
        raise ValueError(f"not a proxy URL: {shown} (expected scheme://host:port)")
    scheme = _SCHEME_OF.get(scheme_text.lower())
    if scheme is None:
        choices = ", ".join(SCHEMES)
        raise ValueError(f"unknown scheme {_q(scheme_text)} in {shown} (expected {choices})")
    # The last "@" ends the userinfo, so an unencoded "@" or "/" in a password still parses.
    userinfo, at, host_part = rest.rpartition("@")
    cut = _path_start(host_part)
    authority, tail = host_part[:cut], host_part[cut:]
    if tail not in ("", "/"):
        raise ValueError(f"a proxy URL has no path, query or fragment: {shown}")
    if not authority:
        raise ValueError(f"no host in {shown}")
    try:
        address = parse_authority(authority, DEFAULT_PORTS[scheme])
    except BadTarget as e:
        if "port" in str(e):  # the text is not shown: it may be a password, see _redact
            raise ValueError(f"bad port in {shown} (1-65535)") from None
        if not at:
            # No "@": a forgotten host leaves `user:password` where the address should be,
            # and the reason would quote it. Only the redacted URL is shown.
            raise ValueError(f"bad address in {shown}") from None
        raise ValueError(f"bad address in {shown}: {e}") from None
    username = password = None
    if at:
        user_text, colon, password_text = userinfo.partition(":")
        username = unquote(user_text)
        password = unquote(password_text) if colon else None
        if not username:
            raise ValueError(f"empty user name in {shown}")
    return scheme, address, username, password


def _explicit_port(url: str) -> bool:
    """Does the URL write a port (rather than take its scheme's default)?"""
    rest = url.strip().partition("://")[2].rpartition("@")[2]
    authority = rest[: _path_start(rest)]
    if authority.startswith("["):
        return "]:" in authority
    return ":" in authority


def _redact(url: str) -> str:
    """The URL with everything before the host's "@" shown as `***`, and a port that is not
    a number too: `http://alice:secret` (the host forgotten) holds a password, not a port."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    cut = _path_start(rest)
    authority = rest[:cut]
    if "@" not in authority and not authority.startswith("["):
        host, colon, port = authority.partition(":")
        if colon and not (port.isascii() and port.isdigit()):
            rest = f"{host}:***"  # everything after the first ":" may be a password
    return f"{scheme}{sep}{rest}"


def _path_start(text: str) -> int:
    return min((i for i in (text.find(c) for c in "/?#") if i >= 0), default=len(text))
