"""Turn a captured reply (IP packet bytes) into an observation about one probed port.

Pure: no sockets, so every rule is unit-tested with packet bytes. The mapping to
nmap's port states is explicit (``nmap_state``) and cross-checked on the lab.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

Family = Literal[4, 6]
Proto = Literal["tcp", "udp"]


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class State(StrEnum):
    """What a probe drew from the target."""

    OPEN = "open"  # SYN-ACK, or a UDP reply
    CLOSED = "closed"  # RST, or ICMP port-unreachable to UDP: the port's stack answered
    REJECTED = "rejected"  # any other ICMP unreachable (admin-prohibited, ...): a filter answered
    SILENT = "silent"  # nothing, after retries


@dataclass(frozen=True)
class Reply:
    """One reply matched to the probe that caused it."""

    family: Family
    proto: Proto
    port: int  # the target port the probe went to
    sport: int  # our source port in the probe (tells rounds and stray traffic apart)
    state: State
    detail: str
    ack: int | None = None  # TCP: the acknowledgement number (our sequence + 1)


@dataclass(frozen=True)
class EchoReply:
    """An ICMP/ICMPv6 echo reply from the target."""

    family: Family
    ident: int


Parsed = Reply | EchoReply | None

ICMP_UNREACH = {
    0: "net-unreachable",
    1: "host-unreachable",
    2: "protocol-unreachable",
    3: "port-unreachable",
    4: "fragmentation-needed",
    9: "net-prohibited",
    10: "host-prohibited",
    13: "admin-prohibited",
}
ICMP6_UNREACH = {
    0: "no-route",
    1: "admin-prohibited",
    2: "beyond-scope",
    3: "address-unreachable",
    4: "port-unreachable",
    5: "policy-fail",
    6: "reject-route",
}
_PROTO: dict[int, Proto] = {6: "tcp", 17: "udp"}
_TCP_SYN, _TCP_RST, _TCP_ACK = 0x02, 0x04, 0x10


def classify(
    packet: bytes, target: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> Reply | EchoReply | None:
    """Classify an IP packet from ``target``; None if it is not a reply to a probe."""
    try:
        if packet and packet[0] >> 4 == 4:
            return _classify4(packet, target)
        if packet and packet[0] >> 4 == 6:
            return _classify6(packet, target)
    except (struct.error, IndexError, ValueError):
        return None  # truncated or malformed: not something we sent
    return None


def _classify4(
    packet: bytes, target: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> Reply | EchoReply | None:
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    if ipaddress.IPv4Address(packet[12:16]) != target:
        return None
    body = packet[ihl:]
    if proto in _PROTO:
        return _transport(4, _PROTO[proto], body)
    if proto == 1:
        kind, code = body[0], body[1]
        if kind == 0:
            return EchoReply(4, struct.unpack("!H", body[4:6])[0])
        if kind == 3:
            quoted = body[8:]
            qihl = (quoted[0] & 0x0F) * 4
            qproto = _PROTO.get(quoted[9])
            if qproto is None or ipaddress.IPv4Address(quoted[16:20]) != target:
                return None
            sport, dport = struct.unpack("!HH", quoted[qihl : qihl + 4])
            name = ICMP_UNREACH.get(code, f"code-{code}")
            return Reply(4, qproto, dport, sport, _icmp_state(qproto, code == 3), f"icmp {name}")
    return None


def _classify6(
    packet: bytes, target: ipaddress.IPv4Address | ipaddress.IPv6Address
) -> Reply | EchoReply | None:
    nxt = packet[6]
    if ipaddress.IPv6Address(packet[8:24]) != target:
        return None
    body = packet[40:]
    if nxt in _PROTO:
        return _transport(6, _PROTO[nxt], body)
    if nxt == 58:
        kind, code = body[0], body[1]
        if kind == 129:
            return EchoReply(6, struct.unpack("!H", body[4:6])[0])
        if kind == 1:
            quoted = body[8:]
            qproto = _PROTO.get(quoted[6])
            if qproto is None or ipaddress.IPv6Address(quoted[24:40]) != target:
                return None
            sport, dport = struct.unpack("!HH", quoted[40:44])
            name = ICMP6_UNREACH.get(code, f"code-{code}")
            return Reply(6, qproto, dport, sport, _icmp_state(qproto, code == 4), f"icmpv6 {name}")
    return None


def _icmp_state(proto: Proto, port_unreachable: bool) -> State:
    # Port-unreachable to UDP is the kernel's own answer: the datagram reached the UDP
    # layer. To TCP no kernel sends it; only a reject rule does, like admin-prohibited.
    return State.CLOSED if port_unreachable and proto == "udp" else State.REJECTED


def _transport(family: Family, proto: Proto, body: bytes) -> Reply | None:
    sport, dport = struct.unpack("!HH", body[:4])  # target port, our port
    if proto == "udp":
        return Reply(family, "udp", sport, dport, State.OPEN, "udp reply")
    ack = struct.unpack("!I", body[8:12])[0]
    flags = body[13]
    if flags & _TCP_SYN and flags & _TCP_ACK:
        return Reply(family, "tcp", sport, dport, State.OPEN, "syn-ack", ack)
    if flags & _TCP_RST:
        return Reply(family, "tcp", sport, dport, State.CLOSED, "rst", ack)
    return None


def nmap_state(proto: Proto, state: State) -> str:
    """The port state nmap (-sS / -sU) reports for the same observation."""
    if state is State.OPEN:
        return "open"
    if state is State.CLOSED:
        return "closed"
    if state is State.REJECTED:
        return "filtered"
    return "filtered" if proto == "tcp" else "open|filtered"
