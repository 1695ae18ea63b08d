"""verify's options, typed: which ports, and how to probe (pure).

harden.request parses them once from the CLI or the API; the sweep, the egress proof and
the lab take them as they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from harden import defaults
from harden.errors import OptionConflict, OptionError
from harden.manifest.ports import PortRange, compress, parse_port
from harden.types import Address

# The bounds of the numeric options (the CLI's click types read them too).
WAIT_RANGE = (0.05, 30)
RETRIES_RANGE = (0, 10)
RATELIMIT_RANGE = (1, 60000)


@dataclass(frozen=True)
class PortSelection:
    """Which ports to probe: every port, the manifest's declared ones, or a list."""

    kind: Literal["all", "declared", "list"]
    # The list as given (ranges in order); empty for "all" and "declared".
    ranges: tuple[PortRange, ...] = ()

    @classmethod
    def parse(cls, text: str) -> PortSelection:
        """``all``, ``declared`` or a list like ``1-1024,8080`` (OptionError otherwise)."""
        if text in ("all", "declared"):
            return cls("all" if text == "all" else "declared")
        ranges = []
        for part in filter(None, re.split(r"\s*,\s*", text.strip())):
            try:
                ranges.append(parse_port(part))
            except ValueError as exc:
                raise OptionError("ports", str(exc)) from None
        if not ranges:
            raise OptionError("ports", "expected 'declared', 'all' or ports like 1-1024,8080")
        return cls("list", tuple(ranges))

    def __str__(self) -> str:
        """The selection as ``--ports`` takes it."""
        if self.kind != "list":
            return self.kind
        return ",".join(str(rng) for rng in compress(self.ports))

    @property
    def ports(self) -> tuple[int, ...]:
        """A list's ports, sorted, each once."""
        return tuple(sorted({port for rng in self.ranges for port in rng}))

    @property
    def plan(self) -> str | tuple[int, ...]:
        """What the probe plan takes: ``all``, ``declared`` or the ports."""
        return self.ports if self.kind == "list" else self.kind

    def egress_ranges(self) -> tuple[PortRange, ...]:
        """The ranges an egress proof sends to (every port, or the list)."""
        if self.kind == "declared":
            raise OptionConflict("ports", "--egress probes 'all' ports or a list like 1-1024")
        return (PortRange(1, 65535),) if self.kind == "all" else self.ranges


def address(text: str, option: str) -> Address:
    """One IP address, or an OptionError naming the option."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise OptionError(option, f"{text!r} is not an IP address") from None


def addresses(texts: Sequence[str], option: str) -> tuple[Address, ...]:
    """Each an IP address, or an OptionError naming the option."""
    return tuple(address(text, option) for text in texts)


def within(value: float, bounds: tuple[float, float], option: str) -> None:
    """Refuse a number outside ``bounds`` (inclusive), naming the option."""
    low, high = bounds
    if not low <= value <= high:
        raise OptionError(option, f"{value} is not in the range {low}<=x<={high}")


def _seen_as(texts: Sequence[str]) -> dict[int, Address]:
    """--seen-as: at most one address per family."""
    seen: dict[int, Address] = {}
    for text in texts:
        found = address(text, "seen_as")
        if found.version in seen:
            raise OptionError("seen_as", "one address per family at most")
        seen[found.version] = found
    return seen


@dataclass(frozen=True)
class Probing:
    """How the sweep probes: waits, retries, the target's ICMP budget, extra sources."""

    wait: float = defaults.WAIT
    retries: int = defaults.RETRIES
    ratelimit_ms: Mapping[int, int] = field(
        default_factory=lambda: {4: defaults.ICMP_RATELIMIT_MS, 6: defaults.ICMP_RATELIMIT_MS}
    )
    sources: tuple[Address, ...] = ()
    seen_as: Mapping[int, Address] = field(default_factory=dict)
    witness: str | None = None

    @classmethod
    def parse(
        cls,
        *,
        wait: float = defaults.WAIT,
        retries: int = defaults.RETRIES,
        icmp_ratelimit_ms: int = defaults.ICMP_RATELIMIT_MS,
        icmp6_ratelimit_ms: int = defaults.ICMP_RATELIMIT_MS,
        sources: Sequence[str] = (),
        seen_as: Sequence[str] = (),
        witness: str | None = None,
    ) -> Probing:
        """Check every value; OptionError names the first bad one."""
        within(wait, WAIT_RANGE, "wait")
        within(retries, RETRIES_RANGE, "retries")
        within(icmp_ratelimit_ms, RATELIMIT_RANGE, "icmp_ratelimit_ms")
        within(icmp6_ratelimit_ms, RATELIMIT_RANGE, "icmp6_ratelimit_ms")
        return cls(
            wait=wait,
            retries=retries,
            ratelimit_ms={4: icmp_ratelimit_ms, 6: icmp6_ratelimit_ms},
            sources=addresses(sources, "source"),
            seen_as=_seen_as(seen_as),
            witness=witness,
        )
