"""The small value types every layer shares: one definition each."""

from __future__ import annotations

from enum import StrEnum
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Literal, NamedTuple

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network
Family = Literal[4, 6]
Proto = Literal["tcp", "udp"]
FAMILIES: tuple[Family, ...] = (4, 6)
PROTOS: tuple[Proto, ...] = ("tcp", "udp")
# The name of a registered backend: harden.backends.REGISTRY holds them and their facts.
Backend = str


class Verdict(StrEnum):
    """A verification's outcome (docs/design.md, "The verdict rule")."""

    PASS = "pass"  # every covered port proven; every premise checked or stated
    FAIL = "fail"  # a deviation seen
    INCONCLUSIVE = "inconclusive"  # anything else


class Sent(NamedTuple):
    """Which probes a count of sent probes is of: family, protocol, what was expected."""

    family: Family
    proto: Proto
    expectation: str  # an Expect value: "allowed", "silent", "rejected", ...

    def __str__(self) -> str:
        """``4/udp/silent``: the key of ``sent`` in the JSON report."""
        return f"{self.family}/{self.proto}/{self.expectation}"

    @classmethod
    def parse(cls, text: str) -> Sent:
        """The key back from ``4/udp/silent`` (ValueError if it is not one)."""
        family, proto, expectation = text.split("/")
        if family not in ("4", "6") or proto not in ("tcp", "udp") or not expectation:
            raise ValueError(f"not a sent-probes key: {text!r}")
        return cls(4 if family == "4" else 6, "tcp" if proto == "tcp" else "udp", expectation)


def sent_counts(counts: dict[str, int]) -> dict[Sent, int]:
    """``{"4/udp/silent": n}`` as typed keys."""
    return {Sent.parse(key): n for key, n in counts.items()}
