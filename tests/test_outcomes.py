"""One list of access-log outcomes: the code's, the README's and RUNNING.md's agree, and
every outcome the code can log is in it."""

from __future__ import annotations

import re
from pathlib import Path

from chainer.server.logs import OUTCOMES

ROOT = Path(__file__).resolve().parent.parent
_ROW = re.compile(r"^\| `([a-z_]+)` \| (.+) \|$", re.MULTILINE)


def table_in(doc: Path) -> dict[str, str]:
    text = doc.read_text()
    start = text.index("| outcome | meaning |")
    return dict(_ROW.findall(text[start : text.index("\n\n", start)]))


def test_readme_and_running_show_the_codes_list() -> None:
    assert table_in(ROOT / "README.md") == OUTCOMES
    assert table_in(ROOT / "examples" / "RUNNING.md") == OUTCOMES


def test_every_outcome_the_code_sets_is_listed() -> None:
    set_in_code: set[str] = set()
    for path in (ROOT / "chainer").rglob("*.py"):
        text = path.read_text()
        set_in_code |= set(re.findall(r'outcome(?:, [a-z.]+)? = "([a-z_]+)"', text))
        set_in_code |= set(re.findall(r'outcome="([a-z_]+)"', text))
        set_in_code |= set(re.findall(r'outcome = "([a-z_]+)" if', text))
    assert set_in_code, "no outcome found: the pattern no longer fits the code"
    assert set_in_code <= set(OUTCOMES), set_in_code - set(OUTCOMES)


# -- the outcomes that tell what the client did, end to end ---------------------------------

import logging  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402

import anyio  # noqa: E402
import anyio.abc  # noqa: E402
import pytest  # noqa: E402
from fakes import running_chainer, start_hop, task_group  # noqa: E402


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "chainer.access"]


async def wait_for_line(caplog: pytest.LogCaptureFixture, needle: str) -> str:
    with anyio.fail_after(5):
        while True:
            found = [line for line in access_lines(caplog) if needle in line]
            if found:
                return found[0]
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_client_that_leaves_a_forwarded_request_ends_the_upstream_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chainer")
    async with task_group() as tg:
        origin = await start_hop(tg, "silent")  # takes the request, never answers
        text = (
            "listen: ['127.0.0.1:0']\ndefaults: {idle_timeout: 1m}\n"
            "routes: [{match: '*', via: direct}]\n"
        )
        async with running_chainer(text, tmp_path) as bound:
            client = await anyio.connect_tcp(*bound[0])
            request = f"GET http://127.0.0.1:{origin.port}/slow HTTP/1.1\r\nHost: x\r\n\r\n"
            await client.send(request.encode())
            with anyio.fail_after(5):
                await origin.requested.wait()
            await client.aclose()
            with anyio.fail_after(2):  # not idle_timeout's minute
                await origin.closed_event.wait()
            line = await wait_for_line(caplog, "dest=127.0.0.1")
    assert "outcome=client_closed" in line


@pytest.mark.anyio
async def test_a_client_that_closes_once_it_has_its_whole_answer_is_ok(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A browser reads the Content-Length and closes; the origin's own close reaches
    chainer a moment later. That is a finished exchange, not a client that gave up."""
    caplog.set_level(logging.INFO, logger="chainer")
    body = b"whole answer"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

    async def origin(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await stream.receive()
            await stream.send(answer)
            await anyio.sleep(0.1)  # the origin closes after the client has left

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    async with listener, task_group() as tg:
        tg.start_soon(listener.serve, origin)
        port = listener.extra(anyio.abc.SocketAttribute.local_port)
        text = "listen: ['127.0.0.1:0']\nroutes: [{match: '*', via: direct}]\n"
        async with running_chainer(text, tmp_path) as bound:
            client = await anyio.connect_tcp(*bound[0])
            request = f"GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n"
            await client.send(request.encode())
            got = b""
            with anyio.fail_after(5):
                while not got.endswith(body):
                    got += await client.receive()
            await client.aclose()  # as soon as it has it all
            line = await wait_for_line(caplog, f"dest=127.0.0.1:{port}")
        tg.cancel_scope.cancel()
    assert "outcome=ok" in line, line
    assert f"down={len(got)}" in line, line


@pytest.mark.anyio
async def test_a_client_reset_while_its_chain_is_built_stops_the_building(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chainer")
    async with task_group() as tg:
        silent = await start_hop(tg, "silent")
        text = (
            "listen: ['127.0.0.1:0']\n"
            f"proxies: {{slow: {{url: '{silent.url()}', handshake_timeout: 30s}}}}\n"
            "defaults: {deadline: 1m}\n"
            "routes: [{match: '*', via: slow}]\n"
        )
        async with running_chainer(text, tmp_path) as bound:
            sock = socket.create_connection(bound[0])
            sock.sendall(b"CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n")
            with anyio.fail_after(5):
                await silent.requested.wait()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset
            with anyio.fail_after(2):  # not the 30s handshake_timeout
                await silent.closed_event.wait()
            line = await wait_for_line(caplog, "dest=example.test:443")
    assert "outcome=client_closed" in line
    assert "via=slow" in line


@pytest.mark.anyio
async def test_a_failed_connection_names_its_routes_chain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chainer")
    from fakes import free_port

    text = (
        "listen: ['127.0.0.1:0']\n"
        f"proxies: {{gone: 'http://127.0.0.1:{free_port()}'}}\n"
        "chains: {lab: [gone]}\n"
        "routes: [{match: '*', via: lab}]\n"
    )
    async with running_chainer(text, tmp_path) as bound, await anyio.connect_tcp(*bound[0]) as c:
        await c.send(b"CONNECT example.test:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await c.receive()).startswith(b"HTTP/1.1 502 ")
    line = await wait_for_line(caplog, "dest=example.test:443")
    assert "via=lab" in line
    assert "outcome=failed" in line
