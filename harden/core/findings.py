"""What a verification observed, per target and protocol (plain data; the engine fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from typing import Literal

from harden.core.classify import Proto, Reply
from harden.core.plan import Target

Address = IPv4Address | IPv6Address
Mode = Literal["raw", "connect"]


@dataclass
class Findings:
    """What each (target, protocol, port) answered; absent = silent."""

    replies: dict[tuple[Target, Proto], dict[int, Reply]] = field(default_factory=dict)
    echo: dict[Address, bool] = field(default_factory=dict)  # absent: ping not checked
    sent: dict[str, int] = field(default_factory=dict)  # "4/tcp/silent" -> probes sent
    notes: list[str] = field(default_factory=list)
    budget_limited: set[tuple[Target, Proto]] = field(default_factory=set)
    # Proof that a host is there: what it sent us, or its neighbour entry on our link.
    alive: dict[Address, str] = field(default_factory=dict)
    # The target's witness counters' increase over the run (verify --witness), if asked.
    witness: dict[str, int] | None = None
    seconds: float = 0.0
    mode: Mode = "raw"
    # Where the time went: "send", "reply_wait", "quiet_wait" (seconds, summed).
    timing: dict[str, float] = field(default_factory=dict)
