"""The two-VM regression setup: the Vagrantfile validates (Debian's vagrant)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

VAGRANT = REPO / "vagrant"


def validate(folder: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (make install adds Debian's package)")
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=folder,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_vagrantfile_validates() -> None:
    proc = validate(VAGRANT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_a_broken_vagrantfile_does_not(tmp_path: Path) -> None:
    text = (VAGRANT / "Vagrantfile").read_text()
    (tmp_path / "Vagrantfile").write_text(
        text.replace('config.vm.box = "debian/bookworm64"', "config.vm.boxx = 1")
    )
    proc = validate(tmp_path)
    assert proc.returncode != 0
    assert "boxx" in proc.stdout + proc.stderr
