"""The YAML layer under every section reader: composing the text (so each node keeps its
line), the error collector that records a ConfigError per problem and sorts them into file
order, and `_Reader`, the base whose node helpers (mapping, known, text, items, duration,
count, flag, file_path, name_ok) check one value each, record what is wrong and carry on.
Also the small message helpers (`_q`, `_what`, `_did_you_mean`) that keep values bounded
and never quote what may be a password.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Iterable

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ..errors import ConfigError
from ..text import parse_duration

_T = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_T + t for t in ("str", "int", "float", "bool", "null"))
_SCALAR_TAGS = frozenset((_STR, _INT, _FLOAT, _BOOL, _T + "timestamp"))
_CONSTRUCTOR = yaml.constructor.SafeConstructor()
# PyYAML's binding to libyaml, where it was built with it (the Debian and PyPI wheels are).
_FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")

_Entries = dict[str, tuple[Node, Node]]


class _Reader:
    """Collects errors and reads single nodes; the section mixins build on it."""

    def __init__(self, file: str, base_dir: str) -> None:
        self.file = file
        self.base_dir = base_dir
        self.errors: list[ConfigError] = []
        self.columns: list[int] = []

    def error(self, node: Node | None, path: str, message: str) -> None:
        mark = node.start_mark if node is not None else None
        self.add(mark.line + 1 if mark else 0, mark.column if mark else 0, path, message)

    def add(
        self,
        line: int,
        column: int,
        path: str,
        message: str,
        *,
        show_column: bool = False,
        file: str | None = None,
    ) -> None:
        """Record an error in this file or, with `file`, in a file it names (a list)."""
        shown = column + 1 if show_column else 0
        self.errors.append(ConfigError(file or self.file, line, path, message, shown))
        self.columns.append(column)

    def sorted_errors(self) -> list[ConfigError]:
        """In file order (sections are read in dependency order, not file order), this
        file's before those of the files it names. Errors with no line (a missing
        section) come last: they are often a consequence of a located one, such as a
        misspelt top-level key."""

        def key(i: int) -> tuple[bool, bool, str, int, int]:
            e = self.errors[i]
            elsewhere = e.file != self.file
            return (e.line == 0, elsewhere, e.file if elsewhere else "", e.line, self.columns[i])

        order = sorted(range(len(self.errors)), key=key)
        return [self.errors[i] for i in order]

    def compose(self, text: str) -> Node | None:
        try:
            # libyaml composes a 3 MiB table in a tenth of the time, marks included.
            root = yaml.compose(text, Loader=_FAST_LOADER)
        except (yaml.YAMLError, RecursionError, UnicodeError):
            # Wrong somewhere: the pure-Python composer words the problem as it always
            # has (and takes the rare text that libyaml refuses and it does not).
            root = self._compose_slowly(text)
        else:
            if root is None:
                self.error(None, "", "empty config")
                return None
        if root is None:
            return None
        # Without an anchor there is no alias (a big table is spared the walk).
        problem = _alias_problem(root) if "&" in text else None
        if problem is not None:
            self.add(0, 0, "", problem)
            return None
        return root

    def _compose_slowly(self, text: str) -> Node | None:
        try:
            root = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark
            line = mark.line + 1 if mark else 0
            column = mark.column if mark else 0
            self.add(line, column, "", _yaml_problem(e), show_column=True)
            return None
        except yaml.reader.ReaderError as e:
            line = text.count("\n", 0, int(e.position)) + 1
            column = int(e.position) - (text.rfind("\n", 0, int(e.position)) + 1)
            self.add(line, column, "", "a character YAML does not allow", show_column=True)
            return None
        except RecursionError:
            self.add(0, 0, "", "YAML nested too deeply")
            return None
        if root is None:
            self.error(None, "", "empty config")
        return root

    # -- node helpers -------------------------------------------------------------------

    def mapping(self, node: Node, path: str) -> _Entries | None:
        if not isinstance(node, MappingNode):
            self.error(node, path, f"expected a mapping, got {_what(node)}")
            return None
        entries: _Entries = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or _is_null(key_node):
                self.error(key_node, path, "a key must be a plain name")
                continue
            key = str(key_node.value)
            if key in entries:
                first = entries[key][0].start_mark.line + 1
                self.error(key_node, _join(path, key), f"duplicate key (first at line {first})")
                continue
            entries[key] = (key_node, value_node)
        return entries

    def known(self, entries: _Entries, allowed: Iterable[str], path: str) -> None:
        allowed = list(allowed)
        for key, (key_node, _) in entries.items():
            if key not in allowed:
                self.error(key_node, path, f"unknown key {_q(key)}{_did_you_mean(key, allowed)}")

    def text(self, node: Node, path: str) -> str | None:
        """A scalar's text as written (so `0123` stays `0123`); never echoed in errors."""
        if isinstance(node, ScalarNode) and node.tag in _SCALAR_TAGS:
            return str(node.value)
        self.error(node, path, f"expected a string, got {_what(node)}")
        return None

    def items(self, node: Node) -> list[Node]:
        """A list, or one item written without the list."""
        return list(node.value) if isinstance(node, SequenceNode) else [node]

    def duration(self, node: Node, path: str) -> float | None:
        value: object = None
        if isinstance(node, ScalarNode):
            if node.tag == _INT:
                value = _CONSTRUCTOR.construct_yaml_int(node)
            elif node.tag == _FLOAT:
                value = _CONSTRUCTOR.construct_yaml_float(node)
            elif node.tag == _STR:
                value = node.value
        if value is None:
            self.error(node, path, f"expected a duration like 5s, got {_what(node)}")
            return None
        try:
            return parse_duration(value)
        except ValueError as e:
            self.error(node, path, str(e))
            return None

    def count(self, node: Node, path: str, maximum: int = 1000) -> int | None:
        """A whole number from 1 to `maximum`."""
        if isinstance(node, ScalarNode) and node.tag == _INT:
            value = int(_CONSTRUCTOR.construct_yaml_int(node))
            if 1 <= value <= maximum:
                return value
        self.error(node, path, f"expected a whole number from 1 to {maximum}, got {_what(node)}")
        return None

    def flag(self, node: Node, path: str) -> bool | None:
        if isinstance(node, ScalarNode) and node.tag == _BOOL:
            return _CONSTRUCTOR.construct_yaml_bool(node)
        self.error(node, path, f"expected true or false, got {_what(node)}")
        return None

    def file_path(self, node: Node, path: str) -> str | None:
        text = self.text(node, path)
        if text is None:
            return None
        full = os.path.abspath(os.path.join(self.base_dir, os.path.expanduser(text)))
        if not os.path.isfile(full):
            self.error(node, path, f"no such file: {_q(text)} (looked for {full})")
            return None
        return full

    def name_ok(self, name: str, node: Node, path: str, what: str) -> bool:
        if not _NAME.match(name):
            self.error(node, path, f"bad {what} name {_q(name)}: use letters, digits, _ . -")
            return False
        if name.lower() in ("direct", "reject"):
            self.error(node, path, f"{_q(name)} is reserved")
            return False
        return True


# What aliases may add to a table, in nodes, over the nodes actually written: enough to
# share a few mappings, far too little for "a billion laughs".
MAX_ALIAS_EXPANSION = 100_000


def _alias_problem(root: Node) -> str | None:
    """Aliases make the node graph a DAG that every reader walks as a tree: count the
    tree's size (memoized per node, so this costs one pass over the distinct nodes) and
    refuse a graph that would expand far beyond what was written, or that loops."""
    sizes: dict[int, int] = {}
    distinct = 0
    # Iterative post-order walk: a deep document must not exhaust the Python stack here.
    stack: list[tuple[Node, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            total = 1 + sum(sizes[id(child)] for child in _children(node))
            sizes[key] = total
            if total - distinct > MAX_ALIAS_EXPANSION:
                return f"aliases expand the file to over {MAX_ALIAS_EXPANSION:,} more nodes"
            continue
        if key in sizes:
            continue
        if key in on_path:
            return "an alias refers to a node that contains it (a loop)"
        on_path.add(key)
        distinct += 1
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)
    return None


def _children(node: Node) -> list[Node]:
    if isinstance(node, SequenceNode):
        return list(node.value)
    if isinstance(node, MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _yaml_problem(e: yaml.MarkedYAMLError) -> str:
    problem = e.problem or "invalid YAML"
    context = e.context or ""
    if "'\\t'" in problem:
        return "a tab character: indent with spaces, not tabs"
    # Alias and anchor errors quote the token, which may be a value such as a password.
    if "alias" in problem or "alias" in context:
        return 'bad alias: quote a value that starts with *, as in "*.example.com"'
    if "anchor" in problem or "anchor" in context:
        return "bad anchor: quote a value that starts with &"
    if context.startswith("expected"):
        return f"{context} {problem}"
    return problem


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL


def _what(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if node.tag == _NULL:
        return "nothing"
    if node.tag in (_INT, _FLOAT):
        return "a number"
    if node.tag == _BOOL:
        return "true/false"
    return "a string" if node.tag in _SCALAR_TAGS else f"a {node.tag.replace(_T, '!!')} value"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _q(text: str) -> str:
    """Quoted for a message: double quotes, control characters escaped, bounded."""
    return json.dumps(text if len(text) <= 80 else text[:77] + "...", ensure_ascii=False)


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {_q(close[0])}?)" if close else ""
