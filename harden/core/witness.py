"""The witness: the target's own counters against the probes the verifier sent (pure).

The ruleset of a manifest with ``verify.probers`` counts, per family and protocol, every
new connection from the probers (``witness_in_*``, before any filter chain at the
default priority) and those that reached harden's closed path (``witness_closed_*``).
Across one verification, the difference tells what outside probing cannot:

- nothing arrived: something upstream (a cloud security group, a router) drops the
  probes, so their silence says nothing about the host's own firewall;
- more arrived than were dropped or sent to declared ports: some probes to closed
  ports were accepted by a rule that is not harden's or delivered to a socket that
  ignores them (a silent UDP listener), which no reply could have shown.

docs/design.md, "What outside probing cannot see".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from harden.core.manifest import PROTOS, Proto
from harden.core.policy import FAMILIES, Family

# The witness command's own connection (an SSH login from the prober to the target to
# read the counters) is a new TCP connection to a declared port: tolerated.
TCP_SLACK = 2


@dataclass(frozen=True)
class Judgement:
    """What the counters say about one family and protocol."""

    family: Family
    proto: Proto
    verdict: str  # "ok", "fail", "inconclusive" or "unknown" (the target counts nothing)
    detail: str
    arrived: int = 0


def delta(before: Mapping[str, int], after: Mapping[str, int]) -> dict[str, int]:
    """Counter increase over the verification (names present after)."""
    return {name: after[name] - before.get(name, 0) for name in after}


def judge(sent: Mapping[str, int], counted: Mapping[str, int]) -> list[Judgement]:
    """Compare probes sent (``"4/udp/silent": n``) with the target's counter increase."""
    out = []
    for family in FAMILIES:
        for proto in PROTOS:
            prefix = f"{family}/{proto}/"
            total = sum(n for key, n in sent.items() if key.startswith(prefix))
            if not total:
                continue
            arrived = counted.get(f"witness_in_{proto}_v{family}")
            closed = counted.get(f"witness_closed_{proto}_v{family}")
            if arrived is None or closed is None:
                out.append(
                    Judgement(
                        family,
                        proto,
                        "unknown",
                        f"the target counts no IPv{family} probes (no verify.probers of that "
                        "family in its manifest)",
                    )
                )
                continue
            out.append(
                _judge_one(family, proto, total, sent.get(prefix + "allowed", 0), arrived, closed)
            )
    return out


def _judge_one(
    family: Family, proto: Proto, total: int, to_declared: int, arrived: int, closed: int
) -> Judgement:
    where = f"IPv{family} {proto}"
    if arrived == 0:
        return Judgement(
            family,
            proto,
            "inconclusive",
            f"none of the {total} {where} probes reached the host (its witness counted 0): "
            "something upstream drops them, so their silence says nothing about its firewall",
        )
    slack = TCP_SLACK if proto == "tcp" else 0
    accepted = arrived - closed
    unexpected = accepted - to_declared - slack
    if unexpected > 0:
        return Judgement(
            family,
            proto,
            "fail",
            f"{unexpected} {where} probe(s) reached the host and were not dropped by harden "
            f"(accepted by another rule or taken by a socket that answers nothing): the "
            f"target counted {arrived} new, {closed} at harden's closed path, and {to_declared} "
            "were sent to declared ports",
            arrived,
        )
    lost = total - arrived
    note = f"the target counted {arrived} of {total} {where} probes; {closed} reached harden's "
    note += "closed path and were dropped"
    if lost > 0:
        note += f" ({lost} did not arrive: loss or an upstream filter)"
    return Judgement(family, proto, "ok", note, arrived)
