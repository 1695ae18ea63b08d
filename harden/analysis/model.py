"""The live ruleset as data: tables, base chains, rules and sets from ``nft -j list ruleset``.

Pure: ``parse`` takes the JSON the kernel printed and returns a ``Ruleset``; the engine
(harden.analysis.engine) follows packets through it. docs/design.md, "Reading the live
ruleset", says what is modelled and what stays unknown.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from ipaddress import ip_address, ip_network
from typing import Any

from harden.analysis.xt import ChainKey, Extension, SavedRule, parse_save
from harden.errors import EnvironmentProblem
from harden.types import Address, Network

# Families whose base chains an IPv4 or IPv6 packet passes on the hooks analysed.
FAMILY_TABLES = {4: ("ip", "inet"), 6: ("ip6", "inet")}
HOOKS = ("input", "output", "forward")
# What the model reads of a host, as JSON: "nftables", the items of ``nft -j list
# ruleset``; "saves", ``iptables-nft-save`` output by nft family (ip, ip6), when nft shows
# extensions by name only; "addresses" and "routes" ({"dst", "dev"}, the main table),
# where a translated packet goes; "unknown", why any of it cannot be read.
Snapshot = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One rule: where it is, its expressions (nft JSON), and a short text for people."""

    family: str
    table: str
    chain: str
    handle: int  # 0: the chain's policy
    expr: tuple[Any, ...] = field(compare=False, hash=False)
    comment: str = field(default="", compare=False, hash=False)
    # Its iptables extensions with their options (from iptables-nft-save), if read.
    xt: tuple[Extension, ...] | None = field(default=None, compare=False, hash=False)

    @property
    def text(self) -> str:
        """The rule in a compact, readable form (its extensions as iptables writes them)."""
        return describe(self.expr, self.xt)

    def to_json(self) -> dict[str, Any]:
        """Where the rule is and what it says."""
        return {
            "table": f"{self.family} {self.table}",
            "chain": self.chain,
            "handle": self.handle,
            "rule": self.text,
        }


@dataclass(frozen=True)
class Chain:
    """A chain; a base chain has a hook, a priority and a policy."""

    family: str
    table: str
    name: str
    hook: str | None = None
    device: tuple[str, ...] = ()  # a netdev chain's interfaces
    prio: int = 0
    policy: str = "accept"
    type: str = "filter"
    rules: tuple[Rule, ...] = ()


SetKey = tuple[str, str, str]  # (family, table, name)


@dataclass(frozen=True)
class Ruleset:
    """Every chain and named set of the ruleset; ``None`` elements: a set that changes."""

    chains: Mapping[SetKey, Chain] = field(default_factory=dict)
    sets: Mapping[SetKey, tuple[Any, ...] | None] = field(default_factory=dict)
    maps: Mapping[SetKey, tuple[Any, ...] | None] = field(default_factory=dict)
    # Some rule sets a packet mark, or turns connection tracking off: a later match on
    # the mark or the ct state then depends on the path, which is not modelled.
    sets_marks: bool = False
    untracks: bool = False
    # Some rule changes a destination (dnat, redirect): the packet may go on to forward.
    translates: bool = False
    # This host's addresses and main routing table ((network, device), longest prefix
    # first), from the snapshot: where a translated packet goes. None: not read.
    local: frozenset[Address] | None = None
    routes: tuple[tuple[Network, str], ...] | None = None
    # A view with the rules no packet of a cell can match taken out (harden.analysis.index):
    # the whole ruleset, for a packet a DNAT changed on the way.
    full: Ruleset | None = None

    def route(self, destination: Address) -> str | None:
        """The device the main table sends ``destination`` out of (None: no route known)."""
        for net, dev in self.routes or ():
            if destination.version == net.version and destination in net:
                return dev
        return None

    def base_chains(self, hook: str, family: int) -> list[Chain]:
        """The base chains a packet of ``family`` passes on ``hook``, in priority order."""
        tables = FAMILY_TABLES[family]
        found = [c for c in self.chains.values() if c.hook == hook and c.family in tables]
        return sorted(found, key=lambda c: (c.prio, c.family, c.table, c.name))

    def device_chains(self, hook: str) -> list[Chain]:
        """Netdev chains on ``hook`` (ingress, egress): every family passes them first."""
        found = [c for c in self.chains.values() if c.hook == hook and c.family == "netdev"]
        return sorted(found, key=lambda c: (c.prio, c.table, c.name))


def parse(
    document: Mapping[str, Any], saved: Mapping[ChainKey, list[SavedRule]] | None = None
) -> Ruleset:
    """The ruleset of ``nft -j list ruleset`` (EnvironmentProblem if it is not one).

    ``saved``: the chains of ``iptables-nft-save``, whose rules give the options of the
    extensions nft shows by name only; a chain whose rules do not line up gets none.
    """
    items = document.get("nftables")
    if not isinstance(items, list):
        raise EnvironmentProblem("nft -j list ruleset printed no 'nftables' list")
    heads: dict[SetKey, dict[str, Any]] = {}
    rules: dict[SetKey, list[Rule]] = {}
    sets: dict[SetKey, tuple[Any, ...] | None] = {}
    maps: dict[SetKey, tuple[Any, ...] | None] = {}
    for item in items:
        if "chain" in item:
            c = item["chain"]
            heads[(c["family"], c["table"], c["name"])] = c
        elif "rule" in item:
            r = item["rule"]
            key = (r["family"], r["table"], r["chain"])
            rule = Rule(
                r["family"], r["table"], r["chain"], int(r.get("handle", 0)),
                tuple(r.get("expr", ())), str(r.get("comment", "")),
            )  # fmt: skip
            rules.setdefault(key, []).append(rule)
        elif "set" in item or "map" in item:
            kind = "set" if "set" in item else "map"
            s = item[kind]
            flags = s.get("flags", ())
            flags = [flags] if isinstance(flags, str) else list(flags)
            dynamic = bool({"dynamic", "timeout"} & set(flags)) or "timeout" in s
            elements = None if dynamic else tuple(_element(e) for e in s.get("elem", ()))
            (sets if kind == "set" else maps)[(s["family"], s["table"], s["name"])] = elements
    chains = {
        key: Chain(
            family=key[0],
            table=key[1],
            name=key[2],
            hook=head.get("hook"),
            prio=int(head.get("prio", 0)),
            device=_devices(head),
            policy=str(head.get("policy", "accept")),
            type=str(head.get("type", "filter")),
            rules=_with_xt(tuple(rules.get(key, ())), (saved or {}).get(key)),
        )
        for key, head in heads.items()
    }
    text = json.dumps(document)
    marks = '"mark"' in text and ('"mangle"' in text or '"MARK"' in text or "CONNMARK" in text)
    untracks = '"notrack"' in text or '"NOTRACK"' in text or '"CT"' in text
    # A dnat or redirect statement (not `ct status dnat`), or iptables' targets.
    translates = any(word in text for word in ('"dnat": {', '"redirect": ', '"DNAT"', '"REDIRECT"'))
    return Ruleset(chains, sets, maps, marks, untracks, translates)


def from_snapshot(data: Mapping[str, Any]) -> tuple[Ruleset, list[str]]:
    """The ruleset of a snapshot, and why any of it cannot be read.

    EnvironmentProblem if ``data`` is not a snapshot (it may come from another host).
    """
    try:
        saved: dict[ChainKey, list[SavedRule]] | None = None
        if data.get("saves"):
            saved = {}
            for family, text in data["saves"].items():
                saved.update(parse_save(str(text), str(family)))
        ruleset = parse({"nftables": data["nftables"]}, saved)
        unknown = [str(reason) for reason in data.get("unknown", ())]
        if "addresses" in data and "routes" in data:
            local = frozenset(ip_address(str(a)) for a in data["addresses"])
            routes = sorted(
                ((ip_network(str(r["dst"]), strict=False), str(r["dev"])) for r in data["routes"]),
                key=lambda route: -route[0].prefixlen,
            )
            ruleset = replace(ruleset, local=local, routes=tuple(routes))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise EnvironmentProblem(f"not a ruleset snapshot ({type(exc).__name__}: {exc})") from None
    # Bridged frames are not modelled; bridge base chains that can only accept (the
    # ebtables-nft tables firewalld's iptables backend makes) change nothing.
    bridged = sorted(
        {
            f"bridge {c.table}"
            for c in ruleset.chains.values()
            if c.family == "bridge" and c.hook and not _only_accepts(ruleset, c)
        }
    )
    if bridged:
        unknown.append(f"bridge-family chains ({', '.join(bridged)}) are not modelled")
    return ruleset, unknown


# Statements that neither drop nor hand the packet elsewhere: matches, counters, logs.
_HARMLESS = {"match", "counter", "log", "comment", "accept", "return", "jump", "goto"}


def _only_accepts(ruleset: Ruleset, chain: Chain) -> bool:
    """Whether every way through ``chain`` (and the chains it calls) ends in an accept."""
    todo, seen = [chain], set()
    while todo:
        current = todo.pop()
        key = (current.family, current.table, current.name)
        if key in seen:
            continue
        seen.add(key)
        if current.policy != "accept":
            return False
        for e in (e for rule in current.rules for e in rule.expr):
            if not (isinstance(e, dict) and len(e) == 1 and set(e) <= _HARMLESS):
                return False
            for kind in set(e) & {"jump", "goto"}:
                called = ruleset.chains.get((current.family, current.table, e[kind]["target"]))
                if called is None:
                    return False
                todo.append(called)
    return True


def host_notes(snapshot: Snapshot) -> list[str]:
    """What the host's settings expose beyond the rows (the rows are for its own addresses)."""
    notes = []
    localnet = [str(name) for name in snapshot.get("route_localnet", ())]
    if localnet:
        where = "every interface" if "all" in localnet else ", ".join(localnet)
        notes.append(
            f"route_localnet is on ({where}): a packet from the link to 127.0.0.0/8 is "
            "delivered, so a service bound to 127.0.0.1 answers it wherever the rows accept "
            "its port (kube-proxy turns this on for NodePorts on localhost)"
        )
    return notes


def _devices(head: Mapping[str, Any]) -> tuple[str, ...]:
    found = head.get("dev", head.get("device", ()))
    return (found,) if isinstance(found, str) else tuple(found)


def _with_xt(rules: tuple[Rule, ...], saved: list[SavedRule] | None) -> tuple[Rule, ...]:
    """Each rule with its decoded extensions, when the save text has the same rules."""
    if saved is None or len(saved) != len(rules):
        return rules
    return tuple(replace(r, xt=s.extensions) for r, s in zip(rules, saved, strict=True))


@lru_cache(maxsize=65536)
def address(text: str) -> Address | None:
    """An address as nft prints it, parsed once however often the engine asks (or None)."""
    try:
        return ip_address(text)
    except ValueError:
        return None


@lru_cache(maxsize=65536)
def _network(text: str) -> Network | None:
    try:
        return ip_network(text, strict=False)
    except ValueError:
        return None


def network(value: Any) -> Network | None:
    """The network of an nft prefix (``{"prefix": {"addr", "len"}}``) or address text."""
    if isinstance(value, dict) and isinstance(value.get("prefix"), dict):
        return _network(f"{value['prefix']['addr']}/{value['prefix']['len']}")
    return _network(value) if isinstance(value, str) else None


def _element(element: Any) -> Any:
    """A set element without its counters or timeouts: ``{"elem": {"val": x}}`` is x."""
    if isinstance(element, dict) and "elem" in element:
        return element["elem"].get("val")
    return element


def describe(expr: tuple[Any, ...], xt: tuple[Extension, ...] | None = None) -> str:
    """A rule's expressions as one line of text: the parts people read, nft's JSON for others."""
    parts = []
    extensions = list(xt or ())
    for e in expr:
        if isinstance(e, dict) and "xt" in e and extensions:
            # By name: iptables-nft writes some matches (-m tcp) as native expressions.
            name = e["xt"].get("name") if isinstance(e["xt"], dict) else None
            found = next((x for x in extensions if x.name == name), None)
            if found is not None:
                extensions.remove(found)
                parts.append(_xt_text(found))
                continue
        if isinstance(e, str):
            parts.append(e)
            continue
        if not isinstance(e, dict) or len(e) != 1:
            parts.append(json.dumps(e, separators=(",", ":")))
            continue
        ((name, body),) = e.items()
        if name == "match":
            parts.append(f"{_side(body['left'])} {body['op']} {_side(body['right'])}")
        elif name in ("accept", "drop", "return", "continue") and body is None:
            parts.append(name)
        elif name in ("jump", "goto"):
            parts.append(f"{name} {body['target']}")
        elif name == "counter":
            parts.append("counter")
        else:
            parts.append(f"{name} {json.dumps(body, separators=(',', ':'))}")
    return " ".join(parts)


def _xt_text(extension: Extension) -> str:
    """``-m addrtype --dst-type LOCAL``, ``-j REJECT``: as iptables-save prints it."""
    flag = "-m" if extension.kind == "match" else "-j"
    words = [flag, extension.name]
    for option, values, negated in extension.options:
        words += [*(["!"] if negated else []), option, *values]
    return " ".join(words)


def _side(value: Any) -> str:
    if isinstance(value, dict) and len(value) == 1:
        ((name, body),) = value.items()
        if name == "payload" and isinstance(body, dict) and "field" in body:
            return f"{body.get('protocol', '')} {body['field']}".strip()
        if name in ("meta", "ct") and isinstance(body, dict):
            return f"{name} {body.get('key', '')}"
        if name == "prefix":
            return f"{body['addr']}/{body['len']}"
        if name == "range":
            return f"{body[0]}-{body[1]}"
        if name == "set":
            return "{ " + ", ".join(_side(v) for v in body) + " }"
    if isinstance(value, list):
        return "{ " + ", ".join(_side(v) for v in value) + " }"
    return (
        json.dumps(value, separators=(",", ":")) if not isinstance(value, str | int) else str(value)
    )
