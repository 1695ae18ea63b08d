"""Golden tests: each folder under tests/golden is a scenario; rulesets/ must be reproducible.

Run ``pytest --update-golden`` to rewrite the expected files after an intended change,
then review the diff like any other code change.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from harden.backends import names, render
from harden.files import load_manifest
from harden.policy.model import build_policy

from .conftest import REPO

GOLDEN = Path(__file__).parent / "golden"
SCENARIOS = sorted(p for p in GOLDEN.iterdir() if p.is_dir())
EXAMPLES = sorted((REPO / "rulesets").glob("*.yaml"))


def rendered(manifest: Path) -> dict[str, str]:
    policy = build_policy(load_manifest(manifest))
    files: dict[str, str] = {}
    for backend in names():
        files.update(render(policy, backend))
    return files


def compare(files: dict[str, str], folder: Path, prefix: str, update: bool) -> None:
    for name, text in files.items():
        path = folder / f"{prefix}{name}"
        if update:
            path.write_text(text)
            continue
        assert path.exists(), f"{path} missing: run pytest --update-golden"
        expected = path.read_text()
        if text != expected:
            diff = "".join(
                difflib.unified_diff(
                    expected.splitlines(True), text.splitlines(True), str(path), "rendered"
                )
            )
            pytest.fail(f"{path} differs from the rendered output:\n{diff}")


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: p.name)
def test_golden(scenario: Path, update_golden: bool) -> None:
    compare(rendered(scenario / "manifest.yaml"), scenario, "expected.", update_golden)


@pytest.mark.parametrize("manifest", EXAMPLES, ids=lambda p: p.stem)
def test_rulesets_are_reproducible(manifest: Path, update_golden: bool) -> None:
    folder = manifest.with_suffix("")
    folder.mkdir(exist_ok=True)
    compare(rendered(manifest), folder, "", update_golden)


def test_there_are_enough_examples() -> None:
    assert len(EXAMPLES) >= 4
    assert len(SCENARIOS) >= 8
