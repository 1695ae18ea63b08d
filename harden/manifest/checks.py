"""The manifest's cross-field rules that pydantic cannot express per field.

Names, address families, overlaps (pure; each problem a one-line ManifestError).
"""

from __future__ import annotations

import heapq
import itertools

from harden.errors import ManifestError
from harden.manifest.model import EgressAllow, Manifest, Service
from harden.manifest.nets import bounds
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
    """One list of networks: each of an enabled family, none overlapping another.

    On integer bounds, sorted once (nets.bounds): a network's cached properties would
    cost an address object each, 37 MB at 100,000 sources.
    """
    by_family: dict[int, list[tuple[int, int, int]]] = {4: [], 6: []}  # (first, last, index)
    for j, net in enumerate(nets):
        if net.version == 6 and not manifest.policy.ipv6:
            raise ManifestError(
                source, f"{where}[{j}]", f"IPv6 {what} {net} but policy.ipv6 is false"
            )
        by_family[net.version].append((*bounds(net), j))
    for entries in by_family.values():
        entries.sort(key=lambda e: (e[0], -e[1]))
        widest: tuple[int, int] | None = None  # (last address, index) reaching furthest
        for first, last, j in entries:
            if widest is not None and first <= widest[0]:
                later, earlier = max(j, widest[1]), min(j, widest[1])
                key = where.rsplit(".", 1)[-1]
                raise ManifestError(
                    source,
                    f"{where}[{later}]",
                    f"{nets[later]} overlaps {nets[earlier]} ({key}[{earlier}])",
                )
            if widest is None or last > widest[0]:
                widest = (last, j)


def _check_port_overlaps(manifest: Manifest, source: str) -> None:
    """No port of a protocol declared twice, unless the two entries' sources are disjoint.

    ``{ssh, 22, from A}`` and ``{ssh-admin, 22, from B, limit}`` with A and B disjoint
    are two rules no packet meets both of. Swept in sorted order with the ranges still
    open kept in a heap: O(n log n) for ports declared once, which matters for manifests
    with thousands of declarations.
    """
    spans: dict[int, _Spans] = {}
    for proto in PROTOS:
        entries = sorted(
            (rng, i, j)
            for i, service in enumerate(manifest.services)
            if proto in service.proto
            for j, rng in enumerate(service.port_list)
        )
        open_: list[tuple[int, PortRange, int, int]] = []  # (last, range, service, index)
        for rng, i, j in entries:
            while open_ and open_[0][0] < rng.first:
                heapq.heappop(open_)
            for _, a_rng, a_i, a_j in sorted(open_, key=lambda e: (e[2], e[3])):
                if a_i == i or not _disjoint(manifest, spans, a_i, i):
                    _port_clash(manifest, source, proto, (a_rng, a_i, a_j), (rng, i, j))
            heapq.heappush(open_, (rng.last, rng, i, j))


def _port_clash(
    manifest: Manifest,
    source: str,
    proto: str,
    a: tuple[PortRange, int, int],
    b: tuple[PortRange, int, int],
) -> None:
    (a_rng, a_i, _), (b_rng, b_i, b_j) = sorted([a, b], key=_pos)
    svc_b = manifest.services[b_i]
    where = f"services[{b_i}].{svc_b.port_field}"
    if svc_b.ports is not None:
        where += f"[{b_j}]"
    message = f"{proto}/{b_rng} overlaps {proto}/{a_rng} already declared by "
    if a_i == b_i:
        message += "this service"
    else:
        message += f"services[{a_i}] ({manifest.services[a_i].name})"
        message += "; a port may repeat only from disjoint sources"
    raise ManifestError(source, where, message)


# Per family, a service's sources as sorted, merged integer spans; None: any source.
_Spans = dict[int, list[tuple[int, int]] | None]


def _disjoint(manifest: Manifest, cache: dict[int, _Spans], a: int, b: int) -> bool:
    """Whether no source address may reach both services (per family, IPv6 off: none)."""
    for index in (a, b):
        if index not in cache:
            cache[index] = _source_spans(manifest, manifest.services[index].sources)
    for family in (4, 6):
        x, y = cache[a][family], cache[b][family]
        if x == [] or y == []:
            continue  # one of them is closed to this family
        if x is None or y is None or _meet(x, y):
            return False
    return True


def _source_spans(manifest: Manifest, sources: tuple[Network, ...] | None) -> _Spans:
    out: _Spans = {}
    for family in (4, 6):
        if family == 6 and not manifest.policy.ipv6:
            out[family] = []
        elif sources is None:
            out[family] = None
        else:
            spans = sorted(
                (int(n.network_address), int(n.broadcast_address))
                for n in sources
                if n.version == family
            )
            out[family] = spans
    return out


def _meet(x: list[tuple[int, int]], y: list[tuple[int, int]]) -> bool:
    """Whether two sorted span lists share an address (two pointers)."""
    i = j = 0
    while i < len(x) and j < len(y):
        if x[i][1] < y[j][0]:
            i += 1
        elif y[j][1] < x[i][0]:
            j += 1
        else:
            return True
    return False


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
