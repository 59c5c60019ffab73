"""One error tree. Everything chainer raises on purpose is a ChainerError.

Messages never contain credentials: hops are named by their config name and their
`scheme://host:port`, never by the URL they were written as.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from anyio.abc import ByteStream

Phase = Literal["connect", "tls", "ssh", "handshake", "destination"]


class ChainerError(Exception):
    """Root of every error chainer raises on purpose."""


class ConfigError(ChainerError):
    """One problem in a config file, located by file, line and key path."""

    def __init__(self, file: str, line: int, path: str, message: str, column: int = 0) -> None:
        self.file = file
        self.line = line
        self.column = column  # 1-based; given for YAML syntax errors, where it helps most
        self.path = path
        self.message = message
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        if self.line and self.column:
            where += f":{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"


class ConfigErrors(ChainerError):
    """Every problem found in one config file (validation reports all of them at once)."""

    def __init__(self, errors: Sequence[ConfigError]) -> None:
        self.errors = tuple(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class BadTarget(ChainerError, ValueError):
    """A destination that is not a DNS name or IP literal with a port 1-65535 (HTTP 400)."""


class Refused(ChainerError):
    """Policy said no: a `reject` route or a destination no route matches (HTTP 403)."""

    def __init__(self, message: str, route: str | None = None) -> None:
        self.route = route
        super().__init__(message)


class HopError(ChainerError):
    """Building a chain failed at one hop.

    index: 1-based position in the chain (0 for a `direct` connection).
    hop: the config name of the candidate charged with the failure.
    phase: connect (reaching it), tls, ssh (the SSH key exchange and authentication),
    handshake (its answer to our request), destination (the last hop could not reach
    the destination).
    status: the upstream's own code (HTTP status, SOCKS reply, SSH channel-open
    reason), when it gave one.
    proxy_status: the RFC 9209 error type for a `Proxy-Status` header.
    denied: the hop refused us (credentials, policy): a configuration problem.
    generic: the hop's answer does not say whether it or the destination failed
    (SOCKS 0x01, HTTP 500): see Health.generic_failure.
    """

    timeout = False

    def __init__(
        self,
        index: int,
        hop: str,
        phase: Phase,
        reason: str,
        *,
        status: int | None = None,
        proxy_status: str = "proxy_internal_error",
        denied: bool = False,
        generic: bool = False,
        address: str | None = None,
    ) -> None:
        self.index = index
        self.hop = hop
        self.phase = phase
        self.reason = reason
        self.status = status
        self.proxy_status = proxy_status
        self.denied = denied
        self.generic = generic
        # The hop's scheme://host:port when the failure was reaching it: for the log,
        # never for the client (a proxy's addresses are not the client's business).
        self.address = address
        self.elapsed = 0.0  # seconds into the connection's set-up when it happened
        super().__init__(self.describe())

    def where(self) -> str:
        return "direct" if self.index == 0 else f"hop {self.index} ({self.hop})"

    def describe(self, *, full: bool = False) -> str:
        """`hop 2 (bastion): connection refused`; with `full`, the hop's address too
        (`hop 2 (bastion): socks5://10.1.0.5:1080: connection refused`), for logs."""
        if full and self.address:
            return f"{self.where()}: {self.address}: {self.reason}"
        return f"{self.where()}: {self.reason}"

    def __str__(self) -> str:
        return self.describe()


class HopTimeout(HopError, TimeoutError):
    """A hop did not answer (or could not be reached) in time (HTTP 504)."""

    timeout = True


class HopUnreachable(HopError, OSError):
    """A hop refused us, failed, or answered with an error (HTTP 502)."""


class ChainFailed(ChainerError):
    """Every way a route offers (its chain, failover candidates, fallbacks) failed.

    `attempts` holds each failure in the order it happened; the last one decides the
    client's status code.
    """

    def __init__(
        self,
        route: str,
        attempts: Sequence[HopError],
        reason: str | None = None,
        skipped: Sequence[tuple[int, str]] = (),
    ) -> None:
        self.route = route
        self.attempts = tuple(attempts)
        self.reason = reason
        self.skipped = tuple(skipped)
        super().__init__(self.describe())

    @property
    def last(self) -> HopError | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def timeout(self) -> bool:
        if self.reason is not None:
            return True
        last = self.last
        return last is not None and last.timeout

    def describe(self, *, full: bool = False) -> str:
        text = describe_attempts(self.attempts, self.skipped, full=full)
        if self.reason:
            text = f"{text}; {self.reason}" if text else self.reason
        return text or "no hop tried"


def describe_attempts(
    attempts: Sequence[HopError], skipped: Sequence[tuple[int, str]] = (), *, full: bool = False
) -> str:
    """Every attempt, in order: `hop 2 (bastion): no answer in 10s`; when there were
    several, each with its phase and when it happened; then the candidates skipped."""
    if len(attempts) == 1 and not skipped:
        parts = [attempts[0].describe(full=full)]
    else:
        parts = [f"{a.describe(full=full)} ({a.phase}, at {a.elapsed:.2f}s)" for a in attempts]
    parts += [f"hop {i} ({name}): skipped, circuit open" for i, name in skipped]
    return "; ".join(parts)


class HopAnswer(ChainerError):
    """A hop answered our request with a failure (raised by a connector, before the dialer
    decides whom to charge).

    kind: "denied" (407/403, SOCKS auth refused: the hop itself said no),
    "unreachable" (the hop could not reach what we asked for: 502/503, SOCKS 3/4/5),
    "timeout" (the hop timed out reaching it: 504, SOCKS TTL expired),
    "prohibited" (the hop's policy forbids that target: SSH "administratively
    prohibited"; about the next hop it is that edge's denial, about the destination the
    destination's failure),
    "failed" (anything else: the hop itself is at fault).
    """

    def __init__(
        self,
        kind: str,
        status: int,
        text: str,
        stream: ByteStream | None = None,
        *,
        dns: bool = False,
    ) -> None:
        self.kind = kind
        self.status = status
        self.text = text
        self.stream = stream  # the hop's connection, when it survived the failure
        self.dns = dns  # the hop said it could not resolve the name it was asked for
        super().__init__(text)


class SshDenied(ChainerError):
    """An SSH hop's host key is not trusted, or it did not accept our credentials (or
    they could not be loaded): a configuration problem, the hop's own denied failure."""


class HopProtocolError(ChainerError):
    """A hop's answer was not a valid answer (garbage, truncated, over the size bound)."""


class HopClosed(HopProtocolError):
    """A hop closed the connection before sending a single byte of its answer."""
