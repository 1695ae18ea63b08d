"""What the round engine needs from a way of probing: send a round, read its replies.

Two implementations: ``RawTransport`` (raw sockets and an AF_PACKET capture, needs
CAP_NET_RAW) and ``ConnectTransport`` (connect() and connected UDP sockets, any
user). Tests drive the engine with a scripted target behind the same protocol.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from harden.types import Address, Proto
from harden.verify.classify import Reply
from harden.verify.findings import Mode
from harden.verify.plan import Target

# Called with the number of probes sent since the last call.
OnSent = Callable[[int], None]  # told how many probes just went out


class Clock(Protocol):
    """Monotonic time; injectable so the engine's waits can be tested without waiting."""

    def now(self) -> float:
        """Seconds on a monotonic clock."""
        ...

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` pass."""
        ...


class SystemClock:
    """time.monotonic and time.sleep."""

    def now(self) -> float:
        """time.monotonic()."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """time.sleep(seconds), never negative."""
        time.sleep(max(0.0, seconds))


@dataclass(frozen=True)
class Round:
    """One sweep of probes to one target: what was sent and how to match its replies.

    Immutable: a transport builds it once the sweep is done, with what it learned while
    sending (``count``, and ``found`` for a blocking transport); the engine keeps a copy
    without ``ports`` (dataclasses.replace) for the final re-read.
    """

    target: Target
    proto: Proto
    source: Address
    ports: Sequence[int]
    since: float  # when sending began (clock time)
    sport: int = 0  # our source port (raw mode: matches replies to this round)
    seq: int | None = None  # TCP: our initial sequence number
    count: int = 0  # how many of ``ports`` (in order) went out
    found: dict[int, Reply] = field(default_factory=dict)  # filled by blocking transports


class Transport(Protocol):
    """A way of probing targets; the engine decides what to send and when."""

    mode: Mode
    can_ping: bool
    blocking: bool  # True: a send returns after its replies are in (no extra wait needed)
    parallel: bool  # True: sends to different targets may run in threads at once
    started: float  # when the transport began watching the targets (clock time)
    limitations: tuple[str, ...]  # notes the report must carry in this mode

    def ping(self, targets: Sequence[Target], ident: int) -> None:
        """Send one echo request to each target."""
        ...

    def echoed(self, since: float, ident: int) -> dict[Address, float]:
        """Address -> when its first echo reply with ``ident`` arrived (since ``since``)."""
        ...

    def send_tcp(self, target: Target, ports: Sequence[int], progress: OnSent | None) -> Round:
        """One SYN (or connect) per port from a fresh source port."""
        ...

    def send_udp(
        self, target: Target, source: Address, ports: Sequence[int], progress: OnSent | None
    ) -> Round:
        """One datagram per port from ``source``, from a fresh source port."""
        ...

    def replies(self, sent: Round) -> dict[int, Reply]:
        """Port -> the first reply to this round (duplicates and strays ignored)."""
        ...

    def heard_from(self, target: Target) -> str | None:
        """Evidence that ``target`` exists: the first thing it sent us, described."""
        ...

    def last_icmp_error(self, target: Target, source: Address) -> float | None:
        """When ``target`` last sent ``source`` an ICMP error that we saw (None: never)."""
        ...

    def close(self) -> None:
        """Release sockets and threads."""
        ...
