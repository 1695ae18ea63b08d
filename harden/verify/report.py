"""Expected vs observed, per (target, protocol, port); the report alone decides the exit code.

Pure: ``evaluate(plan, findings)`` builds a Report and ``verdict_rule`` judges it. The
formats that write it are in harden.outputs (``FORMATS``): judging is here, rendering there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from harden.errors import ExitStatus
from harden.manifest.ports import PortRange, compress, expand, merge
from harden.types import PROTOS, Address, Family, Proto, Sent, Verdict
from harden.verify.classify import REJECT_REASONS, PortState, Reason, Reply
from harden.verify.findings import Findings, Observed, RejectedBy, TooSlow
from harden.verify.plan import Expect, Plan, Target
from harden.verify.witness import Judgement, WitnessRun, judge

SCHEMA = "harden.verify/2"


class Status(StrEnum):
    """How an observation compares with the expectation."""

    OK = "ok"
    WARN = "warn"  # allowed, but not provably serving (nothing listens / no UDP reply)
    FAIL = "fail"
    UNPROVEN = "unproven"  # silent, but silence proves nothing here (see Span.observed)
    INCONCLUSIVE = "inconclusive"  # nothing showed a host is there: no verdict possible


# What a row is about: a port protocol, a host (ip), ping (icmp), or every protocol (*).
RowProto = Literal["tcp", "udp", "icmp", "ip", "*"]


@dataclass(frozen=True, kw_only=True)
class Entry:
    """One port's expectation and observation (declared ports and deviations)."""

    target: str
    family: Family
    proto: RowProto
    port: int | None  # None: a whole group (e.g. "no admin-prohibited seen at all")
    expected: Expect
    observed: Observed
    status: Status
    detail: str
    service: str = ""


@dataclass(frozen=True, kw_only=True)
class Span:
    """Ports of one target/protocol that came out the same, as ranges."""

    target: str
    family: Family
    proto: RowProto
    expected: Expect
    observed: Observed | RejectedBy | TooSlow
    ranges: tuple[str, ...]
    count: int


@dataclass
class Report:
    """A verification's result."""

    targets: list[str]
    entries: list[Entry] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)  # conforming ports
    unproven: list[Span] = field(default_factory=list)  # silent ports whose silence proves nothing
    skipped: list[Span] = field(default_factory=list)  # declared ports a --ports subset left out
    alive: dict[str, str] = field(default_factory=dict)  # target -> what showed it exists
    # Premises a PASS rests on that nothing in this run checked (the witness checks most).
    assumptions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    mode: str = "raw"
    started: float = 0.0  # when probing began (seconds since the epoch; 0: unknown)
    timing: dict[str, float] = field(default_factory=dict)  # send / reply_wait / quiet_wait

    @property
    def failures(self) -> list[Entry]:
        """Entries that fail the verification."""
        return [e for e in self.entries if e.status is Status.FAIL]

    @property
    def verdict(self) -> Verdict:
        """The verdict rule, applied to the whole report (see ``verdict_rule``)."""
        return verdict_rule(self.entries, self.unproven)

    @property
    def verdict_line(self) -> str:
        """``PASS``, ``PASS, assuming ...``, ``FAIL`` or ``INCONCLUSIVE``."""
        text = self.verdict.upper()
        if self.verdict is Verdict.PASS and self.assumptions:
            text += ", assuming " + "; ".join(self.assumptions)
        return text

    @property
    def exit_status(self) -> ExitStatus:
        """0 pass, 1 fail, 5 inconclusive."""
        return {
            Verdict.FAIL: ExitStatus.FAILED,
            Verdict.INCONCLUSIVE: ExitStatus.INCONCLUSIVE,
            Verdict.PASS: ExitStatus.OK,
        }[self.verdict]

    def verdict_of(self, target: str) -> Verdict:
        """One target's verdict, by the same rule as ``verdict``."""
        return verdict_rule(
            [e for e in self.entries if e.target == target],
            [s for s in self.unproven if s.target == target],
        )

    def counts(self) -> dict[str, int]:
        """Summary numbers."""
        probed = (
            sum(s.count for s in self.spans)
            + sum(s.count for s in self.unproven)
            + sum(1 for e in self.entries if e.port)
        )
        return {
            "ports": probed,
            "deviations": len(self.failures),
            "warnings": sum(1 for e in self.entries if e.status is Status.WARN),
            "conforming": sum(s.count for s in self.spans),
            "unproven": sum(s.count for s in self.unproven),
            "skipped": sum(s.count for s in self.skipped),
        }


def verdict_rule(entries: list[Entry], unproven: list[Span]) -> Verdict:
    """The one verdict rule (docs/design.md, "The verdict rule").

    FAIL: a deviation was seen (it is a real finding even where another port or target
    stayed unproven, so FAIL wins). PASS: every covered port is proven, and every premise
    was checked or is listed under ``assumptions``. INCONCLUSIVE: anything else, such as
    a target that never showed it exists, or silent ports whose silence proves nothing.
    """
    if any(e.status is Status.FAIL for e in entries):
        return Verdict.FAIL
    if unproven or any(e.status is Status.INCONCLUSIVE for e in entries):
        return Verdict.INCONCLUSIVE
    return Verdict.PASS


def evaluate(plan: Plan, findings: Findings) -> Report:
    """Compare every planned port with what it answered."""
    targets = sorted({g.target for g in plan.groups}, key=lambda t: (t.family, str(t.address)))
    report = Report(
        targets=[str(t.address) for t in targets],
        notes=list(findings.notes),
        sent={str(key): n for key, n in findings.sent.items()},
        seconds=findings.seconds,
        mode=findings.mode,
        timing={k: round(v, 3) for k, v in sorted(findings.timing.items())},
    )
    covered, judgements = _judged(report, findings, targets)
    # What the witness proved: the silence of a family and protocol, a host being there.
    proven = {
        (t.address, j.proto)
        for j in judgements
        if j.verdict is Verdict.PASS
        for t in covered
        if t.family == j.family
    }
    counted: dict[Family, int] = {}
    for j in judgements:
        if j.arrived and j.verdict is not Verdict.INCONCLUSIVE:
            counted[j.family] = counted.get(j.family, 0) + j.arrived
    alive = dict(findings.alive)
    for target in covered:
        doubt = target.address not in alive or target.address in findings.link_only
        if counted.get(target.family) and doubt:
            alive[target.address] = f"its witness counted {counted[target.family]} probes"
    for target in targets:
        _alive(report, alive, target)
        _echo(report, plan, findings, target)
        for proto in PROTOS:
            witnessed = (target.address, proto) in proven
            _ports(report, plan, findings, target, proto, witnessed, target.address in alive)
    _witness(report, judgements, covered)
    _assumptions(
        report, findings, targets, proven, {t.address for t in covered if counted.get(t.family)}
    )
    for target, proto, ports in plan.skipped:
        report.skipped.append(
            Span(
                target=str(target.address),
                family=target.family,
                proto=proto,
                expected=Expect.ALLOWED_OR_SILENT,
                observed=Observed.NOT_PROBED,
                ranges=tuple(map(str, compress(ports))),
                count=len(ports),
            )
        )
    if report.skipped:
        report.notes.append(
            f"{sum(s.count for s in report.skipped)} declared port(s) were outside --ports and "
            "not probed: see skipped"
        )
    return report


def _judged(
    report: Report, findings: Findings, targets: list[Target]
) -> tuple[list[Target], list[Judgement]]:
    """The targets the witness vouches for, and its judgements about them.

    Only the targets that are its own host's addresses: counts per family cannot tell a
    probe to one address from a probe to another (docs/design.md, "Proof of life").
    """
    witness = findings.witness
    if witness is None:
        return [], []
    covered = [t for t in targets if witness.covers(t.address)]
    _uncovered(report, witness, [t for t in targets if t not in covered])
    return covered, judge(_sent_to(findings, covered), witness)


def _sent_to(findings: Findings, targets: list[Target]) -> dict[Sent, int]:
    """The probes sent to ``targets``, by kind."""
    out: dict[Sent, int] = {}
    for target in targets:
        for key, n in findings.sent_to.get(target.address, {}).items():
            out[key] = out.get(key, 0) + n
    return out


def _uncovered(report: Report, witness: WitnessRun, targets: list[Target]) -> None:
    """Say which targets the witness does not vouch for, and why."""
    if not targets:
        return
    names = ", ".join(str(t.address) for t in targets)
    if witness.addresses is None:
        why = "it does not report its addresses (harden on the target is older than this one)"
    else:
        held = ", ".join(sorted(map(str, witness.addresses))) or "none"
        why = f"they are not addresses of the host it counted on (that host has: {held})"
    report.notes.append(f"witness: proves nothing about {names}: {why}")


def _assumptions(
    report: Report,
    findings: Findings,
    targets: list[Target],
    proven: set[tuple[Address, Proto]],
    witnessed: set[Address],
) -> None:
    """The premises no check in this run covered, once each, in a stable order."""
    out: list[str] = []
    for target in targets:
        if target.address in findings.link_only and target.address not in witnessed:
            out.append(
                f"the link-layer answer for {target.address} came from the target, not from a "
                "proxy-ARP router answering for an empty address"
            )
        for proto in PROTOS:
            if (target.address, proto) in proven:
                continue
            for premise in findings.premises.get((target, proto), []):
                if premise not in out:
                    out.append(premise)
    report.assumptions = out


def _witness(report: Report, judgements: list[Judgement], targets: list[Target]) -> None:
    for judgement in judgements:
        family_targets = [t for t in targets if t.family == judgement.family]
        if judgement.verdict in (Verdict.PASS, None) or not family_targets:
            report.notes.append(f"witness: {judgement.detail}")
            continue
        if judgement.blocked_declared:
            _blocked(report, judgement, family_targets)
            continue
        failed = judgement.verdict is Verdict.FAIL
        report.entries.append(
            Entry(
                target=str(family_targets[0].address),
                family=judgement.family,
                proto=judgement.proto,
                port=None,
                expected=Expect.ARRIVED_AND_DROPPED,
                observed=Observed.ACCEPTED if failed else Observed.NOT_COUNTED,
                status=Status.FAIL if failed else Status.INCONCLUSIVE,
                detail=f"witness: {judgement.detail}",
            )
        )


def _blocked(report: Report, judgement: Judgement, family_targets: list[Target]) -> None:
    """Declared ports whose probes arrived and were dropped by another firewall: FAIL each.

    The counters say how many such probes there were, not to which port; the declared
    ports that stayed silent from outside are the ones they can have been sent to.
    """
    addresses = {str(t.address) for t in family_targets}
    silent = [
        i
        for i, e in enumerate(report.entries)
        if e.target in addresses
        and e.proto == judgement.proto
        and e.expected is Expect.ALLOWED
        and e.observed in (Observed.SILENT, Observed.OPEN_FILTERED)
    ]
    detail = f"witness: {judgement.detail}"
    for i in silent:
        e = report.entries[i]
        report.entries[i] = replace(
            e,
            observed=Observed.BLOCKED_ON_HOST,
            status=Status.FAIL,
            detail=f"declared {e.proto}/{e.port} is blocked by another firewall on the host "
            f"({detail})",
        )
    if not silent:
        report.entries.append(
            Entry(
                target=str(family_targets[0].address),
                family=judgement.family,
                proto=judgement.proto,
                port=None,
                expected=Expect.ALLOWED,
                observed=Observed.BLOCKED_ON_HOST,
                status=Status.FAIL,
                detail=detail,
            )
        )


def _alive(report: Report, alive: dict[Address, str], target: Target) -> None:
    evidence = alive.get(target.address)
    if evidence is not None:
        report.alive[str(target.address)] = evidence
        return
    report.entries.append(
        Entry(
            target=str(target.address),
            family=target.family,
            proto="ip",
            port=None,
            expected=Expect.A_HOST,
            observed=Observed.NOTHING,
            status=Status.INCONCLUSIVE,
            detail="no reply of any kind during the run, not even at the link layer: there may "
            "be no host at this address, or something upstream drops everything; silence "
            "proves nothing here",
        )
    )


def _echo(report: Report, plan: Plan, findings: Findings, target: Target) -> None:
    if target.address not in findings.echo:
        return
    expected = plan.echo.get(target.address, False)
    answered = findings.echo[target.address]
    if expected != answered:
        report.entries.append(
            Entry(
                target=str(target.address),
                family=target.family,
                proto="icmp",
                port=None,
                expected=Expect.ECHO_REPLY if expected else Expect.SILENT,
                observed=Observed.ECHO_REPLY if answered else Observed.SILENT,
                status=Status.FAIL,
                detail="ping is declared but went unanswered"
                if expected
                else "ping answered but not declared",
            )
        )


def _ports(
    report: Report,
    plan: Plan,
    findings: Findings,
    target: Target,
    proto: Proto,
    witnessed: bool = False,
    alive: bool = False,
) -> None:
    """Judge one target's ports of one protocol.

    ``witnessed``: its counters proved the silence; ``alive``: something (a reply, or its
    witness) showed during the run that the host is there.
    """
    expect = plan.expectation(target, proto)
    if not expect:
        return
    replies = findings.replies.get((target, proto), {})
    judged = _Judged(
        target,
        proto,
        services={
            p: s
            for g in plan.groups
            if g.target == target and g.proto == proto
            for p, s in g.services.items()
        },
        witnessed=witnessed,
        # Why these ports' silence proves nothing (the ICMP budget ran out, ...), unless
        # the witness counted every probe that arrived into harden's closed path.
        unproven_as=None if witnessed else findings.unproven.get((target, proto)),
        alive=alive,
    )
    # Most ports of a span get no reply: judged once per span, not once per port (a
    # fleet of 64 hosts is 8 million ports), and only the ports that answered one by one.
    for rng, exp in expect.spans():
        answered = sorted(p for p in replies if p in rng)
        judged.conclude(_gaps(rng, answered), exp, None)
        for port in answered:
            judged.conclude([PortRange(port, port)], exp, replies[port])
    report.entries.extend(sorted(judged.entries, key=lambda e: e.port or 0))
    report.spans.extend(judged.spans(judged.conforming))
    report.unproven.extend(judged.spans(judged.unproven))
    if Expect.REJECTED in expect.kinds() and not judged.rejected_seen:
        report.entries.append(
            Entry(
                target=str(target.address),
                family=target.family,
                proto=proto,
                port=None,
                expected=Expect.REJECTED,
                observed=Observed.SILENT,
                status=Status.FAIL,
                detail="closed: reject, but no closed port answered admin-prohibited "
                "(is reject active?)",
            )
        )


# (expected, observed) -> port ranges
Buckets = dict[tuple[Expect, Observed | RejectedBy | TooSlow], list[PortRange]]


@dataclass
class _Judged:
    """One target's ports of one protocol as they are judged.

    Deviations and declared ports one by one (``entries``); conforming and unproven ports
    in bulk, as ranges.
    """

    target: Target
    proto: Proto
    services: dict[int, str]
    witnessed: bool
    unproven_as: Observed | TooSlow | None
    alive: bool
    entries: list[Entry] = field(default_factory=list)
    conforming: Buckets = field(default_factory=dict)
    unproven: Buckets = field(default_factory=dict)
    rejected_seen: bool = False

    def conclude(self, ranges: list[PortRange], exp: Expect, reply: Reply | None) -> None:
        """One verdict for ports that got the same reply (or none)."""
        if not ranges:
            return
        if exp is not Expect.ALLOWED and _filtered_elsewhere(reply):
            # A reject from another address: the target's own stack (icmp_errors_use_
            # inbound_ifaddr) or a filter in front of it; its probe may never have
            # reached the host, so neither a leak nor a proof (docs/design.md).
            assert reply is not None and reply.responder is not None
            elsewhere = RejectedBy(str(reply.responder))
            self.unproven.setdefault((exp, elsewhere), []).extend(ranges)
            return
        status, observed, detail = _judge(self.proto, exp, reply)
        if exp is Expect.REJECTED and status is Status.OK:
            self.rejected_seen = True
        bucket = None if exp is Expect.ALLOWED else self._bucket(status, observed, reply)
        if bucket is not None:
            bucket[0].setdefault((exp, bucket[1]), []).extend(ranges)
            return
        self.entries.extend(
            Entry(
                target=str(self.target.address),
                family=self.target.family,
                proto=self.proto,
                port=port,
                expected=exp,
                observed=observed,
                status=status,
                detail=detail,
                service=self.services.get(port, ""),
            )
            for port in expand(ranges)
        )

    def _bucket(
        self, status: Status, observed: Observed, reply: Reply | None
    ) -> tuple[Buckets, Observed | TooSlow] | None:
        """Where closed ports with this outcome go in bulk, and as what (None: one by one)."""
        if status is Status.UNPROVEN:
            if self.witnessed:
                return self.conforming, Observed.SILENT_WITNESSED
            return self.unproven, Observed.SILENT_UNPROVEN
        if status is not Status.OK:
            return None
        if self.unproven_as and not reply:
            return self.unproven, self.unproven_as
        if not self.alive:
            return self.unproven, Observed.SILENT_NO_HOST
        return self.conforming, observed

    def spans(self, buckets: Buckets) -> list[Span]:
        """The buckets as spans of merged ranges."""
        out = []
        for (expected, observed), ranges in buckets.items():
            merged = merge(ranges)
            out.append(
                Span(
                    target=str(self.target.address),
                    family=self.target.family,
                    proto=self.proto,
                    expected=expected,
                    observed=observed,
                    ranges=tuple(map(str, merged)),
                    count=sum(len(r) for r in merged),
                )
            )
        return out


def _filtered_elsewhere(reply: Reply | None) -> bool:
    """An ICMP reject or unreachable that came from an address other than the probed one."""
    return (
        reply is not None
        and reply.responder is not None
        and reply.reason in (Reason.PROHIBITED, Reason.UNREACHABLE)
    )


def _gaps(rng: PortRange, answered: list[int]) -> list[PortRange]:
    """The parts of ``rng`` between the sorted ports in ``answered``."""
    out, first = [], rng.first
    for port in [*answered, rng.last + 1]:
        if port > first:
            out.append(PortRange(first, port - 1))
        first = port + 1
    return out


def _judge(proto: str, exp: Expect, reply: Reply | None) -> tuple[Status, Observed, str]:
    seen = Observed  # short: one verdict per line
    state = reply.state if reply else PortState.SILENT
    detail = reply.detail if reply else "no reply after retries"
    if exp is Expect.ALLOWED:
        if state is PortState.OPEN:
            return Status.OK, seen.OPEN, detail
        if state is PortState.CLOSED:
            return Status.WARN, seen.CLOSED, f"{detail}: allowed, but nothing listens"
        if state is PortState.SILENT and proto == "udp":
            return (
                Status.WARN,
                seen.OPEN_FILTERED,
                "no UDP reply: allowed or filtered, cannot tell",
            )
        if state is PortState.SILENT:
            return (
                Status.FAIL,
                seen.SILENT,
                "declared port unreachable (no reply after retries)",
            )
        return Status.FAIL, seen.REJECTED, f"declared port rejected ({detail})"
    if exp is Expect.SILENT:
        if state is PortState.SILENT:
            return Status.OK, seen.SILENT, ""
        if state is PortState.OPEN:
            return Status.FAIL, seen.OPEN, f"undeclared port is open ({detail})"
        if state is PortState.CLOSED:
            return (
                Status.FAIL,
                seen.CLOSED,
                f"leak: {detail} reveals the host (expected silence)",
            )
        return Status.FAIL, seen.REJECTED, f"{detail}: expected silence"
    # Expect.REJECTED
    if reply is not None and reply.reason in REJECT_REASONS:
        return (
            Status.OK,
            seen.REJECTED,
            detail,
        )  # admin-prohibited, or connect mode's unseen code
    if state is PortState.SILENT and proto == "tcp":
        # The reject replies are rate-limited, but a TCP port that let the SYN through
        # would answer with an RST or a SYN-ACK, which are not: silence proves it closed.
        return Status.OK, seen.SILENT, ""
    if state is PortState.SILENT:
        return Status.UNPROVEN, seen.SILENT, "ICMP rate limiting throttles reject replies"
    if state is PortState.REJECTED:
        return Status.FAIL, seen.REJECTED, f"{detail}: expected admin-prohibited"
    return Status.FAIL, Observed(state.value), f"leak: {detail} (expected admin-prohibited)"
