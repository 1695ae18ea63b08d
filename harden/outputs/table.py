"""``verify --format text``: a table of declared ports and deviations, then the verdict (pure)."""

from __future__ import annotations

import io

from rich.console import Console
from rich.table import Table

from harden.verify.plan import Expect
from harden.verify.report import Report, Status


def verify_text(report: Report, width: int = 110) -> str:
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
    shown = [e for e in report.entries if e.status is not Status.OK or e.expected is Expect.ALLOWED]
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
