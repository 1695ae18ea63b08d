"""The manifest's cross-field rules that pydantic cannot express per field.

Names, address families, overlaps (pure; each problem a one-line ManifestError).
"""

from __future__ import annotations

import itertools

from harden.errors import ManifestError
from harden.manifest.model import EgressAllow, Manifest, Service
from harden.manifest.ports import PortRange
from harden.types import PROTOS, Network


def check_manifest(manifest: Manifest, source: str) -> None:
    """Cross-field rules pydantic cannot express per field: names, families, overlaps."""
    _unique_names([s.name for s in manifest.services], "services", "service name", source)
    for i, service in enumerate(manifest.services):
        _check_sources(manifest, i, service, source)
    _check_port_overlaps(manifest, source)
    if manifest.policy.dhcpv6 and not manifest.policy.ipv6:
        raise ManifestError(source, "policy.dhcpv6", "DHCPv6 needs policy.ipv6: true")
    _check_forward(manifest, source)
    _check_egress(manifest, source)
    # IPv6 probers stay valid with policy.ipv6: false: every IPv6 port is then closed,
    # and the witness counts the probes that show it.


def _unique_names(names: list[str], where: str, what: str, source: str) -> None:
    """Refuse a name used twice in one list (``where``: ``services``, ``egress.allow``)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ManifestError(
                source,
                f"{where}[{i}].name",
                f"duplicate {what} {name!r} (also {where}[{seen[name]}])",
            )
        seen[name] = i


def _check_forward(manifest: Manifest, source: str) -> None:
    _unique_names([a.name for a in manifest.forward.allow], "forward.allow", "name", source)
    for i, allow in enumerate(manifest.forward.allow):
        where = f"forward.allow[{i}]"
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
    if service.sources is not None:
        _check_networks(manifest, service.sources, f"services[{i}].sources", "source", source)


def _check_networks(
    manifest: Manifest, nets: tuple[Network, ...], where: str, what: str, source: str
) -> None:
    """One list of networks: each of an enabled family, none overlapping another."""
    by_family: dict[int, list[tuple[Network, int]]] = {4: [], 6: []}
    for j, net in enumerate(nets):
        if net.version == 6 and not manifest.policy.ipv6:
            raise ManifestError(
                source, f"{where}[{j}]", f"IPv6 {what} {net} but policy.ipv6 is false"
            )
        by_family[net.version].append((net, j))
    for entries in by_family.values():
        entries.sort(key=lambda e: (int(e[0].network_address), e[0].prefixlen))
        widest: tuple[Network, int] | None = None
        for net, j in entries:
            if widest is not None and int(net.network_address) <= int(widest[0].broadcast_address):
                later, earlier = max(j, widest[1]), min(j, widest[1])
                key = where.rsplit(".", 1)[-1]
                raise ManifestError(
                    source,
                    f"{where}[{later}]",
                    f"{nets[later]} overlaps {nets[earlier]} ({key}[{earlier}])",
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


def _check_egress(manifest: Manifest, source: str) -> None:
    allows = manifest.egress.allow
    _unique_names([a.name for a in allows], "egress.allow", "name", source)
    for i, allow in enumerate(allows):
        where = f"egress.allow[{i}]"
        if allow.destinations is not None:
            _check_networks(
                manifest, allow.destinations, f"{where}.destinations", "destination", source
            )
        _check_own_ports(allow, where, source)
        for k in range(i):
            clash = _egress_overlap(allows[k], allow)
            if clash:
                raise ManifestError(
                    source,
                    f"{where}.{allow.port_field}",
                    f"{clash} is already allowed by egress.allow[{k}] ({allows[k].name})",
                )
    if manifest.egress.dhcp and manifest.egress.policy == "accept":
        raise ManifestError(
            source, "egress.dhcp", "needs 'policy: drop' or 'policy: reject' (else all is allowed)"
        )


def _check_own_ports(allow: EgressAllow, where: str, source: str) -> None:
    ranges = sorted(allow.port_list, key=lambda r: (r.first, r.last))
    for a, b in itertools.pairwise(ranges):
        if b.first <= a.last:
            raise ManifestError(
                source, f"{where}.{allow.port_field}", f"port {b} overlaps port {a} in this entry"
            )


def _egress_overlap(a: EgressAllow, b: EgressAllow) -> str | None:
    """What both entries allow (one proto, port and destination), or None."""
    for proto in a.proto:
        if proto not in b.proto:
            continue
        for ra in a.port_list:
            for rb in b.port_list:
                if ra.first > rb.last or rb.first > ra.last:
                    continue
                port = max(ra.first, rb.first)
                if a.destinations is None or b.destinations is None:
                    nets = a.destinations or b.destinations
                    to = f" to {nets[0]}" if nets else ""
                    return f"{proto}/{port}{to}"
                for na in a.destinations:
                    for nb in b.destinations:
                        if na.version == nb.version and na.overlaps(nb):
                            return f"{proto}/{port} to {max(na, nb, key=lambda n: n.prefixlen)}"
    return None
