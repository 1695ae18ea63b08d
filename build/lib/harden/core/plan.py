"""What the prober should see from where it stands (pure).

Expectations are per (family, protocol, port): declared and reachable from the
prober's source address -> allowed; everything else -> silent (``closed: drop``) or
rejected with admin-prohibited (``closed: reject``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address

from harden.core.manifest import PROTOS, Proto
from harden.core.policy import Family, Policy
from harden.core.ports import ALL, expand, parse_port
from harden.errors import HardenError

# One shared tuple: a fleet's plans point at the same 65,535 int objects instead of
# each target making its own (about 2 MB per target and protocol saved).
ALL_PORTS = tuple(ALL)


class Expect(StrEnum):
    """The expected outcome of probing one port."""

    ALLOWED = "allowed"
    SILENT = "silent"
    REJECTED = "rejected"


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
    ports: tuple[int, ...]
    services: dict[int, str]  # port -> service names (allowed groups only)


@dataclass(frozen=True)
class Plan:
    """Everything the prober sends and what it should see, per target."""

    groups: tuple[Group, ...]
    echo: dict[IPv4Address | IPv6Address, bool]  # should ping be answered?
    # Declared ports a --ports subset left out: said in the report, never silently dropped.
    skipped: tuple[tuple[Target, Proto, tuple[int, ...]], ...] = ()

    def ports(self, target: Target, proto: Proto) -> list[int]:
        """Every port to probe on a target for a protocol, sorted."""
        return sorted(
            p for g in self.groups if g.target == target and g.proto == proto for p in g.ports
        )

    def expectation(self, target: Target, proto: Proto) -> dict[int, Expect]:
        """Port -> expected outcome for one target and protocol."""
        return {
            p: g.expect
            for g in self.groups
            if g.target == target and g.proto == proto
            for p in g.ports
        }


def parse_port_selection(spec: str) -> str | tuple[int, ...]:
    """``declared``, ``all`` or a list like ``1-1024,8080`` (validated)."""
    if spec in ("declared", "all"):
        return spec
    ports: set[int] = set()
    for part in filter(None, re.split(r"\s*,\s*", spec.strip())):
        try:
            rng = parse_port(part if not part.isdigit() else int(part))
        except ValueError as exc:
            raise HardenError(f"--ports: {exc}") from None
        ports.update(rng)
    if not ports:
        raise HardenError("--ports: expected 'declared', 'all' or ports like 1-1024,8080")
    return tuple(sorted(ports))


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
                closed_here = [p for p in ALL_PORTS if p not in allowed]
            else:
                chosen: set[int] = (
                    _declared_ports(policy, proto) if isinstance(selection, str) else set(selection)
                )
                allowed_here = sorted(p for p in allowed if p in chosen)
                closed_here = sorted(p for p in chosen if p not in allowed)
            if allowed_here:
                groups.append(
                    Group(
                        target,
                        proto,
                        Expect.ALLOWED,
                        tuple(allowed_here),
                        {p: allowed[p] for p in allowed_here},
                    )
                )
            if closed_here:
                groups.append(Group(target, proto, closed, tuple(closed_here), {}))
    echo = {t.address: policy.echo and (t.family == 4 or policy.ipv6) for t in targets}
    return Plan(tuple(groups), echo, tuple(skipped))


def merge_plans(plans: list[Plan]) -> Plan:
    """One plan for a fleet: every host's groups and ping expectations."""
    return Plan(
        tuple(g for p in plans for g in p.groups),
        {address: echo for p in plans for address, echo in p.echo.items()},
        tuple(s for p in plans for s in p.skipped),
    )


def _allowed_ports(policy: Policy, target: Target, proto: Proto) -> dict[int, str]:
    # Port -> service names, for the prober at this target's source address.
    return {
        port: ", ".join(allow.services)
        for rng, allow in policy.allowed_from(target.viewpoint, proto)
        for port in rng
    }


def _declared_ports(policy: Policy, proto: Proto) -> set[int]:
    # Every declared port, reachable from here or not: a restricted port must be silent
    # for strangers, and that is worth probing even in the short "declared" mode.
    return set(expand(r for a in policy.allows if a.proto == proto for r in a.ports))
