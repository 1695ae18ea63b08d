"""What a change to a manifest must keep: ``harden ci``'s assertions on two policies (pure).

Three kinds, each a one-line failure naming the port, the networks and why:

- ``keep_open`` (the manifest's ``ci:`` section, or ``--keep``): HEAD must allow the ports,
  from every address of the given network, or from some source if none is given;
- ``never_open``: HEAD must not allow any of the ports, from any address of the network
  (or from anywhere);
- SSH: every SSH port BASE serves (a service named ssh, or tcp/22) must stay open in HEAD
  to every source BASE allowed. Moving SSH to 2222, deleting it or narrowing its sources
  is how a pull request locks its operators out; ``--allow-ssh-change`` says it is meant.

docs/ci.md, "What harden ci proves".
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import ip_network

from harden.manifest.model import PortCheck
from harden.manifest.nets import collapse, minus
from harden.manifest.ports import PortRange
from harden.policy.model import Policy
from harden.types import FAMILIES, Family, Network, Proto

Sources = tuple[Network, ...] | None  # None: from any source


@dataclass(frozen=True)
class Failure:
    """One assertion a change breaks."""

    kind: str  # "keep_open", "never_open" or "ssh"
    check: str  # what was asserted, e.g. "tcp/22 from 198.18.1.0/24"
    message: str


def allowed(policy: Policy, proto: Proto, port: int, family: Family) -> Sources:
    """The sources ``policy`` accepts ``proto``/``port`` from over ``family`` (None: any)."""
    nets: list[Network] = []
    for allow in policy.accepted(family, proto):
        if any(port in rng for rng in allow.ports):
            sources = allow.sources[family]
            if sources is None:
                return None
            nets += sources
    return collapse(nets)


def _segments(policy: Policy, proto: Proto, ports: PortRange) -> Iterator[int]:
    """One port per stretch of ``ports`` inside which the policy answers alike."""
    cuts = {ports.first}
    for allow in policy.allows:
        if allow.proto == proto:
            cuts |= {p for r in allow.ports for p in (r.first, r.last + 1)}
    yield from sorted(c for c in cuts if ports.first <= c <= ports.last)


def keep_open(policy: Policy, check: PortCheck) -> Failure | None:
    """Whether HEAD still allows ``check``'s ports (from all of its network, if given)."""
    for port in _segments(policy, check.proto, check.ports):
        if check.source is None:
            if all(allowed(policy, check.proto, port, f) == () for f in FAMILIES):
                return Failure("keep_open", str(check), f"{check}: {check.proto}/{port} is closed")
            continue
        family: Family = 4 if check.source.version == 4 else 6
        found = allowed(policy, check.proto, port, family)
        missing = () if found is None else minus((check.source,), found)
        if missing:
            shown = ", ".join(map(str, missing))
            return Failure(
                "keep_open", str(check), f"{check}: {check.proto}/{port} is closed to {shown}"
            )
    return None


def never_open(policy: Policy, check: PortCheck) -> Failure | None:
    """Whether HEAD allows none of ``check``'s ports (to any of its network, if given)."""
    for port in _segments(policy, check.proto, check.ports):
        for family in FAMILIES:
            if check.source is not None and check.source.version != family:
                continue
            found = allowed(policy, check.proto, port, family)
            if found == ():
                continue
            whole = (check.source,) if check.source is not None else None
            if found is None:
                reached = "any source" if whole is None else str(check.source)
            else:
                inside = found if whole is None else minus(whole, minus(whole, found))
                if not inside:
                    continue
                reached = ", ".join(map(str, inside))
            return Failure(
                "never_open", str(check), f"{check}: {check.proto}/{port} is open to {reached}"
            )
    return None


def ssh_ports(policy: Policy) -> list[PortRange]:
    """The tcp ports ``policy`` serves SSH on: its services named ssh (or ssh-...), and 22."""
    ports: list[PortRange] = []
    for allow in policy.allows:
        if allow.proto != "tcp":
            continue
        for name, ranges in allow.members:
            if name.lower() == "ssh" or name.lower().startswith("ssh-"):
                ports += ranges
        if any(22 in rng for rng in allow.ports):
            ports.append(PortRange(22, 22))
    return sorted(set(ports))


def ssh_kept(base: Policy, head: Policy) -> list[Failure]:
    """Every SSH port BASE serves, open in HEAD to every source BASE allowed it from."""
    failures = []
    # One port per stretch of each SSH range inside which both policies answer alike.
    ports = sorted(
        {p for rng in ssh_ports(base) for pol in (base, head) for p in _segments(pol, "tcp", rng)}
    )
    for port in ports:
        lost: list[Network] = []
        closed = True
        for family in FAMILIES:
            before = allowed(base, "tcp", port, family)
            after = allowed(head, "tcp", port, family)
            if before == ():
                continue
            closed = closed and after == ()
            if after is None:
                continue
            everyone = (ip_network("0.0.0.0/0" if family == 4 else "::/0"),)
            lost += minus(before if before is not None else everyone, after)
        if lost:
            failures.append(
                Failure(
                    "ssh",
                    f"tcp/{port}",
                    f"{'closes' if closed else 'narrows'} SSH (tcp/{port}, served by BASE): new "
                    f"logins from {', '.join(map(str, lost))} would be refused "
                    "(--allow-ssh-change if that is meant)",
                )
            )
    return failures
