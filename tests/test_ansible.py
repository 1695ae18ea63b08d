"""The Ansible role, run for real: ansible-playbook -c local inside the lab's server namespace,
verification inside the outside namespace (needs root and ansible-core)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from harden.lab.net import LabNet

from .conftest import REPO
from .labutil import lab_for

pytestmark = pytest.mark.netns
PLAYBOOK = REPO / "vagrant" / "ansible" / "site.yml"
PLAYBOOK_BIN = Path(sys.executable).parent / "ansible-playbook"
WEB = REPO / "rulesets" / "web-server.yaml"


def play(lab: LabNet, tmp: Path, extra: dict[str, object]) -> tuple[int, dict[str, int], str]:
    inventory = tmp / "hosts.ini"
    inventory.write_text(
        f"[targets]\nserver ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    variables = tmp / "vars.json"
    variables.write_text(json.dumps(extra))
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ans"),
        "ANSIBLE_REMOTE_TEMP": str(tmp / "ans"),
        "ANSIBLE_RETRY_FILES_ENABLED": "0",
        "ANSIBLE_ROLES_PATH": str(PLAYBOOK.parent / "roles"),
    }
    proc = lab.server.ns.run(
        [
            "env",
            *(f"{k}={v}" for k, v in env.items() if k.startswith("ANSIBLE_")),
            str(PLAYBOOK_BIN),
            "-i",
            str(inventory),
            str(PLAYBOOK),
            "-e",
            f"@{variables}",
        ],
        check=False,
        timeout=600,
    )
    recap = re.search(r"server\s*:\s*(.*)", proc.stdout.split("PLAY RECAP")[-1])
    assert recap, proc.stdout + proc.stderr
    counts = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", recap.group(1))}
    return proc.returncode, counts, proc.stdout


def variables(lab: LabNet, tmp: Path) -> dict[str, object]:
    return {
        "harden_become": False,
        "harden_manifest": yaml.safe_load(WEB.read_text()),
        "harden_manifest_path": str(tmp / "manifest.yaml"),
        "harden_state_dir": str(tmp / "state"),
        "harden_report_dir": str(tmp),
        "harden_cmd": f"{sys.executable} -m harden.cli",
        "harden_verify_targets": [str(lab.server.v4), str(lab.server.v6)],
        "harden_verify_prefix": f"ip netns exec {lab.outside.ns.name}",
        "harden_verify_args": ["--ports", "1-2000"],
    }


@pytest.fixture(autouse=True)
def _ansible() -> None:
    if not PLAYBOOK_BIN.exists() or shutil.which("ip") is None:
        pytest.skip("ansible-core is not installed in this environment")


def test_playbook_applies_verifies_confirms_and_is_idempotent(tmp_path: Path) -> None:
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path))
        assert code == 0, out
        assert recap["changed"] >= 2 and recap["failed"] == 0  # manifest written, applied
        assert "Confirm (verification passed)" in out
        junit = (tmp_path / "harden-server.xml").read_text()
        assert 'failures="0"' in junit
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path))
        assert code == 0 and recap["changed"] == 0, out
        status = lab.server.ns.run(
            [
                sys.executable,
                "-m",
                "harden.cli",
                "status",
                "--state-dir",
                str(tmp_path / "state"),
                "--format",
                "json",
            ]
        ).stdout
        assert json.loads(status)["pending_confirmation"] is None


def test_a_failed_verification_rolls_back_and_fails_the_play(tmp_path: Path) -> None:
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=300)
        lab.wait_reachable()
        # A Docker-style port forward already exposes an undeclared port.
        lab.server.ns.run(
            [
                "nft",
                "add table ip nat; add chain ip nat pre "
                "{ type nat hook prerouting priority dstnat; }; "
                f"add rule ip nat pre tcp dport 1080 dnat to {lab.server.v4}:80",
            ]
        )
        code, recap, out = play(lab, tmp_path, variables(lab, tmp_path))
        assert code != 0 and recap["failed"] == 1, out
        assert "Roll back (verification failed)" in out
        tables = lab.server.ns.run(["nft", "list", "tables"]).stdout
        assert "inet harden" not in tables  # back to what was there before: nothing
        assert "ip nat" in tables
