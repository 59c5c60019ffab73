"""SOCKS constants shared by the client and server codecs (RFC 1928, RFC 1929, SOCKS4/4a)."""

from __future__ import annotations

from typing import Final

SOCKS5: Final = 0x05
SOCKS4: Final = 0x04

# RFC 1928 methods
METHOD_NO_AUTH: Final = 0x00
METHOD_USERPASS: Final = 0x02
METHOD_NONE_ACCEPTABLE: Final = 0xFF

# RFC 1929 sub-negotiation
USERPASS_VERSION: Final = 0x01
USERPASS_OK: Final = 0x00
USERPASS_FAILED: Final = 0x01

# commands
CMD_CONNECT: Final = 0x01
CMD_BIND: Final = 0x02
CMD_UDP_ASSOCIATE: Final = 0x03

# address types
ATYP_IPV4: Final = 0x01
ATYP_DOMAIN: Final = 0x03
ATYP_IPV6: Final = 0x04

# SOCKS5 replies
REP_SUCCEEDED: Final = 0x00
REP_GENERAL_FAILURE: Final = 0x01
REP_NOT_ALLOWED: Final = 0x02
REP_NETWORK_UNREACHABLE: Final = 0x03
REP_HOST_UNREACHABLE: Final = 0x04
REP_CONNECTION_REFUSED: Final = 0x05
REP_TTL_EXPIRED: Final = 0x06
REP_COMMAND_NOT_SUPPORTED: Final = 0x07
REP_ADDRESS_TYPE_NOT_SUPPORTED: Final = 0x08

REP_TEXT: Final[dict[int, str]] = {
    REP_SUCCEEDED: "succeeded",
    REP_GENERAL_FAILURE: "general SOCKS server failure",
    REP_NOT_ALLOWED: "connection not allowed by ruleset",
    REP_NETWORK_UNREACHABLE: "network unreachable",
    REP_HOST_UNREACHABLE: "host unreachable",
    REP_CONNECTION_REFUSED: "connection refused",
    REP_TTL_EXPIRED: "TTL expired",
    REP_COMMAND_NOT_SUPPORTED: "command not supported",
    REP_ADDRESS_TYPE_NOT_SUPPORTED: "address type not supported",
}

# SOCKS4 replies (the reply's VN byte is 0)
SOCKS4_GRANTED: Final = 90
SOCKS4_REJECTED: Final = 91
SOCKS4_NO_IDENTD: Final = 92
SOCKS4_IDENTD_MISMATCH: Final = 93

SOCKS4_TEXT: Final[dict[int, str]] = {
    SOCKS4_GRANTED: "request granted",
    SOCKS4_REJECTED: "request rejected or failed",
    SOCKS4_NO_IDENTD: "rejected: cannot reach the client's identd",
    SOCKS4_IDENTD_MISMATCH: "rejected: identd user-id mismatch",
}
