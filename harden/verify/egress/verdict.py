"""Egress verdicts: this host's own refusals and a sink's arrivals against the manifest (pure).

Outside probing cannot see egress, so the proof has two ends (docs/design.md, "Egress"):
the hardened host sends a SYN and a datagram to every probed port of a cooperating sink
and notes which sends its own kernel refused (EPERM: a drop or reject in its output
path); the sink reports what arrived. A declared (destination, port) must leave and
arrive. Every other one must be refused here and be absent there. The verdict follows
the same rule as inbound verify: FAIL on a deviation, INCONCLUSIVE when the sink's side
proves nothing, else PASS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harden.manifest.ports import PortRange, compress, expand
from harden.policy.model import Policy, family_of
from harden.types import PROTOS, Address, Proto, Sent
from harden.verify.findings import Observed
from harden.verify.plan import Expect
from harden.verify.report import Entry, Report, Span, Status

Key = tuple[Address, Proto]


@dataclass
class EgressRun:
    """What one egress verification observed, per (sink address, protocol)."""

    sinks: list[Address]
    ports: tuple[PortRange, ...]
    refused: dict[Key, set[int]] = field(default_factory=dict)  # EPERM here
    arrived: dict[Key, set[int]] = field(default_factory=dict)  # the sink's report
    control: set[Address] = field(default_factory=set)  # sinks the control packet reached
    sent: dict[Sent, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    started: float = 0.0


def egress_report(policy: Policy, run: EgressRun) -> Report:
    """Judge every (sink, protocol, port) of ``run`` against ``policy``'s egress."""
    report = Report(
        targets=[str(s) for s in run.sinks],
        sent={str(key): n for key, n in run.sent.items()},
        notes=list(run.notes),
        seconds=run.seconds,
        started=run.started,
        mode="egress",
    )
    for sink in run.sinks:
        for proto in PROTOS:
            _judge(report, policy, run, sink, proto)
        _sink_heard(report, policy, run, sink)
    return report


def _judge(report: Report, policy: Policy, run: EgressRun, sink: Address, proto: Proto) -> None:
    refused = run.refused.get((sink, proto), set())
    arrived = run.arrived.get((sink, proto), set())
    conforming: list[int] = []
    for port in expand(run.ports):
        if policy.sends(sink, proto, port):
            report.entries.append(_allowed(policy, sink, proto, port, refused, arrived))
        elif port in refused and port not in arrived:
            conforming.append(port)
        else:
            report.entries.append(_leak(sink, proto, port, port in refused))
    if conforming:
        ranges = compress(conforming)
        report.spans.append(
            Span(
                target=str(sink),
                family=family_of(sink),
                proto=proto,
                expected=Expect.BLOCKED,
                observed=Observed.REFUSED_NOT_ARRIVED,
                ranges=tuple(str(r) for r in ranges),
                count=len(conforming),
            )
        )


def _allowed(
    policy: Policy, sink: Address, proto: Proto, port: int, refused: set[int], arrived: set[int]
) -> Entry:
    labels = [o.label for o in policy.outbound if o.admits(sink, proto, port)]
    service = ", ".join(labels) if labels else "egress policy accept"
    if port in arrived:
        status, observed = Status.OK, Observed.ARRIVED
        detail = "left this host and arrived at the sink"
    elif port in refused:
        status, observed = Status.FAIL, Observed.REFUSED
        detail = "declared, but this host refused to send it (another firewall's output rule?)"
    else:
        status, observed = Status.FAIL, Observed.LOST
        detail = "left this host but never arrived at the sink (a filter on the way, or loss)"
    return Entry(
        target=str(sink),
        family=family_of(sink),
        proto=proto,
        port=port,
        expected=Expect.ALLOWED,
        observed=observed,
        status=status,
        detail=detail,
        service=service,
    )


def _leak(sink: Address, proto: Proto, port: int, refused_here: bool) -> Entry:
    if refused_here:
        observed = Observed.ARRIVED
        detail = "refused here, yet it arrived at the sink: another sender uses our address?"
    else:
        observed = Observed.SENT
        detail = "leak: this host let it out (expected refused by harden's egress rules)"
    return Entry(
        target=str(sink),
        family=family_of(sink),
        proto=proto,
        port=port,
        expected=Expect.BLOCKED,
        observed=observed,
        status=Status.FAIL,
        detail=detail,
    )


def _sink_heard(report: Report, policy: Policy, run: EgressRun, sink: Address) -> None:
    """The sink's side proves absence only if it heard this host at all during the run."""
    heard = sink in run.control or any(run.arrived.get((sink, p)) for p in PROTOS)
    if heard:
        report.alive[str(sink)] = (
            "the sink captured this host's control packet"
            if sink in run.control
            else "the sink captured this host's probes"
        )
        return
    report.entries.append(
        Entry(
            target=str(sink),
            family=family_of(sink),
            proto="*",
            port=None,
            expected=Expect.HEARD,
            observed=Observed.NOTHING,
            status=Status.INCONCLUSIVE,
            detail="the sink captured nothing from this host, not even its control packet: "
            f"absence at {sink} proves nothing (wrong address, or a filter drops ICMP errors "
            "on the way)",
        )
    )
