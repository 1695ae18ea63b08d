"""Targeted probes: the few packets the model says a sweep cannot send (scapy, raw sockets).

A sweep probes from one random high source port; a rule that accepts by source port
(``tcp sport 53 accept``, ufw's udp/68 from port 67) answers only a probe from that port.
The target's analysis (harden.analysis.crosscheck) names them; each is sent once, and
what came back is compared with the model in the report. docs/design.md, "The model
beside the probes".
"""

from __future__ import annotations

import random
from typing import Any

from harden.analysis.crosscheck import Targeted
from harden.types import Family
from harden.verify.plan import Target


def send_targeted(
    probes: list[Targeted], targets: dict[Family, Target], wait: float
) -> list[tuple[Targeted, str | None]]:
    """Send each probe to its family's target; what each got: open, closed, rejected or None."""
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.sendrecv import sr

    sent: list[tuple[Targeted, Any]] = []
    for probe in probes:
        target = targets.get(probe.family)
        if target is None:
            continue
        layer3 = IP if probe.family == 4 else IPv6
        head = layer3(src=str(target.source), dst=str(target.address))
        body: Any
        if probe.proto == "tcp":
            seq = random.getrandbits(32)
            body = TCP(sport=probe.sport, dport=probe.dport, flags="S", seq=seq, window=1024)
        else:
            body = UDP(sport=probe.sport, dport=probe.dport) / b"harden targeted probe"
        sent.append((probe, head / body))
    if not sent:
        return []
    answered, _ = sr([packet for _, packet in sent], timeout=wait, retry=1, verbose=0)
    got = {id(query): _answer(reply) for query, reply in answered}
    # scapy hands back the packets it sent (or copies with the same fields): match by both.
    out = []
    for probe, packet in sent:
        answer = got.get(id(packet))
        if answer is None:
            answer = next((_answer(r) for q, r in answered if bytes(q) == bytes(packet)), None)
        out.append((probe, answer))
    return out


def _answer(reply: Any) -> str:
    """Open (SYN-ACK, a UDP reply), closed (RST, port unreachable) or rejected (other ICMP)."""
    from scapy.layers.inet import ICMP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6DestUnreach

    # Errors first: they quote the probe, whose TCP or UDP header scapy also finds.
    if reply.haslayer(ICMP):
        return "closed" if (reply[ICMP].type, reply[ICMP].code) == (3, 3) else "rejected"
    if reply.haslayer(ICMPv6DestUnreach):
        return "closed" if reply[ICMPv6DestUnreach].code == 4 else "rejected"
    if reply.haslayer(TCP):
        return "open" if int(reply[TCP].flags) & 0x12 == 0x12 else "closed"
    return "open" if reply.haslayer(UDP) else "rejected"
