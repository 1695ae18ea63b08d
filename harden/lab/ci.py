"""``harden ci BASE HEAD``: a pull request's manifests validated, diffed, asserted and labbed.

BASE and HEAD are directories or git revisions of a manifest repository. Every manifest of
HEAD is validated (each error with its file, field and line); each one the change adds or
alters is diffed against BASE, held to its assertions (``ci:`` in the manifest, ``--keep``,
and the SSH BASE serves), and run through the lab: its rules loaded in namespaces and
probed before and after. docs/ci.md, "What harden ci proves".
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harden import defaults
from harden.errors import EnvironmentProblem, ManifestError, OptionError
from harden.files import load_manifest
from harden.lab.scenario import run_lab
from harden.manifest.model import Manifest, PortCheck
from harden.manifest.parse import manifest_from_text
from harden.manifest.safeyaml import line_of, load_yaml
from harden.outputs.ci import Case, CiReport, LabOutcome, Problem
from harden.policy.checks import keep_open, never_open, ssh_kept
from harden.policy.exposure import exposure_diff
from harden.policy.model import Policy, build_policy
from harden.text import one_line
from harden.types import Backend
from harden.verify.options import PortSelection

Say = Callable[[str], None]
ALL = PortSelection("all")
PATTERNS = ("*.yaml", "*.yml")
NOTHING = build_policy(manifest_from_text("version: 1\n", "(none)"))  # a host allowing nothing


@dataclass(frozen=True)
class CiOptions:
    """How ``harden ci`` judges a change."""

    keep: tuple[PortCheck, ...] = ()
    allow_ssh_change: bool = False
    lab: bool = True
    backend: Backend = defaults.BACKEND
    lab_ports: PortSelection = ALL
    patterns: tuple[str, ...] = PATTERNS


def run_ci(
    base: str, head: str, repo: Path, options: CiOptions, progress: Say = lambda m: None
) -> CiReport:
    """Judge the change from ``base`` to ``head`` (see the module's docstring)."""
    report = CiReport(base, head)
    with tempfile.TemporaryDirectory(prefix="harden-ci-") as tmp:
        trees = [
            _tree(ref, repo, Path(tmp) / side, options.patterns, name)
            for ref, side, name in ((base, "b", "base"), (head, "h", "head"))
        ]
        found = [_manifests(tree, options.patterns) for tree in trees]
        for path in sorted(set(found[0]) | set(found[1])):
            progress(f"{path}: validate and diff")
            case = _case(path, *(trees[i] / path if path in found[i] else None for i in (0, 1)))
            report.cases.append(case)
            if case.status in ("unchanged", "removed") or case.problem is not None:
                continue
            _assert(case, trees, options)
            if options.lab:
                progress(f"{path}: lab ({options.backend}), before and after")
                case.lab = _lab(trees[1] / path, options)
    report.not_tested += _not_tested(report, options)
    return report


def _tree(ref: str, repo: Path, into: Path, patterns: Sequence[str], option: str) -> Path:
    """``ref`` itself if it is a directory, else the revision's files written to ``into``.

    Written byte for byte (git show, no text decoding): a file that is not UTF-8, or
    has CRLF line ends, is the same file on either side.
    """
    if Path(ref).is_dir():
        return Path(ref)
    rev = _git(repo, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
    if rev.returncode != 0:
        raise OptionError(option, f"{ref!r} is neither a directory nor a git revision of {repo}")
    commit = rev.stdout.decode().strip()
    listed = _git(repo, "ls-tree", "-r", "-z", "--name-only", commit)
    for name in filter(None, listed.stdout.decode(errors="surrogateescape").split("\0")):
        if _wanted(name, patterns):
            shown = _git(repo, "show", f"{commit}:{name}")
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            (into / name).write_bytes(shown.stdout)
    into.mkdir(parents=True, exist_ok=True)
    return into


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise EnvironmentProblem("harden ci needs git for revisions (Debian package git)") from None


def _wanted(name: str, patterns: Sequence[str]) -> bool:
    parts = Path(name).parts
    hidden = any(p.startswith(".") for p in parts)
    return not hidden and any(fnmatch.fnmatch(parts[-1], p) for p in patterns)


# A manifest says so on a line of its own; a compose file's version is a string.
_VERSION_1 = re.compile(rb"^version:\s*1\s*(#.*)?$", re.MULTILINE)


def _manifests(tree: Path, patterns: Sequence[str]) -> set[str]:
    """The repository paths of the manifests under ``tree``: YAML files of ``version: 1``.

    Other YAML (a compose file, Kubernetes or CloudFormation documents, CI configuration)
    is not a manifest. A file that does not parse counts only if it says ``version: 1``
    on a line of its own: then validate says why it is broken.
    """
    out = set()
    for path in tree.rglob("*"):
        name = str(path.relative_to(tree))
        if not path.is_file() or not _wanted(name, patterns):
            continue
        raw = path.read_bytes()
        try:
            data = load_yaml(raw.decode(), name)
        except (ManifestError, UnicodeDecodeError):
            if _VERSION_1.search(raw):
                out.add(name)
            continue
        if isinstance(data, dict) and data.get("version") == 1:
            out.add(name)
    return out


def _case(path: str, old: Path | None, new: Path | None) -> Case:
    """Validate HEAD's file, and diff it against BASE's."""
    started = time.monotonic()
    if new is None:
        return Case(path, "removed")
    status = "added" if old is None else "unchanged"
    if old is not None and old.read_bytes() != new.read_bytes():
        status = "changed"
    case = Case(path, status)
    try:
        head = load_manifest(new)
    except ManifestError as exc:
        text = new.read_bytes().decode(errors="replace")
        said = re.match(r"line (\d+)", exc.message)  # a YAML error names its own line
        line = int(said.group(1)) if said and not exc.field else line_of(text, exc.field)
        case.problem = Problem(exc.field, exc.message, line)
        return case
    if status != "unchanged":
        before = _policy(old) if old is not None else NOTHING
        after = build_policy(head)
        case.diff = exposure_diff(before or NOTHING, after, f"BASE:{path}", f"HEAD:{path}")
    case.seconds = time.monotonic() - started
    return case


def _policy(path: Path) -> Policy | None:
    try:
        return build_policy(load_manifest(path))
    except ManifestError:
        return None  # BASE's own error: HEAD is judged without it


def _assert(case: Case, trees: list[Path], options: CiOptions) -> None:
    """HEAD's assertions: its ci: section, --keep, and the SSH that BASE serves."""
    head_manifest: Manifest = load_manifest(trees[1] / case.path)
    head = build_policy(head_manifest)
    for check in (*head_manifest.ci.keep_open, *options.keep):
        failure = keep_open(head, check)
        case.failures += [failure] if failure else []
    for check in head_manifest.ci.never_open:
        failure = never_open(head, check)
        case.failures += [failure] if failure else []
    base = _policy(trees[0] / case.path) if case.status == "changed" else None
    if base is not None and not options.allow_ssh_change:
        case.failures += ssh_kept(base, head)


def _lab(path: Path, options: CiOptions) -> LabOutcome:
    """The lab of HEAD's manifest; one that cannot run is said, never taken for a pass."""
    started = time.monotonic()
    try:
        result = run_lab(path, options.backend, ports=options.lab_ports)
    except EnvironmentProblem as exc:
        return LabOutcome(None, skipped=one_line(str(exc), 200))
    steps = tuple(
        f"{s.name} from {s.vantage}: {str(s.report.get('verdict', '?')).upper()} "
        f"(expected {'PASS' if s.expect_pass else 'FAIL'})"
        for s in result.steps
    )
    return LabOutcome(result.ok, time.monotonic() - started, steps, None, tuple(result.not_tested))


def _not_tested(report: CiReport, options: CiOptions) -> list[str]:
    """What this run did not prove, and why."""
    out = []
    if not options.lab:
        out.append("the lab (--no-lab): no changed manifest's rules were loaded or probed")
    out += [
        f"{c.path}: the lab could not run ({c.lab.skipped})"
        for c in report.cases
        if c.lab is not None and c.lab.ok is None
    ]
    if options.lab and options.lab_ports.kind != "all":
        out.append(f"ports outside --lab-ports {options.lab_ports} were not probed")
    out.append("the live hosts: run 'harden diff MANIFEST' or 'harden verify' against them")
    return out
