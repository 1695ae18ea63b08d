"""Container and VM bridges on a host, and what a restricted egress does to them (pure).

A host that runs containers (Docker, Podman, LXC/LXD, a Kubernetes CNI) or VMs (libvirt)
talks to them over a bridge: a reverse proxy in front of a container, a health check, a
deploy script. With egress restricted, those are new outbound connections like any
other, and harden refuses them unless the bridge is trusted or its network is allowed
out (docs/egress.md, "Containers and VMs on this host"). :func:`bridge_warnings` says
so, for ``validate`` and ``apply``; ``init`` proposes the allow.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_interface
from typing import Any

from harden.policy.model import Policy
from harden.types import Network

# Bridge names the container and VM runtimes create, and who creates them.
_OWNERS = (
    (re.compile(r"docker0|br-[0-9a-f]{12}"), "Docker"),
    (re.compile(r"podman\d*|cni-podman\d*"), "Podman"),
    (re.compile(r"cni0|cbr0"), "Kubernetes CNI"),
    (re.compile(r"lxcbr\d*|lxdbr\d*|incusbr\d*"), "LXC/LXD"),
    (re.compile(r"virbr\d*"), "libvirt"),
)


@dataclass(frozen=True)
class Bridge:
    """A container or VM bridge: its name, the runtime that made it, its networks."""

    name: str
    owner: str
    networks: tuple[Network, ...] = ()


def bridge_owner(name: str) -> str | None:
    """The runtime whose bridges are named like ``name``, or None for any other."""
    return next((owner for pattern, owner in _OWNERS if pattern.fullmatch(name)), None)


def parse_bridges(links: Iterable[dict[str, Any]]) -> list[Bridge]:
    """The container and VM bridges of ``ip -j address show type bridge``'s links."""
    found = []
    for link in links:
        name = str(link.get("ifname", ""))
        owner = bridge_owner(name)
        if owner is None:
            continue
        nets = tuple(
            ip_interface(f"{info['local']}/{info['prefixlen']}").network
            for info in link.get("addr_info", [])
            if info.get("family") in ("inet", "inet6")
            and info.get("scope") == "global"
            and "local" in info
        )
        found.append(Bridge(name, owner, nets))
    return found


def trusted(policy: Policy, name: str) -> bool:
    """Whether ``policy.trusted_interfaces`` names ``name`` (or a prefix* of it)."""
    return any(name.startswith(t[:-1]) if t.endswith("*") else name == t for t in policy.trusted)


def allowed_out(policy: Policy, network: Network) -> bool:
    """Whether an egress allow's destinations hold all of ``network`` (any port counts)."""
    for out in policy.outbound:
        nets = out.destinations[4 if network.version == 4 else 6]
        if nets is not None and any(
            n.version == network.version and network.subnet_of(n)  # type: ignore[arg-type]
            for n in nets
        ):
            return True
    return False


def bridge_warnings(policy: Policy, bridges: Iterable[Bridge]) -> list[str]:
    """One warning per bridge this host could not reach with ``policy``'s egress."""
    if policy.egress == "accept":
        return []
    warnings = []
    for bridge in bridges:
        if trusted(policy, bridge.name):
            continue
        missing = [n for n in bridge.networks if not allowed_out(policy, n)]
        if bridge.networks and not missing:
            continue
        where = ", ".join(map(str, missing)) or "its network"
        warnings.append(
            f"egress is restricted and {bridge.name} ({bridge.owner}'s bridge) is not trusted: "
            f"this host cannot open connections to what runs on it (reverse proxies, health "
            f"checks); allow {where} in egress.allow, or add {bridge.name} to "
            f"policy.trusted_interfaces (which also lets everything on it reach every port here)"
        )
    return warnings
