"""The exposure matrix of a hook: cells inside which every rule answers alike, merged to rows.

Pure. Each dimension (destination port, source port, peer address, interface) is cut at
every constant a rule of the hook's chains names, and at the manifest's own when it is
compared; one packet decides each cell for the whole cell, since no rule can tell two of
its packets apart. docs/design.md, "Reading the live ruleset".
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_network, summarize_address_range
from itertools import product
from typing import Any

from harden.analysis import index
from harden.analysis.engine import PATH, Decision, Packet, chains_on, decide
from harden.analysis.model import Rule, Ruleset, address, network
from harden.manifest.ports import PortRange, merge
from harden.types import FAMILIES, PROTOS, Address, Family, Network, Proto

Interval = tuple[int, int]  # inclusive
FORWARD = ("forward", "postrouting")  # where a DNAT to another host sends a packet
OTHER = "*"  # an interface no rule names
# Addresses only loopback carries: cut there, so no other cell is tested with one of them.
LOOPBACK = frozenset({ip_network("127.0.0.0/8"), ip_network("::1/128")})
_TOP = {4: 2**32 - 1, 6: 2**128 - 1}
# A manifest's answer for a packet, asked in two steps: with all but the destination port
# (once per peer, source port and interface), then of each destination port.
Expect = Callable[[Proto, int, Address, str], Callable[[int], "bool | None"]]


@dataclass(frozen=True)
class Cuts:
    """Where a manifest's answers may change.

    Its destination-port ranges (inclusive), and the source ports, networks and interfaces
    it names. The matrix cuts there too, and tells apart the port cells a manifest range
    holds from those it does not.
    """

    ports: frozenset[tuple[int, int]] = frozenset()
    sports: frozenset[int] = frozenset()
    nets: frozenset[Network] = frozenset()
    ifaces: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Row:
    """Packets that all get the same decision (and, compared, the same expectation)."""

    hook: str
    family: Family
    proto: Proto
    dports: tuple[PortRange, ...]
    sports: tuple[PortRange, ...]
    peers: tuple[Network, ...]
    ifaces: tuple[str, ...]
    decision: Decision
    expected: bool | None = None  # with a manifest: whether it allows these packets

    @property
    def verdict(self) -> str:
        """accept, drop, reject or unknown."""
        return self.decision.verdict

    def to_json(self) -> dict[str, Any]:
        """One row of ``harden.analysis/1``."""
        peer = "sources" if self.hook == "input" else "destinations"
        iface = "iifname" if self.hook == "input" else "oifname"
        full = (PortRange(1, 65535),)
        out: dict[str, Any] = {
            "hook": self.hook,
            "family": f"ipv{self.family}",
            "proto": self.proto,
            "dports": _ports(self.dports),
            "sports": "any" if self.sports == full else _ports(self.sports),
            peer: "any"
            if any_peer(self.peers, self.family, self.hook)
            else [str(n) for n in self.peers],
            iface: "any" if self.ifaces == (OTHER,) else list(self.ifaces),
            "verdict": self.verdict,
            "rules": [r.to_json() for r in self.decision.rules],
            "managers": managers(self.decision.rules),
        }
        if self.decision.unknown:
            out["unknown"] = list(self.decision.unknown)
        if self.decision.keyed:
            out["keyed_on"] = list(self.decision.keyed)
        if self.expected is not None:
            out["declared"] = self.expected
        return out


def managers(rules: tuple[Rule, ...]) -> list[str]:
    """The tools that own the rules deciding a row.

    A base chain's policy that lets the packet on (``policy accept``) counts only when
    nothing else decided.
    """
    passed = ("policy accept",)
    deciding = [r for r in rules if not (r.handle == 0 and r.expr == passed)] or rules
    return sorted({manager(r) for r in deciding})


def manager(rule: Rule) -> str:
    """Which tool owns a rule, by its table and chain names (or the chain it jumps to)."""
    targets = [
        e[kind]["target"]
        for e in rule.expr
        if isinstance(e, dict)
        for kind in ("jump", "goto")
        if kind in e and isinstance(e[kind], dict)
    ]
    for chain in (rule.chain, *targets):
        name = f"{rule.table} {chain}".lower()
        for marker, owner in (
            ("harden", "harden"), ("ufw", "ufw"), ("firewalld", "firewalld"),
            ("docker", "Docker"), ("kube", "kube-proxy"), ("libvirt", "libvirt"),
        ):  # fmt: skip
            if marker in name:
                return owner
        if _FIREWALLD_CHAINS.match(chain):
            return "firewalld"  # its iptables backend names no table of its own
    return "unknown"


# The chains firewalld's iptables backend makes (zones, policies, direct rules).
_FIREWALLD_CHAINS = re.compile(
    r"(INPUT|FORWARD|OUTPUT|PREROUTING|POSTROUTING)_(ZONES|direct|POLICIES_pre|POLICIES_post)$"
    r"|FORWARD_(IN|OUT)_ZONES$|RFC3964_IPv4$"
    r"|(IN|FWDI|FWDO|FWD|PRE|POST)_[A-Za-z0-9-]+(_(allow|deny|log|pre|post|rule))?$"
)


def matrix(
    ruleset: Ruleset,
    hook: str,
    cuts: Cuts = Cuts(),
    expect: Expect | None = None,
    progress: Callable[[str, int], None] = lambda what, cells: None,
) -> list[Row]:
    """Every cell of ``hook`` decided, merged into rows (all of them, drops included).

    ``progress`` hears of each (family, protocol) before its cells are decided, with their
    number: a large allowlist makes many.
    """
    rows: list[Row] = []
    memo: dict[Any, Any] = {}  # what the index read of each rule, for every family and protocol
    for family in FAMILIES:
        chains = [c for h in PATH[hook] for c in chains_on(ruleset, h, family, None)]
        if hook == "input" and ruleset.translates:
            # A DNAT sends some packets on through forward: its rules cut the cells too.
            chains += [c for h in FORWARD for c in chains_on(ruleset, h, family, None)]
        constants = _constants(ruleset, chains, hook, family)
        constants["iface"] += [d for c in chains for d in c.device]
        nets = cuts.nets | (LOOPBACK if hook == "input" else frozenset())
        peers = _intervals(_address_cuts(constants["peer"], nets, family), _TOP[family])
        ifaces = [*sorted(_iface_names([*constants["iface"], *cuts.ifaces])), OTHER]
        for proto in PROTOS:
            ranges = [{"range": list(r)} for r in sorted(cuts.ports)]
            dports = _intervals(_port_cuts([*constants[f"{proto} dport"], *ranges]), 65535, 1)
            sports = _intervals(_port_cuts([*constants[f"{proto} sport"], *cuts.sports]), 65535, 1)
            progress(
                f"{hook} ipv{family} {proto}", len(dports) * len(sports) * len(peers) * len(ifaces)
            )
            dims = (dports, sports, peers, ifaces)
            rules = _reachable(ruleset, chains)
            judged = (expect, cuts.ports)
            cells = _cells(ruleset, rules, (hook, family, proto), dims, judged, memo)
            rows += _merge(hook, family, proto, cells)
    return rows


def _reachable(ruleset: Ruleset, chains: list[Any]) -> list[Rule]:
    """The rules of ``chains`` and of every chain they jump or go to."""
    seen: set[Any] = set()
    todo, out = list(chains), []
    while todo:
        chain = todo.pop()
        if (chain.family, chain.table, chain.name) in seen:
            continue
        seen.add((chain.family, chain.table, chain.name))
        out += chain.rules
        for rule in chain.rules:
            for target in _targets(rule, ruleset):
                called = ruleset.chains.get((chain.family, chain.table, target))
                if called is not None:
                    todo.append(called)
    return out


def _cells(
    ruleset: Ruleset,
    rules: list[Rule],
    kind: tuple[str, Family, Proto],
    dims: tuple[list[Interval], list[Interval], list[Interval], list[str]],
    judged: tuple[Expect | None, frozenset[Interval]],
    memo: dict[Any, Any],
) -> dict[Any, list[Any]]:
    """Every cell decided, each walk over only the rules that can match it.

    Cells that keep the same rules (and agree on what those read) are decided once
    (harden.analysis.index). Grouped as ``{(outcome, expected, s, p, i): [decision, d...]}``:
    the destination-port cells that the rest of the packet and one outcome share.
    """
    dports, sports, peers, ifaces = dims
    hook, family, proto = kind
    expect, ranges = judged
    found = index.build(rules, ruleset, hook, family, proto, memo)
    by_dport, by_peer = index.covering(found.dport, dports), index.covering(found.peer, peers)
    tell_dport, tell_peer = found.opaque_dport, found.opaque_peer
    views = _Views(ruleset, found, by_dport, by_peer)
    # Port cells that the same rules hold and the manifest's ranges treat alike: one cell.
    classes = _port_classes(dports, views.dclass, ranges, tell_dport)
    decided: dict[Any, tuple[Decision, int]] = {}
    outcomes: dict[Any, int] = {}  # each outcome once, by number: a cell names its number
    groups: dict[Any, list[Any]] = {}
    for pi, p in enumerate(peers):
        peer = _address(p[0], family)
        if hook == "input" and peer.is_loopback:
            continue  # a whole loopback cell (cut there): not analysed
        kept = views.row(pi)
        for s, i in product(sports, ifaces):
            iface = _iface(i)
            test = expect(proto, s[0], peer, iface) if expect is not None else None
            for di, members in classes:
                d = dports[di]
                key = (kept[di], d if tell_dport else None, p if tell_peer else None, s, i)
                got = decided.get(key)
                if got is None:
                    packet = Packet(hook, family, proto, d[0], s[0], peer, iface)
                    decision = decide(views.view(kept[di]), packet)
                    got = decided[key] = (
                        decision,
                        outcomes.setdefault(_key(decision), len(outcomes)),
                    )
                expected = test(d[0]) if test is not None else None
                groups.setdefault((got[1], expected, s, p, i), [got[0]]).extend(members)
    return groups


class _Views:
    """The ruleset each cell walks: without the indexed rules that do not hold it.

    Port cells held by the same rules share a view; any two cells whose views keep the
    same indexed rules (the rest are in every view) share their decisions. A view is
    named by its port-indexed rules (interned: they can be thousands) and the few
    peer-indexed ones its peer cell keeps.
    """

    def __init__(
        self,
        ruleset: Ruleset,
        found: index.Index,
        by_dport: list[set[int]],
        by_peer: list[set[int]],
    ) -> None:
        self.on_dport = {k for k, v in found.dport.items() if v is not None}
        self.on_peer = {k for k, v in found.peer.items() if v is not None}
        self.on_either = self.on_dport | self.on_peer
        self.whole = index.Restrictor(ruleset, self.on_dport)
        self.by_dport, self.by_peer = by_dport, by_peer
        self.dclass, self.pclass = _classes(by_dport), _classes(by_peer)
        self.by_class: dict[int, tuple[Ruleset, int, frozenset[int]]] = {}
        self.interned: dict[frozenset[int], int] = {}
        self.names: dict[tuple[int, int], Any] = {}
        self.views: dict[Any, tuple[Ruleset, frozenset[int]]] = {}
        self.made: dict[Any, Ruleset] = {}
        self.rows: dict[int, list[Any]] = {}

    def row(self, pi: int) -> list[Any]:
        """The views' names of every destination-port cell at peer cell ``pi``."""
        found = self.rows.get(self.pclass[pi])
        if found is None:
            found = self.rows[self.pclass[pi]] = [
                self.kept(di, pi) for di in range(len(self.dclass))
            ]
        return found

    def kept(self, di: int, pi: int) -> Any:
        """The name of the view of destination-port cell ``di`` and peer cell ``pi``."""
        pair = (self.dclass[di], self.pclass[pi])
        name = self.names.get(pair)
        if name is None:
            if pair[0] not in self.by_class:
                view_d = self.whole.view(self.by_dport[di])
                indexed = index.kept(view_d, self.on_either)
                fixed = self.interned.setdefault(
                    frozenset(indexed - self.on_peer), len(self.interned)
                )
                self.by_class[pair[0]] = (view_d, fixed, frozenset(indexed & self.on_peer))
            view_d, fixed, on_p = self.by_class[pair[0]]
            part = on_p & self.by_peer[pi]
            name = self.names[pair] = (fixed, part)
            if name not in self.views:
                self.views[name] = (view_d, on_p - part)
        return name

    def view(self, name: Any) -> Ruleset:
        """The view itself, made when a cell first walks it."""
        if name not in self.made:
            view_d, dropped = self.views[name]
            self.made[name] = index.restrict(view_d, dropped, self.whole.chain_of)
        return self.made[name]


def _port_classes(
    dports: list[Interval], dclass: list[int], ranges: frozenset[Interval], each: bool
) -> list[tuple[int, list[Interval]]]:
    """The port cells in classes, each ``(a member's index, members)``.

    A class: the cells the same rules hold (``dclass``) and the same manifest ranges hold.
    ``each``: every cell its own class (a rule reads the port in a way the index does not).
    """
    if each:
        return [(di, [d]) for di, d in enumerate(dports)]
    held: list[list[int]] = [[] for _ in dports]
    starts = [lo for lo, _ in dports]
    for j, (lo, hi) in enumerate(sorted(ranges)):  # the cells are cut at each range's ends
        for di in range(bisect_right(starts, lo) - 1, bisect_right(starts, hi)):
            held[di].append(j)
    found: dict[Any, tuple[int, list[Interval]]] = {}
    for di, d in enumerate(dports):
        found.setdefault((dclass[di], tuple(held[di])), (di, []))[1].append(d)
    return list(found.values())


def _classes(covering: list[set[int]]) -> list[int]:
    """Each cell's class: cells covered by the same rules get the same number."""
    seen: dict[frozenset[int], int] = {}
    return [seen.setdefault(frozenset(rules), len(seen)) for rules in covering]


def _merge(hook: str, family: Family, proto: Proto, groups: dict[Any, list[Any]]) -> list[Row]:
    """Cells with the same outcome, merged along each dimension in turn."""
    by_ports: dict[Any, list[Any]] = {}
    for (outcome, expected, s, p, i), (decision, *found) in groups.items():
        dports = tuple(PortRange(lo, hi) for lo, hi in _joined(found))
        by_ports.setdefault((outcome, expected, dports, s, i), [decision]).append(p)
    rows = []
    for (_, expected, dports, s, i), (decision, *found) in by_ports.items():
        nets = tuple(n for lo, hi in _joined(found) for n in _nets(lo, hi, family))
        rows.append(
            Row(hook, family, proto, dports, (PortRange(*s),), nets, (i,), decision, expected)
        )
    return sorted(_merge_along(rows), key=_order)


def _order(row: Row) -> tuple[Any, ...]:
    """Rows by destination port, then peer, source port and interface."""
    peer = int(row.peers[0].network_address) if row.peers else -1
    return (row.dports[0].first if row.dports else 0, peer, row.sports[0].first, row.ifaces)


def _merge_along(rows: list[Row]) -> list[Row]:
    """Rows that differ only by source port, then only by interface, become one."""
    merged: dict[Any, Row] = {}
    for row in rows:
        key = (_key(row.decision), row.expected, row.dports, row.peers, row.ifaces)
        if key in merged:
            old = merged[key]
            merged[key] = Row(
                row.hook, row.family, row.proto, row.dports, merge((*old.sports, *row.sports)),
                row.peers, row.ifaces, old.decision, row.expected,
            )  # fmt: skip
        else:
            merged[key] = row
    out: dict[Any, Row] = {}
    for row in merged.values():
        by_iface = (_key(row.decision), row.expected, row.dports, row.peers, row.sports)
        if by_iface in out:
            old = out[by_iface]
            out[by_iface] = Row(
                row.hook, row.family, row.proto, row.dports, row.sports, row.peers,
                tuple(sorted({*old.ifaces, *row.ifaces})), old.decision, row.expected,
            )  # fmt: skip
        else:
            out[by_iface] = row
    return list(out.values())


def _key(decision: Decision) -> Any:
    rules = tuple(decision.rules)
    return (decision.verdict, rules, decision.unknown, decision.keyed)


DIMENSIONS = ("tcp dport", "tcp sport", "udp dport", "udp sport", "peer", "iface")


def _constants(
    ruleset: Ruleset, chains: list[Any], hook: str, family: Family
) -> dict[str, list[Any]]:
    """Every constant the rules reachable from ``chains`` compare a dimension with."""
    found: dict[str, list[Any]] = {k: [] for k in DIMENSIONS}
    seen: set[Any] = set()
    todo = list(chains)
    peer = "saddr" if hook == "input" else "daddr"
    iface = "iifname" if hook == "input" else "oifname"
    while todo:
        chain = todo.pop()
        if (chain.family, chain.table, chain.name) in seen:
            continue
        seen.add((chain.family, chain.table, chain.name))
        for rule in chain.rules:
            for left, right in _comparisons(rule, ruleset):
                dim = _dimension(left, peer, iface)
                for d in dim:
                    found[d] += _flat(right, ruleset, rule)
            _xt_constants(rule, hook, found)
            for target in _targets(rule, ruleset):
                called = ruleset.chains.get((chain.family, chain.table, target))
                if called is not None:
                    todo.append(called)
    return found


def _map_elements(data: Any, ruleset: Ruleset, rule: Rule) -> list[Any]:
    """A verdict map's [key, verdict] pairs, anonymous or named."""
    if isinstance(data, str) and data.startswith("@"):
        return list(ruleset.maps.get((rule.family, rule.table, data[1:])) or ())
    return list(data.get("set", ())) if isinstance(data, dict) else []


def _comparisons(rule: Rule, ruleset: Ruleset) -> Iterator[tuple[Any, Any]]:
    for e in rule.expr:
        if isinstance(e, dict) and "match" in e:
            yield e["match"]["left"], e["match"]["right"]
        elif isinstance(e, dict) and "vmap" in e:
            pairs = _map_elements(e["vmap"]["data"], ruleset, rule)
            yield e["vmap"]["key"], {"set": [p[0] for p in pairs if isinstance(p, list)]}


def _targets(rule: Rule, ruleset: Ruleset) -> Iterator[str]:
    for e in rule.expr:
        if isinstance(e, dict):
            for kind in ("jump", "goto"):
                if kind in e:
                    yield e[kind]["target"]
            if "vmap" in e:
                for pair in _map_elements(e["vmap"]["data"], ruleset, rule):
                    verdict = pair[1] if isinstance(pair, list) and len(pair) == 2 else {}
                    for kind in ("jump", "goto"):
                        if isinstance(verdict, dict) and kind in verdict:
                            yield verdict[kind]["target"]


def _xt_constants(rule: Rule, hook: str, found: dict[str, list[Any]]) -> None:
    """The ports and addresses a decoded iptables extension compares with."""
    for extension in rule.xt or ():
        for option, values, _ in extension.options:
            if extension.name == "multiport":
                dims = {"--dports": ["dport"], "--destination-ports": ["dport"],
                        "--sports": ["sport"], "--source-ports": ["sport"],
                        "--ports": ["dport", "sport"]}.get(option, [])  # fmt: skip
                ranges = [
                    {"range": [int(lo), int(hi or lo)]}
                    for value in values
                    for part in value.split(",")
                    for lo, _, hi in [part.partition(":")]
                ]
                for dim in dims:
                    for proto in ("tcp", "udp"):
                        found[f"{proto} {dim}"] += ranges
            elif extension.name in ("tcp", "udp") and values and option in _XT_PORTS:
                low, _, high = values[0].partition(":")
                found[f"{extension.name} {_XT_PORTS[option]}"].append(
                    {"range": [int(low or 0), int(high or low or 65535)]}
                )
            elif extension.name == "conntrack" and option == "--ctorigdstport" and values:
                low, _, high = values[0].partition(":")
                for proto in ("tcp", "udp"):
                    found[f"{proto} dport"].append({"range": [int(low), int(high or low)]})
            elif extension.name == "iprange" and values:
                side = "--src-range" if hook == "input" else "--dst-range"
                if option == side:
                    low, _, high = values[0].partition("-")
                    found["peer"].append({"range": [low, high or low]})


# -m tcp / -m udp options and the dimension they compare.
_XT_PORTS = {
    "--dport": "dport", "--destination-port": "dport",
    "--sport": "sport", "--source-port": "sport",
}  # fmt: skip


def _dimension(left: Any, peer: str, iface: str) -> list[str]:
    if not isinstance(left, dict):
        return []
    payload = left.get("payload")
    if isinstance(payload, dict):
        proto, field_ = payload.get("protocol"), payload.get("field")
        if field_ in ("dport", "sport"):
            protos = ("tcp", "udp") if proto == "th" else (proto,)
            return [f"{p} {field_}" for p in protos if p in ("tcp", "udp")]
        if proto in ("ip", "ip6") and field_ == peer:
            return ["peer"]
    ct = left.get("ct")
    if isinstance(ct, dict) and ct.get("dir") == "original":
        # The port it was sent to, the port and address it came from.
        key = ct.get("key")
        if key in ("proto-dst", "proto-src"):
            return [f"{p} {'dport' if key == 'proto-dst' else 'sport'}" for p in ("tcp", "udp")]
        if key == peer:
            return ["peer"]
    meta = left.get("meta")
    if isinstance(meta, dict) and meta.get("key") in (iface, iface.removesuffix("name")):
        return ["iface"]
    return []


def _flat(right: Any, ruleset: Ruleset, rule: Rule) -> list[Any]:
    return list(_walk(right, ruleset, rule))


def _walk(right: Any, ruleset: Ruleset, rule: Rule) -> Iterator[Any]:
    if isinstance(right, str) and right.startswith("@"):
        yield from ruleset.sets.get((rule.family, rule.table, right[1:])) or ()
        yield from (k for k, _ in ruleset.maps.get((rule.family, rule.table, right[1:])) or ())
    elif isinstance(right, dict) and "set" in right:
        for element in right["set"]:
            yield from _walk(element, ruleset, rule)
    elif isinstance(right, list):
        for element in right:
            yield from _walk(element, ruleset, rule)
    else:
        yield right


def _port_cuts(values: list[Any]) -> set[int]:
    cuts = set()
    for v in values:
        if isinstance(v, int):
            cuts |= {v, v + 1}
        elif isinstance(v, dict) and "range" in v and all(isinstance(x, int) for x in v["range"]):
            cuts |= {v["range"][0], v["range"][1] + 1}
    return cuts


def _address_cuts(values: list[Any], nets: frozenset[Network], family: Family) -> set[int]:
    cuts = set()
    for v in values:
        if isinstance(v, dict) and "range" in v:
            low, high = (address(str(a)) for a in v["range"])
            if low is None or high is None:
                continue
            if low.version == family:
                cuts |= {int(low), int(high) + 1}
            continue
        net = network(v)
        if net is not None and net.version == family:
            cuts |= {int(net.network_address), int(net.broadcast_address) + 1}
    for net in nets:
        if net.version == family:
            cuts |= {int(net.network_address), int(net.broadcast_address) + 1}
    return cuts


def _joined(intervals: list[Interval]) -> list[Interval]:
    """Adjacent or overlapping intervals as one."""
    out: list[Interval] = []
    for lo, hi in sorted(intervals):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(hi, out[-1][1]))
        else:
            out.append((lo, hi))
    return out


def _intervals(cuts: set[int], top: int, bottom: int = 0) -> list[Interval]:
    points = sorted({bottom, *(c for c in cuts if bottom < c <= top)})
    return [(lo, hi - 1) for lo, hi in zip(points, [*points[1:], top + 1], strict=True)]


def _iface_names(values: list[Any]) -> set[str]:
    return {v for v in values if isinstance(v, str) and v != "lo"}


def _iface(name: str) -> str:
    if name == OTHER:
        return "harden-other0"  # a name no rule's pattern names (cut at every name given)
    if name.endswith("*") and not name.endswith("\\*"):
        # Under the prefix, but no name given exactly and no longer prefix.
        return name[:-1] + "harden-x0"
    return name


def _address(value: int, family: Family) -> Address:
    return IPv4Address(value) if family == 4 else IPv6Address(value)


def _nets(lo: int, hi: int, family: Family) -> list[Network]:
    return list(summarize_address_range(_address(lo, family), _address(hi, family)))


def any_peer(nets: tuple[Network, ...], family: Family, hook: str = "output") -> bool:
    """Every address, or (input) every address but the loopback ones no cell holds."""
    total = sum(n.num_addresses for n in nets)
    if hook == "input":
        total += sum(n.num_addresses for n in LOOPBACK if n.version == family)
    return total == _TOP[family] + 1


def _ports(ranges: tuple[PortRange, ...]) -> str:
    return ",".join(str(r) for r in ranges)
