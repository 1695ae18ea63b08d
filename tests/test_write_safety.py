"""Files harden writes as root: never through a path another user can swap.

An atomic write sets the mode on its open descriptor (a path can be swapped for a
symlink, a descriptor cannot) and refuses a directory another user can write; a
scheduled unit refuses a manifest or metrics directory another user controls.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from harden.errors import UnsafeOutput
from harden.files import check_private_file, write_atomic

from .conftest import REPO

NOBODY = pwd.getpwnam("nobody").pw_uid
root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")


def harden(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", "-m", "harden.cli", *args], capture_output=True, text=True
    )


def test_the_mode_is_the_one_asked_for_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        write_atomic(tmp_path / "secret", "x", mode=0o600)
        write_atomic(tmp_path / "public", "y", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644


def test_a_symlink_at_the_destination_is_replaced_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    victim.chmod(0o600)
    (tmp_path / "out").symlink_to(victim)
    write_atomic(tmp_path / "out", "new", mode=0o644)
    assert not (tmp_path / "out").is_symlink() and (tmp_path / "out").read_text() == "new"
    assert victim.read_text() == "keep" and stat.S_IMODE(victim.stat().st_mode) == 0o600


def test_directories_other_users_can_write_are_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeOutput, match="writable by other users"):
        write_atomic(shared / "report.json", "{}")
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: nobody else can rename or remove our files
    write_atomic(sticky / "report.json", "{}")
    assert not list(shared.iterdir())


@root_only
def test_a_directory_owned_by_another_user_is_refused_with_one_line(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, -1)
    proc = harden("render", str(REPO / "rulesets" / "web-server.yaml"), "-o", str(theirs))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "owned by uid" in proc.stderr
    assert list(theirs.iterdir()) == []


@root_only
def test_schedule_refuses_a_manifest_or_metrics_directory_others_control(tmp_path: Path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text((REPO / "rulesets" / "web-server.yaml").read_text())
    units = tmp_path / "units"
    units.mkdir()
    manifest.chmod(0o666)
    proc = harden("schedule", "diff", str(manifest), "-o", str(units))
    assert proc.returncode == 2 and "manifest" in proc.stderr and "refused" in proc.stderr
    manifest.chmod(0o644)
    os.chown(manifest, NOBODY, -1)
    with pytest.raises(UnsafeOutput):
        check_private_file(manifest, "manifest")
    os.chown(manifest, 0, -1)
    metrics = tmp_path / "prom"
    metrics.mkdir()
    os.chown(metrics, NOBODY, -1)
    proc = harden(
        "schedule", "diff", str(manifest), "-o", str(units), "--metrics", str(metrics / "d.prom")
    )
    assert proc.returncode == 2 and "metrics directory" in proc.stderr, proc.stderr
    assert list(units.iterdir()) == []
