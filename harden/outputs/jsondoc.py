"""``verify --format json``: the report as the documented ``harden.verify/2`` document (pure)."""

from __future__ import annotations

from typing import TypedDict

from harden.verify.report import SCHEMA, Report, Span


class PortJson(TypedDict):
    """One declared port or deviation."""

    target: str
    family: str  # "ipv4" or "ipv6"
    proto: str
    port: int | None
    expected: str
    observed: str
    status: str
    detail: str
    service: str


class SpanJson(TypedDict):
    """Ports of one target and protocol that came out the same, as ranges."""

    target: str
    family: str
    proto: str
    expected: str
    observed: str
    count: int
    ranges: list[str]


class VerifyJson(TypedDict):
    """The whole report (schema ``harden.verify/2``)."""

    schema: str
    targets: list[str]
    verdict: str
    assumptions: list[str]
    mode: str
    seconds: float
    started: float
    timing: dict[str, float]
    counts: dict[str, int]
    ports: list[PortJson]
    conforming: list[SpanJson]
    unproven: list[SpanJson]
    skipped: list[SpanJson]
    alive: dict[str, str]
    sent: dict[str, int]
    notes: list[str]


def verify_json(report: Report) -> VerifyJson:
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


def _span(s: Span) -> SpanJson:
    return {
        "target": s.target,
        "family": f"ipv{s.family}",
        "proto": s.proto,
        "expected": s.expected,
        "observed": str(s.observed),
        "count": s.count,
        "ranges": list(s.ranges),
    }
