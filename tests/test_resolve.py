"""The resolver for direct routes: one slow zone cannot stall other lookups (per-zone and
total bounds, a pool of its own), concurrent lookups of one name are shared, a waiter
that gives up returns at once while its lookup keeps its slot until it ends."""

from __future__ import annotations

import socket
import threading
from typing import Any

import anyio
import pytest

from chainer.outbound.resolve import Resolver, zone_of

pytestmark = pytest.mark.anyio


class BlockingDNS:
    """getaddrinfo whose names under `slow` zones block until released."""

    def __init__(self, slow: str) -> None:
        self.slow = slow
        self.release = threading.Event()
        self.asked: list[str] = []
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def __call__(self, host: str, port: Any, *args: Any) -> list[tuple[Any, ...]]:
        with self._lock:
            self.asked.append(host)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if host.endswith(self.slow):
                self.release.wait(10)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port or 0))]
        finally:
            with self._lock:
                self.running -= 1


@pytest.mark.parametrize(
    ("host", "zone"),
    [
        ("a.b.example.com", "example.com"),
        ("x.example.co.uk", "example.co.uk"),
        ("deep.name.lab.corp.example", "corp.example"),
        ("localhost", "localhost"),
    ],
)
def test_zone_of(host: str, zone: str) -> None:
    assert zone_of(host) == zone


async def test_a_zone_that_never_answers_does_not_stall_another() -> None:
    dns = BlockingDNS("slow.test")
    resolver = Resolver(total=16, per_zone=3, getaddrinfo=dns)
    try:
        async with anyio.create_task_group() as tg:
            for i in range(12):  # twice the old default pool's threads
                tg.start_soon(resolver.getaddrinfo, f"n{i}.slow.test", 443)
            await anyio.sleep(0.1)
            with anyio.fail_after(2):
                answer = await resolver.getaddrinfo("www.fast.test", 443)
            assert answer[0][4][0] == "192.0.2.1"
            assert dns.most <= 3 + 1  # three from the slow zone, and the fast one
            dns.release.set()
    finally:
        resolver.close()
    assert sorted(dns.asked).count("www.fast.test") == 1
    assert len(dns.asked) == 13


async def test_concurrent_lookups_of_one_name_are_shared() -> None:
    dns = BlockingDNS("shared.test")
    resolver = Resolver(getaddrinfo=dns)
    results: list[Any] = []
    try:

        async def one() -> None:
            results.append(await resolver.getaddrinfo("www.shared.test", 80))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(one)
            await anyio.sleep(0.1)
            dns.release.set()
    finally:
        resolver.close()
    assert dns.asked == ["www.shared.test"]
    assert len(results) == 5


async def test_a_waiter_that_gives_up_leaves_at_once_but_the_slot_stays_taken() -> None:
    dns = BlockingDNS("stuck.test")
    resolver = Resolver(per_zone=1, getaddrinfo=dns)
    try:
        with anyio.move_on_after(0.2) as scope:
            await resolver.getaddrinfo("a.stuck.test", 80)
        assert scope.cancelled_caught  # it gave up on time
        # the zone's one slot is still held by the lookup that cannot be stopped
        with anyio.move_on_after(0.2) as second:
            await resolver.getaddrinfo("b.stuck.test", 80)
        assert second.cancelled_caught
        assert dns.asked == ["a.stuck.test"]
        dns.release.set()
        with anyio.fail_after(5):
            await resolver.getaddrinfo("c.stuck.test", 80)  # free again
    finally:
        dns.release.set()
        resolver.close()
