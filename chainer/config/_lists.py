"""The `lists:` section: named files of patterns, one a line, that `match: "list:NAME"`
(and `deny:`) stand for.

A list file is not YAML: it is read line by line, which is what keeps a 100,000-line list
cheap (no YAML nodes, no marks). Blank lines are skipped; `#` starts a comment at the
beginning of a line or after whitespace (a `#` inside a pattern, as in a regex, stays).
Each line is parsed as a `match` pattern and remembers its list and line, so a bad line
is reported as `lists/corp.txt:123: lists.corp: ...` and `explain` can say which line
matched. The files obey the rules of routes.yaml itself: regular files only, bounded in
size (one list, and all of them together).

A reload reads every list again, but a list whose text is the same as at the last load
keeps the patterns parsed then: the new table shares them with the running one, so a
reload that changes one list of four builds (and the collector walks, and the swap
frees) a quarter of the objects. Only the lists of the latest load are remembered.
"""

from __future__ import annotations

import os
import re
import threading

from yaml.nodes import Node

from ..errors import ConfigErrors
from ..models import Pattern, PatternList
from ..routing.table import compile_pattern
from ._files import read_text_file
from ._yaml import _is_null, _q, _Reader

MAX_LIST_BYTES = 16 << 20  # one list: about 600,000 patterns
MAX_LISTS_BYTES = 32 << 20  # every list together
MAX_LINE = 1024  # a pattern is a name (253) with a port, a range or a regex
MAX_ERRORS_SHOWN = 20  # per list: a wrong file (a hosts file, a binary) is said once

_COMMENT = re.compile(r"\s#")
_BOM = "\ufeff"

# (file, list name) -> (its text, its patterns), from the latest load that read lists.
_Parsed = dict[tuple[str, str], tuple[str, tuple[Pattern, ...]]]
_parsed_lock = threading.Lock()
_parsed: _Parsed = {}


class _Lists(_Reader):
    lists: dict[str, PatternList]
    broken_lists: set[str]  # defined, but with errors: a reference to one adds no error

    def read_lists(self, node: Node | None) -> None:
        """The `lists:` section (None when the file has none: nothing to remember)."""
        entries = {} if node is None or _is_null(node) else self.mapping(node, "lists") or {}
        total = 0
        with _parsed_lock:
            before = dict(_parsed)
        parsed: _Parsed = {}
        for name, (key_node, value_node) in entries.items():
            path = f"lists.{name}"
            self.broken_lists.add(name)  # until it is read whole
            ok = self.name_ok(name, key_node, path, "list")
            written = self.text(value_node, path)
            if written is None or not ok:
                continue
            full = os.path.abspath(os.path.join(self.base_dir, os.path.expanduser(written)))
            try:
                text = read_text_file(full, MAX_LIST_BYTES)
            except ConfigErrors as exc:
                reason = exc.errors[0].message
                self.error(value_node, path, f"{reason} ({_q(written)}, looked for {full})")
                continue
            total += len(text) if text.isascii() else len(text.encode("utf-8"))
            if total > MAX_LISTS_BYTES:
                limit = MAX_LISTS_BYTES >> 20
                self.error(value_node, path, f"the lists together are larger than {limit} MiB")
                continue
            shown = self.shown_path(written, full)
            known = before.get((full, name))
            if known is not None and known[0] == text:
                patterns: tuple[Pattern, ...] | None = known[1]
            else:
                patterns = self.list_patterns(text, name, shown)
            if patterns is not None:
                self.lists[name] = PatternList(name, shown, patterns)
                self.broken_lists.discard(name)
                parsed[(full, name)] = (text, patterns)
        with _parsed_lock:
            _parsed.clear()
            _parsed.update(parsed)

    def list_patterns(self, text: str, name: str, shown: str) -> tuple[Pattern, ...] | None:
        """Every pattern of a list file, or None (with its errors recorded)."""
        path = f"lists.{name}"
        out: list[Pattern] = []
        bad = 0
        for number, raw in enumerate(text.removeprefix(_BOM).split("\n"), 1):
            line = raw.strip()
            if not line or line[0] == "#":
                continue
            if "#" in line:
                comment = _COMMENT.search(line)
                if comment is not None:
                    line = line[: comment.start()].rstrip()
            problem = None
            if len(line) > MAX_LINE:
                problem = f"a line longer than {MAX_LINE} characters"
            elif line.startswith("list:"):
                problem = "a list cannot name another list"
            else:
                try:
                    out.append(compile_pattern(line, list_name=name, line=number))
                except ValueError as e:
                    problem = str(e)
            if problem is not None:
                bad += 1
                if bad <= MAX_ERRORS_SHOWN:
                    self.add(number, 0, path, problem, file=shown)
        if bad > MAX_ERRORS_SHOWN:
            self.add(0, 0, path, f"{bad - MAX_ERRORS_SHOWN} more bad lines", file=shown)
        return None if bad else tuple(out)

    def shown_path(self, written: str, full: str) -> str:
        """A list's file as messages show it: beside routes.yaml as that file was named
        (`-c conf/routes.yaml` -> `conf/lists/corp.txt`), or in full."""
        written = os.path.expanduser(written)
        here = os.path.dirname(self.file)
        if os.path.isabs(written) or os.path.abspath(here or ".") != self.base_dir:
            return full
        return os.path.normpath(os.path.join(here, written))
