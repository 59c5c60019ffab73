"""The one translation table: what went wrong on the way to a hop, into the HopError a
user reads (and the failover charges).

How this works. Every step of building a chain (reach hop 1, TLS to an https hop, ask a
hop for the next hop or the destination) knows where it stands: a `Where` names the hop
it deals with, the phase, and what it asked for. Whatever interrupts the step — an
exception from the transport or a connector, a hop's failure answer (`HopAnswer`), a
limit that fired (`Expired`), or the dialer's finding that nothing was reached through a
hop (`NoneReached`) — goes through `blame(cause, where)` once, and comes out as the
`HopError` to record, with the hop charged, the phase, the RFC 9209 `proxy_status`, the
upstream's own status and whether the hop denied us. `None` means "not a failure of a
hop": the caller lets the original exception go on (a cancellation, a screen's refusal).

The rule the table encodes: an answer is charged to the hop it is about. Hop k's 502 or
SOCKS "host unreachable" about hop k+1 is hop k+1's failure (phase connect, as reached
from hop k); the last hop's 502 about the destination is phase destination; a 407/403 or
an answer that is not one is hop k's own (phase handshake).

Pure: no I/O, no clock, so tests/test_blame.py checks it row by row without a socket.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass

import anyio

from ..errors import (
    ChainerError,
    HopAnswer,
    HopClosed,
    HopError,
    HopProtocolError,
    HopTimeout,
    HopUnreachable,
    Phase,
    SshDenied,
)
from ..text import fmt_seconds, transport_reason

__all__ = [
    "TRANSPORT_ERRORS",
    "Cause",
    "DeadlineExceeded",
    "Expired",
    "NoneReached",
    "Where",
    "blame",
    "expired",
    "lost_kept_connection",
]

# What a socket, a stream or a TLS layer raises when the other side goes away.
TRANSPORT_ERRORS = (OSError, anyio.EndOfStream, anyio.BrokenResourceError)


class DeadlineExceeded(ChainerError):
    """The connection's overall deadline fired: no one hop is to blame."""


@dataclass(frozen=True, slots=True)
class Where:
    """What a step was doing, for the message and the charge.

    index, hop: the hop dealt with (1-based; 0 and "direct" for a direct connection).
    phase: connect (reaching it), tls (TLS with it), handshake (asking it for `target`).
    target: connect, tls: what was dialled (`scheme://host:port`, or host:port for a
        direct connection); handshake: what the hop was asked for (host:port).
    previous: the name of hop index-1 when this one is reached through it.
    next_hop: handshake only: the name of the hop asked for (None: the destination).
    """

    index: int
    hop: str
    phase: Phase
    target: str = ""
    previous: str = ""
    next_hop: str | None = None

    def waiting_for(self) -> str:
        """The wait the overall deadline cut short, for its message."""
        if self.index == 0:
            return f"a direct connection to {self.target}"
        prefix = "TLS with " if self.phase == "tls" else ""
        return f"{prefix}hop {self.index} ({self.hop})"


@dataclass(frozen=True, slots=True)
class Expired:
    """A limit that fired: `seconds` long; a hop's own limit (connect_timeout in phase
    connect, handshake_timeout in phase handshake), or the connection's deadline."""

    seconds: float
    overall: bool = False


@dataclass(frozen=True, slots=True)
class NoneReached:
    """No candidate of the next position was reached in time through the hop: the hop
    itself is the silent one."""

    candidates: tuple[str, ...]


Cause = BaseException | Expired | NoneReached


def blame(cause: Cause, where: Where) -> ChainerError | None:
    """The error to record for `cause` at `where`; None when it is no hop's failure."""
    if isinstance(cause, Expired):
        return _expired(cause, where)
    if isinstance(cause, NoneReached):
        names = ", ".join(cause.candidates)
        reason = f"no answer about any next hop ({names})"
        return _at(HopTimeout, where, reason, "connection_read_timeout")
    if isinstance(cause, HopError) or (
        isinstance(cause, ChainerError)
        and not isinstance(cause, HopAnswer | HopProtocolError | SshDenied)
    ):
        return None  # already translated, or ours on purpose (a screen's refusal)
    if where.phase == "connect":
        return _connect(cause, where)
    if where.phase == "tls":
        return _tls(cause, where)
    if where.phase == "ssh":
        return _ssh(cause, where)
    return _answer(cause, where)


def expired(cause: Expired, where: Where) -> ChainerError:
    """`blame` for a limit, which always has someone to blame."""
    error = blame(cause, where)
    assert error is not None
    return error


def lost_kept_connection(cause: BaseException) -> bool:
    """On a connection kept from a failed request: the hop closed it before answering the
    next one (the keep-alive race). Nobody's fault; the caller reconnects and asks again."""
    return isinstance(cause, (HopClosed, *TRANSPORT_ERRORS)) and not isinstance(cause, HopError)


def _expired(cause: Expired, where: Where) -> ChainerError:
    limit = fmt_seconds(cause.seconds)
    if cause.overall:
        return DeadlineExceeded(f"deadline {limit} exceeded waiting for {where.waiting_for()}")
    if where.phase == "handshake":
        return _at(HopTimeout, where, f"no answer in {limit}", "connection_read_timeout")
    if where.index == 0:
        return _at(
            HopTimeout, where, f"{where.target} not reached in {limit}", "connection_timeout"
        )
    through = f" through hop {where.index - 1} ({where.previous})" if where.previous else ""
    return _at(HopTimeout, where, f"not reached{through} in {limit}", "connection_timeout")


def _connect(cause: BaseException, where: Where) -> HopError | None:
    if not isinstance(cause, OSError):
        return None
    if where.index == 0:  # a direct connection: the destination, which the client named
        reason = f"{where.target}: {transport_reason(cause)}"
        return _at(HopUnreachable, where, reason, _connect_status(cause))
    error = _at(HopUnreachable, where, transport_reason(cause), _connect_status(cause))
    error.address = where.target  # the hop's address: for the log, not the client
    return error


def _tls(cause: BaseException, where: Where) -> HopError | None:
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = f"certificate not trusted: {cause.verify_message}"
        return _at(HopUnreachable, where, reason, "tls_certificate_error")
    if isinstance(cause, ssl.SSLError):
        return _at(
            HopUnreachable, where, f"TLS failed: {cause.reason or cause}", "tls_protocol_error"
        )
    if isinstance(cause, TRANSPORT_ERRORS):
        reason = f"TLS failed: {transport_reason(cause)}"
        return _at(HopUnreachable, where, reason, "tls_protocol_error")
    return None


def _ssh(cause: BaseException, where: Where) -> HopError | None:
    if isinstance(cause, SshDenied):
        error = _at(HopUnreachable, where, f"{cause} (denied)", "proxy_configuration_error")
        error.denied = True
        return error
    if isinstance(cause, HopProtocolError):
        return _at(HopUnreachable, where, str(cause), "proxy_internal_response")
    if isinstance(cause, TRANSPORT_ERRORS):
        reason = f"SSH handshake failed: {transport_reason(cause)}"
        return _at(HopUnreachable, where, reason, "connection_terminated")
    return None


def _answer(cause: BaseException, where: Where) -> HopError | None:
    if isinstance(cause, HopAnswer):
        return _hop_said(cause, where)
    if isinstance(cause, HopProtocolError):
        return _at(HopUnreachable, where, f"bad answer: {cause}", "http_protocol_error")
    if isinstance(cause, TRANSPORT_ERRORS):
        reason = f"{transport_reason(cause)} before it answered"
        return _at(HopUnreachable, where, reason, "connection_terminated")
    return None


def _hop_said(answer: HopAnswer, where: Where) -> HopError:
    status = answer.status or None
    if answer.kind == "prohibited":
        return _prohibited(answer, where)
    if where.next_hop is None and answer.kind in ("unreachable", "timeout", "failed"):
        # The last hop about the destination: the destination's failure, charged to no
        # hop. A generic failure (SOCKS 0x01, HTTP 500) may hide the hop's own trouble:
        # flagged, for the dialer to weigh (Health.generic_failure). A status of 0 means
        # the connector refused before asking (socks4 and a name): not generic either.
        cls: type[HopError] = HopTimeout if answer.kind == "timeout" else HopUnreachable
        if answer.dns:
            proxy_status = "dns_error"
        elif cls.timeout:
            proxy_status = "connection_timeout"
        else:
            proxy_status = "destination_unavailable"
        return cls(
            where.index,
            where.hop,
            "destination",
            f"could not reach {where.target}: {answer.text}",
            status=status,
            proxy_status=proxy_status,
            generic=answer.kind == "failed" and bool(answer.status),
        )
    if answer.kind in ("unreachable", "timeout") and where.next_hop is not None:
        cls = HopTimeout if answer.kind == "timeout" else HopUnreachable
        # Hop k's answer about hop k+1: hop k+1's failure, as reached from hop k.
        return cls(
            where.index + 1,
            where.next_hop,
            "connect",
            f"hop {where.index} ({where.hop}) could not reach it: {answer.text}",
            status=status,
            proxy_status="connection_timeout" if cls.timeout else "connection_refused",
        )
    denied = answer.kind == "denied"
    return HopUnreachable(
        where.index,
        where.hop,
        "handshake",
        f"{answer.text} (denied)" if denied else answer.text,
        status=status,
        proxy_status="http_request_denied" if denied else "proxy_internal_response",
        denied=denied,
    )


def _prohibited(answer: HopAnswer, where: Where) -> HopError:
    """The hop's policy forbids the target (SSH "administratively prohibited"): about the
    next hop, that edge is denied; about the destination, the destination is refused
    there (another last hop may allow it), and the hop is not to blame."""
    status = answer.status or None
    if where.next_hop is None:
        return HopUnreachable(
            where.index,
            where.hop,
            "destination",
            f"could not reach {where.target}: {answer.text}",
            status=status,
            proxy_status="destination_ip_prohibited",
        )
    return HopUnreachable(
        where.index + 1,
        where.next_hop,
        "connect",
        f"hop {where.index} ({where.hop}) may not reach it: {answer.text} (denied)",
        status=status,
        proxy_status="destination_ip_prohibited",
        denied=True,
    )


def _at(cls: type[HopError], where: Where, reason: str, proxy_status: str) -> HopError:
    return cls(where.index, where.hop, where.phase, reason, proxy_status=proxy_status)


def _connect_status(exc: BaseException) -> str:
    """The RFC 9209 error type for a failed TCP connect."""
    errnos = set()
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, socket.gaierror):
            return "dns_error"
        if isinstance(cause, OSError) and cause.errno:
            errnos.add(cause.errno)
        cause = cause.__cause__
    if errnos & {errno.ENETUNREACH, errno.EHOSTUNREACH}:
        return "destination_ip_unroutable"
    if errno.ECONNREFUSED in errnos:
        return "connection_refused"
    return "destination_unavailable"
