"""harden verify against real kernels in lab namespaces (needs root; never leaves the lab)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harden.verify.classify import PortState, nmap_state

from .labutil import (
    HARDEN,
    counters_command,
    failing,
    lab_for,
    load_ruleset,
    nmap,
    statuses,
    verify_from,
    write,
)

pytestmark = pytest.mark.netns

WEB = """version: 1
services:
  - {name: ssh, port: 22, proto: tcp, sources: [198.18.1.0/24, "fd00:1::/64"]}
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: dns, port: 53, proto: udp}
"""
REJECT = """version: 1
policy: {closed: reject}
services:
  - {name: web, ports: [80, 443], proto: tcp}
  - {name: syslog, port: 514, proto: udp}
"""


def test_before_leaks_after_passes(tmp_path: Path) -> None:
    """No firewall: RSTs and ICMP port-unreachable, FAIL. harden's ruleset: PASS."""
    manifest = write(tmp_path, "web.yaml", WEB)
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        code, before = verify_from(lab.outside, lab, manifest, tmp_path)
        assert (code, before["verdict"]) == (1, "fail")
        leaks = failing(before)
        tcp_rst = {p for proto, p, seen in leaks if proto == "tcp" and seen == "closed"}
        assert len(tcp_rst) == 65535 - 3  # every port but the listening 22, 80 and 443
        assert ("tcp", 22, "open") in leaks  # listening, but undeclared for this source
        udp_icmp = {p for proto, p, seen in leaks if proto == "udp" and seen == "closed"}
        assert udp_icmp, "an unfirewalled host must show UDP ICMP leaks"
        assert any("rate-limits ICMP" in note for note in before["notes"])

        load_ruleset(lab, manifest, tmp_path)
        code, after = verify_from(lab.outside, lab, manifest, tmp_path, v6=True)
        assert (code, after["verdict"]) == (0, "pass"), failing(after)
        ok = {(p["target"], p["proto"], p["port"]) for p in after["ports"] if p["status"] == "ok"}
        for target in (str(lab.server.v4), str(lab.server.v6)):
            assert {(target, "tcp", 80), (target, "tcp", 443), (target, "udp", 53)} <= ok
            assert (target, "tcp", 22) not in ok  # outside is not an ssh source
        assert after["counts"]["ports"] == 4 * 65535


def test_source_restricted_service_from_allowed_and_stranger(tmp_path: Path) -> None:
    manifest = write(tmp_path, "web.yaml", WEB)
    with lab_for(manifest) as lab:
        assert lab.allowed is not None
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        load_ruleset(lab, manifest, tmp_path)
        ports = "1-1024"
        code, inside = verify_from(lab.allowed, lab, manifest, tmp_path, "--ports", ports, v6=True)
        assert code == 0, failing(inside)
        assert statuses(inside)[("tcp", 22)] == "ok"
        code, outside = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", ports, v6=True)
        assert code == 0, failing(outside)
        assert ("tcp", 22) not in statuses(outside)  # conforming silence, not an entry
        # A manifest that claims ssh is open to everyone fails from outside.
        wrong = write(
            tmp_path, "wrong.yaml", WEB.replace(', sources: [198.18.1.0/24, "fd00:1::/64"]', "")
        )
        code, report = verify_from(lab.outside, lab, wrong, tmp_path, "--ports", ports)
        assert code == 1
        assert ("tcp", 22, "silent") in failing(report)


def test_drained_icmp_budget_still_fails(tmp_path: Path) -> None:
    """nmap drains the target's ICMP budget, harden verifies at once: the leak is still found."""
    manifest = write(tmp_path, "web.yaml", WEB)
    with lab_for(manifest) as lab:
        lab.wait_reachable()
        load_ruleset(lab, manifest, tmp_path)
        # A drifted firewall: someone accepted UDP 5000-5100, where nothing listens.
        lab.server.ns.run(["nft", "insert rule inet harden input udp dport 5000-5100 accept"])
        scan = nmap(lab.outside, "-sU", "-p", "5000-5010", "--min-rate", "5000", str(lab.server.v4))
        assert "closed" in scan.values()  # nmap drew ICMP port-unreachable: budget spent
        start = time.monotonic()
        code, report = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "4000-6000")
        assert code == 1
        leaked = {p for proto, p, seen in failing(report) if proto == "udp"}
        assert leaked and leaked <= set(range(5000, 5101))
        assert time.monotonic() - start < 60


def test_reject_mode_and_ipv6(tmp_path: Path) -> None:
    manifest = write(tmp_path, "reject.yaml", REJECT)
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        load_ruleset(lab, manifest, tmp_path)
        code, report = verify_from(
            lab.outside, lab, manifest, tmp_path, "--ports", "1-2000", v6=True
        )
        # Reject replies are rate-limited like a leak's port-unreachable, so from outside
        # silent UDP ports prove nothing: not a PASS. Silent TCP ports are proven (a leak
        # would answer with an RST, which is not rate-limited).
        assert (code, report["verdict"]) == (5, "inconclusive"), failing(report)
        observed = {(c["target"], c["proto"], c["observed"]) for c in report["conforming"]}
        unproven = {(c["target"], c["proto"], c["observed"]) for c in report["unproven"]}
        for target in (str(lab.server.v4), str(lab.server.v6)):
            for proto in ("tcp", "udp"):
                assert (target, proto, "rejected") in observed  # admin-prohibited was seen
            assert (target, "tcp", "silent") in observed
            assert (target, "udp", "silent-unproven") in unproven
        # The witness proves the rest: every probe that arrived reached harden's closed path.
        outside = [lab.outside.v4, lab.outside.v6, *lab.outside.extra]
        probers = "verify:\n  probers: [" + ", ".join(f'"{a}"' for a in outside) + "]\n"
        witnessed = write(tmp_path, "witnessed.yaml", REJECT + probers)
        load_ruleset(lab, witnessed, tmp_path)
        counters = counters_command(lab.server.ns)
        code, report = verify_from(
            lab.outside,
            lab,
            witnessed,
            tmp_path,
            "--ports",
            "1-2000",
            "--witness",
            counters,
            v6=True,
        )
        assert (code, report["verdict"]) == (0, "pass"), (failing(report), report["notes"][-4:])
        observed = {(c["target"], c["proto"], c["observed"]) for c in report["conforming"]}
        for target in (str(lab.server.v4), str(lab.server.v6)):
            assert (target, "udp", "silent, counted by the witness") in observed
        # The same host checked against a drop-mode manifest: admin-prohibited is a deviation.
        drop = write(tmp_path, "drop.yaml", REJECT.replace("policy: {closed: reject}\n", ""))
        code, report = verify_from(lab.outside, lab, drop, tmp_path, "--ports", "1-2000")
        assert code == 1
        assert {seen for _, _, seen in failing(report)} == {"rejected"}


def test_ten_percent_loss_gives_no_wrong_verdicts(tmp_path: Path) -> None:
    manifest = write(tmp_path, "web.yaml", WEB)
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        lab.server.ns.run(
            [
                "nft",
                "add table inet lossy; "
                "add chain inet lossy pre { type filter hook prerouting priority -300; };"
                " add chain inet lossy out { type filter hook output priority -300; }",
            ]
        )
        for chain in ("pre", "out"):
            lab.server.ns.run(
                ["nft", f"add rule inet lossy {chain} numgen random mod 100 < 10 counter drop"]
            )
        code, before = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "1-5000")
        assert code == 1
        wrong = {f for f in failing(before) if f[2] not in ("closed", "open")}
        assert not wrong  # only leaks: loss never turns a declared port or ping "silent"
        load_ruleset(lab, manifest, tmp_path)
        for _ in range(2):
            code, after = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "1-5000")
            assert code == 0, failing(after)
        dropped = lab.server.ns.run(["nft", "list", "table", "inet", "lossy"]).stdout
        assert "counter packets 0 " not in dropped  # the loss really happened


def test_states_agree_with_nmap(tmp_path: Path) -> None:
    """The same ports, the same lab: harden's states map to nmap's."""
    manifest = write(tmp_path, "web.yaml", WEB)
    tcp_ports = "20-25,79-81,442-444"
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        for firewall in ("none", "drop"):
            if firewall == "drop":
                load_ruleset(lab, manifest, tmp_path)
            seen = nmap(lab.outside, "-sS", "-p", tcp_ports, str(lab.server.v4))
            _, report = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", tcp_ports)
            harden_states = _states(report, "tcp")
            assert {port: nmap_state("tcp", s) for port, s in harden_states.items()} == {
                port: state for (proto, port), state in seen.items() if proto == "tcp"
            }, firewall
        # UDP, slowly enough for nmap: one open (53 echoes), a few closed, on the bare host.
        lab.server.ns.run(["nft", "delete table inet harden"])
        time.sleep(1.2)
        seen = nmap(lab.outside, "-sU", "-p", "52-54", str(lab.server.v4))
        time.sleep(1.2)
        _, report = verify_from(lab.outside, lab, manifest, tmp_path, "--ports", "52-54")
        ours = {port: nmap_state("udp", s) for port, s in _states(report, "udp").items()}
        assert ours == {port: state for (proto, port), state in seen.items() if proto == "udp"}


def _states(report: dict[str, object], proto: str) -> dict[int, PortState]:
    """Per-port PortState from a JSON report (entries and conforming ranges)."""
    out: dict[int, PortState] = {}
    for entry in report["ports"]:  # type: ignore[attr-defined]
        if entry["proto"] == proto and entry["port"] and entry["family"] == "ipv4":
            out[entry["port"]] = PortState(entry["observed"].replace("open|filtered", "silent"))
    # Unproven silence (rate-limited, unprobed) is still silence on the wire, as nmap sees it.
    spans = [*report["conforming"], *report["unproven"]]  # type: ignore[misc]
    for span in spans:
        if span["proto"] == proto and span["family"] == "ipv4":
            for item in span["ranges"]:
                first, _, last = item.partition("-")
                for port in range(int(first), int(last or first) + 1):
                    observed = span["observed"]
                    out[port] = (
                        PortState(observed)
                        if observed in PortState.__members__.values()
                        else (PortState.SILENT)
                    )
    return out


def test_verify_through_a_tunnel_without_link_layer_header(tmp_path: Path) -> None:
    """A tunnel device (like WireGuard's) delivers packets with no Ethernet header.

    The capture reads every link from the IP header on, so the RSTs and ICMP errors
    that come back through the tunnel are seen, and the unfirewalled host FAILs.
    """
    manifest = write(tmp_path, "web.yaml", WEB)
    with lab_for(manifest) as lab:
        lab.start_services(lifetime=120)
        lab.wait_reachable()
        pair = [lab.outside.ns.name, lab.server.ns.name]
        relay = subprocess.Popen(
            [sys.executable, "-m", "tests.tunrelay", *pair, "tnl0", "90"],
            cwd=Path(__file__).parent.parent,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert relay.stdout is not None and relay.stdout.readline() == "ready\n"
            for host, inner in ((lab.outside, "198.51.100.1"), (lab.server, "198.51.100.2")):
                host.ns.run(["ip", "addr", "add", f"{inner}/30", "dev", "tnl0"])
                host.ns.run(["ip", "link", "set", "tnl0", "up"])
            kind = lab.outside.ns.run(["cat", "/sys/class/net/tnl0/type"]).stdout.strip()
            assert kind == "65534"  # ARPHRD_NONE: packets carry no link-layer header
            out = tmp_path / "tunnel.json"
            argv: list[str | Path] = [*HARDEN, "verify", manifest, "--target", "198.51.100.2"]
            argv += ["--ports", "1-1000"]
            proc = lab.outside.ns.run([*argv, "--format", "json", "-o", out], check=False)
        finally:
            relay.kill()
            relay.wait()
        report = json.loads(out.read_text())
        assert (proc.returncode, report["verdict"]) == (1, "fail"), proc.stderr
        closed = {p for proto, p, seen in failing(report) if proto == "tcp" and seen == "closed"}
        assert len(closed) == 1000 - 3  # every RST came back through the tunnel
        udp = {p for proto, p, seen in failing(report) if proto == "udp" and seen == "closed"}
        assert udp  # and ICMP port-unreachable too
