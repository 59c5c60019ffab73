"""`chainer demo`: the whole topology in one process, in-process and as a fresh interpreter."""

from __future__ import annotations

import io
import logging
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from chainer.ops.demo import ORIGIN_BODY, run_demo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]  # each runs the whole demo: ~2 s

ROOT = Path(__file__).resolve().parent.parent
BODY = ORIGIN_BODY.decode().strip()


def check_narrative(text: str) -> None:
    for kind in ("http", "https", "socks5"):
        trace_line = rf"^  hop \d {kind} +127\.0\.0\.1:\d+ +\d+\.\d ms"
        assert re.search(trace_line, text, re.M), (kind, text)
    assert BODY in text, text
    access = [line for line in text.splitlines() if "dest=localhost:" in line and "route=" in line]
    assert access, text
    assert "outcome=ok" in access[0], text
    assert "via=nested" in access[0], text
    assert "Demo OK" in text, text
    assert "FAILED" not in text, text


async def test_demo_in_process() -> None:
    out = io.StringIO()
    with anyio.fail_after(60):
        ok = await run_demo(out)
    text = out.getvalue()
    assert ok, text
    check_narrative(text)
    # the origin is named, with its port, in the topology
    assert re.search(r"^  origin .* localhost:\d+", text, re.M), text


async def test_demo_leaves_logging_as_it_found_it() -> None:
    access = logging.getLogger("chainer.access")
    before = (access.level, access.propagate, list(access.handlers))
    assert await run_demo(io.StringIO())
    assert (access.level, access.propagate, list(access.handlers)) == before


def test_demo_in_a_fresh_interpreter() -> None:
    code = (
        "import anyio, io, sys; from chainer.ops.demo import run_demo; "
        "sys.exit(0 if anyio.run(run_demo, sys.stdout) else 1)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    check_narrative(proc.stdout)
    assert proc.stderr == "", proc.stderr
