"""Turn a captured reply (IP packet bytes) into an observation about one probed port.

Pure: no sockets, so every rule is unit-tested with packet bytes. The mapping to
nmap's port states is explicit (``nmap_state``) and cross-checked on the lab.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum

from harden.types import Address, Family, Proto


class PortState(StrEnum):
    """What a probe drew from the target."""

    OPEN = "open"  # SYN-ACK, or a UDP reply
    CLOSED = "closed"  # RST, or ICMP port-unreachable to UDP: the port's stack answered
    REJECTED = "rejected"  # any other ICMP unreachable (admin-prohibited, ...): a filter answered
    SILENT = "silent"  # nothing, after retries


class Reason(StrEnum):
    """Why a reply means what it means: verdicts are decided on this, never on text."""

    SYN_ACK = "syn-ack"
    CONNECTED = "connected"  # connect mode: a completed handshake
    UDP_REPLY = "udp reply"
    RST = "rst"
    REFUSED = "refused"  # connect mode: ECONNREFUSED (an RST or ICMP port-unreachable)
    PORT_UNREACHABLE = "port-unreachable"  # ICMP(v6) port-unreachable
    PROHIBITED = "prohibited"  # ICMP admin-/host-/net-prohibited: a reject rule answered
    UNREACHABLE = "unreachable"  # any other ICMP(v6) destination-unreachable code
    UNREACHABLE_UNSEEN = "unreachable-unseen"  # connect mode: an unreachable, code not visible


@dataclass(frozen=True)
class Reply:
    """One reply matched to the probe that caused it."""

    family: Family
    proto: Proto
    port: int  # the target port the probe went to
    sport: int  # our source port in the probe (tells rounds and stray traffic apart)
    reason: Reason
    icmp_code: int | None = None  # the ICMP(v6) unreachable code, when seen
    ack: int | None = None  # TCP: the acknowledgement number (our sequence + 1)
    # The address the reply came from, when it is not the probed one: a host answers
    # from the address its routing picks (docs/design.md, "Capturing replies").
    responder: Address | None = None

    @property
    def state(self) -> PortState:
        """The port state this reply shows."""
        if self.reason is Reason.PORT_UNREACHABLE and self.proto == "tcp":
            return PortState.REJECTED  # no kernel answers TCP with port-unreachable: a rule did
        return _STATE.get(self.reason, PortState.REJECTED)

    @property
    def is_icmp_error(self) -> bool:
        """Whether the target answered with an ICMP error (spends its rate-limit budget)."""
        if self.reason is Reason.REFUSED:
            return self.proto == "udp"  # to TCP, ECONNREFUSED is an RST
        return self.reason in _ICMP_REASONS

    @property
    def detail(self) -> str:
        """Display text, e.g. ``icmp admin-prohibited`` (never used to decide a verdict)."""
        if self.icmp_code is not None:
            names = ICMP_UNREACH if self.family == 4 else ICMP6_UNREACH
            prefix = "icmp" if self.family == 4 else "icmpv6"
            text = f"{prefix} {names.get(self.icmp_code, f'code-{self.icmp_code}')}"
        else:
            text = _DETAIL.get(self.reason, self.reason.value)
        return text if self.responder is None else f"{text} from {self.responder}"


_STATE = {
    Reason.SYN_ACK: PortState.OPEN,
    Reason.CONNECTED: PortState.OPEN,
    Reason.UDP_REPLY: PortState.OPEN,
    Reason.RST: PortState.CLOSED,
    Reason.REFUSED: PortState.CLOSED,
    # Port-unreachable to UDP is the kernel's own answer: the datagram reached the UDP
    # layer. To TCP no kernel sends it; only a reject rule does (Reply.state).
    Reason.PORT_UNREACHABLE: PortState.CLOSED,
}
_ICMP_REASONS = frozenset(
    {Reason.PORT_UNREACHABLE, Reason.PROHIBITED, Reason.UNREACHABLE, Reason.UNREACHABLE_UNSEEN}
)
_DETAIL = {
    Reason.REFUSED: "refused (rst or icmp port-unreachable)",
    Reason.UNREACHABLE_UNSEEN: "icmp unreachable (its code is not visible without raw sockets)",
}
# The reasons a `closed: reject` host should give: its reject rule's admin-prohibited
# (raw), or an unreachable whose code connect mode cannot see.
REJECT_REASONS = frozenset({Reason.PROHIBITED, Reason.UNREACHABLE_UNSEEN})


@dataclass(frozen=True)
class EchoReply:
    """An ICMP/ICMPv6 echo reply from the target."""

    family: Family
    ident: int


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
_PROHIBITED4 = frozenset({9, 10, 13})  # net-, host-, admin-prohibited
_PROHIBITED6 = frozenset({1})  # administratively prohibited
# From an address other than the target, these say a router could not deliver the
# probe: nothing about the port, and no sign that a host is there.
_NO_ROUTE4 = frozenset({0, 1, 5, 6, 7, 8, 11, 12})
_NO_ROUTE6 = frozenset({0, 2, 3})
_PROTO: dict[int, Proto] = {6: "tcp", 17: "udp"}
_TCP_SYN, _TCP_RST, _TCP_ACK = 0x02, 0x04, 0x10


def classify(
    packet: bytes, target: Address, others: Collection[Address] = ()
) -> Reply | EchoReply | None:
    """Classify an IP packet as an answer to a probe sent to ``target``; None if it is not.

    Replies are matched by what they answer, not by where they came from
    (docs/design.md, "Capturing replies"): a TCP or UDP segment counts from any
    address but ``others`` (the run's other targets, whose own replies they are),
    and the caller matches its ports to a round; an ICMP error counts when the probe
    it quotes went to ``target``, from whichever address sent it, except a router's
    no-route codes, which say nothing about a port. An echo reply counts only from
    ``target`` itself. A reply from another address names it (``Reply.responder``).
    """
    try:
        if packet and packet[0] >> 4 == 4 and target.version == 4:
            return _classify4(packet, target, others)
        if packet and packet[0] >> 4 == 6 and target.version == 6:
            return _classify6(packet, target, others)
    except (struct.error, IndexError, ValueError):
        return None  # truncated or malformed: not something we sent
    return None


def _classify4(
    packet: bytes, target: Address, others: Collection[Address]
) -> Reply | EchoReply | None:
    ihl = (packet[0] & 0x0F) * 4
    proto = packet[9]
    source = ipaddress.IPv4Address(packet[12:16])
    responder = None if source == target else source
    body = packet[ihl:]
    if proto in _PROTO:
        if responder is not None and responder in others:
            return None
        return _transport(4, _PROTO[proto], body, responder)
    if proto == 1:
        kind, code = body[0], body[1]
        if kind == 0 and responder is None:
            return EchoReply(4, struct.unpack("!H", body[4:6])[0])
        if kind == 3 and (responder is None or code not in _NO_ROUTE4):
            quoted = body[8:]
            qihl = (quoted[0] & 0x0F) * 4
            qproto = _PROTO.get(quoted[9])
            if qproto is None or ipaddress.IPv4Address(quoted[16:20]) != target:
                return None
            sport, dport = struct.unpack("!HH", quoted[qihl : qihl + 4])
            reason = _icmp_reason(code, 3, _PROHIBITED4)
            return Reply(4, qproto, dport, sport, reason, code, responder=responder)
    return None


def _classify6(
    packet: bytes, target: Address, others: Collection[Address]
) -> Reply | EchoReply | None:
    nxt = packet[6]
    source = ipaddress.IPv6Address(packet[8:24])
    responder = None if source == target else source
    body = packet[40:]
    if nxt in _PROTO:
        if responder is not None and responder in others:
            return None
        return _transport(6, _PROTO[nxt], body, responder)
    if nxt == 58:
        kind, code = body[0], body[1]
        if kind == 129 and responder is None:
            return EchoReply(6, struct.unpack("!H", body[4:6])[0])
        if kind == 1 and (responder is None or code not in _NO_ROUTE6):
            quoted = body[8:]
            qproto = _PROTO.get(quoted[6])
            if qproto is None or ipaddress.IPv6Address(quoted[24:40]) != target:
                return None
            sport, dport = struct.unpack("!HH", quoted[40:44])
            reason = _icmp_reason(code, 4, _PROHIBITED6)
            return Reply(6, qproto, dport, sport, reason, code, responder=responder)
    return None


def _icmp_reason(code: int, port_unreachable: int, prohibited: frozenset[int]) -> Reason:
    if code == port_unreachable:
        return Reason.PORT_UNREACHABLE
    return Reason.PROHIBITED if code in prohibited else Reason.UNREACHABLE


def _transport(
    family: Family, proto: Proto, body: bytes, responder: Address | None
) -> Reply | None:
    sport, dport = struct.unpack("!HH", body[:4])  # target port, our port
    if proto == "udp":
        return Reply(family, "udp", sport, dport, Reason.UDP_REPLY, responder=responder)
    ack = struct.unpack("!I", body[8:12])[0]
    flags = body[13]
    if flags & _TCP_SYN and flags & _TCP_ACK:
        return Reply(family, "tcp", sport, dport, Reason.SYN_ACK, ack=ack, responder=responder)
    if flags & _TCP_RST:
        return Reply(family, "tcp", sport, dport, Reason.RST, ack=ack, responder=responder)
    return None


# The state and reason nmap (-sS / -sU) gives the same reply: the one map harden has,
# cross-checked against nmap on the lab (tests/test_verify_lab.py).
NMAP: dict[tuple[Proto, PortState], tuple[str, str]] = {
    ("tcp", PortState.OPEN): ("open", "syn-ack"),
    ("tcp", PortState.CLOSED): ("closed", "reset"),
    ("tcp", PortState.REJECTED): ("filtered", "admin-prohibited"),
    ("tcp", PortState.SILENT): ("filtered", "no-response"),
    ("udp", PortState.OPEN): ("open", "udp-response"),
    ("udp", PortState.CLOSED): ("closed", "port-unreach"),
    ("udp", PortState.REJECTED): ("filtered", "admin-prohibited"),
    ("udp", PortState.SILENT): ("open|filtered", "no-response"),
}


def nmap_state(proto: Proto, state: PortState) -> str:
    """The port state nmap (-sS / -sU) reports for the same observation."""
    return NMAP[(proto, state)][0]
