"""The admin endpoint's live page in a real browser (headless Chromium over the DevTools
protocol): a tunnel through a chain appears in the open-tunnels table; a hop stopped and
failing opens its circuit, drawn in the open colour, and a reload's new route appears —
each within 2 s of happening. A screenshot is kept as an artefact. /tunnels, the page's
headers and Basic auth are checked over plain HTTP."""

from __future__ import annotations

import base64
import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from cdp import Browser
from everyday import (
    LOOPBACK,
    echo_through,
    free_port,
    open_tunnel,
    run_echo,
    serve_chainer,
)
from realproxies import start_microsocks

pytestmark = [pytest.mark.interop, pytest.mark.slow]

USER, PASSWORD = "ops", "pw-page-7c1"
SHOWS_WITHIN = 2.0  # the page polls once a second
SLACK = 0.5  # the test's own polling of the DOM


def table(port: int, admin: int, a: int, b: int, echo1: int, echo2: int, extra: str = "") -> str:
    return f"""\
listen: ['{LOOPBACK}:{port}']
admin: {{address: '{LOOPBACK}:{admin}', auth: {{users: {{{USER}: '{PASSWORD}'}}}}}}
proxies:
  hop-a: {{url: 'socks5://{LOOPBACK}:{a}', max_fails: 1, fail_timeout: 60s}}
  hop-b: {{url: 'socks5://{LOOPBACK}:{b}', max_fails: 1, fail_timeout: 60s}}
chains:
  steady: [hop-a]
  fragile: [hop-b]
routes:
  - {{match: '{LOOPBACK}:{echo1}', via: steady}}
  - {{match: '{LOOPBACK}:{echo2}', via: fragile}}
{extra}  - {{match: '*', via: reject}}
"""


def basic() -> str:
    return "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def fetch(url: str, auth: bool = True) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": basic()} if auth else {})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_the_page_shows_tunnels_breakers_and_reloads_live(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    proc_a, hop_a = start_microsocks(tmp_path / "hop-a")
    proc_b, hop_b = start_microsocks(tmp_path / "hop-b")
    with proc_a, proc_b, run_echo() as echo1, run_echo() as echo2:
        config, log = tmp_path / "routes.yaml", tmp_path / "chainer.log"
        config.write_text(table(port, admin, hop_a.port, hop_b.port, echo1, echo2))
        chainer = serve_chainer(config, log, port)
        with chainer, Browser() as browser:
            base = f"http://{LOOPBACK}:{admin}"

            # Over plain HTTP: the page and /tunnels obey the admin's auth (not /healthz).
            assert fetch(f"{base}/", auth=False)[0] == 401
            assert fetch(f"{base}/tunnels", auth=False)[0] == 401
            assert fetch(f"{base}/healthz", auth=False)[0] == 200
            status, headers, body = fetch(f"{base}/")
            assert status == 200
            assert headers["Content-Type"] == "text/html; charset=utf-8"
            assert "script-src 'sha256-" in headers["Content-Security-Policy"]
            assert b"http://" not in body.replace(b"http://www.w3.org", b"")  # nothing remote

            session = browser.open("about:blank")
            browser.call("Network.enable", session=session)
            browser.call(
                "Network.setExtraHTTPHeaders",
                {"headers": {"Authorization": basic()}},
                session=session,
            )
            browser.call("Page.navigate", {"url": f"{base}/"}, session=session)
            assert browser.wait_for(
                session, "document.querySelector('[data-route=\"routes[1]\"] .edge') !== null", 10
            ), "the page drew no chain"

            # 1. A tunnel through the steady chain appears, with its route and hop.
            tunnel, head = open_tunnel(port, f"{LOOPBACK}:{echo1}")
            assert tunnel is not None, head
            with tunnel:
                assert echo_through(tunnel, b"hello page") == b"hello page"
                row = f'tr.tunnel[data-destination="{LOOPBACK}:{echo1}"]'
                shown = browser.wait_for(
                    session,
                    f"(() => {{ const r = document.querySelector('{row}');"
                    " return r && [r.dataset.route, r.querySelector('td.hops').textContent,"
                    " r.querySelector('td.up').textContent]; })()",
                    SHOWS_WITHIN + 1.5,
                )
                assert shown, "the open tunnel is not on the page"
                assert shown[0] == "routes[0]"
                assert shown[1].startswith("hop-a ")
                assert shown[2] == "10 B"

                # 2. hop-b stops; a connection through it fails; its circuit opens.
                proc_b.stop()
                failed, head = open_tunnel(port, f"{LOOPBACK}:{echo2}")
                assert failed is None
                assert head.startswith(b"HTTP/1.1 502 "), head
                failed_at = time.monotonic()
                edge = '.edge[data-hop="hop-b"][data-from="-"]'
                state = browser.wait_for(
                    session,
                    f"(() => {{ const e = document.querySelector('{edge}');"
                    " return e && e.dataset.state === 'open' &&"
                    " getComputedStyle(e.querySelector('.dot')).backgroundColor; })()",
                    SHOWS_WITHIN + SLACK,
                )
                took = time.monotonic() - failed_at
                assert state == "rgb(198, 40, 40)", f"no open circuit drawn after {took:.2f}s"
                # The tunnel through the other chain is still shown beside it.
                assert browser.evaluate(session, f"document.querySelector('{row}') !== null")
                reason = browser.evaluate(
                    session, f"document.querySelector('{edge} .reason').textContent"
                )
                assert "refused" in reason
                shot = browser.screenshot(session, tmp_path / "admin-page.png")
                print(f"screenshot of the admin page: {shot}")
                assert shot.stat().st_size > 10_000

            # 3. A reload's new route shows.
            extra = "  - {match: reload.example, via: fragile}\n"
            config.write_text(table(port, admin, hop_a.port, hop_b.port, echo1, echo2, extra))
            chainer.popen.send_signal(signal.SIGHUP)
            reloaded_at = time.monotonic()
            new_route = browser.wait_for(
                session,
                "(() => { const r = document.querySelector('[data-route=\"routes[2]\"] .match');"
                " return r !== null && r.textContent === 'reload.example'; })()",
                SHOWS_WITHIN + SLACK + 1.0,  # + the reload itself (parsed off the loop)
            )
            assert new_route, f"no new route after {time.monotonic() - reloaded_at:.2f}s"

            # 4. The closed tunnel leaves the table.
            assert browser.wait_for(
                session, "document.querySelectorAll('tr.tunnel').length === 0", 5
            )
            assert browser.evaluate(session, "document.getElementById('status').className") == (
                "status"
            )


def test_tunnels_json_lists_the_open_tunnels(tmp_path: Path) -> None:
    port, admin = free_port(), free_port()
    proc_a, hop_a = start_microsocks(tmp_path / "hop-a")
    with proc_a, run_echo() as echo1, run_echo() as echo2:
        config, log = tmp_path / "routes.yaml", tmp_path / "chainer.log"
        config.write_text(table(port, admin, hop_a.port, free_port(), echo1, echo2))
        with serve_chainer(config, log, port):
            base = f"http://{LOOPBACK}:{admin}"
            assert json.loads(fetch(f"{base}/tunnels")[2]) == {"tunnels": []}
            tunnel, head = open_tunnel(port, f"{LOOPBACK}:{echo1}")
            assert tunnel is not None, head
            with tunnel:
                assert echo_through(tunnel, b"x" * 1000) == b"x" * 1000
                doc = json.loads(fetch(f"{base}/tunnels")[2])
                client = f"{LOOPBACK}:{tunnel.getsockname()[1]}"
            (entry,) = doc["tunnels"]
            assert entry["client"] == client
            assert entry["destination"] == f"{LOOPBACK}:{echo1}"
            assert (entry["route"], entry["via"]) == ("routes[0]", "steady")
            assert [h["hop"] for h in entry["hops"]] == ["hop-a"]
            assert (entry["up"], entry["down"]) == (1000, 1000)
            assert entry["age"] >= 0
            assert set(entry) == {
                "id", "client", "destination", "route", "via", "hops", "up", "down", "age"
            }  # fmt: skip
