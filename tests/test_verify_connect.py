"""The unprivileged fallback (no CAP_NET_RAW): connect() probes give the same verdicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from harden.lab.net import LabNet

from .conftest import REPO
from .labutil import HARDEN, lab_for, load_ruleset

pytestmark = pytest.mark.netns
WEB = REPO / "rulesets" / "web-server.yaml"


def verify_as_nobody(lab: LabNet) -> tuple[int, dict[str, Any]]:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    proc = lab.outside.ns.run(
        [
            "setpriv",
            "--reuid=nobody",
            "--regid=nogroup",
            "--clear-groups",
            *HARDEN,
            "verify",
            str(WEB),
            "--target",
            str(lab.server.v4),
            "--target",
            str(lab.server.v6),
            "--ports",
            "1-500",
            "--format",
            "json",
        ],
        check=False,
        timeout=300,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_unprivileged_pass_and_fail(tmp_path: Path) -> None:
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        code, before = verify_as_nobody(lab)
        assert (code, before["verdict"], before["mode"]) == (1, "fail", "connect")
        leaks = {
            (p["target"], p["proto"], p["observed"])
            for p in before["ports"]
            if p["status"] == "fail"
        }
        for target in (str(lab.server.v4), str(lab.server.v6)):
            assert (target, "tcp", "closed") in leaks and (target, "udp", "closed") in leaks
        load_ruleset(lab, WEB, tmp_path)
        code, after = verify_as_nobody(lab)
        assert (code, after["verdict"]) == (0, "pass"), after["ports"]
        opened = {
            (p["target"], p["proto"], p["port"]) for p in after["ports"] if p["observed"] == "open"
        }
        assert (str(lab.server.v4), "tcp", 80) in opened
        assert (str(lab.server.v6), "udp", 443) in opened
        assert any("unprivileged mode" in note for note in after["notes"])
