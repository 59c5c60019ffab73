"""Wrong logins: logged as such, and slowed down after a few from one address."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import pytest
from fakes import FakeClock, running_chainer

from chainer.server.throttle import LoginThrottle


def test_the_first_failures_are_free_then_each_waits_twice_as_long() -> None:
    clock = FakeClock()
    throttle = LoginThrottle(clock)
    waits = [throttle.failed("198.18.0.1") for _ in range(9)]
    assert waits == [0, 0, 0, 0.5, 1, 2, 4, 8, 8]
    assert throttle.failed("198.18.0.2") == 0  # another address is not affected
    throttle.succeeded("198.18.0.1")
    assert throttle.failed("198.18.0.1") == 0  # a good login forgets the failures
    clock.advance(61)
    for _ in range(3):
        throttle.failed("198.18.0.2")
    assert throttle.failed("198.18.0.2") == 0.5
    clock.advance(61)  # a minute later the old failures no longer count
    assert throttle.failed("198.18.0.2") == 0


def test_memory_is_bounded() -> None:
    throttle = LoginThrottle(FakeClock())
    for i in range(20_000):
        throttle.failed(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(throttle._failures) <= 10_000


@pytest.mark.anyio
async def test_wrong_and_missing_logins_are_logged_and_wrong_ones_slowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chainer.access")
    text = (
        "listen:\n  - address: 127.0.0.1:0\n    auth: {users: {alice: 's3cret'}}\n"
        "routes: [{match: '*', via: direct}]\n"
    )
    wrong = "Proxy-Authorization: Basic YWxpY2U6d3Jvbmc=\r\n"  # alice:wrong
    async with running_chainer(text, tmp_path) as bound:
        answered_after = []
        for header in ("", *([wrong] * 5)):
            started = anyio.current_time()
            async with await anyio.connect_tcp(*bound[0]) as c:
                request = f"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: x\r\n{header}\r\n"
                await c.send(request.encode())
                with anyio.fail_after(10):
                    answer = await c.receive()
            assert answer.startswith(b"HTTP/1.1 407 "), answer
            answered_after.append(anyio.current_time() - started)
    lines = [r.getMessage() for r in caplog.records if r.name == "chainer.access"]
    assert [line.split("outcome=")[1].split()[0] for line in lines] == [
        "auth_required",
        *["auth_failed"] * 5,
    ]
    assert all("s3cret" not in line and "wrong" not in line for line in lines)
    # the fourth and fifth wrong logins waited (0.5s, then 1s) before their refusal
    assert answered_after[4] >= 0.5
    assert answered_after[5] >= 1.0
