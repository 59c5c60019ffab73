"""The server side of a client's request: which protocol (sniff), what it asks for (http,
socks; where a captured connection was going, transparent), and what it is told when the
request cannot be served (answers)."""

from .answers import Failure, error_response, failure_for
from .base import ClientError, ClientGone, Inbound, Request, check_basic, send_quietly
from .http import HttpInbound
from .sniff import first_byte_kind, open_inbound
from .transparent import TransparentInbound

__all__ = [
    "ClientError",
    "ClientGone",
    "Failure",
    "HttpInbound",
    "Inbound",
    "Request",
    "TransparentInbound",
    "check_basic",
    "error_response",
    "failure_for",
    "first_byte_kind",
    "open_inbound",
    "send_quietly",
]
