"""The lab end to end, and the real-world leaks it must catch (needs root)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from harden.lab.net import LabNet
from harden.lab.scenario import _with_lab_probers, _witness_command, run_lab, two_sided
from harden.manifest.safeyaml import load_yaml
from harden.verify.options import PortSelection

from .conftest import REPO, own_namespaces
from .labutil import HARDEN, failing, lab_for, statuses, verify_from, write

pytestmark = pytest.mark.netns

WEB = REPO / "rulesets" / "web-server.yaml"
FORGETS_SSH = """version: 1
services:
  - {name: web, ports: [http, https], proto: tcp}
  - {name: http3, port: 443, proto: udp}
"""


@pytest.mark.parametrize(("backend", "ports"), [("nftables", "all"), ("iptables", "1-5000")])
def test_lab_before_after(backend: str, ports: str) -> None:
    result = run_lab(WEB, backend, ports=PortSelection.parse(ports))
    assert result.ok and result.confirmed and not result.rolled_back
    before, *after = result.steps
    assert (before.name, before.report["verdict"]) == ("before", "fail")
    observed = {
        (p["proto"], p["observed"]) for p in before.report["ports"] if p["status"] == "fail"
    }
    assert ("tcp", "closed") in observed and ("udp", "closed") in observed  # RST and ICMP
    assert [(s.vantage, s.report["verdict"]) for s in after] == [
        ("outside", "pass"),
        ("allowed source", "pass"),
    ]
    if backend == "nftables":
        for step in after:
            # Two-sided proof: every probe to a closed port arrived and was dropped.
            assert step.dropped is not None
            for key, sent in step.report["sent"].items():
                family, proto, expect = key.split("/")
                if expect == "silent":
                    assert step.dropped[f"closed_{proto}_v{family}"] == sent
            assert two_sided(step)
    assert own_namespaces() == set()


def test_a_broken_change_is_rolled_back(tmp_path: Path) -> None:
    """lab WEB --apply (WEB without SSH): the change does what it says (22 is proven
    silent from the allowed host), and that takes SSH away from what WEB serves: the
    regression step fails, and the ruleset is rolled back."""
    broken = write(tmp_path, "broken.yaml", FORGETS_SSH)
    result = run_lab(WEB, ports=PortSelection.parse("1-1000"), apply_manifest=broken, before=False)
    assert not result.ok and result.rolled_back and not result.confirmed
    inside = next(s for s in result.steps if s.vantage == "allowed source")
    assert inside.passed and not failing(inside.report)  # 22 probed, silent as NEW says
    [regression] = [s for s in result.steps if s.name == "regression"]
    assert not regression.passed
    assert [t for t in regression.report["regressions"] if "tcp/22" in t], regression.report
    assert "FAIL: the change takes away what web-server.yaml serves" in result.to_text()


def _apply(lab: LabNet, manifest: Path, tmp: Path, *args: str) -> None:
    proc = lab.server.ns.run(
        [
            *HARDEN,
            "apply",
            str(manifest),
            "--state-dir",
            str(tmp / "st"),
            *args,
        ],
        check=False,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_redirect_cannot_launder_a_port(tmp_path: Path, backend: str) -> None:
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        # A local redirect from undeclared 8080 to declared 80 (Docker-style -p 8080:80):
        # the input hook sees port 80, so only the original port can tell them apart.
        lab.server.ns.run(
            [
                "nft",
                "add table ip nat; add chain ip nat pre "
                "{ type nat hook prerouting priority dstnat; }; "
                f"add rule ip nat pre tcp dport 8080 dnat to {lab.server.v4}:80",
            ]
        )
        code, report = verify_from(lab.outside, lab, WEB, tmp_path, "--ports", "1-10000")
        assert code == 1 and ("tcp", 8080, "open") in failing(report)  # the leak is real
        _apply(lab, WEB, tmp_path, "--backend", backend)
        code, report = verify_from(lab.outside, lab, WEB, tmp_path, "--ports", "1-10000")
        assert code == 0, failing(report)  # 8080 was probed and is silent
        assert statuses(report)[("tcp", 80)] == "ok"


def test_drift_is_caught_by_verify_and_diff(tmp_path: Path) -> None:
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        _apply(lab, WEB, tmp_path)
        lab.server.ns.run(["nft", "insert rule inet harden input tcp dport 31337 accept"])
        code, report = verify_from(lab.outside, lab, WEB, tmp_path, "--ports", "31000-32000")
        assert code == 1 and failing(report) == {("tcp", 31337, "closed")}
        diff = lab.server.ns.run([*HARDEN, "diff", str(WEB), "--format", "json"], check=False)
        assert diff.returncode == 1 and "31337" in json.loads(diff.stdout)["diff"]
        lab.server.ns.run(["nft", "delete table inet harden"])
        code, report = verify_from(lab.outside, lab, WEB, tmp_path, "--ports", "1-100")
        assert code == 1 and ("tcp", 21, "closed") in failing(report)
        diff = lab.server.ns.run([*HARDEN, "diff", str(WEB)], check=False)
        assert diff.returncode == 1


def test_iptables_for_ipv4_only_leaves_ipv6_open(tmp_path: Path) -> None:
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        _apply(lab, WEB, tmp_path, "--backend", "iptables")
        code, report = verify_from(lab.outside, lab, WEB, tmp_path, "--ports", "1-1000", v6=True)
        assert code == 0, failing(report)
        # What a v4-only tool leaves behind: nothing filters IPv6.
        lab.server.ns.run(["ip6tables", "-D", "INPUT", "-j", "HARDEN-INPUT"])
        code, report = verify_from(lab.outside, lab, WEB, tmp_path, "--ports", "1-1000", v6=True)
        assert code == 1
        bad = {p["target"] for p in report["ports"] if p["status"] == "fail"}
        assert bad == {str(lab.server.v6)}


def test_reject_host_in_the_lab() -> None:
    result = run_lab(REPO / "rulesets" / "reject-host.yaml", ports=PortSelection.parse("1-3000"))
    assert result.ok, [s.report["ports"][:5] for s in result.steps]
    after = [s for s in result.steps if s.name == "after"]
    rejected = {
        (c["family"], c["proto"])
        for s in after
        for c in s.report["conforming"]
        if c["observed"] == "rejected"
    }
    assert {("ipv4", "tcp"), ("ipv4", "udp"), ("ipv6", "tcp"), ("ipv6", "udp")} <= rejected


EGRESS = REPO / "rulesets" / "egress-host.yaml"


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_lab_proves_egress_before_and_after(backend: str) -> None:
    """The unfirewalled server lets everything out; after the apply only ntp reaches the
    outside host (no other egress destination covers it), dns reaches the resolvers and
    the mirror its web ports (sinks inside each declared destination), and the ruleset
    is confirmed."""
    proc = subprocess.run(
        [*HARDEN, "lab", EGRESS, "--backend", backend, "--ports", "1-1000", "--format", "json"],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert len(proc.stdout) < 1_000_000  # ports as ranges: not a line per leaking port
    result = json.loads(proc.stdout)
    assert result["schema"] == "harden.lab/1"
    assert result["ok"] and result["confirmed"] and not result["rolled_back"]
    steps = {(s["step"], s["vantage"]): s for s in result["steps"]}
    before, after = (
        steps["egress before", "server to sink"],
        steps["egress after", "server to sink"],
    )
    assert (before["verdict"], before["expected"]) == ("fail", "fail")
    assert (after["verdict"], after["expected"]) == ("pass", "pass")
    sinks = after["report"]["targets"]
    # The outside host's IPv4 and IPv6 addresses (ipv6: true), and one inside each
    # declared destination: the resolvers (both families) and the package mirror.
    assert sinks == ["198.19.254.2", "fdff:18::2", "198.51.100.53", "2001:db8::53", "203.0.113.1"]
    assert result["not_tested"] == []
    ranges = before["report"]["port_ranges"]
    leaks = {(p["target"], p["proto"]) for p in ranges if p["status"] == "fail"}
    assert leaks == {(sink, proto) for sink in sinks for proto in ("tcp", "udp")}
    leaked = {
        p["target"]: p["ports"] for p in ranges if p["status"] == "fail" and p["proto"] == "tcp"
    }
    assert leaked["198.19.254.2"] == leaked["fdff:18::2"] == "1-1000", leaked  # nothing allowed
    assert leaked["203.0.113.1"] == "1-79,81-442,444-1000", leaked  # the mirror's 80, 443 allowed
    arrived = {
        (p["target"], p["proto"], p["ports"])
        for p in after["report"]["port_ranges"]
        if p["observed"] == "arrived"
    }
    assert arrived == {(sink, "udp", "123") for sink in sinks} | {
        (dns, proto, "53") for dns in ("198.51.100.53", "2001:db8::53") for proto in ("tcp", "udp")
    } | {("203.0.113.1", "tcp", "80,443")}
    assert [s["step"] for s in result["steps"]] == [
        "before",
        "egress before",
        "after",
        "after",
        "egress after",
    ]


def test_a_change_that_adds_is_confirmed_with_its_additions_proven(tmp_path: Path) -> None:
    """lab EGRESS --apply (EGRESS plus an inbound port and an egress port): an intended
    widening. What it adds answers (the stand-in serves the new port; the egress proof
    sends to the new one), nothing of EGRESS is taken away: confirmed."""
    data = load_yaml(EGRESS.read_text(), str(EGRESS))
    data["services"].append({"name": "metrics", "port": 9100, "proto": "tcp"})
    data["egress"]["allow"].append(
        {"name": "smtp", "destinations": ["203.0.113.0/24"], "port": 587, "proto": "tcp"}
    )
    wider = write(tmp_path, "wider.yaml", yaml.safe_dump(data))
    result = run_lab(
        EGRESS, ports=PortSelection.parse("1-1000,9100"), apply_manifest=wider, before=False
    )
    assert result.ok and result.confirmed, result.to_text()
    outside = next(s for s in result.steps if s.vantage == "outside")
    assert statuses(outside.report)[("tcp", 9100)] == "ok"
    [egress] = [s for s in result.steps if s.name == "egress after"]
    arrived = {
        (p["target"], p["port"]) for p in egress.report["ports"] if p["observed"] == "arrived"
    }
    assert any(port == 587 and target.startswith("203.0.113.") for target, port in arrived)
    [regression] = [s for s in result.steps if s.name == "regression"]
    assert regression.passed and regression.report["regressions"] == []
    assert len(regression.report["additions"]) == 2, regression.report["additions"]
    assert own_namespaces() == set()


def test_a_kubernetes_node_is_lab_tested_with_its_nodeports_sampled() -> None:
    """k8s-node.yaml declares 2,768 NodePorts on each protocol: more than the stand-in
    service's sockets. The lab samples them (ends included) instead of refusing, proves
    the rest reachable through the firewall, and says what it did not test. Its two sets
    of source networks (ssh's, kubelet's) each get a host inside them."""
    proc = subprocess.run(
        [*HARDEN, "lab", str(REPO / "rulesets" / "k8s-node.yaml"), "--ports", "declared",
         "--format", "json"],
        capture_output=True, text=True, check=False, cwd="/", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    result = json.loads(proc.stdout)
    assert result["ok"] and result["confirmed"]
    sampled = [n for n in result["not_tested"] if "stand-in service listens on" in n]
    assert len(sampled) == 2 and all("of the 27" in n for n in sampled), result["not_tested"]
    # ssh's sources and kubelet's (the control plane) are two sets: a host inside each.
    vantages = [s["vantage"] for s in result["steps"] if s["step"] == "after"]
    assert vantages == ["outside", "allowed source", "allowed source 2"], vantages
    assert not any(n.startswith("IPv4 sources:") for n in result["not_tested"])


def test_a_ruleset_that_drops_a_declared_udp_port_is_caught_by_the_witness(
    tmp_path: Path,
) -> None:
    """WEB verified while the live rules are WEB without http3 (an older ruleset):
    udp/443's probes meet silence either way (an open port that answers nothing looks
    dropped), so the outside alone passes it. The target's counters show them reaching
    harden's closed path: a FAIL. (The static analysis of the target's ruleset names
    the drop too; the counters prove it on their own, where the ruleset cannot be read.)"""
    without = write(
        tmp_path,
        "no-http3.yaml",
        WEB.read_text().replace("  - {name: http3, port: 443, proto: udp}\n", ""),
    )
    assert "http3" not in without.read_text()
    with lab_for(WEB) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        _apply(lab, _with_lab_probers(without, lab, tmp_path), tmp_path)
        code, report = verify_from(
            lab.outside, lab, WEB, tmp_path, "--ports", "440-450",
            "--witness", _witness_command(lab.server),
        )  # fmt: skip
    assert code == 1, report["verdict"]
    details = report.get("notes", []) + [p.get("detail", "") for p in report["ports"]]
    assert any("to declared ports reached harden's closed path" in d for d in details), details


def test_lab_writes_a_junit_report_for_ci(tmp_path: Path) -> None:
    """lab --format junit -o FILE: a timed testcase per step and one for the confirm, the
    text summary still on standard output."""
    from xml.etree import ElementTree as ET

    out = tmp_path / "lab.xml"
    proc = subprocess.run(
        [*HARDEN, "lab", str(WEB), "--ports", "1-100,440-450", "--format", "junit", "-o", str(out)],
        capture_output=True, text=True, check=False, cwd="/", timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert "PASS: before leaked, after verified, ruleset confirmed" in proc.stdout
    suite = ET.parse(out).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    names = [(c.get("name"), float(c.get("time") or 0)) for c in suite.iter("testcase")]
    assert [n for n, _ in names] == [
        "before from outside", "after from outside", "after from allowed source", "confirm",
    ]  # fmt: skip
    assert all(t > 0 for n, t in names if n != "confirm"), names
    # The Markdown table: tests/golden_output/lab.md.


def test_one_port_from_disjoint_sources_is_proven_from_each(tmp_path: Path) -> None:
    """ssh from one network, ssh-admin (rate-limited) on the same port from a disjoint
    one: two rules, each proven from a host inside its own sources (the first lab host
    stands in for ssh-admin's IPv6 network already; its IPv4 network still gets one)."""
    manifest = write(
        tmp_path,
        "two.yaml",
        "version: 1\nservices:\n"
        "  - {name: ssh, port: 22, proto: tcp, sources: [198.18.230.0/25]}\n"
        "  - {name: ssh-admin, port: 22, proto: tcp, sources: [198.18.230.128/26, "
        "'fd00:5::/64'], limit: 10/minute}\n",
    )
    result = run_lab(manifest, ports=PortSelection.parse("1-100"), before=False)
    assert result.ok, result.to_text()
    inside = {s.vantage: statuses(s.report) for s in result.steps if s.name == "after"}
    assert inside["allowed source"][("tcp", 22)] == "ok"
    assert inside["allowed source 2"][("tcp", 22)] == "ok"
    assert not [n for n in result.not_tested if n.startswith("IPv4 sources")]
