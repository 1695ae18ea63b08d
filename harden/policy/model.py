"""The normalised policy: what the host accepts, sorted, merged and deduplicated."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Generic, Literal, TypeVar

from harden.gcpause import paused_gc
from harden.manifest.model import EgressAllow, ForwardAllow, Manifest, RateLimit, Service
from harden.manifest.nets import collapse_family
from harden.manifest.ports import PortRange, merge
from harden.types import FAMILIES, PROTOS, Address, Family, Proto

Nets = tuple[IPv4Network | IPv6Network, ...]
Sources = Nets | None
T = TypeVar("T")


@dataclass(frozen=True)
class PerFamily(Generic[T]):
    """One value per address family, read as ``value[4]`` and ``value[6]``.

    The one place the policy keeps IPv4 and IPv6 apart: a consumer that handles one
    family handles the other by the same key, never by a second field it may forget.
    """

    v4: T
    v6: T

    def __getitem__(self, family: int) -> T:
        """The value for family 4 or 6."""
        if family == 4:
            return self.v4
        if family == 6:
            return self.v6
        raise KeyError(family)


NO_NETS: PerFamily[Nets] = PerFamily((), ())


@dataclass(frozen=True)
class Allow:
    """Accept ``proto`` to ``ports`` from the given sources.

    Per family, ``None`` means from any source and ``()`` means not at all.
    """

    key: str  # identifier for set and chain names: [a-z][a-z0-9_]*
    proto: Proto
    ports: tuple[PortRange, ...]
    sources: PerFamily[Sources]
    services: tuple[str, ...]
    comments: tuple[tuple[str, str], ...] = ()  # (service name, its comment)
    members: tuple[tuple[str, tuple[PortRange, ...]], ...] = ()  # (service name, its ports)
    limit: RateLimit | None = None  # new connections per source address
    log: bool = False  # log refused attempts (source not allowed, or over the limit)

    def names_by_port(self) -> dict[int, str]:
        """Each port's own service names (a merged group serves several)."""
        names: dict[int, list[str]] = {}
        for name, ranges in self.members:
            for rng in ranges:
                for port in rng:
                    names.setdefault(port, []).append(name)
        return {port: ", ".join(sorted(found)) for port, found in names.items()}

    @property
    def label(self) -> str:
        """Human text for rule comments: service names, with their comments if any."""
        comments = dict(self.comments)
        return ", ".join(
            f"{name}: {comments[name]}" if name in comments else name for name in self.services
        )

    @property
    def restricted(self) -> bool:
        """Whether this rule lists sources (rather than accepting any source)."""
        return any(self.sources[family] for family in FAMILIES)

    def allows_family(self, family: Family) -> bool:
        """Whether this rule can accept anything at all over ``family``."""
        return self.sources[family] != ()

    def admits(self, source: Address) -> bool:
        """Whether this rule accepts traffic from ``source`` (an address of either family)."""
        sources = self.sources[family_of(source)]
        return sources is None or any(source in net for net in sources)


@dataclass(frozen=True)
class Forwarded:
    """One ``forward.allow`` entry, normalised (per family: None = any, () = none)."""

    key: str
    label: str
    in_interface: str
    out_interface: str | None
    sources: PerFamily[Sources]
    destinations: PerFamily[Sources]
    protos: tuple[Proto, ...] | None
    ports: tuple[PortRange, ...] | None

    def families(self) -> tuple[Family, ...]:
        """The address families this entry can match at all."""
        return tuple(f for f in FAMILIES if self.sources[f] != () and self.destinations[f] != ())


@dataclass(frozen=True)
class Outbound:
    """One ``egress.allow`` entry for one protocol (per family: None = any, () = none)."""

    key: str
    label: str
    proto: Proto
    ports: tuple[PortRange, ...]
    destinations: PerFamily[Sources]

    def families(self) -> tuple[Family, ...]:
        """The address families this entry can match at all."""
        return tuple(f for f in FAMILIES if self.destinations[f] != ())

    def admits(self, destination: Address, proto: Proto, port: int) -> bool:
        """Whether this entry lets a new ``proto`` connection to ``destination``:``port`` out."""
        return self.reaches(destination, proto) and any(port in rng for rng in self.ports)

    def reaches(self, destination: Address, proto: Proto) -> bool:
        """Whether this entry lets new ``proto`` connections to ``destination`` out (some port)."""
        nets = self.destinations[family_of(destination)]
        return proto == self.proto and (nets is None or any(destination in net for net in nets))


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
    probers: PerFamily[Nets] = NO_NETS
    # Interfaces whose traffic is not the outside world (container bridges, cni0).
    trusted: tuple[str, ...] = ()
    dhcpv6: bool = False
    # Routed, untranslated traffic: "accept" leaves it alone; "drop" passes only these.
    forward: Literal["accept", "drop"] = "accept"
    forwarded: tuple[Forwarded, ...] = ()
    # New outbound connections: "accept" leaves them alone; "drop"/"reject" pass only these.
    egress: Literal["accept", "drop", "reject"] = "accept"
    outbound: tuple[Outbound, ...] = ()
    egress_dhcp: bool = False  # the DHCP client's renewals (and DHCPv6 with ipv6)
    # Where DHCP may go: the broadcast address and these servers, never anywhere else.
    dhcp_servers: tuple[IPv4Address, ...] = ()

    def sends(self, destination: Address, proto: Proto, port: int) -> bool:
        """Whether the host may open a new ``proto`` connection to ``destination``:``port``."""
        if self.egress == "accept":
            return True  # no output chain: harden filters nothing outbound
        return any(o.admits(destination, proto, port) for o in self.outbound)

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


@paused_gc()  # harden/gcpause.py: the collector would walk every network built
def build_policy(manifest: Manifest) -> Policy:
    """Normalise a validated manifest: group by protocol and sources, merge port ranges."""
    v6 = manifest.policy.ipv6
    SourceKey = tuple[tuple[IPv4Network, ...], tuple[IPv6Network, ...]] | None
    # Services share a rule when protocol, sources, limit and logging are the same.
    GroupKey = tuple[Proto, SourceKey, RateLimit | None, bool]
    groups: dict[GroupKey, list[Service]] = {}
    for service in manifest.services:
        key: SourceKey = None
        if service.sources is not None:
            nets = service.sources
            # Collapsed, so services whose sources mean the same networks share a group.
            key = (
                collapse_family(n for n in nets if isinstance(n, IPv4Network)),
                collapse_family(n for n in nets if isinstance(n, IPv6Network)),
            )
        for proto in service.proto:
            groups.setdefault((proto, key, service.limit, service.log), []).append(service)

    allows: list[Allow] = []
    # Plain unrestricted groups first (one per protocol), then the others by name.
    for proto in PROTOS:
        members = groups.pop((proto, None, None, False), [])
        if members:
            allows.append(_allow(proto, proto, members, PerFamily(None, None if v6 else ())))
    rest = sorted(groups.items(), key=lambda g: (min(s.name for s in g[1]), g[0][0]))
    used: set[str] = set(PROTOS)
    for (proto, src, limit, log), members in rest:
        key_name = _unique_key(f"{_slug(min(s.name for s in members))}_{proto}", used)
        if src is None:
            allow = _allow(key_name, proto, members, PerFamily(None, None if v6 else ()))
        else:
            allow = _allow(key_name, proto, members, PerFamily(src[0], src[1] if v6 else ()))
        allows.append(replace(allow, limit=limit, log=log))
    return Policy(
        host=manifest.host,
        closed=manifest.policy.closed,
        echo=manifest.policy.icmp.echo,
        ipv6=v6,
        log_dropped=manifest.policy.log_dropped,
        allows=tuple(allows),
        probers=_probers(manifest),
        trusted=manifest.policy.trusted_interfaces,
        dhcpv6=manifest.policy.dhcpv6,
        forward=manifest.forward.policy,
        forwarded=tuple(
            _forwarded(entry, _unique_key(f"fwd_{_slug(entry.name)}", used), v6)
            for entry in manifest.forward.allow
        ),
        egress=manifest.egress.policy,
        outbound=tuple(
            _outbound(entry, proto, _unique_key(f"out_{_slug(entry.name)}_{proto}", used), v6)
            for entry in manifest.egress.allow
            for proto in entry.proto
        ),
        egress_dhcp=manifest.egress.dhcp,
        dhcp_servers=tuple(sorted(set(manifest.egress.dhcp_servers))),
    )


def _probers(manifest: Manifest) -> PerFamily[Nets]:
    """The verifier's networks, per family (their probes are counted, never accepted)."""
    probers = manifest.verify.probers if manifest.verify is not None else ()
    return PerFamily(
        collapse_family(n for n in probers if isinstance(n, IPv4Network)),
        collapse_family(n for n in probers if isinstance(n, IPv6Network)),
    )


def _outbound(entry: EgressAllow, proto: Proto, key: str, v6: bool) -> Outbound:
    return Outbound(
        key=key,
        label=f"{entry.name}: {entry.comment}" if entry.comment else entry.name,
        proto=proto,
        ports=merge(entry.port_list),
        destinations=_split(entry.destinations, v6),
    )


def _split(nets: Sources, v6: bool) -> PerFamily[Sources]:
    """Per-family networks: None (any) stays None; a list may leave a family empty."""
    if nets is None:
        return PerFamily(None, None if v6 else ())
    four = collapse_family(n for n in nets if isinstance(n, IPv4Network))
    six = collapse_family(n for n in nets if isinstance(n, IPv6Network))
    return PerFamily(four, six if v6 else ())


def _forwarded(entry: ForwardAllow, key: str, v6: bool) -> Forwarded:
    label = f"{entry.name}: {entry.comment}" if entry.comment else entry.name
    return Forwarded(
        key=key,
        label=label,
        in_interface=entry.in_interface,
        out_interface=entry.out_interface,
        sources=_split(entry.sources, v6),
        destinations=_split(entry.destinations, v6),
        protos=entry.proto,
        ports=merge(entry.ports) if entry.ports is not None else None,
    )


def _allow(
    key: str,
    proto: Proto,
    members: list[Service],
    sources: PerFamily[Sources],
) -> Allow:
    return Allow(
        key=key,
        proto=proto,
        ports=merge(p for s in members for p in s.port_list),
        sources=sources,
        services=tuple(sorted(s.name for s in members)),
        comments=_comments(members),
        members=tuple(sorted((s.name, s.port_list) for s in members)),
    )


def _comments(members: list[Service]) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((s.name, s.comment) for s in members if s.comment))


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")[:14].rstrip("_")
    if not slug or not slug[0].isalpha():
        slug = "s_" + slug if slug else "svc"
    return slug


# The longest allow key. Backends name sets or chains after keys; each says how long a key
# its names can carry, and the registry refuses one that cannot carry this many.
MAX_KEY = 19


def _unique_key(key: str, used: set[str]) -> str:
    """``key``, or ``key_2``, ``key_3``...: unused, and never longer than MAX_KEY."""
    candidate, n = key[:MAX_KEY].rstrip("_"), 1
    while candidate in used:
        n += 1
        suffix = f"_{n}"
        candidate = key[: MAX_KEY - len(suffix)].rstrip("_") + suffix
    used.add(candidate)
    return candidate
