"""``verify --format junit``: one testcase per (target, protocol, expectation) group (pure)."""

from __future__ import annotations

import time
from xml.etree import ElementTree as ET

from harden.verify.report import Entry, Report, Span, Status


def verify_junit(report: Report) -> str:
    """JUnit XML: one testcase per (target, protocol, expectation) group, plus ping."""
    suites = ET.Element("testsuites", name="harden verify", time=f"{report.seconds:.3f}")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(report.started))
    shares = _shares(report)
    for target in report.targets:
        _junit_suite(suites, report, target, stamp, shares)
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _shares(report: Report) -> dict[str, float]:
    """Each testcase's time, by protocol.

    A protocol's phase of the run, shared by the testcases that phase checked: targets
    are probed side by side, so no testcase has a clock of its own.
    """
    counts: dict[str, int] = {}
    for target in report.targets:
        for proto, _, _ in _junit_groups(report, target)[0]:
            counts[proto] = counts.get(proto, 0) + 1
    return {proto: report.timing.get(f"phase_{proto}", 0.0) / n for proto, n in counts.items() if n}


def _junit_suite(
    suites: ET.Element, report: Report, target: str, stamp: str, shares: dict[str, float]
) -> None:
    """Add one target's testsuite: a testcase per group, its failures and errors counted."""
    suite = ET.SubElement(suites, "testsuite", name=f"harden verify {target}", timestamp=stamp)
    cases = 0
    failures = 0
    errors = 0
    seconds = 0.0
    groups, unproven = _junit_groups(report, target)
    for key, entries in sorted(groups.items()):
        cases += 1
        share = shares.get(key[0], 0.0)
        seconds += share
        failed, erred = _junit_case(suite, target, key, entries, unproven.get(key, []), share)
        failures += failed
        errors += erred
    suite.set("time", f"{seconds:.3f}")  # its testcases' share, not the whole run again
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
    seconds: float,
) -> tuple[int, int]:
    """Add one group's testcase; return how many failures and errors (0 or 1 each) it holds."""
    proto, expected, family = key
    case = ET.SubElement(
        suite,
        "testcase",
        classname=f"harden.{family}.{proto}",
        name=f"{target} {proto} {expected}",
        time=f"{seconds:.3f}",
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
