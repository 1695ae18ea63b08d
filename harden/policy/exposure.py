"""The exposure difference of two policies (``harden diff OLD NEW``): what NEW opens, closes.

Exposure is, per address family and protocol, the set of (port, source address) a new
connection is accepted for. It is read from the normalised policies, so reordering,
renaming, splitting or merging services changes nothing.

Every port change is exact: an ``opens`` or ``widens`` change on ``ports`` adds exactly
``after`` minus ``before`` (per family, ``None`` is any source and ``()`` none); a ``closes``
or ``narrows`` change removes exactly ``before`` minus ``after``. ``opens`` and ``closes``
have nothing on one side; ``widens`` and ``narrows`` keep the ports open with a larger or
smaller source set. When both lists change in ways neither contains (198.18.1.0/24 becomes
198.18.2.0/24), the difference reads as an ``opens`` and a ``closes``.

Egress (``direction == "egress"``) is the same per family and protocol, with (port,
destination address) a new outbound connection may be opened to: ``opens egress tcp/443
to 203.0.113.0/24``. It is exact, as above, when both policies filter outbound traffic
(``egress.policy`` drop or reject). Under ``accept`` everything leaves, so a change from
or to ``accept`` is stated as the ``egress.policy`` change alone (never as 65535 closed
ports): ``drop -> accept`` needs nothing more (everything now leaves), and ``accept ->
drop`` (or ``reject``) is followed by one ``allows`` change per protocol, family and
destination set listing what NEW still lets out (``before`` is any destination, ``after``
the allowed ones; every other port and destination is closed). ``egress.dhcp`` is a
policy change when both filter; from or to ``accept`` the policy change's text says
whether DHCP renewals still leave; a change of ``egress.dhcp_servers`` (where DHCP may go
besides the broadcast address) is one too. Drop and reject only differ in how a refused
connection fails: a policy change. An egress ``opens``/``widens`` is reviewed like an
inbound one (listed first, marked in markdown); every change counts for ``changed``.

JSON entries carry ``direction``: ``inbound`` (ports reached from outside and the
settings of the input side), ``egress`` or ``forward`` (``forward.*`` settings).
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from itertools import pairwise
from typing import Any, Literal

from harden.errors import ExitStatus
from harden.manifest.nets import collapse, minus
from harden.manifest.ports import PortRange, merge
from harden.policy.model import Policy, Sources
from harden.types import FAMILIES, PROTOS, Family, Network, Proto

SCHEMA = "harden.exposure/1"
Kind = Literal["opens", "closes", "widens", "narrows", "policy", "allows"]
FamilyName = Literal["ipv4", "ipv6", "both"]
Direction = Literal["inbound", "egress", "forward"]

# Opens first: they are what a reviewer must look at.
ORDER: dict[Kind, int] = {
    "opens": 0,
    "widens": 1,
    "narrows": 2,
    "closes": 3,
    "policy": 4,
    "allows": 5,
}
_DIRECTION: dict[Direction, int] = {"inbound": 0, "egress": 1, "forward": 2}
_FAMILY: dict[Family, FamilyName] = {4: "ipv4", 6: "ipv6"}


@dataclass(frozen=True)
class Change:
    """One statement of an exposure difference.

    Port changes carry ``proto``, ``ports`` and the source sets ``before`` and ``after``
    (``None``: any source of ``family``; ``()``: none); for ``direction == "egress"``
    they are destination sets. Policy changes (``change == "policy"``) name the
    ``setting`` and its ``old``/``new`` values instead. ``allows`` (egress only) lists
    what NEW still lets out when it starts filtering: ``before`` is ``None``.
    """

    change: Kind
    family: FamilyName
    proto: str | None
    ports: tuple[PortRange, ...]
    before: Sources
    after: Sources
    text: str
    setting: str | None = None
    old: str | bool | None = None
    new: str | bool | None = None
    direction: Direction = "inbound"

    def to_json(self) -> dict[str, Any]:
        """One entry of ``changes``."""
        if self.change == "policy":
            return {
                "change": "policy",
                "direction": self.direction,
                "family": self.family,
                "proto": self.proto,
                "ports": [],
                "setting": self.setting,
                "from": self.old,
                "to": self.new,
                "text": self.text,
            }
        return {
            "change": self.change,
            "direction": self.direction,
            "family": self.family,
            "proto": self.proto,
            "ports": [str(r) for r in self.ports],
            "from": _sources_json(self.before),
            "to": _sources_json(self.after),
            "text": self.text,
        }


@dataclass(frozen=True)
class ExposureDiff:
    """What NEW accepts that OLD did not, and the reverse (``harden diff OLD NEW``)."""

    old: str
    new: str
    changes: tuple[Change, ...]

    @property
    def changed(self) -> bool:
        """Whether the exposure differs at all."""
        return bool(self.changes)

    @property
    def exit_status(self) -> ExitStatus:
        """0 no exposure change, 1 a change."""
        return ExitStatus.FAILED if self.changed else ExitStatus.OK

    def to_json(self) -> dict[str, Any]:
        """``diff OLD NEW --format json``: schema harden.exposure/1."""
        return {
            "schema": SCHEMA,
            "old": self.old,
            "new": self.new,
            "changed": self.changed,
            "changes": [c.to_json() for c in self.changes],
        }

    def to_text(self) -> str:
        """One line per change, opens first; ``no exposure change`` otherwise."""
        return "\n".join(c.text for c in self.changes) or "no exposure change"

    def to_markdown(self) -> str:
        """A short section for a pull-request review comment: opens first, marked."""
        lines = [f"### Exposure diff: `{_code(self.old)}` → `{_code(self.new)}`", ""]
        if not self.changes:
            return "\n".join([*lines, "No exposure change."]) + "\n"
        sections: tuple[tuple[str, tuple[Kind, ...]], ...] = (
            ("**⚠ Opens** (new exposure: review these first)", ("opens", "widens")),
            ("**Closes**", ("narrows", "closes")),
            ("**Policy**", ("policy", "allows")),
        )
        for title, kinds in sections:
            items = [c for c in self.changes if c.change in kinds]
            if items:
                lines += [title, "", *(f"- {_mark(c)}{c.text}" for c in items), ""]
        return "\n".join(lines)


def _mark(change: Change) -> str:
    return "⚠ " if change.change in ("opens", "widens") else ""


def _code(text: str) -> str:
    return text.replace("`", "'")


def _sources_json(sources: Sources) -> str | list[str]:
    return "any" if sources is None else [str(n) for n in sources]


def exposure_diff(old: Policy, new: Policy, old_name: str, new_name: str) -> ExposureDiff:
    """The exposure difference from ``old`` to ``new``."""
    changes: list[Change] = []
    filtered = old.egress != "accept" and new.egress != "accept"
    for proto in PROTOS:
        per_family = {
            f: _port_changes(_inbound(old, f, proto), _inbound(new, f, proto)) for f in FAMILIES
        }
        changes += _join_families(per_family[4], per_family[6], proto, "inbound")
        if filtered:
            out = {
                f: _port_changes(_egress(old, f, proto), _egress(new, f, proto)) for f in FAMILIES
            }
            changes += _join_families(out[4], out[6], proto, "egress")
    changes.sort(
        key=lambda c: (ORDER[c.change], _DIRECTION[c.direction], c.proto or "", c.ports, c.family)
    )
    changes += _policy_changes(old, new)
    changes += _egress_policy_changes(old, new)
    return ExposureDiff(old_name, new_name, tuple(changes))


# A port change before families are joined: (kind, before, after) -> port ranges.
_Key = tuple[Kind, Sources, Sources]
# One rule's ports and the sources (or, for egress, destinations) it admits.
_Rule = tuple[tuple[PortRange, ...], Sources]


def _inbound(policy: Policy, family: Family, proto: Proto) -> list[_Rule]:
    return [(a.ports, a.sources[family]) for a in policy.accepted(family, proto)]


def _egress(policy: Policy, family: Family, proto: Proto) -> list[_Rule]:
    """What the egress allows let out; meaningful only when ``policy.egress`` filters."""
    return [
        (o.ports, o.destinations[family])
        for o in policy.outbound
        if o.proto == proto and o.destinations[family] != ()
    ]


def exposure(policy: Policy, family: Family, proto: Proto) -> list[tuple[PortRange, Sources]]:
    """Disjoint port ranges and the sources they accept (``None``: any), gaps left out."""
    return _covered(_inbound(policy, family, proto))


def _covered(rules: list[_Rule]) -> list[tuple[PortRange, Sources]]:
    return [(rng, src) for rng, src in _segments((rules,))[0] if src != ()]


def _segments(rules: tuple[list[_Rule], ...]) -> list[list[tuple[PortRange, Sources]]]:
    """Per rule list, the port space cut at every boundary of any of them, with sources."""
    cuts = sorted(
        {b for rs in rules for ports, _ in rs for r in ports for b in (r.first, r.last + 1)}
    )
    out: list[list[tuple[PortRange, Sources]]] = [[] for _ in rules]
    for first, nxt in pairwise(cuts):
        rng = PortRange(first, nxt - 1)
        for i, rs in enumerate(rules):
            out[i].append((rng, _sources_at(rs, first)))
    return out


def _sources_at(rules: list[_Rule], port: int) -> Sources:
    nets: list[Network] = []
    for ports, sources in rules:
        i = bisect_right(ports, PortRange(port, 65536)) - 1
        if i >= 0 and port in ports[i]:
            if sources is None:
                return None
            nets += sources
    return collapse(nets)


def _port_changes(old: list[_Rule], new: list[_Rule]) -> dict[_Key, list[PortRange]]:
    before_segs, after_segs = _segments((old, new))
    found: dict[_Key, list[PortRange]] = {}
    for (rng, before), (_, after) in zip(before_segs, after_segs, strict=True):
        for key in _classify(before, after):
            found.setdefault(key, []).append(rng)
    return {key: list(merge(ranges)) for key, ranges in found.items()}


def _classify(before: Sources, after: Sources) -> list[_Key]:
    if before == after:
        return []
    if before == ():
        return [("opens", (), after)]
    if after == ():
        return [("closes", before, ())]
    if after is None:
        return [("widens", before, None)]
    if before is None:
        return [("narrows", None, after)]
    added, removed = minus(after, before), minus(before, after)
    if not removed:
        return [("widens", before, after)]
    if not added:
        return [("narrows", before, after)]
    return [("opens", (), added), ("closes", removed, ())]


def _join_families(
    v4: dict[_Key, list[PortRange]],
    v6: dict[_Key, list[PortRange]],
    proto: Proto,
    direction: Direction,
) -> list[Change]:
    """One change per key; a v4 and a v6 change alike but for their networks become one."""
    out: list[Change] = []
    spare6 = dict(v6)
    for (kind, before, after), ports in v4.items():
        twin = next(
            (
                k
                for k, p in spare6.items()
                if k[0] == kind
                and p == ports
                and (k[1] is None) == (before is None)
                and (k[2] is None) == (after is None)
            ),
            None,
        )
        if twin is None:
            out.append(_change(kind, "ipv4", proto, ports, before, after, direction))
            continue
        del spare6[twin]
        joined = (_join(before, twin[1]), _join(after, twin[2]))
        out.append(_change(kind, "both", proto, ports, *joined, direction))
    out += [_change(k[0], "ipv6", proto, p, k[1], k[2], direction) for k, p in spare6.items()]
    return out


def _join(a: Sources, b: Sources) -> Sources:
    return None if a is None or b is None else (*a, *b)


def _change(
    kind: Kind,
    family: FamilyName,
    proto: Proto,
    ports: list[PortRange],
    before: Sources,
    after: Sources,
    direction: Direction = "inbound",
) -> Change:
    egress = direction == "egress"
    where = f"{'egress ' if egress else ''}{proto}/{','.join(map(str, ports))}"
    noun = "destination" if egress else "source"
    if kind in ("opens", "allows"):
        text = f"{kind} {where} to {_sources_text(after, family, noun)}"
    elif kind == "closes":
        text = f"closes {where} to {_sources_text(before, family, noun)}"
    else:
        text = (
            f"{kind} {where} from {_sources_text(before, family, noun)} "
            f"to {_sources_text(after, family, noun)}"
        )
        # Two lists where whole networks come or go: name them (a bigger network that
        # replaces a smaller one says enough as it is).
        if before is not None and after is not None:
            big, small = (after, before) if kind == "widens" else (before, after)
            moved = minus(big, small)
            if set(moved) <= set(big):
                verb = "adds" if kind == "widens" else "removes"
                text += f" ({verb} {_sources_text(moved, family, noun)})"
    return Change(kind, family, proto, tuple(ports), before, after, text, direction=direction)


def _sources_text(sources: Sources, family: FamilyName, noun: str = "source") -> str:
    if sources is None:
        return {
            "ipv4": f"any IPv4 {noun}",
            "ipv6": f"any IPv6 {noun}",
            "both": f"any IPv4 and IPv6 {noun}",
        }[family]
    return ", ".join(map(str, sources)) or f"no {noun}"


def _policy_changes(old: Policy, new: Policy) -> list[Change]:
    out: list[Change] = []
    if old.closed != new.closed:
        how = {"drop": "dropped silently", "reject": "rejected (ICMP admin-prohibited)"}
        out.append(
            _setting(
                "closed",
                "both" if old.ipv6 or new.ipv6 else "ipv4",
                None,
                old.closed,
                new.closed,
                f"closed ports are now {how[new.closed]} instead of {how[old.closed]} "
                f"(closed: {old.closed} -> {new.closed})",
            )
        )
    if old.echo != new.echo:
        fam: FamilyName = "both" if old.ipv6 or new.ipv6 else "ipv4"
        verb = "starts answering" if new.echo else "stops answering"
        out.append(
            _setting(
                "icmp.echo",
                fam,
                "icmp",
                old.echo,
                new.echo,
                f"{verb} ping (icmp.echo: {_yaml(old.echo)} -> {_yaml(new.echo)})",
            )
        )
    if old.ipv6 != new.ipv6:
        verb = "starts serving IPv6" if new.ipv6 else "stops serving IPv6"
        out.append(
            _setting(
                "ipv6",
                "ipv6",
                None,
                old.ipv6,
                new.ipv6,
                f"{verb} (ipv6: {_yaml(old.ipv6)} -> {_yaml(new.ipv6)})",
            )
        )
    out += _forwarding_changes(old, new)
    return out


def _forwarding_changes(old: Policy, new: Policy) -> list[Change]:
    """Trusted interfaces, forward policy and allows, DHCPv6, per-service limits."""
    out: list[Change] = []
    both: FamilyName = "both" if old.ipv6 or new.ipv6 else "ipv4"
    gained = [i for i in new.trusted if i not in old.trusted]
    lost = [i for i in old.trusted if i not in new.trusted]
    if gained or lost:
        what = ", ".join([*(f"+{i}" for i in gained), *(f"-{i}" for i in lost)])
        text = f"trusted interfaces change ({what})"
        if gained:
            text += f": everything arriving on {', '.join(gained)} is accepted"
        old_text, new_text = ", ".join(old.trusted), ", ".join(new.trusted)
        out.append(_setting("trusted_interfaces", both, None, old_text, new_text, text))
    if old.forward != new.forward:
        verb = "drops" if new.forward == "drop" else "no longer filters"
        text = f"{verb} routed traffic (forward.policy: {old.forward} -> {new.forward})"
        out.append(
            _setting("forward.policy", both, None, old.forward, new.forward, text, "forward")
        )
    old_allows = {f.label: f for f in old.forwarded}
    new_allows = {f.label: f for f in new.forwarded}
    changed = sorted(
        label
        for label in old_allows.keys() | new_allows.keys()
        if old_allows.get(label) != new_allows.get(label)
    )
    for label in changed:
        verb = (
            "adds"
            if label not in old_allows
            else "removes"
            if label not in new_allows
            else "changes"
        )
        out.append(
            _setting(
                "forward.allow", both, None, label in old_allows, label in new_allows,
                f"{verb} the forward allow {label!r}", "forward",
            )
        )  # fmt: skip
    if old.dhcpv6 != new.dhcpv6:
        verb = "accepts" if new.dhcpv6 else "stops accepting"
        out.append(
            _setting(
                "dhcpv6", "ipv6", "udp", old.dhcpv6, new.dhcpv6,
                f"{verb} DHCPv6 replies (dhcpv6: {_yaml(old.dhcpv6)} -> {_yaml(new.dhcpv6)})",
            )
        )  # fmt: skip
    old_limits, new_limits = _limits(old), _limits(new)
    for name in sorted(old_limits.keys() | new_limits.keys()):
        before, after = old_limits.get(name, "none"), new_limits.get(name, "none")
        if before != after:
            out.append(
                _setting(
                    "limit", both, None, before, after,
                    f"{name}: new connections per source limited {before} -> {after}",
                )
            )  # fmt: skip
    return out


def _limits(policy: Policy) -> dict[str, str]:
    """Each limited service's limit (and protocol, if it has two)."""
    return {
        f"{name}/{a.proto}": str(a.limit) for a in policy.allows if a.limit for name in a.services
    }


def _yaml(value: bool) -> str:
    return "true" if value else "false"


def _setting(
    setting: str,
    family: FamilyName,
    proto: str | None,
    old: str | bool,
    new: str | bool,
    text: str,
    direction: Direction = "inbound",
) -> Change:
    return Change("policy", family, proto, (), None, None, text, setting, old, new, direction)


_REFUSED = {"drop": "dropped silently", "reject": "rejected at once"}


def _egress_policy_changes(old: Policy, new: Policy) -> list[Change]:
    """egress.policy, and what NEW lets out when it starts filtering; egress.dhcp."""
    both: FamilyName = "both" if old.ipv6 or new.ipv6 else "ipv4"
    out: list[Change] = []
    if old.egress != new.egress:
        text = f"{_egress_policy_text(old, new)} (egress.policy: {old.egress} -> {new.egress})"
        out.append(_setting("egress.policy", both, None, old.egress, new.egress, text, "egress"))
        if old.egress == "accept":
            out += _egress_allows(new)
    filtered = old.egress != "accept" and new.egress != "accept"
    if filtered and old.egress_dhcp != new.egress_dhcp:
        verb = "lets" if new.egress_dhcp else "stops letting"
        text = (
            f"{verb} the DHCP client renew its lease "
            f"(egress.dhcp: {_yaml(old.egress_dhcp)} -> {_yaml(new.egress_dhcp)})"
        )
        out.append(
            _setting("egress.dhcp", both, "udp", old.egress_dhcp, new.egress_dhcp, text, "egress")
        )
    if filtered and new.egress_dhcp and old.dhcp_servers != new.dhcp_servers:
        before = ", ".join(map(str, old.dhcp_servers)) or "none"
        after = ", ".join(map(str, new.dhcp_servers)) or "none"
        text = (
            f"DHCP requests may go to {after} besides the broadcast address "
            f"(egress.dhcp_servers: {before} -> {after})"
        )
        out.append(_setting("egress.dhcp_servers", "ipv4", "udp", before, after, text, "egress"))
    return out


def _egress_policy_text(old: Policy, new: Policy) -> str:
    if new.egress == "accept":
        return "stops filtering outbound connections: the host may connect anywhere"
    if old.egress == "accept":
        what = "the egress allows listed below" if new.outbound else "no outbound connection"
        if new.egress_dhcp:
            what += " and DHCP lease renewals"
        return (
            f"filters outbound connections: only {what} may leave, "
            f"the rest is {_REFUSED[new.egress]}"
        )
    return (
        f"refused outbound connections are now {_REFUSED[new.egress]} "
        f"instead of {_REFUSED[old.egress]}"
    )


def _egress_allows(policy: Policy) -> list[Change]:
    """What ``policy`` lets out, as ``allows`` changes from any destination."""
    out: list[Change] = []
    for proto in PROTOS:
        per_family: dict[Family, dict[_Key, list[PortRange]]] = {}
        for family in FAMILIES:
            found: dict[_Key, list[PortRange]] = {}
            for rng, dst in _covered(_egress(policy, family, proto)):
                found.setdefault(("allows", None, dst), []).append(rng)
            per_family[family] = {k: list(merge(r)) for k, r in found.items()}
        changes = _join_families(per_family[4], per_family[6], proto, "egress")
        out += sorted(changes, key=lambda c: (c.ports, c.family))
    return out
