"""The target's live ruleset in the report: leaks, declared ports dropped, disagreements.

Pure. The witness's ``harden counters`` carries the target's ruleset; ``harden.analysis.crosscheck``
judges it against the manifest, and this adds the findings to the report:

- an accept for something the manifest does not declare is a FAIL, whatever source,
  source port or uid it is keyed on: the probes may never have been able to see it;
- a drop of a declared port is a FAIL, unless a probe the drop covers was answered: then
  the model and the kernel disagree, and the port is INCONCLUSIVE ("model disagreement");
- a cell the model cannot decide is left to the probes, and said so ("probe only").

docs/design.md, "The model beside the probes".
"""

from __future__ import annotations

from dataclasses import replace

from harden.analysis.crosscheck import StaticCheck, Targeted
from harden.analysis.matrix import Row
from harden.analysis.results import row_text
from harden.verify.findings import Observed
from harden.verify.plan import Expect, Target
from harden.verify.report import Entry, Report, Status

# Undecidable cells named one by one in the notes, at most; the rest are counted.
MAX_PROBE_ONLY = 10
ANSWERED = (Observed.OPEN, Observed.CLOSED)
PAST = {"drop": "dropped", "reject": "rejected"}


def judge_static(
    report: Report,
    check: StaticCheck,
    targets: list[Target],
    targeted: list[tuple[Targeted, str | None]],
) -> None:
    """Add the static findings about ``targets`` (the witness's own addresses) to ``report``."""
    for reason in check.unknown:
        report.notes.append(f"analysis: {reason}; every port is left to the probes (probe only)")
    report.notes += [f"analysis: {note}" for note in check.notes]
    for row in check.leaks:
        first = next((t for t in targets if t.family == row.family), None)
        if first is not None:
            report.entries.append(_leak(row, first, targeted))
    for row in check.blocked:
        _blocked(report, check, row, [t for t in targets if t.family == row.family])
    for row in check.uncertain[:MAX_PROBE_ONLY]:
        report.notes.append(f"probe only: the model cannot decide {row_text(row)}")
    if len(check.uncertain) > MAX_PROBE_ONLY:
        more = len(check.uncertain) - MAX_PROBE_ONLY
        report.notes.append(f"probe only: {more} more rows the model cannot decide")


def _single(row: Row) -> int | None:
    only = row.dports[0]
    return only.first if len(row.dports) == 1 and only.first == only.last else None


def _leak(row: Row, target: Target, targeted: list[tuple[Targeted, str | None]]) -> Entry:
    """A FAIL for an undeclared accept, with what a targeted probe of it got, if one went."""
    detail = f"analysis: not declared, yet accepted: {row_text(row)}"
    for probe, answer in targeted:
        if probe.row is row:
            confirmed = answer in ("open", "closed")
            got = (
                f"answered ({answer})"
                if confirmed
                else f"{answer or 'silent'} (model disagreement)"
            )
            detail += f"; a probe from source port {probe.sport} to {probe.dport} was {got}"
    return Entry(
        target=str(target.address),
        family=row.family,
        proto=row.proto,
        port=_single(row),
        expected=Expect.SILENT if row.hook == "input" else Expect.BLOCKED,
        observed=Observed.ACCEPTED_BY_RULES,
        status=Status.FAIL,
        detail=detail,
    )


def _blocked(report: Report, check: StaticCheck, row: Row, targets: list[Target]) -> None:
    """A FAIL for a declared port the rules drop, unless a probe it covers was answered."""
    if not targets:
        return
    sources = {str(t.address): t.seen_as or t.source for t in targets}
    contradicted = [
        i
        for i, e in enumerate(report.entries)
        if e.target in sources
        and (e.proto, e.expected) == (row.proto, Expect.ALLOWED)
        and e.port is not None
        and any(e.port in r for r in row.dports)
        and e.observed in ANSWERED
        and check.contradicted_by(row, sources[e.target])
    ]
    for i in contradicted:
        e = report.entries[i]
        report.entries[i] = replace(
            e,
            status=Status.INCONCLUSIVE,
            detail=f"model disagreement: {e.proto}/{e.port} answered ({e.observed}), yet the "
            f"live rules {row.verdict} it: {row_text(row)}",
        )
    if contradicted:
        return
    report.entries.append(
        Entry(
            target=str(targets[0].address),
            family=row.family,
            proto=row.proto,
            port=_single(row),
            expected=Expect.ALLOWED,
            observed=Observed.DROPPED_BY_RULES,
            status=Status.FAIL,
            detail=f"analysis: declared, yet {PAST[row.verdict]}: {row_text(row)}",
        )
    )
