"""Strict checks on a client's request head, before h11 parses it (sans-I/O).

h11 is lenient where a proxy must not be: a proxy that reads a request differently from
the server behind it is how requests get smuggled. So the raw head is refused (RFC 9112)
when it has bare LF line ends, obsolete line folding, whitespace before a colon, two Host
fields, both Content-Length and Transfer-Encoding, a Content-Length that is not one
number, too many fields, or a request-target too long.
"""

from __future__ import annotations

import re

MAX_TARGET = 8192
_DIGITS = re.compile(rb"[0-9]{1,18}")


def find_head_end(buffer: bytes) -> int:
    """The index just past the blank line ending the head; -1 if not there yet.
    A head ended by bare LFs is found too (and then refused by check_request_head)."""
    ends = [i + len(mark) for mark in (b"\r\n\r\n", b"\n\n") if (i := buffer.find(mark)) >= 0]
    # The earlier one: a head ended by bare LFs must be found (and refused) even when a
    # CRLF blank line follows in the body, or the verdict would depend on how the bytes
    # were cut into packets.
    return min(ends) if ends else -1


def check_request_head(head: bytes, max_fields: int) -> tuple[int, str] | None:
    """(status, reason) when the head must be refused, else None."""
    if b"\n" in head.replace(b"\r\n", b""):
        return 400, "bare LF in the request head"
    lines = head[:-4].split(b"\r\n") if head.endswith(b"\r\n\r\n") else head.split(b"\r\n")
    request_line, fields = lines[0], lines[1:]
    parts = request_line.split(b" ")
    if len(parts) == 3 and len(parts[1]) > MAX_TARGET:
        return 414, f"request target over {MAX_TARGET} bytes"
    if len(fields) > max_fields:
        return 431, f"more than {max_fields} header fields"
    hosts = 0
    lengths: list[bytes] = []
    chunked = False
    for line in fields:
        if line[:1] in (b" ", b"\t"):
            return 400, "obsolete line folding"
        name, colon, value = line.partition(b":")
        if not colon:
            return 400, "a header line without a colon"
        if name != name.rstrip(b" \t"):
            return 400, "whitespace before a colon"
        lowered = name.lower()
        if lowered == b"host":
            hosts += 1
        elif lowered == b"content-length":
            lengths.extend(v.strip() for v in value.split(b","))
        elif lowered == b"transfer-encoding":
            chunked = True
    if hosts > 1:
        return 400, "more than one Host"
    if lengths and chunked:
        return 400, "both Content-Length and Transfer-Encoding"
    if lengths and (len(set(lengths)) != 1 or not _DIGITS.fullmatch(lengths[0])):
        return 400, "malformed Content-Length"
    return None


# ---------------------------------------------------------------- the CONNECT fast path

_CONNECT_LINE = re.compile(rb"CONNECT ([\x21-\x7e]+) HTTP/1\.([01])\r\n")
_FIELD = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*"
    rb"((?:[\x21-\x7e\x80-\xff](?:[\x20-\x7e\x80-\xff\t]*[\x21-\x7e\x80-\xff])?)?)[ \t]*\r\n"
)


def parse_connect_head(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]] | None:
    """A CONNECT head already passed by check_request_head, parsed without h11: (target,
    [(lower-case name, value)]). None for anything not plainly well-formed, which then
    goes through h11 for the verdict and its words. h11 costs more than the rest of a
    tunnel's set-up in Python; a CONNECT carries nothing but a target and a few fields."""
    line = _CONNECT_LINE.match(head)
    if line is None:
        return None
    fields: list[tuple[bytes, bytes]] = []
    pos = line.end()
    end = len(head) - 2  # the blank line
    while pos < end:
        field = _FIELD.match(head, pos)
        if field is None:
            return None
        fields.append((field.group(1).lower(), field.group(2)))
        pos = field.end()
    if pos != end or head[end:] != b"\r\n":
        return None
    if sum(name == b"content-length" for name, _ in fields) > 1:
        return None  # h11 folds repeated lengths into one: let it
    return line.group(1), fields
