"""The PAC file: generated from the route table, evaluated by a real JavaScript engine
(node's `vm`, with every name-resolving PAC helper made to throw) against destinations
whose expected answers come from `chainer explain --json`; served by the admin endpoint
and `chainer pac`; and used by headless Chromium to reach a page through chainer."""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import logging
import random
import re
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest
from cdp import run_chromium
from realproxies import Origin, require_binary

from chainer import cli
from chainer.config import load_config, parse_config
from chainer.errors import BadTarget
from chainer.models import Config
from chainer.ops.explain import explain
from chainer.ops.pac import pac_for_config
from chainer.router import Router
from chainer.routing.pac import pac_script, proxy_directive
from chainer.server.admin import AdminView, serve_admin
from chainer.server.server import Server

LISTEN_PORT = 38080  # written into the table (explain's loop check needs a fixed port)
CHAINER = f"PROXY 127.0.0.1:{LISTEN_PORT}; SOCKS5 127.0.0.1:{LISTEN_PORT}"

TABLE = f"""\
listen: ['127.0.0.1:{LISTEN_PORT}']
proxies:
  corp: http://127.0.0.1:9    # never contacted: nothing here sends traffic
deny: ["*.internal.example", "10.66.0.0/16", "*:25"]
routes:
  - {{match: direct.example, via: direct}}
  - {{match: "*.corp.example", via: corp}}
  - {{match: ".lab.example:8000-8999", via: direct}}
  - {{match: .lab.example, via: corp}}
  - {{match: "[2001:db8:1::5]", via: corp}}
  - {{match: 're:^2001:db8:2:', via: corp}}   # on the compressed text, as chainer writes it
  - {{match: ["10.0.0.0/8", "[2001:db8::/32]"], via: direct}}
  - {{match: "192.0.2.7:443", via: corp}}
  - {{match: "192.0.2.0/24", via: direct}}
  - {{match: 're:^api[0-9]+\\.svc\\.example$', via: corp}}
  - {{match: 're:^(www|cdn)\\.static\\.example$', via: direct}}
  - {{match: 're:(?i)^case\\.test$:9000', via: direct}}   # RE2-only syntax: chainer decides
  - {{match: .ads.example, via: reject}}
  - {{match: fallback.example, via: direct, fallback: [corp]}}
  - {{match: "*:22", via: corp}}
  - {{match: "*.example", via: direct}}
  - {{match: "127.0.0.1", via: direct}}
  - {{match: "[::1]", via: direct}}
"""

# URL, and whether the PAC may only answer chainer although chainer would go direct:
# the destination reaches a pattern the script cannot decide (RE2-only syntax).
CASES: list[tuple[str, bool]] = [
    ("http://direct.example/", False),
    ("https://direct.example:8443/x?y#z", False),
    ("https://DIRECT.Example./", False),
    ("https://user:pw@direct.example/", False),
    ("https://a.corp.example/", False),
    ("https://corp.example/", False),  # *.corp.example is not the apex: *.example
    ("http://x.lab.example:8080/", False),
    ("http://x.lab.example/", False),
    ("https://lab.example:8500/", False),
    ("http://10.1.2.3/", False),
    ("http://10.66.1.1/", False),  # denied
    ("https://[2001:db8::1]/", False),
    ("https://[2001:db8:0:0:0:0:0:1]:8443/", False),
    ("https://[2001:db8:1::5]/", False),
    ("https://[2001:db8:1:0::5]/", False),
    ("https://[2001:0db8:0002:0000:0000:0000:0000:0007]/", False),
    ("https://[2001:db8:20::7]/", False),
    ("https://[::ffff:10.1.2.3]/", False),  # the IPv4 address it maps
    ("https://[::ffff:a01:203]/", False),
    ("https://192.0.2.7/", False),
    ("http://192.0.2.7/", False),
    ("http://192.0.2.200:8080/", False),
    ("https://198.51.100.1/", False),  # no route
    ("https://api12.svc.example/", False),
    ("https://apix.svc.example/", False),
    ("https://www.static.example/", False),
    ("https://img.static.example/", False),
    ("http://case.test:9000/", True),
    ("http://case.test/", False),
    ("https://blocked.internal.example/", False),
    ("http://mail.example:25/", False),
    ("https://tracker.ads.example/", False),
    ("https://fallback.example/", False),
    ("http://host.example:22/", False),
    ("https://unmatched.test/", False),
    ("http://127.0.0.1:8081/", False),
    (f"http://127.0.0.1:{LISTEN_PORT}/", False),  # chainer itself: a loop
    (f"http://[::1]:{LISTEN_PORT}/", False),
    ("http://[::1]:8081/", False),
    ("ws://direct.example/", False),
    ("wss://direct.example/", False),
    ("http://127.1/", False),  # a numeric alias chainer refuses
    ("http://under_score.example/", False),
    ("http://-bad.example/", False),
]

RESOLVING = re.compile(
    r"\b(dnsResolve|dnsResolveEx|isInNet|isInNetEx|myIpAddress|myIpAddressEx|isResolvable|"
    r"isResolvableEx|dnsDomainLevels|sortIpAddressList)\b"
)

HARNESS = r"""
const vm = require("vm");
const fs = require("fs");
const pac = fs.readFileSync(process.argv[2], "utf8");
const cases = JSON.parse(fs.readFileSync(process.argv[3], "utf8"));
const called = [];
const sandbox = {};
for (const name of ["dnsResolve", "dnsResolveEx", "isInNet", "isInNetEx", "myIpAddress",
    "myIpAddressEx", "isResolvable", "isResolvableEx", "dnsDomainIs", "dnsDomainLevels",
    "shExpMatch", "localHostOrDomainIs", "isPlainHostName", "sortIpAddressList",
    "weekdayRange", "dateRange", "timeRange", "alert"]) {
  sandbox[name] = function () { called.push(name); throw new Error(name + " called"); };
}
vm.createContext(sandbox);
vm.runInContext(pac, sandbox, {timeout: 2000});
const answers = cases.map(([url, host]) => vm.runInContext(
  "FindProxyForURL(" + JSON.stringify(url) + ", " + JSON.stringify(host) + ")",
  sandbox, {timeout: 2000}));
console.log(JSON.stringify({answers: answers, called: called}));
"""


def evaluate(tmp_path: Path, pac: str, cases: list[tuple[str, str]]) -> list[str]:
    """FindProxyForURL for each (url, host), in node; no PAC helper may be called."""
    node = require_binary("node")
    (tmp_path / "harness.js").write_text(HARNESS)
    (tmp_path / "proxy.pac").write_text(pac)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run(
        [node, str(tmp_path / "harness.js"), str(tmp_path / "proxy.pac"),
         str(tmp_path / "cases.json")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["called"] == []
    answers: list[str] = result["answers"]
    return answers


def host_of(url: str) -> str:
    """The `host` argument a browser passes: the URL's host, without brackets."""
    return urlsplit(url).hostname or ""


def authority_of(url: str) -> str:
    parts = urlsplit(url)
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}[parts.scheme]
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{parts.port or default}"


def expected_by_explain(
    config_path: Path, authority: str, capsys: pytest.CaptureFixture[str]
) -> str:
    """DIRECT where `chainer explain --json` says chainer would go direct (a direct
    route, no fallback, not refused); chainer's listener for everything else."""
    with pytest.raises(SystemExit) as exited:
        cli.main(["explain", "--json", "-c", str(config_path), authority])
    out = capsys.readouterr().out
    if exited.value.code != 0:  # a destination chainer refuses as malformed
        return CHAINER
    doc = json.loads(out)
    direct = (
        doc["via"] is not None
        and doc["via"]["kind"] == "direct"
        and not doc["fallbacks"]
        and not doc["refused"]
    )
    return "DIRECT" if direct else CHAINER


@pytest.fixture
def table_file(tmp_path: Path) -> Path:
    path = tmp_path / "routes.yaml"
    path.write_text(TABLE)
    return path


def test_the_pac_never_makes_the_browser_resolve(table_file: Path) -> None:
    pac = pac_for_config(load_config(table_file))
    assert RESOLVING.search(pac) is None
    # IP ranges become numbers compared in the script, never a helper call
    assert '["net",4,[10,0,0,0],8,0,65535]' in pac


@pytest.mark.interop
def test_node_answers_as_chainer_explain_json(
    tmp_path: Path, table_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pac = pac_for_config(load_config(table_file))
    answers = evaluate(tmp_path, pac, [(url, host_of(url)) for url, _ in CASES])
    wrong = []
    for (url, undecidable), answer in zip(CASES, answers, strict=True):
        expected = expected_by_explain(table_file, authority_of(url), capsys)
        if undecidable:
            assert expected == "DIRECT", f"{url}: not a case the PAC must leave to chainer"
            expected = CHAINER
        if answer != expected:
            wrong.append(f"{url}: PAC {answer!r}, explain says {expected!r}")
    assert not wrong, "\n".join(wrong)
    assert answers.count("DIRECT") >= 15  # the table exercises both answers


@pytest.mark.interop
def test_brackets_and_case_in_the_host_argument(tmp_path: Path, table_file: Path) -> None:
    pac = pac_for_config(load_config(table_file))
    cases = [
        ("https://[2001:db8::1]/", "[2001:db8::1]"),
        ("https://[2001:DB8::1]/", "2001:DB8::1"),
        ("https://Direct.Example/", "Direct.Example"),
        ("https://[fe80::1%25eth0]/", "fe80::1%eth0"),  # a zone id: chainer refuses it
        ("https://[1:2:3:4:5:6:7:8:9]/", "1:2:3:4:5:6:7:8:9"),
        ("https://[::ffff:1.2.3.4.5]/", "::ffff:1.2.3.4.5"),
        ("https://[2001:db8::1::2]/", "2001:db8::1::2"),
        ("gopher://direct.example/", "direct.example"),  # no port chainer would assume
        ("http://direct.example:0/", "direct.example"),
        ("http://direct.example:65536/", "direct.example"),
    ]
    answers = evaluate(tmp_path, pac, cases)
    assert answers[:3] == ["DIRECT"] * 3
    assert answers[3:] == [CHAINER] * (len(cases) - 3)


_NAMES = ["direct.example", "x.corp.example", "corp.example", "a.lab.example", "lab.example",
          "api7.svc.example", "www.static.example", "x.ads.example", "fallback.example",
          "q.internal.example", "case.test", "other.test", "deep.a.b.example"]  # fmt: skip
_PORTS = [22, 25, 80, 443, 8000, 8500, 8999, 9000, 9001, LISTEN_PORT, 65535]


def _random_destination(rng: random.Random) -> tuple[str, str]:
    port = rng.choice(_PORTS)
    kind = rng.random()
    if kind < 0.45:
        host = rng.choice(_NAMES)
        return f"http://{host}:{port}/", host
    if kind < 0.75:
        net = rng.choice(["10.0.0.0/8", "10.66.0.0/16", "192.0.2.0/24", "127.0.0.0/30",
                          "198.51.100.0/24", "0.0.0.0/0"])  # fmt: skip
        network = ipaddress.ip_network(net)
        ip = network[rng.randrange(network.num_addresses)]
        if rng.random() < 0.2:
            v6 = f"::ffff:{ip}"
            return f"http://[{v6}]:{port}/", v6
        return f"http://{ip}:{port}/", str(ip)
    net = rng.choice(
        ["2001:db8::/32", "2001:db8:1::/120", "2001:db8:2::/48", "::/127", "2001:db9::/64"]
    )
    network6 = ipaddress.ip_network(net)
    ip6 = network6[rng.randrange(min(network6.num_addresses, 1 << 62))]
    text = ip6.exploded if rng.random() < 0.3 else str(ip6)
    return f"http://[{text}]:{port}/", text


@pytest.mark.interop
def test_random_destinations_agree_with_the_table(tmp_path: Path, table_file: Path) -> None:
    """300 drawn destinations: names, ranges, mapped and spelt-out IPv6, many ports."""
    config = load_config(table_file)
    rng = random.Random(17)
    cases = [_random_destination(rng) for _ in range(300)]
    answers = evaluate(tmp_path, pac_for_config(config), cases)
    wrong = []
    for (url, host), answer in zip(cases, answers, strict=True):
        expected = _expected(config, authority_of(url))
        undecidable = answer == CHAINER and expected == "DIRECT" and _reaches_case(config, url)
        if answer != expected and not undecidable:
            wrong.append(f"{url} ({host}): PAC {answer!r}, table {expected!r}")
    assert not wrong, "\n".join(wrong[:20])


def _expected(config: Config, authority: str) -> str:
    try:
        e = explain(config, authority)
    except BadTarget:
        return CHAINER
    direct = e.via is not None and e.via.form == "direct" and not e.fallbacks and not e.refused
    return "DIRECT" if direct else CHAINER


def _reaches_case(config: Config, url: str) -> bool:
    """The destination's route lies past the undecidable `re:(?i)...:9000` pattern."""
    return urlsplit(url).port == 9000


def test_unknown_pattern_kinds_and_foreign_regexes_go_to_chainer() -> None:
    """A pattern kind the script does not know (a later `list:NAME`) and RE2 syntax are
    left to chainer: the script answers chainer from there on, never DIRECT."""
    from chainer.models import DIRECT, Pattern, Route

    unknown = Pattern("list:ads", "list", "ads")  # type: ignore[arg-type]
    routes = [
        Route(0, (unknown,), DIRECT),
        Route(1, (Pattern("re:\\pL+", "regex", "\\pL+"),), DIRECT),
        Route(2, (Pattern("*", "any"),), DIRECT),
    ]
    from chainer.models import Policy

    pac = pac_script(routes, Policy(), "PROXY x:1")
    assert '["ask",0,65535]' in pac
    assert pac.count('"ask"') == 2


def test_proxy_directive() -> None:
    from chainer.models import Address

    assert proxy_directive(Address("::1", 8080), False) == "PROXY [::1]:8080; SOCKS5 [::1]:8080"
    assert proxy_directive(Address("10.0.0.1", 8443), True) == "HTTPS 10.0.0.1:8443"


# ------------------------------------------------------------------------ serving it


def test_chainer_pac_prints_it(table_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["pac", "-c", str(table_file)])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert f'var CHAINER = "{CHAINER}";' in out
    assert "function FindProxyForURL(url, host)" in out
    with pytest.raises(SystemExit) as exited:
        cli.main(["pac", "-c", str(table_file), "--proxy", "proxy.corp.example:3128"])
    assert (
        "PROXY proxy.corp.example:3128; SOCKS5 proxy.corp.example:3128" in capsys.readouterr().out
    )
    table_file.write_text(TABLE.replace(f"127.0.0.1:{LISTEN_PORT}", "127.0.0.1:0", 1))
    with pytest.raises(SystemExit) as exited:
        cli.main(["pac", "-c", str(table_file)])
    assert exited.value.code == 2
    assert "--proxy HOST:PORT" in capsys.readouterr().err


@contextlib.asynccontextmanager
async def admin_for(config: Config) -> AsyncIterator[tuple[int, int]]:
    """The server and its admin endpoint in this loop; yields (listener port, admin port)."""
    server = Server(Router(config))
    view = AdminView(
        config=lambda: server.router.config,
        health=lambda: server.router.dialer.health,
        registry=server.metrics.registry,
        tunnels=server.registry.snapshot,
        listening=server.listening,
    )
    assert config.admin is not None
    async with anyio.create_task_group() as tg:
        bound = await tg.start(server.serve)
        admin = await tg.start(serve_admin, config.admin, view)
        yield bound[0][1], admin[1]
        tg.cancel_scope.cancel()


def get(port: int, path: str, host: str | None = None) -> tuple[int, dict[str, str], str]:
    headers = f"Host: {host}\r\n" if host is not None else ""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\n{headers}Connection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), fields, body.decode()


@pytest.mark.anyio
async def test_the_admin_endpoint_serves_it() -> None:
    config = parse_config(
        "listen: [{address: '0.0.0.0:0', open: true}]\nadmin: 127.0.0.1:0\n"
        "routes:\n  - {match: '*', via: direct}\n",
        "routes.yaml",
    )
    async with admin_for(config) as (listen_port, admin_port):
        fetch: Callable[..., tuple[int, dict[str, str], str]] = functools.partial(get, admin_port)
        status, fields, body = await anyio.to_thread.run_sync(fetch, "/proxy.pac", "pac.lan")
        assert status == 200
        assert fields["Content-Type"] == "application/x-ns-proxy-autoconfig"
        # a wildcard listener is named as the browser named this endpoint
        assert f'"PROXY pac.lan:{listen_port}; SOCKS5 pac.lan:{listen_port}"' in body
        hostile = 'x";alert(1);"'
        status, _, body = await anyio.to_thread.run_sync(fetch, "/proxy.pac", hostile)
        assert status == 200
        assert "alert" not in body
        assert f'"PROXY 127.0.0.1:{listen_port}; SOCKS5 127.0.0.1:{listen_port}"' in body


# ------------------------------------------------------------------------ a real browser


class _OnlyOriginTest:
    """`socket.getaddrinfo` for the browser test: `origin.test` is 127.0.0.1, IP literals
    as usual, every other name fails at once (no query leaves the machine)."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real = real

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else host
        if text == "origin.test":
            return self.real("127.0.0.1", port, *args, **kwargs)
        try:
            ipaddress.ip_address(text or "")
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None
        return self.real(host, port, *args, **kwargs)


@pytest.mark.anyio
@pytest.mark.interop
@pytest.mark.slow
async def test_chromium_reaches_a_page_through_the_pac(
    plain_origin: Origin, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Chromium, given only --proxy-pac-url, asks chainer for http://origin.test/...;
    chainer sends it through its route's chain (a second chainer as a SOCKS5 hop, which
    resolves the name), and a rejected destination gets chainer's own 403 page."""
    require_binary("chromium")
    monkeypatch.setattr(socket, "getaddrinfo", _OnlyOriginTest(socket.getaddrinfo))
    caplog.set_level(logging.INFO)
    hop = Server(
        Router(
            parse_config(
                "listen: ['127.0.0.1:0']\nroutes:\n  - {match: origin.test, via: direct}\n"
                "  - {match: '*', via: reject}\n",
                "hop.yaml",
            )
        )
    )
    async with anyio.create_task_group() as tg:
        hop_port = (await tg.start(hop.serve))[0][1]
        config = parse_config(
            "listen: ['127.0.0.1:0']\nadmin: 127.0.0.1:0\n"
            f"proxies:\n  hop: socks5h://127.0.0.1:{hop_port}\n"
            "routes:\n  - {match: origin.test, via: [hop]}\n  - {match: '*', via: reject}\n",
            "routes.yaml",
        )
        async with admin_for(config) as (_, admin_port):
            pac_url = f"--proxy-pac-url=http://127.0.0.1:{admin_port}/proxy.pac"
            page = f"http://origin.test:{plain_origin.port}/through-the-pac"
            done = await anyio.to_thread.run_sync(
                functools.partial(run_chromium, pac_url, "--dump-dom", page)
            )
            assert "origin:/through-the-pac" in done.stdout, done.stderr[-2000:]
            refused = await anyio.to_thread.run_sync(
                functools.partial(run_chromium, pac_url, "--dump-dom", "http://blocked.test/")
            )
            assert "routes[1] rejects blocked.test:80" in refused.stdout, refused.stderr[-2000:]
        tg.cancel_scope.cancel()
    lines = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    through = [x for x in lines if f"dest=origin.test:{plain_origin.port} route=routes[0]" in x]
    assert [x for x in through if "via=hop" in x and "outcome=ok" in x], lines


@pytest.mark.anyio
async def test_no_listener_to_name_is_a_404() -> None:
    config = parse_config(
        "admin: 127.0.0.1:0\nroutes:\n  - {match: '*', via: direct}\n", "routes.yaml"
    )
    assert config.admin is not None
    view = AdminView(
        lambda: config,
        lambda: Router(config).dialer.health,
        Server(Router(config)).metrics.registry,
    )
    async with anyio.create_task_group() as tg:
        admin = await tg.start(serve_admin, config.admin, view)
        status, _, body = await anyio.to_thread.run_sync(get, admin[1], "/proxy.pac", "127.0.0.1")
        tg.cancel_scope.cancel()
    assert (status, body) == (404, "no listener to name\n")
