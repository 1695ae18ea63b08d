"""The normalised policy: what the host accepts, sorted, merged and deduplicated."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, collapse_addresses
from typing import Literal

from harden.core.manifest import PROTOS, Manifest, Proto, Service
from harden.core.ports import PortRange, merge

Family = Literal[4, 6]
FAMILIES: tuple[Family, ...] = (4, 6)
Address = IPv4Address | IPv6Address
Sources = tuple[IPv4Network | IPv6Network, ...] | None


@dataclass(frozen=True)
class Allow:
    """Accept ``proto`` to ``ports`` from the given sources.

    Per family, ``None`` means from any source and ``()`` means not at all.
    """

    key: str  # identifier for set and chain names: [a-z][a-z0-9_]*
    proto: Proto
    ports: tuple[PortRange, ...]
    sources4: tuple[IPv4Network, ...] | None
    sources6: tuple[IPv6Network, ...] | None
    services: tuple[str, ...]
    comments: tuple[tuple[str, str], ...] = ()  # (service name, its comment)

    @property
    def label(self) -> str:
        """Human text for rule comments: service names, with their comments if any."""
        comments = dict(self.comments)
        return ", ".join(
            f"{name}: {comments[name]}" if name in comments else name for name in self.services
        )

    def sources(self, family: Family) -> tuple[IPv4Network | IPv6Network, ...] | None:
        """The sources allowed for one address family."""
        return self.sources4 if family == 4 else self.sources6

    @property
    def restricted(self) -> bool:
        """Whether this rule lists sources (rather than accepting any source)."""
        return any(self.sources(family) for family in FAMILIES)

    def allows_family(self, family: Family) -> bool:
        """Whether this rule can accept anything at all over ``family``."""
        return self.sources(family) != ()

    def admits(self, source: Address) -> bool:
        """Whether this rule accepts traffic from ``source`` (an address of either family)."""
        sources = self.sources(family_of(source))
        return sources is None or any(source in net for net in sources)


@dataclass(frozen=True)
class Policy:
    """Everything a renderer or a probe planner needs; no manifest details left."""

    host: str | None
    closed: Literal["drop", "reject"]
    echo: bool
    ipv6: bool
    log_dropped: bool
    allows: tuple[Allow, ...]
    # The verifier's networks: their probes are counted (verify --witness).
    probers4: tuple[IPv4Network, ...] = ()
    probers6: tuple[IPv6Network, ...] = ()

    def probers(self, family: Family) -> tuple[IPv4Network | IPv6Network, ...]:
        """The prober networks of one family (empty: no witness counters)."""
        return self.probers4 if family == 4 else self.probers6

    def accepted(self, family: Family, proto: Proto) -> tuple[Allow, ...]:
        """The allow rules that can accept ``proto`` over ``family``."""
        return tuple(a for a in self.allows if a.proto == proto and a.allows_family(family))

    def allowed_from(self, source: Address, proto: Proto) -> tuple[tuple[PortRange, Allow], ...]:
        """The port ranges a new connection from ``source`` may reach, with their rule."""
        return tuple(
            (rng, allow)
            for allow in self.accepted(family_of(source), proto)
            if allow.admits(source)
            for rng in allow.ports
        )

    def accepts(self, source: Address, proto: Proto, port: int) -> bool:
        """Whether the ruleset accepts a new ``proto`` connection from ``source`` to ``port``."""
        return any(port in rng for rng, _ in self.allowed_from(source, proto))

    def reachable(self, proto: Proto, port: int) -> bool:
        """Whether some source, of either family, may reach ``proto``/``port``."""
        return any(
            port in rng
            for family in FAMILIES
            for allow in self.accepted(family, proto)
            for rng in allow.ports
        )


def family_of(address: Address) -> Family:
    """4 or 6."""
    return 4 if address.version == 4 else 6


def build_policy(manifest: Manifest) -> Policy:
    """Normalise a validated manifest: group by protocol and sources, merge port ranges."""
    v6 = manifest.policy.ipv6
    SourceKey = tuple[tuple[IPv4Network, ...], tuple[IPv6Network, ...]] | None
    groups: dict[tuple[Proto, SourceKey], list[Service]] = {}
    for service in manifest.services:
        key: SourceKey = None
        if service.sources is not None:
            nets = service.sources
            # Collapsed, so services whose sources mean the same networks share a group.
            key = (
                tuple(collapse_addresses(n for n in nets if isinstance(n, IPv4Network))),
                tuple(collapse_addresses(n for n in nets if isinstance(n, IPv6Network))),
            )
        for proto in service.proto:
            groups.setdefault((proto, key), []).append(service)

    allows: list[Allow] = []
    # Unrestricted groups first (one per protocol), then source-restricted ones by name.
    for proto in PROTOS:
        members = groups.get((proto, None))
        if members:
            allows.append(_allow(proto, proto, members, None, None if v6 else ()))
    restricted = sorted(
        ((proto, src, members) for (proto, src), members in groups.items() if src is not None),
        key=lambda g: (min(s.name for s in g[2]), g[0]),
    )
    used: set[str] = set(PROTOS)
    for proto, (nets4, nets6), members in restricted:
        key_name = _unique_key(f"{_slug(min(s.name for s in members))}_{proto}", used)
        allows.append(_allow(key_name, proto, members, nets4, nets6 if v6 else ()))
    probers = manifest.verify.probers if manifest.verify is not None else ()
    return Policy(
        host=manifest.host,
        closed=manifest.policy.closed,
        echo=manifest.policy.icmp.echo,
        ipv6=v6,
        log_dropped=manifest.policy.log_dropped,
        allows=tuple(allows),
        probers4=tuple(collapse_addresses(n for n in probers if isinstance(n, IPv4Network))),
        probers6=tuple(collapse_addresses(n for n in probers if isinstance(n, IPv6Network))),
    )


def _allow(
    key: str,
    proto: Proto,
    members: list[Service],
    sources4: tuple[IPv4Network, ...] | None,
    sources6: tuple[IPv6Network, ...] | None,
) -> Allow:
    return Allow(
        key=key,
        proto=proto,
        ports=merge(p for s in members for p in s.port_list),
        sources4=sources4,
        sources6=sources6,
        services=tuple(sorted(s.name for s in members)),
        comments=_comments(members),
    )


def _comments(members: list[Service]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((s.name, s.comment) for s in members if s.comment))


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:14].rstrip("_")
    if not slug or not slug[0].isalpha():
        slug = "s_" + slug if slug else "svc"
    return slug


# iptables chain names are at most 28 characters and ours are "HARDEN-" + the key.
MAX_KEY = 28 - len("HARDEN-")


def _unique_key(key: str, used: set[str]) -> str:
    """``key``, or ``key_2``, ``key_3``...: unused, and never longer than MAX_KEY."""
    candidate, n = key[:MAX_KEY].rstrip("_"), 1
    while candidate in used:
        n += 1
        suffix = f"_{n}"
        candidate = key[: MAX_KEY - len(suffix)].rstrip("_") + suffix
    used.add(candidate)
    return candidate
