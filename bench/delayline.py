"""A wire with a delay: TUN device pairs whose packets this process holds for a while.

How this works. This kernel has no `sch_netem`, so a link's delay is made in user space.
For each link `NS_A:DEV_A:NS_B:DEV_B` given on the command line, this process creates a
TUN device (`IFF_TUN | IFF_NO_PI`: whole IP packets, no header) in each of the two
network namespaces — it joins each namespace with `setns(2)` just long enough to create
the device there, then returns to its own — and relays every packet one device reads to
the other device, `--delay` seconds after it read it. The namespaces' kernels see an
ordinary point-to-point link: TCP's handshakes, ACKs and retransmissions all cross it
and all wait. Packets are never reordered or dropped (one FIFO per direction, every
packet the same delay); a queue over `--queue` packets drops new ones, as a full link would.

The devices vanish when this process exits (they are not persistent), so a crash cannot
leave links behind. It prints `ready` on stdout once every device exists, then runs
until stdin closes or SIGTERM. The caller (netlab.py) gives the devices their addresses.

Timing: one epoll loop. epoll waits in whole milliseconds, rounded up, so a packet is
sent when it is due within half a millisecond either side; the process asks for
SCHED_FIFO (root) so that a busy machine does not add its scheduling delay to the wire.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
MTU_READ = 65536
EARLY = 0.0005  # send a packet this much before it is due (epoll rounds its wait up)


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_tun(ns: str, name: str, home: int) -> int:
    """A TUN device `name` created inside namespace `ns`; its fd (non-blocking)."""
    target = os.open(f"/run/netns/{ns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target)
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
            ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
        finally:
            _setns(home)
    finally:
        os.close(target)
    return fd


class Wire:
    """Both directions of every link: fd -> (peer fd, FIFO of (due, packet))."""

    def __init__(self, delay: float, queue: int) -> None:
        self.delay = delay
        self.queue = queue
        self.peer: dict[int, int] = {}
        self.fifo: dict[int, collections.deque[tuple[float, bytes]]] = {}
        self.dropped = 0

    def add(self, a: int, b: int) -> None:
        self.peer[a], self.peer[b] = b, a
        self.fifo[a], self.fifo[b] = collections.deque(), collections.deque()

    def take(self, fd: int, now: float) -> None:
        """Read every packet `fd` has now; each is due at now + delay on its peer."""
        out = self.fifo[fd]
        for _ in range(256):  # bounded: the rest waits for the next round of the loop
            try:
                packet = os.read(fd, MTU_READ)
            except BlockingIOError:
                return
            if len(out) >= self.queue:
                self.dropped += 1
                continue
            out.append((now + self.delay, packet))

    def send_due(self, now: float) -> float | None:
        """Write what is due; the time the next packet falls due (None: nothing held)."""
        soonest: float | None = None
        for fd, out in self.fifo.items():
            peer = self.peer[fd]
            while out and out[0][0] <= now + EARLY:
                _, packet = out.popleft()
                try:
                    os.write(peer, packet)
                except OSError:
                    self.dropped += 1  # the device is down (its namespace is going away)
            if out and (soonest is None or out[0][0] < soonest):
                soonest = out[0][0]
        return soonest


def run(links: list[tuple[str, str, str, str]], delay: float, queue: int) -> None:
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    wire = Wire(delay, queue)
    poller = select.epoll()
    for ns_a, dev_a, ns_b, dev_b in links:
        a, b = open_tun(ns_a, dev_a, home), open_tun(ns_b, dev_b, home)
        wire.add(a, b)
        poller.register(a, select.EPOLLIN)
        poller.register(b, select.EPOLLIN)
    os.close(home)
    try:  # stdin closing is the stop signal, when stdin is something epoll can watch
        poller.register(sys.stdin.fileno(), select.EPOLLIN | select.EPOLLHUP)
    except PermissionError:
        pass  # (/dev/null: regular files cannot be polled)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        pass  # not root: the machine's load may then add to the delay
    print("ready", flush=True)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    soonest: float | None = None
    while not stopping:
        timeout = -1.0 if soonest is None else max(0.0, soonest - EARLY - time.monotonic())
        try:
            events = poller.poll(timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        for fd, _mask in events:
            if fd == sys.stdin.fileno():
                stopping = True
            else:
                wire.take(fd, now)
        soonest = wire.send_due(time.monotonic())
    print(f"dropped {wire.dropped}", file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("links", nargs="+", help="NS_A:DEV_A:NS_B:DEV_B")
    parser.add_argument("--delay", type=float, default=0.005, help="seconds, each way")
    parser.add_argument("--queue", type=int, default=4096, help="packets held per direction")
    args = parser.parse_args()
    links = []
    for text in args.links:
        parts = text.split(":")
        if len(parts) != 4:
            parser.error(f"bad link {text!r}: want NS_A:DEV_A:NS_B:DEV_B")
        links.append((parts[0], parts[1], parts[2], parts[3]))
    run(links, args.delay, args.queue)


if __name__ == "__main__":
    main()
