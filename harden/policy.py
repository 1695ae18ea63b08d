"""The normalised policy: what the host accepts, sorted, merged and deduplicated."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from harden.manifest import PROTOS, Manifest, PortRange, Proto, Service

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
Sources = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None


@dataclass(frozen=True)
class Allow:
    """Accept ``proto`` to ``ports`` from the given sources.

    Per family, ``None`` means from any source and ``()`` means not at all.
    """

    key: str  # identifier for set and chain names: [a-z][a-z0-9_]*
    proto: Proto
    ports: tuple[PortRange, ...]
    sources4: tuple[ipaddress.IPv4Network, ...] | None
    sources6: tuple[ipaddress.IPv6Network, ...] | None
    services: tuple[str, ...]

    def sources(
        self, family: Family
    ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] | None:
        """The sources allowed for one address family."""
        return self.sources4 if family == 4 else self.sources6

    @property
    def restricted(self) -> bool:
        """Whether any family is limited to listed sources."""
        return self.sources4 is not None or self.sources6 is not None

    def allows_family(self, family: Family) -> bool:
        """Whether this rule can accept anything at all over ``family``."""
        return self.sources(family) != ()


@dataclass(frozen=True)
class Policy:
    """Everything a renderer or a probe planner needs; no manifest details left."""

    host: str | None
    closed: Literal["drop", "reject"]
    echo: bool
    ipv6: bool
    log_dropped: bool
    allows: tuple[Allow, ...]

    def accepted(self, family: Family, proto: Proto) -> tuple[Allow, ...]:
        """The allow rules that can accept ``proto`` over ``family``."""
        return tuple(a for a in self.allows if a.proto == proto and a.allows_family(family))


def build_policy(manifest: Manifest) -> Policy:
    """Normalise a validated manifest: group by protocol and sources, merge port ranges."""
    v6 = manifest.policy.ipv6
    groups: dict[tuple[Proto, tuple[str, ...] | None], list[Service]] = {}
    for service in manifest.services:
        sources = None if service.sources is None else tuple(sorted(map(str, service.sources)))
        for proto in service.proto:
            groups.setdefault((proto, sources), []).append(service)

    allows: list[Allow] = []
    # Unrestricted groups first (one per protocol), then source-restricted ones by name.
    for proto in PROTOS:
        members = groups.get((proto, None))
        if members:
            allows.append(
                Allow(
                    key=proto,
                    proto=proto,
                    ports=merge_ports(p for s in members for p in s.port_list),
                    sources4=None,
                    sources6=None if v6 else (),
                    services=tuple(sorted(s.name for s in members)),
                )
            )
    restricted = sorted(
        ((proto, members) for (proto, src), members in groups.items() if src is not None),
        key=lambda g: (min(s.name for s in g[1]), g[0]),
    )
    used: set[str] = set(PROTOS)
    for proto, members in restricted:
        nets = [n for n in members[0].sources or ()]
        key = _unique_key(f"{_slug(min(s.name for s in members))}_{proto}", used)
        allows.append(
            Allow(
                key=key,
                proto=proto,
                ports=merge_ports(p for s in members for p in s.port_list),
                sources4=tuple(ipaddress.collapse_addresses(n for n in nets if n.version == 4)),
                sources6=tuple(ipaddress.collapse_addresses(n for n in nets if n.version == 6))
                if v6
                else (),
                services=tuple(sorted(s.name for s in members)),
            )
        )
    return Policy(
        host=manifest.host,
        closed=manifest.policy.closed,
        echo=manifest.policy.icmp.echo,
        ipv6=v6,
        log_dropped=manifest.policy.log_dropped,
        allows=tuple(allows),
    )


def merge_ports(ports: Iterable[PortRange]) -> tuple[PortRange, ...]:
    """Sort ranges and merge the overlapping or adjacent ones."""
    merged: list[PortRange] = []
    for rng in sorted(ports):
        if merged and rng.first <= merged[-1].last + 1:
            if rng.last > merged[-1].last:
                merged[-1] = PortRange(merged[-1].first, rng.last)
        else:
            merged.append(rng)
    return tuple(merged)


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:14].rstrip("_")
    if not slug or not slug[0].isalpha():
        slug = "s_" + slug if slug else "svc"
    return slug


def _unique_key(key: str, used: set[str]) -> str:
    candidate, n = key, 1
    while candidate in used:
        n += 1
        candidate = f"{key}_{n}"
    used.add(candidate)
    return candidate
