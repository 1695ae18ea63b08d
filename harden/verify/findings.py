"""What a verification observed, per target and protocol (plain data; the engine fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from harden.types import Address, Proto, Sent
from harden.verify.classify import Reply
from harden.verify.plan import Target
from harden.verify.witness import Observed

Mode = Literal["raw", "connect"]


@dataclass
class Findings:
    """What each (target, protocol, port) answered; absent = silent."""

    replies: dict[tuple[Target, Proto], dict[int, Reply]] = field(default_factory=dict)
    echo: dict[Address, bool] = field(default_factory=dict)  # absent: ping not checked
    sent: dict[Sent, int] = field(default_factory=dict)  # probes sent, by kind
    # The same, per target address: a witness vouches only for its own host's addresses.
    sent_to: dict[Address, dict[Sent, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # Silent ports here are not proven silent, and why: the target's ICMP budget ran
    # out ("unprobed"), or its rate limit is too slow to wait for.
    unproven: dict[tuple[Target, Proto], str] = field(default_factory=dict)
    # Premises the silence of (target, protocol) rests on, unless the witness checks it
    # (docs/design.md, "The verdict rule").
    premises: dict[tuple[Target, Proto], list[str]] = field(default_factory=dict)
    # Proof that a host is there, sent during this run: what it sent us, or its answer
    # to an ARP request or neighbour solicitation sent now (then also in link_only).
    alive: dict[Address, str] = field(default_factory=dict)
    link_only: set[Address] = field(default_factory=set)
    # What the target's witness counters saw over the run (verify --witness), if asked.
    witness: Observed | None = None
    seconds: float = 0.0
    mode: Mode = "raw"
    # Where the time went: "send", "reply_wait", "quiet_wait" (seconds, summed).
    timing: dict[str, float] = field(default_factory=dict)
