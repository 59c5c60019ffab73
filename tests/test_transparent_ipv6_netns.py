"""Transparent capture of IPv6 (and IPv4) into one dual-stack listener, for real.

::

    left (curl, chainer on [::]) ──── right (HTTP origin on 2001:db8:2::2 and 198.18.2.2)

`chainer rules | nft -f -` in the left namespace captures its own processes' TCP
(`capture: {uids: all}`), in `redirect` mode (the original destination read back with
IP6T_SO_ORIGINAL_DST, or SO_ORIGINAL_DST for IPv4) and in `tproxy` mode (the accepted
socket's own address; IPv6 policy routing included). chainer's route is `direct`: its
own connection to the origin leaves with its mark, or it would be captured again.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from netns import (
    LinkedPair,
    free_port_in,
    linked_pair,
    netns_curl,
    netns_popen,
    netns_run,
    nft_counter,
    start_dual_origin_in,
)
from realproxies import require_binary

pytestmark = [pytest.mark.interop, pytest.mark.netns, pytest.mark.slow]

NAME = "v6.lab.test"
LINE_WAIT = 10.0


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LinkedPair, Path]]:
    workdir = tmp_path_factory.mktemp("transparent-v6")
    with linked_pair(hosts_extra=f"2001:db8:2::2\t{NAME}\n") as pair:
        for listen in (pair.right_v6, pair.right_v4):
            start_dual_origin_in(pair.right, listen, workdir / "origin", 80, "right:")
        yield pair, workdir


@dataclass(frozen=True)
class Chainer:
    mode: str
    log: Path

    def lines_since(self, since: int) -> list[str]:
        text = self.log.read_text(errors="replace")[since:]
        return [line for line in text.splitlines() if "chainer.access" in line]

    def wait_line(self, needle: str, since: int) -> str:
        deadline = time.monotonic() + LINE_WAIT
        while True:
            found = [line for line in self.lines_since(since) if needle in line]
            if found:
                return found[0]
            if time.monotonic() >= deadline:
                raise AssertionError(f"no access line with {needle!r}: {self.lines_since(since)}")
            time.sleep(0.05)

    def size(self) -> int:
        return len(self.log.read_text(errors="replace"))


def shell_in(ns: str, command: str) -> None:
    done = netns_run(ns, ["sh", "-c", command], timeout=20)
    assert done.returncode == 0, (command, done.stderr.decode(errors="replace"))


@pytest.fixture(scope="module", params=["redirect", "tproxy"])
def chainer(request: pytest.FixtureRequest, pair: tuple[LinkedPair, Path]) -> Iterator[Chainer]:
    require_binary("nft")
    mode: str = request.param
    net, workdir = pair
    port = free_port_in(net.left, "127.0.0.1")
    config = workdir / f"routes-{mode}.yaml"
    config.write_text(
        "listen:\n"
        f"  - {{address: '[::]:{port}', transparent: {mode}, capture: {{uids: all}}}}\n"
        "routes: [{match: '*', via: direct}]\n"
    )
    log = workdir / f"chainer-{mode}.log"
    command = [sys.executable, "-m", "chainer"]
    proc = netns_popen(net.left, [*command, "serve", "-c", str(config)], log, ready=("::1", port))
    rules = " ".join([*command, "rules", "-c", str(config)])
    with proc:
        shell_in(net.left, f"{rules} | nft -f -")
        if mode == "tproxy":
            shell_in(net.left, f"{rules} --routing | sh")
        try:
            yield Chainer(mode, log)
        finally:
            shell_in(net.left, f"{rules} --delete | nft -f -")
            if mode == "tproxy":
                shell_in(net.left, f"{rules} --routing --delete | sh")


@pytest.mark.parametrize(
    ("url", "original", "dest", "sniffed"),
    [
        ("http://[2001:db8:2::2]/v6", "[2001:db8:2::2]:80", "[2001:db8:2::2]:80", "none"),
        (f"http://{NAME}/name", "[2001:db8:2::2]:80", f"{NAME}:80", "host"),
        ("http://198.18.2.2/v4", "198.18.2.2:80", "198.18.2.2:80", "none"),
    ],
    ids=["ipv6-address", "ipv6-by-name", "ipv4"],
)
def test_captured_and_delivered(
    pair: tuple[LinkedPair, Path],
    chainer: Chainer,
    url: str,
    original: str,
    dest: str,
    sniffed: str,
) -> None:
    net, _ = pair
    chain = f"{chainer.mode}_local"
    marked = nft_counter(net.left, chain, "chainer itself")
    since = chainer.size()
    result = netns_curl(net.left, url)
    path = url.rsplit("/", 1)[1]
    assert (result.returncode, result.body) == (0, f"right:/{path}".encode()), result.stderr
    line = chainer.wait_line(f"original={original}", since)
    assert f"dest={dest}" in line, line
    assert f"inbound={chainer.mode} sniffed={sniffed}" in line, line
    assert "via=direct" in line, line
    assert len(chainer.lines_since(since)) == 1  # chainer's own connection was not captured
    assert nft_counter(net.left, chain, "chainer itself") > marked
