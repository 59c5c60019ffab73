"""Every shipped route table validates: routes.yaml and each file in examples/."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from chainer.config import load_config
from chainer.models import Address
from chainer.routing.table import RouteTable

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_validates(path: Path, tmp_path: Path) -> None:
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    (tmp_path / "corp-ca.pem").write_text("")  # a CA file the examples refer to
    config = load_config(copy)
    assert config.routes


def test_shipped_routes_yaml_sends_everything_direct() -> None:
    config = load_config(ROOT / "routes.yaml")
    assert [str(listener.address) for listener in config.listeners] == ["127.0.0.1:8080"]
    match = RouteTable(config.routes).match(Address("example.com", 443))
    assert match is not None
    assert match.route.via.kind == "direct"


def test_segmented_example_routes_lab_names_through_both_hops(tmp_path: Path) -> None:
    copy = tmp_path / "segmented.yaml"
    shutil.copy(ROOT / "examples" / "segmented.yaml", copy)
    (tmp_path / "corp-ca.pem").write_text("")
    table = RouteTable(load_config(copy).routes)
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
