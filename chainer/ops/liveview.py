"""Live hop health for `chainer explain --live`, from either side of the admin endpoint.

A `HealthView` gives an edge's breaker state, moving-average set-up latency and a short
note. `LiveHealthView` reads a `Health` object of a router in this process; `HopsView`
reads the admin endpoint's `/hops` JSON, which `fetch_hops_view` fetches from a running
instance.
"""

from __future__ import annotations

import base64
import json
import math
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from ..errors import ChainerError
from ..models import Address, Admin, Proxy
from ..outbound.health import Health
from ..text import fmt_seconds

__all__ = [
    "EdgeNotes",
    "HealthView",
    "HopsView",
    "LiveHealthView",
    "LiveUnavailable",
    "fetch_hops_view",
]


class HealthView(Protocol):
    """Breaker state ("closed", "open", "half_open") and moving-average set-up latency
    (seconds, None when never measured) of the edge from `via` ("" = this machine)."""

    def state(self, via: str, proxy_name: str) -> str: ...

    def latency(self, via: str, proxy_name: str) -> float | None: ...


@runtime_checkable
class EdgeNotes(Protocol):
    """Optional extra of a HealthView: a short note (when the circuit closes, last failure)."""

    def note(self, via: str, proxy_name: str) -> str: ...


class LiveHealthView:
    """A HealthView over the `Health` object of a router running in this process."""

    def __init__(self, health: Health, proxies: Iterable[Proxy]) -> None:
        self._health = health
        self._proxies = {p.name: p for p in proxies}

    def state(self, via: str, proxy_name: str) -> str:
        proxy = self._proxies.get(proxy_name)
        return "closed" if proxy is None else self._health.state(via, proxy)

    def latency(self, via: str, proxy_name: str) -> float | None:
        proxy = self._proxies.get(proxy_name)
        return None if proxy is None else self._health.latency(proxy, via)

    def note(self, via: str, proxy_name: str) -> str:
        for edge in self._health.edges():
            if (edge.via, edge.proxy) == (via, proxy_name):
                failing = edge.state != "closed" or edge.failures
                return _note(edge.closes_in, edge.last_reason if failing else "", edge.failures)
        return ""


class HopsView:
    """A HealthView over the admin endpoint's `/hops` JSON:
    {"edges": [{"from", "hop", "state", "latency_ms", "closes_in", "failures", "last_reason"}]},
    where "from" is "-" for hop 1 (this machine).
    An edge the endpoint does not list has never been used: closed, not measured."""

    def __init__(self, edges: Mapping[tuple[str, str], Mapping[str, Any]]) -> None:
        self._edges = dict(edges)

    @classmethod
    def from_json(cls, data: object) -> HopsView:
        """Raises ValueError when `data` does not have the /hops shape."""
        if not isinstance(data, Mapping) or not isinstance(data.get("edges"), list):
            raise ValueError('expected {"edges": [...]}')
        edges: dict[tuple[str, str], Mapping[str, Any]] = {}
        for i, edge in enumerate(data["edges"]):
            if not isinstance(edge, Mapping):
                raise ValueError(f"edges[{i}]: expected an object")
            source, hop = edge.get("from"), edge.get("hop")
            if not isinstance(source, str) or not isinstance(hop, str):
                raise ValueError(f'edges[{i}]: "from" and "hop" must be strings')
            edges[("" if source == "-" else source, hop)] = edge  # "-": this machine
        return cls(edges)

    def state(self, via: str, proxy_name: str) -> str:
        edge = self._edges.get((via, proxy_name))
        return str(edge.get("state", "closed")) if edge else "closed"

    def latency(self, via: str, proxy_name: str) -> float | None:
        edge = self._edges.get((via, proxy_name))
        ms = edge.get("latency_ms") if edge else None
        return float(ms) / 1000 if isinstance(ms, int | float) else None

    def note(self, via: str, proxy_name: str) -> str:
        edge = self._edges.get((via, proxy_name))
        if not edge:
            return ""
        closes_in = edge.get("closes_in")
        failures = edge.get("failures")
        failures = failures if isinstance(failures, int) else 0
        reason = edge.get("last_reason") if edge.get("state") != "closed" or failures else ""
        return _note(
            float(closes_in) if isinstance(closes_in, int | float) else None,
            reason if isinstance(reason, str) else "",
            failures,
        )


class LiveUnavailable(ChainerError):
    """The admin endpoint could not be read (not running, no `admin:`, bad answer)."""


def fetch_hops_view(admin: Admin, timeout: float = 3.0) -> HopsView:
    """GET http://ADMIN/hops from a running instance, bypassing any *_PROXY variables
    (they may well point at that very instance), with the admin endpoint's first user's
    credentials when it has users."""
    at = admin.address
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(at.host, at.host)
    url = f"http://{Address(host, at.port)}/hops"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url)
    if admin.users:
        user, password = admin.users[0]
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
    try:
        with opener.open(request, timeout=timeout) as answer:
            data = json.loads(answer.read(4 * 1024 * 1024))
        return HopsView.from_json(data)
    except urllib.error.HTTPError as exc:
        raise LiveUnavailable(f"{url}: HTTP {exc.code}") from None
    except urllib.error.URLError as exc:
        raise LiveUnavailable(f"{url}: {exc.reason}") from None
    except (OSError, ValueError) as exc:  # timeouts, bad JSON, wrong shape
        raise LiveUnavailable(f"{url}: {exc}") from None


def _note(closes_in: float | None, reason: str, failures: int = 0) -> str:
    parts = []
    if failures:
        parts.append(f"{failures} failure{'s' if failures != 1 else ''} since it last worked")
    if closes_in is not None:
        parts.append(
            f"closes in {fmt_seconds(math.ceil(closes_in) if closes_in >= 1 else closes_in)}"
        )
    if reason:
        parts.append(f"last: {reason}")
    return "; ".join(parts)
