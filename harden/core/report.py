"""Expected vs observed, per (target, protocol, port); the report alone decides the exit code.

Pure: ``evaluate(plan, findings)`` builds a Report; ``to_json``, ``to_junit`` and
``to_text`` render it.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from enum import StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Any
from xml.etree import ElementTree as ET

from rich.console import Console
from rich.table import Table

from harden.core.classify import REJECT_REASONS, Reply, State
from harden.core.findings import Findings
from harden.core.manifest import PROTOS, Proto
from harden.core.plan import Expect, Plan, Target
from harden.core.ports import PortRange, compress, expand, merge
from harden.core.witness import judge
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
    def verdict(self) -> str:
        """``fail``, ``inconclusive`` (a target never showed it exists) or ``pass``.

        A deviation is a real finding even where another target stayed silent, so FAIL
        wins over INCONCLUSIVE.
        """
        return _verdict(self.entries)

    @property
    def exit_status(self) -> ExitStatus:
        """0 pass, 1 fail, 5 inconclusive."""
        return {
            "fail": ExitStatus.FAILED,
            "inconclusive": ExitStatus.INCONCLUSIVE,
            "pass": ExitStatus.OK,
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

    def to_prometheus(self) -> str:
        """node_exporter textfile-collector metrics (see harden/core/metrics.py)."""
        from harden.core.metrics import verify_metrics

        return verify_metrics(self)

    def to_nmap_xml(self) -> str:
        """An nmap-compatible XML report (see harden/core/nmapxml.py)."""
        from harden.core.nmapxml import nmap_xml

        return nmap_xml(self)

    def verdict_of(self, target: str) -> str:
        """One target's verdict, by the same rule as ``verdict``."""
        return _verdict([e for e in self.entries if e.target == target])

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


def _verdict(entries: list[Entry]) -> str:
    if any(e.status is Status.FAIL for e in entries):
        return "fail"
    if any(e.status is Status.INCONCLUSIVE for e in entries):
        return "inconclusive"
    return "pass"


def evaluate(plan: Plan, findings: Findings) -> Report:
    """Compare every planned port with what it answered."""
    targets = sorted({g.target for g in plan.groups}, key=lambda t: (t.family, str(t.address)))
    report = Report(
        targets=[str(t.address) for t in targets],
        notes=list(findings.notes),
        sent=dict(findings.sent),
        seconds=findings.seconds,
        mode=findings.mode,
        timing={k: round(v, 3) for k, v in sorted(findings.timing.items())},
    )
    alive = dict(findings.alive)
    if findings.witness is not None:
        _witness(report, findings, targets, alive)
    for target in targets:
        _alive(report, alive, target)
        _echo(report, plan, findings, target)
        for proto in PROTOS:
            _ports(report, plan, findings, target, proto)
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


def _witness(
    report: Report,
    findings: Findings,
    targets: list[Target],
    alive: dict[IPv4Address | IPv6Address, str],
) -> None:
    assert findings.witness is not None
    for judgement in judge(findings.sent, findings.witness):
        family_targets = [t for t in targets if t.family == judgement.family]
        if judgement.arrived:
            for t in family_targets:
                alive.setdefault(t.address, f"its witness counted {judgement.arrived} probes")
        if judgement.verdict in ("ok", "unknown") or not family_targets:
            report.notes.append(f"witness: {judgement.detail}")
            continue
        status = Status.FAIL if judgement.verdict == "fail" else Status.INCONCLUSIVE
        observed = "accepted" if judgement.verdict == "fail" else "nothing arrived"
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


def _alive(report: Report, alive: dict[IPv4Address | IPv6Address, str], target: Target) -> None:
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
            "no reply of any kind and no neighbour entry: there may be no host at this "
            "address, or something upstream drops everything; silence proves nothing here",
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


def _ports(report: Report, plan: Plan, findings: Findings, target: Target, proto: Proto) -> None:
    expect = plan.expectation(target, proto)
    if not expect:
        return
    replies = findings.replies.get((target, proto), {})
    services = {
        p: s
        for g in plan.groups
        if g.target == target and g.proto == proto
        for p, s in g.services.items()
    }
    conforming: dict[tuple[str, str], list[PortRange]] = {}
    unproven: dict[tuple[str, str], list[PortRange]] = {}
    # The target's ICMP budget ran out before these ports' silence could mean anything.
    budget_spent = (target, proto) in findings.budget_limited
    alive = target.address in findings.alive
    rejected_seen = False
    entries: list[Entry] = []

    def conclude(ranges: list[PortRange], exp: Expect, reply: Reply | None) -> None:
        """One verdict for ports that got the same reply (or none): in bulk, as ranges."""
        nonlocal rejected_seen
        status, observed, detail = _judge(proto, exp, reply)
        if exp is Expect.REJECTED and status is Status.OK:
            rejected_seen = True
        key: tuple[str, str] | None = None
        bucket = unproven
        if exp is not Expect.ALLOWED and status is Status.UNPROVEN:
            key = (exp.value, "silent-unproven")
        elif exp is Expect.SILENT and status is Status.OK and budget_spent:
            key = (exp.value, "unprobed")
        elif exp is not Expect.ALLOWED and status is Status.OK and not alive:
            key = (exp.value, "silent, no host seen")
        elif exp is not Expect.ALLOWED and status is Status.OK:
            key, bucket = (exp.value, observed), conforming
        if key is not None:
            bucket.setdefault(key, []).extend(ranges)
            return
        entries.extend(
            Entry(
                str(target.address),
                target.family,
                proto,
                port,
                exp.value,
                observed,
                status,
                detail,
                services.get(port, ""),
            )
            for port in expand(ranges)
        )

    # Most ports of a span get no reply: judged once per span, not once per port (a
    # fleet of 64 hosts is 8 million ports), and only the ports that answered one by one.
    for rng, exp in expect.spans():
        answered = sorted(p for p in replies if p in rng)
        conclude(_gaps(rng, answered), exp, None)
        for port in answered:
            conclude([PortRange(port, port)], exp, replies[port])
    entries.sort(key=lambda e: e.port or 0)
    report.entries.extend(entries)
    for spans, groups in ((report.spans, conforming), (report.unproven, unproven)):
        for (exp_value, observed), ranges in groups.items():
            merged = merge(ranges)
            spans.append(
                Span(
                    str(target.address),
                    target.family,
                    proto,
                    exp_value,
                    observed,
                    tuple(map(str, merged)),
                    sum(len(r) for r in merged),
                )
            )
    if Expect.REJECTED in expect.kinds() and not rejected_seen:
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
        "verdict": report.verdict,
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
        groups: dict[tuple[str, str, str], list[Entry]] = {}
        for e in report.entries:
            if e.target == target:
                groups.setdefault((e.proto, e.expected, f"ipv{e.family}"), []).append(e)
        for s in report.spans:
            if s.target == target:
                groups.setdefault((s.proto, s.expected, f"ipv{s.family}"), [])
        for (proto, expected, family), entries in sorted(groups.items()):
            cases += 1
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"harden.{family}.{proto}",
                name=f"{target} {proto} {expected}",
            )
            unknown = [e for e in entries if e.status is Status.INCONCLUSIVE]
            if unknown:
                errors += 1
                error = ET.SubElement(case, "error", message="inconclusive")
                error.text = "\n".join(e.detail for e in unknown)
            bad = [e for e in entries if e.status is Status.FAIL]
            if bad:
                failures += 1
                lines = [
                    f"{e.proto}/{e.port or '*'}: expected {e.expected}, observed {e.observed}"
                    f" ({e.detail})"
                    for e in bad
                ]
                failure = ET.SubElement(case, "failure", message=f"{len(bad)} port(s) deviate")
                failure.text = "\n".join(lines[:200])
        suite.set("tests", str(cases))
        suite.set("failures", str(failures))
        suite.set("errors", str(errors))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _text(report: Report, width: int) -> str:
    """A table of declared ports and deviations, the notes, and a one-line verdict."""
    buffer = io.StringIO()
    # markup=False: notes, details and "[raw]" are text, not rich markup.
    console = Console(
        file=buffer, width=width, force_terminal=False, color_system=None, markup=False
    )
    table = Table(title=f"harden verify {', '.join(report.targets)}", show_lines=False)
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
    console.print(table)
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
    c = report.counts()
    verdict = report.verdict.upper()
    console.print(
        f"{verdict}: {c['ports']} port(s) probed in {report.seconds:.1f} s, "
        f"{c['deviations']} deviation(s), {c['warnings']} warning(s) [{report.mode}]"
    )
    return buffer.getvalue()
