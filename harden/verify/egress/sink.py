"""``harden sink``: what a hardened host's egress probes delivered here.

Runs on the cooperating sink host. One packet socket on every interface records every
TCP SYN and UDP datagram that arrives (before this host's own firewall, so nothing needs
to listen), from the given sources or from anyone. It prints a ready line when the
capture is open, captures until its standard input closes (the verifier is done) or
``--duration`` runs out, and then prints what arrived as one JSON document
(docs/design.md, "Egress").
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any, TextIO

from harden.errors import EnvironmentProblem
from harden.manifest.ports import compress
from harden.types import Address
from harden.verify.engine.capture import ETH_P_ALL, RCVBUF, attach_filter

SCHEMA = "harden.sink/1"
READY = "harden sink: capturing"
PACKET_OUTGOING = 4  # linux/if_packet.h: what this host sent itself
CONTROL_TYPE = 3  # ICMP destination unreachable: the verifier's control packet
CONTROL6_TYPE = 1


@dataclass
class Arrivals:
    """What arrived, per (destination, protocol): the destination ports."""

    ports: dict[tuple[str, str], set[int]] = field(default_factory=dict)
    sources: set[str] = field(default_factory=set)
    control: set[str] = field(default_factory=set)  # destinations a control packet reached
    packets: int = 0

    def add(self, packet: bytes) -> None:
        """Record one IP packet (a SYN, a datagram or an ICMP error; others are ignored)."""
        parsed = _parse(packet)
        if parsed is None:
            return
        src, dst, proto, port = parsed
        self.packets += 1
        self.sources.add(src)
        if proto == "control":
            self.control.add(dst)
        else:
            self.ports.setdefault((dst, proto), set()).add(port)

    def to_json(self, seconds: float, sources: Iterable[Address]) -> dict[str, Any]:
        """The ``harden.sink/1`` document ``harden verify --egress`` reads."""
        arrived: dict[str, dict[str, list[str]]] = {}
        for (dst, proto), ports in sorted(self.ports.items()):
            arrived.setdefault(dst, {})[proto] = [str(r) for r in compress(sorted(ports))]
        return {
            "schema": SCHEMA,
            "from": sorted(str(s) for s in sources),
            "seconds": round(seconds, 3),
            "packets": self.packets,
            "senders": sorted(self.sources),
            "control": sorted(self.control),
            "arrived": arrived,
        }


def _parse(packet: bytes) -> tuple[str, str, str, int] | None:
    """(source, destination, "tcp"/"udp"/"control", port) of a SYN, datagram or control."""
    version = packet[0] >> 4 if packet else 0
    if version == 4 and len(packet) >= 20:
        ihl = (packet[0] & 0x0F) * 4
        proto, src, dst, body = packet[9], packet[12:16], packet[16:20], packet[ihl:]
    elif version == 6 and len(packet) >= 40:
        proto, src, dst, body = packet[6], packet[8:24], packet[24:40], packet[40:]
    else:
        return None
    source, destination = str(ip_address(src)), str(ip_address(dst))
    if proto == 6 and len(body) >= 14:
        flags = body[13]
        if flags & 0x02 and not flags & 0x10:  # SYN without ACK: a new connection
            return source, destination, "tcp", int.from_bytes(body[2:4], "big")
    elif proto == 17 and len(body) >= 8:
        return source, destination, "udp", int.from_bytes(body[2:4], "big")
    elif (proto, body[:1]) in ((1, bytes([CONTROL_TYPE])), (58, bytes([CONTROL6_TYPE]))):
        return source, destination, "control", 0
    return None


def capture(
    sources: Iterable[Address], duration: float, stdin: TextIO, out: TextIO, linger: float = 1.0
) -> Arrivals:
    """Capture until ``stdin`` closes or ``duration`` passes, then ``linger`` seconds more."""
    sources = sorted(set(sources), key=str)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise EnvironmentProblem(
            "harden sink captures from a packet socket: run it as root (CAP_NET_RAW)"
        ) from None
    arrivals = Arrivals()
    stop = threading.Event()
    try:
        sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root)
        expr = " or ".join(f"src host {a}" for a in sources) if sources else "ip or ip6"
        attach_filter(sock, expr, "every interface")
        sock.settimeout(0.05)
        thread = threading.Thread(target=_receive, args=(sock, arrivals, stop), daemon=True)
        thread.start()
        out.write(READY + "\n")
        out.flush()
        _wait_for_eof(stdin, time.monotonic() + duration)
        time.sleep(linger)
        stop.set()
        thread.join(timeout=2)
    finally:
        sock.close()
    return arrivals


def _receive(sock: socket.socket, arrivals: Arrivals, stop: threading.Event) -> None:
    buf = bytearray(65536)
    while not stop.is_set():
        try:
            n, address = sock.recvfrom_into(buf)
        except TimeoutError:
            continue
        except OSError:
            return
        if address[2] != PACKET_OUTGOING:
            arrivals.add(bytes(buf[:n]))


def _wait_for_eof(stdin: TextIO, deadline: float) -> None:
    """Return when ``stdin`` reaches its end or at ``deadline``."""
    try:
        fd = stdin.fileno()
    except (OSError, ValueError):  # no real stdin: the duration alone bounds the capture
        time.sleep(max(0.0, deadline - time.monotonic()))
        return
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready and not os.read(fd, 4096):
            return
