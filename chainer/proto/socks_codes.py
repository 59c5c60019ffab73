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

# Reply codes are declared with their text, which fills the tables below.
REP_TEXT: Final[dict[int, str]] = {}
SOCKS4_TEXT: Final[dict[int, str]] = {}


def _reply(table: dict[int, str], code: int, text: str) -> int:
    table[code] = text
    return code


# SOCKS5 replies
REP_SUCCEEDED: Final = _reply(REP_TEXT, 0x00, "succeeded")
REP_GENERAL_FAILURE: Final = _reply(REP_TEXT, 0x01, "general SOCKS server failure")
REP_NOT_ALLOWED: Final = _reply(REP_TEXT, 0x02, "connection not allowed by ruleset")
REP_NETWORK_UNREACHABLE: Final = _reply(REP_TEXT, 0x03, "network unreachable")
REP_HOST_UNREACHABLE: Final = _reply(REP_TEXT, 0x04, "host unreachable")
REP_CONNECTION_REFUSED: Final = _reply(REP_TEXT, 0x05, "connection refused")
REP_TTL_EXPIRED: Final = _reply(REP_TEXT, 0x06, "TTL expired")
REP_COMMAND_NOT_SUPPORTED: Final = _reply(REP_TEXT, 0x07, "command not supported")
REP_ADDRESS_TYPE_NOT_SUPPORTED: Final = _reply(REP_TEXT, 0x08, "address type not supported")

# SOCKS4 replies (the reply's VN byte is 0)
SOCKS4_GRANTED: Final = _reply(SOCKS4_TEXT, 90, "request granted")
SOCKS4_REJECTED: Final = _reply(SOCKS4_TEXT, 91, "request rejected or failed")
SOCKS4_NO_IDENTD: Final = _reply(SOCKS4_TEXT, 92, "rejected: cannot reach the client's identd")
SOCKS4_IDENTD_MISMATCH: Final = _reply(SOCKS4_TEXT, 93, "rejected: identd user-id mismatch")
