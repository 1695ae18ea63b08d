"""The witness: the target's own counters settle what outside probing cannot.

Pure judgement first, then the real thing in namespaces (needs root): a silent UDP
listener behind an inserted accept rule, and an upstream filter that drops every probe.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from harden.apply.hostinfo import icmp_settings
from harden.lab.netns import Namespace, connect
from harden.types import Verdict, sent_counts
from harden.verify.witness import TCP_SLACK, Reading, WitnessRun, compare, judge, parse_reading

from .conftest import REPO
from .labutil import HARDEN, counters_command, routed, write

NsFactory = Callable[[str], Namespace]


# -- pure -------------------------------------------------------------------------------


def counted(**values: int) -> WitnessRun:
    base = {f"witness_{k}_{p}_v4": 0 for k in ("in", "closed") for p in ("tcp", "udp")}
    base.update(values)
    return WitnessRun(base)


def test_every_probe_arrived_and_was_dropped_or_declared() -> None:
    sent = sent_counts({"4/udp/silent": 100, "4/udp/allowed": 3})
    [verdict] = judge(sent, counted(witness_in_udp_v4=103, witness_closed_udp_v4=100))
    assert verdict.verdict is Verdict.PASS and "103 of 103" in verdict.detail


def test_probes_accepted_past_harden_are_a_failure() -> None:
    sent = sent_counts({"4/udp/silent": 100, "4/udp/allowed": 3})
    [verdict] = judge(sent, counted(witness_in_udp_v4=103, witness_closed_udp_v4=97))
    assert verdict.verdict is Verdict.FAIL and verdict.detail.startswith("3 IPv4 udp probe(s)")


def test_declared_udp_probes_dropped_by_hardens_own_closed_path_are_a_failure() -> None:
    """A declared UDP port whose probes all met silence: from outside, an open port that
    answers nothing. The counters say otherwise: more reached harden's closed path than
    were sent to closed ports, so the live rules drop a declared port (an older ruleset,
    or 'lab OLD --apply NEW' where NEW removed the service)."""
    sent = sent_counts({"4/udp/silent": 100, "4/udp/allowed": 3})
    [verdict] = judge(sent, counted(witness_in_udp_v4=103, witness_closed_udp_v4=103))
    assert verdict.verdict is Verdict.FAIL
    assert verdict.detail.startswith("3 IPv4 udp probe(s) to declared ports reached harden's")


def test_nothing_arrived_is_inconclusive_and_loss_is_only_a_note() -> None:
    sent = sent_counts({"4/tcp/silent": 50})
    assert judge(sent, counted())[0].verdict is Verdict.INCONCLUSIVE
    [lossy] = judge(sent, counted(witness_in_tcp_v4=48, witness_closed_tcp_v4=48))
    assert lossy.verdict is Verdict.PASS and "2 did not arrive" in lossy.detail


def test_a_shortfall_beyond_loss_is_inconclusive_not_a_note() -> None:
    """Half the probes never arrived: whatever dropped them on the way, their silence is
    not the host's firewall's doing, so the witness cannot vouch for it."""
    sent = sent_counts({"4/tcp/silent": 1000, "4/udp/silent": 1000})
    observed = counted(
        witness_in_tcp_v4=500,
        witness_closed_tcp_v4=500,
        witness_in_udp_v4=981,
        witness_closed_udp_v4=981,
    )
    tcp, udp = judge(sent, observed)
    assert tcp.verdict is Verdict.INCONCLUSIVE and "only 500 of the 1000" in tcp.detail
    assert udp.verdict is Verdict.PASS and "19 did not arrive" in udp.detail  # within 2 %


def test_the_witness_commands_own_ssh_connection_is_tolerated() -> None:
    sent = sent_counts({"4/tcp/silent": 50})
    ok = counted(witness_in_tcp_v4=50 + TCP_SLACK, witness_closed_tcp_v4=50)
    assert judge(sent, ok)[0].verdict is Verdict.PASS
    bad = counted(witness_in_tcp_v4=51 + TCP_SLACK, witness_closed_tcp_v4=50)
    assert judge(sent, bad)[0].verdict is Verdict.FAIL


def test_a_family_without_probers_is_unknown_not_passed() -> None:
    assert judge(sent_counts({"6/udp/silent": 9}), counted())[0].verdict is None


def test_drops_by_another_firewall_are_not_blamed_as_accepted() -> None:
    """Another table drops 60 of the closed-port probes before harden sees them: the
    passed counter shows they were not let through, so the host conforms."""
    sent = sent_counts({"4/udp/silent": 100, "4/udp/allowed": 3})
    observed = counted(witness_in_udp_v4=103, witness_closed_udp_v4=40, witness_passed_udp_v4=3)
    [verdict] = judge(sent, observed)
    assert verdict.verdict is Verdict.PASS, verdict.detail
    assert "60 were dropped by another firewall" in verdict.detail


def test_probes_let_through_past_every_firewall_fail() -> None:
    sent = sent_counts({"4/udp/silent": 100, "4/udp/allowed": 3})
    observed = counted(witness_in_udp_v4=103, witness_closed_udp_v4=97, witness_passed_udp_v4=6)
    [verdict] = judge(sent, observed)
    assert verdict.verdict is Verdict.FAIL and verdict.detail.startswith("3 IPv4 udp probe(s)")


def test_declared_probes_dropped_by_another_firewall_fail() -> None:
    """ufw drops the declared DNS port: its 7 probes arrived and none passed."""
    sent = sent_counts({"4/udp/silent": 100, "4/udp/allowed": 7})
    observed = counted(witness_in_udp_v4=107, witness_closed_udp_v4=100, witness_passed_udp_v4=0)
    [verdict] = judge(sent, observed)
    assert verdict.verdict is Verdict.FAIL and verdict.blocked_declared == 7
    # Missing arrivals are a shortfall (inconclusive), never probes that arrived and did
    # not pass (a failure).
    lossy = counted(witness_in_udp_v4=100, witness_closed_udp_v4=100, witness_passed_udp_v4=0)
    assert judge(sent, lossy)[0].verdict is Verdict.INCONCLUSIVE


def test_reset_or_replaced_counters_prove_nothing() -> None:
    before = Reading({"witness_in_udp_v4": 2_000_000, "witness_closed_udp_v4": 2_000_000}, "h 1")
    after = Reading({"witness_in_udp_v4": 99_514, "witness_closed_udp_v4": 99_000}, "h 1")
    [verdict] = judge(sent_counts({"4/udp/silent": 196_603}), compare(before, after))
    assert verdict.verdict is Verdict.INCONCLUSIVE and "went back" in verdict.detail
    replaced = Reading({"witness_in_udp_v4": 3_000_000, "witness_closed_udp_v4": 3_000_000}, "h 9")
    [verdict] = judge(sent_counts({"4/udp/silent": 196_603}), compare(before, replaced))
    assert verdict.verdict is Verdict.INCONCLUSIVE and "changed during the run" in verdict.detail
    assert compare(Reading({"a": 5}), Reading({"a": 7, "b": 1})).counted == {"a": 2, "b": 1}


def test_readings_carry_the_targets_icmp_settings() -> None:
    reading = parse_reading(
        {
            "schema": "harden.counters/2",
            "counters": {"witness_in_udp_v4": 3},
            "identity": "inet harden handle 4",
            "icmp": {
                "ipv4": {"ratelimit_ms": 100000, "limits_unreachable": True},
                "ipv6": {"ratelimit_ms": 100, "limits_unreachable": False},
            },
        }
    )
    assert reading.icmp[4].interval_ms == 100000 and reading.icmp[6].interval_ms == 0
    assert parse_reading({"counters": {"x": 1}}).icmp == {}  # harden.counters/1
    assert reading.addresses is None  # harden.counters/2 names no addresses: vouches for none
    three = parse_reading(
        {"schema": "harden.counters/3", "counters": {}, "addresses": ["198.18.0.1", "fd00::1"]}
    )
    assert three.addresses == frozenset({ip_address("198.18.0.1"), ip_address("fd00:0::1")})
    observed = compare(three, three)
    assert observed.covers(ip_address("fd00::1")) and not observed.covers(ip_address("fd00::2"))
    with pytest.raises(ValueError):
        parse_reading({"schema": "other", "counters": {}})


def test_icmp_settings_read_from_proc(tmp_path: Path) -> None:
    for name, value in {
        "ipv4/icmp_ratelimit": "250",
        "ipv4/icmp_ratemask": str(6168 & ~(1 << 3)),  # unreachable not limited
        "ipv4/icmp_msgs_per_sec": "1000",
        "ipv6/icmp/ratelimit": "100",
        "ipv6/icmp/ratemask": "0-1,3-127",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(value + "\n")
    found = icmp_settings(tmp_path)
    assert found["ipv4"]["ratelimit_ms"] == 250 and not found["ipv4"]["limits_unreachable"]
    assert found["ipv6"] == {
        "ratelimit_ms": 100,
        "limits_unreachable": True,
        "msgs_per_sec": 1000,
        "msgs_burst": None,
    }


# -- real kernel --------------------------------------------------------------------------


def verify(ns: Namespace, manifest: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    proc = ns.run(
        [*HARDEN, "verify", str(manifest), *args, "--ports", "1-6000", "--format", "json"],
        check=False,
        timeout=300,
    )
    report: dict[str, Any] = json.loads(proc.stdout) if proc.stdout.strip() else {}
    return proc.returncode, report, proc.stderr


def manifest_for(tmp: Path, prober_net: str) -> Path:
    return write(
        tmp,
        "m.yaml",
        "version: 1\npolicy: {ipv6: false}\nservices:\n"
        "  - {name: web, port: 80, proto: tcp}\n"
        f"verify:\n  probers: [{prober_net}]\n",
    )


@pytest.fixture
def silent_listener(in_netns: Callable[..., object]) -> Callable[[Namespace, int], None]:
    """A UDP listener that reads and never answers: from outside, a dropped port."""

    def start(ns: Namespace, port: int) -> None:
        code = (
            "import socket, sys, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"s.bind(('0.0.0.0', {port}))\n"
            "print('ready', flush=True)\n"
            "end = time.time() + 120\n"
            "s.settimeout(1)\n"
            "while time.time() < end:\n"
            "    try: s.recv(2048)\n"
            "    except OSError: pass\n"
        )
        in_netns(ns, sys.executable, "-c", code)

    return start


@pytest.mark.netns
def test_a_silent_udp_listener_behind_an_inserted_accept_fails_only_with_a_witness(
    netns: NsFactory, tmp_path: Path, silent_listener: Callable[[Namespace, int], None]
) -> None:
    prober, server = netns("wp"), netns("ws")
    n = 100 + uuid.uuid4().int % 100
    connect(server, prober, [f"198.18.{n}.1/24"], [f"198.18.{n}.2/24"])
    manifest = manifest_for(tmp_path, f"198.18.{n}.0/24")
    state = tmp_path / "s"
    assert server.run([*HARDEN, "apply", str(manifest), "--state-dir", str(state)]).returncode == 0
    silent_listener(server, 5001)
    server.run(
        ["nft", "insert", "rule", "inet", "harden", "input", "udp", "dport", "5001", "accept"]
    )
    # From outside the hole is invisible: no reply, no ICMP. The report must not claim
    # it proved otherwise, and says a silent listener cannot be seen.
    code, report, stderr = verify(prober, manifest, "--target", f"198.18.{n}.1")
    assert code == 0, (stderr, report.get("ports"))
    assert any("looks exactly like a dropped port" in note for note in report["notes"])
    code, report, stderr = verify(
        prober, manifest, "--target", f"198.18.{n}.1", "--witness", counters_command(server)
    )
    assert code == 1, (stderr, report.get("ports"))
    # Twice: the counters saw probes accepted, and the ruleset it reports accepts udp/5001.
    witness, analysis = sorted(
        (p for p in report["ports"] if p["status"] == "fail"),
        key=lambda p: p["detail"],
        reverse=True,
    )
    assert witness["proto"] == "udp" and witness["detail"].startswith("witness: 3 IPv4 udp")
    assert (analysis["proto"], analysis["port"]) == ("udp", 5001)
    assert analysis["detail"].startswith("analysis: not declared, yet accepted")


@pytest.mark.netns
@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_a_clean_host_passes_with_every_probe_counted(
    netns: NsFactory, tmp_path: Path, backend: str
) -> None:
    prober, server = netns("wp"), netns("ws")
    n = 100 + uuid.uuid4().int % 100
    connect(server, prober, [f"198.18.{n}.1/24"], [f"198.18.{n}.2/24"])
    manifest = manifest_for(tmp_path, f"198.18.{n}.2/32")
    apply = [*HARDEN, "apply", str(manifest), "--backend", backend, "--state-dir", str(tmp_path)]
    assert server.run(apply).returncode == 0
    code, report, stderr = verify(
        prober, manifest, "--target", f"198.18.{n}.1", "--witness", counters_command(server)
    )
    assert code == 0, (stderr, report.get("ports"))
    notes = [n for n in report["notes"] if n.startswith("witness:")]
    sent_udp = sum(v for k, v in report["sent"].items() if k.startswith("4/udp/"))
    assert any(f"counted {sent_udp} of {sent_udp} IPv4 udp" in note for note in notes), notes


@pytest.mark.netns
def test_probes_dropped_upstream_are_inconclusive_with_a_witness(
    netns: NsFactory, tmp_path: Path
) -> None:
    """A filter between prober and server drops TCP and UDP but lets ping through: from
    outside, a PASS (the host answers ping, every port is silent); the witness shows no
    probe ever reached it, so the PASS would have been vacuous."""
    prober, router, server, k = routed(netns, "w")
    router.run(
        [
            "nft",
            "add table inet cloud; add chain inet cloud screen "
            "{ type filter hook forward priority 0; policy accept; }; "
            f"add rule inet cloud screen ip saddr 198.18.{k}.0/24 meta l4proto {{ tcp, udp }} drop",
        ]
    )
    manifest = write(
        tmp_path,
        "m.yaml",
        "version: 1\npolicy: {ipv6: false}\nservices: []\n"
        f"verify:\n  probers: [198.18.{k}.0/24]\n",
    )
    assert (
        server.run([*HARDEN, "apply", str(manifest), "--state-dir", str(tmp_path)]).returncode == 0
    )
    target = f"198.19.{k}.5"
    code, report, _ = verify(prober, manifest, "--target", target)
    assert code == 0 and report["alive"][target] == "echo reply"  # looks fine from outside
    code, report, stderr = verify(
        prober, manifest, "--target", target, "--witness", counters_command(server)
    )
    assert code == 5, (stderr, report.get("ports"))
    assert report["verdict"] == "inconclusive"
    details = [p["detail"] for p in report["ports"] if p["status"] == "inconclusive"]
    assert any("reached the host" in d and "upstream" in d for d in details), details


@pytest.mark.netns
def test_witness_needs_witness_counters(netns: NsFactory, tmp_path: Path) -> None:
    prober, server = netns("wp"), netns("ws")
    n = 100 + uuid.uuid4().int % 100
    connect(server, prober, [f"198.18.{n}.1/24"], [f"198.18.{n}.2/24"])
    plain = write(tmp_path, "p.yaml", "version: 1\nservices: []\n")
    assert server.run([*HARDEN, "apply", str(plain), "--state-dir", str(tmp_path)]).returncode == 0
    code, _, stderr = verify(
        prober, plain, "--target", f"198.18.{n}.1", "--witness", counters_command(server)
    )
    assert code == 2 and "verify.probers" in stderr


@pytest.mark.netns
def test_counters_without_the_nftables_bindings_is_an_environment_error(
    netns: NsFactory,
) -> None:
    """No bindings: saying "no counters here" would make the witness blame the manifest."""
    ns = netns("wb")
    hidden = (
        "import sys; sys.modules['nftables'] = None; from harden.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    manifest = REPO / "rulesets" / "web-server.yaml"
    results = [
        ns.run([sys.executable, "-c", hidden, *command], check=False)
        for command in (["counters", "--format", "json"], ["diff", str(manifest)])
    ]
    for proc in results:
        assert proc.returncode == 4, proc.stdout + proc.stderr
        assert proc.stderr.count("\n") == 1 and "nftables" in proc.stderr
    assert results[0].stderr == results[1].stderr  # what every other command says


@pytest.mark.netns
def test_a_witness_proves_only_the_addresses_of_the_host_it_counted_on(
    netns: NsFactory, tmp_path: Path
) -> None:
    """verify --target A --target B --witness <A's counters>, with no host at B (the router
    drops everything sent to it): A passes on its witness, B is inconclusive. And a host
    that drops everything, ping included, behind a router: its witness shows it is there."""
    prober, router, server, k = routed(netns, "wa")
    empty = f"198.19.{k}.6"
    router.run(["ip", "route", "add", "blackhole", f"{empty}/32"])
    manifest = write(
        tmp_path,
        "m.yaml",
        "version: 1\npolicy: {ipv6: false, icmp: {echo: false}}\nservices: []\n"
        f"verify:\n  probers: [198.18.{k}.0/24]\n",
    )
    apply = [*HARDEN, "apply", str(manifest), "--state-dir", str(tmp_path / "s")]
    assert server.run(apply).returncode == 0
    target = f"198.19.{k}.5"
    witness = counters_command(server)
    code, report, stderr = verify(prober, manifest, "--target", target, "--witness", witness)
    assert code == 0, json.dumps(report, indent=1)[:6000]
    assert report["alive"] == {target: report["alive"][target]}
    assert "witness counted" in report["alive"][target]

    code, report, stderr = verify(
        prober, manifest, "--target", target, "--target", empty, "--witness", witness
    )
    assert code == 5 and report["verdict"] == "inconclusive", (stderr, report.get("notes"))
    assert empty not in report["alive"] and target in report["alive"]
    assert any(n.startswith(f"witness: proves nothing about {empty}") for n in report["notes"])


@pytest.mark.netns
def test_hostile_text_from_the_target_never_reaches_the_terminal_or_the_xml(
    netns: NsFactory, tmp_path: Path
) -> None:
    """A witness whose identity carries escape sequences, a bell, a bidi override and C1
    controls: the text report shows them escaped, JUnit and nmap XML stay valid XML."""
    prober, server = netns("wp"), netns("ws")
    n = 100 + uuid.uuid4().int % 100
    connect(server, prober, [f"198.18.{n}.1/24"], [f"198.18.{n}.2/24"])
    manifest = manifest_for(tmp_path, f"198.18.{n}.2/32")
    assert (
        server.run([*HARDEN, "apply", str(manifest), "--state-dir", str(tmp_path)]).returncode == 0
    )
    count = tmp_path / "count"
    hostile = "\\u001b]0;owned\\u0007\\u001b[2J\\u202egnp.exe\\u009b31m"
    reading = (
        '{"schema": "harden.counters/3", "counters": {"witness_in_tcp_v4": 0, '
        '"witness_closed_tcp_v4": 0}, "identity": "t%s ' + hostile + '", '
        f'"addresses": ["198.18.{n}.1"]}}'
    )
    script = tmp_path / "witness.sh"
    script.write_text(
        f"n=$(cat {count} 2>/dev/null || echo 0); echo $((n+1)) > {count}\n"
        f"printf '%s\\n' \"$(printf '{reading}' \"$n\")\"\n"
    )
    base = [*HARDEN, "verify", str(manifest), "--target", f"198.18.{n}.1", "--ports", "1-50"]
    base += ["--witness", f"sh {script}"]
    data = json.loads(prober.run([*base, "--format", "json"], check=False, timeout=120).stdout)
    details = [p["detail"] for p in data["ports"]]
    assert any("changed during the run" in d and "\\x1b]0;owned\\x07" in d for d in details)
    text = prober.run([*base, "--format", "text"], check=False, timeout=120)
    for raw in ("\x1b", "\x07", "\u202e", "\x9b"):
        assert raw not in text.stdout and raw not in text.stderr
    assert "\\x1b" in text.stdout and "\\u202e" in text.stdout, text.stdout
    for fmt, name in (("junit", "report.xml"), ("nmap-xml", "nmap.xml")):
        out = tmp_path / name
        proc = prober.run([*base, "--format", fmt, "-o", str(out)], check=False, timeout=120)
        assert proc.returncode == 5, proc.stderr
        ElementTree.parse(out)  # valid XML, or it raises
        assert "\x1b" not in out.read_text()
