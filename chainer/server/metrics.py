"""Prometheus metrics, all named `chainer_*`, in a registry of the server's own.

The server and dialer report events here; breaker states are read from Health when
Prometheus scrapes, so nothing is kept twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import HopError
from ..outbound.health import Health

_STATE_VALUE = {"closed": 0, "half_open": 1, "open": 2}
_SETUP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _BreakerCollector(Collector):
    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "chainer_breaker_state",
            "Circuit breaker per edge: 0 closed, 1 half-open, 2 open",
            labels=["from", "hop"],
        )
        for edge in self._health().edges():
            family.add_metric([edge.via or "-", edge.proxy], _STATE_VALUE[edge.state])
        yield family


class _Exposed(Collector):
    """The registry as /metrics shows it: without the `_created` series, which only say
    when each counter was first touched and double what a scrape carries."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():
            metric.samples = [s for s in metric.samples if not s.name.endswith("_created")]
            yield metric


def exposition(registry: CollectorRegistry) -> bytes:
    """The text /metrics answers with."""
    view = CollectorRegistry(auto_describe=False)
    view.register(_Exposed(registry))
    return generate_latest(view)


class Metrics:
    def __init__(self, health: Callable[[], Health]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.connections = Counter(
            "chainer_connections",
            "Finished client connections by route and outcome",
            ["route", "outcome"],
            registry=r,
        )
        self.active = Gauge("chainer_active_tunnels", "Tunnels open now", registry=r)
        self.setup = Histogram(
            "chainer_hop_setup_seconds",
            "Time to reach each hop of a chain",
            ["hop"],
            buckets=_SETUP_BUCKETS,
            registry=r,
        )
        self.failures = Counter(
            "chainer_hop_failures",
            "Failures charged to a hop, by phase and RFC 9209 error type",
            ["hop", "phase", "reason"],
            registry=r,
        )
        self.bytes = Counter(
            "chainer_bytes", "Bytes relayed, by direction", ["direction"], registry=r
        )
        self.reloads = Counter(
            "chainer_reloads", "Route table reloads, by result", ["result"], registry=r
        )
        self.dns_queries = Counter(
            "chainer_dns_queries",
            "DNS questions by what they were answered (server/dnsanswers.py)",
            ["answer"],
            registry=r,
        )
        r.register(_BreakerCollector(health))
        # labels() costs a lookup and a lock per call; the hot ones are kept at hand
        self._connection_children: dict[tuple[str, str], Counter] = {}
        self._setup_children: dict[str, Histogram] = {}
        self._up = self.bytes.labels("up")
        self._down = self.bytes.labels("down")

    def hop_setup(self, hop: str, seconds: float) -> None:
        child = self._setup_children.get(hop)
        if child is None:
            child = self._setup_children[hop] = self.setup.labels(hop)
        child.observe(seconds)

    def hop_failure(self, error: HopError) -> None:
        self.failures.labels(error.hop, error.phase, error.proxy_status).inc()

    def connection_done(self, route: str, outcome: str, up: int, down: int) -> None:
        key = (route, outcome)
        child = self._connection_children.get(key)
        if child is None:
            child = self._connection_children[key] = self.connections.labels(route, outcome)
        child.inc()
        if up:
            self._up.inc(up)
        if down:
            self._down.inc(down)

    def dns_answered(self, kind: str) -> None:
        self.dns_queries.labels(kind).inc()

    def fake_ip_entries(self, count: Callable[[], int]) -> None:
        """A gauge of the names holding a fake address now (read when scraped)."""
        gauge = Gauge(
            "chainer_dns_fake_ip_entries",
            "Names that hold a fake address",
            registry=self.registry,
        )
        gauge.set_function(lambda: float(count()))

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("ok" if ok else "error").inc()
