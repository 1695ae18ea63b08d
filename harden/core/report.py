"""Expected vs observed, per (target, protocol, port); the report alone decides the exit code.

Pure: ``evaluate(plan, findings)`` builds a Report; ``to_json``, ``to_junit`` and
``to_text`` render it.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any
from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from harden.core.classify import REJECT_REASONS, Reason, Reply, State
from harden.core.findings import Findings
from harden.core.plan import Expect, Plan, Target
from harden.core.ports import PortRange, compress, expand, merge
from harden.core.types import PROTOS, Address, Family, Proto, Sent, Verdict
from harden.core.witness import Judgement, Observed, judge
from harden.errors import ExitStatus

SCHEMA = "harden.verify/2"


class Status(StrEnum):
    """How an observation compares with the expectation."""

    OK = "ok"
    WARN = "warn"  # allowed, but not provably serving (nothing listens / no UDP reply)
    FAIL = "fail"
    UNPROVEN = "unproven"  # silent, but silence proves nothing here (see Span.observed)
    INCONCLUSIVE = "inconclusive"  # nothing showed a host is there: no verdict possible


@dataclass(frozen=True)
class Entry:
    """One port's expectation and observation (declared ports and deviations)."""

    target: str
    family: int
    proto: str
    port: int | None  # None: a whole group (e.g. "no admin-prohibited seen at all")
    expected: str
    observed: str
    status: Status
    detail: str
    service: str = ""


@dataclass(frozen=True)
class Span:
    """Conforming ports of one target/protocol, as ranges."""

    target: str
    family: int
    proto: str
    expected: str
    observed: str
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

    def to_json(self) -> dict[str, Any]:
        """The documented JSON shape (schema ``harden.verify/2``)."""
        return _json(self)

    def to_junit(self) -> str:
        """JUnit XML: one testcase per (target, protocol, expectation) group, plus ping."""
        return _junit(self)

    def to_text(self, width: int = 110) -> str:
        """A table of declared ports and deviations, the notes, and a one-line verdict."""
        return _text(self, width)

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
                str(target.address),
                target.family,
                proto,
                "allowed or silent",
                "not probed",
                tuple(map(str, compress(ports))),
                len(ports),
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


def _uncovered(report: Report, witness: Observed, targets: list[Target]) -> None:
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
        status = Status.FAIL if judgement.verdict is Verdict.FAIL else Status.INCONCLUSIVE
        observed = "accepted" if judgement.verdict is Verdict.FAIL else "not counted"
        report.entries.append(
            Entry(
                str(family_targets[0].address),
                judgement.family,
                judgement.proto,
                None,
                "arrived and dropped",
                observed,
                status,
                f"witness: {judgement.detail}",
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
        and e.expected == Expect.ALLOWED.value
        and e.observed in ("silent", "open|filtered")
    ]
    detail = f"witness: {judgement.detail}"
    for i in silent:
        e = report.entries[i]
        report.entries[i] = replace(
            e,
            observed="blocked on the host",
            status=Status.FAIL,
            detail=f"declared {e.proto}/{e.port} is blocked by another firewall on the host "
            f"({detail})",
        )
    if not silent:
        report.entries.append(
            Entry(
                str(family_targets[0].address),
                judgement.family,
                judgement.proto,
                None,
                "allowed",
                "blocked on the host",
                Status.FAIL,
                detail,
            )
        )


def _alive(report: Report, alive: dict[Address, str], target: Target) -> None:
    evidence = alive.get(target.address)
    if evidence is not None:
        report.alive[str(target.address)] = evidence
        return
    report.entries.append(
        Entry(
            str(target.address),
            target.family,
            "ip",
            None,
            "a host",
            "nothing",
            Status.INCONCLUSIVE,
            "no reply of any kind during the run, not even at the link layer: there may be no "
            "host at this address, or something upstream drops everything; silence proves "
            "nothing here",
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
                str(target.address),
                target.family,
                "icmp",
                None,
                "echo-reply" if expected else "silent",
                "echo-reply" if answered else "silent",
                Status.FAIL,
                "ping is declared but went unanswered"
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
                str(target.address),
                target.family,
                proto,
                None,
                "rejected",
                "silent",
                Status.FAIL,
                "closed: reject, but no closed port answered admin-prohibited (is reject active?)",
            )
        )


Buckets = dict[tuple[str, str], list[PortRange]]  # (expected, observed) -> port ranges


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
    unproven_as: str | None
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
            observed = f"rejected by {reply.responder}, the target or a filter before it"
            self.unproven.setdefault((exp.value, observed), []).extend(ranges)
            return
        status, observed, detail = _judge(self.proto, exp, reply)
        if exp is Expect.REJECTED and status is Status.OK:
            self.rejected_seen = True
        bucket = None if exp is Expect.ALLOWED else self._bucket(status, observed, reply)
        if bucket is not None:
            bucket[0].setdefault((exp.value, bucket[1]), []).extend(ranges)
            return
        self.entries.extend(
            Entry(
                str(self.target.address),
                self.target.family,
                self.proto,
                port,
                exp.value,
                observed,
                status,
                detail,
                self.services.get(port, ""),
            )
            for port in expand(ranges)
        )

    def _bucket(
        self, status: Status, observed: str, reply: Reply | None
    ) -> tuple[Buckets, str] | None:
        """Where closed ports with this outcome go in bulk, and as what (None: one by one)."""
        if status is Status.UNPROVEN:
            if self.witnessed:
                return self.conforming, "silent, counted by the witness"
            return self.unproven, "silent-unproven"
        if status is not Status.OK:
            return None
        if self.unproven_as and not reply:
            return self.unproven, self.unproven_as
        if not self.alive:
            return self.unproven, "silent, no host seen"
        return self.conforming, observed

    def spans(self, buckets: Buckets) -> list[Span]:
        """The buckets as spans of merged ranges."""
        out = []
        for (exp_value, observed), ranges in buckets.items():
            merged = merge(ranges)
            out.append(
                Span(
                    str(self.target.address),
                    self.target.family,
                    self.proto,
                    exp_value,
                    observed,
                    tuple(map(str, merged)),
                    sum(len(r) for r in merged),
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


def _judge(proto: str, exp: Expect, reply: Reply | None) -> tuple[Status, str, str]:
    state = reply.state if reply else State.SILENT
    detail = reply.detail if reply else "no reply after retries"
    if exp is Expect.ALLOWED:
        if state is State.OPEN:
            return Status.OK, "open", detail
        if state is State.CLOSED:
            return Status.WARN, "closed", f"{detail}: allowed, but nothing listens"
        if state is State.SILENT and proto == "udp":
            return Status.WARN, "open|filtered", "no UDP reply: allowed or filtered, cannot tell"
        if state is State.SILENT:
            return Status.FAIL, "silent", "declared port unreachable (no reply after retries)"
        return Status.FAIL, "rejected", f"declared port rejected ({detail})"
    if exp is Expect.SILENT:
        if state is State.SILENT:
            return Status.OK, "silent", ""
        if state is State.OPEN:
            return Status.FAIL, "open", f"undeclared port is open ({detail})"
        if state is State.CLOSED:
            return Status.FAIL, "closed", f"leak: {detail} reveals the host (expected silence)"
        return Status.FAIL, "rejected", f"{detail}: expected silence"
    # Expect.REJECTED
    if reply is not None and reply.reason in REJECT_REASONS:
        return Status.OK, "rejected", detail  # admin-prohibited, or connect mode's unseen code
    if state is State.SILENT and proto == "tcp":
        # The reject replies are rate-limited, but a TCP port that let the SYN through
        # would answer with an RST or a SYN-ACK, which are not: silence proves it closed.
        return Status.OK, "silent", ""
    if state is State.SILENT:
        return Status.UNPROVEN, "silent", "ICMP rate limiting throttles reject replies"
    if state is State.REJECTED:
        return Status.FAIL, "rejected", f"{detail}: expected admin-prohibited"
    return Status.FAIL, state.value, f"leak: {detail} (expected admin-prohibited)"


def _json(report: Report) -> dict[str, Any]:
    """The documented JSON shape (schema ``harden.verify/2``)."""
    return {
        "schema": SCHEMA,
        "targets": report.targets,
        "verdict": report.verdict.value,
        "assumptions": list(report.assumptions),
        "mode": report.mode,
        "seconds": round(report.seconds, 3),
        "started": round(report.started, 3),
        "timing": report.timing,
        "counts": report.counts(),
        "ports": [
            {
                "target": e.target,
                "family": f"ipv{e.family}",
                "proto": e.proto,
                "port": e.port,
                "expected": e.expected,
                "observed": e.observed,
                "status": e.status.value,
                "detail": e.detail,
                "service": e.service,
            }
            for e in report.entries
        ],
        "conforming": [_span(s) for s in report.spans],
        "unproven": [_span(s) for s in report.unproven],
        "skipped": [_span(s) for s in report.skipped],
        "alive": report.alive,
        "sent": report.sent,
        "notes": report.notes,
    }


def _span(s: Span) -> dict[str, Any]:
    return {
        "target": s.target,
        "family": f"ipv{s.family}",
        "proto": s.proto,
        "expected": s.expected,
        "observed": s.observed,
        "count": s.count,
        "ranges": list(s.ranges),
    }


def _junit(report: Report) -> str:
    """JUnit XML: one testcase per (target, protocol, expectation) group, plus ping."""
    suites = ET.Element("testsuites", name="harden verify", time=f"{report.seconds:.3f}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(report.started))
    for target in report.targets:
        _junit_suite(suites, report, target, stamp)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _junit_suite(suites: ET.Element, report: Report, target: str, stamp: str) -> None:
    """Add one target's testsuite: a testcase per group, its failures and errors counted."""
    # Targets are probed together: each suite took the whole run.
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"harden verify {target}",
        timestamp=stamp,
        time=f"{report.seconds:.3f}",
    )
    cases = 0
    failures = 0
    errors = 0
    groups, unproven = _junit_groups(report, target)
    for key, entries in sorted(groups.items()):
        cases += 1
        failed, erred = _junit_case(suite, target, key, entries, unproven.get(key, []))
        failures += failed
        errors += erred
    if report.assumptions:
        properties = ET.SubElement(suite, "properties")
        for premise in report.assumptions:
            ET.SubElement(properties, "property", name="assumption", value=premise)
        suite.remove(properties)
        suite.insert(0, properties)  # the schema wants properties first
    suite.set("tests", str(cases))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))


def _junit_groups(
    report: Report, target: str
) -> tuple[dict[tuple[str, str, str], list[Entry]], dict[tuple[str, str, str], list[Span]]]:
    """One target's testcase groups, keyed (proto, expected, family), and their unproven spans.

    Every group with an entry, a conforming span or an unproven span is a testcase.
    """
    groups: dict[tuple[str, str, str], list[Entry]] = {}
    for e in report.entries:
        if e.target == target:
            groups.setdefault((e.proto, e.expected, f"ipv{e.family}"), []).append(e)
    for s in report.spans:
        if s.target == target:
            groups.setdefault((s.proto, s.expected, f"ipv{s.family}"), [])
    unproven: dict[tuple[str, str, str], list[Span]] = {}
    for s in report.unproven:
        if s.target == target:
            key = (s.proto, s.expected, f"ipv{s.family}")
            groups.setdefault(key, [])
            unproven.setdefault(key, []).append(s)
    return groups, unproven


def _junit_case(
    suite: ET.Element,
    target: str,
    key: tuple[str, str, str],
    entries: list[Entry],
    unproven: list[Span],
) -> tuple[int, int]:
    """Add one group's testcase; return how many failures and errors (0 or 1 each) it holds."""
    proto, expected, family = key
    case = ET.SubElement(
        suite,
        "testcase",
        classname=f"harden.{family}.{proto}",
        name=f"{target} {proto} {expected}",
    )
    errors = 0
    unknown = [e.detail for e in entries if e.status is Status.INCONCLUSIVE]
    unknown += [f"{s.count} port(s) {s.observed}: their silence proves nothing" for s in unproven]
    if unknown:
        errors = 1
        error = ET.SubElement(case, "error", message="inconclusive")
        error.text = "\n".join(unknown)
    failures = 0
    bad = [e for e in entries if e.status is Status.FAIL]
    if bad:
        failures = 1
        lines = [
            f"{e.proto}/{e.port or '*'}: expected {e.expected}, observed {e.observed} ({e.detail})"
            for e in bad
        ]
        failure = ET.SubElement(case, "failure", message=f"{len(bad)} port(s) deviate")
        failure.text = "\n".join(lines[:200])
    return failures, errors


def _text(report: Report, width: int) -> str:
    """A table of declared ports and deviations, the notes, and a one-line verdict."""
    buffer = io.StringIO()
    # markup=False: notes, details and "[raw]" are text, not rich markup. soft_wrap: the
    # lines under the table are not wrapped here, so a narrow terminal wraps them whole
    # words at a time instead of breaking our pre-wrapped lines mid-word.
    console = Console(
        file=buffer,
        width=width,
        force_terminal=False,
        color_system=None,
        markup=False,
        soft_wrap=True,
    )
    console.print(_text_table(report))
    _text_details(console, report)
    c = report.counts()
    unproven = f", {c['unproven']} unproven" if c["unproven"] else ""
    console.print(
        f"{report.verdict_line}: {c['ports']} port(s) probed in {report.seconds:.1f} s, "
        f"{c['deviations']} deviation(s), {c['warnings']} warning(s){unproven} [{report.mode}]"
    )
    return buffer.getvalue()


def _text_table(report: Report) -> Table:
    """The table of declared ports and deviations, the first 200 rows of them."""
    mode = " --egress" if report.mode == "egress" else ""
    table = Table(title=f"harden verify{mode} {', '.join(report.targets)}", show_lines=False)
    for column in (
        "target",
        "proto",
        "port",
        "service",
        "expected",
        "observed",
        "status",
        "detail",
    ):
        table.add_column(column, overflow="fold")
    shown = [e for e in report.entries if e.status is not Status.OK or e.expected == "allowed"]
    for e in shown[:200]:
        table.add_row(
            e.target,
            e.proto,
            str(e.port or "*"),
            e.service,
            e.expected,
            e.observed,
            e.status.value.upper(),
            e.detail,
        )
    if len(shown) > 200:
        table.add_row("…", "", "", "", "", "", "", f"{len(shown) - 200} more (see --format json)")
    return table


def _text_details(console: Console, report: Report) -> None:
    """Print the conforming, unproven and skipped spans, the liveness evidence and the notes."""
    for s in report.spans:
        console.print(
            f"  {s.target} {s.proto}: {s.count} port(s) expected {s.expected}, "
            f"observed {s.observed}"
        )
    for s in report.unproven:
        console.print(
            f"  {s.target} {s.proto}: {s.count} port(s) expected {s.expected}, {s.observed}: "
            "their silence proves nothing (not counted as conforming)"
        )
    for s in report.skipped:
        console.print(
            f"  {s.target} {s.proto}: declared port(s) {', '.join(s.ranges[:20])} not probed "
            "(outside --ports)"
        )
    for target, evidence in report.alive.items():
        console.print(f"  {target} is there: {evidence}")
    for note in report.notes:
        console.print(f"  note: {note}")
