"""routes.yaml -> frozen models, with every problem reported at once.

This package's public face: `load_config` (a file) and `parse_config` (text), and
`parse_duration` re-exported from chainer.duration. The reading itself is split by job:
`_yaml` (composing and node helpers), `_urls` (proxy URLs), one module per section
(`_listeners`, `_proxies`, `_chains`, `_routes`, `_policy`) and `_parser`, which reads
the sections in order.

How this works: the YAML text is *composed*, not constructed, so every node keeps the line
it came from. Each section is read by a small method that records a ConfigError (file,
line, key path) for each problem and carries on with whatever else it can check. A proxy
or chain whose own definition failed is remembered as "broken", so a reference to it stays
quiet instead of adding a second, misleading "not defined" error. Sections are read in
dependency order (defaults, proxies, chains, routes) whatever their order in the file.

Credentials never reach a message: a URL is quoted with its userinfo replaced by `***`, and
password values are never quoted at all.
"""

from __future__ import annotations

import os

from ..errors import ConfigErrors
from ..models import Config
from ..text import parse_duration
from ._files import collector_paused, read_text_file
from ._parser import _Parser

__all__ = [
    "MAX_FILE_BYTES",
    "collector_paused",
    "load_config",
    "parse_config",
    "parse_duration",
    "read_text_file",
]


MAX_FILE_BYTES = 4 << 20  # a route table of 100,000 patterns is about 3 MiB


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a routes.yaml. Raises ConfigErrors holding every problem found."""
    file = os.fspath(path)
    with collector_paused():
        return parse_config(read_text_file(file, MAX_FILE_BYTES), file)


def parse_config(text: str, file: str, base_dir: str | None = None) -> Config:
    """Validate YAML text. Relative paths (`ca:`, `cert:`, `key:`) are taken from base_dir,
    by default the directory of `file`. Raises ConfigErrors holding every problem found."""
    if base_dir is None:
        base_dir = os.path.dirname(os.path.abspath(file))
    parser = _Parser(file, base_dir)
    config = parser.parse(text)
    if parser.errors or config is None:
        raise ConfigErrors(parser.sorted_errors())
    return config
