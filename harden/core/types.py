"""The small value types every layer shares: one definition each."""

from __future__ import annotations

from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Family = Literal[4, 6]
Proto = Literal["tcp", "udp"]
FAMILIES: tuple[Family, ...] = (4, 6)
PROTOS: tuple[Proto, ...] = ("tcp", "udp")
Backend = Literal["nftables", "iptables"]
BACKENDS: tuple[Backend, ...] = ("nftables", "iptables")


class Verdict(StrEnum):
    """A verification's outcome (docs/design.md, "The verdict rule")."""

    PASS = "pass"  # every covered port proven; every premise checked or stated
    FAIL = "fail"  # a deviation seen
    INCONCLUSIVE = "inconclusive"  # anything else
