"""Bad manifests: one line naming file and field, exit 2, no traceback. One file per case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harden.errors import ExitStatus, ManifestError
from harden.files import load_manifest

CASES = sorted((Path(__file__).parent / "invalid").glob("*.yaml"))


def expected_error(case: Path) -> str:
    first = case.read_text().splitlines()[0]
    assert first.startswith("# error: "), f"{case} must start with '# error: <message>'"
    return first.removeprefix("# error: ")


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_error_names_file_and_field(case: Path) -> None:
    with pytest.raises(ManifestError) as caught:
        load_manifest(case)
    message = str(caught.value)
    assert message.startswith(f"{case}: ")
    assert expected_error(case) in message
    assert "\n" not in message


@pytest.mark.parametrize("case", CASES[:6], ids=lambda p: p.stem)
def test_cli_prints_one_line_and_exits_2(case: Path) -> None:
    for command in ("validate", "render"):
        proc = subprocess.run(
            [sys.executable, "-m", "harden.cli", command, str(case)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == ExitStatus.USAGE
        assert proc.stdout == ""
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f"harden: error: {case}: ")
        assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harden.cli", "--debug", "validate", str(CASES[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "ManifestError" in proc.stderr


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match=r"missing\.yaml: cannot read: No such file"):
        load_manifest(tmp_path / "missing.yaml")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"version: 1\nhost: caf\xe9\n")
    with pytest.raises(ManifestError, match="not UTF-8"):
        load_manifest(path)
