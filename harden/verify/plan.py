"""What the prober should see from where it stands (pure).

Expectations are per (family, protocol, port): declared and reachable from the
prober's source address -> allowed; everything else -> silent (``closed: drop``) or
rejected with admin-prohibited (``closed: reject``).
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from harden.manifest.ports import PortRange, compress, expand
from harden.policy.model import Policy
from harden.types import PROTOS, Family, Proto


class Expect(StrEnum):
    """The expected outcome of probing one port."""

    ALLOWED = "allowed"
    SILENT = "silent"
    REJECTED = "rejected"
    # What the report's rows about more than one port expected.
    ALLOWED_OR_SILENT = "allowed or silent"  # declared ports --ports left out
    ARRIVED_AND_DROPPED = "arrived and dropped"  # the witness's count of closed-port probes
    A_HOST = "a host"  # a target that showed it exists
    ECHO_REPLY = "echo-reply"  # a declared ping
    BLOCKED = "blocked"  # egress: refused by this host, absent at the sink
    HEARD = "heard"  # egress: the sink heard this host at all


@dataclass(frozen=True)
class Target:
    """One address to probe and the prober's own source address toward it."""

    address: IPv4Address | IPv6Address
    source: IPv4Address | IPv6Address
    # The address the target sees our probes come from, when a NAT rewrites ours
    # (verify --seen-as): expectations for source-restricted services follow it.
    seen_as: IPv4Address | IPv6Address | None = None

    @property
    def viewpoint(self) -> IPv4Address | IPv6Address:
        """The source address the target's firewall judges our probes by."""
        return self.seen_as or self.source

    @property
    def family(self) -> Family:
        """4 or 6."""
        return 4 if self.address.version == 4 else 6


@dataclass(frozen=True)
class Group:
    """The expectation for a set of ports of one protocol on one target."""

    target: Target
    proto: Proto
    expect: Expect
    # As ranges, not one entry per port: a fleet of 64 hosts would otherwise hold
    # 8 million port entries (docs/design.md, "Expectations as ranges").
    ranges: tuple[PortRange, ...]
    services: dict[int, str]  # port -> service names (allowed groups only)

    @property
    def ports(self) -> Iterator[int]:
        """Every port of the group, in order."""
        return expand(self.ranges)


class PortMap(Mapping[int, Expect]):
    """Port -> expectation for one target and protocol, held as sorted ranges.

    A read-only mapping (lookups by bisection), so 65,535 ports cost a few ranges,
    not a dict of 65,535 entries.
    """

    def __init__(self, spans: Iterable[tuple[PortRange, Expect]]) -> None:
        """Build from (range, expectation) pairs that do not overlap."""
        self._spans = sorted(spans, key=lambda span: span[0].first)
        self._starts = [rng.first for rng, _ in self._spans]

    def __getitem__(self, port: int) -> Expect:
        """The expectation for ``port`` (KeyError if it is not planned)."""
        i = bisect_right(self._starts, port) - 1
        if i >= 0 and port in self._spans[i][0]:
            return self._spans[i][1]
        raise KeyError(port)

    def __iter__(self) -> Iterator[int]:
        """Every planned port, in order."""
        for rng, _ in self._spans:
            yield from rng

    def __len__(self) -> int:
        """How many ports are planned."""
        return sum(len(rng) for rng, _ in self._spans)

    def spans(self) -> list[tuple[PortRange, Expect]]:
        """The (range, expectation) pairs, in port order."""
        return list(self._spans)

    def kinds(self) -> set[Expect]:
        """The expectations that occur."""
        return {expect for _, expect in self._spans}

    def count(self, ports: Iterable[int]) -> Counter[Expect]:
        """How many of ``ports`` fall under each expectation (ports must be planned)."""
        ordered = sorted(ports)
        counts: Counter[Expect] = Counter()
        for rng, expect in self._spans:
            n = bisect_right(ordered, rng.last) - bisect_left(ordered, rng.first)
            if n:
                counts[expect] += n
        return counts


@dataclass(frozen=True)
class Plan:
    """Everything the prober sends and what it should see, per target."""

    groups: tuple[Group, ...]
    echo: dict[IPv4Address | IPv6Address, bool]  # should ping be answered?
    # Declared ports a --ports subset left out: said in the report, never silently dropped.
    skipped: tuple[tuple[Target, Proto, tuple[int, ...]], ...] = ()

    def ports(self, target: Target, proto: Proto) -> array[int]:
        """Every port to probe on a target for a protocol, sorted (two bytes a port)."""
        return array("H", sorted(self.expectation(target, proto)))

    def expectation(self, target: Target, proto: Proto) -> PortMap:
        """Port -> expected outcome for one target and protocol."""
        return PortMap(
            (rng, g.expect)
            for g in self.groups
            if g.target == target and g.proto == proto
            for rng in g.ranges
        )


def plan_probes(
    policy: Policy, targets: list[Target], selection: str | tuple[int, ...] = "all"
) -> Plan:
    """Expectations per (target, protocol, port) for the prober at each target's source."""
    closed = Expect.SILENT if policy.closed == "drop" else Expect.REJECTED
    groups: list[Group] = []
    skipped: list[tuple[Target, Proto, tuple[int, ...]]] = []
    for target in targets:
        for proto in PROTOS:
            allowed = _allowed_ports(policy, target, proto)
            if isinstance(selection, tuple):
                left_out = _declared_ports(policy, proto) - set(selection)
                if left_out:
                    skipped.append((target, proto, tuple(sorted(left_out))))
            if selection == "all":
                allowed_here = sorted(allowed)
                closed_here = _complement(allowed_here)
            else:
                chosen: set[int] = (
                    _declared_ports(policy, proto) if isinstance(selection, str) else set(selection)
                )
                allowed_here = sorted(p for p in allowed if p in chosen)
                closed_here = compress(sorted(p for p in chosen if p not in allowed))
            if allowed_here:
                groups.append(
                    Group(
                        target,
                        proto,
                        Expect.ALLOWED,
                        compress(allowed_here),
                        {p: allowed[p] for p in allowed_here},
                    )
                )
            if closed_here:
                groups.append(Group(target, proto, closed, closed_here, {}))
    echo = {t.address: policy.echo and (t.family == 4 or policy.ipv6) for t in targets}
    return Plan(tuple(groups), echo, tuple(skipped))


def _complement(allowed: list[int]) -> tuple[PortRange, ...]:
    """The ranges of ports from 1 to 65535 not in the sorted list ``allowed``."""
    out, previous = [], 0
    for port in [*allowed, 65536]:
        if port > previous + 1:
            out.append(PortRange(previous + 1, port - 1))
        previous = port
    return tuple(out)


def merge_plans(plans: list[Plan]) -> Plan:
    """One plan for a fleet: every host's groups and ping expectations."""
    return Plan(
        tuple(g for p in plans for g in p.groups),
        {address: echo for p in plans for address, echo in p.echo.items()},
        tuple(s for p in plans for s in p.skipped),
    )


def _allowed_ports(policy: Policy, target: Target, proto: Proto) -> dict[int, str]:
    # Port -> the names of the services declaring it, for the prober at this target's
    # source address (a merged group's other services do not serve this port).
    out: dict[int, str] = {}
    names: dict[str, dict[int, str]] = {}
    for rng, allow in policy.allowed_from(target.viewpoint, proto):
        own = names.setdefault(allow.key, allow.names_by_port())
        for port in rng:
            out[port] = own.get(port, ", ".join(allow.services))
    return out


def _declared_ports(policy: Policy, proto: Proto) -> set[int]:
    # Every declared port, reachable from here or not: a restricted port must be silent
    # for strangers, and that is worth probing even in the short "declared" mode.
    return set(expand(r for a in policy.allows if a.proto == proto for r in a.ports))
