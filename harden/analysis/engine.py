"""Follow a new packet through every table's base chains; the exposure matrix of a hook.

Pure. ``decide`` walks one packet (``harden explain``); ``matrix`` cuts (protocol,
destination port, source port, peer address, interface) into cells inside which every
rule answers the same way, decides one packet per cell, and merges the cells back into
rows (``harden analyze``). An expression the model does not know makes its rule a "may
match": both ways are followed, and a cell whose outcomes differ is unknown, with the
reason, unless they differ only by a key a sender chooses (uid, gid, cgroup): then any
accept among them is an exposure. docs/design.md, "Reading the live ruleset".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from itertools import product
from typing import Any, Literal

from harden.analysis import xt
from harden.analysis.model import Chain, Rule, Ruleset, address, network
from harden.analysis.xt import Facts
from harden.types import Address, Family, Proto

Verdict = Literal["accept", "drop", "reject", "unknown"]
# The hooks a packet passes before it is delivered (input) or sent (output).
PATH = {"input": ("ingress", "prerouting", "input"), "output": ("output", "postrouting", "egress")}
MAX_PATHS = 256  # past this many may-match branches a cell is unknown, not slow
MAX_DEPTH = 16  # jumps deeper than the kernel allows are a loop in our reading

# IP protocol names nft prints (its numbers for the rest).
_PROTO_NUMBERS = {
    "icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "dccp": 33, "gre": 47, "esp": 50, "ah": 51,
    "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132, "udplite": 136,
}  # fmt: skip
# Keys a sender picks for itself: a rule keyed on them exposes its accept to whoever
# has that uid, gid or cgroup (an existential, not an unknown).
KEYED = {"skuid", "skgid", "cgroup"}


@dataclass(frozen=True)
class Packet:
    """A new connection's first packet (ct state new, no mark, a unicast local address)."""

    hook: str  # input: arriving at this host; output: sent by it
    family: Family
    proto: Proto
    dport: int
    sport: int
    peer: Address  # input: the source address; output: the destination
    iface: str  # input: the interface it arrives on; output: the one it leaves by
    # After a DNAT in prerouting: the new destination (None: one of this host's own), the
    # device the route to it leaves by, and the port the packet was sent to.
    daddr: Address | None = None
    oif: str | None = None
    original_dport: int | None = None


@dataclass(frozen=True)
class Maybe:
    """Why a rule may or may not match (the model cannot tell, or a sender chooses)."""

    reason: str
    keyed: bool = False
    # A keyed equality test (key, value), and whether this way assumed it held.
    test: tuple[str, str] | None = field(default=None, compare=False)
    holds: bool = field(default=True, compare=False)


# A rate limit is a key the sender chooses too: slow enough, a packet is under it; fast
# enough, over it. So both ways are open, and an accept on either is an exposure.
RATE = Maybe("limit: the rate a sender chooses", keyed=True)


@dataclass(frozen=True)
class Path:
    """One way through the chains: where it ended, the rules that decided, what was assumed."""

    verdict: str | None  # None: fell through (a base chain's policy decides)
    rules: tuple[Rule, ...] = ()
    maybes: tuple[Maybe, ...] = ()
    # verdict "dnat": the new destination (None: this host) and port (None: unchanged).
    nat: tuple[Address | None, int | None] | None = None

    def then(self, other: Path) -> Path:
        """The path continued by ``other``."""
        return Path(other.verdict, self.rules + other.rules, self.maybes + other.maybes, other.nat)


@dataclass(frozen=True)
class Decision:
    """A packet's verdict, the rules that gave it, and why it is not certain (if so)."""

    verdict: Verdict
    rules: tuple[Rule, ...]
    unknown: tuple[str, ...] = ()
    keyed: tuple[str, ...] = ()
    paths: tuple[Path, ...] = ()


def decide(ruleset: Ruleset, packet: Packet) -> Decision:
    """Every base chain the packet passes, in hook then priority order; one decision."""
    steps = _steps(ruleset, packet, PATH[packet.hook])
    return _conclude(_walk(ruleset, packet, steps, Path(None)))


Step = tuple[str, list[Chain]]  # a hook, and its base chains of one priority


def _steps(ruleset: Ruleset, packet: Packet, hooks: tuple[str, ...]) -> list[Step]:
    return [
        (hook, group)
        for hook in hooks
        for group in _same_priority(chains_on(ruleset, hook, packet.family, packet.iface))
    ]


def _walk(ruleset: Ruleset, packet: Packet, steps: list[Step], start: Path) -> list[Path]:
    """Every way ``packet`` ends after ``steps``, continuing ``start``."""
    live = [start]
    done: list[Path] = []
    for k, (hook, group) in enumerate(steps):
        ways = [_base(ruleset, chain, packet) for chain in group]
        after: list[Path] = []
        for path in live:
            for combo in product(*ways):
                joined = _in_turn(path, combo, group, hook)
                if joined.verdict == "accept":
                    after.append(joined)
                elif joined.verdict == "dnat":
                    rest = [step for step in steps[k + 1 :] if step[0] == hook]
                    done += _translated(ruleset, packet, joined, hook, rest)
                else:
                    done.append(joined)
        live = after
    return done + [replace(p, verdict="accept") for p in live]


def _translated(
    ruleset: Ruleset, packet: Packet, path: Path, hook: str, rest: list[Step]
) -> list[Path]:
    """The way on of a packet a DNAT sent elsewhere: judged by the port it was sent to.

    To this host (redirect, or a DNAT to one of its addresses): on through input; to
    another (a container, a VM): through forward and postrouting, out of the device its
    route leaves by. docs/design.md, "Translated traffic: Docker, Kubernetes, port forwards".
    """
    assert path.nat is not None
    addr, port = path.nat
    go_on = replace(path, verdict=None, nat=None)
    if hook != "prerouting" or packet.original_dport is not None:
        return [replace(go_on, verdict="accept")]  # one NAT binding: later ones do nothing
    if ruleset.local is None or ruleset.routes is None:
        why = Maybe("a DNAT: where it sends the packet (addresses, routes) was not read")
        return [Path("unknown", path.rules, (*path.maybes, why))]
    local = addr is None or addr in ruleset.local
    oif = None if local or addr is None else ruleset.route(addr)
    if not local and oif is None:
        return [Path("unknown", path.rules, (*path.maybes, Maybe(f"a DNAT to {addr}: no route")))]
    moved = replace(
        packet,
        daddr=None if local else addr,
        oif=oif,
        dport=port or packet.dport,
        original_dport=packet.dport,
    )
    hooks = ("input",) if local else ("forward", "postrouting")
    # A view left out rules by the packet's port: the translated packet needs them all.
    whole = ruleset.full or ruleset
    rest = [(h, [whole.chains[(c.family, c.table, c.name)] for c in group]) for h, group in rest]
    return _walk(whole, moved, rest + _steps(whole, moved, hooks), go_on)


def _same_priority(chains: list[Chain]) -> list[list[Chain]]:
    """Sorted chains grouped by priority: the kernel's order within a group is not listed."""
    groups: list[list[Chain]] = []
    for chain in chains:
        if groups and groups[-1][0].prio == chain.prio:
            groups[-1].append(chain)
        else:
            groups.append([chain])
    return groups


def _in_turn(path: Path, steps: tuple[Path, ...], group: list[Chain], hook: str) -> Path:
    """``path`` through base chains of one priority, whose order the listing does not give.

    The kernel runs the one registered last first. An accept ends only its own chain, so
    the order matters only when two chains end the packet differently (drop and reject):
    then the outcome is unknown, never the listing's guess.
    """
    ended = {s.verdict for s in steps if s.verdict != "accept"}
    for step in steps:
        path = path.then(step)
        if step.verdict != "accept":
            break
    if len(ended) > 1 or (len(steps) > 1 and "dnat" in ended):
        names = ", ".join(f"{c.family} {c.table} {c.name}" for c in group)
        why = (
            f"base chains {names} share priority {group[0].prio} on {hook} and end the packet "
            "differently; the kernel runs the one registered last first, which no listing shows"
        )
        return Path("unknown", path.rules, (*path.maybes, Maybe(why)))
    return path


def chains_on(ruleset: Ruleset, hook: str, family: Family, iface: str | None) -> list[Chain]:
    """The base chains a packet passes on ``hook``: a device chain only on its devices.

    ``iface`` None: every chain on the hook (for collecting constants).
    """
    found = ruleset.base_chains(hook, family) + ruleset.device_chains(hook)
    found = [c for c in found if iface is None or not c.device or iface in c.device]
    return sorted(found, key=lambda c: (c.prio, c.family, c.table, c.name))


def _conclude(paths: list[Path]) -> Decision:
    paths = [p for p in paths if _consistent(p)] or paths
    verdicts = {p.verdict for p in paths}
    maybes = {m for p in paths for m in p.maybes}
    unknown = tuple(sorted({m.reason for m in maybes if not m.keyed}))
    keyed = tuple(sorted({m.reason for m in maybes if m.keyed}))
    if len(verdicts) == 1:
        (verdict,) = verdicts
        why = unknown if verdict not in ("accept", "drop", "reject") else ()
        return Decision(_verdict(verdict), paths[0].rules, why, (), tuple(paths))
    if "unknown" not in verdicts and not unknown and "accept" in verdicts:
        accepted = next(p for p in paths if p.verdict == "accept")
        return Decision("accept", accepted.rules, (), keyed, tuple(paths))
    rules = tuple(dict.fromkeys(r for p in paths for r in p.rules))
    return Decision(
        "unknown",
        rules,
        unknown or ("verdicts differ by " + ", ".join(keyed),),
        keyed,
        tuple(paths),
    )


def _consistent(path: Path) -> bool:
    """Whether one sender can meet every keyed test the path assumed (same key, one value)."""
    held: dict[str, set[str]] = {}
    failed: dict[str, set[str]] = {}
    for m in path.maybes:
        if m.keyed and m.test is not None:
            key, value = m.test
            (held if m.holds else failed).setdefault(key, set()).add(value)
    return all(
        len(values) <= 1 and not values & failed.get(key, set()) for key, values in held.items()
    )


def _verdict(text: str | None) -> Verdict:
    return text if text in ("accept", "drop", "reject") else "unknown"  # type: ignore[return-value]


def _base(ruleset: Ruleset, chain: Chain, packet: Packet) -> list[Path]:
    """A base chain's ways out: its rules' verdicts, else its policy."""
    out = []
    for path in _chain(ruleset, chain, packet, 0):
        if path.verdict in (None, "return"):
            policy = Rule(chain.family, chain.table, chain.name, 0, (f"policy {chain.policy}",))
            path = Path(chain.policy, (*path.rules, policy), path.maybes)
        out.append(path)
    return out


def _chain(ruleset: Ruleset, chain: Chain, packet: Packet, depth: int) -> list[Path]:
    """Every way through one chain: a verdict, ``return``, or None (its end)."""
    if depth > MAX_DEPTH:
        return [Path("unknown", (), (Maybe(f"jumps deeper than {MAX_DEPTH}"),))]
    live = [Path(None)]
    done: list[Path] = []
    for rule in chain.rules:
        after: list[Path] = []
        for path in live:
            for step in _rule(ruleset, chain, rule, packet, depth):
                joined = path.then(step)
                (done if step.verdict is not None else after).append(joined)
        live = after
        if len(live) + len(done) > MAX_PATHS:
            return [Path("unknown", (), (Maybe(f"more than {MAX_PATHS} ways through"),))]
    return done + live


def _rule(ruleset: Ruleset, chain: Chain, rule: Rule, packet: Packet, depth: int) -> list[Path]:
    """One rule's ways: no match (verdict None), or each verdict its statements may reach."""
    if not any(_decides(statement) for statement in rule.expr):
        return [Path(None)]  # counters, logs, marks: whatever it matches, nothing changes
    matching = [Path(None)]  # the ways on which every statement so far matched
    out: list[Path] = []
    decided = False  # whether a statement with ways of its own (a verdict) has run
    for statement in rule.expr:
        found = _statement(ruleset, chain, rule, statement, packet, depth)
        if found is None or found is True:
            continue  # counter, log, comment; or a match that holds
        if found is False:
            if not decided:
                # Whatever the earlier may-matches did, the rule does not match: its
                # assumptions do not matter (and would only split the ways).
                return [Path(None)]
            return out + [Path(None, (), p.maybes) for p in matching]
        if isinstance(found, Maybe):
            failing = replace(found, holds=False)
            out += [Path(None, (), (*p.maybes, failing)) for p in matching]  # no match
            matching = [Path(None, p.rules, (*p.maybes, found)) for p in matching]
            continue
        decided = True
        going_on: list[Path] = []
        for path in matching:
            for step in found:
                joined = path.then(step)
                (going_on if step.verdict is None else out).append(joined)
        matching = going_on
    return out + matching


# Statements that can end or redirect a rule's chain. snat and masquerade end theirs with
# an accept, but a NAT chain filters nothing: a rule with only those decides no verdict.
_DECIDING = {
    "accept", "drop", "reject", "return", "jump", "goto", "vmap", "queue", "dnat",
    "redirect", "tproxy", "xt",
}  # fmt: skip


def _decides(statement: Any) -> bool:
    """Whether a statement can end or redirect the rule's chain (or an xt target may)."""
    if not isinstance(statement, dict):
        return True
    name = next(iter(statement), "")
    if name == "xt":
        return bool(statement["xt"].get("type") == "target")
    return name in _DECIDING


def _statement(
    ruleset: Ruleset, chain: Chain, rule: Rule, statement: Any, packet: Packet, depth: int
) -> bool | Maybe | list[Path] | None:
    """A match's truth, or the paths a verdict statement opens, or None (no effect)."""
    if not isinstance(statement, dict) or len(statement) != 1:
        return Maybe(f"statement {statement!r}")
    ((name, body),) = statement.items()
    if name == "match":
        return _match(ruleset, rule, body, packet)
    if name == "mangle" and isinstance(body, dict):
        return None
    if name in ("accept", "drop", "reject"):
        return [Path(name, (rule,))]
    if name == "return":
        return [Path("return", (rule,))]
    if name in ("jump", "goto"):
        return _jump(ruleset, chain, rule, name, body["target"], packet, depth)
    if name == "vmap":
        return _vmap(ruleset, chain, rule, body, packet, depth)
    if name == "limit" or (name in ("set", "meter") and "limit" in repr(body)):
        return RATE  # a meter's limit: over the rate, the rule matches
    if name == "ct count":
        return Maybe("ct count: how many connections a sender holds", keyed=True)
    if name in ("counter", "log", "comment", "notrack", "mangle", "set", "meter"):
        return None
    if name == "xt":
        return _xt(ruleset, rule, statement, body, packet)
    if name in ("queue",):
        return [Path("unknown", (rule,), (Maybe("queue: a userspace program decides"),))]
    if name in ("snat", "masquerade"):
        return [Path("accept", (rule,))]  # NAT statements end the rule with an accept
    if name in ("dnat", "redirect") and packet.hook == "input":
        return _nat(rule, name, body)
    if name in ("dnat", "redirect", "tproxy"):
        # The packet goes on with another destination: what this hook's later chains
        # see is not what was sent.
        return [Path("unknown", (rule,), (Maybe(f"{name}: the destination changes here"),))]
    return Maybe(f"statement {name}")


def _nat(rule: Rule, name: str, body: Any) -> list[Path]:
    """A dnat or redirect statement: the new destination, or unknown if it is not one."""
    body = body if isinstance(body, dict) else {}
    port = body.get("port")
    if port is not None and not isinstance(port, int):
        return [Path("unknown", (rule,), (Maybe(f"{name} to a port map or range"),))]
    if name == "redirect":
        return [Path("dnat", (rule,), nat=(None, port))]
    target = address(str(body.get("addr"))) if isinstance(body.get("addr"), str) else None
    if target is None:
        return [Path("unknown", (rule,), (Maybe("dnat to an address map or range"),))]
    return [Path("dnat", (rule,), nat=(target, port))]


def _xt(
    ruleset: Ruleset, rule: Rule, statement: Any, body: dict[str, Any], packet: Packet
) -> bool | Maybe | list[Path] | None:
    """An iptables extension, decoded from iptables-nft-save when it was read."""
    kind, name = body.get("type", "match"), body.get("name", "?")
    extension = _extension(rule, statement, name)
    if extension is None:
        # nft prints an x_tables extension's name, not its options.
        return Maybe(f"xt {kind} {name} (not decoded: its options could not be read)")
    facts = Facts(
        packet.hook, packet.proto, packet.dport, packet.sport, packet.peer,
        away=packet.daddr is not None, original_dport=packet.original_dport,
        marks=ruleset.sets_marks,
    )  # fmt: skip
    found = xt.test(extension, facts)
    if isinstance(found, bool):
        return found
    if found in ("accept", "drop", "reject"):
        return [Path(found, (rule,))]
    if found == xt.NO_EFFECT:
        return None
    if isinstance(found, xt.Nat):
        if packet.hook != "input":
            return [Path("unknown", (rule,), (Maybe(f"xt target {name} on output"),))]
        return [Path("dnat", (rule,), nat=(found.addr, found.port))]
    if found.startswith("keyed: "):
        return Maybe(f"xt {found.removeprefix('keyed: ')}", keyed=True)
    if kind == "target":
        return [Path("unknown", (rule,), (Maybe(found),))]
    return Maybe(found)


def _extension(rule: Rule, statement: Any, name: str) -> xt.Extension | None:
    """The decoded extension behind the rule's xt ``statement`` (by name, in order)."""
    if rule.xt is None:
        return None
    before = 0
    for e in rule.expr:
        if e is statement:
            break
        if isinstance(e, dict) and "xt" in e and e["xt"].get("name") == name:
            before += 1
    same = [x for x in rule.xt if x.name == name]
    return same[before] if before < len(same) else None


def _jump(
    ruleset: Ruleset, chain: Chain, rule: Rule, kind: str, target: str, packet: Packet, depth: int
) -> list[Path]:
    called = ruleset.chains.get((chain.family, chain.table, target))
    if called is None:
        return [Path("unknown", (rule,), (Maybe(f"{kind} to a missing chain {target}"),))]
    out = []
    for path in _chain(ruleset, called, packet, depth + 1):
        if path.verdict in (None, "return"):
            # Back from a jump: the next rule; back from a goto: this chain returns.
            verdict = None if kind == "jump" else "return"
            out.append(Path(verdict, path.rules, path.maybes))
        else:
            out.append(Path(path.verdict, (rule, *path.rules), path.maybes, path.nat))
    return out


def _vmap(
    ruleset: Ruleset, chain: Chain, rule: Rule, body: dict[str, Any], packet: Packet, depth: int
) -> list[Path]:
    key = _value(body["key"], packet, ruleset)
    if key is _ABSENT:
        return [Path(None)]  # a tcp map for a udp packet: no element can match
    data = body["data"]
    if isinstance(data, str) and data.startswith("@"):
        elements = ruleset.maps.get((rule.family, rule.table, data[1:]))
    else:
        elements = tuple(data.get("set", ())) if isinstance(data, dict) else None
    if elements is None or isinstance(key, Maybe):
        reason = key if isinstance(key, Maybe) else Maybe("a verdict map that changes")
        return [Path(None, (), (reason,)), Path("unknown", (rule,), (reason,))]
    for element in elements:
        if not (isinstance(element, list) and len(element) == 2):
            return [Path("unknown", (rule,), (Maybe("a verdict map element"),))]
        hit = _compare("==", key, element[0], ruleset, rule)
        if hit is True:
            result = _statement(ruleset, chain, rule, element[1], packet, depth)
            return result if isinstance(result, list) else [Path(None)]
        if isinstance(hit, Maybe):
            return [Path(None, (), (hit,)), Path("unknown", (rule,), (hit,))]
    return [Path(None)]


def _match(ruleset: Ruleset, rule: Rule, body: dict[str, Any], packet: Packet) -> bool | Maybe:
    value = _value(body["left"], packet, ruleset)
    if value is _ABSENT:
        return False  # a tcp match on a udp packet, an ip match on IPv6: no match
    if isinstance(value, Maybe):
        if value.keyed and body["op"] == "==":
            return replace(value, test=(value.reason, json.dumps(body["right"], sort_keys=True)))
        return value
    return _compare(body["op"], value, body["right"], ruleset, rule)


_ABSENT = object()


class _Local:
    """The host's own end of the packet: one of its unicast addresses, which one unknown."""


LOCAL = _Local()


class _RouteBack:
    """A reverse-path lookup (``fib saddr . iif oif``) that finds a route back.

    It leaves by the interface the packet came in on, since the packet's source is
    plausible for it (a packet assumption; docs/design.md, "Why the model is sound").
    """


_ROUTE_BACK = _RouteBack()


@dataclass(frozen=True)
class _Own:
    """The host's own end of the packet, when its addresses are known: one of these."""

    addresses: tuple[Address, ...]


def _own(ruleset: Ruleset, packet: Packet) -> Any:
    """The host's end of ``packet``: its addresses of the family, or LOCAL if not read.

    Not the loopback ones: a packet from outside is for the host's real addresses
    (route_localnet, which would let one reach 127.0.0.1, is not read).
    """
    if ruleset.local is None:
        return LOCAL
    found = tuple(
        sorted(a for a in ruleset.local if a.version == packet.family and not a.is_loopback)
    )
    return _Own(found) if found else LOCAL


# What ``ct original ...`` gives for a new packet (translated or not).
_ORIGINAL: dict[str, Any] = {
    "proto-dst": lambda p: p.original_dport if p.original_dport is not None else p.dport,
    "proto-src": lambda p: p.sport,
    "saddr": lambda p: p.peer if p.hook == "input" else LOCAL,
    "daddr": lambda p: LOCAL if p.hook == "input" else p.peer,
}


def _value(left: Any, packet: Packet, ruleset: Ruleset) -> Any:
    """The packet's value of a match's left side; _ABSENT (cannot apply) or a Maybe."""
    if not isinstance(left, dict) or len(left) != 1:
        return Maybe(f"expression {left!r}")
    ((kind, body),) = left.items()
    if kind == "payload":
        found = _payload(body, packet)
        return _own(ruleset, packet) if found is LOCAL else found
    if kind == "meta":
        key = body.get("key", "")
        if key == "mark" and ruleset.sets_marks:
            return Maybe("meta mark: a rule sets marks on the way")
        return _meta(key, packet)
    if kind == "ct":
        key = body.get("key")
        if key == "state":
            if ruleset.untracks:
                return Maybe("ct state: a rule turns connection tracking off")
            return frozenset({"new"})
        if key == "direction":
            return "original"
        if key == "status":
            # A new connection: not yet confirmed or seen replied; NATed if a DNAT was.
            return frozenset({"dnat"} if packet.original_dport is not None else ())
        if body.get("dir") == "original" and key in _ORIGINAL:
            return _ORIGINAL[key](packet)
        return Maybe(f"ct {key}")
    if kind == "fib":
        flags = set(body.get("flags", ()))
        if body.get("result") == "type" and "daddr" in flags and packet.hook == "input":
            return "local" if packet.daddr is None else "unicast"
        if body.get("result") == "oif" and {"saddr", "iif"} <= flags and packet.hook == "input":
            if "mark" in flags and ruleset.sets_marks:
                return Maybe("fib lookup by mark: a rule sets marks on the way")
            return _ROUTE_BACK  # a reverse-path filter (rp_filter, firewalld's IPv6_rpfilter)
        return Maybe("fib lookup")
    return Maybe(f"{kind} expression")


def _payload(body: dict[str, Any], packet: Packet) -> Any:
    protocol, field = body.get("protocol"), body.get("field")
    if protocol in ("tcp", "udp", "th"):
        if protocol != "th" and protocol != packet.proto:
            return _ABSENT
        if field == "dport":
            return packet.dport
        if field == "sport":
            return packet.sport
        return Maybe(f"{protocol} {field}")
    if protocol in ("ip", "ip6"):
        if (protocol == "ip") != (packet.family == 4):
            return _ABSENT
        if field in ("protocol", "nexthdr"):
            return _PROTO_NUMBERS[packet.proto]
        own = "saddr" if packet.hook == "input" else "daddr"
        if field == own:
            return packet.peer
        if field in ("saddr", "daddr"):
            # One of this host's unicast addresses, unless a DNAT sent the packet on.
            return packet.daddr if packet.daddr is not None else LOCAL
        return Maybe(f"{protocol} {field}")
    if protocol in _PROTO_NUMBERS:
        return _ABSENT  # another transport protocol's header: a tcp or udp packet has none
    return Maybe(f"{protocol} {field}")


def _meta(key: str, packet: Packet) -> Any:
    if key == "l4proto":
        return _PROTO_NUMBERS[packet.proto]
    if key == "nfproto":
        return "ipv4" if packet.family == 4 else "ipv6"
    if key == "protocol":
        return "ip" if packet.family == 4 else "ip6"
    if key in (("iifname", "iif") if packet.hook == "input" else ("oifname", "oif")):
        return packet.iface  # nft names the interface of iif/oif matches too
    if key in ("oifname", "oif") and packet.hook == "input":
        # Arriving: no output device, so the match fails, unless a DNAT sent it on.
        return packet.oif if packet.oif is not None else _ABSENT
    if key == "mark":
        return 0
    if key == "pkttype":
        return "host"
    if key in KEYED:
        if packet.hook == "input":
            return _ABSENT  # no socket yet: the kernel ends the rule, whatever the operator
        return Maybe(f"meta {key}", keyed=True)
    return Maybe(f"meta {key}")


def _compare(op: str, value: Any, right: Any, ruleset: Ruleset, rule: Rule) -> bool | Maybe:
    elements = _elements(right, ruleset, rule)
    if isinstance(elements, Maybe):
        return elements
    if isinstance(value, _Own):
        # The same answer for every one of the host's addresses, or it depends on which.
        answers = {_compare(op, a, right, ruleset, rule) for a in value.addresses}
        if len(answers) == 1:
            return answers.pop()
        return Maybe("this host's own address (the rule tells its addresses apart)")
    if value is _ROUTE_BACK:
        # "oif missing" / "oif exists": the route exists; which device it names is not read.
        if op in ("==", "!=") and elements and all(isinstance(e, bool) for e in elements):
            return (True in elements) == (op == "==")
        return Maybe("fib lookup of the device a reverse route leaves by")
    if value is LOCAL:
        # A unicast address is never a multicast one; any other comparison needs to know
        # which of the host's addresses the packet is for.
        if op in ("==", "!=") and elements and all(_multicast(e) for e in elements):
            return op == "!="
        return Maybe("this host's own address (which one is not modelled)")
    if op in ("==", "in", "!="):
        found: bool | Maybe = False
        for element in elements:
            hit = _equal(value, element)
            if hit is True:
                found = True
                break
            if isinstance(hit, Maybe) and found is False:
                found = hit
        if op == "!=" and isinstance(found, bool):
            return not found
        return found
    if op in ("<", ">", "<=", ">=") and isinstance(value, int) and len(elements) == 1:
        limit = elements[0]
        if isinstance(limit, int):
            return {
                "<": value < limit,
                ">": value > limit,
                "<=": value <= limit,
                ">=": value >= limit,
            }[op]
    return Maybe(f"comparison {op}")


def _multicast(element: Any) -> bool:
    net = network(element)
    return net is not None and net.is_multicast


def _elements(right: Any, ruleset: Ruleset, rule: Rule) -> list[Any] | Maybe:
    if isinstance(right, str) and right.startswith("@"):
        found = ruleset.sets.get((rule.family, rule.table, right[1:]))
        if found is None:
            return Maybe(f"set {right}: it changes (dynamic or timeout) or is missing")
        return list(found)
    if isinstance(right, dict) and "set" in right:
        return list(right["set"])
    if isinstance(right, list):
        return list(right)
    return [right]


def _equal(value: Any, element: Any) -> bool | Maybe:
    if isinstance(value, frozenset):
        return element in value if isinstance(element, str) else Maybe("ct state element")
    if isinstance(element, dict):
        if "range" in element:
            low, high = element["range"]
            if isinstance(value, int):
                return bool(low <= value <= high)
            first, last = address(str(low)), address(str(high))
            if not isinstance(value, str) and first is not None and last is not None:
                return bool(value.version == first.version and first <= value <= last)
        if "prefix" in element and not isinstance(value, int | str):
            net = network(element)
            if net is not None:
                return value.version == net.version and value in net
        return Maybe(f"element {element!r}")
    if isinstance(value, int):
        if isinstance(element, str):
            if element not in _PROTO_NUMBERS:
                return Maybe(f"protocol {element}")
            return _PROTO_NUMBERS[element] == value
        return bool(value == element)
    if isinstance(value, str):
        if isinstance(element, str) and element.endswith("*") and not element.endswith("\\*"):
            return value.startswith(element[:-1])
        return value == str(element).replace("\\*", "*")
    found = address(str(element))
    return value == found if found is not None else Maybe(f"element {element!r}")
