"""verify --witness judges the target's live ruleset beside its probes.

Real kernels: each case is a hole or a block a sweep cannot see (a source-port accept, a
uid-keyed accept in output, another table dropping a declared port for sources the prober
is not among). Without the witness verify PASSes; with it, it FAILs and names the rule.
Pure: a model the probes contradict is INCONCLUSIVE, never a PASS or a FAIL.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from harden.analysis.crosscheck import StaticCheck, Targeted
from harden.analysis.engine import Decision
from harden.analysis.matrix import OTHER, Row
from harden.analysis.model import Rule
from harden.lab.netns import Namespace, connect
from harden.manifest.ports import PortRange
from harden.types import Verdict
from harden.verify.findings import Observed
from harden.verify.plan import Expect, Target
from harden.verify.report import Entry, Report, Status
from harden.verify.static import judge_static

from .labutil import HARDEN, counters_command, write

NsFactory = Callable[[str], Namespace]


def lab(
    netns: NsFactory, tmp_path: Path, extra: str = ""
) -> tuple[Namespace, Namespace, str, Path]:
    """A target with harden applied (tcp/80 from anywhere, the prober counted), and a prober."""
    prober, server = netns("xp"), netns("xs")
    n = 100 + uuid.uuid4().int % 100
    connect(server, prober, [f"198.18.{n}.1/24"], [f"198.18.{n}.2/24"])
    manifest = write(
        tmp_path,
        "m.yaml",
        "version: 1\npolicy: {ipv6: false}\nservices:\n"
        "  - {name: web, port: 80, proto: tcp}\n"
        f"{extra}verify:\n  probers: [198.18.{n}.0/24]\n",
    )
    apply = [*HARDEN, "apply", str(manifest), "--state-dir", str(tmp_path / "s"), "--no-persist"]
    apply += ["--root", str(tmp_path)]  # boot files: never the machine's own
    assert server.run(apply).returncode == 0
    return prober, server, f"198.18.{n}.1", manifest


def verify(
    prober: Namespace, server: Namespace, manifest: Path, target: str, *, witness: bool
) -> tuple[int, dict[str, Any]]:
    args = [*HARDEN, "verify", str(manifest), "--target", target, "--ports", "1-2000"]
    if witness:
        args += ["--witness", counters_command(server)]
    proc = prober.run([*args, "--format", "json"], check=False, timeout=300)
    assert proc.stdout.strip(), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def failures(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in report["ports"] if p["status"] == "fail"]


@pytest.mark.netns
def test_a_source_port_accept_fails_and_a_targeted_probe_confirms_it(
    netns: NsFactory, tmp_path: Path
) -> None:
    prober, server, target, manifest = lab(netns, tmp_path)
    server.run(["nft", "insert rule inet harden input tcp sport 53 accept"])
    code, report = verify(prober, server, manifest, target, witness=False)
    assert code == 0, failures(report)  # the sweep's random source port never sees it
    code, report = verify(prober, server, manifest, target, witness=True)
    assert code == 1
    [leak] = failures(report)
    assert leak["observed"] == "accepted by the live rules" and leak["proto"] == "tcp"
    assert leak["detail"].startswith("analysis: not declared, yet accepted: input ipv4 tcp")
    assert "sport 53 " in leak["detail"] and "(tcp sport == 53 accept)" in leak["detail"]
    # The kernel agrees: a SYN from port 53 to a closed port got a RST (nothing listens).
    assert "a probe from source port 53 to 1 was answered (closed)" in leak["detail"]


@pytest.mark.netns
def test_a_declared_port_dropped_for_sources_the_prober_is_not_among_fails(
    netns: NsFactory, tmp_path: Path
) -> None:
    prober, server, target, manifest = lab(netns, tmp_path)
    server.run(
        [
            "nft",
            "add table ip other; add chain ip other in "
            "{ type filter hook input priority 10; policy accept; }; "
            "add rule ip other in ip saddr 10.0.0.0/8 tcp dport 80 drop",
        ]
    )
    code, report = verify(prober, server, manifest, target, witness=True)
    assert code == 1
    [blocked] = failures(report)
    assert (blocked["port"], blocked["expected"]) == (80, "allowed")
    assert blocked["detail"].startswith("analysis: declared, yet dropped: input ipv4 tcp dport 80")
    assert "from 10.0.0.0/8" in blocked["detail"] and "ip other in #" in blocked["detail"]


@pytest.mark.netns
def test_a_uid_keyed_accept_in_output_fails_when_egress_is_restricted(
    netns: NsFactory, tmp_path: Path
) -> None:
    egress = "egress:\n  policy: drop\n  allow:\n    - {name: ntp, port: 123, proto: udp}\n"
    prober, server, target, manifest = lab(netns, tmp_path, egress)
    code, report = verify(prober, server, manifest, target, witness=True)
    assert code == 0, failures(report)
    server.run(["nft", "insert rule inet harden output meta skuid 65534 accept"])
    code, report = verify(prober, server, manifest, target, witness=True)
    assert code == 1
    leaks = failures(report)
    assert leaks and all(p["detail"].startswith("analysis: not declared") for p in leaks)
    assert all("output ipv4" in p["detail"] and "meta skuid" in p["detail"] for p in leaks)
    assert {p["expected"] for p in leaks} == {"blocked"}


# -- pure ---------------------------------------------------------------------------------

TARGET = Target(ip_address("198.18.7.1"), ip_address("198.18.7.2"))
RULE = Rule("ip", "other", "in", 7, ({"drop": None},))


def row(verdict: str, *, sports: tuple[PortRange, ...] = (PortRange(1, 65535),)) -> Row:
    return Row(
        hook="input",
        family=4,
        proto="tcp",
        dports=(PortRange(80, 80),),
        sports=sports,
        peers=(ip_network("0.0.0.0/1"), ip_network("128.0.0.0/1")),
        ifaces=(OTHER,),
        decision=Decision(verdict, (RULE,)),  # type: ignore[arg-type]
        expected=True,
    )


def declared(observed: Observed) -> Report:
    entry = Entry(
        target="198.18.7.1",
        family=4,
        proto="tcp",
        port=80,
        expected=Expect.ALLOWED,
        observed=observed,
        status=Status.OK if observed is Observed.OPEN else Status.FAIL,
        detail="",
    )
    return Report(targets=["198.18.7.1"], entries=[entry])


def test_a_drop_the_probes_saw_answered_is_a_model_disagreement() -> None:
    report = declared(Observed.OPEN)
    judge_static(report, StaticCheck(blocked=(row("drop"),)), [TARGET], [])
    [entry] = report.entries
    assert entry.status is Status.INCONCLUSIVE and entry.detail.startswith("model disagreement")
    assert report.verdict is Verdict.INCONCLUSIVE


def test_a_drop_keyed_on_source_ports_is_not_contradicted_by_a_sweep_probe() -> None:
    report = declared(Observed.OPEN)
    judge_static(
        report, StaticCheck(blocked=(row("drop", sports=(PortRange(1, 1023),)),)), [TARGET], []
    )
    assert [e.status for e in report.entries] == [Status.OK, Status.FAIL]
    assert report.entries[1].observed is Observed.DROPPED_BY_RULES


def test_cells_the_model_cannot_decide_are_left_to_the_probes() -> None:
    report = declared(Observed.OPEN)
    unknown = row("unknown")
    judge_static(report, StaticCheck(uncertain=(unknown,) * 12), [TARGET], [])
    assert report.verdict is Verdict.PASS
    assert sum(n.startswith("probe only: the model cannot decide") for n in report.notes) == 10
    assert "probe only: 2 more rows the model cannot decide" in report.notes
    report = declared(Observed.OPEN)
    judge_static(report, StaticCheck(unknown=("iptables-legacy rules",)), [TARGET], [])
    assert report.verdict is Verdict.PASS and "(probe only)" in report.notes[0]


def test_a_targeted_probe_that_got_nothing_is_said_to_disagree() -> None:
    leak = row("accept", sports=(PortRange(53, 53),))
    check = StaticCheck(leaks=(leak,))
    [probe] = check.targeted({4: ip_address("198.18.7.2")})
    assert (probe.sport, probe.dport) == (53, 80)
    assert check.targeted({4: ip_address("10.9.9.9")}) == [  # every source: still probed
        Targeted(4, "tcp", 80, 53, leak)
    ]
    report = declared(Observed.OPEN)
    judge_static(report, check, [TARGET], [(probe, None)])
    assert report.entries[-1].status is Status.FAIL
    assert report.entries[-1].detail.endswith("was silent (model disagreement)")


def test_the_targets_route_localnet_reaches_the_witness_report_as_a_note() -> None:
    """A target with route_localnet on: its counters' snapshot says so, and the report
    carries the note beside its verdict (which the note does not change)."""
    from harden.analysis.crosscheck import static_check
    from harden.manifest.parse import manifest_from_text
    from harden.policy.model import build_policy

    policy = build_policy(manifest_from_text("version: 1\nservices: []\n", "m.yaml"))
    snapshot = {"nftables": [], "addresses": [], "routes": [], "route_localnet": ["eth0"]}
    check = static_check(policy, snapshot)
    report = declared(Observed.OPEN)
    judge_static(report, check, [TARGET], [])
    assert [n for n in report.notes if "route_localnet is on (eth0)" in n], report.notes
    quiet = static_check(policy, {**snapshot, "route_localnet": []})
    assert quiet.notes == ()
