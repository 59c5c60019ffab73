"""Logging: one access line per connection, a connection id on every line, text or JSON.

The connection id lives in a context variable set when a connection's task starts, so
every line logged while serving it — circuit breakers opening, internal errors — carries
`conn=N` without being passed around. Nothing here ever formats a credential: the
access line is built from addresses, names and error texts that are credential-free.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from ..models import Address
from ..outbound.dialer import HopTrace
from ..text import printable

conn_id: contextvars.ContextVar[int | None] = contextvars.ContextVar("conn_id", default=None)
access_log = logging.getLogger("chainer.access")

# Every `outcome=` an access line can carry, and what it means: the one list, shown as
# is in README.md and examples/RUNNING.md (tests/test_outcomes.py holds them together).
OUTCOMES: dict[str, str] = {
    "ok": "the tunnel or the forwarded exchange ran and ended normally",
    "refused": "policy or a `reject` route said no (HTTP 403, SOCKS5 0x02)",
    "failed": "a hop failed (HTTP 502); `error=` names it",
    "timeout": "a hop or the whole set-up ran out of time (HTTP 504, SOCKS5 0x06)",
    "unreachable": "the last hop could not reach the destination (HTTP 502, SOCKS5 0x04)",
    "bad_request": "the client's request was malformed (HTTP 400 or the SOCKS equivalent)",
    "auth_required": "no credentials where the listener needs them (HTTP 407, then retried)",
    "auth_failed": "wrong credentials (HTTP 407, SOCKS5 auth failure); repeated ones are slowed",
    "client_timeout": "no complete request within `limits.client_timeout` (HTTP 408)",
    "client_gone": "closed before sending a request, such as a port probe (debug level)",
    "client_error": "the client's connection failed while its request was being read",
    "client_closed": "the client went away before the answer it asked for reached it",
    "idle_timeout": "no bytes either way for `idle_timeout`",
    "closed_on_error": "a read or write failed on an open tunnel; `error=` says which side",
    "denied": "the client's address is not in the listener's `allow:`",
    "shutdown": "still open at the end of `--grace` (or when stopped at once)",
    "internal_error": "a bug in chainer: the traceback is in the log",
}


@dataclass(slots=True)
class ConnRecord:
    """What one connection's access line says."""

    id: int
    client: str
    started: float = field(default_factory=time.monotonic)
    target: Address | None = None
    route: str = "-"
    via: str = "-"
    trace: tuple[HopTrace, ...] = ()
    up: int = 0
    down: int = 0
    outcome: str = "ok"
    error: str | None = None
    failovers: str | None = None  # what failed on the way to a connection that worked
    handed_off: bool = False  # a spliced tunnel outlives its task; it logs when it ends
    # A transparent listener's connection: how it was captured, the address it was going
    # to, and where the name in `target` came from (sni, host, none).
    inbound: str | None = None
    original: Address | None = None
    sniffed: str | None = None
    fake_ip: Address | None = None  # the fake address (of chainer's DNS) the client asked for

    def fields(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "dest": str(self.target) if self.target else None,
            **({"fake_ip": self.fake_ip.host} if self.fake_ip else {}),
            **self._captured(),
            "route": self.route,
            "via": self.via,
            "hops": [{"hop": h.name, "ms": round(h.seconds * 1000, 2)} for h in self.trace],
            "up": self.up,
            "down": self.down,
            "duration": round(time.monotonic() - self.started, 3),
            "outcome": self.outcome,
            "error": self.error,
            "failovers": self.failovers,
        }

    def line(self) -> str:
        hops = ",".join(f"{h.name}:{h.seconds * 1000:.1f}ms" for h in self.trace) or "-"
        parts = [
            f"client={self.client}",
            f"dest={self.target or '-'}",
            *([f"fake_ip={self.fake_ip.host}"] if self.fake_ip else []),
            *(f"{key}={value or '-'}" for key, value in self._captured().items()),
            f"route={self.route}",
            f"via={self.via}",
            f"hops={hops}",
            f"up={self.up}",
            f"down={self.down}",
            f"duration={time.monotonic() - self.started:.3f}s",
            f"outcome={self.outcome}",
        ]
        # Error texts may quote what a client or an upstream sent: never a raw control
        # character (a newline would forge a log line), never an unescaped quote.
        if self.error:
            parts.append(f'error="{_quoted(self.error)}"')
        if self.failovers:
            parts.append(f'failovers="{_quoted(self.failovers)}"')
        return " ".join(parts)

    def _captured(self) -> dict[str, str | None]:
        """What the access line adds for a transparent listener's connection."""
        if self.inbound is None:
            return {}
        original = str(self.original) if self.original else None
        return {"original": original, "inbound": self.inbound, "sniffed": self.sniffed}

    def log(self) -> None:
        # A connection that closed (or was reset) without a request — a port probe, a
        # load balancer's health check — is logged at debug level only.
        quiet = self.outcome in ("client_gone", "client_error") and self.target is None
        level = logging.DEBUG if quiet else logging.INFO
        if access_log.isEnabledFor(level):  # don't build the line for nobody
            access_log.log(level, "%s", self.line(), extra={"fields": self.fields()})


def _quoted(text: str) -> str:
    return printable(text).replace('"', "'")


class _ConnFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.conn = conn_id.get()
        return True


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        conn = getattr(record, "conn", None)
        if conn is None:
            return text
        head, sep, message = text.partition(f" {record.name} ")
        return f"{head}{sep}conn={conn} {message}"


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        conn = getattr(record, "conn", None)
        if conn is not None:
            entry["conn"] = conn
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        else:
            entry["message"] = record.getMessage()
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def setup_logging(level: str = "info", log_file: str | None = None, fmt: str = "text") -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_file) if log_file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(_JsonFormatter() if fmt == "json" else _TextFormatter())
    handler.addFilter(_ConnFilter())
    root = logging.getLogger("chainer")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
