"""Every shipped route table validates: routes.yaml, each file in examples/, and every
YAML block in README.md and examples/*.md (a block whose first line is `# fragment` is
validated inside a minimal table)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chainer.config import load_config, parse_config
from chainer.models import Address
from chainer.routing.table import RouteTable

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "examples").glob("*.md"))]
_BLOCK = re.compile(r"^```yaml\n(.*?)^```", re.DOTALL | re.MULTILINE)
MINIMAL = "routes: [{match: '*', via: direct}]\n"


def yaml_blocks() -> list[tuple[str, int, str]]:
    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for m in _BLOCK.finditer(text):
            line = text.count("\n", 0, m.start()) + 2
            blocks.append((doc.name, line, m.group(1)))
    return blocks


BLOCKS = yaml_blocks()


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path: Path) -> None:
    config = load_config(path)  # in place: the files they name ship beside them
    assert config.routes


@pytest.mark.parametrize(("doc", "line", "block"), BLOCKS, ids=[f"{d}:{n}" for d, n, _ in BLOCKS])
def test_every_yaml_block_in_the_docs_validates(doc: str, line: int, block: str) -> None:
    if block.startswith("# fragment\n") and not re.search(r"^routes:", block, re.MULTILINE):
        block += MINIMAL
    # Relative paths in the docs mean the files shipped in examples/.
    config = parse_config(block, f"{doc}:{line}", base_dir=str(ROOT / "examples"))
    assert config.routes


def test_the_docs_have_yaml_blocks() -> None:
    assert len([b for b in BLOCKS if b[0] == "README.md"]) >= 3


def test_shipped_routes_yaml_sends_everything_direct() -> None:
    config = load_config(ROOT / "routes.yaml")
    assert [str(listener.address) for listener in config.listeners] == ["127.0.0.1:8080"]
    match = RouteTable(config.routes).match(Address("example.com", 443))
    assert match is not None
    assert match.route.via.kind == "direct"


def test_segmented_example_routes_lab_names_through_both_hops() -> None:
    table = RouteTable(load_config(ROOT / "examples" / "segmented.yaml").routes)
    match = table.match(Address("db.lab.corp.example", 5432))
    assert match is not None
    assert [g.label() for g in match.route.via.hops] == ["corp", "[bastion, bastion2]"]


def test_privacy_example_never_goes_direct(tmp_path: Path) -> None:
    config = load_config(ROOT / "examples" / "privacy.yaml")
    vias = [r.via for r in config.routes] + [f for r in config.routes for f in r.fallback]
    assert all(via.kind != "direct" for via in vias)
    match = RouteTable(config.routes).match(Address("example.com", 443))
    assert match is not None
    assert match.route.anonymous  # no Via, no X-Forwarded-For
    exits = match.route.via.hops[-1]
    assert exits.strategy == "random"
    assert all(p.scheme == "socks5h" for g in match.route.via.hops for p in g.candidates)
