"""A point-to-point L3 tunnel between two lab namespaces: a tun device in each, relayed.

Run as ``python -m tests.tunrelay NS_A NS_B DEV SECONDS`` (root). A tun device has no
link-layer header (ARPHRD_NONE), as a WireGuard device has not: the shape of link a
capture that assumes Ethernet misreads. This kernel builds no ipip or wireguard module,
so the tunnel is a tun device in each namespace and this process copying packets
between them. Exits after SECONDS.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000


def tun_in(namespace: str, dev: str) -> int:
    """Enter ``namespace`` and attach a new fd to (or create) its tun device ``dev``."""
    with open(f"/run/netns/{namespace}") as ns:
        if ctypes.CDLL(None, use_errno=True).setns(ns.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {namespace}")
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def main() -> None:
    a, b, dev, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    one, two = tun_in(a, dev), tun_in(b, dev)
    peer = {one: two, two: one}
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        for fd in select.select(list(peer), [], [], left)[0]:
            packet = os.read(fd, 65536)
            # The other end not up yet: the packet is lost, as on a real link.
            with contextlib.suppress(OSError):
                os.write(peer[fd], packet)


if __name__ == "__main__":
    main()
