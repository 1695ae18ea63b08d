"""harden runs as root: no Python it starts may import code from the working directory.

A ``harden/`` package planted in the directory an operator runs harden from must never
run. Every command that starts Python (the lab's steps and stand-in services, the
rollback watchdog of ``apply --confirm``, the units ``harden schedule`` writes) runs it
isolated (``python -I``, in ``/``). Needs root for the namespaces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harden.lab.netns import Namespace

from .conftest import REPO
from .labutil import write

pytestmark = pytest.mark.netns

PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('ran'); raise SystemExit(99)\n"


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """A working directory holding a rogue ``harden`` package; the file it would write."""
    cwd, marker = tmp_path / "cwd", tmp_path / "pwned"
    (cwd / "harden" / "lab").mkdir(parents=True)
    for module in ("__init__.py", "lab/__init__.py", "lab/responder.py", "__main__.py"):
        (cwd / "harden" / module).write_text(PAYLOAD.format(marker=str(marker)))
    (cwd / "harden" / "cli.py").write_text(PAYLOAD.format(marker=str(marker)))
    return cwd, marker


def harden(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed entry point, as an operator runs it, from ``cwd``."""
    entry = Path(sys.executable).parent / "harden"
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HARDEN_REQUIRE_NETNS": "1"}
    return subprocess.run(
        [str(entry), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_the_lab_never_imports_from_the_working_directory(planted: tuple[Path, Path]) -> None:
    cwd, marker = planted
    proc = harden(cwd, "lab", str(REPO / "rulesets" / "web-server.yaml"), "--ports", "1-200")
    assert not marker.exists(), "a planted module ran"
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_apply_with_a_confirm_window_starts_an_isolated_watchdog(
    planted: tuple[Path, Path], tmp_path: Path
) -> None:
    cwd, marker = planted
    manifest = write(tmp_path, "m.yaml", "version: 1\nservices: []\n")
    with Namespace("rs") as ns:
        entry = Path(sys.executable).parent / "harden"
        env = "HARDEN_REQUIRE_NETNS=1"
        script = (
            f"cd {cwd} && env {env} ip netns exec {ns.name} {entry} apply {manifest} "
            f"--confirm 30 --state-dir {tmp_path / 'st'} && "
            f"env {env} ip netns exec {ns.name} {entry} rollback --state-dir {tmp_path / 'st'}"
        )
        proc = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert not marker.exists(), "a planted module ran"
    assert proc.returncode == 0, proc.stderr


def test_scheduled_units_run_python_isolated(planted: tuple[Path, Path], tmp_path: Path) -> None:
    cwd, marker = planted
    out = tmp_path / "units"
    out.mkdir()
    manifest = REPO / "rulesets" / "web-server.yaml"
    proc = harden(
        cwd,
        "schedule",
        "diff",
        str(manifest),
        "-o",
        str(out),
        "--metrics",
        str(tmp_path / "m.prom"),
    )
    assert proc.returncode == 0, proc.stderr
    exec_start = next(
        line
        for line in (out / "harden-diff.service").read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    assert exec_start.split()[1:4] == ["-I", "-m", "harden.cli"], exec_start
    assert not marker.exists()
