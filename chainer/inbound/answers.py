"""What a client is told when its request cannot be served, in each inbound protocol.

One place maps chainer's errors to an HTTP status with an RFC 9209 `Proxy-Status`, a
SOCKS5 reply code and a SOCKS4 reply, so the three inbound protocols agree.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Failure", "error_response", "failure_for", "proxy_status_value"]

from ..errors import BadTarget, ChainerError, ChainFailed, HopError, Refused
from ..proto import socks_codes as codes

_REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    414: "URI Too Long",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def error_response(
    status: int,
    message: str,
    *,
    proxy_status: str | None = None,
    extra: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """A complete HTTP/1.1 error answer that closes the connection."""
    body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    if proxy_status:
        lines.append(f"Proxy-Status: {proxy_status}")
    lines.extend(f"{k}: {v}" for k, v in extra)
    lines += [
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body


@dataclass(frozen=True, slots=True)
class Failure:
    http_status: int
    socks5_reply: int
    message: str  # what the client is told: hops by name, never their addresses
    proxy_status: str | None = None  # RFC 9209 error type
    received_status: int | None = None
    outcome: str = "failed"
    log_message: str | None = None  # the same with the hops' addresses, for the log

    @property
    def logged(self) -> str:
        return self.log_message or self.message

    @property
    def proxy_status_header(self) -> str | None:
        if self.proxy_status is None:
            return None
        return proxy_status_value(self.proxy_status, self.message, self.received_status)


def proxy_status_value(error: str, details: str, received_status: int | None = None) -> str:
    """An RFC 9209 Proxy-Status member for this proxy."""
    quoted = details.replace("\\", "\\\\").replace('"', '\\"')
    quoted = "".join(c if " " <= c <= "~" else "?" for c in quoted)
    received = f"; received-status={received_status}" if received_status else ""
    return f'chainer; error={error}{received}; details="{quoted}"'


def failure_for(exc: ChainerError) -> Failure:
    if isinstance(exc, Refused):
        return Failure(
            403,
            codes.REP_NOT_ALLOWED,
            str(exc),
            "destination_ip_prohibited",
            outcome="refused",
        )
    if isinstance(exc, BadTarget):
        return Failure(400, codes.REP_GENERAL_FAILURE, str(exc), outcome="bad_request")
    if isinstance(exc, ChainFailed):
        message, full = exc.describe(), exc.describe(full=True)
        last = exc.last
        if exc.reason is not None or last is None:
            error = "connection_timeout" if exc.reason is not None else "proxy_internal_error"
            return Failure(
                504 if exc.reason is not None else 502,
                codes.REP_TTL_EXPIRED if exc.reason is not None else codes.REP_GENERAL_FAILURE,
                message,
                error,
                outcome="timeout" if exc.reason is not None else "failed",
                log_message=full,
            )
        if last.phase == "destination" and not last.timeout:
            # The last hop could not reach the destination: no hop failed.
            outcome = "unreachable"
        else:
            outcome = "timeout" if last.timeout else "failed"
        return Failure(
            504 if last.timeout else 502,
            _socks5_reply(last),
            message,
            last.proxy_status,
            last.status,
            outcome=outcome,
            log_message=full,
        )
    return Failure(502, codes.REP_GENERAL_FAILURE, str(exc), "proxy_internal_error")


def _socks5_reply(error: HopError) -> int:
    if error.timeout:
        return codes.REP_TTL_EXPIRED
    if error.proxy_status == "dns_error":
        return codes.REP_HOST_UNREACHABLE
    if error.proxy_status == "destination_ip_unroutable":
        return codes.REP_NETWORK_UNREACHABLE
    if error.proxy_status == "connection_refused":
        return codes.REP_CONNECTION_REFUSED
    if error.proxy_status == "destination_unavailable":
        if error.status == codes.REP_CONNECTION_REFUSED:
            return codes.REP_CONNECTION_REFUSED
        return codes.REP_HOST_UNREACHABLE
    return codes.REP_GENERAL_FAILURE
