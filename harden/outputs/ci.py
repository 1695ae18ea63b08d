"""What ``harden ci`` found, and its formats: text, Markdown, JUnit, GitHub annotations, JSON.

Pure: the runner (harden/lab/ci.py) reads the trees, validates, diffs and labs; this
module only says it. docs/ci.md, "What harden ci proves".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree as ET

from harden.errors import ExitStatus
from harden.policy.checks import Failure
from harden.policy.exposure import ExposureDiff

SCHEMA = "harden.ci/1"
ADMIN_PORTS = {22}  # a close or narrow of these is marked ⚠ too (SSH, whatever its service)


@dataclass(frozen=True)
class Problem:
    """Why a manifest of HEAD does not validate: its field, the message, its line if known."""

    field: str
    message: str
    line: int | None = None


@dataclass(frozen=True)
class LabOutcome:
    """The lab of one HEAD manifest: its verdict, steps and time, or why it did not run."""

    ok: bool | None  # None: not run
    seconds: float = 0.0
    steps: tuple[str, ...] = ()  # "before from outside: FAIL (expected FAIL)", ...
    skipped: str | None = None
    not_tested: tuple[str, ...] = ()  # what the lab's probes could not cover, and why


@dataclass
class Case:
    """One manifest of the change (by its repository path)."""

    path: str
    status: str  # added, changed, removed, unchanged
    problem: Problem | None = None
    diff: ExposureDiff | None = None
    failures: list[Failure] = field(default_factory=list)
    lab: LabOutcome | None = None
    seconds: float = 0.0  # validate, diff and the assertions

    @property
    def ok(self) -> bool:
        """Valid, no assertion broken, and the lab (if it ran) passed."""
        lab_ok = self.lab is None or self.lab.ok is not False
        return self.problem is None and not self.failures and lab_ok

    def warnings(self) -> list[str]:
        """The changes to review first: what opens or widens, and closes of admin ports."""
        if self.diff is None:
            return []
        marked = []
        for c in self.diff.changes:
            admin = any(p in r for r in c.ports for p in ADMIN_PORTS) and c.proto == "tcp"
            if c.change in ("opens", "widens") or (c.change in ("closes", "narrows") and admin):
                marked.append(c.text)
        return marked


@dataclass
class CiReport:
    """Every manifest of HEAD validated, each changed one diffed, asserted and labbed."""

    base: str
    head: str
    cases: list[Case] = field(default_factory=list)
    not_tested: list[str] = field(default_factory=list)

    @property
    def exit_status(self) -> ExitStatus:
        """2 a manifest does not validate; 1 an assertion or a lab fails; else 0."""
        if any(c.problem is not None for c in self.cases):
            return ExitStatus.USAGE
        return ExitStatus.OK if all(c.ok for c in self.cases) else ExitStatus.FAILED

    @property
    def changed(self) -> list[Case]:
        """The manifests the change adds, alters or removes."""
        return [c for c in self.cases if c.status != "unchanged" or c.problem is not None]

    def verdict(self) -> str:
        """One line: PASS, FAIL or INVALID, and how many manifests."""
        word = {0: "PASS", 1: "FAIL", 2: "INVALID"}[int(self.exit_status)]
        bad = sum(not c.ok for c in self.cases)
        return f"{word}: {len(self.changed)} changed of {len(self.cases)} manifests, {bad} failing"

    def to_text(self) -> str:
        """A section per changed manifest, then what was not tested and the verdict."""
        lines = [f"harden ci {self.base} -> {self.head}"]
        for case in self.changed:
            lines.append(f"{case.path} ({case.status}): {'ok' if case.ok else 'FAIL'}")
            lines += [f"  invalid: {_problem(case.problem)}"] if case.problem else []
            lines += [f"  ⚠ {w}" for w in case.warnings()]
            if case.diff is not None:
                shown = set(case.warnings())
                lines += [f"  {c.text}" for c in case.diff.changes if c.text not in shown]
            lines += [f"  FAIL {f.kind}: {f.message}" for f in case.failures]
            if case.lab is not None:
                lines += [f"  lab: {_lab(case.lab)}"]
                lines += [f"    {s}" for s in case.lab.steps]
        lines += [f"not tested: {n}" for n in self.untested]
        lines.append(self.verdict())
        return "\n".join(lines) + "\n"

    @property
    def untested(self) -> list[str]:
        """Everything not tested: the run's own reasons, then each lab's, by manifest."""
        labs = [f"{c.path}: {n}" for c in self.cases if c.lab is not None for n in c.lab.not_tested]
        return [*self.not_tested, *labs]

    def to_markdown(self) -> str:
        """The pull-request comment: a table of the manifests, then what each changes."""
        lines = [f"## harden ci: {self.verdict()}", "", "| manifest | change | result |"]
        lines.append("|---|---|---|")
        for case in self.changed:
            result = "✅" if case.ok else "❌"
            lines.append(f"| `{case.path}` | {case.status} | {result} |")
        for case in self.changed:
            lines += ["", f"### `{case.path}`", ""]
            lines += [f"- ❌ invalid: {_problem(case.problem)}"] if case.problem else []
            lines += [f"- ❌ **{f.kind}**: {f.message}" for f in case.failures]
            lines += [f"- ⚠ {w}" for w in case.warnings()]
            if case.diff is not None:
                shown = set(case.warnings())
                lines += [f"- {c.text}" for c in case.diff.changes if c.text not in shown]
            if case.lab is not None:
                lines.append(f"- lab: {_lab(case.lab)}")
        if self.untested:
            lines += ["", "**Not tested:**", "", *(f"- {n}" for n in self.untested)]
        return "\n".join(lines) + "\n"

    def to_github(self) -> str:
        """GitHub Actions workflow commands: an error per failure, a warning per ⚠."""
        out = []
        for case in self.changed:
            where = f"file={_escape(case.path, prop=True)}"
            if case.problem is not None:
                line = f",line={case.problem.line}" if case.problem.line else ""
                out.append(f"::error {where}{line}::{_escape(_problem(case.problem))}")
            out += [f"::error {where}::{_escape(f.message)}" for f in case.failures]
            out += [f"::warning {where}::{_escape(w)}" for w in case.warnings()]
            if case.lab is not None and case.lab.ok is False:
                out.append(f"::error {where}::{_escape('lab: ' + _lab(case.lab))}")
        out.append(self.verdict())
        return "\n".join(out) + "\n"

    def to_junit(self) -> str:
        """One testsuite per changed manifest: validate, assertions and lab, each timed."""
        suites = ET.Element("testsuites", name="harden ci")
        for case in self.changed:
            suite = ET.SubElement(suites, "testsuite", name=case.path)
            checks = [("validate", case.problem and _problem(case.problem), case.seconds)]
            if case.problem is None:
                failed = "\n".join(f.message for f in case.failures)
                checks.append(("assertions", failed or None, 0.0))
            if case.lab is not None:
                failed_lab = _lab(case.lab) if case.lab.ok is False else None
                checks.append(("lab", failed_lab, case.lab.seconds))
            for name, failure, seconds in checks:
                test = ET.SubElement(
                    suite, "testcase", name=name, classname=case.path, time=f"{seconds:.3f}"
                )
                if case.lab is not None and name == "lab" and case.lab.ok is None:
                    ET.SubElement(test, "skipped", message=case.lab.skipped or "not run")
                elif failure:
                    ET.SubElement(test, "failure", message=failure.splitlines()[0]).text = failure
            suite.set("tests", str(len(checks)))
            suite.set("failures", str(sum(1 for _, f, _ in checks if f)))
        return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"

    def to_json(self) -> dict[str, Any]:
        """``{"schema": "harden.ci/1", "base", "head", "ok", "manifests": [...]}``."""
        return {
            "schema": SCHEMA,
            "base": self.base,
            "head": self.head,
            "ok": self.exit_status == ExitStatus.OK,
            "manifests": [_case_json(c) for c in self.cases],
            "not_tested": self.untested,
        }

    def render(self, fmt: str) -> str:
        """The report in ``fmt``: text, markdown, github, junit or json."""
        if fmt == "json":
            return json.dumps(self.to_json(), indent=2) + "\n"
        return {
            "text": self.to_text,
            "markdown": self.to_markdown,
            "github": self.to_github,
            "junit": self.to_junit,
        }[fmt]()


def _case_json(case: Case) -> dict[str, Any]:
    problem, lab = case.problem, case.lab
    return {
        "path": case.path,
        "status": case.status,
        "ok": case.ok,
        "invalid": None
        if problem is None
        else {"field": problem.field, "message": problem.message, "line": problem.line},
        "changes": [] if case.diff is None else [c.to_json() for c in case.diff.changes],
        "warnings": case.warnings(),
        "failures": [
            {"kind": f.kind, "check": f.check, "message": f.message} for f in case.failures
        ],
        "lab": None
        if lab is None
        else {
            "ok": lab.ok,
            "seconds": round(lab.seconds, 2),
            "steps": list(lab.steps),
            "skipped": lab.skipped,
        },
    }


def _problem(problem: Problem) -> str:
    where = f"line {problem.line}: " if problem.line else ""
    field_ = f"{problem.field}: " if problem.field else ""
    return f"{where}{field_}{problem.message}"


def _lab(lab: LabOutcome) -> str:
    if lab.ok is None:
        return f"not run ({lab.skipped})"
    return f"{'PASS' if lab.ok else 'FAIL'} in {lab.seconds:.0f} s"


def _escape(text: str, prop: bool = False) -> str:
    """GitHub's workflow-command escaping of a message (or of a property's value)."""
    out = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return out.replace(":", "%3A").replace(",", "%2C") if prop else out
