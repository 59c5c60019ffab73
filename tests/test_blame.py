"""The blame table, row by row, without a socket: what went wrong, where, and the HopError
a user reads (class, the hop charged, phase, Proxy-Status, the upstream's status, denied,
and the message text)."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import anyio
import pytest

from chainer.errors import (
    HopAnswer,
    HopClosed,
    HopError,
    HopProtocolError,
    HopTimeout,
    HopUnreachable,
    Refused,
    SshDenied,
)
from chainer.outbound.blame import (
    Cause,
    DeadlineExceeded,
    Expired,
    NoneReached,
    Where,
    blame,
    lost_kept_connection,
)

# Where a step stood: reaching something, TLS with a hop, or asking a hop for something.
DIRECT = Where(0, "direct", "connect", "example.com:443")
HOP1 = Where(1, "corp", "connect", "http://proxy.corp:3128")
HOP2 = Where(2, "bastion", "connect", "https://bastion.lab:8443", previous="corp")
TLS2 = Where(2, "bastion", "tls", "https://bastion.lab:8443", previous="corp")
ASK1 = Where(1, "corp", "handshake", "bastion.lab:8443", next_hop="bastion")  # for hop 2
ASK2 = Where(2, "bastion", "handshake", "example.com:443")  # the last hop, for the destination
SILENT = Where(1, "corp", "handshake")
# SSH hops: the session's key exchange and login with hop 2; channels asked of it.
SSH2 = Where(2, "jump", "ssh", "ssh://jump.lab:22", previous="corp")
CHAN2 = Where(2, "jump", "handshake", "lab-socks:1080", next_hop="lab")  # for hop 3
CHAN_DEST = Where(2, "jump", "handshake", "example.com:443")  # the last hop: destination


def _with_cause(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


def _cert_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] verify failed")
    exc.verify_message = "self-signed certificate"
    return exc


def _ssl_error() -> ssl.SSLError:
    exc = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    exc.reason = "WRONG_VERSION_NUMBER"
    return exc


def _refused() -> OSError:
    return ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")


def _errno(code: int) -> OSError:
    return OSError(code, "ignored: the errno's own words are used")


T, U, D = HopTimeout, HopUnreachable, DeadlineExceeded

# cause, where -> class, index, hop, phase, proxy_status, status, denied, message
ROWS: list[tuple[Cause, Where, tuple[object, ...]]] = [
    # -- a limit fired -------------------------------------------------------------------
    (
        Expired(5.0),
        DIRECT,
        (T, 0, "direct", "connect", "connection_timeout", None, False,
         "direct: example.com:443 not reached in 5s"),
    ),
    (
        Expired(2.0),
        HOP1,
        (T, 1, "corp", "connect", "connection_timeout", None, False,
         "hop 1 (corp): not reached in 2s"),
    ),
    (
        Expired(0.5),
        HOP2,
        (T, 2, "bastion", "connect", "connection_timeout", None, False,
         "hop 2 (bastion): not reached through hop 1 (corp) in 500ms"),
    ),
    (
        Expired(10.0),
        ASK1,
        (T, 1, "corp", "handshake", "connection_read_timeout", None, False,
         "hop 1 (corp): no answer in 10s"),
    ),
    (
        Expired(30.0, overall=True),
        DIRECT,
        (D, None, None, None, None, None, None,
         "deadline 30s exceeded waiting for a direct connection to example.com:443"),
    ),
    (
        Expired(30.0, overall=True),
        HOP1,
        (D, None, None, None, None, None, None, "deadline 30s exceeded waiting for hop 1 (corp)"),
    ),
    (
        Expired(0.3, overall=True),
        TLS2,
        (D, None, None, None, None, None, None,
         "deadline 300ms exceeded waiting for TLS with hop 2 (bastion)"),
    ),
    (
        Expired(2.0, overall=True),
        ASK2,
        (D, None, None, None, None, None, None,
         "deadline 2s exceeded waiting for hop 2 (bastion)"),
    ),
    # -- TCP to hop 1 or to the destination ------------------------------------------------
    (
        _refused(),
        DIRECT,
        (U, 0, "direct", "connect", "connection_refused", None, False,
         "direct: example.com:443: connection refused"),
    ),
    (
        socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
        HOP1,
        (U, 1, "corp", "connect", "dns_error", None, False,
         "hop 1 (corp): name not resolved (Name or service not known)"),
    ),
    (
        _errno(errno.ENETUNREACH),
        HOP1,
        (U, 1, "corp", "connect", "destination_ip_unroutable", None, False,
         "hop 1 (corp): network is unreachable"),
    ),
    (
        _errno(errno.EHOSTUNREACH),
        DIRECT,
        (U, 0, "direct", "connect", "destination_ip_unroutable", None, False,
         "direct: example.com:443: no route to host"),
    ),
    (
        # happy eyeballs: every address failed; the last real error is the cause
        _with_cause(OSError("all connection attempts failed"), _refused()),
        HOP1,
        (U, 1, "corp", "connect", "connection_refused", None, False,
         "hop 1 (corp): connection refused"),
    ),
    (
        _errno(errno.ETIMEDOUT),
        HOP1,
        (U, 1, "corp", "connect", "destination_unavailable", None, False,
         "hop 1 (corp): connection timed out"),
    ),
    # -- TLS with an https hop ---------------------------------------------------------------
    (
        _cert_error(),
        TLS2,
        (U, 2, "bastion", "tls", "tls_certificate_error", None, False,
         "hop 2 (bastion): certificate not trusted: self-signed certificate"),
    ),
    (
        _ssl_error(),
        TLS2,
        (U, 2, "bastion", "tls", "tls_protocol_error", None, False,
         "hop 2 (bastion): TLS failed: WRONG_VERSION_NUMBER"),
    ),
    (
        anyio.EndOfStream(),
        TLS2,
        (U, 2, "bastion", "tls", "tls_protocol_error", None, False,
         "hop 2 (bastion): TLS failed: connection closed"),
    ),
    (
        anyio.BrokenResourceError(),
        TLS2,
        (U, 2, "bastion", "tls", "tls_protocol_error", None, False,
         "hop 2 (bastion): TLS failed: connection reset"),
    ),
    (
        _errno(errno.ECONNRESET),
        TLS2,
        (U, 2, "bastion", "tls", "tls_protocol_error", None, False,
         "hop 2 (bastion): TLS failed: connection reset by peer"),
    ),
    # -- a hop's answer about the next hop: charged to the next hop ----------------------------
    (
        HopAnswer("unreachable", 502, "answered 502 Bad Gateway"),
        ASK1,
        (U, 2, "bastion", "connect", "connection_refused", 502, False,
         "hop 2 (bastion): hop 1 (corp) could not reach it: answered 502 Bad Gateway"),
    ),
    (
        HopAnswer("unreachable", 5, "answered 0x05 (connection refused)"),
        ASK1,
        (U, 2, "bastion", "connect", "connection_refused", 5, False,
         "hop 2 (bastion): hop 1 (corp) could not reach it: answered 0x05 (connection refused)"),
    ),
    (
        HopAnswer("timeout", 504, "answered 504 Gateway Timeout"),
        ASK1,
        (T, 2, "bastion", "connect", "connection_timeout", 504, False,
         "hop 2 (bastion): hop 1 (corp) could not reach it: answered 504 Gateway Timeout"),
    ),
    # -- the last hop's answer about the destination: phase destination ------------------------
    (
        HopAnswer("unreachable", 502, "answered 502 Bad Gateway"),
        ASK2,
        (U, 2, "bastion", "destination", "destination_unavailable", 502, False,
         "hop 2 (bastion): could not reach example.com:443: answered 502 Bad Gateway"),
    ),
    (
        HopAnswer("timeout", 6, "answered 0x06 (TTL expired)"),
        ASK2,
        (T, 2, "bastion", "destination", "connection_timeout", 6, False,
         "hop 2 (bastion): could not reach example.com:443: answered 0x06 (TTL expired)"),
    ),
    # -- a hop's answer about itself: its own failure -------------------------------------------
    (
        HopAnswer("denied", 407, "answered 407 Proxy Authentication Required"),
        ASK1,
        (U, 1, "corp", "handshake", "http_request_denied", 407, True,
         "hop 1 (corp): answered 407 Proxy Authentication Required (denied)"),
    ),
    (
        HopAnswer("denied", 0, "username/password refused"),
        ASK2,
        (U, 2, "bastion", "handshake", "http_request_denied", None, True,
         "hop 2 (bastion): username/password refused (denied)"),
    ),
    (
        HopAnswer("failed", 500, "answered 500 Internal Server Error"),
        ASK1,
        (U, 1, "corp", "handshake", "proxy_internal_response", 500, False,
         "hop 1 (corp): answered 500 Internal Server Error"),
    ),
    # -- the last hop's generic failure about the destination: the destination's, flagged --------
    (
        HopAnswer("failed", 0, "socks4 cannot send the name lab.internal"),
        ASK2,
        (U, 2, "bastion", "destination", "destination_unavailable", None, False,
         "hop 2 (bastion): could not reach example.com:443: socks4 cannot send the name "
         "lab.internal"),
    ),
    (
        HopAnswer("failed", 1, "answered 0x01 (general failure)"),
        ASK2,
        (U, 2, "bastion", "destination", "destination_unavailable", 1, False,
         "hop 2 (bastion): could not reach example.com:443: answered 0x01 (general failure)"),
    ),
    (
        HopAnswer("failed", 500, "answered 500 Unable to connect"),
        ASK2,
        (U, 2, "bastion", "destination", "destination_unavailable", 500, False,
         "hop 2 (bastion): could not reach example.com:443: answered 500 Unable to connect"),
    ),
    (
        HopAnswer("unreachable", 503, "answered 503 Service Unavailable", dns=True),
        ASK2,
        (U, 2, "bastion", "destination", "dns_error", 503, False,
         "hop 2 (bastion): could not reach example.com:443: answered 503 Service Unavailable"),
    ),
    (
        HopProtocolError("not an HTTP answer: 'SSH-2.0-OpenSSH_9.2'"),
        ASK1,
        (U, 1, "corp", "handshake", "http_protocol_error", None, False,
         "hop 1 (corp): bad answer: not an HTTP answer: 'SSH-2.0-OpenSSH_9.2'"),
    ),
    (
        HopClosed("closed before answering"),
        ASK2,
        (U, 2, "bastion", "handshake", "http_protocol_error", None, False,
         "hop 2 (bastion): bad answer: closed before answering"),
    ),
    (
        anyio.EndOfStream(),
        ASK1,
        (U, 1, "corp", "handshake", "connection_terminated", None, False,
         "hop 1 (corp): connection closed before it answered"),
    ),
    (
        _errno(errno.ECONNRESET),
        ASK2,
        (U, 2, "bastion", "handshake", "connection_terminated", None, False,
         "hop 2 (bastion): connection reset by peer before it answered"),
    ),
    # -- nothing was reached through a hop: it is the silent one -------------------------------
    (
        NoneReached(("x1", "x2")),
        SILENT,
        (T, 1, "corp", "handshake", "connection_read_timeout", None, False,
         "hop 1 (corp): no answer about any next hop (x1, x2)"),
    ),
    # -- SSH hops: the session (phase ssh) -----------------------------------------------------
    (
        SshDenied("host key unknown: it offered ED25519 key SHA256:abc"),
        SSH2,
        (U, 2, "jump", "ssh", "proxy_configuration_error", None, True,
         "hop 2 (jump): host key unknown: it offered ED25519 key SHA256:abc (denied)"),
    ),
    (
        SshDenied("authentication failed (offered publickey (~/.ssh/id))"),
        SSH2,
        (U, 2, "jump", "ssh", "proxy_configuration_error", None, True,
         "hop 2 (jump): authentication failed (offered publickey (~/.ssh/id)) (denied)"),
    ),
    (
        HopProtocolError("SSH failed: No matching key exchange algorithm"),
        SSH2,
        (U, 2, "jump", "ssh", "proxy_internal_response", None, False,
         "hop 2 (jump): SSH failed: No matching key exchange algorithm"),
    ),
    (
        anyio.EndOfStream(),
        SSH2,
        (U, 2, "jump", "ssh", "connection_terminated", None, False,
         "hop 2 (jump): SSH handshake failed: connection closed"),
    ),
    (
        Expired(5.0),
        SSH2,
        (T, 2, "jump", "ssh", "connection_timeout", None, False,
         "hop 2 (jump): not reached through hop 1 (corp) in 5s"),
    ),
    # -- SSH hops: a channel-open refused (OPEN_CONNECT_FAILED = 2, PROHIBITED = 1) ------------
    (
        HopAnswer("unreachable", 2, "channel refused: Connection refused"),
        CHAN2,
        (U, 3, "lab", "connect", "connection_refused", 2, False,
         "hop 3 (lab): hop 2 (jump) could not reach it: channel refused: Connection refused"),
    ),
    (
        HopAnswer("prohibited", 1, "channel administratively prohibited: open failed"),
        CHAN2,
        (U, 3, "lab", "connect", "destination_ip_prohibited", 1, True,
         "hop 3 (lab): hop 2 (jump) may not reach it:"
         " channel administratively prohibited: open failed (denied)"),
    ),
    (
        HopAnswer("unreachable", 2, "channel refused: Connection refused"),
        CHAN_DEST,
        (U, 2, "jump", "destination", "destination_unavailable", 2, False,
         "hop 2 (jump): could not reach example.com:443: channel refused: Connection refused"),
    ),
    (
        HopAnswer("prohibited", 1, "channel administratively prohibited: open failed"),
        CHAN_DEST,
        (U, 2, "jump", "destination", "destination_ip_prohibited", 1, False,
         "hop 2 (jump): could not reach example.com:443:"
         " channel administratively prohibited: open failed"),
    ),
    (
        HopAnswer("failed", 4, "channel refused: resource shortage"),
        CHAN2,
        (U, 2, "jump", "handshake", "proxy_internal_response", 4, False,
         "hop 2 (jump): channel refused: resource shortage"),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("cause", "where", "expected"), ROWS)
def test_blame(cause: Cause, where: Where, expected: tuple[object, ...]) -> None:
    error = blame(cause, where)
    assert error is not None
    got = (
        type(error),
        *(getattr(error, a, None) for a in ("index", "hop", "phase", "proxy_status", "status")),
        getattr(error, "denied", None),
        str(error),
    )
    assert got == expected


# Causes that are no hop's failure: the step lets the original go on.
NOT_A_HOP = [
    (HopTimeout(1, "corp", "connect", "not reached in 2s"), HOP1),  # already translated
    (HopUnreachable(2, "bastion", "tls", "TLS failed"), TLS2),
    (Refused("a screen refused 10.0.0.1"), DIRECT),
    (asyncio.CancelledError(), ASK1),
    (anyio.EndOfStream(), HOP1),  # TCP connect raises OSErrors only
    (ValueError("a bug"), ASK2),
    (KeyError("a bug"), TLS2),
]


@pytest.mark.parametrize(("cause", "where"), NOT_A_HOP)
def test_not_a_hops_failure(cause: BaseException, where: Where) -> None:
    assert blame(cause, where) is None


@pytest.mark.parametrize(
    ("cause", "lost"),
    [
        (HopClosed("closed before answering"), True),
        (anyio.EndOfStream(), True),
        (anyio.BrokenResourceError(), True),
        (_errno(errno.ECONNRESET), True),
        (HopProtocolError("garbage"), False),  # it did answer, wrongly
        (HopAnswer("unreachable", 502, "answered 502"), False),
        (HopTimeout(1, "corp", "handshake", "no answer in 10s"), False),  # a limit fired
    ],
)
def test_a_kept_connection_lost_before_the_answer(cause: BaseException, lost: bool) -> None:
    assert lost_kept_connection(cause) is lost


@pytest.mark.parametrize(
    ("answer", "generic"),
    [
        (HopAnswer("failed", 1, "answered 0x01 (general failure)"), True),
        (HopAnswer("failed", 500, "answered 500 Unable to connect"), True),
        (HopAnswer("failed", 0, "socks4 cannot send the name x.example"), False),
        (HopAnswer("unreachable", 4, "answered 0x04 (host unreachable)"), False),
        (HopAnswer("unreachable", 503, "answered 503", dns=True), False),
    ],
)
def test_only_a_generic_answer_about_the_destination_is_flagged(
    answer: HopAnswer, generic: bool
) -> None:
    error = blame(answer, ASK2)
    assert isinstance(error, HopError)
    assert error.generic is generic
    inner = blame(answer, ASK1)  # the same answer about a next hop is never "generic"
    assert isinstance(inner, HopError)
    assert inner.generic is False


def test_a_hops_address_is_kept_for_the_log_but_not_shown_to_the_client() -> None:
    error = blame(ConnectionRefusedError(111, "Connection refused"), HOP1)
    assert isinstance(error, HopError)
    assert str(error) == "hop 1 (corp): connection refused"  # what the client is told
    assert error.describe(full=True) == (
        "hop 1 (corp): http://proxy.corp:3128: connection refused"  # what the log says
    )
