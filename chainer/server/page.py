"""The admin endpoint's live page (`GET /`): one self-contained HTML file, no CDN, no
framework, that works offline. Its script polls /routes, /hops and /tunnels once a second
and draws every route's chain as hop boxes, each edge in its circuit state's colour,
and the open tunnels; the file is `static/admin.html`, shipped as package data.

The page is served with a Content-Security-Policy that allows its own inline script and
style by hash and nothing else: no other script, no frames, requests only to this
endpoint. Everything it shows is set as text, never parsed as HTML — hop names, reasons
and destinations may carry what a client or an upstream sent.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from importlib import resources

__all__ = ["page_headers", "page_html"]

_BLOCK = re.compile(rb"<(script|style)>(.*?)</\1>", re.DOTALL)


@functools.cache
def page_html() -> bytes:
    return resources.files("chainer.server").joinpath("static/admin.html").read_bytes()


def _hashes(kind: bytes) -> str:
    found = [body for tag, body in _BLOCK.findall(page_html()) if tag == kind]
    return " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body).digest()).decode()}'" for body in found
    )


@functools.cache
def page_headers() -> tuple[tuple[str, str], ...]:
    """The page's own response headers: its Content-Security-Policy and friends."""
    policy = (
        "default-src 'none'; "
        f"script-src {_hashes(b'script')}; "
        f"style-src {_hashes(b'style')}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return (
        ("Content-Security-Policy", policy),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
    )
