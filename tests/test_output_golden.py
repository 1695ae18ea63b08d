"""Golden files for every command's machine and human output: JSON, JUnit and text.

Each case below builds a result from fixed data (no clock, no kernel) and renders it the
way the CLI does; tests/golden_output/<case> holds the expected bytes. A new case is one
entry in CASES. ``pytest --update-golden`` rewrites them after an intended change.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import subprocess
import sys
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import pytest

from harden.apply.results import (
    ApplyResult,
    Drift,
    StatusReport,
    Validation,
    validation_document,
)
from harden.files import load_manifest, parse_manifest
from harden.lab.scenario import LabResult, Step
from harden.outputs.jsondoc import verify_json
from harden.outputs.junit import verify_junit
from harden.outputs.metrics import verify_metrics
from harden.outputs.nmapxml import nmap_xml
from harden.outputs.table import verify_text
from harden.policy.model import build_policy
from harden.types import sent_counts
from harden.verify.classify import Reason, Reply
from harden.verify.findings import Findings, Observed
from harden.verify.plan import Target, plan_probes
from harden.verify.report import Report, evaluate

from .conftest import REPO

GOLDEN = Path(__file__).parent / "golden_output"
SERVER4, PROBER4 = ip_address("198.19.254.1"), ip_address("198.19.253.2")
SERVER6, PROBER6 = ip_address("fdff:18::1"), ip_address("fdff:17::2")
WEB = REPO / "rulesets" / "web-server.yaml"
REJECT = """version: 1
policy: {closed: reject}
services:
  - {name: web, port: 443, proto: tcp}
  - {name: dns, port: 53, proto: udp}
"""


EXAMPLES = ["rulesets/web-server.yaml", "rulesets/bastion.yaml"]


def dumps(data: Any) -> str:
    return json.dumps(data, indent=2) + "\n"  # what the CLI prints


def validations(names: tuple[str, ...] = ("web-server.yaml", "bastion.yaml")) -> list[Validation]:
    out = []
    for name in names:
        path = REPO / "rulesets" / name
        manifest = load_manifest(path)
        out.append(Validation.of(f"rulesets/{name}", manifest, build_policy(manifest)))
    return out


def table_names(proto: str, port: int) -> str | None:
    """A service table as nmap-services gives it: only ssh is named here."""
    return {("tcp", 22): "ssh"}.get((proto, port))


def leaky_report() -> Report:
    """A host before hardening: RSTs, a port-unreachable, an open undeclared port."""
    policy = build_policy(load_manifest(WEB))
    targets = [Target(SERVER4, PROBER4), Target(SERVER6, PROBER6)]
    plan = plan_probes(policy, targets, (22, 53, 80, 443, 8080, 9999))
    findings = Findings(seconds=4.25)
    findings.timing.update({"phase_tcp": 3.0, "phase_udp": 1.2})  # JUnit shares these
    for t in targets:
        f = t.family
        tcp = {p: Reply(f, "tcp", p, 40000, Reason.SYN_ACK, ack=1) for p in (22, 80, 443, 8080)}
        tcp[9999] = Reply(f, "tcp", 9999, 40000, Reason.RST, ack=1)
        findings.replies[(t, "tcp")] = tcp
        code = 3 if f == 4 else 4
        findings.replies[(t, "udp")] = {
            53: Reply(f, "udp", 53, 41000, Reason.UDP_REPLY),
            9999: Reply(f, "udp", 9999, 41000, Reason.PORT_UNREACHABLE, code),
        }
        findings.echo[t.address] = True
        findings.alive[t.address] = "tcp/22 answered syn-ack"
        findings.unproven[(t, "udp")] = Observed.UNPROBED
    findings.sent = sent_counts(
        {"4/tcp/allowed": 4, "4/tcp/silent": 6, "6/tcp/allowed": 4, "6/tcp/silent": 6}
    )
    findings.notes.append("198.19.254.1 udp: 1 port(s) answered with ICMP; more may answer")
    return evaluate(plan, findings)


def reject_report() -> Report:
    """closed: reject seen from outside: admin-prohibited, and rate-limited silence."""
    policy = build_policy(parse_manifest(REJECT))
    target = Target(SERVER4, PROBER4)
    plan = plan_probes(policy, [target], (22, 53, 443, 1000, 1001))
    findings = Findings(seconds=2.0)
    findings.replies[(target, "tcp")] = {
        443: Reply(4, "tcp", 443, 40000, Reason.SYN_ACK, ack=1),
        22: Reply(4, "tcp", 22, 40000, Reason.PROHIBITED, 13),
    }
    findings.replies[(target, "udp")] = {1000: Reply(4, "udp", 1000, 41000, Reason.PROHIBITED, 13)}
    findings.echo[SERVER4] = True
    findings.alive[SERVER4] = "echo reply"
    return evaluate(plan, findings)


def connect_report() -> Report:
    """Connect mode: no ping, codes unseen, a declared port silent."""
    policy = build_policy(parse_manifest(REJECT))
    target = Target(SERVER4, PROBER4)
    plan = plan_probes(policy, [target], (53, 443, 1000))
    findings = Findings(seconds=3.0, mode="connect")
    findings.replies[(target, "tcp")] = {
        1000: Reply(4, "tcp", 1000, 0, Reason.UNREACHABLE_UNSEEN),
    }
    findings.replies[(target, "udp")] = {1000: Reply(4, "udp", 1000, 0, Reason.REFUSED)}
    findings.alive[SERVER4] = "udp/1000 answered refused"
    findings.notes.append("unprivileged mode (no CAP_NET_RAW): connect() probes")
    return evaluate(plan, findings)


def absent_report() -> Report:
    """An address with no host behind it: nothing answered, no neighbour entry."""
    policy = build_policy(load_manifest(REPO / "rulesets" / "bastion.yaml"))
    target = Target(SERVER4, PROBER4)
    plan = plan_probes(policy, [target], (22, 80))
    findings = Findings(seconds=1.5)
    findings.replies[(target, "tcp")] = {}
    findings.replies[(target, "udp")] = {}
    findings.echo[SERVER4] = False
    return evaluate(plan, findings)


def lab_result() -> LabResult:
    before: dict[str, Any] = dict(verify_json(leaky_report()))
    after = json.loads(json.dumps(before))
    after.update(verdict="pass", ports=[], notes=[])
    steps = [
        Step("before", "outside", False, before, 1, 8.5),
        Step("after", "outside", True, after, 0, 5.1, {"closed_tcp_v4": 6, "closed_udp_v4": 0}),
    ]
    return LabResult(WEB.relative_to(REPO), "nftables", steps, confirmed=True)


APPLIED = ApplyResult(
    changed=True,
    backend="nftables",
    manifest="rulesets/web-server.yaml",
    manifest_sha256="a" * 64,
    ruleset_sha256="b" * 64,
    confirm_deadline=1790000060.0,
    message="applied; rolls back in 60 s unless 'harden confirm' runs",
)
UNCHANGED = ApplyResult(False, "iptables", "web.yaml", "c" * 64, "d" * 64, message="unchanged")
STATUS = StatusReport(
    state_dir="/var/lib/harden",
    backend="nftables",
    manifest="/etc/harden/web.yaml",
    manifest_sha256="e" * 64,
    applied_at=1790000000.0,
    pending_deadline=1790000060.0,
    seconds_left=42.5,
    live_matches_last_apply=True,
    watchdog="running",
    history=({"event": "applied", "at": 1790000000.0, "manifest_sha256": "e" * 64},),
    allows=("tcp/80,443", "udp/443", "tcp/22 from 198.18.1.0/24,fd00:1::/64"),
    trusted=("docker0",),
    forward="drop",
)
DEAD_WATCHDOG = dataclasses.replace(STATUS, watchdog="not running")
EGRESS_STATUS = dataclasses.replace(
    STATUS,
    pending_deadline=None,
    seconds_left=None,
    watchdog=None,
    egress=validations(("egress-host.yaml",))[0].egress,
)
INTERRUPTED = dataclasses.replace(STATUS, interrupted=True, watchdog="not running")
DRIFT = Drift(
    True, "--- live\n+++ web.yaml (nftables)\n@@ -1 +1 @@\n-tcp dport 81\n+tcp dport 80\n"
)

CASES: dict[str, Callable[[], str]] = {
    "validate.json": lambda: dumps(validation_document([v.to_json() for v in validations()])),
    "validate.txt": lambda: "".join(v.to_text() + "\n" for v in validations()),
    "validate-egress.json": lambda: dumps([validations(("egress-host.yaml",))[0].to_json()]),
    "validate-egress.txt": lambda: validations(("egress-host.yaml",))[0].to_text() + "\n",
    "apply-changed.json": lambda: dumps(APPLIED.to_json()),
    "apply-changed.txt": lambda: APPLIED.to_text() + "\n",
    "apply-unchanged.json": lambda: dumps(UNCHANGED.to_json()),
    "apply-unchanged.txt": lambda: UNCHANGED.to_text() + "\n",
    "diff-drift.json": lambda: dumps(DRIFT.to_json()),
    "diff-drift.txt": lambda: DRIFT.to_text() + "\n",
    "diff-none.json": lambda: dumps(Drift(False, "").to_json()),
    "diff-none.txt": lambda: Drift(False, "").to_text() + "\n",
    "status-pending.json": lambda: dumps(STATUS.to_json()),
    "status-pending.txt": lambda: STATUS.to_text() + "\n",
    "status-dead-watchdog.txt": lambda: DEAD_WATCHDOG.to_text() + "\n",
    "status-interrupted.json": lambda: dumps(INTERRUPTED.to_json()),
    "status-interrupted.txt": lambda: INTERRUPTED.to_text() + "\n",
    "status-nothing.json": lambda: dumps(StatusReport("/var/lib/harden").to_json()),
    "status-nothing.txt": lambda: StatusReport("/var/lib/harden").to_text() + "\n",
    "status-egress.json": lambda: dumps(EGRESS_STATUS.to_json()),
    "status-egress.txt": lambda: EGRESS_STATUS.to_text() + "\n",
    "verify-leaky.json": lambda: dumps(verify_json(leaky_report())),
    "verify-leaky.junit.xml": lambda: verify_junit(leaky_report()),
    "verify-leaky.txt": lambda: verify_text(leaky_report()),
    "verify-reject.json": lambda: dumps(verify_json(reject_report())),
    "verify-reject.junit.xml": lambda: verify_junit(reject_report()),
    "verify-reject.txt": lambda: verify_text(reject_report()),
    "verify-absent.json": lambda: dumps(verify_json(absent_report())),
    "verify-absent.junit.xml": lambda: verify_junit(absent_report()),
    "verify-absent.txt": lambda: verify_text(absent_report()),
    "verify-leaky.prom": lambda: verify_metrics(leaky_report()),
    "verify-leaky.nmap.xml": lambda: nmap_xml(leaky_report(), table_names),
    "verify-absent.prom": lambda: verify_metrics(absent_report()),
    "verify-absent.nmap.xml": lambda: nmap_xml(absent_report()),
    "verify-connect.json": lambda: dumps(verify_json(connect_report())),
    "verify-connect.txt": lambda: verify_text(connect_report()),
    "lab.json": lambda: dumps(lab_result().to_json()),
    "lab.txt": lambda: lab_result().to_text() + "\n",
    "lab.md": lambda: lab_result().to_markdown(),
    "lab.junit.xml": lambda: lab_result().to_junit(),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_output_matches_golden(name: str, request: pytest.FixtureRequest) -> None:
    text = CASES[name]()
    path = GOLDEN / name
    if request.config.getoption("--update-golden"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
        return
    assert path.exists(), f"{path} missing: run pytest --update-golden"
    expected = path.read_text()
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True)))
        pytest.fail(f"{name} differs from its golden file:\n{diff}")


def test_every_golden_file_has_a_case() -> None:
    assert sorted(p.name for p in GOLDEN.iterdir()) == sorted(CASES)


def test_the_cli_prints_the_golden_validate_output() -> None:
    for fmt, name in (("json", "validate.json"), ("text", "validate.txt")):
        proc = subprocess.run(
            [sys.executable, "-m", "harden.cli", "validate", "--format", fmt, *EXAMPLES],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        )
        assert proc.stdout == (GOLDEN / name).read_text()


def test_a_long_allowlist_is_summarised_in_text_and_kept_whole_in_json() -> None:
    """validate printed 1.7 MB on one line for 100,000 sources: the text names the first
    five networks (and twenty port ranges) and counts the rest; JSON keeps every one."""
    nets = [f"198.18.{i}.0/24" for i in range(0, 14, 2)]
    ports = [f'"{20000 + 20 * i}-{20009 + 20 * i}"' for i in range(25)]
    text = (
        "version: 1\nservices:\n  - {name: api, proto: tcp, "
        f"ports: [{', '.join(ports)}], sources: [{', '.join(nets)}]}}\n"
    )
    manifest = parse_manifest(text, "long.yaml")
    result = Validation.of("long.yaml", manifest, build_policy(manifest))
    line = result.to_text()
    assert "from 198.18.0.0/24,198.18.2.0/24,198.18.4.0/24,198.18.6.0/24,198.18.8.0/24,… " in line
    assert "(7 networks, first 5 shown)" in line and "198.18.10.0/24" not in line
    assert "20380-20389,… (25 port ranges, first 20 shown)" in line
    [rule] = result.to_json()["allows"]
    assert rule["ipv4_sources"] == nets and len(rule["ports"]) == 25
