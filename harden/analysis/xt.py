"""iptables extensions, decoded from ``iptables-nft-save`` (pure).

``nft -j`` prints an x_tables extension by name only (``{"xt": {"name": "conntrack"}}``),
not its options; ufw's rules are mostly such extensions. ``iptables-nft-save`` prints the
same rules with their options, chain by chain and in the same order, so the n-th rule of
a chain in one is the n-th in the other, and a rule's extensions appear in the same order
in both. ``parse_save`` reads the save text; ``test`` decides one decoded match for a new
packet, or says why it cannot. docs/design.md, "Reading the live ruleset".
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

ChainKey = tuple[str, str, str]  # (nft family, table, chain)


@dataclass(frozen=True)
class Extension:
    """One ``-m NAME`` match or ``-j TARGET`` of a rule, with its options as written."""

    kind: str  # "match" or "target"
    name: str
    options: tuple[tuple[str, tuple[str, ...], bool], ...] = ()  # (option, values, negated)

    def option(self, *names: str) -> tuple[tuple[str, ...], bool] | None:
        """The values of the first of ``names`` given, and whether it was negated."""
        for option, values, negated in self.options:
            if option in names:
                return values, negated
        return None


@dataclass(frozen=True)
class SavedRule:
    """A rule's extensions, in order."""

    extensions: tuple[Extension, ...] = field(default_factory=tuple)


def parse_save(text: str, family: str) -> dict[ChainKey, list[SavedRule]]:
    """Each chain's rules as ``iptables-nft-save`` prints them (``family``: ip or ip6)."""
    rules: dict[ChainKey, list[SavedRule]] = {}
    table = ""
    for line in text.splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
        elif line.startswith("-A "):
            words = shlex.split(line)
            rules.setdefault((family, table, words[1]), []).append(_rule(words[2:]))
    return rules


def _rule(words: list[str]) -> SavedRule:
    extensions: list[Extension] = []
    current: tuple[str, str] | None = None
    options: list[tuple[str, tuple[str, ...], bool]] = []
    negated = False
    i = 0
    while i < len(words):
        word = words[i]
        if word == "!":
            negated = True
        elif word in ("-m", "--match", "-j", "--jump", "-g", "--goto"):
            if current is not None:
                extensions.append(Extension(current[0], current[1], tuple(options)))
            kind = "match" if word in ("-m", "--match") else "target"
            current, options = (kind, words[i + 1]), []
            i += 1
        elif word.startswith("--") and current is not None:
            values = []
            while i + 1 < len(words) and not words[i + 1].startswith("-") and words[i + 1] != "!":
                values.append(words[i + 1])
                i += 1
            options.append((word, tuple(values), negated))
            negated = False
        elif word.startswith("-"):
            # -p, -s, -d, -i, -o and their values: native in nft, read from its JSON.
            if current is not None:
                extensions.append(Extension(current[0], current[1], tuple(options)))
                current, options = None, []
            i += 0 if word in ("-f", "--fragment") else 1  # -f takes no value
            negated = False
        i += 1
    if current is not None:
        extensions.append(Extension(current[0], current[1], tuple(options)))
    return SavedRule(tuple(extensions))


# What a decoded extension says about a new packet: True, False, a verdict, or why not.
NO_EFFECT = "no effect"
NOT_DECODED = "not decoded"


@dataclass(frozen=True)
class Facts:
    """What the model assumes of the packet, as the extensions ask it."""

    hook: str
    proto: str
    dport: int
    sport: int
    peer: Any  # an IPv4Address or IPv6Address
    away: bool = False  # a DNAT sent it to another host: its destination is not LOCAL
    original_dport: int | None = None  # after a DNAT: the port it was sent to
    marks: bool = False  # a rule of the ruleset sets marks


@dataclass(frozen=True)
class Nat:
    """A DNAT or REDIRECT target: the new destination (None: this host), port (None: same)."""

    addr: Any
    port: int | None


def test(extension: Extension, facts: Facts) -> bool | str | Nat:
    """A match's truth for the packet, or a target's effect, or why it stays unknown.

    Returns True/False for a match; "accept", "drop", "reject" or NO_EFFECT for a target;
    any other text is the reason the model cannot tell.
    """
    if extension.kind == "target":
        return _target(extension)
    name = extension.name
    if name in ("conntrack", "state"):
        return _ctstate(extension, facts)
    if name == "addrtype":
        return _addrtype(extension, facts)
    if name == "multiport":
        return _multiport(extension, facts)
    if name == "comment":
        return True
    if name == "pkttype":
        found = extension.option("--pkt-type")
        return _negate(found is not None and found[0] == ("unicast",), found)
    if name in ("rt", "icmp", "icmp6", "ah", "esp", "frag", "hbh", "dst"):
        return False  # a header a plain new TCP or UDP packet does not carry
    if name == "iprange":
        return _iprange(extension, facts)
    if name in ("tcp", "udp"):
        return _ports_match(extension, facts)
    if name == "rpfilter":
        return _rpfilter(extension, facts)
    if name == "owner":
        return "keyed: owner"
    if name in ("limit", "hashlimit", "recent", "connlimit"):
        return f"keyed: {name} (the rate a sender chooses)"  # ufw's "limit" is recent
    return f"xt match {name} ({NOT_DECODED})"


def _rpfilter(extension: Extension, facts: Facts) -> bool | str:
    """A reverse-path check passes.

    The packet's source is plausible for its interface (a packet assumption, as for nft's
    ``fib saddr . iif oif``); with ``--validmark``, only while no rule sets marks.
    """
    if facts.hook != "input":
        return "xt match rpfilter outside the input path"
    if extension.option("--validmark") is not None and facts.marks:
        return "xt match rpfilter by mark: a rule sets marks on the way"
    return extension.option("--invert") is None


def _negate(result: bool, found: tuple[tuple[str, ...], bool] | None) -> bool:
    return (not result) if found is not None and found[1] else result


# Targets that log, mark or rewrite what does not decide the verdict.
_NO_EFFECT = {
    "LOG", "NFLOG", "ULOG", "MARK", "CONNMARK", "TCPMSS", "CT", "NOTRACK", "CHECKSUM", "SNAT",
    "MASQUERADE", "AUDIT", "TRACE", "CLASSIFY", "DSCP",
}  # fmt: skip


def _target(extension: Extension) -> bool | str | Nat:
    name = extension.name
    if name in _NO_EFFECT:
        return NO_EFFECT
    if name in ("DNAT", "REDIRECT"):
        return _nat(extension)
    if name == "REJECT":
        return "reject"
    if name in ("ACCEPT", "DROP"):
        return name.lower()
    return f"xt target {name} ({NOT_DECODED})"


def _ctstate(extension: Extension, facts: Facts) -> bool | str:
    """conntrack: the state (NEW, and DNAT once translated), the original port, the direction."""
    result = True
    for option, values, negated in extension.options:
        if option in ("--ctstate", "--state"):
            states = {s for value in values for s in value.split(",")}
            holds = "NEW" in states or ("DNAT" in states and facts.original_dport is not None)
        elif option == "--ctorigdstport" and values:
            low, _, high = values[0].partition(":")
            port = facts.original_dport if facts.original_dport is not None else facts.dport
            holds = int(low) <= port <= int(high or low)
        elif option == "--ctdir" and values:
            holds = values[0] == "ORIGINAL"
        else:
            return f"xt match conntrack {option} ({NOT_DECODED})"
        result = result and (holds != negated)
    return result


def _nat(extension: Extension) -> Nat | str:
    """``--to-destination ADDR[:PORT]`` or ``--to-ports PORT``; a range stays unknown."""
    found = extension.option("--to-destination", "--to-ports")
    if found is None or len(found[0]) != 1:
        return f"xt target {extension.name} ({NOT_DECODED})"
    value = found[0][0]
    if extension.name == "REDIRECT":
        return Nat(None, int(value)) if value.isdigit() else f"xt target REDIRECT {value}"
    if value.startswith("["):  # [2001:db8::1]:80
        host, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":")
    else:
        host, _, port = value.partition(":") if value.count(":") == 1 else (value, "", "")
    try:
        addr = ip_address(host)
    except ValueError:
        return f"xt target DNAT {value} (a range)"
    if port and not port.isdigit():
        return f"xt target DNAT {value} (a port range)"
    return Nat(addr, int(port) if port else None)


def _addrtype(extension: Extension, facts: Facts) -> bool | str:
    result = True
    for option, values, negated in extension.options:
        if option not in ("--dst-type", "--src-type"):
            return f"xt match addrtype {option} ({NOT_DECODED})"
        types = {t for value in values for t in value.split(",")}
        local = (option == "--dst-type") == (facts.hook == "input") and not facts.away
        # The local end of a new packet is one of this host's unicast addresses (LOCAL);
        # the other end a unicast peer (UNICAST), and so is a DNAT's new destination.
        holds = ("LOCAL" in types) if local else ("UNICAST" in types)
        result = result and (holds != negated)
    return result


def _ports(values: tuple[str, ...]) -> list[tuple[int, int]]:
    out = []
    for value in values:
        for part in value.split(","):
            low, _, high = part.partition(":")
            out.append((int(low), int(high or low)))
    return out


def _multiport(extension: Extension, facts: Facts) -> bool | str:
    result = True
    for option, values, negated in extension.options:
        if option in ("--dports", "--destination-ports"):
            ports = [facts.dport]
        elif option in ("--sports", "--source-ports"):
            ports = [facts.sport]
        elif option == "--ports":
            ports = [facts.dport, facts.sport]
        else:
            return f"xt match multiport {option} ({NOT_DECODED})"
        hit = any(lo <= p <= hi for p in ports for lo, hi in _ports(values))
        result = result and (hit != negated)
    return result


def _ports_match(extension: Extension, facts: Facts) -> bool | str:
    """``-m tcp`` / ``-m udp``: ports, and the flags of a new connection's first segment."""
    if extension.name != facts.proto:
        return False  # the protocol's own match on another protocol's packet
    result = True
    for option, values, negated in extension.options:
        if option in ("--dport", "--destination-port", "--sport", "--source-port") and values:
            port = facts.dport if option in ("--dport", "--destination-port") else facts.sport
            low, _, high = values[0].partition(":")
            holds = int(low or 0) <= port <= int(high or low or 65535)
        elif option == "--syn":
            holds = True  # a new connection's first segment: SYN, without ACK, RST or FIN
        elif option == "--tcp-flags" and len(values) == 2:
            mask, comp = (set(v.split(",")) for v in values)
            mask = {"SYN", "ACK", "FIN", "RST", "URG", "PSH"} if "ALL" in mask else mask
            holds = mask & {"SYN"} == comp - {"NONE"}
        else:
            return f"xt match {extension.name} {option} ({NOT_DECODED})"
        result = result and (holds != negated)
    return result


def _iprange(extension: Extension, facts: Facts) -> bool | str:
    result = True
    for option, values, negated in extension.options:
        peer_side = "--src-range" if facts.hook == "input" else "--dst-range"
        if option != peer_side or not values:
            return f"xt match iprange {option} ({NOT_DECODED})"
        low, _, high = values[0].partition("-")
        try:
            hit = ip_address(low) <= facts.peer <= ip_address(high or low)
        except (TypeError, ValueError):
            return f"xt match iprange {values[0]} ({NOT_DECODED})"
        result = result and (hit != negated)
    return result
