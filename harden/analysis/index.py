"""Which rules can match a cell: the matrix walks only those, once per kind of cell (pure).

A large allowlist makes a hundred thousand cells and thousands of rules, and most rules
compare the destination port or the peer address with a constant: ``tcp dport 443
accept``, ``ip saddr 10.1.0.0/24 tcp dport 22 accept``. Such a rule's match holds for a
whole cell or for none of it, since the cells are cut at every constant (matrix.py). So
for each destination-port cell and each peer cell the rules that cannot match are left
out of the chains (the kernel would pass them by), and two cells that keep the same rules
and agree on everything else a kept rule reads are decided once. A rule that reads the
port or the peer in a way not listed here (a verdict map, an iptables multiport, a set
that changes) is kept in every cell, and the cells are then told apart by that value.
docs/design.md, "Why the model is sound".
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from harden.analysis.model import Rule, Ruleset, address, network
from harden.types import Family, Proto

Interval = tuple[int, int]  # inclusive
OPAQUE = None  # a rule that reads the dimension some way this index does not


@dataclass(frozen=True)
class Index:
    """Per rule (by ``id``): the destination ports and peers its matches admit."""

    dport: dict[int, list[Interval] | None]
    peer: dict[int, list[Interval] | None]

    @property
    def opaque_dport(self) -> bool:
        """Whether a rule reads the destination port in a way not indexed."""
        return any(v is OPAQUE for v in self.dport.values())

    @property
    def opaque_peer(self) -> bool:
        """Whether a rule reads the peer address in a way not indexed."""
        return any(v is OPAQUE for v in self.peer.values())


def build(
    rules: Iterable[Rule],
    ruleset: Ruleset,
    hook: str,
    family: Family,
    proto: Proto,
    memo: dict[Any, Any] | None = None,
) -> Index:
    """The index of ``rules`` for packets of ``family`` and ``proto`` on ``hook``.

    ``memo``: what was read of each rule for another family or protocol of the same
    ruleset (a rule's ports do not depend on the family, nor its peers on the protocol).
    """
    memo = {} if memo is None else memo
    dport: dict[int, list[Interval] | None] = {}
    peer: dict[int, list[Interval] | None] = {}
    side = "saddr" if hook == "input" else "daddr"
    for rule in rules:
        ports_key, peers_key = (id(rule), proto), (id(rule), family, side)
        if ports_key not in memo or peers_key not in memo:
            reading = memo.get(id(rule))
            if reading is None:
                reading = memo[id(rule)] = _reading(rule)
            if ports_key not in memo:
                memo[ports_key] = _dport(rule, reading, ruleset, proto)
            if peers_key not in memo:
                memo[peers_key] = _peer(rule, reading, ruleset, family, side)
        for dim, found in ((dport, memo[ports_key]), (peer, memo[peers_key])):
            if found is not _UNUSED:
                dim[id(rule)] = found
    return Index(dport, peer)


_UNUSED: Any = object()  # the rule does not read the dimension at all


def _dport(rule: Rule, reading: list[Any], ruleset: Ruleset, proto: Proto) -> list[Interval] | None:
    """The ports the rule's destination-port matches admit (OPAQUE, or _UNUSED)."""
    found: list[Interval] | None = _UNUSED
    for e, names in reading:
        if not _reads(names, ("dport", "proto-dst")):
            continue
        left = e.get("match", {}).get("left") if isinstance(e, dict) else None
        payload = left.get("payload") if isinstance(left, dict) else None
        ct = left.get("ct") if isinstance(left, dict) else None
        if isinstance(payload, dict) and payload.get("field") == "dport":
            if payload.get("protocol") not in (proto, "th"):
                return []  # a tcp match on a udp packet: the rule never matches
        elif not (
            isinstance(ct, dict) and (ct.get("key"), ct.get("dir")) == ("proto-dst", "original")
        ):
            return OPAQUE  # a verdict map, a reply-direction port, anything else on the port
        admitted = _admitted(e["match"], ruleset, rule, _port_interval, (1, 65535))
        if admitted is OPAQUE:
            return OPAQUE
        found = admitted if found is _UNUSED or found is None else _intersect(found, admitted)
    if any(_xt_reads_port(x) for x in rule.xt or ()):
        return OPAQUE
    return found


def _xt_reads_port(extension: Any) -> bool:
    """An iptables extension that compares the destination port (decoded or not)."""
    if extension.name in ("multiport", "tcp", "udp"):
        return True
    return extension.name == "conntrack" and any(
        option.startswith("--ctorig") for option, _, _ in extension.options
    )


def _peer(
    rule: Rule, reading: list[Any], ruleset: Ruleset, family: Family, side: str
) -> list[Interval] | None:
    """The peer addresses the rule's address matches admit (OPAQUE, or _UNUSED)."""
    found: list[Interval] | None = _UNUSED
    top = 2**32 - 1 if family == 4 else 2**128 - 1
    for e, names in reading:
        if not _reads(names, (side,)):
            continue
        left = e.get("match", {}).get("left") if isinstance(e, dict) else None
        payload = left.get("payload") if isinstance(left, dict) else None
        if not (isinstance(payload, dict) and payload.get("field") == side):
            return OPAQUE
        if payload.get("protocol") != ("ip" if family == 4 else "ip6"):
            return []  # an IPv4 match on an IPv6 packet
        admitted = _admitted(e["match"], ruleset, rule, _address_interval, (0, top))
        if admitted is OPAQUE:
            return OPAQUE
        found = admitted if found is _UNUSED or found is None else _intersect(found, admitted)
    if any(x.name == "iprange" for x in rule.xt or ()):
        return OPAQUE
    return found


# Statements that read no field of the packet.
_BLIND = {"counter", "accept", "drop", "reject", "return", "jump", "goto", "log", "comment", "xt"}


def _reading(rule: Rule) -> list[tuple[Any, frozenset[str] | str]]:
    """Each expression of ``rule`` that may read the packet, with what it may read.

    That is the field or key a plain match names, or else the expression's whole text (any
    name in it may be read).
    """
    out: list[tuple[Any, frozenset[str] | str]] = []
    for e in rule.expr:
        if isinstance(e, dict) and len(e) == 1:
            ((name, body),) = e.items()
            if name in _BLIND:
                continue
            left = body.get("left") if name == "match" and isinstance(body, dict) else None
            if isinstance(left, dict) and len(left) == 1:
                ((kind, what),) = left.items()
                if kind in ("payload", "ct", "meta") and isinstance(what, dict):
                    out.append((e, frozenset({str(what.get("field", what.get("key")))})))
                    continue
        out.append((e, repr(e)))
    return out


def _reads(names: frozenset[str] | str, fields: tuple[str, ...]) -> bool:
    """Whether an expression that may read ``names`` (see _reading) reads one of ``fields``."""
    return any(f in names for f in fields)


def _admitted(
    body: dict[str, Any], ruleset: Ruleset, rule: Rule, interval: Any, space: Interval
) -> list[Interval] | None:
    """What one match admits: its elements' intervals (``!=``: the rest of ``space``)."""
    op, right = body.get("op"), body.get("right")
    if op not in ("==", "!=", "in"):
        return None  # OPAQUE
    elements: list[Any] = []
    for element in _elements(right, ruleset, rule):
        if element is OPAQUE:
            return None  # OPAQUE: a set that changes
        elements.append(element)
    out = []
    for element in elements:
        found = interval(element)
        if found is None:
            return OPAQUE
        out.append(found)
    union = _union(out)
    return _complement(union, space) if op == "!=" else union


def _elements(right: Any, ruleset: Ruleset, rule: Rule) -> Iterable[Any]:
    if isinstance(right, str) and right.startswith("@"):
        elements = ruleset.sets.get((rule.family, rule.table, right[1:]))
        yield from (OPAQUE,) if elements is None else elements
    elif isinstance(right, dict) and "set" in right:
        for element in right["set"]:
            yield from _elements(element, ruleset, rule)
    else:
        yield right


def _port_interval(element: Any) -> Interval | None:
    if isinstance(element, int):
        return (element, element)
    if isinstance(element, dict) and "range" in element:
        low, high = element["range"]
        if isinstance(low, int) and isinstance(high, int):
            return (low, high)
    return None


def _address_interval(element: Any) -> Interval | None:
    if isinstance(element, dict) and "range" in element:
        low, high = (address(str(a)) for a in element["range"])
        return None if low is None or high is None else (int(low), int(high))
    net = network(element)
    if net is None:
        return None
    return (int(net.network_address), int(net.broadcast_address))


def _union(intervals: list[Interval]) -> list[Interval]:
    out: list[Interval] = []
    for low, high in sorted(intervals):
        if out and low <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _complement(intervals: list[Interval], space: Interval) -> list[Interval]:
    out, at = [], space[0]
    for low, high in intervals:
        if low > at:
            out.append((at, low - 1))
        at = max(at, high + 1)
    if at <= space[1]:
        out.append((at, space[1]))
    return out


def _intersect(a: list[Interval], b: list[Interval]) -> list[Interval]:
    out = []
    for low, high in a:
        for low2, high2 in b:
            if max(low, low2) <= min(high, high2):
                out.append((max(low, low2), min(high, high2)))
    return _union(out)


def covering(admits: dict[int, list[Interval] | None], cells: list[Interval]) -> list[set[int]]:
    """For each cell, the indexed rules whose intervals hold it (whole cells only).

    A rule whose interval ends inside a cell (a constant the cuts missed) is made OPAQUE
    in ``admits`` instead: it is then kept everywhere, never wrongly left out.
    """
    starts = [low for low, _ in cells]
    out: list[set[int]] = [set() for _ in cells]
    held: dict[tuple[Interval, ...], list[int] | None] = {}  # many rules name the same
    for key, intervals in list(admits.items()):
        if intervals is OPAQUE:
            continue
        shape = tuple(intervals)
        if shape not in held:
            held[shape] = _held(intervals, cells, starts)
        found = held[shape]
        if found is None:
            admits[key] = OPAQUE
            continue
        for k in found:
            out[k].add(key)
    return out


def _held(intervals: list[Interval], cells: list[Interval], starts: list[int]) -> list[int] | None:
    """The cells ``intervals`` hold, or None if one of them ends inside a cell."""
    found: list[int] = []
    for low, high in intervals:
        first, last = bisect_right(starts, low) - 1, bisect_right(starts, high) - 1
        if first < 0 or cells[first][0] != low or cells[last][1] != high:
            return None
        found += range(first, last + 1)
    return found


class Restrictor:
    """Views of one ruleset that keep, of the ``indexed`` rules, only those holding a cell.

    Built once: each chain's other rules by position, and where each indexed rule sits,
    so a view costs what it keeps, not the size of the ruleset.
    """

    def __init__(self, ruleset: Ruleset, indexed: set[int]) -> None:
        self.ruleset = ruleset
        self.where: dict[int, tuple[Any, int]] = {}
        self.others: dict[Any, list[int]] = {}
        self.chain_of: dict[int, Any] = {}  # each rule's chain
        for key, chain in ruleset.chains.items():
            positions = []
            for n, rule in enumerate(chain.rules):
                self.chain_of[id(rule)] = key
                if id(rule) in indexed:
                    self.where[id(rule)] = (key, n)
                else:
                    positions.append(n)
            if len(positions) < len(chain.rules):
                self.others[key] = positions

    def view(self, holding: set[int]) -> Ruleset:
        """The ruleset without the indexed rules that do not hold the cell."""
        kept: dict[Any, list[int]] = {key: list(p) for key, p in self.others.items()}
        for rule in holding:
            found = self.where.get(rule)
            if found is not None:
                kept[found[0]].append(found[1])
        chains = dict(self.ruleset.chains)
        for key, positions in kept.items():
            rules = chains[key].rules
            chains[key] = replace(chains[key], rules=tuple(rules[n] for n in sorted(positions)))
        return replace(self.ruleset, chains=chains, full=self.ruleset.full or self.ruleset)


def restrict(ruleset: Ruleset, dropped: frozenset[int], chain_of: dict[int, Any]) -> Ruleset:
    """``ruleset`` without the rules (by id) in ``dropped``: indexed rules not holding a cell.

    ``chain_of`` names each rule's chain: only the chains that lose a rule are rebuilt. For
    a small ruleset (a view already narrowed); a large one is narrowed by a Restrictor.
    """
    if not dropped:
        return ruleset
    chains = dict(ruleset.chains)
    for key in {chain_of[rule] for rule in dropped}:
        chain = chains[key]
        chains[key] = replace(chain, rules=tuple(r for r in chain.rules if id(r) not in dropped))
    return replace(ruleset, chains=chains, full=ruleset.full or ruleset)


def kept(ruleset: Ruleset, indexed: set[int]) -> frozenset[int]:
    """The indexed rules (by id) a view keeps: views that keep the same decide alike."""
    return frozenset(id(r) for c in ruleset.chains.values() for r in c.rules if id(r) in indexed)
