"""DNS messages on the wire, through dnspython: a query read (or found unreadable), the
answers chainer's DNS server gives, and RFC 7766's two-byte framing for TCP. Sans-I/O.

Every packet is hostile until parsed: dnspython refuses truncated messages, compression
pointers that loop or point forward, and junk after the last record. A packet that
cannot be read is answered FORMERR when its header can be (a query's ID and opcode), and
dropped otherwise; a packet that is itself a response is dropped, never answered, so
that two servers cannot bounce errors at each other. Parsing is pure, so whatever
dnspython raises while reading one packet means only that the packet is malformed.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.reversename
import dns.rrset

__all__ = [
    "AAAA",
    "PTR",
    "A",
    "Query",
    "Unreadable",
    "addresses",
    "frame",
    "header_id",
    "matches",
    "pointer",
    "rcode",
    "read_query",
    "reverse_address",
    "type_name",
    "udp_fit",
    "with_id",
]

A, AAAA, PTR = int(dns.rdatatype.A), int(dns.rdatatype.AAAA), int(dns.rdatatype.PTR)
UDP_PLAIN = 512  # the most a client without EDNS takes over UDP (RFC 1035)
_QR = int(dns.flags.QR)
_OPCODE = 0x7800  # the opcode bits of the flags


@dataclass(frozen=True, slots=True)
class Query:
    """One readable query: its single question, and the message to answer."""

    message: dns.message.Message
    name: str  # the question's name as text, no final dot (dnspython's escapes kept)
    qtype: int
    served: bool  # a standard query of class IN: anything else is answered NOTIMP

    @property
    def udp_limit(self) -> int:
        """The largest answer this client takes over UDP."""
        return max(UDP_PLAIN, self.message.payload) if self.message.edns >= 0 else UDP_PLAIN


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A packet that is not a query to answer: `reply` (FORMERR) or None (drop it)."""

    reason: str
    reply: bytes | None


def read_query(data: bytes) -> Query | Unreadable:
    if len(data) < 12:
        return Unreadable(f"{len(data)} bytes: shorter than a header", None)
    ident, flags = struct.unpack("!HH", data[:4])
    if flags & _QR:
        return Unreadable("a response, not a query", None)
    try:
        message = dns.message.from_wire(data)
    except Exception as exc:  # the library's edge: any failure to read means malformed
        return Unreadable(f"malformed: {type(exc).__name__}", _formerr(ident, flags))
    if len(message.question) != 1:
        count = len(message.question)
        return Unreadable(f"{count} questions", _formerr(ident, flags, message))
    question = message.question[0]
    served = message.opcode() == dns.opcode.QUERY and question.rdclass == dns.rdataclass.IN
    name = question.name.to_text(omit_final_dot=True)
    return Query(message, name, int(question.rdtype), served)


def _formerr(ident: int, flags: int, message: dns.message.Message | None = None) -> bytes:
    if message is not None:
        reply = dns.message.make_response(message, recursion_available=True)
        reply.question = []
    else:
        reply = dns.message.Message(id=ident)
        reply.flags = _QR | (flags & _OPCODE) | int(dns.flags.RA)
    reply.set_rcode(dns.rcode.FORMERR)
    return reply.to_wire()


def _reply(query: Query) -> dns.message.Message:
    return dns.message.make_response(query.message, recursion_available=True)


def rcode(query: Query, code: str) -> bytes:
    """An answer with no records and the rcode named (NXDOMAIN, REFUSED, NOTIMP,
    SERVFAIL, NOERROR — the last is "no records of that type")."""
    reply = _reply(query)
    reply.set_rcode(dns.rcode.from_text(code))
    return reply.to_wire()


def addresses(query: Query, ips: list[str], ttl: int) -> bytes:
    """The question answered with these addresses (of the question's type)."""
    reply = _reply(query)
    question = query.message.question[0]
    rdtype = dns.rdatatype.A if query.qtype == A else dns.rdatatype.AAAA
    rdatas = [dns.rdata.from_text(dns.rdataclass.IN, rdtype, ip) for ip in ips]
    if rdatas:
        reply.answer.append(dns.rrset.from_rdata_list(question.name, ttl, rdatas))
    return reply.to_wire()


def pointer(query: Query, name: str, ttl: int) -> bytes:
    """A PTR answer naming `name`."""
    reply = _reply(query)
    target = dns.name.from_text(name).to_text()
    rdata = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.PTR, target)
    reply.answer.append(dns.rrset.from_rdata(query.message.question[0].name, ttl, rdata))
    return reply.to_wire()


def reverse_address(name: str) -> str | None:
    """The address an `in-addr.arpa`/`ip6.arpa` name stands for; None for any other."""
    try:
        return dns.reversename.to_address(dns.name.from_text(name))
    except Exception:  # the library's edge: not a (complete) reverse name
        return None


def udp_fit(query: Query, reply: bytes) -> bytes:
    """`reply`, or — when it is too big for this client over UDP — an empty answer with
    TC set, which tells the client to ask again over TCP."""
    if len(reply) <= query.udp_limit:
        return reply
    short = _reply(query)
    short.flags |= dns.flags.TC
    return short.to_wire()


def header_id(data: bytes) -> int:
    return int(struct.unpack("!H", data[:2])[0])


def with_id(data: bytes, ident: int) -> bytes:
    """The same message under another ID (a forwarded query gets a fresh one)."""
    return struct.pack("!H", ident) + data[2:]


def matches(query: bytes, reply: bytes) -> bool:
    """Whether `reply` answers `query`: a readable response with its ID, opcode and
    question (what keeps a forged or stray datagram from being passed on)."""
    try:
        asked = dns.message.from_wire(query)
        answered = dns.message.from_wire(reply)
    except Exception:  # the library's edge: an unreadable reply answers nothing
        return False
    return bool(asked.is_response(answered))


def frame(message: bytes) -> bytes:
    """RFC 7766: over TCP a message is preceded by its length, two bytes."""
    return struct.pack("!H", len(message)) + message


def type_name(qtype: int) -> str:
    return dns.rdatatype.to_text(dns.rdatatype.RdataType.make(qtype))
