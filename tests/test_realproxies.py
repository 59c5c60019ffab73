"""The real-proxy fixtures work: the real curl fetches from our origins through each."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from realproxies import (
    MICROSOCKS_PASSWORD,
    MICROSOCKS_USER,
    Endpoint,
    Origin,
    ProxyStartError,
    curl,
    free_port,
    start_process,
)

CONNECT_STATUS = "%{stderr}connect=%{http_connect}\n"


def fetch(*args: str) -> tuple[bytes, str]:
    """curl ``args``; assert success; return (body, stderr)."""
    result = curl(*args)
    assert result.returncode == 0, f"curl {' '.join(args)} -> {result.returncode}: {result.stderr}"
    return result.body, result.stderr


def fetch_via_connect(proxy_args: list[str], url: str, *extra: str) -> bytes:
    """Fetch ``url`` through a CONNECT tunnel and check the proxy answered 200."""
    body, stderr = fetch(*proxy_args, "-w", CONNECT_STATUS, *extra, url)
    assert "connect=200" in stderr
    return body


# --------------------------------------------------------------------------- origins


@pytest.mark.interop
def test_origins_answer_directly(tls_origin: Origin, plain_origin: Origin) -> None:
    assert tls_origin.ca_pem is not None
    assert fetch("--cacert", tls_origin.ca_pem, tls_origin.url("/a"))[0] == b"origin:/a"
    for name in ("localhost", "127.0.0.1"):
        url = tls_origin.url("/n", host=name)
        assert fetch("--cacert", tls_origin.ca_pem, url)[0] == b"origin:/n"
    # The cert also names origin.test, for tests that route by name.
    resolve = f"origin.test:{tls_origin.port}:127.0.0.1"
    url = tls_origin.url("/t", host="origin.test")
    assert fetch("--resolve", resolve, "--cacert", tls_origin.ca_pem, url)[0] == b"origin:/t"
    assert fetch(plain_origin.url("/p?q=1"))[0] == b"origin:/p?q=1"
    body, _ = fetch("-H", "X-Probe: 1", plain_origin.url("/headers"))
    assert json.loads(body)["x-probe"] == "1"
    assert fetch("--data-binary", "posted", plain_origin.url("/post"))[0] == b"posted"


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "print('boom: no config', flush=True); raise SystemExit(3)"]
    with pytest.raises(ProxyStartError) as info:
        start_process(argv, free_port(), tmp_path / "out.log", 10.0, name="failing")
    message = str(info.value)
    assert "exited with status 3" in message
    assert "boom: no config" in message


# --------------------------------------------------------------------------- HTTP proxies


@pytest.mark.interop
def test_tinyproxy_forwards_absolute_form(tinyproxy: Endpoint, plain_origin: Origin) -> None:
    proxy = ["-x", tinyproxy.url("http")]
    assert fetch(*proxy, plain_origin.url("/tiny/plain"))[0] == b"origin:/tiny/plain"
    headers = json.loads(fetch(*proxy, plain_origin.url("/headers"))[0])
    assert "tinyproxy" in headers["via"]


@pytest.mark.interop
def test_tinyproxy_connects_to_any_port(
    tinyproxy: Endpoint, tls_origin: Origin, plain_origin: Origin
) -> None:
    assert tls_origin.ca_pem is not None
    proxy = ["-x", tinyproxy.url("http")]
    url = tls_origin.url("/tiny/tls")
    assert fetch_via_connect(proxy, url, "--cacert", tls_origin.ca_pem) == b"origin:/tiny/tls"
    url = plain_origin.url("/tiny/tunnel")
    assert fetch_via_connect(proxy, url, "-p") == b"origin:/tiny/tunnel"


@pytest.mark.interop
def test_squid_forwards_absolute_form(squid: Endpoint, plain_origin: Origin) -> None:
    proxy = ["-x", squid.url("http")]
    assert fetch(*proxy, plain_origin.url("/squid/plain"))[0] == b"origin:/squid/plain"
    headers = json.loads(fetch(*proxy, plain_origin.url("/headers"))[0])
    assert "chainer-test-squid" in headers["via"]


@pytest.mark.interop
def test_squid_connects_to_any_port(
    squid: Endpoint, tls_origin: Origin, plain_origin: Origin
) -> None:
    assert tls_origin.ca_pem is not None
    proxy = ["-x", squid.url("http")]
    url = tls_origin.url("/squid/tls")
    assert fetch_via_connect(proxy, url, "--cacert", tls_origin.ca_pem) == b"origin:/squid/tls"
    url = plain_origin.url("/squid/tunnel")
    assert fetch_via_connect(proxy, url, "-p") == b"origin:/squid/tunnel"


@pytest.mark.interop
def test_stunnel_https_proxy(
    stunnel_https_proxy: Endpoint, tls_origin: Origin, plain_origin: Origin
) -> None:
    proxy_ca = stunnel_https_proxy.ca_pem
    assert proxy_ca is not None
    assert tls_origin.ca_pem is not None
    proxy = ["--proxy", stunnel_https_proxy.url("https"), "--proxy-cacert", proxy_ca]
    # TLS to the origin inside TLS to the proxy.
    url = tls_origin.url("/https-proxy/tls")
    body = fetch_via_connect(proxy, url, "--cacert", tls_origin.ca_pem)
    assert body == b"origin:/https-proxy/tls"
    url = plain_origin.url("/https-proxy/tunnel")
    assert fetch_via_connect(proxy, url, "-p") == b"origin:/https-proxy/tunnel"
    url = plain_origin.url("/https-proxy/plain")
    assert fetch(*proxy, url)[0] == b"origin:/https-proxy/plain"


@pytest.mark.interop
def test_stunnel_https_proxy_is_verified(
    stunnel_https_proxy: Endpoint, plain_origin: Origin
) -> None:
    # Without the CA the proxy's certificate is refused (curl 60: peer cert not trusted).
    result = curl("--proxy", stunnel_https_proxy.url("https"), plain_origin.url("/x"))
    assert result.returncode == 60, result.stderr


# --------------------------------------------------------------------------- SOCKS proxies


@pytest.mark.interop
def test_microsocks(microsocks: Endpoint, tls_origin: Origin, plain_origin: Origin) -> None:
    assert tls_origin.ca_pem is not None
    socks = ["--socks5-hostname", microsocks.hostport]
    assert fetch(*socks, plain_origin.url("/ms/plain"))[0] == b"origin:/ms/plain"
    # The name is sent to microsocks, which resolves it.
    url = tls_origin.url("/ms/tls", host="localhost")
    assert fetch(*socks, "--cacert", tls_origin.ca_pem, url)[0] == b"origin:/ms/tls"


@pytest.mark.interop
def test_microsocks_auth(microsocks_auth: Endpoint, tls_origin: Origin) -> None:
    assert tls_origin.ca_pem is not None
    assert microsocks_auth.username == MICROSOCKS_USER
    assert microsocks_auth.password == MICROSOCKS_PASSWORD
    url = tls_origin.url("/ms-auth/tls")
    socks = ["--socks5-hostname", microsocks_auth.hostport]
    creds = ["--proxy-user", f"{MICROSOCKS_USER}:{MICROSOCKS_PASSWORD}"]
    assert fetch(*socks, *creds, "--cacert", tls_origin.ca_pem, url)[0] == b"origin:/ms-auth/tls"
    # The same through the URL form that chainer configs use.
    proxy = ["--proxy", microsocks_auth.url("socks5h")]
    assert fetch(*proxy, "--cacert", tls_origin.ca_pem, url)[0] == b"origin:/ms-auth/tls"
    # No credentials: refused (curl 97: SOCKS handshake failed).
    result = curl(*socks, "--cacert", tls_origin.ca_pem, url)
    assert result.returncode == 97, result.stderr
    wrong = ["--proxy-user", f"{MICROSOCKS_USER}:wrong"]
    result = curl(*socks, *wrong, "--cacert", tls_origin.ca_pem, url)
    assert result.returncode == 97, result.stderr


@pytest.mark.interop
def test_danted(danted: Endpoint, tls_origin: Origin, plain_origin: Origin) -> None:
    assert tls_origin.ca_pem is not None
    socks = ["--socks5-hostname", danted.hostport]
    assert fetch(*socks, plain_origin.url("/dante/plain"))[0] == b"origin:/dante/plain"
    url = tls_origin.url("/dante/tls", host="localhost")
    assert fetch(*socks, "--cacert", tls_origin.ca_pem, url)[0] == b"origin:/dante/tls"
    url = tls_origin.url("/dante/ip")
    assert fetch(*socks, "--cacert", tls_origin.ca_pem, url)[0] == b"origin:/dante/ip"
