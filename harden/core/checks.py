"""The manifest's cross-field rules that pydantic cannot express per field.

Names, address families, overlaps (pure; each problem a one-line ManifestError).
"""

from __future__ import annotations

from harden.core.manifest import Manifest, Service
from harden.core.ports import PortRange
from harden.core.types import PROTOS, Network
from harden.errors import ManifestError


def check_manifest(manifest: Manifest, source: str) -> None:
    """Cross-field rules pydantic cannot express per field: names, families, overlaps."""
    names: dict[str, int] = {}
    for i, service in enumerate(manifest.services):
        if service.name in names:
            raise ManifestError(
                source,
                f"services[{i}].name",
                f"duplicate service name {service.name!r} (also services[{names[service.name]}])",
            )
        names[service.name] = i
        _check_sources(manifest, i, service, source)
    _check_port_overlaps(manifest, source)
    if manifest.policy.dhcpv6 and not manifest.policy.ipv6:
        raise ManifestError(source, "policy.dhcpv6", "DHCPv6 needs policy.ipv6: true")
    _check_forward(manifest, source)
    # IPv6 probers stay valid with policy.ipv6: false: every IPv6 port is then closed,
    # and the witness counts the probes that show it.


def _check_forward(manifest: Manifest, source: str) -> None:
    names: dict[str, int] = {}
    for i, allow in enumerate(manifest.forward.allow):
        where = f"forward.allow[{i}]"
        if allow.name in names:
            raise ManifestError(
                source,
                f"{where}.name",
                f"duplicate name {allow.name!r} (also forward.allow[{names[allow.name]}])",
            )
        names[allow.name] = i
        for key in ("sources", "destinations"):
            nets: tuple[Network, ...] = getattr(allow, key) or ()
            for j, net in enumerate(nets):
                if net.version == 6 and not manifest.policy.ipv6:
                    problem = f"IPv6 network {net} but policy.ipv6 is false"
                    raise ManifestError(source, f"{where}.{key}[{j}]", problem)
        families = {n.version for n in allow.sources or ()}
        other = {n.version for n in allow.destinations or ()}
        if allow.sources and allow.destinations and not families & other:
            raise ManifestError(
                source,
                f"{where}.destinations",
                "no destination is of the same address family as a source: matches nothing",
            )


def _check_sources(manifest: Manifest, i: int, service: Service, source: str) -> None:
    if service.sources is None:
        return
    by_family: dict[int, list[tuple[Network, int]]] = {4: [], 6: []}
    for j, net in enumerate(service.sources):
        if net.version == 6 and not manifest.policy.ipv6:
            raise ManifestError(
                source,
                f"services[{i}].sources[{j}]",
                f"IPv6 source {net} but policy.ipv6 is false",
            )
        by_family[net.version].append((net, j))
    for entries in by_family.values():
        entries.sort(key=lambda e: (int(e[0].network_address), e[0].prefixlen))
        widest: tuple[Network, int] | None = None
        for net, j in entries:
            if widest is not None and int(net.network_address) <= int(widest[0].broadcast_address):
                later, earlier = max(j, widest[1]), min(j, widest[1])
                raise ManifestError(
                    source,
                    f"services[{i}].sources[{later}]",
                    f"{service.sources[later]} overlaps {service.sources[earlier]} "
                    f"(sources[{earlier}])",
                )
            if widest is None or int(net.broadcast_address) > int(widest[0].broadcast_address):
                widest = (net, j)


def _check_port_overlaps(manifest: Manifest, source: str) -> None:
    # (range, service index, port index) per protocol, swept in sorted order: O(n log n),
    # which matters for manifests with thousands of declarations.
    for proto in PROTOS:
        entries = sorted(
            (rng, i, j)
            for i, service in enumerate(manifest.services)
            if proto in service.proto
            for j, rng in enumerate(service.port_list)
        )
        reach: tuple[PortRange, int, int] | None = None
        for rng, i, j in entries:
            if reach is not None and rng.first <= reach[0].last:
                (a_rng, a_i, _), (b_rng, b_i, b_j) = sorted([(rng, i, j), reach], key=_pos)
                svc_b = manifest.services[b_i]
                svc_a = manifest.services[a_i]
                where = f"services[{b_i}].{svc_b.port_field}"
                if svc_b.ports is not None:
                    where += f"[{b_j}]"
                other = f"services[{a_i}] ({svc_a.name})" if a_i != b_i else "this service"
                raise ManifestError(
                    source,
                    where,
                    f"{proto}/{b_rng} overlaps {proto}/{a_rng} already declared by {other}",
                )
            if reach is None or rng.last > reach[0].last:
                reach = (rng, i, j)


def _pos(entry: tuple[PortRange, int, int]) -> tuple[int, int]:
    return entry[1], entry[2]
