"""The process-wide settings: `limits:` (connections, client timeout, header sizes),
`allow_ports:` (the destination ports that may be reached) and `http:` (the Via pseudonym
and X-Forwarded-For). `deny:` patterns are read by the routes reader.
"""

from __future__ import annotations

from yaml.nodes import Node, ScalarNode, SequenceNode

from ..models import HttpOptions, Limits
from ._yaml import _BOOL, _NAME, _Reader, _what


class _Policy(_Reader):
    def read_limits(self, node: Node) -> Limits:
        entries = self.mapping(node, "limits") or {}
        self.known(
            entries,
            (
                "max_connections",
                "client_timeout",
                "header_bytes",
                "header_fields",
                "max_attempts",
                "per_client",
                "client_fin",
            ),
            "limits",
        )
        values: dict[str, float] = {}
        for key, maximum in (
            ("max_connections", 1_000_000),
            ("header_fields", 1_000_000),
            ("per_client", 1_000_000),
            ("max_attempts", 100),
        ):
            if key in entries:
                number = self.count(entries[key][1], f"limits.{key}", maximum=maximum)
                if number is not None:
                    values[key] = number
        if "header_bytes" in entries:
            number = self.count(entries["header_bytes"][1], "limits.header_bytes", maximum=1 << 20)
            if number is not None:
                values["header_bytes"] = max(number, 1024)
        for key in ("client_timeout", "client_fin"):
            if key in entries:
                seconds = self.duration(entries[key][1], f"limits.{key}")
                if seconds is not None:
                    values[key] = seconds
        return Limits(**values)  # type: ignore[arg-type]

    def read_ports(self, node: Node, path: str) -> tuple[tuple[int, int], ...]:
        ranges: list[tuple[int, int]] = []
        for i, item in enumerate(self.items(node)):
            where = f"{path}[{i}]" if isinstance(node, SequenceNode) else path
            text = item.value if isinstance(item, ScalarNode) else ""
            low, _, high = str(text).partition("-")
            try:
                lo, hi = int(low), int(high or low)
            except ValueError:
                lo = hi = 0
            if not (1 <= lo <= hi <= 65535):
                self.error(
                    item, where, f"expected a port or a range like 8000-8999, got {_what(item)}"
                )
                continue
            ranges.append((lo, hi))
        return tuple(ranges)

    def read_http(self, node: Node) -> HttpOptions:
        entries = self.mapping(node, "http") or {}
        self.known(entries, ("via", "x_forwarded_for"), "http")
        via: str | None = "chainer"
        if "via" in entries:
            value = entries["via"][1]
            if isinstance(value, ScalarNode) and value.tag == _BOOL:
                via = "chainer" if self.flag(value, "http.via") else None
            else:
                via = self.text(value, "http.via")
                if via is not None and not _NAME.match(via):
                    self.error(value, "http.via", "a pseudonym is a token like chainer or gw-1")
                    via = None
        xff = False
        if "x_forwarded_for" in entries:
            xff = bool(self.flag(entries["x_forwarded_for"][1], "http.x_forwarded_for"))
        return HttpOptions(via, xff)
