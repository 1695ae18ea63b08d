"""The witness: the target's own counters against the probes the verifier sent (pure).

The ruleset of a manifest with ``verify.probers`` counts, per family and protocol, every
new connection from the probers three times:

- ``witness_in_*``: as it arrives, before any filter chain at the default priority;
- ``witness_closed_*``: when it reaches harden's closed path (dropped by harden);
- ``witness_passed_*`` (nftables): at the last priority of the hook, i.e. what every
  chain on the host let through.

Across one verification, the differences tell what outside probing cannot:

- nothing arrived: something upstream (a cloud security group, a router) drops the
  probes, so their silence says nothing about the host's own firewall;
- more passed than were sent to declared ports: some probes to closed ports were
  accepted by a rule that is not harden's, or delivered to a socket that ignores them
  (a silent UDP listener), which no reply could have shown;
- probes to declared ports arrived but did not pass: another firewall on the host
  blocks a declared service;
- the rest that neither reached harden's closed path nor passed were dropped by
  another firewall on the host: silent, so conforming, and said in a note.

``harden counters`` also reports the target's ICMP error settings, so the UDP schedule
runs on the real rate limit instead of an assumed one, an identity of harden's table,
so a replaced table or reset counters are seen rather than judged, and the host's own
addresses: the counts are judged against the probes sent to those targets only, and
vouch for no other (a shortfall beyond loss is inconclusive, not a note).

docs/design.md, "What outside probing cannot see", "Proof of life" and "The verdict rule".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address
from typing import Any

from harden.text import printable
from harden.types import FAMILIES, PROTOS, Address, Family, Proto, Sent, Verdict

# The witness command's own connection (an SSH login from the prober to the target to
# read the counters) is a new TCP connection to a declared port: tolerated.
TCP_SLACK = 2
SCHEMAS = ("harden.counters/1", "harden.counters/2", "harden.counters/3", "harden.counters/4")
# Probes that may go missing on the way before a shortfall makes the witness inconclusive:
# a fixed allowance (this run measures no loss rate), in percent of those sent, at least 2.
LOSS_ALLOWANCE_PERCENT = 2


def counter_name(stage: str, proto: Proto, family: Family) -> str:
    """The name of a witness counter: ``witness_{in,closed,passed}_{proto}_v{family}``."""
    return f"witness_{stage}_{proto}_v{family}"


@dataclass(frozen=True)
class IcmpSettings:
    """One family's ICMP error limits on the target, as its kernel has them."""

    ratelimit_ms: int  # net.ipv4.icmp_ratelimit / net.ipv6.icmp.ratelimit
    limits_unreachable: bool = True  # destination unreachable is in the rate mask
    msgs_per_sec: int | None = None  # net.ipv4.icmp_msgs_per_sec (machine-wide, both families)

    @property
    def interval_ms(self) -> int:
        """The per-peer refill interval that applies to port-unreachable (0: no limit)."""
        return self.ratelimit_ms if self.limits_unreachable else 0


@dataclass(frozen=True)
class Reading:
    """One ``harden counters --format json`` output."""

    counters: dict[str, int]
    identity: str | None = None  # harden's table as the kernel names it (None: unknown)
    icmp: dict[Family, IcmpSettings] = field(default_factory=dict)
    # The counting host's own addresses (None: not reported, harden.counters/2 and older).
    addresses: frozenset[Address] | None = None
    # The live ruleset, as harden.analysis reads it (None: not reported, /3 and older).
    ruleset: dict[str, Any] | None = None


def parse_reading(data: Any) -> Reading:
    """A Reading from parsed counters JSON; ValueError if it is not that output."""
    if not isinstance(data, dict) or data.get("schema", SCHEMAS[0]) not in SCHEMAS:
        raise ValueError("not harden counters output")
    try:
        counters = {printable(str(k)): int(v) for k, v in data["counters"].items()}
        icmp: dict[Family, IcmpSettings] = {}
        for family in FAMILIES:
            item = (data.get("icmp") or {}).get(f"ipv{family}")
            if item is not None:
                per_sec = item.get("msgs_per_sec")
                icmp[family] = IcmpSettings(
                    int(item["ratelimit_ms"]),
                    bool(item.get("limits_unreachable", True)),
                    None if per_sec is None else int(per_sec),
                )
        identity = data.get("identity")
        listed = data.get("addresses")
        addresses = None if listed is None else frozenset(ip_address(a) for a in listed)
        ruleset = data.get("ruleset")
        if ruleset is not None and not isinstance(ruleset, dict):
            raise TypeError("ruleset is not an object")
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"malformed counters output ({exc})") from None
    shown = None if identity is None else printable(str(identity))
    return Reading(counters, shown, icmp, addresses, ruleset)


@dataclass(frozen=True)
class WitnessRun:
    """What the witness saw over one verification."""

    counted: dict[str, int]  # counter increase, name -> packets
    icmp: dict[Family, IcmpSettings] = field(default_factory=dict)
    # Why the counters cannot be trusted (a reset or a replaced table), if so.
    untrusted: str | None = None
    # The counting host's addresses (None: not reported: it then vouches for no target).
    addresses: frozenset[Address] | None = None

    def covers(self, target: Address) -> bool:
        """Whether the counts are of probes to ``target``: one of the counting host's own."""
        return self.addresses is not None and target in self.addresses


def compare(before: Reading, after: Reading) -> WitnessRun:
    """The counters' increase over the run; untrusted if they went back or the table changed."""
    counted = {name: after.counters[name] - before.counters.get(name, 0) for name in after.counters}
    untrusted = None
    if before.identity != after.identity:
        untrusted = (
            f"harden's table on the target changed during the run ({before.identity} -> "
            f"{after.identity}: re-applied?), so its counters do not cover the run"
        )
    else:
        back = sorted(n for n, v in counted.items() if v < 0)
        gone = sorted(set(before.counters) - set(after.counters))
        if back or gone:
            untrusted = (
                f"harden's counters on the target went back during the run ({', '.join(back)}"
                f"{', '.join(gone)}: reset or reloaded), so they do not cover the run"
            )
    addresses = after.addresses if before.addresses == after.addresses else None
    if before.addresses != after.addresses and untrusted is None:
        untrusted = "the target's addresses changed during the run"
    return WitnessRun(counted, after.icmp or before.icmp, untrusted, addresses)


@dataclass(frozen=True)
class Judgement:
    """What the counters say about one family and protocol."""

    family: Family
    proto: Proto
    verdict: Verdict | None  # None: the target counts nothing of this family
    detail: str
    arrived: int = 0
    # Probes to declared ports that arrived and were dropped by another firewall.
    blocked_declared: int = 0


def judge(sent: Mapping[Sent, int], observed: WitnessRun) -> list[Judgement]:
    """Compare the probes sent, by kind, with what the target counted."""
    out = []
    counted = observed.counted
    for family in FAMILIES:
        for proto in PROTOS:
            total = sum(n for key, n in sent.items() if (key.family, key.proto) == (family, proto))
            if not total:
                continue
            arrived = counted.get(counter_name("in", proto, family))
            closed = counted.get(counter_name("closed", proto, family))
            if arrived is None or closed is None:
                out.append(
                    Judgement(
                        family,
                        proto,
                        None,
                        f"the target counts no IPv{family} probes (no verify.probers of that "
                        "family in its manifest)",
                    )
                )
                continue
            if observed.untrusted is not None:
                out.append(Judgement(family, proto, Verdict.INCONCLUSIVE, observed.untrusted))
                continue
            passed = counted.get(counter_name("passed", proto, family))
            declared = sent.get(Sent(family, proto, "allowed"), 0)
            out.append(_judge_one(family, proto, total, declared, arrived, closed, passed))
    return out


def _judge_one(
    family: Family,
    proto: Proto,
    total: int,
    to_declared: int,
    arrived: int,
    closed: int,
    passed: int | None,
) -> Judgement:
    where = f"IPv{family} {proto}"
    if arrived == 0:
        return Judgement(
            family,
            proto,
            Verdict.INCONCLUSIVE,
            f"none of the {total} {where} probes reached the host (its witness counted 0): "
            "something upstream drops them, so their silence says nothing about its firewall",
        )
    lost = total - arrived
    failed = _accepted_past_harden(
        family, proto, to_declared, arrived, closed, passed
    ) or _declared_dropped(family, proto, total, to_declared, arrived, closed)
    if failed is not None:
        return failed
    if (short := _shortfall(family, proto, total, arrived)) is not None:
        return short
    elsewhere = 0 if passed is None else arrived - closed - passed
    note = f"the target counted {arrived} of {total} {where} probes; {closed} reached harden's "
    note += "closed path and were dropped"
    if elsewhere > 0:
        note += f", {elsewhere} were dropped by another firewall on the host"
    if lost > 0:
        note += f" ({lost} did not arrive: loss or an upstream filter)"
    # Probes to declared ports that arrived but did not pass: at least what is left of
    # them once every lost probe is assumed to have been one of them.
    blocked = 0 if passed is None else max(0, to_declared - lost - passed)
    if blocked > 0 and elsewhere > 0:
        return Judgement(
            family,
            proto,
            Verdict.FAIL,
            f"{blocked} {where} probe(s) to declared ports arrived and were dropped by another "
            f"firewall on the host ({note})",
            arrived,
            blocked,
        )
    return Judgement(family, proto, Verdict.PASS, note, arrived)


def _accepted_past_harden(
    family: Family, proto: Proto, to_declared: int, arrived: int, closed: int, passed: int | None
) -> Judgement | None:
    """FAIL if more were accepted than were sent to declared ports."""
    slack = TCP_SLACK if proto == "tcp" else 0
    # Without a passed counter (iptables, or a ruleset from before it), whatever harden's
    # closed path did not drop counts as accepted.
    accepted = arrived - closed if passed is None else passed
    unexpected = accepted - to_declared - slack
    if unexpected <= 0:
        return None
    by = "not dropped by harden" if passed is None else "let through by every firewall"
    return Judgement(
        family,
        proto,
        Verdict.FAIL,
        f"{unexpected} IPv{family} {proto} probe(s) to closed ports reached the host and were "
        f"{by} (accepted by a rule that is not harden's, or taken by a socket that answers "
        f"nothing): the target counted {arrived} new, {closed} at harden's closed path"
        + ("" if passed is None else f", {passed} let through")
        + f", and {to_declared} were sent to declared ports",
        arrived,
    )


def _declared_dropped(
    family: Family, proto: Proto, total: int, to_declared: int, arrived: int, closed: int
) -> Judgement | None:
    """FAIL if more UDP probes reached harden's closed path than were sent to closed ports.

    The excess were probes to declared ports, dropped by harden's own rules. Silence
    cannot show this for UDP (an open port that answers nothing looks the same); the
    counters do.
    """
    excess = closed - (total - to_declared)
    if proto != "udp" or excess <= 0:
        # TCP: a declared port harden drops is silence where an answer was due, seen from
        # outside; and a connect()-mode SYN the kernel retransmits counts twice here.
        return None
    return Judgement(
        family,
        proto,
        Verdict.FAIL,
        f"{excess} IPv{family} {proto} probe(s) to declared ports reached harden's closed "
        "path and were dropped: the live rules do not allow what the manifest declares "
        f"(the target counted {closed} at its closed path; {total - to_declared} were sent "
        "to closed ports)",
        arrived,
    )


def _shortfall(family: Family, proto: Proto, total: int, arrived: int) -> Judgement | None:
    """INCONCLUSIVE if more probes went missing than loss allows, else None."""
    allowance = max(2, total * LOSS_ALLOWANCE_PERCENT // 100)
    if total - arrived <= allowance:
        return None
    return Judgement(
        family,
        proto,
        Verdict.INCONCLUSIVE,
        f"only {arrived} of the {total} IPv{family} {proto} probes reached the host (its "
        f"witness counted them; more than the {allowance} loss allows went missing): "
        "something upstream drops some, so the silence of the rest proves nothing",
        arrived,
    )
