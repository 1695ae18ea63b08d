"""Reply classification from packet bytes (scapy builds the packets, classify reads bytes)."""

from __future__ import annotations

from ipaddress import ip_address

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPerror, TCPerror, UDPerror
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    IPerror6,
    IPv6,
)

from harden.verify.classify import EchoReply, PortState, Reason, Reply, classify, nmap_state

T4, US4 = "198.19.254.1", "198.19.254.2"
T6, US6 = "fdff:18::1", "fdff:18::2"


def c(packet: object, target: str = T4) -> Reply | EchoReply | None:
    return classify(bytes(packet), ip_address(target))  # type: ignore[call-overload]


def test_syn_ack_is_open_and_carries_the_ack() -> None:
    reply = c(IP(src=T4, dst=US4) / TCP(sport=443, dport=40000, flags="SA", ack=1001))
    assert reply == Reply(4, "tcp", 443, 40000, Reason.SYN_ACK, ack=1001)
    assert reply.state is PortState.OPEN and reply.detail == "syn-ack"


def test_rst_is_closed() -> None:
    reply = c(IP(src=T4, dst=US4) / TCP(sport=8, dport=40000, flags="RA", ack=7))
    assert isinstance(reply, Reply) and reply.state is PortState.CLOSED and reply.port == 8


def test_udp_reply_is_open() -> None:
    reply = c(IP(src=T4, dst=US4) / UDP(sport=53, dport=41000) / b"x")
    assert isinstance(reply, Reply) and (reply.state, reply.port, reply.sport) == (
        PortState.OPEN,
        53,
        41000,
    )


def quoted(proto: object, code: int) -> bytes:
    return bytes(IP(src=T4, dst=US4) / ICMP(type=3, code=code) / IPerror(src=US4, dst=T4) / proto)


@pytest.mark.parametrize(
    ("code", "reason", "state", "detail"),
    [
        (3, Reason.PORT_UNREACHABLE, PortState.CLOSED, "icmp port-unreachable"),
        (13, Reason.PROHIBITED, PortState.REJECTED, "icmp admin-prohibited"),
        (10, Reason.PROHIBITED, PortState.REJECTED, "icmp host-prohibited"),
        (1, Reason.UNREACHABLE, PortState.REJECTED, "icmp host-unreachable"),
    ],
)
def test_icmp_unreachable_names_the_quoted_udp_port(
    code: int, reason: Reason, state: PortState, detail: str
) -> None:
    reply = classify(quoted(UDPerror(sport=41000, dport=161), code), ip_address(T4))
    assert reply == Reply(4, "udp", 161, 41000, reason, code)
    assert reply.state is state and reply.detail == detail and reply.is_icmp_error


def test_port_unreachable_for_tcp_is_a_reject_rule_not_a_stack_answer() -> None:
    reply = classify(quoted(TCPerror(sport=40000, dport=25, flags="S"), 3), ip_address(T4))
    assert isinstance(reply, Reply) and reply.state is PortState.REJECTED and reply.proto == "tcp"


def test_icmpv6_errors() -> None:
    for code, state in ((4, PortState.CLOSED), (1, PortState.REJECTED)):
        packet = (
            IPv6(src=T6, dst=US6)
            / ICMPv6DestUnreach(code=code)
            / IPerror6(src=US6, dst=T6)
            / UDPerror(sport=41000, dport=500)
        )
        reply = c(packet, T6)
        assert isinstance(reply, Reply)
        assert (reply.family, reply.proto, reply.port, reply.state) == (6, "udp", 500, state)
    packet = (
        IPv6(src=T6, dst=US6)
        / ICMPv6DestUnreach(code=1)
        / IPerror6(src=US6, dst=T6)
        / TCPerror(sport=40000, dport=22)
    )
    reply = c(packet, T6)
    assert isinstance(reply, Reply) and reply.detail == "icmpv6 admin-prohibited"


def test_v6_syn_ack_and_echo() -> None:
    reply = c(IPv6(src=T6, dst=US6) / TCP(sport=22, dport=40000, flags="SA", ack=5), T6)
    assert isinstance(reply, Reply) and reply.state is PortState.OPEN and reply.family == 6
    assert c(IPv6(src=T6, dst=US6) / ICMPv6EchoReply(id=77), T6) == EchoReply(6, 77)
    assert c(IP(src=T4, dst=US4) / ICMP(type=0, id=9), T4) == EchoReply(4, 9)


def test_replies_from_another_address_are_matched_by_what_they_answer() -> None:
    """A host answers from the address its routing picks: the reply counts, naming it."""
    elsewhere = "198.19.254.9"
    udp = c(IP(src=elsewhere, dst=US4) / UDP(sport=5000, dport=41000) / b"echo")
    assert isinstance(udp, Reply) and (udp.port, udp.sport) == (5000, 41000)
    assert udp.responder == ip_address(elsewhere) and udp.detail == f"udp reply from {elsewhere}"
    rst = c(IP(src=elsewhere, dst=US4) / TCP(sport=1, dport=2, flags="RA"))
    assert isinstance(rst, Reply) and rst.reason is Reason.RST
    # ... unless it is another target of the run: then it is that target's reply.
    packet = bytes(IP(src=elsewhere, dst=US4) / TCP(sport=1, dport=2, flags="SA"))
    assert classify(packet, ip_address(T4), {ip_address(elsewhere)}) is None
    # An ICMP error quoting a probe to the target, sent from another of its addresses.
    quoting = (
        IP(src=elsewhere, dst=US4)
        / ICMP(type=3, code=3)
        / IPerror(src=US4, dst=T4)
        / UDPerror(sport=41000, dport=161)
    )
    error = c(quoting)
    assert isinstance(error, Reply) and error.port == 161 and error.responder is not None
    # A router's "no route" says nothing about a port, nor that a host is there.
    for code in (0, 1):
        no_route = (
            IP(src=elsewhere, dst=US4)
            / ICMP(type=3, code=code)
            / IPerror(src=US4, dst=T4)
            / UDPerror(sport=41000, dport=161)
        )
        assert c(no_route) is None
    # An echo reply counts only from the address pinged.
    assert c(IP(src=elsewhere, dst=US4) / ICMP(type=0, id=7)) is None


def test_other_sources_and_junk_are_ignored() -> None:
    # An ICMP error about a probe to some other host is not about our target.
    other = (
        IP(src=T4, dst=US4)
        / ICMP(type=3, code=3)
        / IPerror(src=US4, dst="198.19.254.9")
        / UDPerror(sport=1, dport=2)
    )
    assert c(other) is None
    assert c(IP(src=T4, dst=US4) / TCP(sport=1, dport=2, flags="A")) is None
    assert classify(b"", ip_address(T4)) is None
    assert classify(bytes(IP(src=T4, dst=US4) / TCP())[:24], ip_address(T4)) is None


def test_nmap_states() -> None:
    assert nmap_state("tcp", PortState.OPEN) == "open"
    assert nmap_state("tcp", PortState.CLOSED) == "closed"
    assert nmap_state("tcp", PortState.REJECTED) == "filtered"
    assert nmap_state("tcp", PortState.SILENT) == "filtered"
    assert nmap_state("udp", PortState.SILENT) == "open|filtered"
    assert nmap_state("udp", PortState.CLOSED) == "closed"
