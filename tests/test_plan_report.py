"""The pure halves of verify: the probe plan and the report built from findings."""

from __future__ import annotations

import json
from ipaddress import ip_address
from xml.etree import ElementTree as ET

import pytest

from harden.errors import OptionError
from harden.files import parse_manifest
from harden.manifest.ports import compress, expand
from harden.outputs.jsondoc import verify_json
from harden.outputs.junit import verify_junit
from harden.outputs.table import verify_text
from harden.policy.model import build_policy
from harden.types import Address, sent_counts
from harden.verify.classify import Reason, Reply
from harden.verify.findings import Findings, Observed
from harden.verify.options import PortSelection
from harden.verify.plan import Expect, Target, plan_probes
from harden.verify.report import Status, evaluate
from harden.verify.witness import Reading, WitnessRun, compare

MANIFEST = """
version: 1
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24]}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: dns, port: 53, proto: udp}
"""
T = ip_address("198.19.254.1")
STRANGER = Target(T, ip_address("198.19.254.2"))
INSIDER = Target(T, ip_address("198.18.1.7"))


def test_source_decides_what_is_allowed() -> None:
    policy = build_policy(parse_manifest(MANIFEST))
    plan = plan_probes(policy, [STRANGER, INSIDER], "all")
    out = plan.expectation(STRANGER, "tcp")
    ins = plan.expectation(INSIDER, "tcp")
    assert len(out) == len(ins) == 65535
    assert out[22] is Expect.SILENT and ins[22] is Expect.ALLOWED
    assert out[80] is ins[80] is Expect.ALLOWED
    assert out[81] is Expect.SILENT
    assert plan.expectation(STRANGER, "udp")[53] is Expect.ALLOWED


def test_reject_mode_and_ipv6_off() -> None:
    policy = build_policy(
        parse_manifest(
            "version: 1\npolicy: {closed: reject, ipv6: false}\n"
            "services: [{name: web, port: 80, proto: tcp}]"
        )
    )
    six = Target(ip_address("fdff:18::1"), ip_address("fdff:18::2"))
    plan = plan_probes(policy, [STRANGER, six], (79, 80))
    assert plan.expectation(STRANGER, "tcp") == {79: Expect.REJECTED, 80: Expect.ALLOWED}
    assert plan.expectation(six, "tcp") == {79: Expect.REJECTED, 80: Expect.REJECTED}
    assert plan.echo == {T: True, six.address: False}


def test_port_selection() -> None:
    assert PortSelection.parse("declared").plan == "declared"
    assert PortSelection.parse("1-3, 8080").plan == (1, 2, 3, 8080)
    with pytest.raises(OptionError, match=r"^ports: "):
        PortSelection.parse("0-5")
    policy = build_policy(parse_manifest(MANIFEST))
    plan = plan_probes(policy, [STRANGER], "declared")
    assert list(plan.ports(STRANGER, "tcp")) == [22, 80, 443]


def test_compress_and_expand_are_inverse() -> None:
    assert [str(r) for r in compress([1, 2, 3, 5, 7, 8])] == ["1-3", "5", "7-8"]
    assert compress([]) == ()
    assert list(expand(compress([1, 2, 3, 5, 7, 8]))) == [1, 2, 3, 5, 7, 8]


def findings_for(replies: dict[int, Reply], udp: dict[int, Reply] | None = None) -> Findings:
    f = Findings()
    f.replies[(STRANGER, "tcp")] = replies
    f.replies[(STRANGER, "udp")] = udp or {}
    f.echo[T] = True
    f.alive[T] = "echo reply"
    return f


def syn_ack(port: int) -> Reply:
    return Reply(4, "tcp", port, 40000, Reason.SYN_ACK, ack=1)


def test_pass_when_declared_open_and_rest_silent() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (22, 80, 443, 53, 99))
    udp = {53: Reply(4, "udp", 53, 41000, Reason.UDP_REPLY)}
    report = evaluate(plan, findings_for({80: syn_ack(80), 443: syn_ack(443)}, udp))
    assert report.verdict == "pass" and report.exit_status == 0
    data = verify_json(report)
    assert data["schema"] == "harden.verify/2"
    assert {(p["proto"], p["port"], p["status"]) for p in data["ports"]} == {
        ("tcp", 80, "ok"),
        ("tcp", 443, "ok"),
        ("udp", 53, "ok"),
    }
    silent = {(s["proto"], tuple(s["ranges"])) for s in data["conforming"]}
    assert silent == {("tcp", ("22", "53", "99")), ("udp", ("22", "80", "99", "443"))}
    json.dumps(data)
    assert "PASS" in verify_text(report)


def test_leaks_fail_and_name_the_port() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (22, 80, 443, 99))
    rst = Reply(4, "tcp", 99, 40000, Reason.RST, ack=1)
    icmp = Reply(4, "udp", 22, 41000, Reason.PORT_UNREACHABLE, 3)
    report = evaluate(plan, findings_for({80: syn_ack(80), 443: syn_ack(443), 99: rst}, {22: icmp}))
    assert report.verdict == "fail" and report.exit_status == 1
    failed = {(e.proto, e.port, e.observed) for e in report.failures}
    assert failed == {("tcp", 99, "closed"), ("udp", 22, "closed")}
    suite = ET.fromstring(verify_junit(report))
    failures = suite.findall(".//failure")
    assert len(failures) == 2
    assert "tcp/99" in "".join(f.text or "" for f in failures)


def test_declared_tcp_silent_fails_but_udp_silent_only_warns() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (53, 80, 443))
    report = evaluate(plan, findings_for({443: syn_ack(443)}))
    statuses = {(e.proto, e.port): (e.status.value, e.observed) for e in report.entries}
    assert statuses[("tcp", 80)] == ("fail", "silent")
    assert statuses[("udp", 53)] == ("warn", "open|filtered")


def test_reject_mode_needs_at_least_one_admin_prohibited() -> None:
    policy = build_policy(parse_manifest("version: 1\npolicy: {closed: reject}\n"))
    plan = plan_probes(policy, [STRANGER], (1, 2, 3))
    silent = evaluate(plan, findings_for({}))
    assert silent.verdict == "fail"
    assert any(e.port is None and "no closed port answered" in e.detail for e in silent.failures)
    prohibited = Reply(4, "tcp", 2, 40000, Reason.PROHIBITED, 13)
    udp = {1: Reply(4, "udp", 1, 41000, Reason.PROHIBITED, 13)}
    ok = evaluate(plan, findings_for({2: prohibited}, udp))
    # TCP: a port that let the SYN through would have answered with an RST or SYN-ACK,
    # which are not rate-limited, so the silent ports are proven. UDP: a leak's
    # port-unreachable is throttled like the reject, so silence proves nothing there.
    assert {(s.proto, s.observed) for s in ok.spans} == {
        ("tcp", "rejected"),
        ("tcp", "silent"),
        ("udp", "rejected"),
    }
    assert {(s.proto, s.observed) for s in ok.unproven} == {("udp", "silent-unproven")}
    assert ok.verdict == "inconclusive" and ok.exit_status == 5
    assert "INCONCLUSIVE" in verify_text(ok) and 'errors="1"' in verify_junit(ok)
    # With every UDP port answered, every port is proven.
    every = {p: Reply(4, "udp", p, 41000, Reason.PROHIBITED, 13) for p in (1, 2, 3)}
    assert evaluate(plan, findings_for({2: prohibited}, every)).verdict == "pass"


def test_drop_mode_fails_on_admin_prohibited() -> None:
    plan = plan_probes(build_policy(parse_manifest("version: 1\n")), [STRANGER], (5,))
    prohibited = Reply(4, "tcp", 5, 40000, Reason.PROHIBITED, 13)
    report = evaluate(plan, findings_for({5: prohibited}))
    assert [(e.port, e.observed) for e in report.failures] == [(5, "rejected")]


def test_unexpected_or_missing_ping_fails() -> None:
    plan = plan_probes(
        build_policy(parse_manifest("version: 1\npolicy: {icmp: {echo: false}}\n")),
        [STRANGER],
        (5,),
    )
    report = evaluate(plan, findings_for({}))  # findings say ping was answered
    assert [(e.proto, e.observed) for e in report.failures] == [("icmp", "echo-reply")]


def test_a_target_that_never_answered_is_inconclusive_never_pass() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (99, 100))
    nothing = Findings()
    nothing.replies[(STRANGER, "tcp")] = {}
    nothing.replies[(STRANGER, "udp")] = {}
    report = evaluate(plan, nothing)
    assert report.verdict == "inconclusive" and report.exit_status == 5
    assert verify_json(report)["verdict"] == "inconclusive"
    assert "INCONCLUSIVE" in verify_text(report)
    assert 'error message="inconclusive"' in verify_junit(report)
    # A leak seen on another target is still a FAIL.
    other = Target(ip_address("198.19.254.9"), STRANGER.source)
    plan2 = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER, other], (99,))
    nothing.replies[(other, "tcp")] = {99: Reply(4, "tcp", 99, 40000, Reason.RST, ack=1)}
    nothing.replies[(other, "udp")] = {}
    nothing.alive[other.address] = "tcp/99 answered rst"
    assert evaluate(plan2, nothing).verdict == "fail"


def test_budget_spent_ports_are_unproven_not_conforming() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (7, 8, 9))
    f = findings_for({}, {7: Reply(4, "udp", 7, 41000, Reason.PORT_UNREACHABLE, 3)})
    f.unproven[(STRANGER, "udp")] = Observed.UNPROBED
    data = verify_json(evaluate(plan, f))
    assert data["verdict"] == "fail"
    assert not any(s["proto"] == "udp" for s in data["conforming"])
    assert [(s["proto"], s["observed"], s["ranges"]) for s in data["unproven"]] == [
        ("udp", "unprobed", ["8-9"])
    ]
    assert data["counts"]["unproven"] == 2


def test_declared_ports_outside_a_ports_subset_are_listed_as_skipped() -> None:
    text = MANIFEST + "  - {name: wg, port: 51820, proto: udp}\n"
    plan = plan_probes(build_policy(parse_manifest(text)), [STRANGER], tuple(range(1, 1025)))
    report = evaluate(plan, findings_for({}))
    skipped = verify_json(report)["skipped"]
    assert {"proto": "udp", "ranges": ["51820"]}.items() <= skipped[0].items()
    assert any("outside --ports" in n for n in report.notes)


# -- the verdict rule and the witness ------------------------------------------------------


def witnessed(**counts: int) -> WitnessRun:
    """What the witness on the host at T counted."""
    names = [f"witness_{k}_{p}_v4" for k in ("in", "closed", "passed") for p in ("tcp", "udp")]
    return WitnessRun({name: counts.get(name, 0) for name in names}, addresses=frozenset({T}))


def send(findings: Findings, counts: dict[str, int], to: Address = T) -> None:
    """Record probes sent to ``to`` (by kind), as the engine counts them."""
    typed = sent_counts(counts)
    for key, n in typed.items():
        findings.sent[key] = findings.sent.get(key, 0) + n
        findings.sent_to.setdefault(to, {})[key] = n


def test_the_witness_proves_reject_mode_udp_silence() -> None:
    policy = build_policy(parse_manifest("version: 1\npolicy: {closed: reject}\n"))
    plan = plan_probes(policy, [STRANGER], (1, 2, 3))
    prohibited = {1: Reply(4, "udp", 1, 41000, Reason.PROHIBITED, 13)}
    findings = findings_for({2: Reply(4, "tcp", 2, 40000, Reason.PROHIBITED, 13)}, prohibited)
    send(findings, {"4/tcp/rejected": 7, "4/udp/rejected": 7})
    findings.premises[(STRANGER, "udp")] = ["the target's ICMP rate limit ≤ 1000 ms (x)"]
    assert evaluate(plan, findings).verdict == "inconclusive"
    findings.witness = witnessed(
        witness_in_tcp_v4=7, witness_closed_tcp_v4=7, witness_in_udp_v4=7, witness_closed_udp_v4=7
    )
    report = evaluate(plan, findings)
    assert report.verdict == "pass" and report.unproven == [] and report.assumptions == []
    assert ("udp", "silent, counted by the witness") in {
        (s.proto, s.observed) for s in report.spans
    }


def test_declared_probes_blocked_on_the_host_fail_the_silent_declared_port() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (53, 99))
    findings = findings_for({}, {})  # udp/53 silent: "open|filtered" from outside
    send(findings, {"4/udp/allowed": 7, "4/udp/silent": 3, "4/tcp/silent": 6})
    findings.witness = witnessed(
        witness_in_udp_v4=10, witness_closed_udp_v4=3, witness_in_tcp_v4=6, witness_closed_tcp_v4=6
    )
    report = evaluate(plan, findings)
    assert report.verdict == "fail"
    [entry] = report.failures
    assert (entry.proto, entry.port, entry.observed) == ("udp", 53, "blocked on the host")
    assert entry.detail.startswith("declared udp/53 is blocked by another firewall on the host")


def test_counters_that_went_back_make_the_run_inconclusive_not_judged() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (99,))
    findings = findings_for({}, {})
    send(findings, {"4/udp/silent": 3})
    here = frozenset({T})
    before = Reading({"witness_in_udp_v4": 900, "witness_closed_udp_v4": 900}, addresses=here)
    after = Reading({"witness_in_udp_v4": 2, "witness_closed_udp_v4": 0}, addresses=here)
    findings.witness = compare(before, after)
    report = evaluate(plan, findings)
    assert report.verdict == "inconclusive" and not report.failures


def test_a_host_seen_only_at_the_link_layer_is_an_assumption_the_witness_removes() -> None:
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (99,))
    findings = findings_for({}, {})
    findings.alive[T] = "alive at the link layer only (ARP reply from 02:00:00:00:00:01 on eth0)"
    findings.link_only.add(T)
    report = evaluate(plan, findings)
    assert report.verdict == "pass"
    assert report.assumptions == [
        f"the link-layer answer for {T} came from the target, not from a proxy-ARP router "
        "answering for an empty address"
    ]
    send(findings, {"4/tcp/silent": 3})
    findings.witness = witnessed(witness_in_tcp_v4=3, witness_closed_tcp_v4=3)
    report = evaluate(plan, findings)
    assert report.assumptions == [] and report.alive[str(T)] == "its witness counted 3 probes"


def test_a_reject_from_another_address_is_neither_a_leak_nor_a_proof() -> None:
    """An admin-prohibited quoting our probe, from an address that is not the target's:
    a filter in front of the host may have sent it, and the probe may never have arrived.
    A port-unreachable from another address is the host's own UDP stack: a leak."""
    router = ip_address("198.19.254.254")
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER], (99, 100))
    udp = {
        99: Reply(4, "udp", 99, 41000, Reason.PROHIBITED, 13, responder=router),
        100: Reply(4, "udp", 100, 41000, Reason.PORT_UNREACHABLE, 3, responder=router),
    }
    report = evaluate(plan, findings_for({}, udp))
    assert [(e.port, e.observed) for e in report.failures] == [(100, "closed")]
    assert "from 198.19.254.254" in report.failures[0].detail
    [filtered] = [s for s in report.unproven if s.proto == "udp"]
    assert filtered.ranges == ("99",)
    assert str(filtered.observed).startswith("rejected by 198.19.254.254")
    only_filtered = evaluate(plan, findings_for({}, {99: udp[99]}))
    assert only_filtered.verdict == "inconclusive"


def test_the_service_column_names_the_service_of_that_port() -> None:
    """dns, web and https-alt share one tcp group; each port still names its own service."""
    manifest = """version: 1
services:
  - {name: dns, port: 53, proto: [tcp, udp]}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: alt, ports: ["8000-8001", 443], proto: udp}
"""
    policy = build_policy(parse_manifest(manifest))
    target = Target(ip_address("198.18.0.1"), ip_address("198.18.0.2"))
    plan = plan_probes(policy, [target], "declared")
    services = {(g.proto, p): s for g in plan.groups for p, s in g.services.items()}
    assert services[("tcp", 53)] == "dns" and services[("tcp", 80)] == "web"
    assert services[("tcp", 443)] == "web" and services[("udp", 53)] == "dns"
    assert services[("udp", 8001)] == "alt" and services[("udp", 443)] == "alt"


def test_a_witness_vouches_only_for_its_own_hosts_addresses() -> None:
    """verify --target T --target U --witness <T's counters>, and nothing answers at U (a
    router drops what is sent to it): T's counts prove T's silence and life, not U's."""
    u = ip_address("198.19.254.3")
    other = Target(u, STRANGER.source)
    plan = plan_probes(build_policy(parse_manifest(MANIFEST)), [STRANGER, other], (99,))
    findings = findings_for({}, {})
    findings.echo.clear()
    findings.alive.clear()
    findings.replies[(other, "tcp")] = {}
    findings.replies[(other, "udp")] = {}
    send(findings, {"4/tcp/silent": 3, "4/udp/silent": 3})
    send(findings, {"4/tcp/silent": 3, "4/udp/silent": 3}, to=u)
    findings.witness = witnessed(
        witness_in_tcp_v4=3, witness_closed_tcp_v4=3, witness_in_udp_v4=3, witness_closed_udp_v4=3
    )
    report = evaluate(plan, findings)
    assert report.alive == {str(T): "its witness counted 6 probes"}
    assert report.verdict == "inconclusive"
    [nobody] = [e for e in report.entries if e.target == str(u) and e.proto == "ip"]
    assert nobody.status is Status.INCONCLUSIVE
    assert any(n.startswith(f"witness: proves nothing about {u}") for n in report.notes)
    # The counts of T alone match what was sent to T: no shortfall from U's probes.
    assert not [
        e
        for e in report.entries
        if e.target == str(T) and e.status in (Status.FAIL, Status.INCONCLUSIVE)
    ]
    # A witness that names no addresses (an older harden on the target) vouches for none.
    findings.witness = WitnessRun(findings.witness.counted)
    report = evaluate(plan, findings)
    assert report.alive == {} and any("older than this one" in n for n in report.notes)
