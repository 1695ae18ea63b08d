"""harden schedule: the units pass systemd-analyze verify, and the command they run writes
metrics in the lab (no systemd runs here, so the ExecStart line is run as systemd would)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from harden.lab.netns import Namespace

from .conftest import REPO
from .labutil import HARDEN, lab_for

WEB = REPO / "rulesets" / "web-server.yaml"


def schedule(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HARDEN, "schedule", *args, "-o", str(tmp)], capture_output=True, text=True, check=False
    )


def exec_start(unit: Path) -> list[str]:
    """The ExecStart argv, unquoted and unescaped as systemd does for these units."""
    line = re.search(r"^ExecStart=(.*)$", unit.read_text(), re.M)
    assert line
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line.group(1))]


def metrics(path: Path) -> dict[str, float]:
    return {
        s.name: s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
        if not s.labels or s.name == "harden_drift"
    }


def test_units_pass_systemd_analyze(tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    prom = tmp_path / "metrics" / "x.prom"
    assert schedule(tmp_path, "verify", str(WEB), "--target", "198.19.254.1", "--every",
                    "10min", "--metrics", str(prom)).returncode == 0  # fmt: skip
    assert schedule(tmp_path, "diff", str(WEB), "--metrics", str(prom)).returncode == 0
    units = sorted(str(p) for p in tmp_path.glob("harden-*.*"))
    assert [Path(u).name for u in units] == [
        "harden-diff.service", "harden-diff.timer", "harden-verify.service", "harden-verify.timer"
    ]  # fmt: skip
    check = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *units], capture_output=True, text=True
    )
    assert check.returncode == 0 and check.stderr == "", check.stderr
    assert prom.parent.is_dir()  # ReadWritePaths= must exist before the unit starts
    assert "SuccessExitStatus=1 5" in (tmp_path / "harden-verify.service").read_text()


@pytest.mark.parametrize("bad", ["every 15 minutes", "0min", "15 min; rm -rf /"])
def test_a_bad_interval_is_refused_and_nothing_written(tmp_path: Path, bad: str) -> None:
    proc = schedule(tmp_path, "diff", str(WEB), "--every", bad)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "--every" in proc.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.netns
def test_the_scheduled_commands_write_metrics(tmp_path: Path) -> None:
    verify_prom, diff_prom = tmp_path / "m" / "verify.prom", tmp_path / "m" / "diff.prom"
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        lab.server.ns.run([*HARDEN, "apply", WEB, "--state-dir", tmp_path / "st"])
        target = str(lab.server.v4)
        assert schedule(tmp_path, "verify", str(WEB), "--target", target, "--ports", "1-500",
                        "--metrics", str(verify_prom)).returncode == 0  # fmt: skip
        assert schedule(tmp_path, "diff", str(WEB), "--metrics", str(diff_prom)).returncode == 0

        def run(ns: Namespace, unit: str) -> int:
            argv = exec_start(tmp_path / unit)
            assert argv[:4] == [sys.executable, "-I", "-m", "harden.cli"]
            return ns.run(argv, check=False, timeout=120).returncode

        assert run(lab.outside.ns, "harden-verify.service") == 0
        assert metrics(verify_prom)["harden_verify_success"] == 1
        assert run(lab.server.ns, "harden-diff.service") == 0
        assert metrics(diff_prom)["harden_drift"] == 0
        lab.server.ns.run(["nft", "insert rule inet harden input tcp dport 444 accept"])
        assert run(lab.outside.ns, "harden-verify.service") == 1  # SuccessExitStatus: a result
        assert metrics(verify_prom)["harden_verify_success"] == 0
        assert run(lab.server.ns, "harden-diff.service") == 1
        assert metrics(diff_prom)["harden_drift"] == 1


def test_an_unwritable_place_is_a_one_line_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    proc = schedule(blocker / "units", "diff", str(WEB), "--metrics", str(tmp_path / "m.prom"))
    assert proc.returncode == 4 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot write" in proc.stderr and "Traceback" not in proc.stderr
