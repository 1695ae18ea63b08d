"""Prometheus text exposition (node_exporter's textfile collector) of verify and diff results.

Every series a dashboard or an alert needs exists in every file, with 0 where nothing
happened, so an alert like ``harden_verify_success == 0`` never meets a missing series
that Prometheus would read as "no data" rather than "bad".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from harden.text import printable
from harden.types import Verdict
from harden.verify.report import Report, Status


def _escape(value: str) -> str:
    """A label value in the text format: backslash, double quote and newline escaped."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return printable(escaped)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items()) + "}"


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, name: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]
    ) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} gauge")
        for labels, value in samples:
            number = repr(float(value)) if value != int(value) else str(int(value))
            self.lines.append(f"{name}{_labels(labels)} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def verify_metrics(report: Report) -> str:
    """The verification's metrics.

    Per target: verdict, deviations by kind, warnings, ports probed and unproven; for
    the run: success, duration and when it ended.
    """
    out = _Writer()
    _verdict_metrics(out, report)
    _deviation_metrics(out, report)
    _port_metrics(out, report)
    _run_metrics(out, report)
    return out.text()


VERIFY_UP = (
    "harden_verify_up",
    "1 if the last harden verify could judge the targets, 0 if it stopped on an error.",
)
VERIFY_SUCCESS = (
    "harden_verify_success",
    "1 if the last harden verify passed, 0 if it failed, was inconclusive or could not run.",
)
DIFF_UP = ("harden_diff_up", "1 if the last harden diff could compare the live rules, else 0.")
LAST_RUN = (
    "harden_verify_last_run_timestamp_seconds",
    "When the last verification ended (seconds since the epoch).",
)
LAST_CHECK = (
    "harden_drift_last_check_timestamp_seconds",
    "When harden diff last compared the live rules (seconds since the epoch).",
)


def _verdict_metrics(out: _Writer, report: Report) -> None:
    """Write the run's success and each target's verdict."""
    out.metric(*VERIFY_UP, [({}, 1)])
    out.metric(*VERIFY_SUCCESS, [({}, 1 if report.verdict is Verdict.PASS else 0)])
    out.metric(
        "harden_verify_target_verdict",
        "The last verdict per target: 1 on the verdict it had, 0 on the others.",
        [
            ({"target": t, "verdict": v.value}, 1 if report.verdict_of(t) is v else 0)
            for t in report.targets
            for v in (Verdict.PASS, Verdict.FAIL, Verdict.INCONCLUSIVE)
        ],
    )


def _deviation_metrics(out: _Writer, report: Report) -> None:
    """Write the deviations by kind, their total and the warnings, per target."""
    targets = report.targets
    kinds = Counter(
        (e.target, e.proto, e.observed) for e in report.entries if e.status is Status.FAIL
    )
    out.metric(
        "harden_verify_deviations",
        "Ports that deviate from the manifest, per target, protocol and what was observed "
        "(open: an undeclared port answers; closed: an RST or port-unreachable leaks; "
        "silent: a declared port does not answer).",
        [({"target": t, "proto": p, "observed": o}, n) for (t, p, o), n in sorted(kinds.items())],
    )
    totals = Counter(e.target for e in report.entries if e.status is Status.FAIL)
    out.metric(
        "harden_verify_deviations_total",
        "All deviating ports per target.",
        [({"target": t}, totals.get(t, 0)) for t in targets],
    )
    warnings = Counter(e.target for e in report.entries if e.status is Status.WARN)
    out.metric(
        "harden_verify_warnings",
        "Declared ports that are allowed but not provably serving, per target.",
        [({"target": t}, warnings.get(t, 0)) for t in targets],
    )


def _port_counts(report: Report) -> tuple[Counter[str], Counter[str]]:
    """Count the ports probed and the ports unproven, per target."""
    probed = Counter[str]()
    unproven = Counter[str]()
    for span in report.spans:
        probed[span.target] += span.count
    for span in report.unproven:
        probed[span.target] += span.count
        unproven[span.target] += span.count
    for entry in report.entries:
        if entry.port:
            probed[entry.target] += 1
    return probed, unproven


def _port_metrics(out: _Writer, report: Report) -> None:
    """Write the ports probed and the ports unproven, per target."""
    probed, unproven = _port_counts(report)
    out.metric(
        "harden_verify_ports_probed",
        "Ports probed per target (TCP and UDP).",
        [({"target": t}, probed.get(t, 0)) for t in report.targets],
    )
    out.metric(
        "harden_verify_ports_unproven",
        "Silent ports whose silence proves nothing (ICMP budget, no sign of life).",
        [({"target": t}, unproven.get(t, 0)) for t in report.targets],
    )


def _run_metrics(out: _Writer, report: Report) -> None:
    """Write the run's unchecked premises, its duration and when it ended."""
    out.metric(
        "harden_verify_assumptions",
        "Premises the last verdict rests on that the run did not check (0 with a witness that "
        "checked them all).",
        [({}, len(report.assumptions))],
    )
    out.metric(
        "harden_verify_duration_seconds",
        "How long the last verification probed.",
        [({}, round(report.seconds, 3))],
    )
    out.metric(*LAST_RUN, [({}, round(report.started + report.seconds, 3))])


def verify_down_metrics(exit_status: int, ended_at: float) -> str:
    """The metrics of a verify that stopped before a verdict: it fails, loudly.

    Written over the last run's file, so ``harden_verify_success`` of an earlier PASS never
    outlives a run that could not judge (docs/design.md, "Metrics that fail loudly").
    """
    out = _Writer()
    out.metric(*VERIFY_UP, [({"exit": str(exit_status)}, 0)])
    out.metric(*VERIFY_SUCCESS, [({}, 0)])
    out.metric(*LAST_RUN, [({}, round(ended_at, 3))])
    return out.text()


def diff_down_metrics(exit_status: int, backend: str, checked_at: float) -> str:
    """The metrics of a diff that could not compare: not "no drift" (``harden_drift`` is absent)."""
    out = _Writer()
    out.metric(*DIFF_UP, [({"backend": backend, "exit": str(exit_status)}, 0)])
    out.metric(*LAST_CHECK, [({}, round(checked_at, 3))])
    return out.text()


def drift_metrics(drift: bool, backend: str, checked_at: float) -> str:
    """``harden diff MANIFEST --format prometheus``: whether the live rules drifted."""
    out = _Writer()
    out.metric(*DIFF_UP, [({"backend": backend}, 1)])
    out.metric(
        "harden_drift",
        "1 if harden's live rules differ from what the manifest renders, else 0.",
        [({"backend": backend}, 1 if drift else 0)],
    )
    out.metric(*LAST_CHECK, [({}, round(checked_at, 3))])
    return out.text()
