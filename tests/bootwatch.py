"""Watch a host boot from its link: does any closed port answer before the firewall loads?

    python -m tests.bootwatch DEV TARGET_IPV4 SECONDS PORT [PORT ...]

Run as root in a namespace on the target's link (the VM lab's bridge). Every 50 ms it sends
a TCP SYN and a UDP datagram to each PORT (closed ports of the target's manifest) and a SYN
to tcp/22; it captures everything the target sends. From the moment the target first
answers ARP (its interface is up) it counts every RST to a probed port and every ICMP
destination-unreachable: a boot that loads the rules before the interface comes up has
none. It stops a few seconds after tcp/22 answers with a SYN-ACK (SSH is up), or after
SECONDS, and prints one JSON line.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import sys
import time

ETH_P_ALL = 0x0003
SETTLE = 5.0  # seconds of probing after SSH came up


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total & 0xFFFF) + (total >> 16)
    total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn(source: str, target: str, sport: int, dport: int) -> bytes:
    """A 20-byte TCP SYN header with its checksum (the kernel adds the IP header)."""
    header = struct.pack(
        "!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, 2, 1024, 0, 0
    )
    pseudo = socket.inet_aton(source) + socket.inet_aton(target) + struct.pack("!BBH", 0, 6, 20)
    return header[:16] + struct.pack("!H", _sum16(pseudo + header)) + header[18:]


def main(argv: list[str]) -> None:
    dev, target, seconds, ports = argv[0], argv[1], float(argv[2]), [int(p) for p in argv[3:]]
    capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    capture.bind((dev, ETH_P_ALL))
    capture.setblocking(False)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setblocking(False)
    udp.connect((target, 9))  # any port: learns our source address
    source = udp.getsockname()[0]
    sport = random.randint(40000, 60000)
    start = time.monotonic()
    arp_at = ssh_at = None
    replies: list[str] = []
    sent = 0
    packed = socket.inet_aton(target)
    while time.monotonic() - start < seconds:
        if ssh_at is not None and time.monotonic() - ssh_at > SETTLE:
            break
        for port in [*ports, 22]:
            try:
                raw.sendto(syn(source, target, sport, port), (target, 0))
                if port != 22:
                    udp.sendto(b"boot", (target, port))
                sent += 1
            except OSError:
                pass  # no neighbour yet: the kernel is still asking ARP
        deadline = time.monotonic() + 0.05
        while time.monotonic() < deadline:
            try:
                frame = capture.recv(65535)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            kind = frame[12:14]
            if kind == b"\x08\x06" and frame[28:32] == packed and arp_at is None:
                arp_at = time.monotonic() - start  # an ARP request or reply from the target
            if kind != b"\x08\x00" or frame[26:30] != packed:
                continue
            ip = frame[14:]
            body = ip[(ip[0] & 0x0F) * 4 :]
            if ip[9] == 6:
                from_port, flags = struct.unpack("!H", body[:2])[0], body[13]
                if from_port == 22 and flags & 0x12 == 0x12 and ssh_at is None:
                    ssh_at = time.monotonic()
                elif from_port in ports and flags & 0x04:
                    replies.append(f"tcp/{from_port} rst at {time.monotonic() - start:.2f} s")
            elif ip[9] == 1 and body[0] == 3:
                replies.append(f"icmp code {body[1]} at {time.monotonic() - start:.2f} s")
    print(
        json.dumps(
            {
                "arp_at": arp_at,
                "ssh_at": None if ssh_at is None else round(ssh_at - start, 2),
                "replies": replies,
                "probes": sent,
                "seconds": round(time.monotonic() - start, 2),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
