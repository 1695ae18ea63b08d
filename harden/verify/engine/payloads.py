"""Protocol-appropriate UDP payloads: an empty datagram draws no answer from most services."""

from __future__ import annotations

from functools import cache


@cache
def udp_payloads() -> dict[int, bytes]:
    """Port -> a request the well-known service on that port answers."""
    from scapy.asn1.asn1 import ASN1_OID
    from scapy.layers.dns import DNS, DNSQR
    from scapy.layers.ntp import NTP
    from scapy.layers.snmp import SNMP, SNMPget, SNMPvarbind

    dns = bytes(DNS(rd=1, qd=DNSQR(qname="version.bind", qtype="TXT", qclass="CH")))
    snmp = bytes(
        SNMP(
            community="public",
            PDU=SNMPget(varbindlist=[SNMPvarbind(oid=ASN1_OID("1.3.6.1.2.1.1.1.0"))]),
        )
    )
    return {
        53: dns,
        5353: dns,
        123: bytes(NTP(version=4, mode=3)),
        161: snmp,
        1900: b"\r\n".join(
            [
                b"M-SEARCH * HTTP/1.1",
                b"HOST: 239.255.255.250:1900",
                b'MAN: "ssdp:discover"',
                b"MX: 1",
                b"ST: ssdp:all",
                b"",
                b"",
            ]
        ),
        # IKE, WireGuard, QUIC and others answer only well-formed handshakes; without a
        # reply a declared port is reported "open|filtered", never assumed open.
    }
