"""`chainer explain NAME` with `dns:` configured: what chainer's DNS would answer and why,
as text and as JSON, through the command line's own entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chainer.cli import main

CONFIG = """\
dns:
  listen: 127.0.0.1:5353
  upstream: [192.0.2.53]
  fake_ip: {v4: 198.19.0.0/16, v6: false, ttl: 10s}
  chain_resolve: {match: .resolved.corp.example, server: 10.0.0.53, via: lab}
  reject_rcode: REFUSED
proxies:
  corp: http://10.0.0.1:3128
chains:
  lab: [corp]
deny: ["*.denied.example"]
routes:
  - {match: "*.corp.example", via: lab}
  - {match: "git.example:22", via: lab}
  - {match: ads.example, via: reject}
  - {match: "*", via: direct}
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG)
    return str(path)


def explain(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    with pytest.raises(SystemExit) as info:
        main(["explain", *args])
    out, err = capsys.readouterr()
    assert info.value.code == 0, err
    return out


def dns_line(text: str) -> str:
    return next(line.strip() for line in text.splitlines() if line.strip().startswith("dns "))


@pytest.mark.parametrize(
    ("name", "line"),
    [
        (
            "db.corp.example",
            "dns          a fake address from 198.19.0.0/16 (TTL 10s): chained on every port "
            "(routes[0] via lab); no query for it leaves this machine",
        ),
        (
            "git.example:443",  # the port does not matter: DNS has none
            "dns          a fake address from 198.19.0.0/16 (TTL 10s): chained on port 22 "
            "(routes[1] via lab); no query for it leaves this machine",
        ),
        (
            "www.example",
            "dns          real addresses from 192.0.2.53:53: direct on every port (routes[3] "
            "via direct)",
        ),
        ("ads.example", "dns          REFUSED: routes[2] rejects it"),
        (
            "app.resolved.corp.example",
            'dns          real addresses: dns.chain_resolve[0] match ".resolved.corp.example": '
            "asked of 10.0.0.53:53 through lab",
        ),
        (
            "198.19.0.7:443",
            "dns          a fake address of chainer's DNS: a connection to it is routed by the "
            "name it is lent to (`dig -x` asks the running server which)",
        ),
    ],
)
def test_explain_says_what_dns_answers(
    capsys: pytest.CaptureFixture[str], config: str, name: str, line: str
) -> None:
    assert dns_line(explain(capsys, name, "-c", config)) == line


def test_a_denied_name(capsys: pytest.CaptureFixture[str], config: str) -> None:
    line = dns_line(explain(capsys, "x.denied.example", "-c", config))
    assert line.startswith("dns          REFUSED: x.denied.example:1 is denied by deny")


def test_json(capsys: pytest.CaptureFixture[str], config: str) -> None:
    data = json.loads(explain(capsys, "db.corp.example", "-c", config, "--json"))
    assert data["dns"]["answer"] == "fake_ip"
    assert "198.19.0.0/16" in data["dns"]["text"]


def test_no_dns_no_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("routes: [{match: '*', via: direct}]\n")
    text = explain(capsys, "www.example", "-c", str(path))
    assert "dns " not in text
    assert json.loads(explain(capsys, "www.example", "-c", str(path), "--json"))["dns"] is None
