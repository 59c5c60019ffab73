"""One DNS question answered: read (proto/dnswire.py), decided by the route table
(routing/dnsanswer.py), then answered from the fake-IP table, by an upstream resolver,
or through a chain — every answer counted by kind in /metrics.

Kinds (the `answer` label of chainer_dns_queries_total): `fake_ip`, `upstream`,
`chain_resolve`, `ptr` (a fake address looked up backwards), `nodata` (another type for
a chained name: NOERROR, no records), `blocked` (NXDOMAIN or REFUSED for a name the table
refuses, or that is no name), `notimp` (another opcode or class), `formerr`, `servfail`
(no resolver answered, the chain failed, every fake address is held), `dropped` (not
answered at all: unreadable, a response, a client not in `dns.allow`, too many at once).

A forwarded question goes out under a fresh random ID, the client's own is put back on
the answer, and only an answer to the question asked is passed on (dnsclient.py).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
from collections.abc import Callable, Sequence

import anyio

from ..errors import ChainerError, ChainFailed
from ..models import Address, ChainResolve, Dns
from ..outbound.dnsclient import ask_stream, ask_tcp, ask_udp, system_resolvers
from ..proto import dnswire
from ..proto.dnswire import Query
from ..router import Router
from ..routing.dnsanswer import DnsPolicy, dns_name
from ..routing.fakeip import FakeIps
from ..text import printable
from .metrics import Metrics

__all__ = ["DnsAnswers"]

log = logging.getLogger("chainer.dns")

_EXCHANGE_ERRORS = (
    OSError,
    TimeoutError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


class DnsAnswers:
    """Answers for one DNS server: the route table now (a reload swaps it), the fake-IP
    table (which outlives reloads), the metrics."""

    def __init__(
        self,
        router: Callable[[], Router],
        fakes: FakeIps | None,
        metrics: Metrics,
        started: Dns,
        own: Sequence[tuple[str, int]] = (),
    ) -> None:
        self._router = router
        self.fakes = fakes
        self.metrics = metrics
        self.started = started  # dns: as served (a reload that drops it keeps answering)
        self.own = own  # this server's bound addresses: never its own upstream
        self._for: Router | None = None
        self._policy: DnsPolicy | None = None
        self._servers: tuple[Address, ...] = ()

    def options(self) -> Dns:
        return self._router().config.dns or self.started

    def policy(self) -> tuple[DnsPolicy, tuple[Address, ...]]:
        """The decisions and the upstream resolvers of the table now, built once per table."""
        router = self._router()
        if router is not self._for or self._policy is None:
            config = router.config
            if config.dns is None:  # dropped by a reload: answered as started
                config = dataclasses.replace(config, dns=self.started)
            assert config.dns is not None
            self._policy = DnsPolicy(config, router.table)
            self._servers = self._resolvers(config.dns)
            self._for = router
        return self._policy, self._servers

    def _resolvers(self, dns: Dns) -> tuple[Address, ...]:
        if dns.upstream:
            return dns.upstream
        found = system_resolvers()
        kept = tuple(a for a in found if not self._is_own(a))
        for address in found:
            if address not in kept:
                log.warning("not using %s from /etc/resolv.conf: it is this DNS server", address)
        if not kept:
            log.warning(
                "no upstream resolver (none in /etc/resolv.conf but this server): direct "
                "names get SERVFAIL; set dns.upstream"
            )
        return kept

    def _is_own(self, address: Address) -> bool:
        for host, port in self.own:
            if port != address.port:
                continue
            if host == address.host:
                return True
            if host in ("0.0.0.0", "::") and _loopback(address.host):
                return True
        return False

    def count(self, kind: str) -> None:
        self.metrics.dns_answered(kind)

    async def answer(self, data: bytes, client: str, *, tcp: bool) -> bytes | None:
        """The reply to send back, or None to send nothing."""
        parsed = dnswire.read_query(data)
        if not isinstance(parsed, Query):
            kind = "formerr" if parsed.reply is not None else "dropped"
            log.debug("dns client=%s %s: %s", client, kind, parsed.reason)
            self.count(kind)
            return parsed.reply
        kind, reply, why = await self._answer(parsed, tcp)
        self.count(kind)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "dns client=%s name=%s type=%s answer=%s (%s)",
                client,
                printable(parsed.name[:255]),
                dnswire.type_name(parsed.qtype),
                kind,
                printable(why),
            )
        return reply if tcp else dnswire.udp_fit(parsed, reply)

    async def _answer(self, query: Query, tcp: bool) -> tuple[str, bytes, str]:
        if not query.served:
            return "notimp", dnswire.rcode(query, "NOTIMP"), "not a standard query of class IN"
        dns = self.options()
        if query.qtype == dnswire.PTR and self.fakes is not None:
            address = dnswire.reverse_address(query.name)
            if address is not None and self.fakes.covers(address):
                return self._pointer(query, address)
        name = dns_name(query.name)
        if name is None:
            why = "not a name a client could connect to"
            return "blocked", dnswire.rcode(query, dns.reject_rcode), why
        policy, upstream = self.policy()
        decision = policy.decide(name)
        if decision.kind == "refuse":
            return "blocked", dnswire.rcode(query, dns.reject_rcode), decision.why
        if decision.kind == "fake":
            return self._fake(query, name, decision.why)
        if decision.kind == "chain_resolve":
            assert decision.resolve is not None
            return await self._through_chain(query, decision.resolve, dns, decision.why)
        return await self._upstream(query, upstream, dns, tcp, decision.why)

    def _pointer(self, query: Query, address: str) -> tuple[str, bytes, str]:
        assert self.fakes is not None
        name = self.fakes.name_of(address)
        if name is None:
            return "ptr", dnswire.rcode(query, "NXDOMAIN"), f"{address}: lent to no name now"
        ttl = self.fakes.options.ttl
        return "ptr", dnswire.pointer(query, name, ttl), f"{address} stands for {name}"

    def _fake(self, query: Query, name: str, why: str) -> tuple[str, bytes, str]:
        if query.qtype not in (dnswire.A, dnswire.AAAA):
            # No records chainer could give. Not NOTIMP or SERVFAIL: stub resolvers take
            # those to the next nameserver, which would hear the name.
            return "nodata", dnswire.rcode(query, "NOERROR"), f"{why}; only A and AAAA"
        assert self.fakes is not None
        pair = self.fakes.addresses(name)
        if pair is None:
            log.warning("every fake address is held by a live tunnel: %s gets SERVFAIL", name)
            return "servfail", dnswire.rcode(query, "SERVFAIL"), "no fake address free"
        address = pair[0] if query.qtype == dnswire.A else pair[1]
        ips = [address] if address is not None else []
        return "fake_ip", dnswire.addresses(query, ips, self.fakes.options.ttl), f"{why}: {ips}"

    async def _upstream(
        self, query: Query, servers: tuple[Address, ...], dns: Dns, tcp: bool, why: str
    ) -> tuple[str, bytes, str]:
        mine = query.message.id
        sent = dnswire.with_id(query.message.to_wire(), secrets.randbelow(1 << 16))
        mark = self._router().config.mark
        failures: list[str] = []
        # The whole answer within dns.timeout: each resolver gets its share of it.
        each = dns.timeout / max(1, len(servers))
        for server in servers:
            try:
                with anyio.fail_after(each):
                    if tcp:
                        reply = await ask_tcp(server, sent, mark)
                    else:
                        reply = await ask_udp(server, sent)
            except TimeoutError:
                failures.append(f"{server}: no answer in {each:g}s")
                continue
            except _EXCHANGE_ERRORS as exc:
                failures.append(f"{server}: {_reason(exc)}")
                continue
            return "upstream", dnswire.with_id(reply, mine), f"{why}; {server} answered"
        failed = "; ".join(failures) or "no upstream resolver"
        log.info("dns: no answer for %s: %s", printable(query.name[:255]), failed)
        return "servfail", dnswire.rcode(query, "SERVFAIL"), f"{why}; {failed}"

    async def _through_chain(
        self, query: Query, entry: ChainResolve, dns: Dns, why: str
    ) -> tuple[str, bytes, str]:
        mine = query.message.id
        sent = dnswire.with_id(query.message.to_wire(), secrets.randbelow(1 << 16))
        router = self._router()
        label = f"dns.chain_resolve[{entry.index}]"
        problem = "no answer in time"
        with anyio.move_on_after(dns.timeout):
            try:
                dialed = await router.dialer.dial(label, (entry.via,), entry.server)
                for attempt in dialed.attempts:
                    self.metrics.hop_failure(attempt)
                async with dialed.stream:
                    reply = await ask_stream(dialed.stream, sent)
            except ChainFailed as exc:
                for attempt in exc.attempts:
                    self.metrics.hop_failure(attempt)
                problem = str(exc)
            except (ChainerError, *_EXCHANGE_ERRORS) as exc:
                problem = _reason(exc)
            else:
                return "chain_resolve", dnswire.with_id(reply, mine), why
        log.info("dns: %s could not resolve %s: %s", label, printable(query.name[:255]), problem)
        return "servfail", dnswire.rcode(query, "SERVFAIL"), f"{why}; {problem}"


def _reason(exc: BaseException) -> str:
    return printable(str(exc)) or type(exc).__name__


def _loopback(host: str) -> bool:
    return host.startswith("127.") or host == "::1"
