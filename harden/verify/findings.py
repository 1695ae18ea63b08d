"""What a verification observed, per target and protocol (plain data; the engine fills it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from harden.analysis.crosscheck import StaticCheck, Targeted
from harden.types import Address, Proto, Sent
from harden.verify.classify import Reply
from harden.verify.plan import Target
from harden.verify.witness import WitnessRun

Mode = Literal["raw", "connect"]


class Observed(StrEnum):
    """What a row observed: a reply state, or what showed (or did not) about a group."""

    OPEN = "open"
    CLOSED = "closed"
    REJECTED = "rejected"
    SILENT = "silent"
    OPEN_FILTERED = "open|filtered"  # UDP silence to an allowed port: nmap's word for it
    SILENT_WITNESSED = "silent, counted by the witness"
    SILENT_UNPROVEN = "silent-unproven"
    SILENT_NO_HOST = "silent, no host seen"
    NOT_PROBED = "not probed"
    NOTHING = "nothing"
    ECHO_REPLY = "echo-reply"
    ACCEPTED = "accepted"  # witness: probes to closed ports that something accepted
    NOT_COUNTED = "not counted"
    BLOCKED_ON_HOST = "blocked on the host"
    # The target's live ruleset, read by its witness (harden.analysis.crosscheck).
    ACCEPTED_BY_RULES = "accepted by the live rules"
    DROPPED_BY_RULES = "dropped by the live rules"
    UNPROBED = "unprobed"  # the target's ICMP budget ran out before these were probed
    # Egress.
    ARRIVED = "arrived"
    REFUSED = "refused"
    LOST = "lost"
    SENT = "sent"
    REFUSED_NOT_ARRIVED = "refused here, absent at the sink"


@dataclass(frozen=True)
class RejectedBy:
    """A reject that came from another address than the probed one (neither leak nor proof)."""

    responder: str

    def __str__(self) -> str:
        """As reports print it."""
        return f"rejected by {self.responder}, the target or a filter before it"


@dataclass(frozen=True)
class TooSlow:
    """Silent UDP ports the quiet rule could not wait out: the target's limit is too slow."""

    ms: int

    def __str__(self) -> str:
        """As reports print it."""
        return f"silent, ICMP rate limit of {self.ms} ms too slow to wait for"


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
    unproven: dict[tuple[Target, Proto], Observed | TooSlow] = field(default_factory=dict)
    # Premises the silence of (target, protocol) rests on, unless the witness checks it
    # (docs/design.md, "The verdict rule").
    premises: dict[tuple[Target, Proto], list[str]] = field(default_factory=dict)
    # Proof that a host is there, sent during this run: what it sent us, or its answer
    # to an ARP request or neighbour solicitation sent now (then also in link_only).
    alive: dict[Address, str] = field(default_factory=dict)
    link_only: set[Address] = field(default_factory=set)
    # What the target's witness counters saw over the run (verify --witness), if asked.
    witness: WitnessRun | None = None
    # The target's live ruleset judged against the manifest (with a witness that reports
    # it), and the targeted probes it called for with what each got (None: no answer).
    static: StaticCheck | None = None
    targeted: list[tuple[Targeted, str | None]] = field(default_factory=list)
    seconds: float = 0.0
    mode: Mode = "raw"
    # Where the time went: "send", "reply_wait", "quiet_wait" (seconds, summed).
    timing: dict[str, float] = field(default_factory=dict)
