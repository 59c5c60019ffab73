"""Pipelined chains (`pipeline: true`) through the real proxies, with the real curl.

Every chain mixes the hops that take bytes behind their request (squid, tinyproxy, dante
when its proxy says `pipeline: true`) with one that must be answered first (microsocks),
in several orders; a squid that refuses the next hop shows that a refusal stops the
chain there, charged as step by step, with nothing reaching the hop or the destination
behind it. bench/pipeprobe.py measured what each peer does with such bytes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fakes import running_chainer, start_echo, start_hop, task_group
from realproxies import Endpoint, Origin, start_squid
from test_e2e import config, raw_request, run_curl

pytestmark = [pytest.mark.anyio, pytest.mark.interop]


def proxies(squid: Endpoint, tinyproxy: Endpoint, danted: Endpoint, microsocks: Endpoint) -> str:
    return (
        f"  squid: http://{squid.hostport}\n"
        f"  tiny: http://{tinyproxy.hostport}\n"
        f"  dante: {{url: 'socks5h://{danted.hostport}', pipeline: true}}\n"
        f"  dante_plain: socks5h://{danted.hostport}\n"
        f"  micro: socks5h://{microsocks.hostport}\n"
    )


@pytest.mark.parametrize(
    "hops",
    [
        "squid, tiny, dante, micro",  # one write up to microsocks' greeting
        "micro, dante, squid",  # microsocks first: its request, then the rest at once
        "tiny, micro, squid",
        "dante_plain, squid, tiny",  # a SOCKS5 hop with no word: its method reply first
        "dante, tiny, dante",  # the same node twice
    ],
)
async def test_curl_through_a_pipelined_chain_of_real_proxies(
    hops: str,
    tmp_path: Path,
    tls_origin: Origin,
    squid: Endpoint,
    tinyproxy: Endpoint,
    danted: Endpoint,
    microsocks: Endpoint,
) -> None:
    extra = f"chains:\n  fast: {{hops: [{hops}], pipeline: true}}\n"
    text = config(
        "  - {match: '*', via: fast}", proxies(squid, tinyproxy, danted, microsocks), extra
    )
    async with running_chainer(text, tmp_path) as bound:
        for path in ("/first", "/second"):  # (a second one through the same hops)
            rc, body, err = await run_curl(
                "-x",
                f"http://127.0.0.1:{bound[0][1]}",
                "--cacert",
                tls_origin.ca_pem or "",
                tls_origin.url(path),
            )
            assert (rc, body) == (0, b"origin:" + path.encode()), err


@pytest.mark.slow  # (a squid of its own: ~2 s to start)
async def test_a_middle_squid_that_refuses_the_next_hop_stops_the_pipelined_chain_there(
    tmp_path: Path, tinyproxy: Endpoint
) -> None:
    """tinyproxy -> squid -> next -> destination, squid refusing CONNECTs to `next`:
    pipelined, squid gets its CONNECT for `next` and the one meant for `next` in one
    write and answers 403 to the first; the client's answer and the charge are the same
    as step by step, and squid does not act on the second CONNECT: neither `next` nor the
    destination sees a connection."""
    answers = []
    async with task_group() as tg:
        echo = await start_echo(tg)
        nxt = await start_hop(tg, "ok")
        proc, refusing = start_squid(deny_ports=(nxt.port,))
        with proc:
            for pipeline in ("false", "true"):
                extra = f"chains:\n  c: {{hops: [tiny, squid, next], pipeline: {pipeline}}}\n"
                table = config(
                    "  - {match: '*', via: c}",
                    f"  tiny: http://{tinyproxy.hostport}\n"
                    f"  squid: http://{refusing.hostport}\n"
                    f"  next: {nxt.url()}\n",
                    extra,
                )
                async with running_chainer(table, tmp_path) as bound:
                    target = f"127.0.0.1:{echo.port}".encode()
                    answer = await raw_request(
                        bound[0][1], b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
                    )
                head = answer.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
                answers.append([head[0], *(h for h in head if h.startswith(b"Proxy-Status"))])
    assert answers[0] == answers[1]
    assert answers[1] == [
        b"HTTP/1.1 502 Bad Gateway",
        b"Proxy-Status: chainer; error=http_request_denied; received-status=403; "
        b'details="hop 2 (squid): answered 403 Forbidden (denied)"',
    ]
    assert (nxt.accepted, echo.connections) == (0, 0)


async def test_plain_http_through_a_pipelined_chain_reaches_the_last_hop_as_a_request(
    tmp_path: Path, plain_origin: Origin, squid: Endpoint, danted: Endpoint
) -> None:
    """dante -> squid, pipelined, curl http://...: dante is asked for squid ahead of its
    answer, and squid gets the request itself (absolute form), not a CONNECT."""
    proxies = (
        f"  dante: {{url: 'socks5h://{danted.hostport}', pipeline: true}}\n"
        f"  squid: http://{squid.hostport}\n"
    )
    extra = "chains:\n  c: {hops: [dante, squid], pipeline: true}\n"
    async with running_chainer(
        config("  - {match: '*', via: c}", proxies, extra), tmp_path
    ) as bound:
        rc, body, err = await run_curl(
            "-x", f"http://127.0.0.1:{bound[0][1]}", plain_origin.url("/headers")
        )
    assert rc == 0, err
    assert b"chainer-test-squid" in body  # squid's Via: it forwarded the request
