"""The operator's face of transparent capture: `chainer rules` and `chainer explain
--sni`, through the command line's own entry point (exit codes, stdout, stderr)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from realproxies import Endpoint, Origin

from chainer.cli import main

CONFIG = """\
listen:
  - 127.0.0.1:8080
  - {address: 127.0.0.1:12345, transparent: redirect, capture: {uids: all}}
  - {address: 0.0.0.0:12346, transparent: tproxy, capture: {from: 192.168.1.0/24}}
deny: ["203.0.113.66"]
proxies:
  corp: http://10.0.0.1:3128
  bastion: socks5h://10.1.0.5:1080
routes:
  - {match: "*.corp.example", via: [corp, bastion]}
  - {match: "203.0.113.0/24", via: reject}
  - {match: "*", via: direct}
"""


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "routes.yaml"
    path.write_text(CONFIG)
    return str(path)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


def test_rules_prints_a_ruleset_for_nft(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, err = cli(capsys, "rules", "-c", config)
    assert (code, err) == (0, "")
    assert out.startswith(f"# chainer rules for {config}: listen[1] (redirect 127.0.0.1:12345)")
    assert "\ntable inet chainer {\n" in out
    assert "redirect to :12345" in out
    assert "tproxy ip to :12346" in out
    assert "#   ip rule add fwmark 0x2c9 lookup 712" in out


def test_rules_mode_routing_and_delete(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = cli(capsys, "rules", "-c", config, "--mode", "redirect")
    assert code == 0
    assert "tproxy" not in out
    code, out, _ = cli(capsys, "rules", "-c", config, "--mode", "tproxy", "--routing")
    assert code == 0
    assert out.splitlines() == [
        "ip rule del fwmark 0x2c9 lookup 712 2>/dev/null",
        "ip rule add fwmark 0x2c9 lookup 712",
        "ip route replace local 0.0.0.0/0 dev lo table 712",
    ]
    code, out, err = cli(capsys, "rules", "-c", config, "--mode", "redirect", "--routing")
    assert (code, out) == (0, "")
    assert "no policy routing is needed" in err
    code, out, _ = cli(capsys, "rules", "-c", config, "--delete")
    assert code == 0
    assert [line for line in out.splitlines() if not line.startswith("#")] == [
        "table inet chainer",
        "delete table inet chainer",
    ]


def test_rules_without_transparent_listeners_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "plain.yaml"
    path.write_text("routes: [{match: '*', via: direct}]\n")
    code, out, err = cli(capsys, "rules", "-c", str(path))
    assert (code, out) == (2, "")
    assert err == f"error: no transparent listener in {path}\n"


def test_explain_sni_routes_the_name_captured_on_its_way_to_an_address(
    capsys: pytest.CaptureFixture[str], config: str
) -> None:
    code, out, err = cli(
        capsys, "explain", "-c", config, "203.0.113.7:443", "--sni", "app.corp.example"
    )
    assert (code, err) == (0, "")
    lines = out.splitlines()
    # routed by the name (the address alone would have been rejected by routes[1])
    assert lines[0].startswith("app.corp.example:443 -> routes[0] (")
    assert "captured     on its way to 203.0.113.7:443" in out
    assert "by the last hop (bastion)" in out


def test_explain_sni_applies_the_policy_to_the_address_too(
    capsys: pytest.CaptureFixture[str], config: str
) -> None:
    code, out, _ = cli(
        capsys, "explain", "-c", config, "203.0.113.66:443", "--sni", "app.corp.example"
    )
    assert code == 0
    assert "refused by policy (403)" in out.splitlines()[0]
    assert "denied by deny: '203.0.113.66'" in out


def test_explain_sni_json(capsys: pytest.CaptureFixture[str], config: str) -> None:
    code, out, _ = cli(
        capsys, "explain", "-c", config, "203.0.113.7", "--sni", "App.Corp.Example.", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["captured"] == "203.0.113.7:443"
    assert data["destination"]["authority"] == "app.corp.example:443"
    assert data["route"]["label"] == "routes[0]"
    # judged on the transparent listeners only
    assert [p["listener"] for p in data["policy"]] == ["127.0.0.1:12345", "0.0.0.0:12346"]


@pytest.mark.parametrize("sni", ["10.0.0.1", "bad name", "127.1"])
def test_explain_sni_takes_a_name(
    capsys: pytest.CaptureFixture[str], config: str, sni: str
) -> None:
    code, out, err = cli(capsys, "explain", "-c", config, "203.0.113.7:443", "--sni", sni)
    assert (code, out) == (2, "")
    assert err.startswith("error: ")


def test_help_shows_the_two_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys)
    assert code == 2
    assert "chainer rules | nft -f -" in out
    assert "chainer explain 203.0.113.7:443 --sni app.corp.example" in out


def test_check_sni_asks_the_last_hop_for_the_name_on_the_names_route(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tinyproxy: Endpoint,
    plain_origin: Origin,
) -> None:
    """tinyproxy is asked for `localhost:PORT` (it resolves the name), not for the
    address the captured connection was going to (203.0.113.7, which leads nowhere)."""
    path = tmp_path / "routes.yaml"
    path.write_text(
        f"proxies: {{tiny: 'http://{tinyproxy.hostport}'}}\n"
        "routes:\n"
        "  - {match: '203.0.113.0/24', via: reject}\n"
        "  - {match: localhost, via: [tiny]}\n"
    )
    target = f"203.0.113.7:{plain_origin.port}"
    code, out, err = cli(
        capsys, "check", "-c", str(path), "--target", target, "--sni", "localhost", "--json"
    )
    assert code == 0, (out, err)
    report = json.loads(out)
    assert report["ok"]
    assert report["target"] == f"localhost:{plain_origin.port}"
    assert [c["routes"] for c in report["chains"]] == [["routes[1]"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sni", "app.corp.example"], "--sni needs --target"),
        (["--target", "203.0.113.7:443", "--sni", "ads.example"], "routes[2] sends direct"),
    ],
)
def test_check_sni_usage_errors(
    capsys: pytest.CaptureFixture[str], config: str, args: list[str], message: str
) -> None:
    code, out, err = cli(capsys, "check", "-c", config, *args)
    assert (code, out) == (2, "")
    assert message in err
